"""The embedder in its own process (:mod:`omniroute_semantic_cache.encoder`): started with
the layer, stopped with it, restarted after a crash, killed when hung, and never left
behind when the gateway dies. The deterministic embedders run in the child here; the
real model's run is in test_semantic_real_model.py."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from semantic_testkit import Layers, SlowEmbedder, make_key

from omniroute_semantic_cache.embedders import HashingEmbedder
from omniroute_semantic_cache.encoder import EncoderError, ProcessEmbedder


def alive(pid: int) -> bool:
    """Whether ``pid`` runs (a zombie, exited but not reaped, does not)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return False
    return state not in ("Z", "X")


def gone_within(pid: int, seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if not alive(pid):
            return True
        time.sleep(0.05)
    return not alive(pid)


async def test_the_layer_encodes_in_a_child_process_stopped_with_it(layers: Layers) -> None:
    layer = await layers.make(HashingEmbedder(), isolate=True)
    assert isinstance(layer.embedder, ProcessEmbedder)
    pid = layer.embedder.pid
    assert pid is not None and pid != os.getpid() and alive(pid)
    await layer.store(make_key("What is the capital of France?"), b"Paris", 3600)
    hit = await layer.lookup(make_key("what is the capital of FRANCE"))
    assert hit is not None and hit.entry == b"Paris"
    assert await layer.lookup(make_key("How do volcanoes form?")) is None
    stats = await layer.stats()
    assert stats["encoder_process"] == {"pid": pid, "starts": 1, "failures": 0}
    await layer.close()
    assert gone_within(pid, 5.0)  # stopped and reaped, not a zombie
    assert layer.embedder.pid is None


async def test_a_crashed_encoder_is_a_miss_then_restarted(layers: Layers) -> None:
    layer = await layers.make(HashingEmbedder(), isolate=True)
    embedder = layer.embedder
    assert isinstance(embedder, ProcessEmbedder)
    await layer.store(make_key("Who wrote Hamlet?"), b"Shakespeare", 3600)
    first = embedder.pid
    assert first is not None
    os.kill(first, signal.SIGKILL)
    assert await layer.lookup(make_key("who wrote hamlet")) is None  # fails open
    assert layer.outcomes["encoder"] == 1
    embedder.restart_every = 0.0  # (5 s by default: a model that cannot run does not spin)
    async with asyncio.timeout(20):  # the lookup that restarts it may time out: a miss
        while (hit := await layer.lookup(make_key("who wrote hamlet"))) is None:
            await asyncio.sleep(0.1)
    assert hit.entry == b"Shakespeare"
    assert embedder.starts == 2 and embedder.pid not in (None, first)
    assert not alive(first)


async def test_a_hung_encoder_fails_open_and_is_killed(layers: Layers) -> None:
    layers.set(semantic_cache_timeout=0.2)
    layer = await layers.make(SlowEmbedder(30.0), isolate=True)
    embedder = layer.embedder
    assert isinstance(embedder, ProcessEmbedder)
    embedder.call_timeout = 1.0
    pid = embedder.pid
    assert pid is not None
    started = time.perf_counter()
    assert await layer.lookup(make_key("Who wrote Hamlet?")) is None
    assert time.perf_counter() - started < 0.5  # the caller's own bound
    assert layer.outcomes["timeout"] == 1
    assert gone_within(pid, 5.0)  # past call_timeout the child was killed
    assert embedder.failures == 1


def test_a_failed_load_leaves_no_child() -> None:
    embedder = ProcessEmbedder(BrokenEmbedder())
    with pytest.raises(EncoderError, match="weights missing"):
        embedder.load()
    assert embedder.pid is None
    embedder.stop()


class BrokenEmbedder(HashingEmbedder):
    """Fails to load (a module-level class: the child unpickles it by name)."""

    def load(self) -> None:
        raise OSError("weights missing")


def test_the_child_ends_when_the_gateway_dies(tmp_path: Path) -> None:
    """A gateway killed outright (SIGKILL: no cleanup runs) leaves no encoder behind."""
    script = tmp_path / "gateway.py"
    script.write_text(
        "import os, signal, sys\n"
        "from omniroute_semantic_cache.embedders import HashingEmbedder\n"
        "from omniroute_semantic_cache.encoder import ProcessEmbedder\n"
        "e = ProcessEmbedder(HashingEmbedder())\n"
        "e.load()\n"
        "print(e.pid, flush=True)\n"
        "os.kill(os.getpid(), signal.SIGKILL)\n")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in sys.path if p)}
    done = subprocess.run([sys.executable, str(script)], env=env, capture_output=True,
                          timeout=60, text=True)
    assert done.returncode == -signal.SIGKILL, done.stderr
    child = int(done.stdout.split()[0])
    assert gone_within(child, 10.0)


def test_a_stopped_encoder_does_not_start_again() -> None:
    embedder = ProcessEmbedder(HashingEmbedder())
    embedder.load()
    pid = embedder.pid
    assert pid is not None
    assert embedder.encode_within("hello there", 256) is not None
    assert embedder.encode_within("hello " * 300, 256) is None  # over the limit
    embedder.stop()
    embedder.stop()  # twice: nothing more to do
    assert not alive(pid)
    with pytest.raises(EncoderError):
        embedder.encode(["hello"])
