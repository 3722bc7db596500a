"""deploy/prometheus/rules.yml: rendered from the chart, unit-tested by promtool, and
every alert with a runbook (docs/runbooks/<alert>.md) and every runbook with an alert.

Needs ``promtool`` (Debian's ``prometheus`` package; .ci/run installs it) and ``helm``.
Outside CI a missing one skips, with the reason; in CI (``CI`` set) it is a failure.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
RULES = ROOT / "deploy" / "prometheus" / "rules.yml"
UNIT_TESTS = Path(__file__).with_name("rules_test.yml")
RUNBOOKS = ROOT / "docs" / "runbooks"
SECTIONS = ("## What it means", "## Confirm", "## Mitigate", "## Verify recovery")
SEVERITIES = {"critical", "warning", "info"}
IN_CI = bool(os.environ.get("CI"))
PROMTOOL = shutil.which("promtool")
HELM = os.environ.get("HELM") or shutil.which("helm")


def need(tool: str | None, name: str) -> str:
    if tool is None:
        if IN_CI:
            pytest.fail(f"{name} is not installed (.ci/run installs it)")
        pytest.skip(f"no {name} binary")
    return tool


def alerts() -> list[dict[str, Any]]:
    doc = yaml.safe_load(RULES.read_text())
    return [r for group in doc["groups"] for r in group["rules"] if "alert" in r]


def promtool(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([need(PROMTOOL, "promtool"), *args], capture_output=True, text=True,
                          timeout=120, check=False)


def test_rules_file_is_what_the_chart_renders() -> None:
    need(HELM, "helm")
    done = subprocess.run([sys.executable, str(ROOT / "scripts" / "render_rules.py"), "--check"],
                          capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stderr


def test_promtool_accepts_the_rules() -> None:
    done = promtool("check", "rules", str(RULES))
    assert done.returncode == 0, done.stdout + done.stderr


def test_promtool_unit_tests_pass() -> None:
    done = promtool("test", "rules", str(UNIT_TESTS))
    assert done.returncode == 0, done.stdout + done.stderr


def test_promtool_unit_tests_fail_on_a_changed_rule(tmp_path: Path) -> None:
    """The unit tests can fail: the database alert waiting 10m instead of 2m breaks them."""
    rules = RULES.read_text()
    changed = re.sub(r"(alert: ChatStorageDatabaseUnavailable\n(?:.*\n)*?    for: )2m", r"\g<1>10m",
                     rules, count=1)
    assert changed != rules
    (tmp_path / "deploy" / "prometheus").mkdir(parents=True)
    (tmp_path / "deploy" / "prometheus" / "rules.yml").write_text(changed)
    (tmp_path / "tests" / "deploy").mkdir(parents=True)
    shutil.copy(UNIT_TESTS, tmp_path / "tests" / "deploy" / UNIT_TESTS.name)
    done = promtool("test", "rules", str(tmp_path / "tests" / "deploy" / UNIT_TESTS.name))
    assert done.returncode != 0
    assert "ChatStorageDatabaseUnavailable" in done.stdout + done.stderr


def test_every_alert_has_severity_summary_and_its_runbook() -> None:
    rules = alerts()
    assert len(rules) >= 15
    for rule in rules:
        name = rule["alert"]
        assert rule["labels"]["severity"] in SEVERITIES, name
        assert rule["annotations"]["summary"].strip(), name
        assert rule["annotations"]["runbook_url"] == f"docs/runbooks/{name}.md"
        assert (ROOT / rule["annotations"]["runbook_url"]).is_file(), f"{name}: no runbook"


def test_every_runbook_has_an_alert_and_the_four_sections() -> None:
    names = {r["alert"] for r in alerts()}
    runbooks = {p.stem: p.read_text() for p in RUNBOOKS.glob("*.md")}
    assert set(runbooks) == names
    for name, text in runbooks.items():
        assert text.startswith(f"# {name}\n"), name
        positions = [text.find(s) for s in SECTIONS]
        assert all(p >= 0 for p in positions) and positions == sorted(positions), name
        confirm = text[positions[1]:positions[2]]
        assert "```sh" in confirm, f"{name}: Confirm has no commands"
        # the verification step is the drills' check: the alert gone from the alerts API
        verify = text[positions[3]:]
        assert "/api/v1/alerts" in verify and f'alertname=="{name}"' in verify, name
