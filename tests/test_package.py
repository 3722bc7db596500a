"""The wheel is the product: built, installed in a fresh venv, run from outside the checkout.

This is what ``pip install chat-storage`` gives a user: one import name
(``chat_storage``), the migrations and the demo page inside the package, and a
``chat-storage`` command that migrates and serves with nothing from the source tree.
The venv's dependencies come from the package index (or pip's cache), as a user's would.
"""

from __future__ import annotations

import asyncio
import os
import secrets
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import aiohttp
import pytest

from tests.conftest import ADMIN_URL, drop_database
from tests.support import scratch
from tests.support.procs import clean_env, free_port

ROOT = Path(__file__).resolve().parents[1]
KEY = "cs_test_" + secrets.token_hex(16)


def run(*cmd: str | Path, cwd: Path, env: dict[str, str] | None = None) -> str:
    done = subprocess.run([str(c) for c in cmd], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=600, check=False)
    assert done.returncode == 0, f"{cmd} failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    return done.stdout


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fresh venv with the wheel built from this checkout; its ``bin`` directory."""
    work = tmp_path_factory.mktemp("wheel")
    # built from a copy, so the checkout gets no build/ directory; the links of
    # chat_storage/ are copied as links, as git checks them out
    source = work / "src"
    shutil.copytree(ROOT, source, symlinks=True, ignore=shutil.ignore_patterns(
        ".git", ".venv", "build", "dist", "*.egg-info", "__pycache__", ".*_cache"))
    run(sys.executable, "-m", "pip", "wheel", "--no-deps", "--quiet", "-w", work / "dist",
        source, cwd=work)
    wheels = list((work / "dist").glob("chat_storage-*.whl"))
    assert len(wheels) == 1, wheels
    run(sys.executable, "-m", "venv", work / "venv", cwd=work)
    bindir = work / "venv" / "bin"
    run(bindir / "python", "-m", "pip", "install", "--quiet", wheels[0], cwd=work)
    return bindir


@pytest.mark.timeout(900)
def test_the_wheel_holds_one_package_with_its_data(installed: Path, tmp_path: Path) -> None:
    out = run(installed / "python", "-c",
              "import importlib.util as u, chat_storage as c; "
              "from chat_storage.runtime.settings import DEFAULT_MIGRATIONS_DIR as m, "
              "DEFAULT_WEB_DIR as w, DEFAULT_JS_CLIENT_DIR as j; "
              "print(c.__file__); print(sorted(p.name for p in m.glob('*.sql'))[0]); "
              "print((w / 'index.html').is_file() and (j / 'index.js').is_file()); "
              "print([n for n in ('server', 'actors', 'storage') if u.find_spec(n)])",
              cwd=tmp_path)
    origin, first_migration, page, top_level = out.splitlines()
    assert Path(origin).is_relative_to(installed.parent), origin  # not the checkout
    assert first_migration == "0001_init.sql"
    assert page == "True"
    assert top_level == "[]"  # nothing installed under the folders' bare names


@pytest.mark.timeout(900)
async def test_the_installed_command_migrates_and_serves(installed: Path,
                                                         tmp_path: Path) -> None:
    name = f"chat_wheel_{os.getpid()}_{secrets.token_hex(4)}"
    url = await scratch.create(ADMIN_URL, name)  # empty: the wheel's migrations fill it
    port = free_port()
    env = clean_env(DATABASE_URL=url, CHAT_API_KEYS=f"wheel:{KEY}",
                    CHAT_DATA_DIR=str(tmp_path / "data"), CHAT_LOG_LEVEL="WARNING")
    try:
        run(installed / "chat-storage", "migrate", cwd=tmp_path, env=env)
        proc = await asyncio.create_subprocess_exec(
            installed / "chat-storage", "serve", "--port", str(port), cwd=tmp_path, env=env,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)
        try:
            await _exercise(f"http://127.0.0.1:{port}", proc)
        finally:
            if proc.returncode is None:
                proc.send_signal(signal.SIGTERM)
        output, _ = await asyncio.wait_for(proc.communicate(), 30)
        assert proc.returncode == 0, output.decode()[-3000:]
    finally:
        await drop_database(name)


async def _exercise(base: str, proc: asyncio.subprocess.Process) -> None:
    async with aiohttp.ClientSession() as http:
        async with asyncio.timeout(60):
            while True:
                assert proc.returncode is None, "the server exited"
                try:
                    async with http.get(f"{base}/readyz") as r:
                        if r.status == 200:
                            break
                except aiohttp.ClientError:
                    pass
                await asyncio.sleep(0.1)
        async with http.get(f"{base}/") as r:  # the demo page, from the package
            assert r.status == 200 and "<html" in (await r.text()).lower()
        async with http.get(f"{base}/web/client/index.js") as r:  # the JS client it imports
            assert r.status == 200 and "ChatStorage" in await r.text()
        headers = {"X-Api-Key": KEY}
        async with http.post(f"{base}/api/v1/sessions", json={"user_id": "u1"},
                             headers=headers) as r:
            assert r.status == 201, await r.text()
            session = await r.json()
        async with http.post(f"{base}/api/v1/sessions/{session['id']}/messages",
                             json={"role": "user", "content": "hello"}, headers=headers) as r:
            assert r.status == 201, await r.text()
        async with http.get(f"{base}/api/v1/sessions/{session['id']}/messages",
                            headers=headers) as r:
            assert [m["content"] for m in (await r.json())["data"]] == ["hello"]


def test_the_image_copies_every_folder_the_package_links_to() -> None:
    """The Dockerfile builds the wheel from copied folders: one it forgets is a package
    that installs without a layer."""
    # each link's target, as a folder of the checkout (client_js -> clients/js/src)
    linked = {str((p.parent / p.readlink()).resolve().relative_to(ROOT))
              for p in (ROOT / "chat_storage").iterdir() if p.is_symlink()}
    copied = {line.split()[1] for line in (ROOT / "Dockerfile").read_text().splitlines()
              if line.startswith("COPY ") and "--from" not in line}
    assert linked and linked <= copied, sorted(linked - copied)
