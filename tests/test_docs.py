"""The repository's documents cite only files (and headings) that exist.

Markdown links in the README and under docs/ and loadtest/, and every ``*.md`` path
named in code, comments or configuration, must resolve: a citation of a file that is
not in the repository (such as a contract kept elsewhere) is a dead end for a reader.
"""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
LINK = re.compile(r"\]\(([^)\s]+)\)")
CITED = re.compile(r"(?<![\w/.-])([\w./-]+\.md)(#[\w-]+)?")
CODE_SUFFIXES = {".py", ".toml", ".js", ".html", ".yaml", ".yml", ".cfg", ".sh"}


def tracked() -> list[Path]:
    out = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True,
                         check=False)
    if out.returncode != 0:
        if os.environ.get("CI"):  # CI runs on a clone: a missing checkout is a failure
            pytest.fail("not a git checkout")
        pytest.skip("not a git checkout")
    return [ROOT / line for line in out.stdout.splitlines() if (ROOT / line).is_file()]


def anchors(markdown: Path) -> set[str]:
    """The anchors GitHub makes of the headings of ``markdown``."""
    out = set()
    for line in markdown.read_text().splitlines():
        if line.startswith("#"):
            title = line.lstrip("#").strip().lower()
            out.add(re.sub(r"[^\w\- ]", "", title).replace(" ", "-"))
    return out


def check(target: Path, anchor: str | None, where: str) -> list[str]:
    if not target.exists():
        return [f"{where}: {target.relative_to(ROOT)} does not exist"]
    if anchor and target.suffix == ".md" and anchor not in anchors(target):
        return [f"{where}: {target.relative_to(ROOT)} has no heading #{anchor}"]
    return []


def test_markdown_links_resolve() -> None:
    pages = [p for p in tracked() if p.suffix == ".md"]
    assert ROOT / "README.md" in pages
    broken: list[str] = []
    for page in pages:
        for link in LINK.findall(page.read_text()):
            if re.match(r"^[a-z]+:", link):
                continue  # another site: not this test's business
            path, _, anchor = link.partition("#")
            target = (page.parent / path).resolve() if path else page
            broken += check(target, anchor or None, f"{page.relative_to(ROOT)} → {link}")
    assert not broken, "\n".join(broken)


def test_markdown_files_named_in_code_exist() -> None:
    broken: list[str] = []
    for path in tracked():
        if path.suffix not in CODE_SUFFIXES and path.name not in ("Dockerfile", "run"):
            continue
        for lineno, line in enumerate(path.read_text(errors="replace").splitlines(), 1):
            for name, anchor in CITED.findall(line):
                target = ROOT / name
                broken += check(target, anchor.lstrip("#") or None,
                                f"{path.relative_to(ROOT)}:{lineno}")
    assert not broken, "\n".join(broken)
