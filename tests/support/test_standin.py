"""The stand-in base image's mirror choice and cache key (no image is built here)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.support import standin


def sources(tmp_path: Path, name: str, text: str) -> Path:
    (tmp_path / "sources.list.d").mkdir(exist_ok=True)
    (tmp_path / "sources.list.d" / name).write_text(text)
    return tmp_path


def test_the_mirror_is_debians_main_archive_from_apts_sources(tmp_path: Path) -> None:
    root = sources(tmp_path, "debian.sources",
                   "Types: deb\nURIs: http://mirror.example/debian-security\n"
                   "Suites: bookworm-security\n\n"
                   "Types: deb\nURIs: http://mirror.example/debian/\nSuites: bookworm\n")
    assert standin.debian_mirror(root) == "http://mirror.example/debian"


def test_a_one_line_source_counts_too(tmp_path: Path) -> None:
    (tmp_path / "sources.list").write_text(
        "deb [signed-by=/k.gpg] http://mirror.example/debian bookworm main\n")
    assert standin.debian_mirror(tmp_path) == "http://mirror.example/debian"


def test_another_distributions_archive_is_not_taken(tmp_path: Path) -> None:
    root = sources(tmp_path, "ubuntu.sources",
                   "Types: deb\nURIs: http://archive.ubuntu.com/ubuntu/\nSuites: noble\n")
    assert standin.debian_mirror(root) == standin.DEFAULT_MIRROR


def test_the_cache_key_follows_the_package_list(monkeypatch: pytest.MonkeyPatch) -> None:
    before = standin.cache_key()
    monkeypatch.setattr(standin, "PACKAGES", (*standin.PACKAGES, "curl"))
    assert standin.cache_key() != before
