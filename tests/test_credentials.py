"""Renewed credentials: one renewal per connection at a time, kept encrypted across restarts.

The provider is a subclass whose ``refresh_credentials`` counts its calls and
can be held at a gate, fail, hang or raise, so the tests see exactly how many
renewals the :class:`~omniroute.credentials.Refresher` lets through.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable, Mapping
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from omniroute import hookimpl
from omniroute.credentials import (
    SIGN_IN_REQUIRED,
    MemoryCredentials,
    Refresher,
    SignInRequired,
    StoredCredentials,
    sign_in_required,
)
from omniroute.errors import UpstreamStatusError
from omniroute.gateway import Gateway
from omniroute.plugins import load_plugins
from omniroute.providers.base import Provider, ProviderContext, Timeouts
from omniroute.providers.openai import OpenAIProvider
from omniroute.registry import Registry
from omniroute.storage.store import Connection
from omniroute.testing import make_test_config

ACCESS, REFRESH = "at-original-0000", "rt-original-0000"


class CountingOAuth(Provider):
    """An OAuth-like provider: each renewal rotates both tokens (``at-N``/``rt-N``)."""

    type = "test-oauth"
    auth_kind = "oauth"
    credential_fields = ("access_token", "refresh_token")

    def __init__(self, connection: Connection, context: ProviderContext) -> None:
        super().__init__(connection, context)
        self.calls = 0
        self.gate: asyncio.Event | None = None
        self.outcome = "ok"  # or "refused", "false", "bug"
        self.headers = {"Authorization": f"Bearer {connection.credentials['access_token']}"}

    async def refresh_credentials(self) -> bool:
        self.calls += 1
        if self.gate is not None:
            await self.gate.wait()
        if self.outcome == "refused":
            raise UpstreamStatusError("invalid_grant: refresh token revoked", status=400,
                                      code="invalid_grant")
        if self.outcome == "bug":
            raise RuntimeError("a bug in the provider")
        if self.outcome == "revoked":
            await self.save_credentials({**self.connection.credentials,
                                         SIGN_IN_REQUIRED: {"reason": "revoked", "at": 1.0}})
            raise SignInRequired("invalid_grant: refresh token revoked")
        if self.outcome == "false":
            return False
        n = self.calls
        await self.save_credentials({"access_token": f"at-renewed-{n:04d}",
                                     "refresh_token": f"rt-renewed-{n:04d}"})
        self.headers = {"Authorization": f"Bearer {self.connection.credentials['access_token']}"}
        return True


class OAuthPlugin:
    @hookimpl
    def register_providers(self, register: Callable[[type[Provider]], None]) -> None:
        register(CountingOAuth)


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def connection(cid: str = "conn_oauth") -> Connection:
    return Connection(id=cid, type="test-oauth", name=f"name-{cid}", prefix=cid,
                      credentials={"access_token": ACCESS, "refresh_token": REFRESH})


@pytest.fixture
async def context() -> AsyncIterator[ProviderContext]:
    async with aiohttp.ClientSession() as http:
        yield ProviderContext(http, Timeouts(connect=1, first_byte=1, idle=1, total=1))


async def settle() -> None:
    for _ in range(10):
        await asyncio.sleep(0)


# ------------------------------------------------------------------ single flight

async def test_concurrent_callers_share_one_renewal(context: ProviderContext) -> None:
    provider = CountingOAuth(connection(), context)
    provider.gate = asyncio.Event()
    refresher = Refresher(context.credentials)
    callers = [asyncio.create_task(refresher.refresh(provider)) for _ in range(10)]
    await settle()
    assert provider.calls == 1  # the others wait for it
    provider.gate.set()
    assert await asyncio.gather(*callers) == [True] * 10
    assert provider.calls == 1
    assert provider.headers == {"Authorization": "Bearer at-renewed-0001"}
    assert isinstance(context.credentials, MemoryCredentials)
    assert context.credentials.saved == {"conn_oauth": {
        "access_token": "at-renewed-0001", "refresh_token": "rt-renewed-0001"}}


async def test_a_refused_renewal_is_not_repeated_by_every_waiter(
    context: ProviderContext, caplog: pytest.LogCaptureFixture,
) -> None:
    provider = CountingOAuth(connection(), context)
    provider.gate, provider.outcome = asyncio.Event(), "refused"
    clock = Clock()
    refresher = Refresher(context.credentials, reuse_for=10.0, clock=clock)
    callers = [asyncio.create_task(refresher.refresh(provider)) for _ in range(5)]
    await settle()
    provider.gate.set()
    with caplog.at_level(logging.WARNING, "omniroute.credentials"):
        assert await asyncio.gather(*callers) == [False] * 5
    assert provider.calls == 1 and "invalid_grant" in caplog.text
    clock.now += 9.0  # a 401 that arrives just after: the same answer, no new call
    assert await refresher.refresh(provider) is False and provider.calls == 1
    clock.now += 1.0  # later on, a new renewal is tried
    assert await refresher.refresh(provider) is False and provider.calls == 2
    provider.outcome = "ok"
    clock.now += 10.0
    assert await refresher.refresh(provider) is True and provider.calls == 3


async def test_a_late_401_reuses_the_renewal_that_just_worked(context: ProviderContext) -> None:
    provider = CountingOAuth(connection(), context)
    clock = Clock()
    refresher = Refresher(context.credentials, reuse_for=10.0, clock=clock)
    assert await refresher.refresh(provider) is True
    clock.now += 5.0  # a request sent with the old token fails after the renewal landed
    assert await refresher.refresh(provider) is True and provider.calls == 1
    clock.now += 5.0  # the renewed token expired too: renew again
    assert await refresher.refresh(provider) is True and provider.calls == 2
    assert provider.connection.credentials["refresh_token"] == "rt-renewed-0002"


async def test_a_401_is_retried_only_with_other_credentials_than_it_carried(
    context: ProviderContext,
) -> None:
    provider = CountingOAuth(connection(), context)
    clock = Clock()
    refresher = Refresher(context.credentials, reuse_for=10.0, clock=clock)
    old = provider.credentials_generation
    assert await refresher.refresh(provider, sent_with=old) is True and provider.calls == 1
    renewed = provider.credentials_generation
    assert renewed == old + 1
    clock.now += 2.0  # a call sent before the renewal landed: retried, not renewed again
    assert await refresher.refresh(provider, sent_with=old) is True and provider.calls == 1
    # a call that already carried the renewed token was refused: no identical retry, and
    # no second renewal seconds after the first
    assert await refresher.refresh(provider, sent_with=renewed) is False
    assert provider.calls == 1
    clock.now += 10.0  # later on, a 401 with the current token renews again
    assert await refresher.refresh(provider, sent_with=renewed) is True and provider.calls == 2
    # a renewal that gave no new credentials has nothing to retry with
    provider.outcome = "false"
    clock.now += 10.0
    current = provider.credentials_generation
    assert await refresher.refresh(provider, sent_with=current) is False and provider.calls == 3


async def test_the_generation_moves_only_when_the_secrets_change(
    context: ProviderContext,
) -> None:
    provider = CountingOAuth(connection(), context)
    kept = dict(provider.connection.credentials)
    await provider.save_credentials({**kept, "extra": {"project": "p-1"}})  # no secret
    assert provider.credentials_generation == 0
    await provider.save_credentials({**kept, "access_token": "at-other"})
    assert provider.credentials_generation == 1


async def test_a_rebuilt_provider_is_not_given_the_old_instances_answer(
    context: ProviderContext,
) -> None:
    old = CountingOAuth(connection(), context)
    old.outcome = "false"
    refresher = Refresher(context.credentials)
    assert await refresher.refresh(old) is False
    new = CountingOAuth(connection(), context)  # e.g. an operator pasted a new token
    assert await refresher.refresh(new) is True and new.calls == 1


async def test_connections_renew_independently(context: ProviderContext) -> None:
    one, two = CountingOAuth(connection("c1"), context), CountingOAuth(connection("c2"), context)
    one.gate = asyncio.Event()
    refresher = Refresher(context.credentials)
    held = asyncio.create_task(refresher.refresh(one))
    await settle()
    assert await asyncio.wait_for(refresher.refresh(two), 1) is True  # not behind c1's lock
    one.gate.set()
    assert await held is True and (one.calls, two.calls) == (1, 1)


async def test_a_cancelled_caller_leaves_the_renewal_to_the_others(
    context: ProviderContext,
) -> None:
    provider = CountingOAuth(connection(), context)
    provider.gate = asyncio.Event()
    refresher = Refresher(context.credentials)
    first = asyncio.create_task(refresher.refresh(provider))
    second = asyncio.create_task(refresher.refresh(provider))
    await settle()
    first.cancel()  # its client went away
    await settle()
    provider.gate.set()
    assert await second is True and provider.calls == 1
    assert first.cancelled()
    assert context.credentials.saved["conn_oauth"]["access_token"] == "at-renewed-0001"  # type: ignore[attr-defined]


async def test_a_hanging_renewal_is_bounded(context: ProviderContext) -> None:
    provider = CountingOAuth(connection(), context)
    provider.gate = asyncio.Event()  # never set
    refresher = Refresher(context.credentials, timeout=0.05)
    callers = [refresher.refresh(provider) for _ in range(3)]
    assert await asyncio.wait_for(asyncio.gather(*callers), 2) == [False] * 3
    assert provider.calls == 1 and provider.connection.credentials["access_token"] == ACCESS


async def test_closing_lets_a_renewal_finish_then_cancels_a_hung_one(
    context: ProviderContext,
) -> None:
    quick, hung = CountingOAuth(connection("c1"), context), CountingOAuth(connection("c2"), context)
    quick.gate, hung.gate = asyncio.Event(), asyncio.Event()
    refresher = Refresher(context.credentials)
    waiting = [asyncio.create_task(refresher.refresh(p)) for p in (quick, hung)]
    await settle()
    asyncio.get_running_loop().call_later(0.01, quick.gate.set)
    await asyncio.wait_for(refresher.close(grace=0.2), 2)
    assert await waiting[0] is True  # finished within the grace: its tokens are kept
    assert quick.connection.credentials["refresh_token"] == "rt-renewed-0001"
    with pytest.raises(asyncio.CancelledError):
        await waiting[1]


async def test_a_provider_bug_fails_the_renewal_not_the_callers(
    context: ProviderContext, caplog: pytest.LogCaptureFixture,
) -> None:
    provider = CountingOAuth(connection(), context)
    provider.outcome = "bug"
    with caplog.at_level(logging.ERROR, "omniroute.credentials"):
        assert await Refresher(context.credentials).refresh(provider) is False
    assert "a bug in the provider" in caplog.text


async def test_a_refusal_for_good_is_told_once_and_marks_the_account(
    context: ProviderContext,
) -> None:
    provider = CountingOAuth(connection(), context)
    provider.gate, provider.outcome = asyncio.Event(), "revoked"
    told: list[tuple[str, str]] = []
    refresher = Refresher(context.credentials,
                          on_sign_in=lambda p, why: told.append((p.connection.id, why)))
    callers = [asyncio.create_task(refresher.refresh(provider)) for _ in range(4)]
    await settle()
    provider.gate.set()
    assert await asyncio.gather(*callers) == [False] * 4
    assert provider.calls == 1 and told == [("conn_oauth", "invalid_grant: refresh token revoked")]
    assert sign_in_required(provider.connection.credentials) == "revoked"
    assert sign_in_required({"access_token": "x"}) is None
    assert sign_in_required({SIGN_IN_REQUIRED: True}) == "sign-in required"


async def test_credentials_renewed_elsewhere_are_not_renewed_again(
    context: ProviderContext,
) -> None:
    """Another worker renewed first: its refresh token may be single-use, so this
    worker's stale one must not be spent; the reload brings the new ones."""
    provider = CountingOAuth(connection(), context)
    store = MemoryCredentials()
    await store.save("conn_oauth", {"access_token": "at-other", "refresh_token": "rt-other"})
    assert await Refresher(store).refresh(provider) is False
    assert provider.calls == 0


