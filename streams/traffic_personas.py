"""The personas of synthetic B2B traffic, each a short script over a ``Journey``.

Why scripts with score budgets: the generator promises which leads turn hot (``TrafficPlan.hot_leads``) and
which are left without follow-up (``sla_misses``), and tests hold it to that through the real scoring core.
So every persona that must *not* turn hot keeps fit + behaviour under the default MQL threshold (the comment
on each script gives its worst case with ``agents/rules.default.yaml``), and the hot ones make their move in
one short burst, so a follow-up placed after the burst is inside any follow-up SLA however the score crossed.
"""

from __future__ import annotations

from streams.traffic_catalogue import SITE
from streams.traffic_journey import HOUR_MS, MINUTE_MS, OWNERS, Company, Journey
from streams.traffic_sales import LOST_REASONS, deal_amount, follow_up

CAMPAIGNS = {  # purpose -> (campaign id, content role its links point to)
    "newsletter": ("cmp-newsletter", "read"),
    "webinar": ("cmp-webinar-invite", "webinar"),
    "case_study": ("cmp-case-study-drip", "case_study"),
    "launch": ("cmp-analytics-launch", "expansion"),
}
IMMEDIATE_DUE_MS = HOUR_MS  # default immediate_hours: the deadline sla_misses are placed to breach


def read_session(j: Journey, lo: int, hi: int, view_share: float = 0.5) -> None:
    """Blog reading; worst case per day with the default rules: 5 visits + 5 views = 15 points."""
    rng, world = j.world.rng, j.world
    j.session()
    for _ in range(rng.randint(lo, hi)):
        item = world.item("read")
        j.visit(item)
        j.pause(20, 240)
        if rng.random() < view_share:
            j.view(item, engaged=rng.random() < 0.6)
            j.pause(5, 30)


def email(j: Journey, purpose: str, follow: bool = True) -> None:
    """A campaign click to a catalogue item, and usually the page visit it leads to."""
    campaign, role = CAMPAIGNS[purpose]
    item = j.world.item(role)
    j.click(campaign, item.url)
    if follow and item.page:
        j.pause(2, 10)
        j.session()
        j.visit(item)


def leave_email(j: Journey) -> None:
    """Unsubscribe (-25) or a hard bounce (-15): the negative email signals."""
    campaign = j.world.pick([c for c, _ in CAMPAIGNS.values()])
    if j.world.rng.random() < 0.75:
        j.click(campaign, f"{SITE}/email/unsubscribe?c={campaign}")
    else:
        j.click(campaign, f"bounce://{campaign}")


def researcher(j: Journey) -> None:
    """Reads, downloads one gated asset, never buys. Worst case: fit 38 + reads 18 + gated 23 = 79."""
    rng, world = j.world.rng, j.world
    read_session(j, 1, 3)
    j.gap(3, 30)
    if rng.random() < 0.3:
        j.session()
        j.visit(url=f"{SITE}/careers", category="careers")  # a job seeker's signal (-10)
        j.pause(30, 120)
    read_session(j, 1, 2, view_share=0.2)
    gated = world.item("gated")
    j.visit(url=gated.url, category="resource")
    j.pause(20, 90)
    j.identify(world.profile(world.company(world.pick(("mid", "low"))), "low"))
    j.pause(1, 5)
    j.download(gated)
    if rng.random() < 0.5:
        j.gap(0.5, 8)
        j.view(gated, engaged=rng.random() < 0.4)
    j.gap(4, 30)
    roll = rng.random()
    if roll < 0.35:
        email(j, "newsletter")
    elif roll < 0.5:
        leave_email(j)


def nurtured(j: Journey) -> None:
    """Engaged but not (yet) buying: webinars, email clicks, a case study. Worst case: 38 + 6 + 5 + 15 + 5 +
    10 + 5 = 84."""
    rng, world = j.world.rng, j.world
    read_session(j, 1, 2, view_share=0.5)
    j.pause(30, 300)
    j.identify(world.profile(world.company("mid"), "mid"))
    j.gap(2, 12)
    email(j, "webinar", follow=False)
    j.pause(60, 600)
    j.view(world.item("webinar"))
    j.gap(6, 24)
    email(j, "case_study", follow=False)
    j.pause(5, 60)
    j.view(world.item("case_study"), engaged=rng.random() < 0.7)
    j.gap(2, 20)
    j.session()
    if rng.random() < 0.6:
        j.visit(world.item("product"))
    else:
        j.view(world.item("video"))
    if rng.random() < 0.15:
        j.gap(2, 24)
        leave_email(j)


