"""Audit every pin of constraints.txt with pip-audit; never pass without having looked.

    python3 scripts/audit_deps.py            # pip-audit into a venv of its own, then audit

pip-audit asks a vulnerability service (PyPI's JSON API by default) about each pinned
release. Where the service cannot be reached, or does not know a release, pip-audit
skips the package and, unless told ``--strict``, still reports "no known
vulnerabilities". This script reads pip-audit's JSON instead and says which case it is:

    exit 0  every package was checked and none has a known vulnerability
    exit 1  known vulnerabilities (listed)
    exit 3  some packages could not be checked (the service was unreachable or did not
            answer for them): the audit did NOT run for them, and it says so

Standard library only (pip-audit is installed into ``--venv`` from PyPI, pinned).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import venv
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PIP_AUDIT = "pip-audit==2.10.1"
TIMEOUT_S = 900


def ensure_pip_audit(where: Path) -> Path:
    """The pip-audit command in venv ``where``, installing it there if missing."""
    command = where / "bin" / "pip-audit"
    if not command.exists():
        venv.create(where, with_pip=True)
        # pip-audit's own dependencies are not the service's: the service's pins
        # (PIP_CONSTRAINT, set by CI) must not hold them back
        env = {k: v for k, v in os.environ.items() if k != "PIP_CONSTRAINT"}
        # S603: a fixed argv: this venv's pip and a pinned name
        subprocess.run([str(where / "bin" / "pip"), "install", "-q", PIP_AUDIT], check=True,  # noqa: S603
                       timeout=TIMEOUT_S, env=env)
    return command


def audit(command: Path, constraints: Path) -> dict[str, object]:
    """pip-audit's JSON report of ``constraints`` (every line pinned, so --no-deps)."""
    with tempfile.TemporaryDirectory() as tmp:
        report = Path(tmp) / "report.json"
        done = subprocess.run(  # noqa: S603 - a fixed argv: this venv's pip-audit and our file
            [str(command), "--no-deps", "--disable-pip", "--progress-spinner", "off",
             "--requirement", str(constraints), "--format", "json", "--output", str(report)],
            capture_output=True, text=True, timeout=TIMEOUT_S, check=False)
        if not report.exists():  # pip-audit itself failed before it reported
            sys.stderr.write(done.stdout + done.stderr)
            raise SystemExit(f"audit: pip-audit failed (exit status {done.returncode}) and "
                             "wrote no report: the audit did NOT run")
        loaded: dict[str, object] = json.loads(report.read_text())
        return loaded


def verdict(report: dict[str, object]) -> tuple[int, list[str]]:
    """The exit status and the lines to print for a pip-audit JSON report."""
    deps = report.get("dependencies")
    if not isinstance(deps, list):
        return 3, ["audit: pip-audit's report lists no dependencies: the audit did NOT run"]
    skipped = [d for d in deps if d.get("skip_reason")]
    vulnerable = [d for d in deps if d.get("vulns")]
    lines = [f"audit: {d['name']} {d['version']}: {v['id']} (fixed in "
             f"{', '.join(v.get('fix_versions') or ['no release'])})"
             for d in vulnerable for v in d["vulns"]]
    if skipped:
        reasons = sorted({str(d["skip_reason"]) for d in skipped})
        lines.append(f"audit: {len(skipped)} of {len(deps)} packages could NOT be checked, "
                     f"e.g. {skipped[0]['name']}: {'; '.join(reasons[:3])}. The vulnerability "
                     "service was unreachable or did not answer: this is not a pass.")
    if vulnerable:
        return 1, lines
    if skipped:
        return 3, lines
    return 0, [f"audit: {len(deps)} packages checked, no known vulnerabilities"]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--constraints", type=Path, default=ROOT / "constraints.txt")
    parser.add_argument("--venv", type=Path, default=Path(tempfile.gettempdir()) /
                        "chat-storage-audit", help="where pip-audit is installed")
    args = parser.parse_args()
    status, lines = verdict(audit(ensure_pip_audit(args.venv), args.constraints))
    print("\n".join(lines))
    return status


if __name__ == "__main__":
    sys.exit(main())
