"""One credential renewal across three instances for a subscription account whose token
expired: the instance that hits the 401 first renews, the others take up its credentials."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping
from typing import Any, ClassVar

import pytest
from omniroute import Provider, hookimpl
from omniroute.plugins import load_plugins
from omniroute.providers.openai import OpenAIProvider
from redis_testkit import FakeUpstream, start_instances, until_routable

pytestmark = pytest.mark.multi


class RenewingAccount(OpenAIProvider):
    """An OpenAI-compatible subscription account: its renewal yields the key the fake
    upstream wants (and takes a round trip, so the 401s pile up meanwhile)."""

    type = "test-renewing"
    auth_kind = "oauth"
    renewals: ClassVar[int] = 0
    adopted: ClassVar[int] = 0

    async def refresh_credentials(self) -> bool:
        type(self).renewals += 1
        await asyncio.sleep(0.1)
        await self.save_credentials({"api_key": "sk-renewed"})
        self._use("sk-renewed")
        return True

    async def adopt_credentials(self, credentials: Mapping[str, Any]) -> bool:
        type(self).adopted += 1
        self.connection.credentials = dict(credentials)
        self._use(str(credentials["api_key"]))
        return True

    def _use(self, key: str) -> None:
        self._json_headers = {**self._json_headers, "Authorization": f"Bearer {key}"}
        self._stream_headers = {**self._stream_headers, "Authorization": f"Bearer {key}"}


class RenewingPlugin:
    @hookimpl
    def register_providers(self, register: Callable[[type[Provider]], None]) -> None:
        register(RenewingAccount)


async def test_twenty_requests_on_an_expired_account_make_one_renewal_across_instances(
        aiohttp_client: Any, tmp_path: Any, redis_url: str, upstream: FakeUpstream) -> None:
    plugins = load_plugins(extra=[("t-renewing", RenewingPlugin())])
    trio = await start_instances(aiohttp_client, tmp_path / "omniroute", redis_url,
                                 plugins=plugins)
    try:
        await trio[0].add_provider({"type": "test-renewing", "name": "sub", "prefix": "up",
                                    "base_url": upstream.base_url, "api_key": "sk-expired"})
        await until_routable(trio, "up/m1")
        upstream.required_key = "sk-renewed"
        RenewingAccount.renewals = RenewingAccount.adopted = 0
        results = await asyncio.gather(*(trio.chat(f"q{i}") for i in range(20)))
        assert [status for status, _, _ in results] == [200] * 20, [b for _, b, _ in results][:3]
        assert RenewingAccount.renewals == 1  # one instance renewed, for all of them
        assert RenewingAccount.adopted >= 2  # the two others took up its credentials
    finally:
        await trio.close()
