"""OpenAI Responses server-side state through the gateway, with the official openai SDK.

``store`` / ``previous_response_id`` / retrieve / delete / ``input_tokens``, on both
lanes: translated (a Chat Completions upstream) and pass-through (a Responses upstream).
"""

from __future__ import annotations

import asyncio
import logging
import time
from pathlib import Path
from typing import Any

import openai
import pytest
from fakes.responses_upstream import FakeResponses

from omniroute.formats.base import ClientRequest
from omniroute.storage import Database, DatabaseBackend, RequestLog
from omniroute.storage.migrations import LATEST, MIGRATIONS
from omniroute.storage.responses import ResponseStore
from omniroute.tokens import estimate_request

UPSTREAM_KEY = "sk-upstream-test"
CHAT_MODEL = "up/gpt-4o-mini"
RESP_MODEL = "resp/gpt-4.1-mini"


def sdk(gw: Any, api_key: str = "sk-client-anything") -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=gw.base_url + "/v1", api_key=api_key, max_retries=0,
                              timeout=10)


@pytest.fixture
async def both(gw: Any, aiohttp_server: Any) -> Any:
    """The gateway with a Chat upstream (``up``) and a Responses upstream (``resp``)."""
    fake = FakeResponses(api_key=UPSTREAM_KEY)
    server = await aiohttp_server(fake.app)
    await gw.add_provider({"type": "openai-responses", "name": "fake-responses",
                           "prefix": "resp", "base_url": str(server.make_url("/v1")),
                           "api_key": UPSTREAM_KEY})
    gw.responses_fake = fake
    return gw


def chat_bodies(gw: Any) -> list[dict[str, Any]]:
    return [r.json for r in gw.fake.requests if r.path.endswith("/chat/completions")]


def responses_bodies(gw: Any) -> list[dict[str, Any]]:
    return [r.json for r in gw.responses_fake.requests if r.path.endswith("/responses")]


async def stored_ids(gw: Any) -> list[str]:
    rows = await gw.gateway.db.fetchall("SELECT id FROM responses ORDER BY created_at")
    return [r["id"] for r in rows]


# ----------------------------------------------------------------------------- previous_response_id


async def test_two_turns_on_the_translated_lane(gw: Any) -> None:
    client = sdk(gw)
    first = await client.responses.create(model=CHAT_MODEL, input="My name is Ada.",
                                          instructions="Answer briefly.")
    assert first.output_text == "Hello! You said: My name is Ada."
    second = await client.responses.create(model=CHAT_MODEL, input="What is my name?",
                                           previous_response_id=first.id)
    assert second.output_text == "Hello! You said: What is my name?"
    upstream = chat_bodies(gw)[-1]["messages"]
    # the stored turn, then the new input; the first turn's instructions are not carried over
    assert [(m["role"], m["content"]) for m in upstream] == [
        ("user", "My name is Ada."),
        ("assistant", "Hello! You said: My name is Ada."),
        ("user", "What is my name?"),
    ]
    third = await client.responses.create(model=CHAT_MODEL, input="And again?",
                                          previous_response_id=second.id,
                                          instructions="Be kind.")
    assert third.output_text == "Hello! You said: And again?"
    upstream = chat_bodies(gw)[-1]["messages"]
    assert upstream[0] == {"role": "system", "content": "Be kind."}
    assert [m["role"] for m in upstream[1:]] == ["user", "assistant", "user", "assistant",
                                                 "user"]


async def test_two_turns_on_the_pass_through_lane(both: Any) -> None:
    client = sdk(both)
    first = await client.responses.create(model=RESP_MODEL, input="My name is Ada.")
    second = await client.responses.create(model=RESP_MODEL, input="What is my name?",
                                           previous_response_id=first.id)
    assert second.output_text == "Hello! You said: What is my name?"
    body = responses_bodies(both)[-1]
    assert "previous_response_id" not in body  # the upstream never sees our ids
    assert body["input"][0] == {"role": "user", "content": "My name is Ada."}
    replayed = body["input"][1]
    assert replayed["type"] == "message" and replayed["role"] == "assistant"
    assert "id" not in replayed  # replayed as Codex replays: without the item id
    assert replayed["content"][0]["text"] == "Hello! You said: My name is Ada."
    assert body["input"][2] == {"role": "user", "content": "What is my name?"}


