"""Running the embedded Postgres under root: its unprivileged system user, and the
one POSIX ACL entry that lets that user (alone) traverse a directory it could not.

Postgres refuses to run as root. Under root, :mod:`storage.embedded` runs it as
:data:`SYSTEM_USER`, created here if missing; every ancestor of the data and binary
directories that denies that user ``x`` gets the ACL entry ``user:chatpg:x``, keeping
every other entry, so no one else gains any access.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import pwd
import shutil
import struct
import subprocess
from pathlib import Path

from chat_storage.storage.errors import EmbeddedError

log = logging.getLogger(__name__)

SYSTEM_USER = "chatpg"


def system_user() -> pwd.struct_passwd:
    """The unprivileged user the server runs as under root, created if missing."""
    with contextlib.suppress(KeyError):
        return pwd.getpwnam(SYSTEM_USER)
    useradd = shutil.which("useradd")
    if useradd is None:
        raise EmbeddedError(
            f"running as root: Postgres needs an unprivileged user {SYSTEM_USER!r} "
            "and useradd is not available to create it; set DATABASE_URL instead"
        )
    result = subprocess.run(  # noqa: S603 - a fixed argv of system tools, no shell
        [useradd, "--system", "--user-group", "--no-create-home", "--home-dir", "/nonexistent",
         "--shell", "/usr/sbin/nologin", "--comment", "chat-storage embedded postgres",
         SYSTEM_USER],
        capture_output=True, text=True, check=False,
    )
    try:
        entry = pwd.getpwnam(SYSTEM_USER)  # another process may have created it meanwhile
    except KeyError:
        raise EmbeddedError(f"useradd {SYSTEM_USER} failed: {result.stderr.strip()}") from None
    log.info("created system user for embedded postgres", extra={"user": SYSTEM_USER})
    return entry


def ensure_traversable(path: Path, user: pwd.struct_passwd) -> None:
    """Let ``user`` reach ``path``: grant ``x`` on each ancestor that denies it."""
    for directory in reversed(path.parents):
        st = directory.stat()
        if (
            st.st_uid == user.pw_uid
            or st.st_mode & 0o001
            or (st.st_gid == user.pw_gid and st.st_mode & 0o010)
        ):
            continue
        _grant_traverse(directory, user)


# POSIX ACL as stored in the system.posix_acl_access extended attribute (Linux)
_ACL_XATTR = "system.posix_acl_access"
_ACL_VERSION = 2
_ACL_USER_OBJ, _ACL_USER, _ACL_GROUP_OBJ, _ACL_MASK, _ACL_OTHER = 0x01, 0x02, 0x04, 0x10, 0x20
_ACL_NO_ID = 0xFFFFFFFF
_X = 1


def _grant_traverse(directory: Path, user: pwd.struct_passwd) -> None:
    """Add the ACL entry ``user:<name>:x`` to ``directory``, keeping every other entry."""
    how_to_fix = (
        f"the embedded Postgres runs as user {SYSTEM_USER!r}, which cannot enter {directory}; "
        f"run `chmod o+x {directory}`, set CHAT_DATA_DIR to a directory it can reach, "
        "or set DATABASE_URL"
    )
    setxattr = getattr(os, "setxattr", None)
    if setxattr is None:
        raise EmbeddedError(how_to_fix)
    mode = directory.stat().st_mode
    entries: dict[tuple[int, int], int] = {}
    try:
        raw = os.getxattr(directory, _ACL_XATTR)
    except OSError as exc:
        if exc.errno != errno.ENODATA:
            raise EmbeddedError(f"{how_to_fix} ({exc.strerror})") from None
        raw = b""
    if raw:
        for offset in range(4, len(raw), 8):
            tag, perm, ident = struct.unpack_from("<HHI", raw, offset)
            entries[(tag, ident)] = perm
    else:
        entries[(_ACL_USER_OBJ, _ACL_NO_ID)] = (mode >> 6) & 7
        entries[(_ACL_GROUP_OBJ, _ACL_NO_ID)] = (mode >> 3) & 7
        entries[(_ACL_OTHER, _ACL_NO_ID)] = mode & 7
    granted = entries.get((_ACL_USER, user.pw_uid), 0)
    mask = entries.get((_ACL_MASK, _ACL_NO_ID), entries[(_ACL_GROUP_OBJ, _ACL_NO_ID)])
    if granted & mask & _X:
        return  # granted on an earlier start
    entries[(_ACL_USER, user.pw_uid)] = granted | _X
    # the mask caps named entries: widen it by x only, so no one else gains anything
    entries[(_ACL_MASK, _ACL_NO_ID)] = mask | _X
    payload = struct.pack("<I", _ACL_VERSION) + b"".join(
        struct.pack("<HHI", tag, perm, ident) for (tag, ident), perm in sorted(entries.items())
    )
    try:
        setxattr(directory, _ACL_XATTR, payload)
    except OSError as exc:
        raise EmbeddedError(f"{how_to_fix} ({exc.strerror})") from None
    log.warning(
        "granted traverse permission via ACL",
        extra={"directory": str(directory), "user": SYSTEM_USER},
    )
