"""Refreshed credentials: kept encrypted, renewed once per connection at a time.

Subscription (OAuth) accounts hold short-lived access tokens. When one
expires the upstream answers 401/403, and the data path asks for a renewal::

    if decision.refresh and await refresher.refresh(target.provider):
        ...  # retry this target once, with the renewed credentials

:meth:`Refresher.refresh` is single-flight per connection: callers that hit
the 401 together wait for one call of the provider's
:meth:`~omniroute.providers.base.Provider.refresh_credentials` and all get its
answer; a caller whose 401 arrives just after (within ``reuse_for`` seconds)
gets that same answer, so neither a renewal that worked nor one that failed
is repeated by every request in flight. The renewal runs in its own task: a
caller that goes away (a client disconnect) does not cancel it for the
others, and ``timeout`` bounds it.

A retry is worth it only with other credentials than the refused ones. The data
path says which credentials the refused call carried (``sent_with``: the
provider's ``credentials_generation`` when the call was sent, which the HTTP layer
notes on the error): when they were replaced since (a renewal landed while the
call was under way), the answer is True at once, without renewing again; when the
call already carried the credentials of the renewal that just worked, the brand-new
token itself was refused: the answer is False (an identical retry would be a hidden
one, and renewing again seconds later would not help).

The provider renews its tokens and hands the new set to
:meth:`~omniroute.providers.base.Provider.save_credentials`, which uses them
at once and persists them through its context's :class:`CredentialStore`:
:class:`StoredCredentials` in a gateway (SQLite, encrypted by the vault,
surviving restarts), :class:`MemoryCredentials` for a provider built alone.

Several processes (``--workers``): the stored credentials are the truth. A
refresh token may be single-use (rotated on every renewal; reusing one can
revoke the whole grant), so a process whose provider no longer holds the
stored credentials (another worker renewed them first) does not renew with
its stale ones: it hands them to the provider
(:meth:`~omniroute.providers.base.Provider.adopt_credentials`; a type that
cannot take them up answers False, and the configuration reload brings it the
new ones). The lock is per process, and with a :class:`RenewalLock` (instances
sharing state, ``state_url``) also across processes: one renews, the others
wait for it and take up what it stored.

A renewal that is refused for good (the refresh token was revoked, expired or spent)
raises :class:`SignInRequired`: the provider has marked the account
(:data:`SIGN_IN_REQUIRED` in its kept credentials, :func:`sign_in_required` reads
it), and the refresher tells ``on_sign_in`` so that routing leaves the account out
at once. Only a new sign-in (or import), which replaces the credentials, clears it.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any, Protocol

from omniroute.errors import GatewayError

if TYPE_CHECKING:
    from omniroute.providers.base import Provider
    from omniroute.storage.store import Store

log = logging.getLogger(__name__)

#: the credential field that marks an account whose renewal was refused for good:
#: ``{"reason": str, "at": epoch seconds}``
SIGN_IN_REQUIRED = "sign_in_required"


def sign_in_required(credentials: Mapping[str, Any]) -> str | None:
    """Why the account must be signed in again, or None when it need not be."""
    mark = credentials.get(SIGN_IN_REQUIRED)
    if not mark:
        return None
    reason = mark.get("reason") if isinstance(mark, Mapping) else None
    return reason if isinstance(reason, str) and reason else "sign-in required"


class SignInRequired(GatewayError):
    """A renewal was refused for good: the account needs a new sign-in (the provider
    marked its credentials before raising this)."""

    status, type, code = 401, "authentication_error", "sign_in_required"


class CredentialStore(Protocol):
    """Where a connection's renewed credentials are kept."""

    async def load(self, connection_id: str) -> dict[str, Any] | None:
        """The credentials kept for the connection; None when none are known."""

    async def save(self, connection_id: str, credentials: Mapping[str, Any]) -> None:
        """Keep ``credentials`` (the complete set, replacing the old one).

        :raises LookupError: the store knows the connection does not exist.
        """


class RenewalLock(Protocol):
    """One renewal per connection across processes (instances sharing state)."""

    async def hold(self, connection_id: str, seconds: float) -> bool | None:
        """Take the connection's renewal for up to ``seconds``: True when this process
        renews (:meth:`release` after), False when another does (:meth:`wait` for it),
        None when the lock cannot be reached (this process decides alone)."""

    async def wait(self, connection_id: str, seconds: float) -> None:
        """Until the process that holds the renewal releases it (or ``seconds`` pass)."""

    def release(self, connection_id: str) -> None:
        """The renewal is over (must not block or raise)."""


class MemoryCredentials:
    """The default for a provider built outside a gateway: kept in this process only."""

    def __init__(self) -> None:
        self.saved: dict[str, dict[str, Any]] = {}

    async def load(self, connection_id: str) -> dict[str, Any] | None:
        found = self.saved.get(connection_id)
        return None if found is None else dict(found)

    async def save(self, connection_id: str, credentials: Mapping[str, Any]) -> None:
        self.saved[connection_id] = dict(credentials)


class StoredCredentials:
    """Credentials in the gateway's database, encrypted by its vault
    (:meth:`~omniroute.storage.store.Store.save_credentials`)."""

    def __init__(self, store: Store) -> None:
        self.store = store

    async def load(self, connection_id: str) -> dict[str, Any] | None:
        conn = await self.store.get_connection(connection_id)
        return None if conn is None else conn.credentials

    async def save(self, connection_id: str, credentials: Mapping[str, Any]) -> None:
        if not await self.store.save_credentials(connection_id, dict(credentials)):
            raise LookupError(f"connection {connection_id!r} no longer exists")