class AdoptingOAuth(CountingOAuth):
    """Takes up what another process stored, the way a third-party type might: by
    setting its credentials, without counting them as new."""

    async def adopt_credentials(self, credentials: Mapping[str, Any]) -> bool:
        self.connection.credentials = dict(credentials)
        self.headers = {"Authorization": f"Bearer {credentials['access_token']}"}
        return True


async def test_a_401_is_retried_with_credentials_another_process_renewed(
    context: ProviderContext,
) -> None:
    """The refused call carried the old generation; the adopted set is a new one, so
    the call is retried with it (a shared-state instance would otherwise answer 401)."""
    provider = AdoptingOAuth(connection(), context)
    store = MemoryCredentials()
    await store.save("conn_oauth", {"access_token": "at-other", "refresh_token": "rt-other"})
    sent_with = provider.credentials_generation
    assert await Refresher(store).refresh(provider, sent_with=sent_with) is True
    assert provider.calls == 0
    assert provider.credentials_generation != sent_with
    assert provider.headers == {"Authorization": "Bearer at-other"}


# ------------------------------------------------------------------ kept in the database

def oauth_gateway(data_dir: Path) -> Gateway:
    plugins = load_plugins(extra=[("t-oauth", OAuthPlugin())])
    return Gateway(make_test_config(data_dir), Registry(plugins))


