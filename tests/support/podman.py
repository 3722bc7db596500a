"""The service image, built from the real Dockerfile and run with podman.

There is no Docker engine on the machines this project is tested on; podman builds
and runs the same Dockerfile (``apt-get install podman runc debootstrap`` and the
``/etc/containers/containers.conf`` that ``.ci/run`` writes). The base image comes
from :mod:`tests.support.standin`. Every call is bounded in time.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from tests.support import standin

ROOT = Path(__file__).resolve().parents[2]
IMAGE = "localhost/chat-storage:test"
BUILD_TIMEOUT_S = 1500.0
CALL_TIMEOUT_S = 120.0


def missing() -> str | None:
    """Why images cannot be built and run here, or None when they can."""
    if shutil.which("podman") is None:
        return "podman is not installed (`bash .ci/run` installs it: apt-get install podman)"
    if os.geteuid() != 0:
        return "building the base image stand-in needs root (debootstrap, podman import)"
    if shutil.which("debootstrap") is None and not _exists(standin.image_name()):
        return "debootstrap is not installed (apt-get install debootstrap)"
    return None


def _exists(image: str) -> bool:
    return run("image", "exists", image, check=False).returncode == 0


def run(*args: str, check: bool = True, timeout_s: float = CALL_TIMEOUT_S,
        ) -> subprocess.CompletedProcess[str]:
    """``podman ARGS``; with ``check``, a failure raises with podman's own words."""
    done = subprocess.run(["podman", *args], capture_output=True, text=True,
                          timeout=timeout_s, check=False)
    if check and done.returncode != 0:
        raise AssertionError(f"podman {' '.join(args)} failed with exit status "
                             f"{done.returncode}:\n{done.stdout}{done.stderr}")
    return done


def build() -> tuple[str, float]:
    """Build the Dockerfile on the stand-in base: the image name and the seconds it took.

    ``--format docker``: the OCI format has no HEALTHCHECK, and podman would drop it.
    ``--pull=never``: nothing may come from a registry; ``--network=host``: pip and apt
    reach their registries as this machine does.
    """
    base = standin.ensure_image()
    started = time.monotonic()
    run("build", "--format", "docker", "--network=host", "--pull=never",
        "--build-arg", f"PYTHON_IMAGE={base}", "--tag", IMAGE, str(ROOT),
        timeout_s=BUILD_TIMEOUT_S)
    return IMAGE, time.monotonic() - started


def inspect_image(image: str) -> dict[str, Any]:
    """The image's configuration as ``podman image inspect`` gives it."""
    found: list[dict[str, Any]] = json.loads(run("image", "inspect", image).stdout)
    return found[0]


def env_args(env: Mapping[str, str]) -> list[str]:
    """``--env NAME=VALUE`` for each entry."""
    return [arg for name, value in env.items() for arg in ("--env", f"{name}={value}")]


def one_off(image: str, env: Mapping[str, str], *command: str,
            ) -> subprocess.CompletedProcess[str]:
    """Run ``command`` in a throw-away container on the host's network; its result."""
    return run("run", "--rm", "--network=host", *env_args(env), image, *command, check=False)


@contextmanager
def container(image: str, name: str, env: Mapping[str, str],
              command: Sequence[str] = ()) -> Iterator[str]:
    """A detached container on the host's network, removed (forcibly) when done."""
    run("run", "--detach", "--name", name, "--network=host", *env_args(env), image,
        *command)
    try:
        yield name
    finally:
        run("rm", "--force", "--time", "0", name, check=False)


def state(name: str) -> dict[str, Any]:
    """``State`` of a container (Running, ExitCode, ...)."""
    found: list[dict[str, Any]] = json.loads(run("container", "inspect", name).stdout)
    result: dict[str, Any] = found[0]["State"]
    return result


def logs(name: str) -> str:
    """What the container wrote, both streams."""
    done = run("logs", name, check=False)
    return done.stdout + done.stderr
