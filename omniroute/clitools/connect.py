"""One request to point a tool at the gateway: what it asks, which key, which target.

``POST /api/cli-tools/{id}/configure`` and ``omniroute connect <id>`` both end in
:func:`connect`. The key is the point of the exercise (the tool must send it),
so it is written into the tool's file, but it is checked first, never logged,
and only its masked form comes back. API keys are stored hashed, so a key id
alone cannot be written anywhere: the caller sends the key itself, or asks for
a new one (created as ``cli:<tool id>``, and revoked again when the write fails).
"""

from __future__ import annotations

import hmac
import re
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from omniroute.clitools.core import CliTools
from omniroute.clitools.custom import load_custom
from omniroute.clitools.tool import Target
from omniroute.errors import GatewayError, InvalidRequest
from omniroute.storage import Store
from omniroute.storage.store import hash_secret
from omniroute.vault import mask

#: what a tool sends when the gateway asks for no key (tools refuse an empty one)
PLACEHOLDER_KEY = "omniroute-no-key"
_MODEL = re.compile(r"[^\s\x00-\x1f\x7f]{1,200}")


@dataclass(frozen=True)
class ConnectRequest:
    """What the caller asks for (``snake_case`` or the seed's ``camelCase`` fields)."""

    model: str
    key: str | None = None
    key_id: str | None = None
    new_key: bool = False
    base_url: str | None = None
    small_model: str | None = None

    @classmethod
    def from_body(cls, body: Mapping[str, Any]) -> ConnectRequest:
        def field(snake: str, camel: str) -> Any:
            return body.get(snake, body.get(camel))

        known = {"model", "key", "key_id", "keyId", "new_key", "newKey", "base_url", "baseUrl",
                 "small_model", "smallModel"}
        unknown = set(body) - known
        if unknown:
            raise InvalidRequest(f"Unknown fields: {', '.join(sorted(unknown))}.",
                                 param=sorted(unknown)[0])
        model = body.get("model")
        if model is None or model == "":
            raise InvalidRequest("A model is needed ('model', or --model): the model, alias "
                                 "or combo of this gateway the tool should ask for.",
                                 param="model", code="missing_model")
        for name, value in (("model", model), ("small_model", field("small_model", "smallModel"))):
            if value is not None and (not isinstance(value, str) or not _MODEL.fullmatch(value)):
                raise InvalidRequest(f"'{name}' must be a model name without spaces.",
                                     param=name)
        texts = {"key": body.get("key"), "key_id": field("key_id", "keyId"),
                 "base_url": field("base_url", "baseUrl")}
        for name, value in texts.items():
            if value is not None and (not isinstance(value, str) or not value.strip()):
                raise InvalidRequest(f"'{name}' must be a non-empty string.", param=name)
        new_key = field("new_key", "newKey") or False
        if not isinstance(new_key, bool):
            raise InvalidRequest("'new_key' must be true or false.", param="new_key")
        base_url = texts["base_url"]
        if base_url is not None:
            try:
                base_url = normalize_base_url(base_url)
            except ValueError as exc:
                raise InvalidRequest(str(exc), param="base_url") from None
        return cls(model=model, key=texts["key"], key_id=texts["key_id"], new_key=new_key,
                   base_url=base_url, small_model=field("small_model", "smallModel"))


def normalize_base_url(url: str) -> str:
    """The gateway's root URL from ``url`` (a trailing ``/`` or ``/v1`` removed)."""
    parts = urlsplit(url.strip())
    if parts.scheme not in ("http", "https") or not parts.netloc or parts.query \
            or parts.fragment:
        raise ValueError("'base_url' must be the gateway's http(s) URL, like "
                         "http://127.0.0.1:20128")
    path = parts.path.rstrip("/")
    path = path.removesuffix("/v1")
    return f"{parts.scheme}://{parts.netloc}{path}"


def gateway_url(host: str, port: int) -> str:
    """The URL a tool on this machine reaches a gateway listening on ``host:port`` at."""
    if host in ("", "0.0.0.0", "::", "[::]"):
        host = "127.0.0.1"
    elif ":" in host and not host.startswith("["):
        host = f"[{host}]"
    return f"http://{host}:{port}"


