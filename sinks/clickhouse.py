"""The one ClickHouse client factory: ``chdb://`` (embedded) and ``http(s)://`` (server) behind one seam.

Why one factory: every caller (sink, migrations, reports, ``leadpulse sql``) gets the same transport choice
from ``settings.dsn``, and credentials are unwrapped from their ``SecretStr`` here and nowhere else, so a
password can never reach a log line or a repr by way of a caller.
"""

from __future__ import annotations

from typing import Any

import clickhouse_connect
from clickhouse_connect.driver.client import Client

from streams.settings import Settings

DATABASE = "leadpulse"


def is_embedded(dsn: str) -> bool:
    return dsn.startswith("chdb://")


def chdb_location(dsn: str) -> str:
    """Directory of a ``chdb://`` DSN (``chdb:///abs/path`` and ``chdb://`` + absolute path both work)."""
    rest = dsn[len("chdb://") :]
    return rest.split("?", 1)[0] or ":memory:"


def get_client(settings: Settings, *, dsn: str | None = None, **kwargs: Any) -> Client:
    """A clickhouse-connect client for ``dsn`` (default ``settings.dsn``).

    No default database is set: every statement names ``leadpulse.<table>`` so the same SQL runs before
    and after ``migrate`` and on a server where the user's default database is something else.
    """
    target = dsn or settings.dsn
    if is_embedded(target):
        return clickhouse_connect.get_client(dsn=f"chdb://{chdb_location(target)}", **kwargs)
    if settings.clickhouse_user is not None:
        kwargs.setdefault("username", settings.clickhouse_user)
    if settings.clickhouse_password is not None:
        kwargs.setdefault("password", settings.clickhouse_password.get_secret_value())
    return clickhouse_connect.get_client(dsn=target, **kwargs)
