"""Which servers this client can talk to: the contract's major version and its routes.

Checked once per client, before its first call, from the server's ``/openapi.json``
(which needs no credential): ``info.version`` must be of a major version this client
supports, and every route this client calls must be in the document. Either failing is
:class:`VersionMismatch`, naming what is missing, instead of a confusing 404 later.
"""

from __future__ import annotations

from typing import Any

from chat_storage_client.errors import ChatStorageError, VersionMismatch

SUPPORTED_MAJOR = "1"
# (method, path) of every REST route this client calls
REQUIRED: tuple[tuple[str, str], ...] = (
    ("post", "/api/v1/sessions"),
    ("get", "/api/v1/sessions"),
    ("get", "/api/v1/sessions/{session_id}"),
    ("patch", "/api/v1/sessions/{session_id}"),
    ("delete", "/api/v1/sessions/{session_id}"),
    ("get", "/api/v1/sessions/{session_id}/export"),
    ("post", "/api/v1/sessions/{session_id}/messages"),
    ("post", "/api/v1/sessions/{session_id}/messages/batch"),
    ("get", "/api/v1/sessions/{session_id}/messages"),
    ("get", "/api/v1/sessions/{session_id}/messages/{message_id}"),
    ("patch", "/api/v1/sessions/{session_id}/messages/{message_id}"),
    ("delete", "/api/v1/sessions/{session_id}/messages/{message_id}"),
    ("get", "/api/v1/search"),
    ("get", "/api/v1/sessions/{session_id}/ws"),
)


def check(document: Any) -> str:
    """The server's contract version, if this client supports it; else VersionMismatch."""
    if not isinstance(document, dict):
        raise VersionMismatch("the server's /openapi.json is not an OpenAPI document")
    version = str((document.get("info") or {}).get("version", ""))
    if version.split(".")[0] != SUPPORTED_MAJOR:
        raise VersionMismatch(
            f"the server speaks API version {version or '(none)'}; this client "
            f"(chat-storage-client) supports version {SUPPORTED_MAJOR}.x: upgrade the client "
            "or use a server of that version")
    paths = document.get("paths") or {}
    missing = [f"{m.upper()} {p}" for m, p in REQUIRED if m not in (paths.get(p) or {})]
    if missing:
        raise VersionMismatch(
            f"the server (API version {version}) lacks operations this client needs: "
            f"{', '.join(missing)}; upgrade the server")
    return version


def message_fields(document: dict[str, Any]) -> frozenset[str]:
    """The fields of the server's Message object (to see which additions it serves)."""
    schema = ((document.get("components") or {}).get("schemas") or {}).get("Message") or {}
    return frozenset(schema.get("properties") or {})


def not_a_server(status: int) -> ChatStorageError:
    """The error for an ``/openapi.json`` that did not answer as a chat-storage server."""
    return VersionMismatch(f"GET /openapi.json answered {status}: is this a chat-storage "
                           "server (version 1)?", status=status)