def hot_buyer(
    j: Journey,
    followed: bool = True,
    tier: str | None = None,
    seniority: str | None = None,
    company: Company | None = None,
) -> None:
    """Pricing, case studies, then a demo request/inquiry/catalog form: an immediate MQL. Unfollowed ones
    (the SLA misses) stay light before the form (worst case 60 + 2 + 10 + 1 = 73) so the form is what makes
    them hot and their 1 h deadline is the one that breaches."""
    rng, world = j.world.rng, j.world
    tier = tier or ("high" if rng.random() < 0.6 else "mid")
    company = company or world.company(tier)
    profile = world.profile(company, tier, seniority)
    read_session(j, 1, 2, view_share=0.0)
    if followed and rng.random() < 0.3:  # known before: a gated download earlier
        gated = world.item("gated")
        j.pause(30, 300)
        j.identify(profile)
        j.pause(1, 5)
        j.download(gated)
    j.gap(4, 30)
    j.session()
    if followed:  # the buying burst, a few minutes long
        if rng.random() < 0.5:
            j.visit(world.item("product"))
            j.pause(30, 180)
        j.visit(world.item("pricing"))
        j.pause(30, 240)
        cs = world.item("case_study")
        j.visit(cs)
        j.pause(10, 60)
        if rng.random() < 0.5:
            j.view(cs)
            j.pause(10, 60)
        if rng.random() < 0.5:
            j.visit(world.item("comparison"))
            j.pause(30, 180)
    else:
        j.visit(world.item("pricing"))
    j.pause(30, 300)
    form = world.item("immediate")
    j.visit(url=form.url, category="form")
    j.pause(20, 120)
    if not j.known:
        j.identify(profile)
        j.pause(1, 3)
    request = j.download(form)
    j.mql = (j.t, request["event_id"], True)
    if followed:
        if rng.random() < 0.3:  # a tab still open: an anonymous page view after identification
            j.pause(30, 300)
            j.visit(world.item("pricing"), anonymous_only=True)
        follow_up(j, immediate=True, owner=profile["owner"])
    else:
        j.must_fit = j.t + IMMEDIATE_DUE_MS + 10 * MINUTE_MS
        j.window = 1.0


def score_buyer(j: Journey) -> None:
    """Turns hot on score alone: two webinars, case studies, pricing and a comparison within the hour.
    Before: at most 60 + 2 + 7 = 69; the burst adds at least 78 to a fit of at least 42, so it crosses 100
    inside the burst."""
    rng, world = j.world.rng, j.world
    profile = world.profile(world.company("high"), "high")
    read_session(j, 1, 2, view_share=0.0)
    j.pause(30, 300)
    j.identify(profile)
    j.gap(6, 30)
    j.session()
    j.visit(world.item("read"))
    j.pause(30, 200)
    if rng.random() < 0.5:
        j.view(world.item("video"))
    j.gap(6, 24)
    j.session()
    webinars = world.pools["webinar"]
    j.view(webinars[0])
    j.pause(120, 360)
    j.view(webinars[-1])
    for _ in range(2):
        j.pause(30, 200)
        j.view(world.item("case_study"))
    for _ in range(2):
        j.pause(30, 200)
        j.visit(world.item("pricing"))
    j.pause(30, 200)
    last = j.visit(world.item("comparison"))
    j.mql = (j.t, last["event_id"], False)  # the crossing is at or before this event
    follow_up(j, immediate=False, owner=profile["owner"])


