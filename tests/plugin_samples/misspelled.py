"""A plugin with a misspelled hook name (register_provider, no 's')."""

from omniroute import Provider, hookimpl


class MisspelledProvider(Provider):
    type = "misspelled"


@hookimpl
def register_provider(register):  # the typo: pluggy alone would silently never call it
    register(MisspelledProvider)
