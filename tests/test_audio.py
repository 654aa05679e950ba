"""Audio end to end: the openai SDK -> the gateway -> fake upstreams.

``gw`` (conftest) has an OpenAI-compatible connection ``up`` whose fake also speaks
OpenAI's audio API (``fakes.openai_audio``); ``dg`` adds a Deepgram connection
(prefix ``dg``), ``up2`` a second OpenAI-compatible one. The audio is a real WAV file
made here with the ``wave`` module; the fakes "hear" ``HEARD`` spread over its length.
"""

from __future__ import annotations

import asyncio
import io
import math
import time
import wave
from typing import Any

import aiohttp
import openai
import pytest
from fakes.deepgram_upstream import FakeDeepgram
from fakes.deepgram_upstream import error as deepgram_error
from fakes.openai_audio import HEARD, spoken
from fakes.openai_upstream import FakeOpenAI, error, hang_mid_stream

from omniroute.appkeys import BUDGETS

WHISPER = "up/whisper-1"
NOVA = "dg/nova-3"
FORMATS = ("json", "verbose_json", "text", "srt", "vtt")


def make_wav(seconds: float = 2.5, rate: int = 16000) -> bytes:
    """A mono 16-bit WAV holding a 440 Hz tone."""
    out = io.BytesIO()
    with wave.open(out, "wb") as audio:
        audio.setnchannels(1)
        audio.setsampwidth(2)
        audio.setframerate(rate)
        frames = bytearray()
        for i in range(int(seconds * rate)):
            frames += int(8000 * math.sin(2 * math.pi * 440 * i / rate)).to_bytes(
                2, "little", signed=True)
        audio.writeframes(bytes(frames))
    return out.getvalue()


WAV = make_wav()


@pytest.fixture
async def dg(gw: Any, aiohttp_server: Any) -> FakeDeepgram:
    fake = FakeDeepgram()
    server = await aiohttp_server(fake.app)
    await gw.add_provider({"type": "deepgram", "name": "fake-deepgram", "prefix": "dg",
                           "base_url": str(server.make_url("")).rstrip("/"),
                           "api_key": "dg-upstream-test"})
    return fake


@pytest.fixture
async def up2(gw: Any, aiohttp_server: Any) -> FakeOpenAI:
    fake = FakeOpenAI(api_key="sk-two")
    server = await aiohttp_server(fake.app)
    await gw.add_provider({"type": "openai", "name": "second", "prefix": "up2",
                           "base_url": str(server.make_url("/v1")), "api_key": "sk-two"})
    return fake


@pytest.fixture
async def sdk(gw: Any) -> Any:
    client = openai.AsyncOpenAI(base_url=gw.base_url + "/v1", api_key="sk-client",
                                max_retries=0, timeout=20)
    yield client
    await client.close()


def audio_requests(fake: Any, part: str = "/audio/") -> list[Any]:
    return [r for r in fake.requests if part in r.path]


async def admin(gw: Any, method: str, path: str, body: Any = None) -> Any:
    resp = await gw.client.request(method, path, json=body, headers=gw.admin_headers)
    assert resp.status < 300, await resp.text()
    return await resp.json()


async def last_record(gw: Any) -> dict[str, Any]:
    await gw.log.flush()
    return (await gw.log.recent(1))[0]


def upload(name: str = "speech.wav", data: bytes = WAV,
           content_type: str = "audio/wav") -> tuple[str, bytes, str]:
    return (name, data, content_type)


# ----------------------------------------------------------------------------- transcriptions

