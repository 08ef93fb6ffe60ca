"""What sales does with a hot lead in synthetic traffic: a follow-up inside the SLA, then the deal's course
(accepted, rejected with or without a reason, meeting, opportunity, won or lost, onboarding, upsell).

Why follow-up delays never scale with the plan's span: they are what the ``hot_lead_follow_up`` SLA measures,
so they stay in real minutes (most before the warning at half the deadline, some after it, none past it).
"""

from __future__ import annotations

from streams.traffic_journey import MINUTE_MS, OWNERS, Journey

OUTCOMES = (
    ("won", 30),
    ("lost", 15),
    ("open", 20),
    ("rejected", 15),
    ("rejected_silent", 10),
    ("accepted", 10),
)
REJECT_REASONS = ("no budget this year", "not a decision maker", "timing: next fiscal year", "incumbent")
LOST_REASONS = ("chose a competitor", "no decision", "price", "project cancelled")


def follow_up(j: Journey, immediate: bool, owner: str | None) -> None:
    """Sales follows a hot lead within its SLA (some after the warning), then the deal goes its way."""
    rng, world = j.world.rng, j.world
    owner = owner or world.pick(OWNERS)
    if immediate:  # due in 1 h, warning at 30 min
        minutes = rng.uniform(3, 29) if rng.random() < 0.7 else rng.uniform(31, 55)
    else:  # score-based enterprise lead: due 4 h after the crossing, which is < 40 min before here
        minutes = rng.uniform(10, 150)
    j.t += int(minutes * MINUTE_MS)
    j.follow_up_at = j.must_fit = j.t
    j.window = 0.6
    outcome = rng.choices([o for o, _ in OUTCOMES], [w for _, w in OUTCOMES])[0]
    j.outcome = outcome
    if rng.random() < 0.8:
        j.sales("first_touch", owner)
        j.gap(0.3, 4)
    if outcome == "rejected":
        j.sales("rejected", owner, reason=world.pick(REJECT_REASONS))
        return
    if outcome == "rejected_silent":
        j.sales("rejected", owner)  # no reason: the rejection_feedback SLA will chase it
        return
    if outcome == "accepted":
        j.sales("accepted", owner)
        return
    if outcome == "open":
        j.sales("meeting_booked", owner)
        if rng.random() < 0.5:
            j.gap(2, 10)
            j.sales("opportunity_created", owner, amount=deal_amount(j))
        return
    j.sales("accepted", owner)
    j.gap(1, 6)
    j.sales("meeting_booked", owner)
    j.gap(0.5, 3)
    j.view(j.world.item("sales_deck"), channel="sales")
    j.gap(2, 8)
    amount = deal_amount(j)
    j.sales("opportunity_created", owner, amount=amount)
    j.gap(3, 12)
    if outcome == "lost":
        j.sales("closed_lost", owner, reason=world.pick(LOST_REASONS))
        return
    j.sales("closed_won", owner, amount=amount)
    j.gap(1, 4)
    j.sales("onboarded", owner)
    j.gap(2, 10)
    j.session()
    j.visit(j.world.item("support"))
    if rng.random() < 0.4:
        j.gap(2, 10)
        j.sales("upsell_opened", owner, amount=round(amount * 0.3, 2))


def deal_amount(j: Journey) -> float:
    return float(j.world.rng.randrange(12, 250) * 1000)