async def test_renewed_credentials_survive_a_restart_encrypted(tmp_path: Path) -> None:
    data_dir = tmp_path / "omniroute"
    gw = oauth_gateway(data_dir)
    await gw.start()
    try:
        await gw.store.save_connection(connection())
        await gw.reload()
        provider = gw.catalog.providers["conn_oauth"]
        assert isinstance(provider, CountingOAuth)
        version = await gw.db.config_version()
        assert await gw.refresher.refresh(provider) is True
        assert await gw.db.config_version() == version + 1  # other workers hear of it
        await gw.reload()
        assert gw.catalog.providers["conn_oauth"] is provider  # it already holds them: not rebuilt
        assert provider.headers == {"Authorization": "Bearer at-renewed-0001"}
    finally:
        await gw.close()

    files = [p for p in data_dir.iterdir() if p.name.startswith(gw.config.db_path.name)]
    assert files and all(b"renewed-0001" not in p.read_bytes() for p in files)
    assert all(b"original-0000" not in p.read_bytes() for p in files)

    again = oauth_gateway(data_dir)
    await again.start()
    try:
        restored = again.catalog.providers["conn_oauth"]
        assert restored.connection.credentials == {
            "access_token": "at-renewed-0001", "refresh_token": "rt-renewed-0001"}
        assert isinstance(restored, CountingOAuth)
        assert restored.headers == {"Authorization": "Bearer at-renewed-0001"}
    finally:
        await again.close()