@pytest.mark.parametrize("response_format", FORMATS)
@pytest.mark.parametrize("model", [WHISPER, NOVA])
async def test_transcription_in_every_format(
    gw: Any, sdk: Any, dg: FakeDeepgram, model: str, response_format: str
) -> None:
    raw = await sdk.audio.transcriptions.with_raw_response.create(
        model=model, file=upload(), response_format=response_format, language="en")
    prefix = model.split("/")[0]
    assert raw.headers["X-OmniRoute-Provider"] == prefix
    assert raw.headers["X-OmniRoute-Model"] == model.split("/")[1]
    result = raw.parse()
    content_type = raw.headers["Content-Type"]
    if response_format in ("json", "verbose_json"):
        assert content_type.startswith("application/json")
        answer = raw.http_response.json()
        assert answer["text"] == HEARD and result.text == HEARD
        assert answer["task"] == "transcribe"
        assert answer["duration"] == pytest.approx(2.5)
        assert answer["language"] in ("en", "english")
        if response_format == "verbose_json":
            segments = answer["segments"]
            assert segments and segments[0]["start"] == 0.0
            assert segments[-1]["end"] == pytest.approx(2.5)
            assert " ".join(s["text"].strip() for s in segments) == HEARD
    elif response_format == "text":
        assert content_type.startswith("text/plain") and result.strip() == HEARD
    else:
        expected = "text/vtt" if response_format == "vtt" and prefix == "dg" else "text/"
        assert content_type.startswith(expected)
        assert result.startswith("WEBVTT\n\n" if response_format == "vtt" else "1\n00:00:00,000")
        assert "-->" in result and "00:00:02" in result
        words = [w for line in result.splitlines() if line and "-->" not in line
                 and not line.isdigit() and line != "WEBVTT" for w in line.split()]
        assert " ".join(words) == HEARD
    record = await last_record(gw)
    assert record["endpoint"] == "audio.transcriptions" and record["status"] == 200
    # whisper's JSON answers say what it bills (whole seconds); else the length measured
    billed = prefix == "up" and response_format in ("json", "verbose_json")
    assert record["audio_seconds"] == pytest.approx(3 if billed else 2.5)


async def test_openai_upstream_gets_the_form_as_sent(gw: Any, sdk: Any) -> None:
    await sdk.audio.transcriptions.create(
        model=WHISPER, file=upload("memo.wav"), response_format="verbose_json",
        language="fr", prompt="A greeting.", temperature=0.2,
        timestamp_granularities=["word", "segment"])
    sent = audio_requests(gw.fake)[-1]
    assert sent.path == "/v1/audio/transcriptions"
    assert sent.headers["authorization"] == "Bearer sk-upstream-test"
    fields = sent.json["fields"]
    assert fields["model"] == ["whisper-1"] and fields["language"] == ["fr"]
    assert fields["prompt"] == ["A greeting."] and fields["temperature"] == ["0.2"]
    assert fields["timestamp_granularities[]"] == ["word", "segment"]
    assert sent.json["files"]["file"] == ("memo.wav", "audio/wav", len(WAV))


async def test_verbose_json_words_from_both_upstreams(gw: Any, sdk: Any, dg: FakeDeepgram) -> None:
    for model in (WHISPER, NOVA):
        result = await sdk.audio.transcriptions.create(
            model=model, file=upload(), response_format="verbose_json",
            timestamp_granularities=["word"])
        assert [w.word.strip(".") for w in result.words] == [w.strip(".") for w in HEARD.split()]
        assert result.words[-1].end == pytest.approx(2.5)
        assert result.duration == pytest.approx(2.5)


async def test_deepgram_gets_the_raw_audio_and_a_token(
    gw: Any, sdk: Any, dg: FakeDeepgram
) -> None:
    done = await sdk.audio.transcriptions.create(model=NOVA, file=upload(),
                                                 response_format="srt")
    assert done.startswith("1\n")
    sent = dg.requests[-1]
    assert sent.path == "/v1/listen" and sent.body == WAV
    assert sent.headers["authorization"] == "Token dg-upstream-test"
    assert sent.headers["content-type"] == "audio/wav"
    assert sent.query == {"model": "nova-3", "smart_format": "true", "detect_language": "true",
                          "utterances": "true"}
    result = await sdk.audio.transcriptions.create(model=NOVA, file=upload(), language="es")
    assert dg.requests[-1].query == {"model": "nova-3", "smart_format": "true", "language": "es"}
    assert result.text == HEARD
    assert (result.model_extra or {})["language"] == "es"


async def test_deepgram_detected_language_and_usage(gw: Any, sdk: Any, dg: FakeDeepgram) -> None:
    raw = await sdk.audio.transcriptions.with_raw_response.create(model=NOVA, file=upload())
    answer = raw.http_response.json()
    assert answer == {"text": HEARD, "task": "transcribe", "language": "en", "duration": 2.5,
                      "usage": {"type": "duration", "seconds": 2.5}}