def committee_member(j: Journey, company: Company, role: str) -> None:
    """A buying committee member who is not the champion. Worst cases (fit + behaviour): evaluator 48 + 30,
    executive 60 + 20, procurement 42 + 23, user 42 + 23."""
    rng, world = j.world.rng, j.world
    if role == "evaluator":
        j.session()
        j.visit(world.item("product"))
        j.pause(60, 600)
        j.identify(world.profile(company, "high", "manager", "Marketing Operations Manager"))
        j.gap(1, 12)
        j.session()
        j.visit(world.item("integration"))
        j.pause(30, 200)
        j.visit(world.item("evaluation"))
        j.pause(30, 200)
        j.view(world.item("video"))
        j.gap(1, 12)
        j.view(world.item("case_study"))
    elif role == "executive":
        j.identify(world.profile(company, "high", "c_level"), source="crm-import")
        j.gap(2, 24)
        j.session()
        j.view(world.item("case_study"), engaged=False)
        j.pause(60, 300)
        j.visit(world.item("pricing"))
    elif role == "procurement":
        j.identify(world.profile(company, "high", "staff", "Procurement Specialist"), source="crm-import")
        j.gap(2, 24)
        j.session()
        j.visit(world.item("pricing"))
        j.pause(30, 300)
        j.visit(world.item("evaluation"))
        j.pause(30, 300)
        j.visit(world.item("comparison"))
    else:
        read_session(j, 1, 1, view_share=0.0)
        j.pause(30, 300)
        j.identify(world.profile(company, "high", "staff"))
        j.gap(1, 12)
        email(j, "webinar", follow=False)
        j.pause(60, 600)
        j.view(world.item("webinar"), engaged=rng.random() < 0.5)


COMMITTEE_ROLES = ("evaluator", "executive", "procurement", "user")


def customer(j: Journey) -> None:
    """An existing customer from the CRM: onboarding, support docs, the add-on launch, sometimes an upsell
    (some lost). Customers cannot become MQLs, whatever they read."""
    rng, world = j.world.rng, j.world
    tier = world.pick(("high", "mid"))
    profile = world.profile(world.company(tier), tier)
    owner = profile["owner"] = profile["owner"] or world.pick(OWNERS)
    amount = deal_amount(j)
    j.identify(profile, source="crm-import")
    j.pause(5, 60)
    j.sales("closed_won", owner, amount=amount)
    j.gap(0.5, 3)
    j.sales("onboarded", owner)
    j.gap(2, 12)
    j.session()
    for _ in range(rng.randint(1, 3)):
        j.visit(world.item("support"))
        j.pause(30, 600)
    j.gap(6, 24)
    email(j, "launch")
    j.pause(30, 300)
    j.view(world.item("expansion_view"))
    if rng.random() < 0.6:
        j.gap(1, 8)
        j.sales("upsell_opened", owner, amount=round(amount * 0.4, 2))
        if rng.random() < 0.25:
            j.gap(4, 24)
            j.sales("closed_lost", owner, reason=world.pick(LOST_REASONS))


def churned_returning(j: Journey) -> None:
    """A churned customer back in market: the CRM still knows them; old docs, then comparison and pricing,
    then "contact sales" (an immediate MQL) and a follow-up."""
    rng, world = j.world.rng, j.world
    profile = world.profile(world.company("high"), "high")
    j.identify(profile, source="crm-import")
    j.pause(60, 3600)
    j.session()
    j.visit(world.item("support"))
    j.gap(4, 30)
    j.session()
    j.visit(world.item("comparison"))
    j.pause(30, 240)
    j.visit(world.item("pricing"))
    if rng.random() < 0.5:
        j.pause(30, 240)
        j.view(world.item("case_study"))
    j.pause(60, 600)
    contact = next(i for i in world.pools["immediate"] if i.asset == "inquiry")
    inquiry = j.download(contact)
    j.mql = (j.t, inquiry["event_id"], True)
    follow_up(j, immediate=True, owner=profile["owner"])


def anonymous(j: Journey) -> None:
    """A visitor who never gives a name: a few sessions of reading, product pages, pricing or careers."""
    rng, world = j.world.rng, j.world
    for n in range(rng.randint(1, 3)):
        if n:
            j.gap(2, 30)
        read_session(j, 1, 2, view_share=0.3)
        if rng.random() < 0.4:
            j.visit(world.item(world.pick(("product", "pricing", "case_study"))))
        elif rng.random() < 0.2:
            j.visit(url=f"{SITE}/careers", category="careers")
