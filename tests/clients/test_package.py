"""``pip install ./clients/python`` gives a working, typed package; the README's
quick-start runs, as written, from that installation against a real server."""

from __future__ import annotations

import asyncio
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.clients.conftest import CLIENT_ROOT
from tests.conftest import Tenant
from tests.support.procs import Server, clean_env


def _run(*cmd: str | Path, cwd: Path) -> str:
    done = subprocess.run([str(c) for c in cmd], cwd=cwd, capture_output=True, text=True,
                          timeout=600, check=False)
    assert done.returncode == 0, f"{cmd} failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    return done.stdout


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fresh venv with ``pip install <copy of clients/python>``; its python."""
    work = tmp_path_factory.mktemp("client")
    source = work / "python"  # a copy: the checkout gets no build/ or egg-info
    shutil.copytree(CLIENT_ROOT, source, ignore=shutil.ignore_patterns(
        "build", "dist", "*.egg-info", "__pycache__"))
    _run(sys.executable, "-m", "venv", work / "venv", cwd=work)
    python = work / "venv" / "bin" / "python"
    _run(python, "-m", "pip", "install", "--quiet", source, cwd=work)
    return python


def quick_start() -> str:
    """The README's quick-start program."""
    readme = (CLIENT_ROOT / "README.md").read_text()
    section = readme.split("## Quick start", 1)[1]
    match = re.search(r"```python\n(.*?)```", section, re.S)
    assert match is not None
    return match.group(1)


@pytest.mark.timeout(600)
def test_it_installs_typed_and_alone(installed: Path, tmp_path: Path) -> None:
    out = _run(installed, "-c",
               "import importlib.util as u, pathlib, chat_storage_client as c; "
               "print(c.__file__); "
               "print((pathlib.Path(c.__file__).parent / 'py.typed').is_file()); "
               "print(u.find_spec('chat_storage') is None)", cwd=tmp_path)
    origin, typed, alone = out.splitlines()
    assert Path(origin).is_relative_to(installed.parent.parent), origin  # not the checkout
    assert typed == "True"
    assert alone == "True"  # nothing of the server comes with it


@pytest.mark.timeout(600)
async def test_the_readme_quick_start_runs(installed: Path, server: Server, tenant: Tenant,
                                           tmp_path: Path) -> None:
    program = tmp_path / "quick_start.py"
    program.write_text(quick_start())
    env = clean_env(CHAT_STORAGE_URL=server.base, CHAT_STORAGE_API_KEY=tenant.key)
    proc = await asyncio.create_subprocess_exec(
        str(installed), str(program), cwd=tmp_path, env=env,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode == 0, err.decode()
    assert out.decode().splitlines() == ["1 user What is a zebra?",
                                         "2 assistant A zebra is a striped horse."]
