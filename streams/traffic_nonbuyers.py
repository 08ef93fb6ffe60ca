"""Synthetic visitors who are not buyers and must be disqualified by the default rules: students (a flag, an
academic email domain or the title), competitors (competitor.example) and retirees (the title or a flag).

They deliberately do what buyers do (pricing, the catalog form, even a demo request) so that a test can show
that disqualification, not a lack of signals, keeps them from turning hot.
"""

from __future__ import annotations

from streams.traffic_journey import Journey
from streams.traffic_personas import email, read_session


def student(j: Journey) -> None:
    """Disqualified by a flag, an academic email domain or the title; even the catalog form keeps them
    cold."""
    rng, world = j.world.rng, j.world
    profile = world.profile(world.company("low"), "low", "staff")
    variant = rng.randrange(3)
    name = profile["email"].split("@")[0]
    if variant == 0:
        profile.update(flags=["student"], email=f"{name}@mail.example", company_domain=None)
        profile.update(company_name=None)
    elif variant == 1:
        profile.update(
            email=f"{name}@example-univ.ac.jp",
            company_domain="example-univ.ac.jp",
            company_name="Example University",
            job_title="Graduate researcher",
        )
    else:
        profile.update(
            email=f"{name}@state-college.edu",
            company_domain="state-college.edu",
            company_name="State College",
            job_title="Student",
            seniority=None,
        )
    profile.update(industry="education", company_size=None, owner=None, segment=None)
    read_session(j, 2, 4)
    gated = world.item("gated")
    j.visit(url=gated.url, category="resource")
    j.pause(20, 120)
    j.identify(profile)
    j.pause(1, 5)
    j.download(gated)
    j.gap(2, 24)
    j.session()
    j.visit(world.item("pricing"))
    j.pause(20, 200)
    j.view(world.item("case_study"))
    j.pause(20, 200)
    j.download(next(i for i in world.pools["immediate"] if i.asset == "catalog"))
    if rng.random() < 0.5:
        j.gap(1, 12)
        j.view(world.item("webinar"))


def competitor(j: Journey) -> None:
    """From competitor.example: pricing, comparisons, the catalog, sometimes a demo request. Disqualified."""
    rng, world = j.world.rng, j.world
    profile = world.profile(world.company("mid"), "mid", "manager", "Product Marketing Manager")
    name = profile["email"].split("@")[0]
    profile.update(
        email=f"{name}@competitor.example",
        company_domain="competitor.example",
        company_name="Competitor Inc.",
        company_size=800,
        industry="software",
        owner=None,
        flags=["competitor"] if rng.random() < 0.3 else [],
    )
    j.session()
    for role in ("pricing", "comparison", "comparison", "product"):
        j.visit(world.item(role))
        j.pause(20, 200)
    forms = world.pools["immediate"]
    j.visit(url=forms[0].url, category="form")
    j.identify(profile)
    j.pause(1, 5)
    j.download(next(i for i in forms if i.asset == "catalog"))
    j.gap(4, 30)
    j.session()
    j.visit(world.item("pricing"))
    if rng.random() < 0.4:
        j.pause(60, 600)
        j.download(next(i for i in forms if i.asset == "demo_request"))


def retiree(j: Journey) -> None:
    """A retired reader of the newsletter and webinars; disqualified by title or flag."""
    rng, world = j.world.rng, j.world
    profile = world.profile(world.company("low"), "low", None, "Retired CFO")
    if rng.random() < 0.5:
        profile.update(flags=["retiree"], job_title="Advisor")
    profile.update(seniority=None, owner=None)
    j.identify(profile)
    read_session(j, 1, 3)
    j.gap(4, 30)
    email(j, "newsletter")
    j.gap(2, 24)
    email(j, "webinar", follow=False)
    j.pause(60, 600)
    j.view(world.item("webinar"))