async def test_a_conversation_can_move_between_lanes(both: Any) -> None:
    client = sdk(both)
    first = await client.responses.create(model=RESP_MODEL, input="Remember 42.")
    second = await client.responses.create(model=CHAT_MODEL, input="Which number?",
                                           previous_response_id=first.id)
    assert second.output_text == "Hello! You said: Which number?"
    assert [m["content"] for m in chat_bodies(both)[-1]["messages"]] == [
        "Remember 42.", "Hello! You said: Remember 42.", "Which number?"]


async def test_unknown_previous_response_is_the_apis_400(gw: Any) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        await sdk(gw).responses.create(model=CHAT_MODEL, input="hi",
                                       previous_response_id="resp_nope")
    err = caught.value
    assert err.code == "previous_response_not_found" and err.param == "previous_response_id"
    assert "resp_nope" in err.message
    assert chat_bodies(gw) == []  # nothing went upstream


async def test_conversation_parameter_is_refused_not_ignored(gw: Any) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        await sdk(gw).responses.create(model=CHAT_MODEL, input="hi", conversation="conv_1")
    assert caught.value.param == "conversation"


# ----------------------------------------------------------------------------- retrieve, delete


async def test_retrieve_and_delete(gw: Any) -> None:
    client = sdk(gw)
    created = await client.responses.create(model=CHAT_MODEL, input="hi there")
    again = await client.responses.retrieve(created.id)
    assert again.id == created.id and again.output_text == created.output_text
    assert again.model_dump() == created.model_dump()
    chained = await client.responses.create(model=CHAT_MODEL, input="more",
                                            previous_response_id=created.id)
    assert (await client.responses.retrieve(chained.id)).previous_response_id == created.id

    await client.responses.delete(created.id)
    with pytest.raises(openai.NotFoundError) as caught:
        await client.responses.retrieve(created.id)
    assert created.id in caught.value.message
    with pytest.raises(openai.NotFoundError):
        await client.responses.delete(created.id)
    with pytest.raises(openai.BadRequestError):
        await client.responses.create(model=CHAT_MODEL, input="x",
                                      previous_response_id=created.id)
    # deleting one response leaves the ones that continued it intact
    follow = await client.responses.create(model=CHAT_MODEL, input="still?",
                                           previous_response_id=chained.id)
    assert [m["content"] for m in chat_bodies(gw)[-1]["messages"]][:2] == [
        "hi there", "Hello! You said: hi there"]
    assert follow.output_text == "Hello! You said: still?"


async def test_get_responses_without_an_id_still_refuses_the_websocket(gw: Any) -> None:
    resp = await gw.client.get("/v1/responses")
    assert resp.status == 405 and resp.headers["Allow"] == "POST"


# ----------------------------------------------------------------------------- scopes


async def test_a_key_never_sees_another_keys_responses(gw: Any) -> None:
    await gw.set_settings(require_api_key=True)
    alice, bob = sdk(gw, await gw.create_key("alice")), sdk(gw, await gw.create_key("bob"))
    mine = await alice.responses.create(model=CHAT_MODEL, input="secret plans")
    with pytest.raises(openai.NotFoundError):
        await bob.responses.retrieve(mine.id)
    with pytest.raises(openai.NotFoundError):
        await bob.responses.delete(mine.id)
    with pytest.raises(openai.BadRequestError) as caught:
        await bob.responses.create(model=CHAT_MODEL, input="tell me",
                                   previous_response_id=mine.id)
    assert caught.value.code == "previous_response_not_found"
    assert not any("secret plans" in str(b) for b in chat_bodies(gw)[1:])
    assert (await alice.responses.retrieve(mine.id)).id == mine.id  # still there


async def test_anonymous_callers_are_a_scope_of_their_own(gw: Any) -> None:
    anonymous = sdk(gw)  # keys optional: an unknown key is ignored, the caller is anonymous
    keyed = sdk(gw, await gw.create_key("carol"))
    theirs = await anonymous.responses.create(model=CHAT_MODEL, input="anon")
    mine = await keyed.responses.create(model=CHAT_MODEL, input="keyed")
    assert (await anonymous.responses.retrieve(theirs.id)).id == theirs.id
    with pytest.raises(openai.NotFoundError):
        await keyed.responses.retrieve(theirs.id)
    with pytest.raises(openai.NotFoundError):
        await anonymous.responses.retrieve(mine.id)


# ----------------------------------------------------------------------------- store


