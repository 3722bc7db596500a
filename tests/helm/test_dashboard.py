"""The Grafana dashboard (helm/chat-storage/dashboards/chat-storage.json): shipped by the
chart as a sidecar ConfigMap only when asked, and querying only metrics that a real
running server exposes on /metrics."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import aiohttp

from tests.conftest import REDIS_URL
from tests.helm.test_chart import (
    CHART,
    PROMETHEUS_SERIES,
    metric_names,
    render,
    render_error,
    served_series,
)
from tests.support.procs import Server

DASHBOARD = CHART / "dashboards" / "chat-storage.json"


def dashboard() -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads(DASHBOARD.read_text())
    return loaded


def queries(board: dict[str, Any]) -> list[tuple[str, str]]:
    """(panel title, PromQL) of every panel target, rows' nested panels included."""
    found = []
    for panel in board["panels"]:
        for inner in [panel, *panel.get("panels", [])]:
            for target in inner.get("targets", []):
                found.append((inner["title"], target["expr"]))
    return found


def unknown_metrics(board: dict[str, Any], served: set[str]) -> dict[str, set[str]]:
    """Panel title -> the metrics its queries name that ``served`` lacks."""
    unknown: dict[str, set[str]] = {}
    for title, expr in queries(board):
        missing = metric_names(expr) - served - PROMETHEUS_SERIES
        if missing:
            unknown.setdefault(title, set()).update(missing)
    return unknown


def test_dashboard_is_off_by_default_and_a_sidecar_configmap_when_on() -> None:
    assert not [d for d in render() if d["metadata"]["name"].endswith("-dashboard")]
    docs = render("grafanaDashboard.enabled=true",
                  "grafanaDashboard.annotations.grafana_folder=chat")
    maps = [d for d in docs
            if d["kind"] == "ConfigMap" and d["metadata"]["name"].endswith("-dashboard")]
    assert len(maps) == 1
    cm = maps[0]
    assert cm["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert cm["metadata"]["annotations"] == {"grafana_folder": "chat"}
    assert json.loads(cm["data"]["chat-storage.json"]) == dashboard()


def test_values_schema_rejects_unknown_dashboard_values() -> None:
    assert "grafanaDashboard" in render_error("grafanaDashboard.enabeld=true")


def test_dashboard_covers_what_an_operator_watches() -> None:
    board = dashboard()
    rows = {p["title"] for p in board["panels"] if p["type"] == "row"}
    assert {"Traffic and errors", "Write path", "Streaming", "Replicas and Redis", "Database",
            "Async ingestion"} <= rows
    assert len(queries(board)) >= 20
    ids = [p["id"] for p in board["panels"]]
    assert len(ids) == len(set(ids))


def test_the_check_finds_a_metric_that_is_not_served() -> None:
    board = dashboard()
    board["panels"].append({"title": "bogus", "targets": [{"expr": "rate(chat_nope_total[5m])"}]})
    assert unknown_metrics(board, {"chat_http_requests_total"})["bogus"] == {"chat_nope_total"}


async def test_every_panel_queries_metrics_a_running_server_exposes(
        database_url: str, prefix: str, tmp_path: Path) -> None:
    # async ingestion, Redis and query timing on: every optional part of the service
    # registers its metrics
    server = Server(database_url, tmp_path / "server.log", redis_url=REDIS_URL,
                    env={"CHAT_INGEST_MODE": "async", "CHAT_REDIS_PREFIX": prefix,
                         "CHAT_DB_QUERY_METRICS": "1"})
    await server.start()
    try:
        async with aiohttp.ClientSession() as http, http.get(f"{server.base}/metrics") as r:
            assert r.status == 200
            served = served_series(await r.text())
    finally:
        await server.stop()
    assert "chat_db_query_duration_seconds_bucket" in served
    assert unknown_metrics(dashboard(), served) == {}
