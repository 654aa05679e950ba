"""Audio translation, pure: WAV lengths, subtitles, OpenAI's audio forms and answers,
Deepgram's listen answers, and audio prices (no server)."""

from __future__ import annotations

import hashlib
import io
import wave
from typing import Any

import orjson
import pytest

from omniroute.errors import InvalidRequest, UpstreamError
from omniroute.formats.audio import Segment, TranscribeRequest, Transcript, Word, wav_seconds
from omniroute.formats.forms import Form, Upload
from omniroute.formats.openai.audio import OpenAIAudio, speech_body
from omniroute.formats.subtitles import last_end, segments_from_words, srt, timestamp, vtt
from omniroute.pricing import Override
from omniroute.pricing.table import bundled
from omniroute.providers.deepgram import audio_type, listen_query, transcript_from

AUDIO = OpenAIAudio()


def wav(seconds: float, rate: int = 8000, channels: int = 1, width: int = 2) -> bytes:
    out = io.BytesIO()
    with wave.open(out, "wb") as w:
        w.setnchannels(channels)
        w.setsampwidth(width)
        w.setframerate(rate)
        w.writeframes(b"\x01" * int(seconds * rate) * channels * width)
    return out.getvalue()


# ----------------------------------------------------------------------------- WAV length

@pytest.mark.parametrize(("seconds", "rate", "channels", "width"), [
    (1.0, 8000, 1, 2), (2.5, 16000, 2, 2), (0.3, 44100, 1, 1), (3.0, 22050, 2, 3)])
def test_wav_seconds_agrees_with_the_wave_module(seconds: float, rate: int, channels: int,
                                                 width: int) -> None:
    data = wav(seconds, rate, channels, width)
    with wave.open(io.BytesIO(data)) as w:
        expected = w.getnframes() / w.getframerate()
    assert wav_seconds(data) == pytest.approx(expected)


def test_wav_seconds_skips_other_chunks_and_bounds_a_streamed_size() -> None:
    data = wav(1.0)
    fmt_end = 12 + 8 + 16
    listed = (data[:fmt_end] + b"LIST" + (3).to_bytes(4, "little") + b"abc\x00"
              + data[fmt_end:])  # an odd-sized chunk, padded
    assert wav_seconds(listed) == pytest.approx(1.0)
    streamed = data[:fmt_end + 4] + b"\xff\xff\xff\xff" + data[fmt_end + 8:]
    assert wav_seconds(streamed) == pytest.approx(1.0)  # the size says more than there is


@pytest.mark.parametrize("data", [b"", b"ID3\x03\x00" + b"\x00" * 40, b"RIFF\x00\x00\x00\x00AVI ",
                                  b"RIFF\x24\x00\x00\x00WAVEdata\x00\x00\x00\x00"])
def test_wav_seconds_of_something_else_is_none(data: bytes) -> None:
    assert wav_seconds(data) is None


# ----------------------------------------------------------------------------- subtitles

SEGMENTS = [Segment("Hello there.", 0.0, 1.25), Segment(" General Kenobi. ", 1.5, 3723.041)]


def test_srt_and_vtt() -> None:
    assert srt(SEGMENTS) == ("1\n00:00:00,000 --> 00:00:01,250\nHello there.\n\n"
                             "2\n00:00:01,500 --> 01:02:03,041\nGeneral Kenobi.\n\n")
    assert vtt(SEGMENTS) == ("WEBVTT\n\n00:00:00.000 --> 00:00:01.250\nHello there.\n\n"
                             "00:00:01.500 --> 01:02:03.041\nGeneral Kenobi.\n\n")
    assert last_end(srt(SEGMENTS).encode()) == pytest.approx(3723.041)
    assert last_end(vtt(SEGMENTS).encode()) == pytest.approx(3723.041)
    assert last_end(b"no cues") is None
    assert timestamp(-1, ".") == "00:00:00.000"