async def test_another_worker_rebuilds_only_the_renewed_connection(tmp_path: Path) -> None:
    data_dir = tmp_path / "omniroute"
    one, two = oauth_gateway(data_dir), oauth_gateway(data_dir)
    await one.start()
    await two.start()
    try:
        await one.store.save_connection(connection("c1"))
        await one.store.save_connection(connection("c2"))
        await one.reload()
        await two.reload()
        before = dict(two.catalog.providers)
        assert await one.refresher.refresh(one.catalog.providers["c1"]) is True
        await two.reload()  # what its config watcher does when the version moves
        assert two.catalog.providers["c2"] is before["c2"]
        assert two.catalog.providers["c1"] is not before["c1"]
        renewed = two.catalog.providers["c1"].connection.credentials
        assert renewed["refresh_token"] == "rt-renewed-0001"
        # the stale instance a request may still hold is not renewed with a spent token
        stale = before["c1"]
        assert isinstance(stale, CountingOAuth)
        assert await two.refresher.refresh(stale) is False and stale.calls == 0
    finally:
        await two.close()
        await one.close()


async def test_saving_for_a_deleted_connection_fails_the_renewal(tmp_path: Path) -> None:
    gw = oauth_gateway(tmp_path / "omniroute")
    await gw.start()
    try:
        await gw.store.save_connection(connection())
        await gw.reload()
        provider = gw.catalog.providers["conn_oauth"]
        await gw.store.delete_connection("conn_oauth")
        assert await gw.refresher.refresh(provider) is False
        assert await StoredCredentials(gw.store).load("conn_oauth") is None
    finally:
        await gw.close()


