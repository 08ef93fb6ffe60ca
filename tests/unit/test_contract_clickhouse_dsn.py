"""DESIGN §8: ``LEADPULSE_CLICKHOUSE_DSN`` (default ``chdb://`` under the data directory).

Found by the contract audit: ``LEADPULSE_CLICKHOUSE_DSN=chdb://`` (DESIGN's own spelling of the default)
opened chDB's in-memory engine. ``leadpulse migrate`` printed "applied: 001_events, ..." and the next
``leadpulse sql`` answered "Database leadpulse does not exist"; a sink started so would have stored every
batch in memory, committed the offsets and lost it all at exit. A bare ``chdb://`` now names the default
directory; an in-memory engine stays available as ``chdb://:memory:``.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from streams.settings import load_settings

pytestmark = pytest.mark.unit


def test_a_bare_chdb_dsn_is_the_default_directory_under_the_data_dir(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    default = load_settings(data_dir=tmp_path, clickhouse_dsn=None)
    assert default.dsn == f"chdb://{(tmp_path / 'clickhouse').resolve()}"
    monkeypatch.setenv("LEADPULSE_CLICKHOUSE_DSN", "chdb://")
    bare = load_settings(data_dir=tmp_path)
    assert bare.dsn == default.dsn and bare.embedded_clickhouse
    assert bare.dsn_setting == "LEADPULSE_DATA_DIR"  # the variable that places the directory
    assert load_settings(data_dir=tmp_path, clickhouse_dsn="chdb://").dsn == default.dsn  # `--dsn chdb://`


def test_an_explicit_chdb_directory_or_memory_engine_is_kept(tmp_path: Path) -> None:
    for dsn in (f"chdb://{tmp_path}/elsewhere", "chdb://:memory:"):
        assert load_settings(data_dir=tmp_path, clickhouse_dsn=dsn).dsn == dsn