async def test_store_false_stores_nothing(gw: Any) -> None:
    client = sdk(gw)
    created = await client.responses.create(model=CHAT_MODEL, input="hi", store=False)
    assert created.store is False
    async with client.responses.stream(model=CHAT_MODEL, input="hi", store=False) as stream:
        streamed = await stream.get_final_response()
    assert await stored_ids(gw) == []
    for response_id in (created.id, streamed.id):
        with pytest.raises(openai.NotFoundError):
            await client.responses.retrieve(response_id)


async def test_store_false_may_still_continue_a_stored_response(gw: Any) -> None:
    client = sdk(gw)
    first = await client.responses.create(model=CHAT_MODEL, input="one")
    second = await client.responses.create(model=CHAT_MODEL, input="two", store=False,
                                           previous_response_id=first.id)
    assert second.output_text == "Hello! You said: two"
    assert await stored_ids(gw) == [first.id]


async def test_store_must_be_a_boolean(gw: Any) -> None:
    resp = await gw.client.post("/v1/responses", json={"model": CHAT_MODEL, "input": "hi",
                                                       "store": "yes"})
    assert resp.status == 400
    assert (await resp.json())["error"]["param"] == "store"


@pytest.mark.parametrize("model", [CHAT_MODEL, RESP_MODEL])
async def test_a_stream_is_stored_before_its_completed_event_reaches_the_client(
    both: Any, model: str
) -> None:
    client = sdk(both)
    seen_stored: list[bool] = []
    async with client.responses.stream(model=model, input="stream me") as stream:
        async for event in stream:
            if event.type == "response.completed":
                seen_stored.append(event.response.id in await stored_ids(both))
        final = await stream.get_final_response()
    assert seen_stored == [True]
    # a follow-up fired the moment the id is known finds it
    follow = await client.responses.create(model=model, input="next",
                                           previous_response_id=final.id)
    assert follow.output_text == "Hello! You said: next"
    stored = await client.responses.retrieve(final.id)
    assert stored.output_text == final.output_text == "Hello! You said: stream me"


async def test_a_failed_stream_stores_nothing(gw: Any) -> None:
    from fakes.openai_upstream import mid_stream_error

    gw.fake.script.append(mid_stream_error(2, "boom"))
    client = sdk(gw)
    stream = await client.responses.create(model=CHAT_MODEL, input="x", stream=True)
    kinds = [event.type async for event in stream]
    assert kinds[-1] == "error" and "response.completed" not in kinds
    assert await stored_ids(gw) == []


# ----------------------------------------------------------------------------- input_tokens


async def test_input_tokens_is_the_local_estimate(gw: Any) -> None:
    client = sdk(gw)
    counted = await client.responses.input_tokens.count(
        model=CHAT_MODEL, input="How many tokens is this sentence?", instructions="Be brief.")
    assert counted.object == "response.input_tokens"
    fmt = gw.registry.formats["responses"]
    body = {"model": CHAT_MODEL, "input": "How many tokens is this sentence?",
            "instructions": "Be brief."}
    assert counted.input_tokens == estimate_request(
        fmt.decode_request(ClientRequest(body, CHAT_MODEL, False)))
    assert chat_bodies(gw) == []  # counting never calls a model

    first = await client.responses.create(model=CHAT_MODEL, input="A long first turn " * 20)
    chained = await client.responses.input_tokens.count(
        input="How many tokens is this sentence?", previous_response_id=first.id)
    assert chained.input_tokens > counted.input_tokens + 40  # the history counts, no model needed
    with pytest.raises(openai.BadRequestError):
        await client.responses.input_tokens.count(input="x", previous_response_id="resp_nope")


# ----------------------------------------------------------------------------- storage


async def test_schema_v2_upgrades_to_v3_without_loss(tmp_path: Path) -> None:
    path = tmp_path / "omniroute.sqlite3"
    old = await Database.open(path, migrations=MIGRATIONS[:2])
    assert await old.schema_version() == 2
    await old.execute("INSERT INTO api_keys(id, name, key_hash, key_prefix, scopes, created_at,"
                      " last_used_at) VALUES ('key_1', 'k', x'01', 'sk-or-ab', '', 5.0, 6.0)")
    await old.execute("INSERT INTO request_log(request_id, ts, endpoint, status, ttfb_ms,"
                      " attempts) VALUES ('r1', 7.0, 'responses', 200, 12.5, 2)")
    await old.execute("INSERT INTO admin_sessions VALUES (x'02', 1.0, 9e9)")
    await old.execute("INSERT INTO settings VALUES ('idle_timeout', '33.0')")
    await old.close()

    db = await Database.open(path)
    try:
        assert await db.schema_version() == LATEST  # v3, then every later migration
        key = await db.fetchone("SELECT * FROM api_keys")
        assert (key["id"], key["last_used_at"]) == ("key_1", 6.0)
        # migration 4: an upgraded key has no limits, no expiry and keeps usage records
        assert (key["limits"], key["expires_at"], key["log_usage"]) == ("{}", None, 1)
        log = await db.fetchone("SELECT * FROM request_log")
        assert (log["request_id"], log["ttfb_ms"], log["attempts"]) == ("r1", 12.5, 2)
        assert (await db.fetchone("SELECT count(*) FROM admin_sessions"))[0] == 1
        assert (await db.fetchone("SELECT value FROM settings"))[0] == "33.0"
        assert (await db.fetchone("SELECT count(*) FROM responses"))[0] == 0
        assert Path(f"{path}.v2.bak").exists()
    finally:
        await db.close()


