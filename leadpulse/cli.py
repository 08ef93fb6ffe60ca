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
from leadpulse.commands.flag_help import plain_flags_in_help

plain_flags_in_help()

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
    """Broker connection failures end in one line naming the broker, not a traceback of the client
    library: every command that talks to Kafka can meet them (a typo in LEADPULSE_KAFKA_BOOTSTRAP, a
    stopped broker). So does a port another process holds."""
    import logging

    from aiokafka.errors import KafkaError as AioKafkaError
    from kafka.errors import KafkaError

    from leadpulse.commands.cli_output import report_error
    from streams.broker import BrokerError
    from streams.web import PortInUse

    # clickhouse-connect warns "Unexpected Http Driver Exception" before raising the error each command
    # reports in one line; the sink logs its own retries
    logging.getLogger("clickhouse_connect").setLevel(logging.ERROR)
    try:
        app()
    except (KafkaError, AioKafkaError) as exc:
        report_error(_broker_problem(exc))
        raise SystemExit(1) from None
    except (PortInUse, BrokerError) as exc:  # BrokerError: e.g. the broker port answers, but not as Kafka
        report_error(str(exc))
        raise SystemExit(1) from None


def _broker_problem(exc: BaseException) -> str:
    try:
        from streams.settings import load_settings

        where = f" at {load_settings().bootstrap}"
    except Exception:  # the settings are not the problem being reported
        where = ""
    from streams.producer import BrokerUnavailable

    if isinstance(exc, BrokerUnavailable) and exc.__cause__ is not None:
        cause = exc.__cause__
        detail = cause.args[0] if cause.args else ""
        return (
            f"cannot reach the Kafka broker{where} ({type(cause).__name__}: {detail})"
            "; nothing was sent. Is it running? Set LEADPULSE_KAFKA_BOOTSTRAP, or start the local one with "
            "`leadpulse broker`"
        )
    name = type(exc).__name__
    if any(word in name for word in ("Sasl", "Authentication", "Authorization", "Ssl")):
        # the broker answered: "is it running?" would send the operator the wrong way
        return (
            f"the Kafka broker{where} refused this client ({_named(exc)}); check LEADPULSE_KAFKA_SECURITY_"
            "PROTOCOL, LEADPULSE_KAFKA_SASL_MECHANISM, _USERNAME, _PASSWORD and LEADPULSE_KAFKA_SSL_CAFILE"
        )
    return (
        f"cannot reach the Kafka broker{where} ({_named(exc)}); is it running? Set "
        "LEADPULSE_KAFKA_BOOTSTRAP, or start the local one with `leadpulse broker`"
    )


def _named(exc: BaseException) -> str:
    """``Name: message``, once: aiokafka's and kafka-python's errors already put their class name in
    ``str()`` (``KafkaConnectionError: KafkaConnectionError: ...`` otherwise)."""
    text, name = str(exc), type(exc).__name__
    return text if name in text.split(":", 1)[0] else f"{name}: {text}"


if __name__ == "__main__":
    main()
