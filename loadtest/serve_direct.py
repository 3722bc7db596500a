"""Serve the app with one transaction per session batch (no shared committer).

Only for measuring what the shared committer (the default) buys:

    .venv/bin/python loadtest/bench_writes.py --modes http-quiet --sessions 2000 \\
        --serve-cmd ".venv/bin/python loadtest/serve_direct.py {port}"
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import chat_storage.actors.registry
from chat_storage.server.cli import main

_init = chat_storage.actors.registry.Registry.__init__


def _direct(self: chat_storage.actors.registry.Registry, *args: Any, **kwargs: Any) -> None:
    _init(self, *args, **{**kwargs, "shared": False})


if __name__ == "__main__":
    chat_storage.actors.registry.Registry.__init__ = _direct  # type: ignore[method-assign]
    sys.exit(main(["serve", "--port", sys.argv[1]]))
