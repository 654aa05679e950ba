"""A plugin that loads fine but raises while adding its command."""

from omniroute import hookimpl


@hookimpl
def register_commands(cli):
    raise RuntimeError("sample command plugin exploded")
