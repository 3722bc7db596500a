"""The coverage threshold is configured and the README's test command enforces it.

``pytest --cov`` measures ``chat_storage`` in the test process and, through coverage's
``patch = ["subprocess"]``, in every server and CLI process the tests start; pytest-cov
fails the run under ``fail_under``. .ci/run runs the README's command verbatim.
"""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def coverage_settings() -> dict[str, dict[str, object]]:
    settings: dict[str, dict[str, object]] = tomllib.loads(
        (ROOT / "pyproject.toml").read_text())["tool"]["coverage"]
    return settings


def test_the_threshold_is_set_and_processes_are_measured() -> None:
    settings = coverage_settings()
    fail_under = settings["report"]["fail_under"]
    assert isinstance(fail_under, int | float) and 50 <= fail_under <= 100
    assert "subprocess" in settings["run"]["patch"]  # type: ignore[operator]
    assert settings["run"]["source_pkgs"] == ["chat_storage"]


def test_the_readme_test_command_measures_coverage() -> None:
    readme = (ROOT / "README.md").read_text()
    ci = (ROOT / ".ci" / "run").read_text()
    command = re.search(r'^TEST_COMMAND="(.*)"$', ci, re.MULTILINE)
    assert command is not None
    assert "-m pytest --cov " in command.group(1)
    assert command.group(1) in readme
