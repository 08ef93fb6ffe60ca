"""The topic catalogue: every topic leadpulse uses, its schema, partitions and retention, in one place.

All six input topics share one partition count so that Faust co-partitions them: one lead's events from
every input land on the same partition number, hence the same worker, in order.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

Role = Literal["input", "output", "dlq", "internal"]

INPUT_PARTITIONS = 8
#: An input record larger than this is a poison record (dead-lettered by the worker and the sink): a
#: behavioural event is ~300 bytes and a profile under 2 KB, so 64 KiB only catches garbage or abuse.
MAX_INPUT_RECORD_BYTES = 64 * 1024
DAY_MS = 24 * 3600 * 1000


@dataclass(frozen=True)
class TopicSpec:
    name: str  # contract name without prefix (DESIGN §5)
    schema: str  # value schema in schemas/
    role: Role
    partitions: int = INPUT_PARTITIONS
    compacted: bool = False
    retention_ms: int | None = 30 * DAY_MS  # None = keep forever

    def configs(self) -> dict[str, str]:
        configs = {"cleanup.policy": "compact" if self.compacted else "delete"}
        configs["retention.ms"] = "-1" if self.retention_ms is None else str(self.retention_ms)
        return configs


WEB_VISITS = TopicSpec("events.web_visits", "web_visit", "input")
EMAIL_CLICKS = TopicSpec("events.email_clicks", "email_click", "input")
DOWNLOADS = TopicSpec("events.downloads", "download", "input")
CONTENT_VIEWS = TopicSpec("events.content_views", "content_view", "input")
PROFILES = TopicSpec("leads.profiles", "lead_identified", "input", retention_ms=None)
SALES_ACTIVITIES = TopicSpec("sales.activities", "sales_activity", "input", retention_ms=None)
SCORES = TopicSpec("leads.scores", "lead_score", "output", compacted=True, retention_ms=None)
STAGE_TRANSITIONS = TopicSpec("leads.stage_transitions", "stage_transition", "output")
SLA_TIMEOUTS = TopicSpec("leads.sla_timeouts", "sla_timeout", "output")
HOT_LEADS = TopicSpec("leads.hot", "hot_lead", "output")
# Not in DESIGN §5's table (an addition, nothing there changed): one record per account per worker batch.
ACCOUNT_SCORES = TopicSpec("accounts.scores", "account_score", "output", compacted=True, retention_ms=None)
DLQ = TopicSpec("dlq", "dead_letter", "dlq", partitions=4)
# Worker-internal hop of the identity stitch (alias instructions and forwarded anonymous events, any input
# schema, keyed by the target identity). Not part of the contract; co-partitioned with the inputs.
IDENTITY = TopicSpec("leadpulse.internal.identity", "", "internal", retention_ms=7 * DAY_MS)
# The worker's durable lead state (one record per lead, latest wins; tombstones on erasure). Restored into
# memory for the partitions a worker is assigned; partition = input partition of the lead.
LEAD_STATE = TopicSpec("leadpulse.internal.lead_state", "", "internal", compacted=True, retention_ms=None)
# lead_score records re-keyed by company domain: the hop from the lead's partition to the account's.
ACCOUNTS = TopicSpec("leadpulse.internal.accounts", "", "internal", retention_ms=7 * DAY_MS)
# Erasure log written by `leadpulse forget` (keyed by lead_id, value `lead_erased`): every worker and sink
# reads all of it, so one partition; kept forever so a replay of history cannot bring an erased lead back.
ERASURES = TopicSpec(
    "leadpulse.internal.erasures", "lead_erased", "internal", partitions=1, compacted=True, retention_ms=None
)
# The notifier's per-target progress above its committed offsets (agents/notifier_progress.py): one record
# per group and leads.hot partition, latest wins; offsets and hashed target keys only, no lead data.
NOTIFIER_PROGRESS = TopicSpec(
    "leadpulse.internal.notifier_progress", "", "internal", compacted=True, retention_ms=None
)

TOPICS: tuple[TopicSpec, ...] = (
    WEB_VISITS,
    EMAIL_CLICKS,
    DOWNLOADS,
    CONTENT_VIEWS,
    PROFILES,
    SALES_ACTIVITIES,
    SCORES,
    STAGE_TRANSITIONS,
    SLA_TIMEOUTS,
    HOT_LEADS,
    ACCOUNT_SCORES,
    DLQ,
    IDENTITY,
    LEAD_STATE,
    ACCOUNTS,
    ERASURES,
    NOTIFIER_PROGRESS,
)
INPUTS: tuple[TopicSpec, ...] = tuple(t for t in TOPICS if t.role == "input")
OUTPUTS: tuple[TopicSpec, ...] = tuple(t for t in TOPICS if t.role == "output")
BY_NAME: dict[str, TopicSpec] = {t.name: t for t in TOPICS}
BY_SCHEMA: dict[str, TopicSpec] = {t.schema: t for t in TOPICS if t.role != "internal"}


def contract_name(topic: str, prefix: str = "") -> str:
    """The catalogue name of ``topic``, given with or without the deployment prefix.

    Why not just strip the prefix when the topic starts with it: a prefix is any string (DESIGN §5), and one
    such as ``leads.`` begins contract names too, so the unprefixed ``leads.profiles`` would become
    ``profiles``, which no catalogue knows. The prefix is stripped only when what is left is a catalogue name
    (no contract name is another one with a prefix in front, so this is never ambiguous).
    """
    if prefix and topic.startswith(prefix) and topic[len(prefix) :] in BY_NAME:
        return topic[len(prefix) :]
    return topic


def spec_for(topic: str, prefix: str = "") -> TopicSpec:
    """Catalogue entry of a (possibly prefixed) topic name."""
    try:
        return BY_NAME[contract_name(topic, prefix)]
    except KeyError:
        raise KeyError(f"unknown topic {topic!r}; known: {', '.join(BY_NAME)}") from None
