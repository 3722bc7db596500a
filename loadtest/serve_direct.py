"""Serve the app with one transaction per session batch (``direct.py``, no shared committer).

Only for measuring what the shared committer (the default) buys:

    .venv/bin/python loadtest/bench_writes.py --modes http-quiet --sessions 2000 \\
        --serve-cmd ".venv/bin/python loadtest/serve_direct.py {port}"
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from chat_storage.runtime.settings import Settings
from chat_storage.server.serving import serve_one
from loadtest.direct import direct_committer

if __name__ == "__main__":
    sys.exit(serve_one(Settings.from_env(port=int(sys.argv[1])), sink=direct_committer))
