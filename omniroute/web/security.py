"""Browser-facing protection: which ``Host`` names are served, and CORS for the client API.

**Host check (DNS rebinding).** A web page on ``evil.example`` can make its name
resolve to 127.0.0.1 and then call the gateway from the user's browser as a
same-origin request; with ``require_api_key`` off (the default) that would spend
the user's credits. The browser still sends ``Host: evil.example``, so a gateway
bound to loopback answers only loopback names (``localhost``, ``*.localhost``,
``127.0.0.1``, ``[::1]``, any port) and the ``allowed_hosts`` of the start-up
configuration; others get 403 in the client's own error format. Bound to
another address, the check applies only when ``allowed_hosts`` is set. What to
compare against is decided at start-up: per request, one header read and one
frozenset lookup (the route's guard calls :meth:`HostCheck.allows`).

**CORS.** Off unless ``cors_origins`` lists origins (or ``*``). Then the client
API answers preflights (``OPTIONS`` with ``Access-Control-Request-Method``) of
a listed origin itself, before authentication, and every answer to such an
origin, errors and streams included, names it and exposes the ``X-OmniRoute-*``
headers. ``*`` is answered as ``*`` without ``Access-Control-Allow-Credentials``
(browsers refuse the pair); a listed origin is echoed with credentials allowed.
The management API (``/api/...`` except Ollama's client paths) never gets CORS
headers, and its preflights are not allowed.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, MutableMapping

from aiohttp import hdrs, web

from omniroute.config import Config
from omniroute.errors import PermissionDenied
from omniroute.web.tags import is_management_path

LOOPBACK_NAMES = ("localhost", "127.0.0.1", "[::1]")
#: response headers a browser script may read besides the safelisted ones
EXPOSED_HEADERS = frozenset({"x-upstream-request-id", "retry-after"})
#: the request headers a preflight is answered with when it names none
DEFAULT_ALLOW_HEADERS = ("authorization, content-type, x-api-key, x-goog-api-key, "
                         "x-goog-api-client, anthropic-version, anthropic-beta, "
                         "anthropic-dangerous-direct-browser-access, openai-organization, "
                         "openai-project, x-session-id, x-omniroute-session")
PREFLIGHT_MAX_AGE = "600"

def is_loopback(host: str) -> bool:
    """Whether binding ``host`` listens on loopback only."""
    if host.lower().rstrip(".") == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


class HostCheck:
    """The ``Host`` names a gateway answers to, compiled once."""

    def __init__(self, names: Iterable[str], port: int) -> None:
        """
        :param names: host names without a port; ``*.domain`` allows its subdomains,
            ``*`` any name.
        :param port: the configured port; ``name:port`` is then matched in one lookup.
        """
        exact = {n for n in names if not n.startswith("*")}
        self.any = "*" in names
        self.names = frozenset(exact)
        self.suffixes = (*(n[1:] for n in names if n.startswith("*.")), ".localhost")
        self.with_port = frozenset({*exact, *(f"{n}:{port}" for n in exact)})

    @classmethod
    def from_config(cls, config: Config) -> HostCheck | None:
        """The check for ``config``, or ``None`` when every name is to be served."""
        if not is_loopback(config.host) and not config.allowed_hosts:
            return None
        names = [*LOOPBACK_NAMES, *config.allowed_hosts]
        if not is_loopback(config.host) and config.host not in ("0.0.0.0", "::"):
            names.append(f"[{config.host}]" if ":" in config.host else config.host.lower())
        check = cls(names, config.port)
        return None if check.any else check

    def allows(self, host: str | None) -> bool:
        """Whether a request with this ``Host`` header may be served."""
        if host is None or host in self.with_port:  # no Host: not a browser (HTTP/1.0)
            return True
        name = host.lower()
        if name.startswith("["):
            name = name[:name.find("]") + 1]
        else:
            name = name.partition(":")[0]
        name = name.rstrip(".")
        return name in self.names or name.endswith(self.suffixes)

    def refusal(self, host: str | None) -> PermissionDenied:
        """The error for a refused ``host`` (rendered in the client's format)."""
        return PermissionDenied(
            f"This gateway does not answer to the host name {host!r} (a web page may be "
            "trying to reach it through DNS rebinding). Call it as localhost or 127.0.0.1, "
            "or add the name to allowed_hosts.", code="host_not_allowed")


#: the app's Host check; ``None`` when every name is served
HOST_CHECK = web.AppKey[HostCheck | None]("host_check")


class Cors:
    """CORS answers for the client API, for the origins of ``cors_origins``."""

    def __init__(self, origins: Iterable[str]) -> None:
        origins = tuple(origins)
        self.any = "*" in origins
        self.origins = frozenset(origins)

    def allowed(self, origin: str) -> str | None:
        """The ``Access-Control-Allow-Origin`` value for ``origin``, or ``None``."""
        if self.any:
            return "*"
        return origin if origin in self.origins else None

    @staticmethod
    def _allow(headers: MutableMapping[str, str], allowed: str) -> None:
        headers["Access-Control-Allow-Origin"] = allowed
        if allowed != "*":  # never together with "*": browsers refuse the pair
            headers["Access-Control-Allow-Credentials"] = "true"

    def preflight(self, request: web.Request, host_check: HostCheck | None) -> web.Response | None:
        """The answer to a preflight, or ``None`` to let the request take its normal path
        (where a refused one ends as an error without CORS headers)."""
        origin = request.headers["Origin"]
        allowed = self.allowed(origin)
        if (allowed is None or is_management_path(request.app, request.path)
                or (host_check is not None
                    and not host_check.allows(request.headers.get("Host")))):
            return None
        missing = request.match_info.http_exception
        if not isinstance(missing, web.HTTPMethodNotAllowed):
            return None  # an unknown path (404), or a route that answers OPTIONS itself
        methods = set(missing.allowed_methods)
        if "GET" in methods:
            methods.add("HEAD")
        wanted = request.headers["Access-Control-Request-Method"].strip().upper()
        if wanted not in methods:
            return None
        headers = {
            "Access-Control-Allow-Methods": ", ".join(sorted(methods)),
            "Access-Control-Allow-Headers": (
                request.headers.get("Access-Control-Request-Headers") or DEFAULT_ALLOW_HEADERS),
            "Access-Control-Max-Age": PREFLIGHT_MAX_AGE,
            "Vary": "Origin, Access-Control-Request-Method, Access-Control-Request-Headers",
        }
        if request.headers.get("Access-Control-Request-Private-Network") == "true":
            # Chrome asks before a public site's page may reach a loopback address
            headers["Access-Control-Allow-Private-Network"] = "true"
        self._allow(headers, allowed)
        return web.Response(status=204, headers=headers)

    async def on_response_prepare(self, request: web.Request,
                                  response: web.StreamResponse) -> None:
        """Name the origin and expose the gateway's headers on every client API answer."""
        if is_management_path(request.app, request.path) or request.method == "OPTIONS":
            return
        headers = response.headers
        if not self.any:  # the answer depends on the Origin: caches must know
            vary = headers.get("Vary")
            if vary is None:
                headers["Vary"] = "Origin"
            elif "origin" not in vary.lower():
                headers["Vary"] = f"{vary}, Origin"
        origin = request.headers.get(hdrs.ORIGIN)
        allowed = None if origin is None else self.allowed(origin)
        if allowed is None:
            return
        self._allow(headers, allowed)
        exposed = [name for name in headers
                   if name.lower().startswith("x-omniroute-") or name.lower() in EXPOSED_HEADERS]
        if exposed:
            headers["Access-Control-Expose-Headers"] = ", ".join(exposed)


#: the app's CORS answers; ``None`` when ``cors_origins`` is empty
CORS = web.AppKey[Cors | None]("cors")


def setup_security(app: web.Application, config: Config) -> None:
    """Decide the Host check and, when ``cors_origins`` is set, CORS.

    Both are applied by the routes' guards (:mod:`omniroute.web.guard`: the Host check
    on every request, a preflight where no route answers ``OPTIONS``); CORS adds a
    response hook, only when configured.
    """
    app[HOST_CHECK] = HostCheck.from_config(config)
    if not config.cors_origins:
        app[CORS] = None
        return
    cors = app[CORS] = Cors(config.cors_origins)
    app.on_response_prepare.append(cors.on_response_prepare)
