"""``gemini-cli`` accounts through the gateway: the official SDKs, renewals, revoked tokens,
the daily quota, the remaining allowance, the project set up once."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import aiohttp
import anthropic
import openai
import pytest
from fakes.code_assist_upstream import (
    daily_limit,
)
from google import genai

from gemini_cli.support import MODEL, Google, gateway_with, signed_in
from omniroute.credentials import SIGN_IN_REQUIRED
from omniroute.providers.code_assist import (
    daily_reset_in,
)
from omniroute.testing import make_test_config, start_harness


async def test_the_official_sdks_through_a_gemini_cli_account(
    aiohttp_client: Any, google: Google, http: aiohttp.ClientSession, tmp_path: Path,
) -> None:
    account = await signed_in(google, http)
    gw = await gateway_with(aiohttp_client, tmp_path, google, account)
    model = f"gemini-cli/{MODEL}"
    oai = openai.AsyncOpenAI(base_url=gw.base_url + "/v1", api_key="x", max_retries=0)
    answer = await oai.chat.completions.create(
        model=model, messages=[{"role": "user", "content": "ping"}])
    assert answer.choices[0].message.content == "Hello! You said: ping"
    assert answer.usage is not None and answer.usage.prompt_tokens > 0
    stream = await oai.chat.completions.create(
        model=model, messages=[{"role": "user", "content": "pong"}], stream=True,
        stream_options={"include_usage": True})
    text = "".join([c.choices[0].delta.content or "" async for c in stream if c.choices])
    assert text == "Hello! You said: pong"

    google_sdk = genai.Client(api_key="x", http_options={"base_url": gw.base_url,
                                                        "api_version": "v1beta"})
    said = await google_sdk.aio.models.generate_content(model=model, contents="hello")
    assert said.text == "Hello! You said: hello"
    assert said.usage_metadata is not None and said.usage_metadata.prompt_token_count
    chunks = [c.text async for c in await google_sdk.aio.models.generate_content_stream(
        model=model, contents="again")]
    assert len(chunks) > 1 and "".join(t or "" for t in chunks) == "Hello! You said: again"
    counted = await google_sdk.aio.models.count_tokens(model=model, contents="count these")
    assert counted.total_tokens == 3  # the fake: about four characters a token

    claude = anthropic.AsyncAnthropic(base_url=gw.base_url, api_key="x", max_retries=0)
    message = await claude.messages.create(model=model, max_tokens=64,
                                           messages=[{"role": "user", "content": "hey"}])
    assert message.content[0].type == "text" and message.content[0].text == (
        "Hello! You said: hey")

    # every generate call went in the envelope, to the onboarded project, with the bearer
    generated = google.calls("generateContent") + google.calls("streamGenerateContent")
    assert len(generated) == 5
    for call in generated:
        assert call.json["project"] == google.assist.managed_project
        assert call.json["model"] == MODEL and "contents" in call.json["request"]
        assert call.headers["authorization"] == f"Bearer {account.credentials['access_token']}"
    assert google.calls("countTokens")[0].json == {"request": {
        "model": f"models/{MODEL}",
        "contents": [{"parts": [{"text": "count these"}], "role": "user"}]}}
    # the project was set up once, at the sign-in
    assert len(google.calls("loadCodeAssist")) == 1


async def test_an_expired_token_is_renewed_before_the_call_and_after_a_401(
    aiohttp_client: Any, google: Google, http: aiohttp.ClientSession, tmp_path: Path,
) -> None:
    account = await signed_in(google, http)
    lapsed = {**account.credentials, "expires_at": time.time() - 5}
    gw = await gateway_with(aiohttp_client, tmp_path, google,
                            type(account)(lapsed, label=account.label))
    oai = openai.AsyncOpenAI(base_url=gw.base_url + "/v1", api_key="x", max_retries=0)
    model = f"gemini-cli/{MODEL}"
    await oai.chat.completions.create(model=model, messages=[{"role": "user", "content": "a"}])
    assert google.oauth.refresh_calls == 1
    assert account.credentials["access_token"] not in google.tokens_seen()  # never sent
    (conn,) = [c for c in await gw.store.list_connections() if c.type == "gemini-cli"]
    assert google.oauth.is_valid(conn.credentials["access_token"])
    assert conn.credentials["refresh_token"] == account.credentials["refresh_token"]
    assert conn.credentials["extra"]["project"] == google.assist.managed_project  # kept

    # elsewhere, the service drops a token before its time: a 401, one renewal, a retry
    other = await signed_in(google, http)
    gw2 = await gateway_with(aiohttp_client, tmp_path / "2", google, other)
    google.oauth.expire(other.credentials["access_token"])
    oai2 = openai.AsyncOpenAI(base_url=gw2.base_url + "/v1", api_key="x", max_retries=0)
    answer = await oai2.chat.completions.create(
        model=model, messages=[{"role": "user", "content": "b"}])
    assert answer.choices[0].message.content == "Hello! You said: b"
    assert google.oauth.refresh_calls == 2
    assert google.tokens_seen()[-2:] == [other.credentials["access_token"],
                                         google.tokens_seen()[-1]]


async def test_a_revoked_refresh_token_means_a_new_sign_in(
    aiohttp_client: Any, google: Google, http: aiohttp.ClientSession, tmp_path: Path,
) -> None:
    account = await signed_in(google, http)
    google.oauth.revoke(account.credentials["refresh_token"])
    lapsed = {**account.credentials, "expires_at": time.time() - 5}
    gw = await gateway_with(aiohttp_client, tmp_path, google,
                            type(account)(lapsed, label=account.label))
    oai = openai.AsyncOpenAI(base_url=gw.base_url + "/v1", api_key="x", max_retries=0)
    with pytest.raises(openai.APIStatusError) as caught:
        await oai.chat.completions.create(model=f"gemini-cli/{MODEL}",
                                          messages=[{"role": "user", "content": "c"}])
    assert caught.value.status_code == 401 and "needs a new sign-in" in caught.value.message
    assert "login gemini" in caught.value.message
    assert google.tokens_seen() == []  # nothing sent with a dead token
    (conn,) = [c for c in await gw.store.list_connections() if c.type == "gemini-cli"]
    assert "revoked" in conn.credentials[SIGN_IN_REQUIRED]["reason"]
    listed = await (await gw.client.get("/api/providers", headers=gw.admin_headers)).json()
    (view,) = [p for p in listed["providers"] if p["id"] == conn.id]
    assert view["oauth"]["status"] == "needs_sign_in"
    assert view["oauth"]["account"] == "someone@example.com"


async def test_the_daily_quota_rests_the_account_until_the_reset_and_the_next_serves(
    aiohttp_client: Any, google: Google, http: aiohttp.ClientSession, tmp_path: Path,
) -> None:
    first, second = await signed_in(google, http), await signed_in(google, http)
    gw = await gateway_with(aiohttp_client, tmp_path, google, first, second)
    by_token = {first.credentials["access_token"]: "first",
                second.credentials["access_token"]: "second"}
    google.assist.script.append(daily_limit(retry_delay="3600s"))
    oai = openai.AsyncOpenAI(base_url=gw.base_url + "/v1", api_key="x", max_retries=0)
    model = f"gemini-cli/{MODEL}"
    answer = await oai.chat.completions.create(
        model=model, messages=[{"role": "user", "content": "one"}])
    assert answer.choices[0].message.content == "Hello! You said: one"
    assert [by_token[t] for t in google.tokens_seen()] == ["first", "second"]
    rows = {r["name"]: r for r in gw.resilience.snapshot(
        gw.catalog.connections.values())["connections"]}
    rest = rows["google-0"]["cooldown_left"]
    assert 3500 <= rest <= 86_400 and rest >= daily_reset_in(time.time()) - 5
    assert rows["google-1"]["cooldown_left"] == 0
    # resting: the next requests go straight to the second account, never retried
    for text in ("two", "three"):
        await oai.chat.completions.create(model=model,
                                          messages=[{"role": "user", "content": text}])
    assert [by_token[t] for t in google.tokens_seen()] == ["first"] + ["second"] * 3
    assert google.oauth.refresh_calls == 0
    limits = await (await gw.client.get("/api/rate-limits", headers=gw.admin_headers)).json()
    quota = {r["name"]: r.get("quota") for r in limits["connections"]}["google-0"]
    assert quota["exhausted"] is True and quota["reason"] == "the daily quota is used up"
    now = time.time()
    assert quota["resets_at"] == pytest.approx(now + max(daily_reset_in(now), 3600), abs=5)
    # neither an operator's reset of the cooldowns nor an edit of the connection (its
    # provider rebuilt) ends the rest
    first_id = next(c.id for c in gw.catalog.connections.values() if c.name == "google-0")
    await gw.client.post("/api/resilience/reset", headers=gw.admin_headers)
    await oai.chat.completions.create(model=model, messages=[{"role": "user", "content": "4"}])
    old = gw.catalog.providers[first_id]
    resp = await gw.client.put(f"/api/providers/{first_id}", json={"rpm": 500},
                               headers=gw.admin_headers)
    assert resp.status == 200 and gw.catalog.providers[first_id] is not old
    await gw.client.post("/api/resilience/reset", headers=gw.admin_headers)
    await oai.chat.completions.create(model=model, messages=[{"role": "user", "content": "5"}])
    assert [by_token[t] for t in google.tokens_seen()] == ["first"] + ["second"] * 5
    await oai.close()


async def test_the_models_remaining_allowance_is_read_with_the_model_list(
    aiohttp_client: Any, google: Google, http: aiohttp.ClientSession, tmp_path: Path,
) -> None:
    account = await signed_in(google, http)
    gw = await gateway_with(aiohttp_client, tmp_path, google, account)
    (conn_id,) = gw.catalog.providers
    google.assist.buckets[1]["remainingFraction"] = 0.0  # gemini-2.5-pro's day is spent
    google.assist.buckets[1]["remainingAmount"] = "0"
    listed = await (await gw.client.get("/v1/models", headers=gw.admin_headers)).json()
    assert f"gemini-cli/{MODEL}" in {m["id"] for m in listed["data"]}
    (call,) = google.calls("retrieveUserQuota")
    assert call.json == {"project": google.assist.managed_project}
    limits = await (await gw.client.get("/api/rate-limits", headers=gw.admin_headers)).json()
    quota = next(r for r in limits["connections"] if r["id"] == conn_id)["quota"]
    windows = {w["name"]: w for w in quota["windows"]}
    assert windows[MODEL]["used_percent"] == 25.0 and windows[MODEL]["remaining"] == 750
    assert windows["gemini-2.5-pro"]["used_percent"] == 100.0
    assert 0 < windows[MODEL]["resets_at"] - time.time() <= 86_400
    assert quota["plan"] == "free-tier" and quota["exhausted"] is False  # one model only
    # the setting turns the reading off
    resp = await gw.client.put(f"/api/providers/{conn_id}",
                               json={"settings": {"read_quota": False}},
                               headers=gw.admin_headers)
    assert resp.status == 200
    await gw.catalog.models_of(gw.catalog.providers[conn_id], max_age=0)
    assert len(google.calls("retrieveUserQuota")) == 1


async def test_a_connection_added_without_a_project_sets_it_up_once(
    aiohttp_client: Any, google: Google, tmp_path: Path,
) -> None:
    gw = await start_harness(aiohttp_client, make_test_config(tmp_path / "gw"))
    pair = google.oauth.issue()
    view = await gw.add_provider({"type": "gemini-cli", "name": "by-hand",
                                  "settings": google.settings(),
                                  "credentials": {"access_token": pair.access,
                                                  "refresh_token": pair.refresh,
                                                  "expires_at": pair.expires_at}})
    assert view["prefix"] == "gemini-cli"
    oai = openai.AsyncOpenAI(base_url=gw.base_url + "/v1", api_key="x", max_retries=0)
    asked = [oai.chat.completions.create(model=f"gemini-cli/{MODEL}",
                                         messages=[{"role": "user", "content": f"q{i}"}])
             for i in range(5)]
    await asyncio.gather(*asked)
    assert len(google.calls("onboardUser")) == 1  # five requests, one setup
    stored = await gw.store.get_connection(view["id"])
    assert stored is not None
    assert stored.credentials["extra"]["project"] == google.assist.managed_project
