"""``leadpulse forget``: log the erasure first, then erase the lead from ClickHouse here, or wait for the
running sink that owns the embedded engine to do it (docs/privacy.md, "Order of operations"). The erasure
itself is ``sinks.erase.apply_erasure``.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable

from clickhouse_connect.driver.client import Client

from sinks.erase import ErasureResult, apply_erasure, linked_anonymous_ids, linked_leads, recorded_erasure
from streams.settings import Settings
from streams.topics import PROFILES

#: Seconds ``profile_links`` may read ``leads.profiles`` for; not read to its end by then, forget fails.
PROFILES_READ_S = 600.0


class ForgetError(Exception):
    """``forget`` could not finish; the message says which step failed and whether the erasure is logged."""


def profile_links(settings: Settings, identity: str) -> tuple[set[str], set[str]]:
    """(anonymous ids the lead ``identity``'s profiles link to it, leads whose profiles link the anonymous id
    ``identity``), from ``leads.profiles`` (``lead_identified`` with an ``anonymous_id``: the only records the
    worker stitches by, agents/identity.py).

    Why the topic too, and not only ClickHouse: a profile the sink has not stored yet (the sink down or
    behind) links nothing there, and is then dropped as the erased lead's; the anonymous id was missing from
    the erasure, so its own events (no lead id) were stored after the forget, and its state stayed on the
    worker that owns it. The topic is kept forever and read once per forget.

    Raises ``TimeoutError`` (``streams.reader.NotDrained``) when the topic is not read to its end within
    ``PROFILES_READ_S``: links from the part not read would be missing from the erasure, which would then
    leave their anonymous data while reporting success (``read_topic`` returns what it read so far)."""
    from schemas.errors import SchemaError
    from schemas.registry import default_registry
    from streams import reader

    registry = default_registry()
    anonymous: set[str] = set()
    leads: set[str] = set()
    # Avro writes a string as its UTF-8 bytes: a value without them cannot name the identity, and is not
    # decoded (a profile's decode is ~11 µs, the substring test ~0.4 µs).
    needle = identity.encode("utf-8")
    records = reader.drain_topics(
        settings, [settings.topic(PROFILES.name)], idle_ms=300, max_seconds=PROFILES_READ_S
    )
    with contextlib.closing(records):
        for msg in records:
            if msg.value is None or needle not in msg.value:  # a tombstone, or not about the identity
                continue
            try:
                _, record = registry.decode(msg.value)
            except SchemaError:  # the worker dead-letters it: it stitches nothing
                continue
            lead, anon = record.get("lead_id"), record.get("anonymous_id")
            if lead == identity and isinstance(anon, str) and anon:
                anonymous.add(anon)
            elif anon == identity and isinstance(lead, str) and lead:
                leads.add(lead)
    return anonymous, leads


def forget_lead(
    settings: Settings,
    lead_id: str,
    *,
    now_ms: int | None = None,
    timeout_s: float = 60.0,
    note: Callable[[str], None] = lambda _: None,
) -> ErasureResult:
    """Erase ``lead_id``: log the erasure first (workers and sinks stop accepting the lead even if the
    ClickHouse part fails), then delete it from ClickHouse here, or wait for the running sink that owns
    the embedded engine to do it. Raises ForgetError."""
    from sinks.clickhouse import EmbeddedEngineBusy, get_client
    from sinks.migrate import migrate
    from sinks.query_service import client_runner, http_runner, sink_serving, sink_url
    from streams.broker import no_embedded_broker_running, running_broker
    from streams.erasures import erasure_record, publish_erasure, read_all

    # The erasure is logged under the stripped id (erasure_record): its linked ids are looked up under it too
    lead_id = lead_id.strip()
    now = now_ms if now_ms is not None else int(time.time() * 1000)
    via_sink = sink_serving(settings)
    client: Client | None = None
    try:
        if via_sink:
            run = http_runner(sink_url(settings))
            owner = f"the running sink at {sink_url(settings)} owns {settings.shown_dsn}"
            note(f"{owner}: it will apply the erasure")
        else:
            try:
                client = get_client(settings)
            except Exception as exc:
                hint = (
                    f"; a process owns it without serving queries on {sink_url(settings)}: a `leadpulse "
                    "sink` on another port (set LEADPULSE_SINK_PORT to its port: it applies the erasure), or "
                    "another command using it (wait for it to end)"
                    if isinstance(exc, EmbeddedEngineBusy)
                    else ""
                )
                raise ForgetError(f"cannot open ClickHouse at {settings.shown_dsn}: {exc}{hint}") from None
            migrate(client)
            run = client_runner(client)
        anonymous = set(linked_anonymous_ids(run, lead_id))
        if no_embedded_broker_running(settings):
            note(
                "no broker is running: the erasure is logged in a broker started for this command only; "
                "workers and sinks started later will not see it"
            )
        with running_broker(settings) as bootstrap:
            local = settings.model_copy(update={"kafka_bootstrap": bootstrap})
            # A repeated forget must keep the anonymous ids erased before: the log is compacted by lead,
            # so the new record replaces the old one.
            for earlier in read_all(local):
                if earlier["lead_id"] == lead_id:
                    anonymous.update(earlier.get("anonymous_ids") or [])
            try:
                stitched, owners = profile_links(local, lead_id)
            except Exception as exc:
                raise ForgetError(
                    f"could not read {local.topic(PROFILES.name)} for the anonymous ids linked to the lead: "
                    f"{type(exc).__name__}: {exc}; nothing was logged or deleted, re-run `leadpulse forget`"
                ) from None
            anonymous |= stitched
            owners |= set(linked_leads(run, lead_id))
            if owners:
                shown = ", ".join(sorted(owners)[:5]) + (", ..." if len(owners) > 5 else "")
                note(
                    f"{lead_id!r} is an anonymous id linked to lead(s) {shown}: only the visitor id is "
                    "erased (its events, and the lead's profiles and events carrying it); the lead's own "
                    "data stays: `leadpulse forget LEAD_ID` erases the person with every anonymous id"
                )
            record = erasure_record(lead_id, anonymous, now)
            try:
                publish_erasure(local, record)
            except Exception as exc:
                raise ForgetError(
                    f"could not log the erasure on {local.topic('leadpulse.internal.erasures')}: {exc}; "
                    "nothing was deleted, re-run `leadpulse forget`"
                ) from None
        note(f"erasure {record['erasure_id']} logged ({len(record['anonymous_ids'])} anonymous id(s))")
        if client is not None:
            try:
                return apply_erasure(client, record, applied_by="cli")
            except Exception as exc:
                raise ForgetError(
                    f"the erasure is logged (no new rows of the lead will be stored) but deleting from "
                    f"ClickHouse failed: {type(exc).__name__}: {exc}; re-run `leadpulse forget {lead_id}`"
                ) from None
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            rows = recorded_erasure(run, record)
            if rows is not None:
                return ErasureResult(record["erasure_id"], lead_id, rows, applied_by="sink")
            time.sleep(0.25)
        raise ForgetError(
            f"the erasure is logged but the sink at {sink_url(settings)} did not apply it within "
            f"{timeout_s:.0f}s (is it backing off?); it applies it when it can: re-run "
            f"`leadpulse forget {lead_id}` to check"
        )
    finally:
        if client is not None:
            client.close()
