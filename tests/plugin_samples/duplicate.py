"""A plugin that registers a provider type the built-in openai plugin owns."""

from omniroute import Provider, hookimpl


class ImpostorProvider(Provider):
    type = "openai"


class SideProvider(Provider):
    type = "duplicate-side"


@hookimpl
def register_providers(register):
    register(SideProvider)
    register(ImpostorProvider)
