"""``omniroute doctor`` with ``database_url``: the server's database is what it checks."""

from __future__ import annotations

from pathlib import Path

from omniroute.doctor import diagnose
from omniroute.storage.migrations import LATEST
from omniroute.testing import make_test_config
from pg_testkit import plugins_with_postgres


async def test_the_doctor_checks_the_database_of_database_url(tmp_path: Path,
                                                              pg_url: str) -> None:
    plugins = plugins_with_postgres()
    config = make_test_config(tmp_path / "data").replace(database_url=pg_url)
    found = {f.check: f for f in await diagnose(config, plugins, repair=True)}
    assert found["database"].status == "ok", found["database"]
    assert f"schema version {LATEST}" in found["database"].detail
    assert found["credentials"].status == "ok"
    assert not (tmp_path / "data" / "omniroute.sqlite3").exists()  # no file database made

    away = config.replace(database_url="postgresql://postgres@127.0.0.1:1/x?connect_timeout=2")
    found = {f.check: f for f in await diagnose(away, plugins, repair=False)}
    assert found["database"].status == "fail"
    assert "cannot use the database postgresql://postgres@127.0.0.1:1/x" in (
        found["database"].detail)
    assert "credentials" not in found  # nothing more is read without it


async def test_a_password_in_the_query_is_never_shown(tmp_path: Path, pg_url: str) -> None:
    """asyncpg takes ``?password=`` and ``?sslpassword=``: the doctor's lines (and every
    message naming the database) hide them as they hide ``user:password@``."""
    plugins = plugins_with_postgres()
    config = make_test_config(tmp_path / "data").replace(
        database_url=f"{pg_url}&password=s3cret-pw")  # trust auth: accepted, unused
    found = {f.check: f for f in await diagnose(config, plugins, repair=True)}
    assert found["database"].status == "ok", found["database"]
    assert "password=***" in found["database"].detail
    assert "s3cret" not in found["database"].detail

    away = config.replace(database_url="postgresql://postgres@127.0.0.1:1/x"
                                       "?sslpassword=s3cret-key&connect_timeout=2")
    found = {f.check: f for f in await diagnose(away, plugins, repair=False)}
    assert found["database"].status == "fail"
    assert "sslpassword=***" in found["database"].detail
    assert "s3cret" not in found["database"].detail