def test_cues_end_at_sentences_pauses_and_length() -> None:
    words = [Word("One", 0, 0.5), Word("two.", 0.5, 1.0), Word("Three", 1.0, 1.4),
             Word("four", 3.0, 3.5)]  # a pause before "four"
    assert segments_from_words(words) == [Segment("One two.", 0, 1.0), Segment("Three", 1.0, 1.4),
                                          Segment("four", 3.0, 3.5)]
    many = [Word("word", i * 0.1, i * 0.1 + 0.1) for i in range(40)]
    cues = segments_from_words(many)
    assert len(cues) > 1 and all(len(c.text) <= 90 for c in cues)
    assert " ".join(c.text for c in cues) == " ".join(["word"] * 40)


# ----------------------------------------------------------------------------- OpenAI forms

WAV_UPLOAD = Upload("a.wav", "audio/wav", b"RIFF")


def form(fields: dict[str, Any], file: Upload | None = WAV_UPLOAD) -> Form:
    out = Form({k: v if isinstance(v, list) else [v] for k, v in fields.items()})
    if file is not None:
        out.files["file"] = file
    return out


def test_a_transcription_form() -> None:
    ask = AUDIO.transcription(form({
        "model": " up/whisper-1 ", "language": "de", "prompt": "Hallo", "temperature": "0.5",
        "response_format": "verbose_json", "timestamp_granularities[]": ["word", "segment"],
        "custom": "kept"}), "transcribe")
    assert (ask.model, ask.language, ask.prompt, ask.temperature) == ("up/whisper-1", "de",
                                                                      "Hallo", 0.5)
    assert ask.granularities == ("word", "segment") and ask.response_format == "verbose_json"
    assert "model" not in ask.fields and ask.fields["custom"] == ["kept"]
    summary = ask.summary()
    assert summary["custom"] == "kept" and summary["model"] == "up/whisper-1"
    assert summary["timestamp_granularities[]"] == ["word", "segment"]
    assert summary["file"] == {"filename": "a.wav", "content_type": "audio/wav", "bytes": 4,
                               "blake2b": hashlib.blake2b(b"RIFF", digest_size=16).hexdigest()}


@pytest.mark.parametrize(("upload", "name"), [
    (Upload("voice.opus", "audio/opus", b"x"), "voice.ogg"),
    (Upload("blob", "audio/mpeg", b"x"), "blob.mp3"),
    (Upload("", "audio/webm", b"x"), "audio.webm"),
    (Upload("CLIP.M4A", "application/octet-stream", b"x"), "CLIP.M4A"),
])
def test_uploads_are_named_by_what_they_hold(upload: Upload, name: str) -> None:
    assert AUDIO.transcription(form({"model": "m"}, upload), "transcribe").file.filename == name


@pytest.mark.parametrize(("fields", "upload", "param"), [
    ({"model": "m"}, Upload("a.exe", "application/x-msdownload", b"x"), "file"),
    ({"model": "m"}, Upload("a", "application/octet-stream", b"x"), "file"),
    ({"model": "m", "temperature": "1.5"}, Upload("a.wav", "", b"x"), "temperature"),
    ({"model": "m", "temperature": "nan"}, Upload("a.wav", "", b"x"), "temperature"),
    ({"model": "m", "timestamp_granularities[]": "char", "response_format": "verbose_json"},
     Upload("a.wav", "", b"x"), "timestamp_granularities"),
    ({"model": ""}, Upload("a.wav", "", b"x"), "model"),
])
def test_bad_forms(fields: dict[str, Any], upload: Upload, param: str) -> None:
    with pytest.raises(InvalidRequest) as caught:
        AUDIO.transcription(form(fields, upload), "transcribe")
    assert caught.value.param == param


def request(response_format: str = "json", granularities: tuple[str, ...] = (),
            task: str = "transcribe", data: bytes = b"RIFF") -> TranscribeRequest:
    return TranscribeRequest("m", Upload("a.wav", "audio/wav", data), task, response_format,
                             granularities=granularities)


