"""The background renewal of idle subscription accounts.

Requests renew a token that is about to lapse (``OAuthProvider.fresh``), but an
account nobody uses for a while would reach its first request with a lapsed token,
and a refresh token that is never used may lapse itself (some services expire them
after a period, and every renewal rotates them). :class:`TokenKeeper` runs for the
gateway's life (started at start-up, cancelled at shutdown) and, every
``oauth_refresh_interval`` seconds, renews through the shared
:class:`~omniroute.credentials.Refresher` (one renewal per account at a time, each
bounded by its timeout):

* an access token with less than ``oauth_refresh_margin + oauth_refresh_interval``
  seconds left, so that no token lapses between two sweeps;
* an account whose refresh token itself lapses within :data:`REFRESH_AHEAD` (once per
  lapse time: when the service does not move it, renewing again would not help).

An account whose renewal failed is tried again after a growing pause (one interval,
doubled each time, at most :data:`MAX_PAUSE`); one marked "needs sign-in" is left
alone. Several worker processes each run one: the first sweep waits a random part of
an interval so they do not line up, and the refresher does not renew credentials
another process renewed first.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Callable, Iterable
from typing import Any

from omniroute.credentials import Refresher
from omniroute.oauth.provider import OAuthProvider
from omniroute.providers.base import Provider
from omniroute.resilience.clock import Clock, SystemClock

log = logging.getLogger(__name__)

#: renew an account whose refresh token lapses within this many seconds
REFRESH_AHEAD = 24 * 3600.0
#: the longest pause after failed renewals of one account
MAX_PAUSE = 3600.0


class TokenKeeper:
    """Renews idle OAuth accounts' tokens before they lapse (see the module)."""

    def __init__(
        self, providers: Callable[[], Iterable[Provider]], refresher: Refresher,
        settings: Callable[[], Any], *, clock: Clock | None = None,
        rng: random.Random | None = None,
    ) -> None:
        """
        :param providers: the live provider instances (read at each sweep).
        :param settings: the live runtime settings (``oauth_refresh_margin``,
            ``oauth_refresh_interval``).
        """
        self.providers = providers
        self.refresher = refresher
        self.settings = settings
        self.clock: Clock = clock or SystemClock()
        self.rng = rng or random.Random()
        self._pause: dict[str, tuple[float, int]] = {}  # id -> (retry after, failures)
        self._lapse_tried: dict[str, Any] = {}  # id -> the refresh lapse acted upon
        self.renewals = 0
        self.sweeps = 0

    async def run(self) -> None:
        """Sweep every interval until cancelled (the first after a random part of one)."""
        await self.clock.sleep(self.rng.uniform(0, self.settings().oauth_refresh_interval))
        while True:
            try:
                await self.sweep()
            except Exception:  # a bug must not end the renewals for the gateway's life
                log.exception("the background token renewal failed; trying again later")
            await self.clock.sleep(self.settings().oauth_refresh_interval)

    def _due(self, provider: OAuthProvider, now: float, ahead: float) -> str | None:
        """Why ``provider`` is to be renewed now (None: it is not)."""
        if provider.sign_in_reason is not None:
            return None
        if provider.renewal_due(now, ahead):
            return "access token lapsing"
        lapse = provider.refresh_lapse_in(now)
        expires_at = provider.connection.credentials.get("refresh_expires_at")
        if (lapse is not None and lapse <= REFRESH_AHEAD
                and self._lapse_tried.get(provider.connection.id) != expires_at):
            return "refresh token lapsing"
        return None

    async def sweep(self) -> int:
        """One pass over the accounts; returns how many were renewed."""
        self.sweeps += 1
        settings = self.settings()
        interval = settings.oauth_refresh_interval
        ahead = settings.oauth_refresh_margin + interval
        renewed = 0
        for provider in list(self.providers()):
            if not isinstance(provider, OAuthProvider):
                continue
            cid = provider.connection.id
            now = self.clock.time()
            paused = self._pause.get(cid)
            if paused is not None and self.clock.monotonic() < paused[0]:
                continue
            why = self._due(provider, now, ahead)
            if why is None:
                continue
            if why == "refresh token lapsing":
                self._lapse_tried[cid] = provider.connection.credentials.get(
                    "refresh_expires_at")
            log.info("renewing the tokens of %s in the background (%s)",
                     provider.connection.name, why)
            if await self.refresher.refresh(provider):
                renewed += 1
                self._pause.pop(cid, None)
            else:
                failures = (paused[1] if paused else 0) + 1
                pause = min(MAX_PAUSE, interval * 2 ** (failures - 1))
                self._pause[cid] = (self.clock.monotonic() + pause, failures)
        self.renewals += renewed
        live = {p.connection.id for p in self.providers()}
        for table in (self._pause, self._lapse_tried):
            for cid in [c for c in table if c not in live]:
                del table[cid]
        return renewed