async def test_store_scopes_and_expiry(tmp_path: Path) -> None:
    db = await Database.open(tmp_path / "db.sqlite3")
    try:
        store = ResponseStore(db)
        response = {"id": "resp_1", "object": "response", "model": "m", "status": "completed",
                    "output": [{"type": "message", "role": "assistant", "content": []}]}
        await store.save("key_a", response, [{"role": "user", "content": "hi"}])
        got = await store.get("resp_1", "key_a")
        assert got is not None and got.response == response
        assert got.input == [{"role": "user", "content": "hi"}]
        assert list(got.response) == list(response)  # the object keeps its key order
        assert await store.get("resp_1", "key_b") is None
        assert await store.get("resp_1", None) is None
        # another key cannot take the id over
        await store.save("key_b", {**response, "model": "other"}, [])
        got = await store.get("resp_1", "key_a")
        assert got is not None and got.model == "m"
        assert not await store.delete("resp_1", "key_b")

        expired = ResponseStore(db, ttl=-1.0)
        await expired.save(None, {**response, "id": "resp_old"}, [])
        assert await store.get("resp_old", None) is None  # past its expiry: gone for readers
        await store.save(None, {**response, "id": "resp_new"}, [])  # a write deletes nothing
        rows = await db.fetchall("SELECT id FROM responses ORDER BY id")
        assert [r["id"] for r in rows] == ["resp_1", "resp_new", "resp_old"]
        await RequestLog(db).prune()  # the retention loop does
        rows = await db.fetchall("SELECT id FROM responses ORDER BY id")
        assert [r["id"] for r in rows] == ["resp_1", "resp_new"]
        assert await store.delete("resp_1", "key_a")
        assert await store.get("resp_1", "key_a") is None
    finally:
        await db.close()


def _hang_inserts(db: DatabaseBackend, monkeypatch: pytest.MonkeyPatch) -> None:
    """The database hangs on a response's write (as PostgreSQL past a network fault)."""
    real = db.execute

    async def hung(sql: str, params: Any = ()) -> int:
        if sql.startswith("INSERT INTO responses"):
            await asyncio.sleep(30)
        return await real(sql, params)

    monkeypatch.setattr(db, "execute", hung)


