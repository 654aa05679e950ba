"""The device authorization grant (RFC 8628), with PKCE where the service wants it.

:func:`start_device` asks for a device code; :class:`DevicePoll` polls the token
endpoint no faster than the service's ``interval``, adds 5 seconds on ``slow_down``
(section 3.5), stops on ``expired_token`` / ``access_denied`` and at the code's own
expiry. :meth:`DevicePoll.poll` is one step (the management API's ``poll`` route);
:meth:`DevicePoll.wait` loops until done, bounded (``omniroute login``).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from omniroute.oauth.client import TokenClient
from omniroute.oauth.errors import AuthorizationPending, ExpiredToken, OAuthError, SlowDown
from omniroute.oauth.pkce import Pkce
from omniroute.oauth.tokens import TokenSet

if TYPE_CHECKING:
    from omniroute.oauth.service import Endpoints, OAuthService

#: RFC 8628 section 3.2: the interval when the service names none, and slow_down's step
DEFAULT_INTERVAL, SLOW_DOWN_STEP = 5.0, 5.0
#: a device code's life when the service names none
DEFAULT_EXPIRY = 900.0


@dataclass(frozen=True, slots=True)
class DeviceCode:
    """A device authorization answer (section 3.2)."""

    device_code: str = field(repr=False)
    user_code: str
    verification_uri: str
    verification_uri_complete: str | None
    #: seconds the code lives, from when it was issued
    expires_in: float
    interval: float

    @classmethod
    def from_response(cls, data: dict[str, Any]) -> DeviceCode:
        """:raises OAuthError: a field the grant needs is missing."""
        device, user = data.get("device_code"), data.get("user_code")
        uri = data.get("verification_uri") or data.get("verification_url")  # Google's name
        if not all(isinstance(v, str) and v for v in (device, user, uri)):
            raise OAuthError("the device authorization answer lacks device_code, user_code "
                             "or verification_uri")
        complete = data.get("verification_uri_complete")
        return cls(str(device), str(user), str(uri),
                   complete if isinstance(complete, str) and complete else None,
                   _positive(data.get("expires_in"), DEFAULT_EXPIRY),
                   _positive(data.get("interval"), DEFAULT_INTERVAL))


def _positive(value: Any, default: float) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0:
        return default
    return float(value)


async def start_device(service: OAuthService, client: TokenClient, endpoints: Endpoints,
                       pkce: Pkce | None) -> DeviceCode:
    """Ask the service for a device code."""
    data = await client.post(endpoints.device_url, service.device_request(endpoints, pkce),
                             encoding=service.token_encoding, headers=service.device_headers())
    return DeviceCode.from_response(data)


class DevicePoll:
    """Polling one device code for its tokens."""

    def __init__(self, service: OAuthService, client: TokenClient, endpoints: Endpoints,
                 code: DeviceCode, pkce: Pkce | None, *,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.service, self.client, self.endpoints = service, client, endpoints
        self.code, self.pkce, self.clock = code, pkce, clock
        self.interval = code.interval
        self.expires = clock() + code.expires_in
        self._next = clock() + code.interval  # the user needs a moment anyway
        self.polls = 0

    def wait_time(self) -> float:
        """Seconds until the next poll is allowed (0: now)."""
        return max(0.0, self._next - self.clock())

    async def poll(self) -> TokenSet | None:
        """One poll, if the interval allows it: the tokens, or None while pending.

        :raises ExpiredToken: the code expired (here or at the service).
        :raises AccessDenied: the user refused.
        :raises OAuthError: the service failed otherwise.
        """
        now = self.clock()
        if now >= self.expires:
            raise ExpiredToken("the device code expired before the sign-in was finished")
        if now < self._next:
            return None
        self.polls += 1
        self._next = now + self.interval
        try:
            return await self.client.tokens(
                self.endpoints.token_url,
                self.service.device_token_request(self.endpoints, self.code.device_code,
                                                  self.pkce),
                encoding=self.service.token_encoding, headers=self.service.headers)
        except SlowDown:
            self.interval += SLOW_DOWN_STEP
            self._next = self.clock() + self.interval
            return None
        except AuthorizationPending:
            return None

    async def wait(self, timeout: float) -> TokenSet:
        """Poll until the tokens come, the code expires or ``timeout`` seconds pass.

        :raises ExpiredToken: no sign-in in time.
        """
        deadline = self.clock() + timeout
        while True:
            tokens = await self.poll()
            if tokens is not None:
                return tokens
            left = min(deadline, self.expires) - self.clock()
            if left <= 0:
                raise ExpiredToken(f"no sign-in within {min(timeout, self.code.expires_in):g}s")
            await asyncio.sleep(min(self.wait_time(), left) or 0.01)
