"""The registry: the types the plugins registered, built once at start-up.

Formats are instantiated here (they are stateless: one instance serves every
request); provider types and auth scheme types stay classes, instantiated per
connection and per gateway by the catalog and the gateway.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from omniroute.config import ConfigError

if TYPE_CHECKING:
    from omniroute.auth.base import AuthScheme
    from omniroute.formats.base import Format
    from omniroute.plugins import Plugins
    from omniroute.providers.base import Provider


class Registry:
    """Formats, provider types and auth scheme types, by name."""

    def __init__(self, plugins: Plugins) -> None:
        self.plugins = plugins
        self.formats: dict[str, Format] = {name: cls() for name, cls in plugins.formats.items()}
        self.provider_types: dict[str, type[Provider]] = plugins.providers
        self.auth_schemes: dict[str, type[AuthScheme]] = plugins.auth_schemes

    def provider_type(self, type_name: str) -> type[Provider]:
        """The provider class named ``type_name`` (``ConfigError`` naming why it is missing)."""
        cls = self.provider_types.get(type_name)
        if cls is None:
            raise ConfigError(self.plugins.failure_for("providers", type_name))
        return cls