async def test_a_nameless_upload_is_named_by_its_type(gw: Any) -> None:
    form = aiohttp.FormData()
    form.add_field("model", WHISPER)
    form.add_field("file", WAV, filename="blob", content_type="audio/wav")
    resp = await gw.client.post("/v1/audio/transcriptions", data=form)
    assert resp.status == 200, await resp.text()
    assert audio_requests(gw.fake)[-1].json["files"]["file"][0] == "blob.wav"


# ----------------------------------------------------------------------------- translations

async def test_translation_through_an_openai_upstream(gw: Any, sdk: Any) -> None:
    raw = await sdk.audio.translations.with_raw_response.create(
        model=WHISPER, file=upload(), response_format="verbose_json")
    result = raw.parse()
    assert result.text == f"(in English) {HEARD}"
    assert raw.http_response.json()["task"] == "translate"
    assert audio_requests(gw.fake)[-1].path == "/v1/audio/translations"
    record = await last_record(gw)
    assert record["endpoint"] == "audio.translations" and record["audio_seconds"] == 3
    text = await sdk.audio.translations.create(model=WHISPER, file=upload(),
                                               response_format="text")
    assert text.strip() == f"(in English) {HEARD}"


async def test_deepgram_is_skipped_for_translations(gw: Any, sdk: Any, dg: FakeDeepgram) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        await sdk.audio.translations.create(model=NOVA, file=upload())
    assert caught.value.status_code == 400
    assert caught.value.body["code"] == "operation_not_supported"
    await admin(gw, "POST", "/api/combos", {"name": "english", "steps": [NOVA, WHISPER]})
    raw = await sdk.audio.translations.with_raw_response.create(model="english", file=upload())
    assert raw.headers["X-OmniRoute-Provider"] == "up"
    assert raw.parse().text.startswith("(in English)")
    assert not dg.requests  # skipped, never called


# ----------------------------------------------------------------------------- speech

async def test_speech_streams_before_the_upstream_finished(gw: Any, sdk: Any) -> None:
    """The fake writes two chunks, then waits 1.5 s before the rest: the first bytes
    reach the client while the upstream is still waiting."""
    gw.fake.script.append(hang_mid_stream(2, 1.5))
    started = time.monotonic()
    chunks: list[tuple[float, bytes]] = []
    async with sdk.audio.speech.with_streaming_response.create(
            model="up/tts-1", voice="alloy", input="Say this out loud.") as response:
        assert response.headers["Content-Type"] == "audio/mpeg"
        assert response.headers["X-OmniRoute-Provider"] == "up"
        async for chunk in response.iter_bytes():
            chunks.append((time.monotonic() - started, chunk))
    first, total = chunks[0][0], time.monotonic() - started
    assert total >= 1.5 and first < 1.0, (first, total)
    assert b"".join(c for _, c in chunks) == spoken("Say this out loud.", "mp3")
    sent = audio_requests(gw.fake, "/speech")[-1].json
    assert sent == {"model": "tts-1", "input": "Say this out loud.", "voice": "alloy",
                    "response_format": "mp3"}
    record = await last_record(gw)
    assert record["endpoint"] == "audio.speech" and record["status"] == 200
    assert record["characters"] == len("Say this out loud.") and record["stream"]
    assert record["cost_usd"] == pytest.approx(len("Say this out loud.") * 15 / 1e6)
    totals = (await admin(gw, "GET", "/api/usage/summary"))["totals"]
    assert totals["characters"] == len("Say this out loud.")


async def test_speech_gets_no_progress_frames(gw: Any) -> None:
    resp = await gw.client.post("/v1/audio/speech", headers={"X-OmniRoute-Progress": "true"},
                                json={"model": "up/tts-1", "voice": "alloy", "input": "Hi"})
    assert resp.status == 200 and await resp.read() == spoken("Hi", "mp3")


@pytest.mark.parametrize("response_format", ["opus", "wav", "flac"])
async def test_speech_formats_and_options(gw: Any, sdk: Any, response_format: str) -> None:
    response = await sdk.audio.speech.create(model="up/tts-1-hd", voice="nova", input="Hi",
                                             response_format=response_format, speed=1.25,
                                             instructions="Cheerfully.")
    assert response.content == spoken("Hi", response_format)
    assert response.response.headers["Content-Type"] == f"audio/{response_format}"
    sent = audio_requests(gw.fake, "/speech")[-1].json
    assert sent["speed"] == 1.25 and sent["instructions"] == "Cheerfully."


