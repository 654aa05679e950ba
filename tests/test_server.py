"""The event loop ``serve`` runs on: uvloop by default, asyncio as the fallback."""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

import pytest

from omniroute import server
from omniroute.config import ConfigError, load_config


def test_loop_setting_from_toml_env_and_flag(tmp_path: Path) -> None:
    env = {"OMNIROUTE_DATA_DIR": str(tmp_path)}
    assert load_config(environ=env).loop == "auto"
    (tmp_path / "omniroute.toml").write_text('[server]\nloop = "asyncio"\n')
    assert load_config(environ=env).loop == "asyncio"
    assert load_config(environ={**env, "OMNIROUTE_LOOP": "uvloop"}).loop == "uvloop"
    assert load_config(environ=env, loop="uvloop").loop == "uvloop"
    with pytest.raises(ConfigError, match="loop must be one of"):
        load_config(environ=env, loop="trio")


def test_asyncio_asked_for_is_asyncio() -> None:
    assert server.loop_factory("asyncio") is None


@pytest.mark.parametrize("name", ["auto", "uvloop"])
def test_uvloop_when_installed(name: str) -> None:
    uvloop = pytest.importorskip("uvloop")
    factory = server.loop_factory(name)
    assert factory is uvloop.new_event_loop
    seen: list[asyncio.AbstractEventLoop] = []

    async def probe() -> None:
        seen.append(asyncio.get_running_loop())

    server.run(probe(), name)
    assert isinstance(seen[0], uvloop.Loop)


@pytest.mark.parametrize("name", ["auto", "uvloop"])
def test_falls_back_to_asyncio_when_uvloop_does_not_import(
    name: str, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setitem(sys.modules, "uvloop", None)  # `import uvloop` raises ImportError
    assert server.loop_factory(name) is None
    seen: list[asyncio.AbstractEventLoop] = []

    async def probe() -> None:
        seen.append(asyncio.get_running_loop())

    server.run(probe(), name)
    assert type(seen[0]).__module__.startswith("asyncio")
    warned = [r for r in caplog.records if "uvloop is not installed" in r.getMessage()]
    assert bool(warned) == (name == "uvloop")  # "auto" falls back quietly


def test_settle_gc_parks_start_up_objects_in_the_permanent_generation() -> None:
    import gc

    before = gc.get_threshold()
    try:
        server.settle_gc()
        assert gc.get_freeze_count() > 0
        # young collections no longer walk the requests in flight every 700 allocations
        assert gc.get_threshold() == (server.YOUNG_THRESHOLD, *before[1:])
        assert before[0] < server.YOUNG_THRESHOLD
    finally:
        gc.unfreeze()
        gc.set_threshold(*before)


def test_trim_malloc_is_harmless_without_glibc(monkeypatch: pytest.MonkeyPatch) -> None:
    server.trim_malloc()  # glibc here: returns free heap pages

    def no_libc(name: str) -> None:
        raise OSError(f"{name}: cannot open shared object file")

    monkeypatch.setattr(server.ctypes, "CDLL", no_libc)
    server.trim_malloc()  # musl, macOS: nothing to do, no error