@dataclass(frozen=True)
class ResolvedKey:
    secret: str
    key_id: str | None = None
    created: bool = False
    notes: tuple[str, ...] = ()


async def resolve_key(store: Store, request: ConnectRequest, tool_id: str, *,
                      require_api_key: bool) -> ResolvedKey:
    """The key to write: the one sent (checked against this gateway's keys), a new one,
    or, when the gateway needs none, a placeholder."""
    if request.new_key and request.key:
        raise InvalidRequest("Send either 'key' or 'new_key', not both.", param="new_key")
    if request.new_key:
        key, secret = await store.create_key(f"cli:{tool_id}")
        return ResolvedKey(secret, key.id, True,
                           (f"created the API key {key.id} (cli:{tool_id}) for this tool",))
    if request.key is None:
        if request.key_id is not None:
            raise InvalidRequest(
                "API keys are stored hashed, so 'key_id' alone cannot be written into a tool: "
                "send the full 'key', or 'new_key': true for a new one.", param="key_id",
                code="key_not_recoverable")
        if require_api_key:
            raise InvalidRequest("This gateway requires an API key: send 'key' (an omniroute "
                                 "API key) or 'new_key': true.", param="key",
                                 code="key_required")
        return ResolvedKey(PLACEHOLDER_KEY, notes=(
            "no key given and the gateway requires none (require_api_key is off): the tool "
            f"sends the placeholder {PLACEHOLDER_KEY!r}",))
    wanted = hash_secret(request.key)
    match = next((k for k in await store.list_keys()
                  if hmac.compare_digest(k.key_hash, wanted)), None)
    if match is None:
        if request.base_url is None:
            raise InvalidRequest("'key' is not an API key of this gateway (create one with "
                                 "`omniroute keys create`, or send 'new_key': true).",
                                 param="key", code="invalid_api_key")
        return ResolvedKey(request.key, notes=(
            "the key is not one of this gateway's: written as given, for the gateway at "
            f"{request.base_url}",))
    if request.key_id is not None and request.key_id != match.id:
        raise InvalidRequest(f"'key' belongs to {match.id}, not to {request.key_id}.",
                             param="key_id")
    if match.revoked_at is not None:
        raise InvalidRequest(f"The key {match.id} is revoked.", param="key",
                             code="invalid_api_key")
    if match.expires_at is not None and match.expires_at <= time.time():
        raise InvalidRequest(f"The key {match.id} has expired.", param="key",
                             code="invalid_api_key")
    notes: tuple[str, ...] = ()
    if match.is_admin:
        notes = (f"the key {match.id} has admin scope: anyone who can read the tool's "
                 "files can manage the gateway; a key without it is safer",)
    return ResolvedKey(request.key, match.id, False, notes)


async def connect(tools: CliTools, store: Store, tool_id: str, request: ConnectRequest, *,
                  gateway: str, require_api_key: bool,
                  check_model: Callable[[str], str | None] | None = None) -> dict[str, Any]:
    """Point tool ``tool_id`` at the gateway (``request.base_url``, else ``gateway``).

    :param check_model: says why the gateway would not serve a model now (a warning,
        not a refusal: the model lists a gateway fetches may change that).
    """
    tool = tools.find(tool_id, await load_custom(store))
    base = request.base_url or gateway
    if tool.configure is None:  # says what to do instead, before any key is made
        await tools.configure(tool, Target(base, "", request.model))
    notes = [problem for model in filter(None, (request.model, request.small_model))
             if check_model is not None and (problem := check_model(model))]
    key = await resolve_key(store, request, tool.id, require_api_key=require_api_key)
    target = Target(base, key.secret, request.model, request.small_model)
    try:
        result = await tools.configure(tool, target, [*key.notes, *notes])
    except GatewayError:
        if key.created and key.key_id is not None:
            await store.revoke_key(key.key_id)  # no key left behind for nothing
        raise
    shown = None if key.secret == PLACEHOLDER_KEY and key.key_id is None else mask(key.secret)
    return {**result, "key": shown, "keyId": key.key_id, "keyCreated": key.created}