async def test_speech_cut_mid_stream_is_an_incomplete_transfer(gw: Any, sdk: Any) -> None:
    """After its first byte a broken upstream cannot be hidden: the client's transfer
    ends without its last chunk (no error event appended to the audio)."""
    from fakes.openai_upstream import drop_mid_stream

    gw.fake.script.append(drop_mid_stream(2))
    received = b""
    with pytest.raises(Exception, match="incomplete chunked read"):  # httpx's RemoteProtocolError
        async with sdk.audio.speech.with_streaming_response.create(
                model="up/tts-1", voice="alloy", input="Broken") as response:
            async for chunk in response.iter_bytes():
                received += chunk
    assert "error" not in received.decode("latin-1")
    assert spoken("Broken", "mp3").startswith(received)
    assert len(received) < len(spoken("Broken", "mp3"))
    record = await last_record(gw)
    assert record["endpoint"] == "audio.speech" and record["status"] == 502


# ----------------------------------------------------------------------------- fallback

async def test_transcription_falls_back_from_openai_to_deepgram(
    gw: Any, sdk: Any, dg: FakeDeepgram
) -> None:
    await admin(gw, "POST", "/api/combos", {"name": "stt", "steps": [WHISPER, NOVA]})
    gw.fake.script.append(error(500))
    raw = await sdk.audio.transcriptions.with_raw_response.create(
        model="stt", file=upload(), response_format="vtt")
    assert raw.headers["X-OmniRoute-Provider"] == "dg"
    assert raw.headers["X-OmniRoute-Fallback-Attempts"] == "1"
    assert raw.parse().startswith("WEBVTT")
    record = await last_record(gw)
    assert record["provider"] == "dg" and record["attempts"] == 2 and record["combo"] == "stt"


async def test_transcription_falls_back_from_deepgram_to_openai(
    gw: Any, sdk: Any, dg: FakeDeepgram
) -> None:
    await admin(gw, "POST", "/api/combos", {"name": "stt", "steps": [NOVA, WHISPER]})
    dg.script.append(deepgram_error(429, headers={"Retry-After": "7"}))
    raw = await sdk.audio.transcriptions.with_raw_response.create(model="stt", file=upload())
    assert raw.headers["X-OmniRoute-Provider"] == "up"
    cooling = await admin(gw, "GET", "/api/rate-limits")
    states = {c["name"]: c for c in cooling["connections"]}
    assert states["fake-deepgram"]["cooldown_left"] > 5  # Retry-After: 7


async def test_translation_falls_back_across_two_openai_accounts(
    gw: Any, sdk: Any, up2: FakeOpenAI
) -> None:
    await admin(gw, "POST", "/api/combos", {"name": "tr", "steps": [WHISPER, "up2/whisper-1"]})
    gw.fake.script.append(error(503))
    raw = await sdk.audio.translations.with_raw_response.create(model="tr", file=upload())
    assert raw.headers["X-OmniRoute-Provider"] == "up2"
    assert len(audio_requests(up2)) == 1


async def test_speech_falls_back_before_its_first_byte(
    gw: Any, sdk: Any, up2: FakeOpenAI
) -> None:
    await admin(gw, "POST", "/api/combos", {"name": "voice", "steps": ["up/tts-1", "up2/tts-1"]})
    gw.fake.script.append(error(500))
    async with sdk.audio.speech.with_streaming_response.create(
            model="voice", voice="alloy", input="Fallback") as response:
        assert response.headers["X-OmniRoute-Provider"] == "up2"
        assert response.headers["X-OmniRoute-Fallback-Attempts"] == "1"
        assert await response.read() == spoken("Fallback", "mp3")


# ----------------------------------------------------------------------------- cost

