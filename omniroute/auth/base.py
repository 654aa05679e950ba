"""What an auth scheme is: a way a request proves who sent it."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

from aiohttp import web

if TYPE_CHECKING:
    from omniroute.config import Config
    from omniroute.storage.store import Store


@dataclass(frozen=True, slots=True)
class Principal:
    """Who is calling: an API key, an admin session, or nobody in particular."""

    kind: str
    key_id: str | None = None
    scopes: frozenset[str] = field(default_factory=frozenset)
    #: False when the key asked that its requests leave no usage record (``api_keys.log_usage``)
    log_usage: bool = True
    #: the key's limits (budgets, token limits, rpm, concurrency, allowed models, expiry),
    #: parsed once when the key index loads; None when it has none
    limits: Any = None

    @property
    def is_admin(self) -> bool:
        return "admin" in self.scopes


ANONYMOUS = Principal("anonymous")


class AuthScheme:
    """Base class of auth scheme types; one instance per gateway.

    :meth:`authenticate` follows one rule: return ``None`` when the request
    carries no credential of this scheme ("not mine"), raise
    :class:`omniroute.errors.AuthenticationFailed` when it carries one that is
    invalid ("mine, but wrong"), return a :class:`Principal` otherwise.
    """

    name: ClassVar[str]
    #: whether this scheme may authenticate client API calls (``/v1/...``)
    client_api: ClassVar[bool] = True

    def __init__(self, store: Store, config: Config) -> None:
        """
        :param store: the gateway's storage (API keys, admin sessions, settings).
        :param config: the start-up configuration.
        """
        self.store = store
        self.config = config

    async def start(self) -> None:
        """Called once when the gateway starts (after the database is open)."""

    async def reload(self) -> None:
        """Called whenever the stored configuration changed (here, or in another process)."""

    async def authenticate(self, request: web.Request) -> Principal | None:
        raise NotImplementedError
