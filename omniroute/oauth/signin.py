"""One sign-in from start to tokens, whatever the service's flow; and the sign-ins
the management API keeps between its calls.

Used alike by ``omniroute login`` (which waits, bounded, for the paste, the
redirect or the device grant: :meth:`SignIn.wait`) and by ``/api/oauth/{service}/...``
(``start``, then ``complete`` with the pasted code or ``poll`` until done). A sign-in
holds its PKCE verifier and ``state`` in memory only; :class:`SignIns` keeps those of
the API for ``ttl`` seconds, at most ``max_pending`` at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable, Coroutine, Mapping
from dataclasses import replace
from typing import Any

from omniroute.errors import NotFound, RateLimited
from omniroute.oauth.client import TokenClient
from omniroute.oauth.device import DevicePoll, start_device
from omniroute.oauth.errors import ExpiredToken, OAuthError, StateMismatch
from omniroute.oauth.loopback import LoopbackListener, is_loopback, listen_address, with_port
from omniroute.oauth.paste import parse_pasted
from omniroute.oauth.pkce import Pkce, new_state
from omniroute.oauth.service import Account, OAuthService
from omniroute.oauth.tokens import TokenSet

#: seconds a sign-in waits for the user, by default (the CLI's and the API's)
SIGN_IN_TTL = 600.0


class SignIn:
    """One sign-in: :meth:`start`, then :meth:`complete` / :meth:`poll` / :meth:`wait`,
    then :meth:`account`; :meth:`close` in every case."""

    def __init__(
        self, service: OAuthService, client: TokenClient, settings: Mapping[str, Any] | None = None,
        *, name: str | None = None, ttl: float = SIGN_IN_TTL,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        """
        :param settings: the connection settings the account will have (URL overrides).
        :param name: the account's name, when the user gave one.
        :param ttl: seconds the user has to finish.
        """
        self.service, self.client = service, client
        self.settings = dict(settings or {})
        self.name = name
        self.endpoints = service.endpoints(self.settings)
        self.state = new_state()
        self.pkce = Pkce.new() if service.pkce else None
        self.clock = clock
        self.ttl = ttl
        self.expires = clock() + ttl
        self.url: str | None = None
        self.device: DevicePoll | None = None
        self.listener: LoopbackListener | None = None
        #: why the loopback listener is not running (the paste still works)
        self.listen_error: str | None = None
        #: held while a code is exchanged (two pastes of one sign-in do not race)
        self.lock = asyncio.Lock()

    @property
    def expired(self) -> bool:
        return self.clock() >= self.expires

    async def start(self) -> dict[str, Any]:
        """Begin: ask for a device code, or build the URL (and start the listener).

        :returns: what the user needs, as JSON: ``url`` (code flows) or ``user_code`` and
            ``verification_uri`` (device flow), and ``state``, the sign-in's handle.
        """
        service = self.service
        view: dict[str, Any] = {"service": service.name, "flow": service.flow,
                                "state": self.state, "expires_in": round(self.ttl),
                                "instructions": service.instructions}
        if service.flow == "device":
            code = await start_device(service, self.client, self.endpoints, self.pkce)
            self.device = DevicePoll(service, self.client, self.endpoints, code, self.pkce,
                                     clock=self.clock)
            self.expires = min(self.expires, self.clock() + code.expires_in)
            view.update(user_code=code.user_code, verification_uri=code.verification_uri,
                        verification_uri_complete=code.verification_uri_complete,
                        interval=code.interval, expires_in=round(self.expires - self.clock()))
            return view
        if service.flow == "loopback":
            await self._listen()  # first: a listener on any free port names it in the URL
        self.url = service.authorization_url(self.endpoints, self.state, self.pkce)
        view["url"] = self.url
        if service.flow == "loopback":
            view.update(redirect_uri=self.endpoints.redirect_uri,
                        listening=self.listener is not None)
            if self.listen_error:
                view["listen_error"] = self.listen_error
        return view

    async def _listen(self) -> None:
        """Start the listener the redirect comes back to. A redirect to a page of the
        service's own (a no-browser sign-in) needs none: the user pastes the code it
        shows. A redirect on port 0 takes any free port, which the redirect URI (in the
        URL and in the code exchange) then names."""
        redirect = self.endpoints.redirect_uri
        if not is_loopback(redirect):
            return
        port, path = listen_address(redirect)
        listener = LoopbackListener(port, path, self.state)
        try:
            await listener.start()
        except OAuthError as exc:
            self.listen_error = exc.message
            return
        self.listener = listener
        if port == 0:
            self.endpoints = replace(self.endpoints,
                                     redirect_uri=with_port(redirect, listener.port))

    async def _exchange(self, code: str) -> TokenSet:
        service = self.service
        return await self.client.tokens(
            self.endpoints.token_url,
            service.code_request(self.endpoints, code, self.state, self.pkce),
            encoding=service.token_encoding, headers=service.headers)

    def _alive(self) -> None:
        if self.expired:
            raise ExpiredToken("this sign-in expired; start a new one")

    async def complete(self, pasted: str) -> TokenSet:
        """Finish with what the user pasted (``CODE#STATE``, a redirected URL, a code).

        :raises StateMismatch: the paste belongs to another sign-in.
        :raises InvalidGrant: the service refused the code (paste it again, or restart).
        """
        self._alive()
        if self.service.flow == "device":
            raise OAuthError("a device sign-in finishes by polling, not with a code",
                             status=400, code="wrong_flow")
        code, state = parse_pasted(pasted)
        if state is not None and state != self.state:
            raise StateMismatch("the pasted code belongs to another sign-in")
        return await self._exchange(code)

    async def poll(self) -> TokenSet | None:
        """One step: the tokens once the device grant or the redirect arrived, else None."""
        self._alive()
        if self.device is not None:
            return await self.device.poll()
        if self.listener is not None:
            code = self.listener.code()
            return None if code is None else await self._exchange(code)
        raise OAuthError("this sign-in finishes by pasting the code (complete), not by "
                         "polling", status=400, code="wrong_flow")

    async def wait(self, read_paste: Callable[[], Coroutine[Any, Any, str | None]] | None = None,
                   timeout: float | None = None) -> TokenSet:
        """Wait (bounded) for the device grant, the redirect or a paste, whichever
        comes first (the CLI). ``read_paste`` returns None at the end of input.

        :raises ExpiredToken: nothing in ``timeout`` seconds (default: what is left of
            the sign-in's ``ttl``).
        """
        left = max(0.0, self.expires - self.clock()) if timeout is None else timeout
        if self.device is not None:
            return await self.device.wait(left)
        tasks: dict[asyncio.Task[Any], str] = {}
        if self.listener is not None:
            tasks[asyncio.create_task(self.listener.wait(left))] = "redirect"
        if read_paste is not None:
            tasks[asyncio.create_task(read_paste())] = "paste"
        if not tasks:
            raise OAuthError("nothing to wait for: no listener and no paste", status=400)
        try:
            async with asyncio.timeout(left):
                while tasks:
                    done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
                    for task in done:
                        kind = tasks.pop(task)
                        value = task.result()
                        if kind == "redirect":
                            return await self._exchange(value)
                        if value and value.strip():
                            return await self.complete(value)
                raise OAuthError("no code was pasted", status=400, code="invalid_code")
        except TimeoutError:
            raise ExpiredToken(f"no sign-in within {round(left, 1):g}s") from None
        finally:
            for task in tasks:
                task.cancel()
            for task in tasks:
                with contextlib.suppress(BaseException):
                    await task

    async def account(self, tokens: TokenSet) -> Account:
        """The account the tokens make (the service's :meth:`~OAuthService.finish`)."""
        return await self.service.finish(tokens, self.client, self.endpoints)

    async def close(self) -> None:
        if self.listener is not None:
            listener, self.listener = self.listener, None
            await listener.close()


class SignIns:
    """The management API's sign-ins under way: in memory, each for its ``ttl``, at
    most ``max_pending`` at once (older expired ones are dropped first)."""

    def __init__(self, *, max_pending: int = 16) -> None:
        self.max_pending = max_pending
        self._pending: dict[str, SignIn] = {}

    def __len__(self) -> int:
        return len(self._pending)

    async def prune(self) -> None:
        """Drop (and close) the sign-ins whose time is up."""
        for state, signin in list(self._pending.items()):
            if signin.expired:
                del self._pending[state]
                await signin.close()

    async def add(self, signin: SignIn) -> None:
        """Keep a started sign-in.

        :raises RateLimited: ``max_pending`` sign-ins are under way already.
        """
        await self.prune()
        if len(self._pending) >= self.max_pending:
            raise RateLimited(f"{self.max_pending} sign-ins are under way already; finish "
                              "one or wait for it to expire", retry_after=30.0,
                              code="too_many_sign_ins")
        self._pending[signin.state] = signin

    def get(self, service: str, state: str) -> SignIn:
        """The sign-in with handle ``state`` for ``service``.

        :raises NotFound: none (finished, expired, or never started here).
        """
        signin = self._pending.get(state)
        if signin is None or signin.service.name != service or signin.expired:
            raise NotFound(f"No {service} sign-in under way with that state (it finished, "
                           "expired, or was started elsewhere).", code="unknown_sign_in")
        return signin

    def only(self, service: str) -> SignIn:
        """The one sign-in under way for ``service`` (a paste without its state).

        :raises NotFound: none, or several (the state must say which).
        """
        found = [s for s in self._pending.values()
                 if s.service.name == service and not s.expired]
        if len(found) != 1:
            raise NotFound(f"{len(found)} {service} sign-ins are under way: give the 'state' "
                           "that start returned", code="unknown_sign_in")
        return found[0]

    async def finish(self, signin: SignIn) -> None:
        """Forget a finished sign-in (and stop its listener)."""
        if self._pending.get(signin.state) is signin:
            del self._pending[signin.state]
        await signin.close()

    async def close(self) -> None:
        pending, self._pending = list(self._pending.values()), {}
        for signin in pending:
            await signin.close()