async def test_transcription_cost_from_genai_prices_and_from_an_override(
    gw: Any, sdk: Any, dg: FakeDeepgram
) -> None:
    raw = await sdk.audio.transcriptions.with_raw_response.create(
        model=WHISPER, file=upload(), response_format="verbose_json")
    # whisper-1 bills whole seconds (its usage says 3): $0.36 an hour
    assert float(raw.headers["X-OmniRoute-Response-Cost"]) == pytest.approx(3 * 0.36 / 3600)
    # genai-prices does not know Deepgram: no cost until an operator prices it
    await sdk.audio.transcriptions.create(model=NOVA, file=upload())
    assert (await last_record(gw))["cost_usd"] is None
    await admin(gw, "PUT", "/api/pricing", {"model": NOVA, "per_second": 0.0043 / 60})
    raw = await sdk.audio.transcriptions.with_raw_response.create(model=NOVA, file=upload())
    assert float(raw.headers["X-OmniRoute-Response-Cost"]) == pytest.approx(2.5 * 0.0043 / 60)
    record = await last_record(gw)
    assert record["cost_usd"] == pytest.approx(2.5 * 0.0043 / 60)
    view = await admin(gw, "GET", f"/api/pricing?model={NOVA}")
    assert view["targets"][0]["per_second"] == pytest.approx(0.0043 / 60)
    totals = (await admin(gw, "GET", "/api/usage/summary"))["totals"]
    assert totals["audio_seconds"] == pytest.approx(3 + 2.5 + 2.5)  # billed, then measured


async def test_token_billed_transcription_records_its_tokens(gw: Any, sdk: Any) -> None:
    await sdk.audio.transcriptions.create(model="up/gpt-4o-transcribe", file=upload())
    record = await last_record(gw)
    assert record["prompt_tokens"] == 25 and record["completion_tokens"] == len(HEARD) // 4
    assert record["audio_seconds"] == pytest.approx(2.5)  # measured from the WAV


# ----------------------------------------------------------------------------- bad input

async def post_form(gw: Any, fields: dict[str, str], file: tuple[str, bytes, str] | None,
                    path: str = "/v1/audio/transcriptions") -> tuple[int, dict[str, Any]]:
    form = aiohttp.FormData(default_to_multipart=True)
    for name, value in fields.items():
        form.add_field(name, value)
    if file is not None:
        form.add_field("file", file[1], filename=file[0], content_type=file[2])
    resp = await gw.client.post(path, data=form)
    return resp.status, await resp.json()


@pytest.mark.parametrize("path", ["/v1/audio/transcriptions", "/v1/audio/translations"])
@pytest.mark.parametrize(("fields", "file", "status", "param"), [
    ({"model": WHISPER}, None, 400, "file"),
    ({"model": WHISPER, "file": "not a file"}, None, 400, "file"),
    ({}, upload(), 400, "model"),
    ({"model": WHISPER, "response_format": "mp3"}, upload(), 400, "response_format"),
    ({"model": WHISPER, "temperature": "hot"}, upload(), 400, "temperature"),
    ({"model": WHISPER, "timestamp_granularities[]": "word"}, upload(), 400,
     "timestamp_granularities"),
    ({"model": WHISPER}, upload("notes.txt", b"hello", "text/plain"), 400, "file"),
    ({"model": WHISPER}, upload(data=b""), 400, "file"),
    ({"model": "nope/whisper-1"}, upload(), 400, "model"),
    ({"model": WHISPER, "stream": "true"}, upload(), 400, "stream"),
])
async def test_bad_uploads_are_clear_4xx(gw: Any, path: str, fields: dict[str, str],
                                         file: Any, status: int, param: str) -> None:
    got, body = await post_form(gw, fields, file, path)
    assert got == status, body
    assert body["error"]["param"] == param and body["error"]["type"] == "invalid_request_error"
    assert not audio_requests(gw.fake)


async def test_a_streamed_transcription_is_refused_not_forwarded(gw: Any, sdk: Any) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        await sdk.audio.transcriptions.create(model=WHISPER, file=upload(), stream=True)
    error = caught.value.body
    assert error["param"] == "stream" and error["code"] == "stream_not_supported"
    assert not audio_requests(gw.fake)
    got, body = await post_form(gw, {"model": WHISPER, "stream": "false"}, upload())
    assert got == 200, body


async def test_unknown_model_and_bad_format_through_the_sdk(gw: Any, sdk: Any) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        await sdk.audio.transcriptions.create(model="nobody/whisper-9", file=upload())
    assert caught.value.body["code"] == "model_not_found"
    with pytest.raises(openai.BadRequestError) as caught:
        await sdk.audio.transcriptions.create(model=WHISPER, file=upload(),
                                              response_format="diarized_json")
    assert caught.value.body["param"] == "response_format"


