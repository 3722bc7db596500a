"""A backup's manifest: what the backup holds, and the facts a restore must find again.

``manifest.json`` is written last: a backup without one is incomplete and is never
restored. Its ``format`` names this layout; a restore refuses a format it does not know.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import orjson

FORMAT = "chat-storage-backup/1"
MANIFEST = "manifest.json"
DATABASE_DUMP = "database.dump"
OBJECTS_DIR = "objects"


class ManifestError(ValueError):
    """The manifest is missing a field, has a wrong one, or names another format."""


@dataclasses.dataclass(frozen=True, slots=True)
class ObjectEntry:
    """One attachment file in the backup: under ``objects/<key>``."""

    key: str
    mime: str
    size: int
    sha256: str


@dataclasses.dataclass(frozen=True, slots=True)
class Manifest:
    """Everything a restore checks, in the order it checks it."""

    created_at: str
    service_version: str
    postgres_version: str
    schema_version: int
    dump_bytes: int
    dump_sha256: str
    tables: dict[str, int]
    tenants: dict[str, str]
    objects: list[ObjectEntry]
    # files of attachment rows that were gone from the store when the backup read it
    # (deleted after the snapshot, or a pending upload never made): not in the backup
    missing_objects: list[str]
    format: str = FORMAT

    def to_json(self) -> bytes:
        """The manifest file's bytes (sorted keys, indented: people read it)."""
        return orjson.dumps(dataclasses.asdict(self),
                            option=orjson.OPT_INDENT_2 | orjson.OPT_SORT_KEYS)

    @classmethod
    def from_json(cls, data: bytes) -> Manifest:
        """Parse and check a manifest file."""
        try:
            raw = orjson.loads(data)
        except orjson.JSONDecodeError as exc:
            raise ManifestError(f"the manifest is not JSON: {exc}") from None
        if not isinstance(raw, dict):
            raise ManifestError("the manifest is not a JSON object")
        if raw.get("format") != FORMAT:
            raise ManifestError(f"the manifest's format is {raw.get('format')!r}, "
                                f"this version reads {FORMAT!r}")
        try:
            objects = [ObjectEntry(key=_typed(o, "key", str), mime=_typed(o, "mime", str),
                                   size=_typed(o, "size", int), sha256=_typed(o, "sha256", str))
                       for o in _typed(raw, "objects", list)]
            return cls(
                created_at=_typed(raw, "created_at", str),
                service_version=_typed(raw, "service_version", str),
                postgres_version=_typed(raw, "postgres_version", str),
                schema_version=_typed(raw, "schema_version", int),
                dump_bytes=_typed(raw, "dump_bytes", int),
                dump_sha256=_typed(raw, "dump_sha256", str),
                tables={str(k): int(v) for k, v in _typed(raw, "tables", dict).items()},
                tenants={str(k): str(v) for k, v in _typed(raw, "tenants", dict).items()},
                objects=objects,
                missing_objects=[str(k) for k in _typed(raw, "missing_objects", list)],
            )
        except (TypeError, ValueError, AttributeError) as exc:
            raise ManifestError(f"the manifest is malformed: {exc}") from None


def _typed(raw: Any, field: str, kind: type[Any]) -> Any:
    if not isinstance(raw, dict) or field not in raw:
        raise ManifestError(f"the manifest has no {field!r}")
    value = raw[field]
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise ManifestError(f"the manifest's {field!r} is not a {kind.__name__}")
    return value
