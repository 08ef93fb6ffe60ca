"""`leadpulse forget` end to end on the real broker and embedded chDB: a lead's history (incl. anonymous
events linked to it) is sunk, forgotten through the CLI, gone from every table and view while other leads
and the daily views stay right, and re-publishing the same records afterwards stores nothing of it.

Everything ClickHouse goes through subprocesses (the sink owns its own chDB directory, DESIGN §7); the test
reads through the sink's read-only query API, as `leadpulse sql` would.
"""

from __future__ import annotations

import re
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest

from leadpulse.live_view import scrape, total
from sinks.erase import remaining_rows
from sinks.forget import profile_links
from sinks.query_service import Runner, http_runner
from streams.broker import EmbeddedBroker, free_port
from streams.erasures import erasure_id, read_all
from streams.producer import Producer
from streams.settings import Settings
from tests.processes import LEADPULSE, CliProcess, http_ok, leadpulse_env, wait_until

pytestmark = pytest.mark.integration

HOUR = 3_600_000
T = int(time.time() * 1000) - 48 * HOUR  # two days ago: two event days, within every window


def history(lead: str, anon: str, content: str) -> list[tuple[str, dict[str, Any]]]:
    """A lead's records on every input and output topic the sink stores, anonymous visits included."""
    e = f"{lead}-"
    return [
        ("web_visit", {"event_id": e + "v1", "event_time": T, "anonymous_id": anon, "source": "web",
                       "url": "https://x.example/pricing", "page_category": "pricing"}),
        ("content_view", {"event_id": e + "c1", "event_time": T + 1, "anonymous_id": anon, "source": "web",
                          "content_id": content, "content_type": "whitepaper", "dwell_ms": 1000,
                          "percent_viewed": 50.0}),
        ("lead_identified", {"event_id": e + "id", "event_time": T + 2, "anonymous_id": anon,
                             "lead_id": lead, "source": "form", "email": f"{lead}@buyer.example",
                             "company_domain": "buyer.example"}),
        ("content_view", {"event_id": e + "c2", "event_time": T + 24 * HOUR, "lead_id": lead,
                          "source": "web", "content_id": content, "content_type": "whitepaper",
                          "dwell_ms": 4000, "percent_viewed": 90.0}),
        ("download", {"event_id": e + "d1", "event_time": T + 24 * HOUR + 1, "lead_id": lead,
                      "source": "web", "content_id": content, "asset_type": "whitepaper"}),
        ("email_click", {"event_id": e + "m1", "event_time": T + 3, "lead_id": lead, "source": "esp",
                         "campaign_id": "cmp", "email_id": "em", "link_url": "https://x.example/"}),
        ("sales_activity", {"event_id": e + "s1", "event_time": T + 25 * HOUR, "lead_id": lead,
                            "source": "crm", "activity": "first_touch", "owner": "rep-1"}),
        ("lead_score", {"lead_id": lead, "score": 120.0, "fit": 40.0, "behaviour": 80.0,
                        "previous_score": 10.0, "band": "hot", "stage": "mql", "as_of": T + 24 * HOUR,
                        "trigger_event_id": e + "d1", "computed_at": T + 24 * HOUR,
                        "change_reason": "event"}),
        ("stage_transition", {"lead_id": lead, "from_stage": "nurturing", "to_stage": "mql",
                              "reason": "score_threshold", "trigger_event_id": e + "d1", "score": 120.0,
                              "occurred_at": T + 24 * HOUR, "transition_id": e + "t1"}),
        ("hot_lead", {"lead_id": lead, "notification_id": e + "h1", "score": 120.0, "fit": 40.0,
                      "behaviour": 80.0, "reason": "score_threshold", "became_hot_at": T + 24 * HOUR,
                      "email": f"{lead}@buyer.example"}),
        ("sla_timeout", {"lead_id": lead, "sla": "hot_lead_follow_up", "level": "warning",
                         "started_at": T + 24 * HOUR, "due_at": T + 48 * HOUR, "fired_at": T + 36 * HOUR,
                         "timeout_id": e + "w1"}),
    ]  # fmt: skip


def account(leads: list[str], at: int) -> tuple[str, dict[str, Any]]:
    return (
        "account_score",
        {
            "domain": "buyer.example",
            "score": 200.0,
            "leads": len(leads),
            "top_leads": [{"lead_id": lead, "score": 100.0} for lead in leads],
            "as_of": at,
            "computed_at": at,
        },
    )