class Refresher:
    """Renews a connection's credentials once for everyone who needs it now."""

    def __init__(
        self,
        store: CredentialStore | None = None,
        *,
        timeout: float = 30.0,
        reuse_for: float = 10.0,
        clock: Callable[[], float] = time.monotonic,
        lock: RenewalLock | None = None,
        on_sign_in: Callable[[Provider, str], None] | None = None,
    ) -> None:
        """
        :param store: checked before a renewal: when it holds other credentials than
            the provider, another process renewed them (None: no check).
        :param timeout: seconds one renewal may take; past that it counts as failed.
        :param reuse_for: seconds a renewal's answer is also given to later callers
            of the same provider instance.
        :param clock: monotonic seconds (tests pass a manual clock's).
        :param lock: one renewal per connection across processes too (None: per process).
        :param on_sign_in: told ``(provider, reason)`` when a renewal raised
            :class:`SignInRequired` (the gateway takes the account out of routing).
        """
        self.store = store
        self.lock = lock
        self.timeout = timeout
        self.reuse_for = reuse_for
        self.clock = clock
        self.on_sign_in = on_sign_in
        self._flights: dict[str, asyncio.Task[bool]] = {}
        self._last: dict[str, tuple[Provider, bool, float]] = {}

    async def refresh(self, provider: Provider, *, sent_with: int | None = None) -> bool:
        """Renew ``provider``'s credentials, or join the renewal under way.

        True when the renewal worked and the call is worth retrying. Never raises
        for a failed renewal (it is logged); bounded by ``timeout``.

        :param sent_with: the provider's ``credentials_generation`` when the refused
            call was sent (None: unknown, e.g. a renewal ahead of expiry). True at once
            when the credentials changed since; False when the call already carried
            what a renewal gave (see the module docstring).
        """
        if sent_with is not None and provider.credentials_generation != sent_with:
            return True  # renewed since the call went: retry with the new credentials
        cid = provider.connection.id
        flight = self._flights.get(cid)
        if flight is None:
            last = self._last.get(cid)
            if last is not None and last[0] is provider and (
                    self.clock() - last[2] < self.reuse_for):
                # a renewal just ended: its answer, unless this call carried its result
                return last[1] and sent_with is None
            flight = asyncio.create_task(self._renew(provider), name=f"omniroute-refresh-{cid}")
            self._flights[cid] = flight
            flight.add_done_callback(lambda done: self._landed(cid, provider, done))
        # shielded: a caller that is cancelled leaves the renewal running for the others
        renewed = await asyncio.shield(flight)
        # (a renewal that answered True without new credentials gives nothing to retry with)
        return renewed and (sent_with is None or provider.credentials_generation != sent_with)

    def _landed(self, cid: str, provider: Provider, flight: asyncio.Task[bool]) -> None:
        if self._flights.get(cid) is flight:
            del self._flights[cid]
        ok = not flight.cancelled() and flight.result()
        self._last[cid] = (provider, ok, self.clock())

    async def _renew(self, provider: Provider) -> bool:
        conn = provider.connection
        held: bool | None = None
        try:
            async with asyncio.timeout(self.timeout):
                if self.lock is not None:
                    held = await self.lock.hold(conn.id, self.timeout)
                    if held is False:  # another process renews: wait, then take up its work
                        await self.lock.wait(conn.id, self.timeout)
                if self.store is not None:
                    stored = await self.store.load(conn.id)
                    if stored is not None and stored != conn.credentials:
                        log.info("credentials of %s were renewed elsewhere; taking them up "
                                 "instead of renewing the stale ones", conn.name)
                        return await self._adopt(provider, stored)
                if held is False:
                    return False  # the other renewal stored nothing new: it failed
                ok = bool(await provider.refresh_credentials())
        except TimeoutError:
            log.warning("renewing the credentials of %s took over %gs", conn.name, self.timeout)
            return False
        except SignInRequired as exc:
            log.warning("%s needs a new sign-in: %s", conn.name, exc.message)
            if self.on_sign_in is not None:
                self.on_sign_in(provider, exc.message)
            return False
        except (GatewayError, LookupError) as exc:  # the refresh token was refused; or
            # the connection was deleted meanwhile
            log.warning("renewing the credentials of %s failed: %s", conn.name, exc)
            return False
        except Exception:  # a provider's bug must not fail the requests waiting on it
            log.exception("renewing the credentials of %s raised", conn.name)
            return False
        finally:
            if held and self.lock is not None:
                self.lock.release(conn.id)
        log.info("credentials of %s %s", conn.name, "renewed" if ok else "not renewed")
        return ok

    @staticmethod
    async def _adopt(provider: Provider, stored: Mapping[str, Any]) -> bool:
        """Hand ``stored`` to the provider; when it takes them up, its credentials are
        new ones for the retry check (``sent_with``), whether or not its override of
        :meth:`~omniroute.providers.base.Provider.adopt_credentials` counted them."""
        before = provider.credentials_generation
        if not await provider.adopt_credentials(stored):
            return False
        if provider.credentials_generation == before:
            provider.credentials_generation += 1
        return True

    async def close(self, grace: float = 5.0) -> None:
        """Shutting down: let renewals under way finish for up to ``grace`` seconds (a
        rotated refresh token must be kept), then cancel the rest."""
        flights = list(self._flights.values())
        if not flights:
            return
        _, late = await asyncio.wait(flights, timeout=grace)
        for flight in late:
            flight.cancel()
        await asyncio.gather(*late, return_exceptions=True)
