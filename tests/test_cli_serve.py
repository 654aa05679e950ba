"""``omniroute serve`` as users run it: a process with its own port, password and workers."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from test_cli import _ENV_VARS, OMNIROUTE_BIN, free_port


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in _ENV_VARS}
    env["PYTHONUNBUFFERED"] = "1"
    return env


def test_module_help_is_quick() -> None:
    started = time.monotonic()
    proc = subprocess.run([sys.executable, "-m", "omniroute.cli", "--help"], env=_env(),
                          capture_output=True, text=True, timeout=30)
    elapsed = time.monotonic() - started
    assert proc.returncode == 0, proc.stderr
    assert "Usage: omniroute" in proc.stdout
    for command in ("serve", "providers", "keys", "admin", "plugins"):
        assert f"  {command}" in proc.stdout
    assert proc.stderr == ""
    assert elapsed < 5, elapsed


def _get(url: str, headers: dict[str, str] | None = None) -> tuple[int, bytes]:
    request = urllib.request.Request(url, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=5) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def _wait_healthy(port: int, proc: subprocess.Popen[Any], stderr: Path) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"serve exited {proc.returncode}: {stderr.read_text()}")
        try:
            status, _ = _get(f"http://127.0.0.1:{port}/api/monitoring/health")
            if status == 200:
                return
        except OSError:
            pass
        time.sleep(0.1)
    raise AssertionError(f"no health answer: {stderr.read_text()}")


def _login(port: int, password: str) -> tuple[int, str]:
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}/api/auth/login", method="POST",
        data=json.dumps({"password": password}).encode(),
        headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=5) as resp:
            return resp.status, resp.headers.get("Set-Cookie", "")
    except urllib.error.HTTPError as exc:
        return exc.code, ""


def _listening_pids(port: int) -> set[int]:
    """PIDs holding a listening TCP socket on 127.0.0.1:``port`` (Linux /proc)."""
    inodes = set()
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        if fields[1] == f"0100007F:{port:04X}" and fields[3] == "0A":
            inodes.add(fields[9])
    pids = set()
    for fd_dir in Path("/proc").glob("[0-9]*/fd"):
        try:
            links = {os.readlink(fd) for fd in fd_dir.iterdir()}
        except OSError:
            continue
        if any(f"socket:[{inode}]" in links for inode in inodes):
            pids.add(int(fd_dir.parent.name))
    return pids


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


@pytest.fixture
def serve(tmp_path: Path) -> Iterator[Any]:
    procs: list[subprocess.Popen[Any]] = []

    def start(*extra: str) -> tuple[subprocess.Popen[Any], int, Path]:
        port = free_port()
        stderr = tmp_path / f"serve-{port}.log"
        proc = subprocess.Popen(
            [OMNIROUTE_BIN, "--data-dir", str(tmp_path / "data"), "serve", "--port", str(port),
             *extra],
            env=_env(), stdout=subprocess.DEVNULL, stderr=stderr.open("w"))
        procs.append(proc)
        _wait_healthy(port, proc, stderr)
        return proc, port, stderr

    yield start
    for proc in procs:  # only if a test failed half-way
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def _generated_password(stderr: Path) -> str:
    found = re.findall(r"admin password \(shown once\): (\S+)", stderr.read_text())
    assert len(found) == 1, stderr.read_text()
    return found[0]


def test_serve_prints_password_once_and_stops_cleanly(serve: Any) -> None:
    proc, port, stderr = serve()
    password = _generated_password(stderr)
    assert _login(port, "wrong-password")[0] == 401
    status, cookie = _login(port, password)
    assert status == 200 and cookie.startswith("omniroute_session=")
    status, _ = _get(f"http://127.0.0.1:{port}/api/settings",
                     headers={"Cookie": cookie.split(";")[0]})
    assert status == 200

    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=15) == 0
    log = stderr.read_text()
    assert "Traceback" not in log
    assert len(re.findall(r"shown once", log)) == 1
    assert log.count(f"omniroute serving on http://127.0.0.1:{port}") == 1


def test_serve_does_not_claim_to_serve_when_the_port_is_taken(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        done = subprocess.run(
            [OMNIROUTE_BIN, "--data-dir", str(tmp_path / "data"), "serve", "--port", str(port)],
            env=_env(), capture_output=True, text=True, timeout=30)
    assert done.returncode != 0
    assert "serving on" not in done.stderr
    assert "address already in use" in done.stderr and "Traceback" not in done.stderr


def test_serve_with_two_workers_shares_the_port(serve: Any) -> None:
    proc, port, stderr = serve("--workers", "2")
    statuses = [_get(f"http://127.0.0.1:{port}/api/monitoring/health")[0] for _ in range(20)]
    assert statuses == [200] * 20
    # two processes listen on the same port (SO_REUSEPORT), children of the serve process
    deadline = time.monotonic() + 10
    while len(pids := _listening_pids(port)) < 2 and time.monotonic() < deadline:
        time.sleep(0.1)
    assert len(pids) == 2, pids
    assert proc.pid not in pids
    for pid in pids:
        ppid = int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
        assert ppid == proc.pid
    password = _generated_password(stderr)  # once, although two workers started
    assert stderr.read_text().count("omniroute serving on") == 1
    assert all(_login(port, password)[0] == 200 for _ in range(6))

    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=20) == 0
    assert not any(_alive(pid) for pid in pids)
    assert "Traceback" not in stderr.read_text()
