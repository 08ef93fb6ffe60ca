"""Producer SDK: validate, Avro-encode (Single Object Encoding) and publish events, keyed by lead identity.

Keying by ``lead_id`` else ``anonymous_id`` is what makes one lead's events land on one partition, hence
one worker, in order (DESIGN §5). Delivery errors are collected and raised on ``flush``/``close`` so that a
caller never believes an unacknowledged event was sent.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import sys
import threading
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

from kafka import KafkaProducer
from kafka.errors import KafkaTimeoutError
from kafka.producer.future import FutureRecordMetadata

from schemas.errors import FieldError, SchemaError, SchemaValidationError
from schemas.registry import SchemaRegistry, default_registry
from streams.broker import kafka_client_config
from streams.event_hygiene import sent_time_errors
from streams.settings import Settings
from streams.topics import BY_NAME, BY_SCHEMA, INPUTS, MAX_INPUT_RECORD_BYTES, TopicSpec, contract_name


class DeliveryError(Exception):
    """The broker did not acknowledge some records; ``failures`` lists (topic, key, error) and
    ``event_ids`` their event ids in the same order (None for records sent without one), so a caller can
    re-send exactly those: a re-sent event is deduplicated downstream by its ``event_id``."""

    def __init__(
        self,
        failures: list[tuple[str, str | None, str]],
        event_ids: list[str | None] | None = None,
        *,
        stopped_at: int | None = None,
    ) -> None:
        self.failures = failures
        self.event_ids: list[str | None] = event_ids if event_ids is not None else [None] * len(failures)
        #: ``produce_lines``: the line it stopped at (no broker took it), and its report of the lines before
        self.stopped_at = stopped_at
        self.report: ProduceReport | None = None
        first = failures[0]
        shown = self.event_ids[0]
        message = (
            f"{len(failures)} record(s) not acknowledged by the broker, re-send them; first: topic "
            f"{first[0]} key {first[1]}" + (f" event_id {shown}" if shown else "") + f": {first[2]}"
        )
        if stopped_at is not None:
            message += (
                f"; produce stopped at line {stopped_at}: it and the lines after it were not sent (run the "
                "file again: records sent twice are removed downstream by event_id)"
            )
        super().__init__(message)


#: How long a producer waits for a first broker at start (kafka-python's default is 30 s).
BOOTSTRAP_TIMEOUT_MS = 10_000


class BrokerUnavailable(KafkaTimeoutError):  # type: ignore[misc]  # kafka-python is untyped
    """No broker answered while the producer started (a ``KafkaTimeoutError``, as kafka-python raises)."""


def lead_key(record: Mapping[str, Any]) -> str | None:
    """Partition key: the lead when known, else the anonymous visitor."""
    return record.get("lead_id") or record.get("anonymous_id") or None


#: The topics ``resolve`` names in its errors: the worker's own hops and state carry records of no schema of
#: their own (every record was refused). Joined once: ``send`` resolves its topic for every record.
_PRODUCIBLE = ", ".join(sorted(t.name for t in BY_NAME.values() if t.schema))


def resolve(schema_or_topic: str, prefix: str = "") -> TopicSpec:
    name = contract_name(schema_or_topic, prefix)  # a prefix may begin like a contract name ("leads.")
    spec = BY_SCHEMA.get(name) or BY_NAME.get(name)
    if spec is None:
        raise ValueError(f"unknown topic or schema {schema_or_topic!r}; topics: {_PRODUCIBLE}")
    if not spec.schema:
        raise ValueError(
            f"{schema_or_topic!r} is the worker's own topic, not for producers; topics: {_PRODUCIBLE}"
        )
    return spec


class Producer:
    """Thread-safe publisher of leadpulse records. Use as a context manager so ``close`` flushes."""

    def __init__(
        self,
        settings: Settings,
        *,
        bootstrap: str | None = None,
        registry: SchemaRegistry | None = None,
        linger_ms: int = 10,
        batch_size: int = 512 * 1024,
        **kafka_config: Any,
    ) -> None:
        self.settings = settings
        self.registry = registry or default_registry()
        config: dict[str, Any] = {
            "bootstrap_servers": bootstrap or settings.bootstrap,
            "acks": "all",
            "linger_ms": linger_ms,
            "batch_size": batch_size,
            "retries": 5,
            "max_in_flight_requests_per_connection": 1,  # keep per-key order across retries
            # kafka-python waits 30 s for a first broker; the long-running commands give up within 10 s
            # (streams.kafka_close), so `leadpulse produce` and the SDK say "no broker" as soon
            "bootstrap_timeout_ms": BOOTSTRAP_TIMEOUT_MS,
            **kafka_client_config(settings),
        }
        config.update(kafka_config)
        self._config = config
        self._producer = self._connect()
        # held around the client's send and its replacement, never by kafka-python's callbacks
        self._client_lock = threading.Lock()
        # set when delivery failed: the next send starts from a new client (see _replace_client)
        self._client_suspect = False
        self._lock = threading.Lock()
        self._failures: list[tuple[str, str | None, str]] = []
        self._failed_ids: list[str | None] = []
        # records sent and not yet acknowledged or failed, by send number: a flush that times out names them
        self._pending: dict[int, tuple[str, str | bytes | None, str | None]] = {}
        self.sent = 0

    def send(
        self,
        schema_or_topic: str,
        event: Mapping[str, Any] | Any,
        *,
        validate: bool = True,
        headers: list[tuple[str, bytes]] | None = None,
    ) -> FutureRecordMetadata:
        """Validate and publish one event. Raises SchemaValidationError naming the bad fields, also for an
        event more than 23 h in the future or an input event before 2000 (epoch seconds, most likely), and
        for a ``received_at`` outside the same bounds."""
        spec = resolve(schema_or_topic, self.settings.topic_prefix)
        record = (
            dataclasses.asdict(event)
            if dataclasses.is_dataclass(event) and not isinstance(event, type)
            else dict(cast(Mapping[str, Any], event))
        )
        if validate:
            as_sent = {"event_time": record.get("event_time"), "received_at": record.get("received_at")}
            record = self.registry.validate(spec.schema, record)
            # the worker would dead-letter such an event_time (DESIGN §3): say so to the caller instead
            now_ms = int(time.time() * 1000)
            errors = sent_time_errors(record, as_sent, now_ms, input_event=spec in INPUTS)
            if errors:
                raise SchemaValidationError(spec.schema, errors)
        value = self.registry.encode(spec.schema, record)
        if validate and spec in INPUTS and len(value) > MAX_INPUT_RECORD_BYTES:
            # the worker and the sink would each dead-letter it; the collector refuses it the same way
            problem = (
                f"encodes to {len(value)} bytes; the input event limit is {MAX_INPUT_RECORD_BYTES} bytes"
            )
            raise SchemaValidationError(spec.schema, [FieldError("<event>", problem)])
        event_id = record.get("event_id")
        return self.send_encoded(
            self.settings.topic(spec.name),
            lead_key(record),
            value,
            event_id=event_id if isinstance(event_id, str) else None,
            headers=headers,
        )

    def send_encoded(
        self,
        topic: str,
        key: str | bytes | None,
        value: bytes | None,
        *,
        event_id: str | None = None,
        headers: list[tuple[str, bytes]] | None = None,
    ) -> FutureRecordMetadata:
        key_bytes = key.encode() if isinstance(key, str) else key
        try:
            with self._client_lock:
                if self._client_suspect:
                    self._replace_client()
                future = self._producer.send(topic, key=key_bytes, value=value, headers=headers)
        except KafkaTimeoutError as exc:  # no metadata (no broker) within max_block_ms: nothing was sent
            self._client_suspect = True
            shown = key_bytes.decode(errors="replace") if key_bytes is not None else None
            raise DeliveryError([(topic, shown, f"{type(exc).__name__}: {exc}")], [event_id]) from exc
        with self._lock:
            number = self.sent
            self.sent += 1
            self._pending[number] = (topic, key, event_id)
        future.add_callback(self._acknowledged, number)
        future.add_errback(self._record_failure, number)
        return future

    def _connect(self, **overrides: Any) -> KafkaProducer:
        config = {**self._config, **overrides}
        try:
            return KafkaProducer(**config)
        except KafkaTimeoutError as exc:
            waited = config["bootstrap_timeout_ms"] / 1000
            raise BrokerUnavailable(
                f"no Kafka broker answered at {config['bootstrap_servers']} within {waited:g} s ({exc}); "
                "nothing was sent. Is it running? Check LEADPULSE_KAFKA_BOOTSTRAP and the SASL/TLS settings"
            ) from exc

    def _replace_client(self) -> None:
        """A new kafka-python client for the sends after a delivery failure. kafka-python 3.0.12 sometimes
        never reconnects after a spell of refused connections: every metadata refresh logs "No node
        available" although the broker accepts again, and every re-send times out (seen in 2 of 6 fault
        runs). A new client bootstraps from scratch. Whatever the old one still holds was already named in
        a DeliveryError (flush) or is named in the next one (its close fails it), and a re-sent event is
        deduplicated downstream by its ``event_id``. A broker still unreachable raises BrokerUnavailable
        (a KafkaTimeoutError) and the old client stays, suspect, for the next attempt: a send waits for
        that no longer than it would wait for metadata (``max_block_ms``)."""
        fresh = self._connect(
            bootstrap_timeout_ms=min(
                self._config["bootstrap_timeout_ms"], self._config.get("max_block_ms", 60_000)
            )
        )
        old, self._producer = self._producer, fresh
        self._client_suspect = False
        self._close_client(old, timeout=0)

    def _acknowledged(self, number: int, _metadata: Any) -> None:
        with self._lock:
            self._pending.pop(number, None)

    def _record_failure(self, number: int, exc: BaseException) -> None:
        """kafka-python calls an errback with its bound arguments first and the exception last."""
        with self._lock:
            sent = self._pending.pop(number, None)
            if sent is not None:  # (None: already reported by a flush that timed out)
                self._fail(sent, str(exc), type(exc).__name__)

    def _fail(self, sent: tuple[str, str | bytes | None, str | None], text: str, name: str) -> None:
        topic, key, event_id = sent
        shown = key.decode(errors="replace") if isinstance(key, bytes) else key
        self._failures.append((topic, shown, text if text.startswith(name) else f"{name}: {text}"))
        self._failed_ids.append(event_id)

    def flush(self, timeout: float | None = None) -> None:
        """Wait for every acknowledgement; raise DeliveryError naming the records the broker never acked
        (failed, or still unacknowledged when ``timeout`` ran out: the client does not always expire its
        batches by ``delivery_timeout_ms`` while no broker is reachable)."""
        try:
            self._producer.flush(timeout)
        except KafkaTimeoutError as exc:
            with self._lock:
                for sent in self._pending.values():
                    self._fail(sent, f"not acknowledged within the {timeout} s flush ({exc})", "Timeout")
                self._pending.clear()
        with self._lock:
            failures, self._failures = self._failures, []
            failed_ids, self._failed_ids = self._failed_ids, []
        if failures:
            self._client_suspect = True
            raise DeliveryError(failures, failed_ids)

    def close(self, timeout: float | None = 30.0) -> None:
        try:
            self.flush(timeout)
        finally:
            # kafka-python may not close in time (no broker): flush has already raised DeliveryError for
            # every record it held, and that is the error the caller must see, not this one
            self._close_client(self._producer, timeout)

    @staticmethod
    def _close_client(client: KafkaProducer, timeout: float | None) -> None:
        """kafka-python 3.0's close() raises from its own flush *before* it force-closes, so its sender
        thread kept running (one leaked thread per failed close) and ``__del__`` tried again at garbage
        collection ("Exception ignored in KafkaProducer.__del__"). Then abort what it still holds (each
        record is, or will be, in a DeliveryError) and close again: nothing is left to wait for."""
        try:
            client.close(timeout)
        except KafkaTimeoutError:
            client._accumulator.abort_batches(KafkaTimeoutError("producer closed with records unsent"))
            with contextlib.suppress(KafkaTimeoutError):
                client.close(0)

    def __enter__(self) -> Producer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


@dataclass
class ProduceReport:
    sent: int = 0
    rejected: list[tuple[int, str]] = field(default_factory=list)  # (line number, reason)


def produce_lines(producer: Producer, topic: str, lines: Iterable[str | bytes]) -> ProduceReport:
    """Publish JSON lines to a topic; bad lines are reported with their line number, good ones still sent.

    A line may carry ``"type": "<schema>"``, as history files do (``leadpulse generate``, ``rescore``), so
    one format works for every command; the type must then be the topic's schema (no schema has a field of
    that name)."""
    report = ProduceReport()
    spec = resolve(topic, producer.settings.topic_prefix)
    for number, raw in enumerate(lines, start=1):
        if isinstance(raw, bytes):  # decoded line by line: one bad byte is that line's error, not the file's
            try:
                line = raw.decode("utf-8-sig" if number == 1 else "utf-8")
            except UnicodeDecodeError as exc:
                report.rejected.append(
                    (number, f"not UTF-8: byte {raw[exc.start]:#04x} at column {exc.start + 1}")
                )
                continue
        else:
            line = raw
        if not line.strip():
            continue
        try:
            # without its line break: a line cut short ({"a":) was reported at column 1 (of the next line)
            event = json.loads(line.rstrip("\r\n"))
        except json.JSONDecodeError as exc:
            report.rejected.append((number, f"not JSON: {exc.msg} at column {exc.colno}"))
            continue
        except RecursionError:  # '[[[[…' thousands deep: json raises instead of answering
            report.rejected.append((number, "not JSON we accept: nested too deeply"))
            continue
        except ValueError:  # an integer longer than Python converts (int_max_str_digits)
            digits = sys.get_int_max_str_digits()
            report.rejected.append((number, f"not JSON we accept: a number has more than {digits} digits"))
            continue
        try:
            if not isinstance(event, dict):
                raise ValueError(f"expected a JSON object, got {type(event).__name__}")
            if "type" in event:
                kind = event.pop("type")
                if kind != spec.schema:
                    raise ValueError(
                        f"type: {kind!r} does not go to {spec.name} (its records are {spec.schema!r})"
                    )
            producer.send(topic, event)
            report.sent += 1
        except (SchemaError, ValueError) as exc:
            report.rejected.append((number, str(exc)))
        except DeliveryError as exc:  # no broker took the record: the rest of the file is not read
            raise _stopped(producer, exc, number, report) from exc
    try:
        producer.flush()
    except DeliveryError as exc:
        exc.report = report
        raise
    return report


#: How long ``produce_lines`` waits, once stopped, for the records before the line it stopped at.
STOPPED_FLUSH_S = 30.0


def _stopped(producer: Producer, refused: DeliveryError, line: int, report: ProduceReport) -> DeliveryError:
    """The error of a produce stopped at ``line``: it names the records sent before it that the broker never
    acknowledged too. Raised alone, the send's error was replaced by the flush's (the producer's ``close``
    in ``produce_file``), which said neither which line had stopped it nor that the rest were not sent."""
    failures: list[tuple[str, str | None, str]] = []
    event_ids: list[str | None] = []
    try:
        producer.flush(STOPPED_FLUSH_S)
    except DeliveryError as earlier:
        failures, event_ids = earlier.failures, earlier.event_ids
    stopped = DeliveryError(failures + refused.failures, event_ids + refused.event_ids, stopped_at=line)
    stopped.report = report
    return stopped


def produce_file(settings: Settings, path: Path, topic: str, bootstrap: str | None = None) -> ProduceReport:
    resolve(topic, settings.topic_prefix)  # fail before connecting when the topic is wrong
    with path.open("rb") as handle, Producer(settings, bootstrap=bootstrap) as producer:
        return produce_lines(producer, topic, handle)