def publish(settings: Settings, records: list[tuple[str, dict[str, Any]]]) -> None:
    with Producer(settings) as producer:
        for schema, record in records:
            producer.send(schema, record)


def scalar(run: Runner, sql: str, **params: Any) -> int:
    return int(run(sql, params).rows[0][0])


def view_vs_base(run: Runner) -> tuple[list[list[Any]], list[list[Any]]]:
    """Daily content usage as the view holds it, and as recomputed from the stored events."""
    view = run(
        "SELECT toString(day), content_id, event_type, sum(events), sum(dwell_ms), uniqMerge(leads), "
        "uniqMerge(visitors) FROM leadpulse.content_usage_daily GROUP BY day, content_id, event_type "
        "HAVING sum(events) > 0 ORDER BY 1, 2, 3",
        None,
    ).rows
    base = run(
        "SELECT toString(toDate(event_time)) AS d, ifNull(content_id, '') AS c, event_type, count(), "
        "sum(ifNull(dwell_ms, 0)), uniqIf(assumeNotNull(lead_id), lead_id IS NOT NULL), "
        "uniq(coalesce(lead_id, anonymous_id, '')) FROM leadpulse.events WHERE c != '' "
        "GROUP BY d, c, event_type ORDER BY 1, 2, 3",
        None,
    ).rows
    return view, base


def funnel_vs_base(run: Runner) -> tuple[list[list[Any]], list[list[Any]]]:
    view = run(
        "SELECT toString(day), from_stage, to_stage, sum(transitions) FROM leadpulse.funnel_daily "
        "GROUP BY day, from_stage, to_stage HAVING sum(transitions) > 0 ORDER BY 1, 2, 3",
        None,
    ).rows
    base = run(
        "SELECT toString(toDate(occurred_at)) AS d, from_stage, to_stage, count() "
        "FROM leadpulse.stage_transitions GROUP BY d, from_stage, to_stage ORDER BY 1, 2, 3",
        None,
    ).rows
    return view, base


def stored(run: Runner, lead: str, anon: str) -> int:
    return sum(remaining_rows(run, {"lead_id": lead, "anonymous_ids": [anon]}).values())


class Sink:
    def __init__(self, env: dict[str, str], port: int, log: Path) -> None:
        self.proc = CliProcess(["sink", "--batch-seconds", "0.2"], env, log)
        self.url = f"http://127.0.0.1:{port}"
        wait_until(lambda: http_ok(f"{self.url}/ready"), 60, "sink ready", self.proc)
        self.run = http_runner(self.url)

    def wait_stored(self, lead: str, anon: str, rows: int) -> None:
        wait_until(lambda: stored(self.run, lead, anon) >= rows, 60, f"{rows} rows of {lead}", self.proc)


def forget(env: dict[str, str], lead: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*LEADPULSE, "forget", lead, "--yes"], env=env, capture_output=True, text=True, timeout=120
    )


@pytest.fixture
def env(broker: EmbeddedBroker, broker_settings: Settings, tmp_path: Path) -> dict[str, str]:
    return leadpulse_env(
        kafka_bootstrap=broker.bootstrap,
        topic_prefix=broker_settings.topic_prefix,
        data_dir=tmp_path / "data",
        sink_port=free_port(),
    )


# Rows per lead in history(): 5 events, 1 profile, 1 activity, 1 score, 1 transition, 1 hot, 1 SLA event,
# plus 1 account row naming it.
ROWS = 12


