"""The benchmark's native mock upstream: nginx answering with fixed bodies.

``bench.py --upstream nginx`` serves the JSON and instant-stream lanes (and embeddings)
from nginx instead of the Python fake of ``bench_fakes.py``, so the upstream costs a
few microseconds of CPU per request instead of a Python event loop's share of a
core. The bodies are the fake's own (``COMPLETION``, ``EMBEDDING`` and an instant
stream made by its ``chunk_frame``/``usage_frame``, stamped once when the config is
written), each sent with a stock ``return 200 '...'`` (nginx reads no config token
longer than 4 KiB, so a longer body is cut into ``map`` variables that ``return`` joins).

One path serves both chat answers, and nginx cannot read a body in ``return``'s
phase, so it tells them apart by ``Accept``: ``text/event-stream`` (what the gateway's
OpenAI provider sends for a stream, what the wrk script of the instant lane sends,
what the forwarder passes on) gets the stream, anything else the JSON answer. A
*paced* stream needs a timer between writes, which stock nginx has not: the paced lane
stays on the Python fake.

nginx runs in the foreground (``daemon off``), one worker, as the current user, from
a config, pid file and logs in a scratch directory (``nginx -p DIR -c nginx.conf``).
"""

from __future__ import annotations

import getpass
import os
import shutil
import subprocess
import time
import urllib.request
from pathlib import Path

from bench_fakes import (
    CHAT,
    COMPLETION,
    DONE,
    EMBEDDING,
    HOST,
    STREAM_CHUNKS,
    chunk_frame,
    usage_frame,
)

EMBEDDINGS = "/v1/embeddings"
SSE_ACCEPT = "text/event-stream"


def instant_stream() -> bytes:
    """The stream the fake writes at once for an ``-instant`` model asking for usage."""
    return b"".join([*(chunk_frame(i, True) for i in range(STREAM_CHUNKS)), usage_frame(),
                     DONE])


def quoted(body: bytes) -> str:
    """``body`` as an nginx quoted string: nginx unescapes ``\\\\``, ``\\'`` and ``\\n``.

    :raises ValueError: the body holds a ``$``, which nginx would read as a variable.
    """
    text = body.decode()
    if "$" in text:
        raise ValueError("nginx cannot return a literal '$' from a quoted string")
    return "'" + text.replace("\\", "\\\\").replace("'", "\\'").replace("\n", "\\n") + "'"


#: well under nginx's 4 KiB config buffer, escapes included
PART = 2000


def answer(name: str, body: bytes) -> tuple[str, str]:
    """What ``return 200`` sends for ``body``, and the ``map`` blocks that it joins (for
    a body longer than :data:`PART`: variables ``$mock_<name>_<i>``, set once)."""
    text = body.decode()
    if len(text) <= PART:
        return quoted(body), ""
    parts = [text[i:i + PART] for i in range(0, len(text), PART)]
    maps = "".join(f"    map $server_port $mock_{name}_{i} {{ default {quoted(p.encode())}; }}\n"
                   for i, p in enumerate(parts))
    return '"' + "".join(f"$mock_{name}_{i}" for i in range(len(parts))) + '"', maps


def config(tmp: Path, port: int) -> str:
    """The whole nginx.conf: fixed answers on 127.0.0.1:``port``, state in ``tmp``."""
    (json_answer, json_maps), (stream_answer, stream_maps), (embed_answer, embed_maps) = (
        answer(name, body) for name, body in (
            ("json", COMPLETION), ("stream", instant_stream()), ("embed", EMBEDDING)))
    temps = "\n".join(f"    {kind}_temp_path {tmp / kind};"
                      for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi"))
    # as root, nginx would hand its worker to `nobody`, who cannot read the scratch dir
    user = f"user {getpass.getuser()};\n" if os.geteuid() == 0 else ""
    return f"""{user}daemon off;
worker_processes 1;
pid {tmp / 'nginx.pid'};
error_log {tmp / 'error.log'} warn;
events {{ worker_connections 4096; }}
http {{
    access_log off;
{temps}
{json_maps + stream_maps + embed_maps}    # pooled connections last the whole run, as on the fake
    keepalive_requests 10000000;
    keepalive_timeout 300s;
    server {{
        listen {HOST}:{port} backlog=1024;
        location = {CHAT} {{
            if ($http_accept ~ "{SSE_ACCEPT}") {{ rewrite ^ /instant last; }}
            default_type application/json;
            return 200 {json_answer};
        }}
        location = /instant {{
            internal;
            default_type {SSE_ACCEPT};
            add_header Cache-Control no-cache;
            return 200 {stream_answer};
        }}
        location = {EMBEDDINGS} {{
            default_type application/json;
            return 200 {embed_answer};
        }}
    }}
}}
"""


def nginx_binary() -> str:
    """nginx's path (Debian puts it in /usr/sbin, off a plain user's PATH).

    :raises RuntimeError: it is not installed (``scripts/bench-tools.sh`` installs it).
    """
    found = shutil.which("nginx") or shutil.which("nginx", path="/usr/sbin:/usr/local/sbin")
    if not found:
        raise RuntimeError("nginx is not installed: run scripts/bench-tools.sh")
    return found


def start_nginx(tmp: Path, port: int) -> subprocess.Popen:
    """nginx serving :func:`config` on ``port``, once it answers, in a process group of
    its own: SIGTERM to the group is a fast shutdown of the master and its worker."""
    tmp.mkdir()
    conf = tmp / "nginx.conf"
    conf.write_text(config(tmp, port))
    with open(tmp / "stderr.log", "wb") as log:
        proc = subprocess.Popen([nginx_binary(), "-p", str(tmp), "-c", str(conf)],
                                stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    deadline = time.monotonic() + 10
    while True:
        if proc.poll() is not None or time.monotonic() > deadline:
            errors = "".join(p.read_text() for p in (tmp / "stderr.log", tmp / "error.log")
                             if p.exists())
            proc.kill()
            raise RuntimeError(f"nginx did not start:\n{errors[-2000:]}")
        try:
            request = urllib.request.Request(f"http://{HOST}:{port}{CHAT}", data=b"{}")
            with urllib.request.urlopen(request, timeout=1) as resp:
                if resp.status == 200 and resp.read() == COMPLETION:
                    return proc
        except OSError:
            pass
        time.sleep(0.05)
