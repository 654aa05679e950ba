"""A plugin whose dependency is missing: importing it fails."""

raise ImportError("No module named 'omniroute_sample_missing_dependency'")
