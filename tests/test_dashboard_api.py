"""The dashboard's serving and the management routes added for it: the page and its
assets (in the package, CSP, ETags, nothing from another host), ``/`` for browsers,
``/api/dashboard/overview``, ``/api/settings/schema``, ``/api/usage/series`` and
``/api/usage/logs/{id}``."""

from __future__ import annotations

import configparser
import dataclasses
import fnmatch
import re
import time
from pathlib import Path
from typing import Any

import pytest

from omniroute.config import Settings
from omniroute.settings_doc import DESCRIPTIONS
from omniroute.web.dashboard import ASSETS, ROOT

REPO = Path(__file__).resolve().parent.parent
HTML = {"Accept": "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8"}


async def chat(gw: Any, model: str = "up/gpt-4o-mini") -> int:
    resp = await gw.client.post("/v1/chat/completions", json={
        "model": model, "messages": [{"role": "user", "content": "hi"}]})
    await resp.read()
    return resp.status


# ----------------------------------------------------------------------------- serving

async def test_a_browser_asking_for_the_root_is_sent_to_the_dashboard(gw: Any) -> None:
    resp = await gw.client.get("/", headers=HTML, allow_redirects=False)
    assert resp.status == 302 and resp.headers["Location"] == "/dashboard"
    resp = await gw.client.get("/")  # an API client still gets the JSON
    assert resp.status == 200 and (await resp.json())["name"] == "omniroute"


@pytest.mark.parametrize("path", ["/dashboard", "/dashboard/", "/dashboard/usage",
                                  "/dashboard/cli-tools", "/dashboard/no-such-page"])
async def test_every_view_answers_the_page_with_its_security_headers(gw: Any,
                                                                     path: str) -> None:
    resp = await gw.client.get(path)  # public: the page holds no data
    assert resp.status == 200
    assert resp.content_type == "text/html"
    csp = resp.headers["Content-Security-Policy"]
    assert "default-src 'self'" in csp and "script-src 'self'" in csp
    assert "frame-ancestors 'none'" in csp and "connect-src 'self'" in csp
    assert resp.headers["X-Frame-Options"] == "DENY"
    assert resp.headers["X-Content-Type-Options"] == "nosniff"
    assert '<script type="module" src="/dashboard/assets/js/app.js">' in await resp.text()


async def test_assets_are_served_with_their_type_and_revalidated_by_etag(gw: Any) -> None:
    resp = await gw.client.get("/dashboard/assets/js/app.js")
    assert resp.status == 200 and resp.content_type == "text/javascript"
    etag = resp.headers["ETag"]
    assert resp.headers["Cache-Control"] == "no-cache"
    again = await gw.client.get("/dashboard/assets/js/app.js", headers={"If-None-Match": etag})
    assert again.status == 304 and await again.read() == b""
    css = await gw.client.get("/dashboard/assets/css/dashboard.css")
    assert css.content_type == "text/css"
    for bad in ("/dashboard/assets/js/nope.js", "/dashboard/assets/../web/dashboard.py",
                "/dashboard/assets/%2e%2e/%2e%2e/app.py", "/dashboard/assets/js/app.py"):
        resp = await gw.client.get(bad)
        assert resp.status == 404, bad


async def test_the_page_obeys_the_host_check_like_every_route(gw: Any) -> None:
    resp = await gw.client.get("/dashboard", headers={"Host": "evil.example"})
    assert resp.status == 403


def _assets() -> list[Path]:
    return [p for p in ROOT.rglob("*") if p.is_file()]


def test_every_asset_ships_in_the_package() -> None:
    """setup.cfg's package data names every file of omniroute/dashboard/."""
    config = configparser.ConfigParser()
    config.read(REPO / "setup.cfg")
    patterns = [p for p in re.split(r"[,\s]+", config["options.package_data"]["omniroute"]) if p]
    package = REPO / "omniroute"
    for path in _assets():
        name = path.relative_to(package).as_posix()
        assert any(fnmatch.fnmatch(name, p) and name.count("/") == p.count("/")
                   for p in patterns), f"{name} is not in setup.cfg's package data"


def test_the_page_loads_only_files_that_exist_and_nothing_from_another_host() -> None:
    """Every import and every URL in the HTML, CSS and JS is a file of the package; no
    asset names another host (the dashboard never phones home)."""
    names = {p.relative_to(ROOT).as_posix() for p in _assets()}
    for path in _assets():
        text = path.read_text(encoding="utf-8")
        assert not re.search(r"https?://(?!www\.w3\.org/2000/svg)", text), path
        assert "//cdn" not in text and "@import url" not in text, path
        for ref in re.findall(r'(?:src|href)="/dashboard/(assets/[^"]+)"', text):
            assert ref in names, (path, ref)
        for ref in re.findall(r'from "(\.{1,2}/[^"]+)"', text):
            target = (path.parent / ref).resolve().relative_to(ROOT).as_posix()
            assert target in names, (path, ref)
    app_js = (ROOT / "assets/js/app.js").read_text(encoding="utf-8")
    views = re.findall(r'\{ view: "([a-z-]+)"', app_js)
    assert len(views) == 10
    for view in views:  # app.js imports ./pages/<view>.js
        assert f"assets/js/pages/{view}.js" in names