async def test_a_json_body_is_a_415(gw: Any) -> None:
    resp = await gw.client.post("/v1/audio/transcriptions", json={"model": WHISPER})
    assert resp.status == 415
    assert (await resp.json())["error"]["code"] == "unsupported_media_type"


async def test_an_upload_over_the_limit_is_a_413(gw: Any) -> None:
    await gw.set_settings(max_upload_bytes=len(WAV) - 1)
    status, body = await post_form(gw, {"model": WHISPER}, upload())
    assert status == 413 and body["error"]["code"] == "payload_too_large"
    await gw.set_settings(max_upload_bytes=len(WAV) + 1024)
    status, body = await post_form(gw, {"model": WHISPER}, upload())
    assert status == 200, body


async def test_an_upload_without_a_length_over_the_limit_is_a_413(gw: Any) -> None:
    """A chunked body is counted as it comes."""
    await gw.set_settings(max_upload_bytes=4096)
    form = aiohttp.FormData()
    form.add_field("model", WHISPER)
    form.add_field("file", WAV, filename="speech.wav", content_type="audio/wav")
    payload = form()
    boundary_type = payload.content_type

    async def chunks() -> Any:
        buffer = io.BytesIO()

        class Sink:
            async def write(self, data: bytes) -> None:
                buffer.write(data)

        await payload.write(Sink())  # type: ignore[arg-type]
        raw = buffer.getvalue()
        for i in range(0, len(raw), 1024):
            yield raw[i:i + 1024]

    resp = await gw.client.post("/v1/audio/transcriptions", data=chunks(),
                                headers={"Content-Type": boundary_type})
    assert resp.status == 413


async def test_an_upload_too_slow_is_a_408(gw: Any) -> None:
    await gw.set_settings(upload_timeout=0.5)
    head = (b"--b\r\nContent-Disposition: form-data; name=\"model\"\r\n\r\n" + WHISPER.encode()
            + b"\r\n--b\r\nContent-Disposition: form-data; name=\"file\"; filename=\"a.wav\"\r\n"
            b"Content-Type: audio/wav\r\n\r\n")

    async def slowly() -> Any:
        yield head
        await asyncio.sleep(3)
        yield WAV + b"\r\n--b--\r\n"

    resp = await gw.client.post("/v1/audio/transcriptions", data=slowly(),
                                headers={"Content-Type": "multipart/form-data; boundary=b"})
    assert resp.status == 408
    assert (await resp.json())["error"]["code"] == "request_timeout"


@pytest.mark.parametrize(("body", "param"), [
    ({"voice": "alloy", "input": "x"}, "model"),
    ({"model": "up/tts-1", "voice": "alloy"}, "input"),
    ({"model": "up/tts-1", "voice": "alloy", "input": ""}, "input"),
    ({"model": "up/tts-1", "voice": "alloy", "input": "x", "response_format": "ogg"},
     "response_format"),
    ({"model": "up/tts-1", "voice": "alloy", "input": "x", "speed": 9}, "speed"),
    ({"model": "up/tts-1", "voice": 3, "input": "x"}, "voice"),
    ({"model": "nope/tts-1", "voice": "alloy", "input": "x"}, "model"),
])
async def test_bad_speech_requests_are_clear_400s(gw: Any, body: dict[str, Any],
                                                  param: str) -> None:
    resp = await gw.client.post("/v1/audio/speech", json=body)
    assert resp.status == 400
    assert (await resp.json())["error"]["param"] == param
    assert not audio_requests(gw.fake)


async def test_an_upstream_refusal_of_speech_reaches_the_client(gw: Any, sdk: Any) -> None:
    """The fake requires a voice: its 400 is the client's own mistake, passed on."""
    with pytest.raises(openai.BadRequestError) as caught:
        await sdk.audio.speech.create(model="up/tts-1", input="no voice", voice=None)
    assert caught.value.body["param"] == "voice"


async def test_chat_with_a_deepgram_model_is_refused(gw: Any, sdk: Any, dg: FakeDeepgram) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        await sdk.chat.completions.create(model=NOVA, messages=[{"role": "user", "content": "x"}])
    assert caught.value.body["code"] == "operation_not_supported"