def test_forgotten_lead_leaves_no_row_anywhere_and_a_replay_stores_nothing_of_it(
    broker_settings: Settings, env: dict[str, str], tmp_path: Path
) -> None:
    gone, kept = history("L-GONE", "A-GONE", "wp-1"), history("L-KEPT", "A-KEPT", "wp-1")
    records = [*gone, *kept, account(["L-GONE", "L-KEPT"], T)]
    sink = Sink(env, int(env["LEADPULSE_SINK_PORT"]), tmp_path / "sink.log")
    try:
        publish(broker_settings, records)
        sink.wait_stored("L-GONE", "A-GONE", ROWS)
        sink.wait_stored("L-KEPT", "A-KEPT", ROWS)
        kept_before = remaining_rows(sink.run, {"lead_id": "L-KEPT", "anonymous_ids": ["A-KEPT"]})

        done = forget(env, "L-GONE")  # the sink owns the engine: it applies the erasure itself
        assert done.returncode == 0, done.stdout + done.stderr
        assert "leadpulse.events" in done.stdout and "applied by sink" in done.stdout
        assert re.search(r"leadpulse\.events +5 row\(s\) removed", done.stdout), done.stdout  # anonymous too

        assert remaining_rows(sink.run, {"lead_id": "L-GONE", "anonymous_ids": ["A-GONE"]}) == dict.fromkeys(
            kept_before, 0
        )
        assert remaining_rows(sink.run, {"lead_id": "L-KEPT", "anonymous_ids": ["A-KEPT"]}) == kept_before
        view, base = view_vs_base(sink.run)
        assert view == base and view, "daily content usage must equal a recompute from the kept events"
        assert all(row[6] == 1 for row in view)  # one visitor left per content day: L-KEPT (was 2)
        assert funnel_vs_base(sink.run)[0] == funnel_vs_base(sink.run)[1]
        top = sink.run("SELECT top_leads FROM leadpulse.account_scores", None).rows
        assert top and all("L-GONE" not in row[0] and "L-KEPT" in row[0] for row in top)
        assert scalar(sink.run, "SELECT count() FROM leadpulse.erasures WHERE lead_id = 'L-GONE'") == 1

        # Replay: the same records again (new offsets), then a marker of the kept lead after them.
        marker = ("web_visit", {**kept[0][1], "event_id": "L-KEPT-after", "lead_id": "L-KEPT"})
        publish(broker_settings, [*gone, account(["L-GONE", "L-KEPT"], T + 1), marker])
        wait_until(
            lambda: (
                scalar(sink.run, "SELECT count() FROM leadpulse.events WHERE event_id = 'L-KEPT-after'") == 1
            ),
            60,
            "marker stored",
            sink.proc,
        )
        wait_until(
            lambda: scalar(sink.run, "SELECT count() FROM leadpulse.account_scores") == 2,
            60,
            "second account row stored",
            sink.proc,
        )
        assert stored(sink.run, "L-GONE", "A-GONE") == 0
        assert view_vs_base(sink.run)[0] == view_vs_base(sink.run)[1]
        erased = total(scrape(f"{sink.url}/metrics"), "leadpulse_sink_rows_erased_total")
        assert erased == len(gone)
    finally:
        sink.proc.stop()
    assert [r["lead_id"] for r in read_all(broker_settings)] == ["L-GONE"]


def test_forget_without_a_running_sink_erases_directly_and_the_sink_keeps_it_out_after_restart(
    broker_settings: Settings, env: dict[str, str], tmp_path: Path
) -> None:
    gone, kept = history("L-G2", "A-G2", "wp-2"), history("L-K2", "A-K2", "wp-2")
    sink = Sink(env, int(env["LEADPULSE_SINK_PORT"]), tmp_path / "sink1.log")
    try:
        publish(broker_settings, [*gone, *kept])
        sink.wait_stored("L-G2", "A-G2", ROWS - 1)
        sink.wait_stored("L-K2", "A-K2", ROWS - 1)
    finally:
        assert sink.proc.stop() == 0

    done = forget(env, "L-G2")  # nobody owns the directory: the CLI opens it and deletes itself
    assert done.returncode == 0, done.stdout + done.stderr
    assert "applied by cli" in done.stdout and "leadpulse.stage_transitions" in done.stdout
    assert "note: nothing stored" not in done.stderr
    typo = forget(env, "l-g2")  # ids are case-sensitive: nothing of it is stored, and the CLI says so
    assert typo.returncode == 0, typo.stdout + typo.stderr
    assert "note: nothing stored for 'l-g2' in ClickHouse (check the id" in typo.stderr
    again = forget(env, "L-G2")  # idempotent: nothing left, still a success
    assert again.returncode == 0, again.stdout + again.stderr
    assert "leadpulse.events" in again.stdout and " 0 row(s) removed" in again.stdout
    # The repeated request keeps the anonymous id erased (the compacted log keeps the latest record only).
    (latest,) = [r for r in read_all(broker_settings) if r["erasure_id"] == erasure_id("L-G2")][-1:]
    assert latest["anonymous_ids"] == ["A-G2"]

    publish(broker_settings, gone)  # a replay while no sink runs
    sink = Sink(env, int(env["LEADPULSE_SINK_PORT"]), tmp_path / "sink2.log")
    try:
        marker = ("web_visit", {**kept[0][1], "event_id": "L-K2-after", "lead_id": "L-K2"})
        publish(broker_settings, [marker])
        wait_until(
            lambda: (
                scalar(sink.run, "SELECT count() FROM leadpulse.events WHERE event_id = 'L-K2-after'") == 1
            ),
            60,
            "marker stored",
            sink.proc,
        )
        assert stored(sink.run, "L-G2", "A-G2") == 0
        assert stored(sink.run, "L-K2", "A-K2") == ROWS - 1 + 1
        view, base = view_vs_base(sink.run)
        assert view == base and view
        # The restarted sink found both requests already applied by the CLI and did not re-apply them.
        assert scalar(sink.run, "SELECT countIf(applied_by = 'sink') FROM leadpulse.erasures") == 0
    finally:
        sink.proc.stop()


