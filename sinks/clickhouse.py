"""The one ClickHouse client factory: ``chdb://`` (embedded) and ``http(s)://`` (server) behind one seam.

Why one factory: every caller (sink, migrations, reports, ``leadpulse sql``) gets the same transport choice
from ``settings.dsn``, and credentials are unwrapped from their ``SecretStr`` here and nowhere else, so a
password can never reach a log line or a repr by way of a caller.
"""

from __future__ import annotations

import fcntl
import os
from pathlib import Path
from typing import Any

import clickhouse_connect
from clickhouse_connect.driver.client import Client

from streams.settings import Settings

DATABASE = "leadpulse"
MEMORY_DSN = "chdb://:memory:"  # an engine that keeps nothing on disk


def is_embedded(dsn: str) -> bool:
    return dsn.startswith("chdb://")


def chdb_location(dsn: str) -> str:
    """Directory of a ``chdb://`` DSN (``chdb:///abs/path`` and ``chdb://`` + absolute path both work)."""
    rest = dsn[len("chdb://") :]
    return rest.split("?", 1)[0] or ":memory:"


class EmbeddedEngineBusy(OSError):
    """Another process owns the chDB directory (chDB allows one); the message says so and who it usually
    is, instead of chDB's "Error initializing EmbeddedServer"."""

    def __init__(self, location: str) -> None:
        self.location = location
        super().__init__(
            f"chdb://{location} is owned by another process, normally a running `leadpulse sink`"
        )


class EmbeddedDirectoryUnusable(OSError):
    """The chDB directory cannot be created or written (a file in its place, no permission): not something
    a retry fixes, so the sink says it once instead of retrying "unavailable" forever. ``setting`` is the
    one that chose the directory: with LEADPULSE_CLICKHOUSE_DSN set, "set LEADPULSE_DATA_DIR" did nothing."""

    def __init__(self, location: str, reason: str, setting: str = "LEADPULSE_DATA_DIR") -> None:
        self.location = location
        super().__init__(f"chdb://{location} cannot be used: {reason} (set {setting})")


def _usable(location: str, setting: str) -> None:
    path = Path(location)
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise EmbeddedDirectoryUnusable(location, exc.strerror or str(exc), setting) from None
    if not os.access(path, os.W_OK | os.X_OK):
        raise EmbeddedDirectoryUnusable(location, "not writable by this user", setting)


def holds_nothing(location: str) -> bool:
    """Whether a chDB directory holds no data yet: it does not exist, or is an empty directory. A read-only
    command must not open it then: opening creates the directory and chDB's files in it, so ``leadpulse
    report`` run in the wrong directory left an empty ``.leadpulse/clickhouse`` behind."""
    if location == ":memory:":
        return False
    path = Path(location)
    try:
        return not path.exists() or (path.is_dir() and not any(path.iterdir()))
    except OSError:  # unreadable: opening it says why
        return False


def _locked(location: str) -> bool:
    """Whether another process holds the engine's lock (ClickHouse flocks ``<dir>/status``). Asked only after
    opening failed: within one process a second flock on a new descriptor conflicts too."""
    status = Path(location) / "status"
    try:
        with status.open("rb") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            fcntl.flock(handle, fcntl.LOCK_UN)
    except BlockingIOError:
        return True
    except OSError:
        return False
    return False


def _held_elsewhere(location: str) -> bool:
    """Whether another process holds the engine's lock, read from /proc/locks (Linux): unlike trying the
    lock, this tells this process's own engine (a second client in one process is fine) from another's."""
    try:
        status = (Path(location) / "status").stat()
        locks = Path("/proc/locks").read_text()
    except OSError:
        return False
    file_id = f"{os.major(status.st_dev):02x}:{os.minor(status.st_dev):02x}:{status.st_ino}"
    me = str(os.getpid())
    for line in locks.splitlines():  # "1: FLOCK  ADVISORY  WRITE <pid> <maj:min:inode> 0 EOF"
        fields = line.split()
        if len(fields) > 5 and fields[1] == "FLOCK" and fields[5] == file_id and fields[4] != me:
            return True
    return False


def get_client(settings: Settings, *, dsn: str | None = None, **kwargs: Any) -> Client:
    """A clickhouse-connect client for ``dsn`` (default ``settings.dsn``).

    No default database is set: every statement names ``leadpulse.<table>`` so the same SQL runs before
    and after ``migrate`` and on a server where the user's default database is something else.
    """
    target = dsn or settings.dsn
    if is_embedded(target):
        location = chdb_location(target)
        if location != ":memory:":  # else a directory named ":memory:" was made in the current one
            _usable(location, settings.dsn_setting)
        if _held_elsewhere(location):  # before chDB prints its own lock error to stderr
            raise EmbeddedEngineBusy(location)
        try:
            return clickhouse_connect.get_client(dsn=f"chdb://{location}", **kwargs)
        except Exception as exc:
            if _locked(location):
                raise EmbeddedEngineBusy(location) from exc
            raise
    if settings.clickhouse_user is not None:
        kwargs.setdefault("username", settings.clickhouse_user)
    if settings.clickhouse_password is not None:
        kwargs.setdefault("password", settings.clickhouse_password.get_secret_value())
    return clickhouse_connect.get_client(dsn=target, **kwargs)
