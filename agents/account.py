"""Account roll-up: leads sharing a company domain form one buying committee with one account score.

Why the sum of the latest scores: every engaged member of a buying committee adds evidence that the account is
in market, and the sum is what B2B account-based scoring practice uses (a max would hide a committee of five
warm leads behind one). Each lead counts once, with its newest score by ``as_of`` (scores replayed out of
order do not roll back), and disqualified leads count 0.

The worker keeps one ``AccountState`` per domain, on the domain's partition: every ``lead_score`` with an
``account_domain`` is also sent, keyed by domain, to the internal ``leadpulse.internal.accounts`` topic, and
the account step folds it in and emits one ``account_score`` per touched account per batch to
``accounts.scores``. Data flows one way (lead → account); so a ``lead_score`` cannot carry the account total
(it would need every other lead's partition) and its ``account_score`` field stays null: the account's score
is its own record.

Bounded state: an account counts the leads whose newest score is within ``WINDOW_DAYS`` (30; the worker
passes the rules' ``state.account_window_days``) of event time of the account's newest score (``as_of``);
older entries are dropped, and a score older than that window is ignored. Without this an account kept
every lead that ever scored on its domain, including leads that have since moved to another domain (their
new scores go to the new account, the old entry was never replaced): the soak workload accumulated 67k
entries for 10k leads over 1M events, growing linearly (issue #8). The floor only moves forward with the
account's newest ``as_of``, so the kept set does not depend on the order the scores arrive in (short of
the ``MAX_LEADS`` trim).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from agents.rules import DAY_MS

HOP_FIELDS = ("lead_id", "score", "stage", "as_of", "account_domain")  # what fold_lead_score reads
MAX_LEADS = 500
TOP_LEADS = 5
WINDOW_DAYS = 30.0
WINDOW_MS = int(WINDOW_DAYS * DAY_MS)


@dataclass(frozen=True, slots=True)
class AccountState:
    domain: str
    leads: dict[str, tuple[float, int]] = field(default_factory=dict)  # lead_id -> (score, as_of)

    @property
    def score(self) -> float:
        return sum(score for score, _ in self.leads.values())

    def top_leads(self, n: int = TOP_LEADS) -> list[tuple[str, float]]:
        """The n highest scoring leads, ties by lead id so the list is deterministic."""
        ranked = sorted(self.leads.items(), key=lambda kv: (-kv[1][0], kv[0]))
        return [(lead_id, score) for lead_id, (score, _) in ranked[:n]]

    def to_dict(self) -> dict[str, Any]:
        return {"domain": self.domain, "leads": {k: [s, t] for k, (s, t) in self.leads.items()}}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> AccountState:
        return cls(data["domain"], {k: (float(v[0]), int(v[1])) for k, v in data.get("leads", {}).items()})


def normalise_domain(domain: str) -> str:
    """``WWW.Acme.com.`` and ``acme.com`` are one account."""
    domain = domain.strip().lower().rstrip(".")
    return domain.removeprefix("www.")


def new_account(domain: str) -> AccountState:
    return AccountState(normalise_domain(domain))


def newest_as_of(account: AccountState) -> int | None:
    return max((t for _, t in account.leads.values()), default=None)


def apply_lead_score(
    account: AccountState, lead_id: str, score: float, as_of: int, window_ms: int = WINDOW_MS
) -> AccountState:
    """Account after one ``lead_score``: the lead's newest score replaces its older one.

    Bounded to the leads scored within ``window_ms`` of the account's newest score (older entries drop out,
    an older score is ignored) and to ``MAX_LEADS`` leads (the lowest scores drop out first).
    """
    current = account.leads.get(lead_id)
    if current is not None and as_of < current[1]:
        return account
    newest = newest_as_of(account)
    floor = max(as_of, newest if newest is not None else as_of) - window_ms
    if as_of < floor:
        return account
    if newest is not None and as_of > newest:  # the window slid: drop the entries it left behind
        leads = {k: v for k, v in account.leads.items() if v[1] >= floor}
    else:
        leads = dict(account.leads)
    leads[lead_id] = (score, as_of)
    if len(leads) > MAX_LEADS:
        keep = sorted(leads.items(), key=lambda kv: (-kv[1][0], kv[0]))[:MAX_LEADS]
        leads = dict(keep)
    return AccountState(account.domain, leads)


def fold_lead_score(
    account: AccountState | None, record: dict[str, Any], window_ms: int = WINDOW_MS
) -> AccountState | None:
    """The account after one ``lead_score`` record (None: the record names no account)."""
    domain = record.get("account_domain")
    if not domain:
        return account
    account = account if account is not None else new_account(domain)
    score = 0.0 if record.get("stage") == "disqualified" else float(record["score"])
    return apply_lead_score(account, str(record["lead_id"]), score, int(record["as_of"]), window_ms)


def without_lead(account: AccountState, lead_id: str) -> AccountState:
    """The account with one lead taken out (erasure)."""
    return AccountState(account.domain, {k: v for k, v in account.leads.items() if k != lead_id})


def account_score_record(account: AccountState, computed_at: int) -> dict[str, Any]:
    """The ``account_score`` output record (schemas/account_score.avsc)."""
    return {
        "domain": account.domain,
        "score": account.score,
        "leads": len(account.leads),
        "top_leads": [{"lead_id": lead, "score": score} for lead, score in account.top_leads()],
        "as_of": max((t for _, t in account.leads.values()), default=0),
        "computed_at": computed_at,
    }