TRANSCRIPT = Transcript("Hi there. Bye.", "en", 2.0,
                        [Word("Hi", 0.0, 0.4), Word("there.", 0.4, 0.9), Word("Bye.", 1.5, 2.0)])


def test_a_transcript_in_each_format() -> None:
    done = AUDIO.transcript(request("json"), TRANSCRIPT)
    assert orjson.loads(done.body) == {"task": "transcribe", "language": "en", "duration": 2.0,
                                       "text": "Hi there. Bye.",
                                       "usage": {"type": "duration", "seconds": 2.0}}
    assert done.content_type == "application/json" and done.seconds == 2.0
    verbose = orjson.loads(AUDIO.transcript(request("verbose_json", ("word",)), TRANSCRIPT).body)
    assert "segments" not in verbose and [w["word"] for w in verbose["words"]] == [
        "Hi", "there.", "Bye."]
    verbose = orjson.loads(AUDIO.transcript(request("verbose_json"), TRANSCRIPT).body)
    assert [(s["id"], s["text"], s["start"], s["end"]) for s in verbose["segments"]] == [
        (0, "Hi there.", 0.0, 0.9), (1, "Bye.", 1.5, 2.0)]
    text = AUDIO.transcript(request("text"), TRANSCRIPT)
    assert text.body == b"Hi there. Bye.\n" and text.content_type.startswith("text/plain")
    subtitles = AUDIO.transcript(request("vtt"), TRANSCRIPT)
    assert subtitles.body.startswith(b"WEBVTT") and subtitles.content_type.startswith("text/vtt")
    untimed = AUDIO.transcript(request("srt"), Transcript("Just text.", None, 4.0))
    assert untimed.body == b"1\n00:00:00,000 --> 00:00:04,000\nJust text.\n\n"


def test_relayed_answers_keep_theirs_and_gain_the_gateways_fields() -> None:
    data = wav(1.5)
    whisper = AUDIO.relayed(request("json", data=data), orjson.dumps(
        {"text": "hey", "usage": {"type": "duration", "seconds": 2}}), "application/json")
    assert orjson.loads(whisper.body) == {"text": "hey", "task": "transcribe", "language": None,
                                          "duration": 1.5,
                                          "usage": {"type": "duration", "seconds": 2}}
    assert whisper.seconds == 2  # what the upstream bills
    tokens = AUDIO.relayed(request("json", task="translate", data=data), orjson.dumps(
        {"text": "hey", "usage": {"type": "tokens", "input_tokens": 30, "output_tokens": 2,
                                  "total_tokens": 32}}), "application/json")
    assert (tokens.input_tokens, tokens.output_tokens, tokens.seconds) == (30, 2, 1.5)
    assert orjson.loads(tokens.body)["task"] == "translate"
    srt_body = b"1\n00:00:00,000 --> 00:00:03,200\nhey\n\n"
    relayed = AUDIO.relayed(request("srt"), srt_body, "application/octet-stream")
    assert relayed.body == srt_body and relayed.seconds == pytest.approx(3.2)
    assert relayed.content_type.startswith("text/plain")
    with pytest.raises(UpstreamError):
        AUDIO.relayed(request("json"), b"<html>", "text/html")


def test_speech_requests() -> None:
    ask = AUDIO.speech({"model": "up/tts-1", "input": "Hi", "voice": {"id": "v1"}, "speed": 2,
                        "instructions": "Slowly."})
    assert (ask.response_format, ask.speed, ask.voice) == ("mp3", 2.0, {"id": "v1"})
    assert AUDIO.speech_type(ask) == "audio/mpeg"
    assert speech_body(ask, "tts-1") == {"instructions": "Slowly.", "model": "tts-1",
                                         "input": "Hi", "response_format": "mp3",
                                         "voice": {"id": "v1"}, "speed": 2.0}


# ----------------------------------------------------------------------------- Deepgram

