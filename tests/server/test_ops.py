"""Health, readiness and metrics endpoints (no API key), and the separate metrics port."""

from __future__ import annotations

import dataclasses
import re
import shutil
import socket
from pathlib import Path
from typing import Any

import aiohttp
from prometheus_client.parser import text_string_to_metric_families

from chat_storage.runtime.settings import DEFAULT_MIGRATIONS_DIR, Settings
from chat_storage.server.app import create_app
from chat_storage.server.state import POOL_KEY
from tests.conftest import Tenant


def samples(text: str) -> dict[str, list[tuple[dict[str, str], float]]]:
    """Prometheus text format parsed into ``{sample name: [(labels, value)]}``."""
    out: dict[str, list[tuple[dict[str, str], float]]] = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out.setdefault(s.name, []).append((s.labels, s.value))
    return out


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
    return port


async def test_healthz_and_readyz(client: Any) -> None:
    r = await client.get("/healthz")
    assert r.status == 200
    assert await r.json() == {"status": "ok"}
    r = await client.get("/readyz")
    assert r.status == 200, await r.text()
    assert (await r.json())["status"] == "ready"
    assert r.headers["X-Request-ID"]


async def test_readyz_is_503_while_a_migration_is_pending(
    aiohttp_client: Any, settings: Settings, tmp_path: Path
) -> None:
    # The server applies every migration it knows at start, so the new file is added
    # after start: this is a replica whose code expects a migration nobody applied yet.
    sql_dir = tmp_path / "sql"
    shutil.copytree(DEFAULT_MIGRATIONS_DIR, sql_dir)
    client = await aiohttp_client(
        create_app(dataclasses.replace(settings, migrations_dir=sql_dir)))
    r = await client.get("/readyz")
    assert r.status == 200, await r.text()

    (sql_dir / "9999_x.sql").write_text("SELECT 1;\n")
    r = await client.get("/readyz")
    assert r.status == 503
    body = await r.json()
    assert body["status"] == "not ready"
    assert "9999" in body["checks"]["database"]

    (sql_dir / "9999_x.sql").unlink()
    r = await client.get("/readyz")
    assert r.status == 200


async def test_metrics_count_requests_by_route_and_report_the_pool(
    client: Any, tenant: Tenant, settings: Settings
) -> None:
    for _ in range(3):
        r = await client.post("/api/v1/sessions", json={"user_id": "m"}, headers=tenant.headers)
        assert r.status == 201
    r = await client.get("/api/v1/sessions/not-a-uuid", headers=tenant.headers)
    assert r.status == 404

    r = await client.get("/metrics")  # no API key
    assert r.status == 200
    assert r.content_type == "text/plain"
    found = samples(await r.text())
    requests = {
        (labels["method"], labels["route"], labels["status"]): value
        for labels, value in found["chat_http_requests_total"]
    }
    assert requests[("POST", "/api/v1/sessions", "201")] >= 3
    assert requests[("GET", "/api/v1/sessions/{session_id}", "404")] >= 1
    assert any(labels["route"] == "/api/v1/sessions"
               for labels, _ in found["chat_http_request_duration_seconds_count"])
    # the pool is read at scrape time: this test's server holds at least one connection
    (_, size), = found["chat_db_pool_connections"]
    (_, in_use), = found["chat_db_pool_connections_in_use"]
    (_, maximum), = found["chat_db_pool_max_connections"]
    assert size >= 1
    assert 0 <= in_use <= size <= maximum
    assert maximum >= settings.db_pool_max


async def test_pool_gauge_counts_a_connection_in_use(client: Any) -> None:
    pool = client.app[POOL_KEY]
    async with pool.acquire():  # held by "someone" while Prometheus scrapes
        during = samples(await (await client.get("/metrics")).text())
    (_, in_use), = during["chat_db_pool_connections_in_use"]
    (_, size), = during["chat_db_pool_connections"]
    assert 1 <= in_use <= size


async def test_metrics_port_serves_metrics_apart(
    aiohttp_client: Any, settings: Settings
) -> None:
    port = free_port()
    client = await aiohttp_client(
        create_app(dataclasses.replace(settings, host="127.0.0.1", metrics_port=port)))
    r = await client.get("/healthz")
    assert r.status == 200
    r = await client.get("/metrics")
    assert r.status == 404  # not on the main port
    async with (aiohttp.ClientSession() as session,
                session.get(f"http://127.0.0.1:{port}/metrics") as r):
        assert r.status == 200
        text = await r.text()
    assert re.search(r'^chat_http_requests_total\{.*route="/healthz".*\} ', text, re.M)
    assert "chat_db_pool_connections_in_use" in text