async def test_the_asset_list_is_read_once_and_kept(gw: Any) -> None:
    assets = gw.client.app[ASSETS]
    assert "index.html" in assets.names() and "assets/js/chart.js" in assets.names()
    assert assets.get("assets/js/app.js") is assets.get("assets/js/app.js")


# ----------------------------------------------------------------------------- the data

async def test_the_overview_in_one_call(gw: Any) -> None:
    assert await chat(gw) == 200
    assert await chat(gw, "up/no-such-model") >= 400
    now = time.time()
    resp = await gw.client.get(f"/api/dashboard/overview?today={int(now - 3600)}",
                               headers=gw.admin_headers)
    body = await resp.json()
    assert resp.status == 200, body
    assert body["health"]["status"] in ("ok", "degraded")
    assert body["health"]["providers"]["configured"] == 1
    assert body["last_hour"]["requests"] == 2 and body["last_hour"]["errors"] == 1
    assert sum(m["requests"] for m in body["minutes"]) == 2
    assert body["today"]["requests"] == 2 and body["today"]["since"] == int(now - 3600)
    assert "gpt-4o-mini" in {m["model"] for m in body["top_models"]}
    assert body["recent_errors"][0]["model_requested"] == "up/no-such-model"
    assert body["streams_in_flight"] == 0 and body["requests_in_flight"] == 0
    # a day that is not today falls back to midnight UTC
    resp = await gw.client.get("/api/dashboard/overview?today=86400", headers=gw.admin_headers)
    assert (await resp.json())["today"]["since"] % 86400 == 0


async def test_the_dashboard_routes_need_an_admin(gw: Any) -> None:
    for path in ("/api/dashboard/overview", "/api/settings/schema", "/api/usage/series",
                 "/api/usage/logs/1"):
        resp = await gw.client.get(path)
        assert resp.status == 401, path


def test_every_setting_has_a_description() -> None:
    """A setting added to config.Settings must be described in settings_doc.SECTIONS."""
    fields = {f.name for f in dataclasses.fields(Settings)}
    assert fields - set(DESCRIPTIONS) == set(), "describe these in omniroute/settings_doc.py"
    assert set(DESCRIPTIONS) - fields == set(), "these described settings no longer exist"
    assert all(text.strip() for text in DESCRIPTIONS.values())


async def test_the_settings_schema(gw: Any) -> None:
    await gw.set_settings(max_attempts=3)
    resp = await gw.client.get("/api/settings/schema", headers=gw.admin_headers)
    rows = {row["name"]: row for row in (await resp.json())["settings"]}
    assert set(rows) == {f.name for f in dataclasses.fields(Settings)}
    attempts = rows["max_attempts"]
    assert attempts["default"] == 10 and attempts["value"] == 3 and attempts["type"] == "int"
    assert attempts["source"] == "stored" and attempts["section"] == "Routing and resilience"
    assert rows["account_strategy"]["choices"][0] == "priority"
    assert rows["semantic_cache_threshold"]["maximum"] == 1.0
    assert rows["queue_size"]["minimum"] == 0
    assert rows["require_login"]["source"] == "default"


async def test_the_usage_series_route(gw: Any) -> None:
    for model in ("up/gpt-4o-mini", "up/gpt-4o-mini", "up/gpt-4o"):
        assert await chat(gw, model) == 200
    resp = await gw.client.get("/api/usage/series?from=2h&by=model&metric=requests&bucket=hour",
                               headers=gw.admin_headers)
    body = await resp.json()
    assert resp.status == 200, body
    assert [(s["key"], s["total"]) for s in body["series"]] == [("gpt-4o-mini", 2),
                                                                 ("gpt-4o", 1)]
    assert len(body["buckets"]) == 3 and body["bucket"] == "hour"
    for params, param in (({"by": "time"}, "by"), ({"by": "model,key"}, "by"),
                          ({"metric": "colour"}, "metric"), ({"top": "0"}, "top"),
                          ({"from": "400d", "bucket": "hour"}, "bucket")):
        resp = await gw.client.get("/api/usage/series", params={"by": "model", **params},
                                   headers=gw.admin_headers)
        assert resp.status == 400, params
        assert (await resp.json())["error"]["param"] == param


async def test_one_record_with_its_bodies(gw: Any) -> None:
    await gw.set_settings(log_bodies=True)
    assert await chat(gw) == 200
    logs = await (await gw.client.get("/api/usage/logs", headers=gw.admin_headers)).json()
    record_id = logs["logs"][0]["id"]
    assert "request_body" not in logs["logs"][0]
    resp = await gw.client.get(f"/api/usage/logs/{record_id}", headers=gw.admin_headers)
    record = await resp.json()
    assert record["id"] == record_id and '"hi"' in record["request_body"]
    assert record["attempt_log"][0]["status"] == 200
    for missing in ("999999", "abc"):
        resp = await gw.client.get(f"/api/usage/logs/{missing}", headers=gw.admin_headers)
        assert resp.status == 404
