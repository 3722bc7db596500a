"""scripts/audit_deps.py: a skipped package is never a pass; constraints pin everything.

The verdict is checked on pip-audit reports of each kind (pip-audit's JSON shape); the
audit itself needs the vulnerability service and runs in CI (the workflow's audit job).
"""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path
from types import ModuleType

ROOT = Path(__file__).resolve().parents[2]


def audit_deps() -> ModuleType:
    spec = importlib.util.spec_from_file_location("audit_deps", ROOT / "scripts" / "audit_deps.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def dep(name: str, **extra: object) -> dict[str, object]:
    return {"name": name, "version": "1.0", "vulns": [], **extra}


def test_every_package_checked_and_clean_passes() -> None:
    status, lines = audit_deps().verdict({"dependencies": [dep("a"), dep("b")]})
    assert status == 0
    assert "2 packages checked" in lines[0]


def test_a_package_that_could_not_be_checked_is_not_a_pass() -> None:
    report = {"dependencies": [dep("a"), {"name": "b", "version": "1.0",
                                          "skip_reason": "Dependency not found on PyPI"}]}
    status, lines = audit_deps().verdict(report)
    assert status == 3
    assert "1 of 2 packages could NOT be checked" in lines[-1]


def test_a_known_vulnerability_fails_and_is_named() -> None:
    vuln = {"id": "PYSEC-0000-1", "fix_versions": ["1.1"]}
    status, lines = audit_deps().verdict({"dependencies": [dep("a", vulns=[vuln])]})
    assert status == 1
    assert lines == ["audit: a 1.0: PYSEC-0000-1 (fixed in 1.1)"]


def test_the_constraints_pin_every_dependency_exactly() -> None:
    lines = [line for line in (ROOT / "constraints.txt").read_text().splitlines()
             if line and not line.startswith("#")]
    assert lines
    assert all(re.fullmatch(r"[A-Za-z0-9_.\-\[\]]+==[^=\s]+", line) for line in lines), lines
    names = {line.split("==")[0].lower() for line in lines}
    assert {"aiohttp", "asyncpg", "pydantic", "pytest"} <= names