# ----------------------------------------------------------------------------- budgets

async def test_a_budget_counts_speech_characters_and_refuses_unpriced_audio(
    gw: Any, dg: FakeDeepgram
) -> None:
    """tts-1 costs $15 per million characters: 1000 characters are $0.015. A $0.02 daily
    budget admits a request while its spend is under the limit (two of them), then
    refuses the next before any call; Deepgram has no known price, and a key with a USD
    budget cannot use it (fails closed)."""
    resp = await gw.client.post("/api/keys", json={"name": "voice",
                                                   "limits": {"daily_usd": 0.02}},
                                headers=gw.admin_headers)
    created = await resp.json()
    key_id, secret = created["id"], created["key"]
    client = openai.AsyncOpenAI(base_url=gw.base_url + "/v1", api_key=secret, max_retries=0)
    try:
        text = "x" * 1000
        budgets = gw.client.app[BUDGETS]
        gw.fake.script.append(hang_mid_stream(1, 0.5))
        async with client.audio.speech.with_streaming_response.create(
                model="up/tts-1", voice="alloy", input=text) as streaming:
            # in flight, it holds its estimate: the characters' price (no tokens are known)
            assert budgets.state(key_id).reserved_usd == pytest.approx(0.015)
            first = await streaming.read()
        assert first == spoken(text, "mp3") and budgets.state(key_id).reserved_usd == 0
        assert (await last_record(gw))["cost_usd"] == pytest.approx(0.015)
        done = await client.audio.speech.create(model="up/tts-1", voice="alloy", input=text)
        assert done.content == spoken(text, "mp3")
        calls = len(audio_requests(gw.fake, "/speech"))
        with pytest.raises(openai.RateLimitError) as caught:
            await client.audio.speech.create(model="up/tts-1", voice="alloy", input=text)
        assert caught.value.code == "budget_exceeded"
        assert len(audio_requests(gw.fake, "/speech")) == calls  # refused before the call
        with pytest.raises(openai.PermissionDeniedError) as refused:
            await client.audio.transcriptions.create(model=NOVA, file=upload())
        assert refused.value.code == "model_unpriced"
    finally:
        await client.close()


async def test_a_slow_transcription_is_not_raced(gw: Any, sdk: Any, dg: FakeDeepgram) -> None:
    """Hedging would start the next target past a short bound; a transcription answers
    all at once after a time that grows with its audio, so it waits for its target."""
    from fakes.openai_upstream import hang_before_headers

    await gw.set_settings(hedge_initial=0.2, hedge_floor=0.1)
    await admin(gw, "POST", "/api/combos", {"name": "stt", "steps": [WHISPER, NOVA]})
    gw.fake.script.append(hang_before_headers(1.0))
    raw = await sdk.audio.transcriptions.with_raw_response.create(model="stt", file=upload())
    assert raw.headers["X-OmniRoute-Provider"] == "up" and not dg.requests


# ----------------------------------------------------------------------------- routes

async def test_the_media_routes_answer_without_the_v1_prefix(gw: Any) -> None:
    """README: the OpenAI routes also answer without ``/v1``; an SDK pointed at the bare
    gateway drives the audio endpoints, and the model lists answer as under ``/v1``."""
    bare = openai.AsyncOpenAI(base_url=gw.base_url, api_key="sk-client", max_retries=0,
                              timeout=20)
    try:
        heard = await bare.audio.transcriptions.create(model=WHISPER, file=upload())
        assert heard.text == HEARD
        translated = await bare.audio.translations.create(model=WHISPER, file=upload())
        assert translated.text == f"(in English) {HEARD}"
        speech = await bare.audio.speech.create(model="up/tts-1", voice="alloy", input="Hi")
        assert speech.content == spoken("Hi", "mp3")
    finally:
        await bare.close()
    assert [r.path for r in audio_requests(gw.fake)] == [
        "/v1/audio/transcriptions", "/v1/audio/translations", "/v1/audio/speech"]
    for path in ("/embeddings", "/images/generations", "/models/up/gpt-4o"):
        bare_resp, v1_resp = await gw.client.get(path), await gw.client.get("/v1" + path)
        assert bare_resp.status == v1_resp.status == 200, path
        assert await bare_resp.json() == await v1_resp.json()
