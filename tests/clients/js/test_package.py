"""``npm pack clients/js`` is the product: the tarball installs offline into an empty
folder (it has no dependencies), imports under Node 22 by its name, and carries its
TypeScript declarations, which a typed use of it compiles against."""

from __future__ import annotations

import json
import shutil
import subprocess
import tarfile
from pathlib import Path

import pytest

from tests.support.node import IN_CI, SETUP_HINT, node_or_skip, packages_or_skip
from tests.support.procs import ROOT

PACKAGE = ROOT / "clients" / "js"
USAGE = PACKAGE / "test" / "types" / "usage.ts"
# imports the installed package by its name, as an app would
CHECK_JS = """\
import { ChatStorage, NotFound, ChatStorageError, CLIENT_VERSION } from "chat-storage-client";
import pkg from "chat-storage-client/package.json" with { type: "json" };
const api = new ChatStorage({ baseUrl: "http://127.0.0.1:1", apiKey: "k" });
let refused = "";
try { new ChatStorage({ apiKey: "k" }); } catch (e) { refused = e.message; }
console.log(JSON.stringify({
  base: api.baseUrl, version: CLIENT_VERSION, pkg: pkg.version, types: pkg.types,
  hierarchy: new NotFound("x") instanceof ChatStorageError, refused,
}));
"""
# the compiler options of clients/js/test/types/tsconfig.json
TSCONFIG = json.loads((PACKAGE / "test" / "types" / "tsconfig.json").read_text())["compilerOptions"]


def run(*cmd: str | Path, cwd: Path, node: str) -> str:
    env = {"PATH": f"{Path(node).parent}:/usr/bin:/bin", "HOME": str(cwd),
           "npm_config_cache": str(cwd / ".npm"), "npm_config_update_notifier": "false"}
    done = subprocess.run([str(c) for c in cmd], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=300, check=False)
    assert done.returncode == 0, f"{cmd} failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    return done.stdout


def npm() -> str:
    """npm (Debian's is enough to pack and install), skipped outside CI when missing."""
    found = shutil.which("npm")
    if found is None:
        if IN_CI:
            pytest.fail(f"npm is missing: {SETUP_HINT}")
        pytest.skip(f"npm is missing: {SETUP_HINT}")
    return found


def test_the_packed_tarball_installs_offline_and_imports_with_types(tmp_path: Path) -> None:
    node = node_or_skip()
    packed = json.loads(run(npm(), "pack", "--json", "--pack-destination", tmp_path, PACKAGE,
                            cwd=tmp_path, node=node))
    tarball = tmp_path / packed[0]["filename"]
    with tarfile.open(tarball) as tar:
        names = set(tar.getnames())
    # what ships: the modules, the declarations, the README; not the tests nor the lock
    shipped = {f"package/{name}" for name in ("package.json", "README.md", "src/index.js",
                                              "types/index.d.ts")}
    assert shipped <= names, sorted(names)
    assert not any(n.startswith(("package/test/", "package/node_modules/")) for n in names)
    manifest = json.loads((PACKAGE / "package.json").read_text())
    assert (manifest["type"], manifest["engines"]["node"]) == ("module", ">=22")

    app = tmp_path / "app"
    app.mkdir()
    (app / "package.json").write_text(json.dumps({"name": "app", "private": True,
                                                  "type": "module"}))
    run(npm(), "install", "--offline", "--no-audit", "--no-fund", tarball, cwd=app, node=node)
    installed = app / "node_modules" / "chat-storage-client"
    assert (installed / "types" / "index.d.ts").is_file()
    (app / "check.js").write_text(CHECK_JS)
    out = json.loads(run(node, "check.js", cwd=app, node=node))
    assert out["base"] == "http://127.0.0.1:1"
    assert out["version"] == out["pkg"] == manifest["version"]
    assert out["types"] == "./types/index.d.ts" and out["hierarchy"] is True
    assert "baseUrl must be an absolute" in out["refused"]  # no window to fall back on

    # the declarations, as installed, type a use of the whole surface
    packages_or_skip(PACKAGE)
    tsc = PACKAGE / "node_modules" / "typescript" / "bin" / "tsc"
    shutil.copy(USAGE, app / "usage.ts")
    (app / "tsconfig.json").write_text(json.dumps({
        "compilerOptions": {**TSCONFIG, "types": []}, "files": ["usage.ts"]}))
    run(node, tsc, "-p", app, cwd=app, node=node)


def test_the_declarations_fail_a_wrong_use(tmp_path: Path) -> None:
    """The type check can fail: a call the declarations do not allow is an error."""
    node = node_or_skip()
    packages_or_skip(PACKAGE)
    (tmp_path / "node_modules").mkdir()
    (tmp_path / "node_modules" / "chat-storage-client").symlink_to(PACKAGE)
    (tmp_path / "package.json").write_text(json.dumps({"type": "module"}))
    (tmp_path / "wrong.ts").write_text(
        'import { ChatStorage } from "chat-storage-client";\n'
        'const api = new ChatStorage({ baseUrl: "http://x" });\n'
        'void api.sessions.create({ title: "no user_id" });\n')
    (tmp_path / "tsconfig.json").write_text(json.dumps({
        "compilerOptions": {**TSCONFIG, "types": []}, "files": ["wrong.ts"]}))
    tsc = PACKAGE / "node_modules" / "typescript" / "bin" / "tsc"
    done = subprocess.run([node, str(tsc), "-p", str(tmp_path)], cwd=tmp_path,
                          capture_output=True, text=True, timeout=300, check=False)
    assert done.returncode != 0 and "user_id" in done.stdout, done.stdout + done.stderr
