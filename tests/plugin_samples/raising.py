"""A plugin whose register hook raises after registering one type; it also has
other hooks, which must not run once the plugin is skipped."""

from omniroute import Provider, hookimpl


class HalfProvider(Provider):
    type = "half-registered"


@hookimpl
def register_providers(register):
    register(HalfProvider)
    raise RuntimeError("sample plugin exploded while registering")


@hookimpl
def configure_app(app, config):
    app.router.add_get("/raising-plugin-route", lambda request: None)


@hookimpl
def register_commands(cli):
    raise AssertionError("a skipped plugin's register_commands must not run")
