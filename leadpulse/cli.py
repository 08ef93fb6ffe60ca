"""The ``leadpulse`` command. Thin: each command parses its arguments and calls a library function.

Command groups live in ``leadpulse/commands/<area>.py`` (one module per area) and are mounted here, so the
full command list is visible in one place.
"""

from __future__ import annotations

import typer

from leadpulse.commands import (
    analytics_cmds,
    bench_cmds,
    broker_cmds,
    demo_cmds,
    edge_cmds,
    generate_cmds,
    privacy_cmds,
    rescore_cmds,
    sink_cmds,
    worker_cmds,
)

app = typer.Typer(
    name="leadpulse",
    help="Real-time B2B lead scoring, funnel stages, SLA timers and content analytics.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

for module in (
    broker_cmds,
    worker_cmds,
    sink_cmds,
    edge_cmds,
    generate_cmds,
    analytics_cmds,
    demo_cmds,
    privacy_cmds,
    rescore_cmds,
    bench_cmds,
):
    module.register(app)


def main() -> None:
    app()


if __name__ == "__main__":
    main()
