"""Small plugin modules for tests/test_plugins.py, loaded through fake entry points."""
