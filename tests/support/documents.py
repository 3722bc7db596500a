"""Fetching the service's machine-readable documents in tests."""

from __future__ import annotations

from typing import Any


async def get_document(client: Any, path: str) -> dict[str, Any]:
    """The JSON document at ``path`` (``/openapi.json``, ``/asyncapi.json``), served
    without an API key."""
    r = await client.get(path)
    assert r.status == 200, await r.text()
    assert r.content_type == "application/json"
    doc: dict[str, Any] = await r.json()
    return doc