# ----------------------------------------------------------------------------- the data path


class RenewingOpenAI(OpenAIProvider):
    """An OpenAI-compatible subscription account whose renewal yields the key the fake wants."""

    type = "test-oauth-openai"
    auth_kind = "oauth"
    renewals = 0

    async def refresh_credentials(self) -> bool:
        type(self).renewals += 1
        await asyncio.sleep(0.05)  # a real renewal takes a round trip: callers pile up
        await self.save_credentials({"api_key": "sk-renewed"})
        headers = {"Authorization": "Bearer sk-renewed"}
        self._json_headers = {**self._json_headers, **headers}
        self._stream_headers = {**self._stream_headers, **headers}
        return True


class RenewingPlugin:
    @hookimpl
    def register_providers(self, register: Callable[[type[Provider]], None]) -> None:
        register(RenewingOpenAI)


async def test_a_401_renews_once_and_every_request_is_retried(
    aiohttp_client, aiohttp_server, tmp_path: Path
) -> None:
    import openai
    from fakes.openai_upstream import FakeOpenAI

    from omniroute.testing import start_harness

    fake = FakeOpenAI(api_key="sk-renewed")
    server = await aiohttp_server(fake.app)
    plugins = load_plugins(extra=[("t-renew", RenewingPlugin())])
    gw = await start_harness(aiohttp_client, make_test_config(tmp_path / "gw"), plugins)
    view = await gw.add_provider({"type": "test-oauth-openai", "name": "sub", "prefix": "sub",
                                  "base_url": str(server.make_url("/v1")),
                                  "api_key": "sk-expired"})
    client = openai.AsyncOpenAI(base_url=gw.base_url + "/v1", api_key="x", max_retries=0)
    RenewingOpenAI.renewals = 0
    replies = await asyncio.gather(*(client.chat.completions.create(
        model="sub/gpt-4o-mini", messages=[{"role": "user", "content": f"hi {i}"}])
        for i in range(5)))
    assert [r.choices[0].message.content for r in replies] == [
        f"Hello! You said: hi {i}" for i in range(5)]
    assert RenewingOpenAI.renewals == 1  # five 401s, one renewal
    stored = await gw.store.get_connection(view["id"])
    assert stored is not None and stored.credentials == {"api_key": "sk-renewed"}


async def test_a_renewed_token_refused_at_once_is_not_sent_again(
    aiohttp_client, aiohttp_server, tmp_path: Path
) -> None:
    """The request after a renewal carries the new token; when that is refused too, the
    gateway does not send the same request with the same token again (no hidden retry)."""
    import openai
    from fakes.openai_upstream import FakeOpenAI, error

    from omniroute.testing import start_harness

    fake = FakeOpenAI(api_key="sk-renewed")
    server = await aiohttp_server(fake.app)
    plugins = load_plugins(extra=[("t-renew", RenewingPlugin())])
    gw = await start_harness(aiohttp_client, make_test_config(tmp_path / "gw"), plugins)
    await gw.add_provider({"type": "test-oauth-openai", "name": "sub", "prefix": "sub",
                           "base_url": str(server.make_url("/v1")), "api_key": "sk-expired"})
    RenewingOpenAI.renewals = 0
    async with openai.AsyncOpenAI(base_url=gw.base_url + "/v1", api_key="x",
                                  max_retries=0) as client:
        first = await client.chat.completions.create(
            model="sub/gpt-4o-mini", messages=[{"role": "user", "content": "one"}])
        assert first.choices[0].message.content == "Hello! You said: one"
        assert RenewingOpenAI.renewals == 1 and len(fake.requests) == 2  # 401, then renewed
        fake.script.append(error(401, "Invalid authentication", code="invalid_api_key"))
        with pytest.raises(openai.APIStatusError):
            await client.chat.completions.create(
                model="sub/gpt-4o-mini", messages=[{"role": "user", "content": "two"}])
    assert len(fake.requests) == 3  # sent once: the renewed token was refused, not resent
    assert RenewingOpenAI.renewals == 1
