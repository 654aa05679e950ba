"""The loopback listener: the redirect of an authorization code flow lands here.

RFC 8252 section 7.3: a native app receives the code on ``http://127.0.0.1:PORT``
(services register ``localhost`` redirect URIs with a fixed port and path, so the
listener takes both from the redirect URI; port 0 asks for any free port, for services
that accept any loopback port, and :func:`with_port` then names the bound one). It
answers the browser with a short page, hands the first callback that carries this
sign-in's ``state`` to :meth:`LoopbackListener.wait` (bounded), and refuses others (a
stale tab, another site's forged request) without ending the wait. One listener per
sign-in; it stops when the sign-in ends.
"""

from __future__ import annotations

import asyncio
import logging
from urllib.parse import urlsplit, urlunsplit

from aiohttp import web

from omniroute.oauth.errors import AccessDenied, ExpiredToken, OAuthError

log = logging.getLogger(__name__)

_DONE = "<!doctype html><title>Signed in</title><p>Signed in. You can close this tab."
_REFUSED = "<!doctype html><title>Not signed in</title><p>Not signed in: {why}."


_LOOPBACK_HOSTS = ("localhost", "127.0.0.1", "::1")


def is_loopback(redirect_uri: str) -> bool:
    """Whether the redirect comes back to this machine (else it goes to a page of the
    service's own that shows the code, for the user to paste)."""
    parts = urlsplit(redirect_uri)
    return parts.scheme == "http" and parts.hostname in _LOOPBACK_HOSTS


def with_port(redirect_uri: str, port: int) -> str:
    """``redirect_uri`` naming ``port`` (the one a listener asked for as 0 bound)."""
    parts = urlsplit(redirect_uri)
    host = parts.hostname or "127.0.0.1"
    host = f"[{host}]" if ":" in host else host
    return urlunsplit(parts._replace(netloc=f"{host}:{port}"))


def listen_address(redirect_uri: str) -> tuple[int, str]:
    """The port and path a loopback redirect URI names.

    :raises OAuthError: it is not an ``http://localhost`` (or 127.0.0.1) URI with a port.
    """
    parts = urlsplit(redirect_uri)
    if not is_loopback(redirect_uri):
        raise OAuthError(f"a loopback redirect must be http://localhost:PORT/...: "
                         f"{redirect_uri!r}", status=400, code="invalid_redirect_uri")
    if parts.port is None:
        raise OAuthError(f"the loopback redirect {redirect_uri!r} names no port", status=400,
                         code="invalid_redirect_uri")
    return parts.port, parts.path or "/"


class LoopbackListener:
    """A one-shot HTTP listener on 127.0.0.1 for one sign-in's redirect."""

    def __init__(self, port: int, path: str, state: str, *, host: str = "127.0.0.1") -> None:
        self.host, self.port, self.path, self.state = host, port, path, state
        self._result: asyncio.Future[str] = asyncio.get_running_loop().create_future()
        self._runner: web.AppRunner | None = None

    async def start(self) -> None:
        """Bind the port.

        :raises OAuthError: it is taken (another sign-in, the official CLI): the paste
            fallback still works.
        """
        app = web.Application()
        app.router.add_get(self.path, self._callback)
        runner = web.AppRunner(app, access_log=None)  # the query holds the code: no log
        await runner.setup()
        try:
            site = web.TCPSite(runner, self.host, self.port, reuse_address=True)
            await site.start()
        except OSError as exc:
            await runner.cleanup()
            raise OAuthError(f"cannot listen on {self.host}:{self.port} for the sign-in's "
                             f"redirect ({exc.strerror or exc}); paste the address instead",
                             code="loopback_unavailable") from None
        self._runner = runner
        bound = [a for a in runner.addresses if isinstance(a, tuple)]
        if bound:  # the port really bound (when 0 asked for any free one)
            self.port = int(bound[0][1])

    @property
    def done(self) -> bool:
        return self._result.done()

    async def _callback(self, request: web.Request) -> web.Response:
        query = request.query
        if query.get("state") != self.state:
            return web.Response(status=400, text=_REFUSED.format(why="unknown sign-in"),
                                content_type="text/html")
        if not self._result.done():
            if "error" in query:
                self._result.set_exception(AccessDenied(
                    f"the authorization was refused: {query['error']}", error=query["error"]))
            elif query.get("code"):
                self._result.set_result(query["code"])
            else:
                return web.Response(status=400, text=_REFUSED.format(why="no code"),
                                    content_type="text/html")
        refused = "error" in query
        return web.Response(text=_REFUSED.format(why=query["error"]) if refused else _DONE,
                            content_type="text/html")

    async def wait(self, timeout: float) -> str:
        """The authorization code, once the redirect arrives (at most ``timeout`` s).

        :raises ExpiredToken: no redirect in time.
        :raises AccessDenied: the user refused.
        """
        try:
            async with asyncio.timeout(timeout):
                return await asyncio.shield(self._result)
        except TimeoutError:
            raise ExpiredToken(f"no sign-in arrived within {timeout:g}s") from None

    def code(self) -> str | None:
        """The code if the redirect has arrived (raises what :meth:`wait` would), else None."""
        return self._result.result() if self._result.done() else None

    async def close(self) -> None:
        if not self._result.done():
            self._result.cancel()
        elif not self._result.cancelled():
            self._result.exception()  # retrieved: no "never retrieved" warning
        if self._runner is not None:
            runner, self._runner = self._runner, None
            await runner.cleanup()