#: an answer of the documented shape (developers.deepgram.com, pre-recorded audio)
LISTEN = {
    "metadata": {"transaction_key": "deprecated", "request_id": "a1b2", "sha256": "00",
                 "created": "2024-05-01T10:00:00.000Z", "duration": 3.41, "channels": 1,
                 "models": ["m1"], "model_info": {"m1": {"name": "2-general-nova",
                                                         "version": "2024-01-09.29447",
                                                         "arch": "nova-3"}}},
    "results": {
        "channels": [{"alternatives": [{
            "transcript": "Yeah. As much as it's worth celebrating",
            "confidence": 0.99,
            "words": [
                {"word": "yeah", "start": 0.08, "end": 0.32, "confidence": 0.99,
                 "punctuated_word": "Yeah."},
                {"word": "as", "start": 0.4, "end": 0.56, "confidence": 0.99,
                 "punctuated_word": "As"},
                {"word": "much", "start": 0.56, "end": 0.8, "confidence": 0.99,
                 "punctuated_word": "much"}]}],
            "detected_language": "en", "language_confidence": 0.98}],
        "utterances": [{"start": 0.08, "end": 3.2, "confidence": 0.98, "channel": 0,
                        "transcript": "Yeah. As much as it's worth celebrating",
                        "words": [], "id": "u1"}]}}


def test_a_deepgram_answer_as_a_transcript() -> None:
    got = transcript_from(orjson.dumps(LISTEN))
    assert got.text == "Yeah. As much as it's worth celebrating"
    assert (got.language, got.duration) == ("en", 3.41)
    assert got.words[0] == Word("Yeah.", 0.08, 0.32)
    assert got.segments == [Segment("Yeah. As much as it's worth celebrating", 0.08, 3.2)]
    plain = {"metadata": {"duration": 1.0}, "results": {"channels": [
        {"alternatives": [{"transcript": "", "confidence": 0, "words": []}]}]}}
    silent = transcript_from(orjson.dumps(plain), "fr")
    assert (silent.text, silent.language, silent.words) == ("", "fr", [])


@pytest.mark.parametrize("body", [b"not json", b"{}", b'{"results": {"channels": []}}',
                                  orjson.dumps({"results": {"channels": [{"alternatives": [
                                      {"transcript": 3}]}]}}),
                                  orjson.dumps({"results": {"channels": [{"alternatives": [
                                      {"transcript": "x", "words": [{"word": "x",
                                                                     "start": -1,
                                                                     "end": 0}]}]}]}})])
def test_a_broken_deepgram_answer_is_the_upstreams_failure(body: bytes) -> None:
    with pytest.raises(UpstreamError):
        transcript_from(body)


def test_the_listen_query_and_the_audio_type() -> None:
    assert listen_query("nova-3", request("vtt")) == (
        "model=nova-3&smart_format=true&detect_language=true&utterances=true")
    ask = request("text")
    ask.language = "pt-BR"
    assert listen_query("nova-2", ask) == "model=nova-2&smart_format=true&language=pt-BR"
    for upload, expected in [(Upload("a.mp3", "video/mp4", b""), "audio/mpeg"),
                             (Upload("a.wav", "audio/x-wav; x=1", b""), "audio/x-wav"),
                             (Upload("a.bin", "", b""), "application/octet-stream")]:
        ask.file = upload
        assert audio_type(ask) == expected


# ----------------------------------------------------------------------------- prices

def test_audio_prices_from_genai_prices_and_overrides() -> None:
    whisper = bundled().rate("whisper-1", None, "openai")
    speech = bundled().rate("tts-1", None, "openai")
    assert whisper is not None and speech is not None
    assert whisper.cost(0, 0, seconds=3600) == pytest.approx(0.36)
    assert speech.cost(0, 0, characters=1_000_000) == pytest.approx(15.0)
    assert whisper.cost(1000, 1000) == 0.0  # tokens cost nothing on a per-second model
    override = Override("dg/nova-3", 0.0, 0.0, per_second=0.0001)
    assert override.rate().cost(10, 10, seconds=30) == pytest.approx(0.003)
    assert override.public()["per_second"] == 0.0001