async def test_a_hung_database_does_not_hold_the_answer(
        gw: Any, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    """The answer goes out within the store's bound (2 s), not the database's 30 s; that
    response cannot be continued by id; the failure is logged once, not per request."""
    _hang_inserts(gw.gateway.db, monkeypatch)
    client = sdk(gw)
    began = time.monotonic()
    first = await client.responses.create(model=CHAT_MODEL, input="My name is Ada.")
    stream = await client.responses.create(model=CHAT_MODEL, input="Again.", stream=True)
    async for _ in stream:
        pass
    assert time.monotonic() - began < 7.0
    assert first.output_text == "Hello! You said: My name is Ada."
    with pytest.raises(openai.BadRequestError) as refused:
        await client.responses.create(model=CHAT_MODEL, input="What is my name?",
                                      previous_response_id=first.id)
    assert refused.value.code == "previous_response_not_found"
    assert len([r for r in caplog.records if r.levelno >= logging.WARNING
                and "could not store response" in r.message]) == 1


async def test_the_store_waits_a_bounded_time_and_logs_an_outage_once(
        db: DatabaseBackend, monkeypatch: pytest.MonkeyPatch,
        caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)
    store = ResponseStore(db, save_timeout=0.2)
    response = {"id": "resp_1", "object": "response", "model": "m", "output": []}
    with monkeypatch.context() as patch:
        _hang_inserts(db, patch)
        began = time.monotonic()
        assert await store.save("k", response, []) is False
        assert await store.save("k", {**response, "id": "resp_2"}, []) is False
        assert time.monotonic() - began < 2.0
    assert len([r for r in caplog.records if r.levelno >= logging.WARNING
                and "could not store response" in r.message]) == 1  # once per outage
    assert await store.save("k", {**response, "id": "resp_3"}, []) is True
    assert "responses are stored again" in caplog.text
    assert await store.get("resp_3", "k") is not None


async def test_the_store_keeps_each_key_to_its_own_rows(db: DatabaseBackend) -> None:
    """On every backend: a row is read and deleted only with its own key (None, the
    anonymous caller, is a scope of its own), and a key never takes over another's id."""
    store = ResponseStore(db)
    response = {"id": "resp_1", "object": "response", "model": "m", "output": [{"n": 1}]}
    await store.save("key_a", response, [{"role": "user", "content": "hi"}])
    await store.save(None, {**response, "id": "resp_2"}, [])
    got = await store.get("resp_1", "key_a")
    assert got is not None and got.output == [{"n": 1}] and got.input[0]["content"] == "hi"
    assert got.response["output"] == [{"n": 1}]
    assert await store.get("resp_1", None) is None and await store.get("resp_1", "key_b") is None
    assert (await store.get("resp_2", None)) is not None  # NULL matches NULL
    assert await store.get("resp_2", "key_a") is None
    await store.save("key_b", {**response, "model": "stolen"}, [])  # the id is key_a's
    assert (await store.get("resp_1", "key_a")).model == "m"  # type: ignore[union-attr]
    assert await store.delete("resp_2", "key_a") is False
    assert await store.delete("resp_2", None) is True
    assert await store.get("resp_2", None) is None


async def test_a_read_past_its_bound_or_with_the_database_away_is_a_503(
        db: DatabaseBackend, monkeypatch: pytest.MonkeyPatch) -> None:
    """A stored response that cannot be read in time is the gateway's failure (503), not
    an unknown id; the read itself finishes in the background."""
    from omniroute.errors import StoredResponsesUnavailable

    store = ResponseStore(db, read_timeout=0.2)
    release = asyncio.Event()
    real = db.fetchone
    finished: list[bool] = []

    async def hung(sql: str, params: Any = ()) -> Any:
        await release.wait()
        row = await real(sql, params)
        finished.append(True)
        return row

    monkeypatch.setattr(db, "fetchone", hung)
    began = time.monotonic()
    with pytest.raises(StoredResponsesUnavailable) as failed:
        await store.get("resp_1", None)
    assert time.monotonic() - began < 1.0
    assert failed.value.status == 503 and failed.value.headers == {"Retry-After": "1"}
    release.set()
    for _ in range(100):
        if finished:
            break
        await asyncio.sleep(0.01)
    assert finished == [True]

    async def away(sql: str, params: Any = ()) -> Any:
        raise db.unavailable[0]("the database is away (simulated)")

    monkeypatch.setattr(db, "fetchone", away)
    with pytest.raises(StoredResponsesUnavailable):
        await store.get("resp_1", None)
    monkeypatch.setattr(db, "fetchone", real)
    assert await store.get("resp_1", None) is None  # unknown: the caller's 400/404


async def test_a_delete_past_its_bound_is_a_503_and_finishes_in_the_background(
        db: DatabaseBackend, monkeypatch: pytest.MonkeyPatch) -> None:
    """``DELETE /v1/responses/{id}`` waits no longer than a read: a hung database is the
    gateway's 503, and the delete still lands once the database answers."""
    from omniroute.errors import StoredResponsesUnavailable

    store = ResponseStore(db, read_timeout=0.2)
    response = {"id": "resp_1", "object": "response", "model": "m", "output": []}
    assert await store.save(None, response, [])
    release = asyncio.Event()
    real = db.execute

    async def hung(sql: str, params: Any = ()) -> Any:
        if sql.startswith("DELETE FROM responses"):
            await release.wait()
        return await real(sql, params)

    monkeypatch.setattr(db, "execute", hung)
    began = time.monotonic()
    with pytest.raises(StoredResponsesUnavailable) as failed:
        await store.delete("resp_1", None)
    assert time.monotonic() - began < 1.0
    assert failed.value.status == 503
    release.set()
    for _ in range(200):
        if await store.get("resp_1", None) is None:
            break
        await asyncio.sleep(0.01)
    assert await store.get("resp_1", None) is None  # the delete landed after all