def test_forget_while_the_sink_is_down_erases_the_anonymous_ids_its_unstored_profile_links(
    broker_settings: Settings, env: dict[str, str], tmp_path: Path
) -> None:
    """The lead's profile (lead_identified with its anonymous id) is on leads.profiles but not yet stored:
    ClickHouse links no anonymous id to the lead. The erasure must still cover the anonymous id, or the
    sink, once back, stores the visitor's anonymous events (no lead id) after the forget."""
    gone, kept = history("L-G3", "A-G3", "wp-3"), history("L-K3", "A-K3", "wp-3")
    publish(broker_settings, [*gone, *kept])  # the sink is down: nothing is stored yet
    done = forget(env, "L-G3")
    assert done.returncode == 0, done.stdout + done.stderr
    (latest,) = [r for r in read_all(broker_settings) if r["erasure_id"] == erasure_id("L-G3")][-1:]
    assert latest["anonymous_ids"] == ["A-G3"]
    sink = Sink(env, int(env["LEADPULSE_SINK_PORT"]), tmp_path / "sink.log")
    try:
        sink.wait_stored("L-K3", "A-K3", ROWS - 1)
        assert stored(sink.run, "L-G3", "A-G3") == 0
        assert scalar(sink.run, "SELECT count() FROM leadpulse.events WHERE anonymous_id = 'A-G3'") == 0
    finally:
        sink.proc.stop()


def test_forget_of_an_id_pasted_with_blanks_still_erases_its_anonymous_ids(
    broker_settings: Settings, env: dict[str, str]
) -> None:
    """The erasure is logged under the stripped id; its anonymous ids must be looked up under it too."""
    publish(broker_settings, history("L-G4", "A-G4", "wp-4"))
    done = forget(env, " L-G4 ")
    assert done.returncode == 0, done.stdout + done.stderr
    (latest,) = [r for r in read_all(broker_settings) if r["erasure_id"] == erasure_id("L-G4")][-1:]
    assert (latest["lead_id"], latest["anonymous_ids"]) == ("L-G4", ["A-G4"])


def test_forget_of_an_anonymous_id_linked_to_a_lead_says_the_lead_stays(
    broker_settings: Settings, env: dict[str, str]
) -> None:
    """An operator given a visitor (cookie) id: forget erases that id only. The person is the lead it is
    stitched to, whose data stays; the command must say so instead of a plain success."""
    publish(broker_settings, history("L-G5", "A-G5", "wp-5"))
    done = forget(env, "A-G5")
    assert done.returncode == 0, done.stdout + done.stderr
    assert "'A-G5' is an anonymous id linked to lead(s) L-G5: only the visitor id is erased" in done.stderr


def test_forget_fails_rather_than_erase_fewer_anonymous_ids_when_leads_profiles_is_not_read_to_its_end(
    broker_settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``profile_links`` reads leads.profiles (kept forever) for the lead's anonymous ids, for at most 600 s.
    Not read to its end in time (a large topic, a slow broker), it returned what it had read so far, and
    ``forget`` logged an erasure without the anonymous ids of the profiles it had not reached, reporting
    success: the visitor data stayed. The read's timeout must fail the forget (re-run), as its other errors
    do. Staged: a read given no time at all."""
    from streams import reader

    publish(broker_settings, [r for r in history("L-P1", "A-P1", "wp-9") if r[0] == "lead_identified"])
    assert profile_links(broker_settings, "L-P1") == ({"A-P1"}, set())
    drain_topics = reader.drain_topics

    def out_of_time(*args: Any, **kwargs: Any) -> Any:
        return drain_topics(*args, **{**kwargs, "max_seconds": 0.0})

    monkeypatch.setattr(reader, "drain_topics", out_of_time)
    with pytest.raises(TimeoutError):
        profile_links(broker_settings, "L-P1")
