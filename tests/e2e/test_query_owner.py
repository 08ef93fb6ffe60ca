"""``leadpulse sql`` goes through a running sink only when that sink owns the same data directory: a sink of
another directory on the configured port must not answer for this one (its numbers would be another
dataset's, and a ``forget`` would erase nothing here)."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from streams.broker import EmbeddedBroker, free_port
from streams.settings import Settings
from tests.processes import LEADPULSE, CliProcess, http_ok, leadpulse_env, wait_until

pytestmark = pytest.mark.e2e


def test_sql_reads_its_own_data_directory_not_the_one_a_running_sink_owns(
    broker: EmbeddedBroker, broker_settings: Settings, tmp_path: Path
) -> None:
    port = free_port()
    common = {
        "kafka_bootstrap": broker.bootstrap,
        "topic_prefix": broker_settings.topic_prefix,
        "sink_port": port,
    }
    owned, other = tmp_path / "owned", tmp_path / "other"
    sink = CliProcess(["sink"], leadpulse_env(data_dir=owned, **common), tmp_path / "sink.log")
    try:
        wait_until(lambda: http_ok(f"http://127.0.0.1:{port}/ready"), 90, "the sink ready", sink)

        def sql(data_dir: Path) -> subprocess.CompletedProcess[str]:
            return subprocess.run(
                [
                    *LEADPULSE,
                    "sql",
                    "--format",
                    "json",
                    "SELECT count() AS tables FROM system.tables WHERE database = 'leadpulse'",
                ],
                env=leadpulse_env(data_dir=data_dir, **common),
                capture_output=True,
                text=True,
                timeout=120,
                check=False,
            )

        through_sink = sql(owned)  # the directory is locked by the sink: only its query API can answer
        assert through_sink.returncode == 0, through_sink.stderr
        assert json.loads(through_sink.stdout)["result"][0]["tables"] > 0
        own = sql(other)  # another directory: opened here, and it has no tables yet
        assert own.returncode == 0, own.stderr
        assert json.loads(own.stdout)["result"][0]["tables"] == 0
        # A command that needs the directory itself says who owns it when that owner does not serve it
        # (here: the CLI looks for a sink on another port).
        elsewhere = leadpulse_env(data_dir=owned, **{**common, "sink_port": free_port()})
        locked = cli(["content", "load", str(_catalogue(tmp_path))], elsewhere)
        assert locked.returncode == 1
        assert "is owned by another process, normally a running `leadpulse sink`" in locked.stderr
        assert "Cannot lock file" not in locked.stderr
        # `sql` there said "run `leadpulse sink`", which cannot open the locked directory either; it names
        # the setting that finds the running sink, and that setting, as told, works.
        refused = cli(["sql", "SELECT 1"], elsewhere)
        assert refused.returncode == 2 and "set LEADPULSE_SINK_PORT to its port" in refused.stderr
        assert "run `leadpulse sink`" not in refused.stderr, refused.stderr
        as_told = cli(["sql", "SELECT 1"], {**elsewhere, "LEADPULSE_SINK_PORT": str(port)})
        assert as_told.returncode == 0, as_told.stderr
        # A second sink on the directory, chosen by LEADPULSE_CLICKHOUSE_DSN: the setting to change is that
        # one (it said LEADPULSE_DATA_DIR, which the DSN overrides)
        by_dsn = {**elsewhere, "LEADPULSE_CLICKHOUSE_DSN": f"chdb://{owned.resolve()}/clickhouse"}
        second = cli(["sink"], by_dsn)
        assert second.returncode == 1, second.stdout + second.stderr
        assert "per embedded directory (set LEADPULSE_CLICKHOUSE_DSN)" in second.stderr, second.stderr
        # forget said "stop it or run `leadpulse sink`": the same dead end
        not_forgotten = cli(["forget", "L-1", "--yes"], elsewhere)
        assert not_forgotten.returncode == 1 and "set LEADPULSE_SINK_PORT" in not_forgotten.stderr
        assert "run `leadpulse sink`" not in not_forgotten.stderr, not_forgotten.stderr
    finally:
        sink.stop()


def cli(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*LEADPULSE, *args], env=env, capture_output=True, text=True, timeout=120, check=False
    )


def _catalogue(directory: Path, bad: bool = False) -> Path:
    path = directory / ("bad.csv" if bad else "catalogue.csv")
    rows = [
        "content_id,title,content_type,funnel_stage,published_date",
        "wp-1,Cost of delay,whitepaper,awareness,2026-01-05",
        f"cs-1,Acme case,case_study,{'nowhere' if bad else 'mql'},2026-02-01",
    ]
    path.write_text("\n".join(rows) + "\n")
    return path


def test_migrate_and_content_load_go_through_the_sink_that_owns_the_directory(
    broker: EmbeddedBroker, broker_settings: Settings, tmp_path: Path
) -> None:
    """Before: both failed with "owned by another process" while the sink ran; `migrate` is idempotent, and
    marketing loads the catalogue while the pipeline runs."""
    port = free_port()
    env = leadpulse_env(
        data_dir=tmp_path / "data",
        kafka_bootstrap=broker.bootstrap,
        topic_prefix=broker_settings.topic_prefix,
        sink_port=port,
    )
    sink = CliProcess(["sink"], env, tmp_path / "sink.log")
    try:
        wait_until(lambda: http_ok(f"http://127.0.0.1:{port}/ready"), 90, "the sink ready", sink)
        migrated = cli(["migrate"], env)
        assert migrated.returncode == 0, migrated.stderr
        assert migrated.stdout.startswith("up to date (applied by the running sink at")
        bad = cli(["content", "load", str(_catalogue(tmp_path, bad=True))], env)
        assert bad.returncode == 2
        assert "entry 2 funnel_stage: 'nowhere' is not one of" in bad.stderr
        loaded = cli(["content", "load", str(_catalogue(tmp_path))], env)
        assert loaded.returncode == 0, loaded.stderr
        assert loaded.stdout.strip().endswith(
            f"loaded 2 content item(s) from {tmp_path / 'catalogue.csv'} (through the running sink)"
        )
        stored = cli(
            [
                "sql",
                "--format",
                "json",
                "SELECT content_id, funnel_stage FROM leadpulse.content FINAL ORDER BY content_id",
            ],
            env,
        )
        assert stored.returncode == 0, stored.stderr
        assert json.loads(stored.stdout)["result"] == [
            {"content_id": "cs-1", "funnel_stage": "mql"},
            {"content_id": "wp-1", "funnel_stage": "awareness"},
        ]
    finally:
        sink.stop()
