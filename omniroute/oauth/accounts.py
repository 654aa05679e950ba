"""From tokens to a stored connection, for sign-ins and imports alike; and what an
OAuth account's state looks like to an operator.

:func:`save_account` stores an :class:`~omniroute.oauth.service.Account` as a
connection of the service's provider type (credentials encrypted by the store). An
account of that type and name already there is signed in again: its credentials are
replaced whole (which clears a "needs sign-in" mark) and its settings kept under the
new ones. :func:`read_import` reads the official CLI's credentials file, only
reading it: the file is never written, moved or locked.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from omniroute.credentials import sign_in_required
from omniroute.oauth.client import TokenClient
from omniroute.oauth.errors import OAuthError
from omniroute.oauth.service import Account, OAuthService

if TYPE_CHECKING:
    from omniroute.plugins import Plugins
    from omniroute.storage.store import Connection, Store

#: the largest credentials file an import reads
MAX_IMPORT_BYTES = 1024 * 1024


def find_service(services: Mapping[str, OAuthService], name: str) -> OAuthService:
    """The service called ``name`` (``OAuthError`` 404 listing the known ones)."""
    found = services.get(name)
    if found is None:
        known = ", ".join(sorted(services)) or "none (no plugin registers one)"
        raise OAuthError(f"unknown sign-in service {name!r}; known: {known}", status=404,
                         code="unknown_service")
    return found


def find_import(services: Mapping[str, OAuthService], source: str) -> OAuthService:
    """The service whose official CLI's file ``source`` names (``claude-code``...)."""
    for service in services.values():
        if service.import_source == source:
            return service
    known = ", ".join(sorted(s.import_source for s in services.values()
                             if s.import_source)) or "none"
    raise OAuthError(f"unknown import source {source!r}; known: {known}", status=404,
                     code="unknown_service")


async def read_import(service: OAuthService, path: str | Path | None, client: TokenClient,
                      settings: Mapping[str, Any] | None = None) -> Account:
    """The account in the official CLI's credentials file (read, never changed).

    :param path: the file (default: the service's ``import_path``, or the first of its
        ``import_fallbacks`` that exists when that one does not).
    :raises OAuthError: no such file, or it holds no usable credentials (status 400).
    """
    if path:
        where = Path(path).expanduser()
    else:
        defaults = [Path(p).expanduser() for p in (service.import_path,
                                                   *service.import_fallbacks) if p]
        where = next((p for p in defaults if p.exists()), defaults[0] if defaults else Path(""))
    if not str(where) or str(where) == ".":
        raise OAuthError(f"{service.name}: give the credentials file's path", status=400)
    try:
        with open(where, "rb") as fh:  # read only: the official CLI keeps its file
            data = fh.read(MAX_IMPORT_BYTES + 1)
    except OSError as exc:
        raise OAuthError(f"cannot read {where}: {exc.strerror or exc}", status=400,
                         code="import_failed") from None
    if len(data) > MAX_IMPORT_BYTES:
        raise OAuthError(f"{where} is larger than a credentials file", status=400,
                         code="import_failed")
    try:
        tokens = service.parse_import(data, time.time())
    except ValueError as exc:
        raise OAuthError(f"{where}: {exc}", status=400, code="import_failed") from None
    return await service.finish(tokens, client, service.endpoints(settings))


async def save_account(
    plugins: Plugins, store: Store, service: OAuthService, account: Account, *,
    name: str | None = None, settings: Mapping[str, Any] | None = None,
) -> tuple[Connection, bool]:
    """Store ``account`` as a connection; returns it, and True when it is new.

    :param name: the account's name (default: who signed in, else the service's name);
        an existing connection of the service's type with this name is replaced.
    :param settings: the connection's settings (the sign-in's URL overrides).
    :raises OAuthError: the provider type is not loaded or refuses the account (400).
    """
    from omniroute.accounts import build_connection

    name = name or account.label or service.name
    credentials = dict(account.credentials)
    if account.label:  # who signed in, shown to operators (omniroute providers list)
        credentials["extra"] = {**(credentials.get("extra") or {}), "account_label": account.label}
    existing = next((c for c in await store.list_connections()
                     if c.type == service.provider_type and c.name == name), None)
    spec = {"type": service.provider_type, "name": name, "credentials": credentials,
            "settings": {**(settings or {}), **account.settings}}
    try:
        conn = build_connection(plugins, spec, existing)
    except ValueError as exc:
        raise OAuthError(f"cannot store the {service.name} account: {exc}", status=400,
                         code="invalid_config") from None
    await store.save_connection(conn)
    return conn, existing is None


def account_state(credentials: Mapping[str, Any], now: float | None = None) -> dict[str, Any]:
    """An OAuth account's state for operators, without a secret: ``status`` (``active``,
    ``expired``: renewed on next use, ``needs_sign_in``), the expiries, the reason."""
    now = time.time() if now is None else now
    expires = credentials.get("expires_at")
    expires = float(expires) if isinstance(expires, (int, float)) else None
    reason = sign_in_required(credentials)
    status = ("needs_sign_in" if reason is not None
              else "expired" if expires is not None and expires <= now else "active")
    extra = credentials.get("extra")
    view: dict[str, Any] = {
        "status": status,
        "expires_at": expires,
        "expires_in": None if expires is None else round(expires - now),
        "refresh_expires_at": credentials.get("refresh_expires_at"),
        "renewable": bool(credentials.get("refresh_token")),
    }
    if isinstance(extra, Mapping) and isinstance(extra.get("account_label"), str):
        view["account"] = extra["account_label"]
    if reason is not None:
        view["reason"] = reason
    return view
