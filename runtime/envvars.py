"""Environment variables: the name each setting is read from, and the parsers of raw values.

:mod:`chat_storage.runtime.settings` reads the environment once and hands every raw
string here; this module knows the spelling (``CHAT_`` + the field, the few standard
names, deprecated names) and turns text into typed values. It never reads ``os.environ``.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

log = logging.getLogger(__name__)


class SettingsError(ValueError):
    """A setting has a bad value; the message is one line naming the variable."""


# Deprecated variable -> the variable it now spells. Setting both is an error: which
# one wins would be a guess.
_DEPRECATED = {"CHAT_CORS_ORIGINS": "CHAT_ALLOWED_ORIGINS"}


def lookup(env: Mapping[str, str], var: str) -> tuple[str, str | None]:
    """The variable that sets ``var`` (itself or its deprecated name) and its value."""
    raw = env.get(var) or None
    old = _DEPRECATED.get(var)
    old_raw = (env.get(old) or None) if old is not None else None
    if old is None or old_raw is None:
        return var, raw
    if raw is not None:
        raise SettingsError(f"{old} is the deprecated name of {var}: set {var} only")
    log.warning("%s is deprecated, use %s", old, var, extra={"variable": old, "use": var})
    return old, old_raw


def env_name(field: str) -> str:
    return _ENV_NAMES.get(field, "CHAT_" + field.upper())


def _parse_bool(raw: str) -> bool:
    low = raw.strip().lower()
    if low in {"1", "true", "yes", "on"}:
        return True
    if low in {"0", "false", "no", "off"}:
        return False
    raise ValueError("expected a boolean (1/0, true/false, yes/no, on/off)")


def _parse_api_keys(raw: str) -> tuple[tuple[str, str], ...]:
    pairs = []
    for item in raw.split(","):
        item = item.strip()
        if not item:
            continue
        tenant, sep, key = item.partition(":")
        if not sep or not tenant or not key:
            raise ValueError("expected tenant:key[,tenant:key...]")
        pairs.append((tenant, key))
    return tuple(pairs)


def _parse_csv(raw: str) -> tuple[str, ...]:
    return tuple(part.strip() for part in raw.split(",") if part.strip())


def parse_origin(text: str) -> str:
    """``text`` as a browser sends it in ``Origin``: ``scheme://host[:port]``, in lower
    case, without a default port; a trailing ``/`` is dropped. ``ValueError`` for
    anything else (a path, a query, user info, another scheme)."""
    try:
        parts = urlsplit(text.strip())
        port = parts.port
    except ValueError:
        raise ValueError(f"{text!r} is not an origin") from None
    scheme, host = parts.scheme.lower(), (parts.hostname or "")
    if (scheme not in ("http", "https") or not host or parts.username is not None
            or parts.path not in ("", "/") or parts.query or parts.fragment
            or "@" in parts.netloc):
        raise ValueError(f"{text!r} is not an origin (http(s)://host[:port], no path)")
    if ":" in host:
        host = f"[{host}]"  # IPv6 literal
    if port is None or port == {"http": 80, "https": 443}[scheme]:
        return f"{scheme}://{host}"
    return f"{scheme}://{host}:{port}"


def check_origins(origins: tuple[str, ...]) -> None:
    if "*" in origins and len(origins) > 1:
        raise ValueError("'*' allows every origin: list it alone")
    for item in origins:
        if item != "*":
            parse_origin(item)


def _parse_origins(raw: str) -> tuple[str, ...]:
    items = _parse_csv(raw)
    check_origins(items)
    return tuple(item if item == "*" else parse_origin(item) for item in items)


def parser_for(annotation: object) -> Callable[[str], Any]:
    text = str(annotation)
    if "bool" in text:
        return _parse_bool
    if "Path" in text:
        return Path
    if "float" in text:
        return float
    if "int" in text:
        return int
    return str


_ENV_NAMES = {"database_url": "DATABASE_URL", "redis_url": "REDIS_URL",
              "s3_bucket": "S3_BUCKET", "s3_endpoint_url": "S3_ENDPOINT_URL",
              "s3_public_url": "S3_PUBLIC_URL",
              "s3_region": "S3_REGION", "s3_access_key_id": "S3_ACCESS_KEY_ID",
              "s3_secret_access_key": "S3_SECRET_ACCESS_KEY", "s3_sse": "S3_SSE",
              "s3_sse_kms_key_id": "S3_SSE_KMS_KEY_ID"}
PARSERS: dict[str, Callable[[str], Any]] = {
    "api_keys": _parse_api_keys,
    "cors_origins": _parse_origins,
    "ingest_mode": lambda raw: raw.strip().lower(),
}
