"""A stand-in for the Dockerfile's base image, built from Debian's packages.

No registry image can be pulled on the machines this project is tested on, so the
image test cannot start ``FROM python:3.11-slim``. The official image is Debian 12
(bookworm) with CPython 3.11, ``ca-certificates``, ``netbase`` and ``tzdata``; this
module makes the same from Debian's own packages with ``debootstrap --variant=minbase``,
imports it into podman and hands its name to the build as ``--build-arg PYTHON_IMAGE``
(the Dockerfile's default stays the official image). Differences that matter here:
Debian's Python is at /usr/bin (``python-is-python3`` gives it the name ``python``),
and the machine's own certificate authorities are added, so pip and apt inside the
build reach the registries through this machine's network as the host does.

What the Dockerfile installs itself (``postgresql-client``) is put in too, so its
``apt-get install`` finds it there and the build does not download it again.

The image is cached under a tag keyed by everything that goes into it (suite, package
list, this recipe's version, the machine's CA files), and its root filesystem as a
tarball under ``~/.cache/chat-storage`` (``CHAT_STANDIN_CACHE``), so only the first run
on a machine pays for debootstrap.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import subprocess
import tempfile
from pathlib import Path

SUITE = "bookworm"
# the official python:3.11-slim's packages, what the Dockerfile's stages use, and the
# name `python` that its RUN lines call
PACKAGES = (
    "python3", "python3-venv", "python-is-python3", "ca-certificates", "netbase", "tzdata",
    "postgresql-client",
)
RECIPE_VERSION = "1"  # bump when the steps below change what the image holds
REPOSITORY = "localhost/chat-storage-standin-base"
HOST_CA_DIR = Path("/usr/local/share/ca-certificates")
DEFAULT_MIRROR = "http://deb.debian.org/debian"
DEBOOTSTRAP_TIMEOUT_S = 1200.0
# what the official image sets (docker.io/library/python's Dockerfile)
IMAGE_CHANGES = (
    "ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
    "ENV LANG=C.UTF-8",
    'CMD ["python3"]',
)


class StandinError(RuntimeError):
    """The stand-in base image could not be made; the message says which step failed."""


def debian_mirror(sources_dir: Path = Path("/etc/apt")) -> str:
    """The Debian archive this machine's apt uses, or Debian's own where it uses none."""
    files = [sources_dir / "sources.list", *sorted(sources_dir.glob("sources.list.d/*"))]
    for path in files:
        if not path.is_file():
            continue
        text = path.read_text(errors="replace")
        uris = re.findall(r"^URIs:\s*(\S+)", text, re.MULTILINE)
        uris += re.findall(r"^deb\s+(?:\[[^\]]*\]\s+)?(\S+)", text, re.MULTILINE)
        for uri in uris:
            # Debian's main archive; not its security archive, nor another distribution's
            # (a CI runner on Ubuntu lists Ubuntu's)
            if uri.rstrip("/").endswith("/debian"):
                return uri.rstrip("/")
    return DEFAULT_MIRROR


def _host_cas() -> list[Path]:
    return sorted(HOST_CA_DIR.glob("*.crt")) if HOST_CA_DIR.is_dir() else []


def cache_key() -> str:
    """A digest of everything the image is made of: a change makes a new image."""
    digest = hashlib.sha256()
    for part in (SUITE, RECIPE_VERSION, *PACKAGES, *IMAGE_CHANGES):
        digest.update(part.encode() + b"\0")
    for ca in _host_cas():
        digest.update(ca.read_bytes())
    return digest.hexdigest()[:16]


def image_name() -> str:
    """The tag of the stand-in made from the current recipe."""
    return f"{REPOSITORY}:{cache_key()}"


def cache_dir() -> Path:
    """Where the root filesystem tarballs are kept between runs."""
    configured = os.environ.get("CHAT_STANDIN_CACHE")
    if configured:
        return Path(configured)
    return Path.home() / ".cache" / "chat-storage"


def _run(step: str, args: list[str], timeout_s: float) -> None:
    done = subprocess.run(args, capture_output=True, text=True, timeout=timeout_s, check=False)
    if done.returncode != 0:
        tail = (done.stdout + done.stderr)[-3000:]
        raise StandinError(f"{step} failed (exit status {done.returncode}):\n{tail}")


def _image_exists(name: str) -> bool:
    done = subprocess.run(["podman", "image", "exists", name], capture_output=True,
                          timeout=60, check=False)
    return done.returncode == 0


def _make_rootfs(tarball: Path) -> None:
    """debootstrap the root filesystem and pack it into ``tarball`` (made atomically)."""
    if shutil.which("debootstrap") is None:
        raise StandinError("debootstrap is not installed (apt-get install debootstrap)")
    tarball.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="standin-", dir=tarball.parent) as work:
        root = Path(work) / "root"
        _run("debootstrap", ["debootstrap", "--variant=minbase",
                             "--include=" + ",".join(PACKAGES), SUITE, str(root),
                             debian_mirror()], DEBOOTSTRAP_TIMEOUT_S)
        for ca in _host_cas():
            shutil.copy2(ca, root / "usr/local/share/ca-certificates" / ca.name)
        _run("update-ca-certificates", ["chroot", str(root), "update-ca-certificates"], 300)
        # as the official image: no package cache or lists in the layer
        for leftover in ("var/cache/apt/archives", "var/lib/apt/lists"):
            for entry in (root / leftover).glob("*"):
                if entry.is_file():
                    entry.unlink()
        partial = Path(work) / "rootfs.tar"
        _run("tar", ["tar", "--numeric-owner", "-C", str(root), "-cf", str(partial), "."], 600)
        partial.replace(tarball)


def ensure_image() -> str:
    """The stand-in's image name, importing (and first making) it if podman lacks it."""
    name = image_name()
    if _image_exists(name):
        return name
    tarball = cache_dir() / f"standin-{SUITE}-{cache_key()}.tar"
    if not tarball.is_file():
        _make_rootfs(tarball)
    changes = [arg for change in IMAGE_CHANGES for arg in ("--change", change)]
    _run("podman import", ["podman", "import", *changes, str(tarball), name], 600)
    return name
