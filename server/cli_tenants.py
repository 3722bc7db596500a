"""The data-protection flags of ``tenants update`` (PII redaction; retention is in
:mod:`server.cli`), and how ``tenants show`` and ``list`` print them. docs/privacy.md.

Each flag is a dest in ``DATA_UPDATES`` whose default is ``tenants.UNCHANGED``; a flag
added here (``--encryption on|off``) needs only its parser line, its dest and its row.
"""

from __future__ import annotations

import argparse
from typing import Any

from chat_storage.storage import tenants
from chat_storage.storage.redaction import BUILTIN, PatternError, check_patterns

# what `tenants update` may change here (with the retention, limit and access flags)
DATA_UPDATES = ("redact_pii", "pii_patterns")


def on_off(raw: str) -> bool:
    """``on`` or ``off``."""
    if raw not in ("on", "off"):
        raise argparse.ArgumentTypeError(f"{raw!r}: give on or off")
    return raw == "on"


def pattern(raw: str) -> tuple[str, str]:
    """``NAME=REGEX``: a match of REGEX is replaced by ``<NAME>``."""
    name, sep, source = raw.partition("=")
    if not sep:
        raise argparse.ArgumentTypeError(
            f"{raw!r}: give NAME=REGEX, e.g. EMPLOYEE_ID=EMP-[0-9]{{6}}")
    try:
        check_patterns({name: source})
    except PatternError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    return name, source


def add_update_flags(parser: argparse.ArgumentParser) -> None:
    """The data-protection flags of ``tenants update``."""
    parser.add_argument(
        "--redact-pii", type=on_off, metavar="on|off",
        help="on: before a message or a finished stream is stored, replace emails, phone "
             f"numbers, payment cards, IBANs, IP addresses and the tenant's patterns by "
             f"placeholders ({', '.join(f'<{n}>' for n in BUILTIN)}); off: store as given")
    patterns = parser.add_mutually_exclusive_group()
    patterns.add_argument(
        "--pii-pattern", type=pattern, action="append", metavar="NAME=REGEX",
        help="the tenant's own kind of personal data (a Python regular expression), "
             "redacted as <NAME>; repeat for more; replaces its list")
    patterns.add_argument("--no-pii-patterns", action="store_true",
                          help="the built-in kinds only again")


def resolve_update_flags(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """Turn the flags into ``DATA_UPDATES`` values (``tenants.UNCHANGED`` where not given)."""
    if args.redact_pii is None:
        args.redact_pii = tenants.UNCHANGED
    if args.no_pii_patterns:
        args.pii_patterns = {}
    elif args.pii_pattern:
        found = dict(args.pii_pattern)
        if len(found) != len(args.pii_pattern):
            parser.error("--pii-pattern: each NAME once")
        try:
            check_patterns(found)
        except PatternError as exc:
            parser.error(f"--pii-pattern: {exc}")
        args.pii_patterns = found
    else:
        args.pii_patterns = tenants.UNCHANGED


def updates(args: argparse.Namespace) -> dict[str, Any]:
    """The keyword arguments of ``tenants.update_tenant`` these flags give."""
    return {dest: getattr(args, dest) for dest in DATA_UPDATES}


def to_json(info: tenants.TenantInfo) -> dict[str, Any]:
    """The data-protection fields of ``tenants show --json`` and ``list --json``."""
    return {"redact_pii": info.redact_pii, "pii_patterns": dict(info.pii_patterns),
            "encryption": info.encrypted}


def rows(info: tenants.TenantInfo) -> list[tuple[str, str]]:
    """The data-protection rows of ``tenants show``."""
    patterns = ", ".join(f"<{n}>={s}" for n, s in sorted(info.pii_patterns.items()))
    return [("PII redaction", "on" if info.redact_pii else "off"),
            ("PII patterns", patterns or "-"),
            ("encryption at rest", "on" if info.encrypted else "off")]


def summary(info: tenants.TenantInfo) -> str:
    """What ``tenants update`` says about these settings."""
    return f"PII redaction {'on' if info.redact_pii else 'off'}"
