"""The HTTP collector: ``POST /v1/events`` → validate → Avro → Kafka, answering only after the broker acked.

Why 202 waits for the broker: a tracker that got 202 drops its copy of the events, so answering before the
acknowledgement would lose them whenever the broker is down. The wait costs a few milliseconds with an
aiokafka producer (linger 5 ms), and the measured throughput is in ``bench/collector_bench.py``.

Request rules live in the pure ``streams/intake.py``; this module is the aiohttp shell: auth, CORS, limits,
metrics, publishing; ``streams/collector_process.py`` runs it as ``leadpulse collector``. The API is
documented in ``docs/ingestion.md``.
"""

from __future__ import annotations

import logging
import math
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from aiohttp import web
from prometheus_client import CollectorRegistry

from schemas.errors import SchemaValidationError
from schemas.fast_codec import codec_for
from schemas.registry import SchemaRegistry, default_registry
from streams.bots import is_bot
from streams.collector_publishers import (
    AioKafkaPublisher,
    InFlight,
    ProducerStartFailed,
    PublishCut,
    Publisher,
    PublishError,
    start_waiting,
)
from streams.collector_stop import StoppingRunner, admitted, request_began, request_ended, shutting_down
from streams.intake import (
    BROWSER_TYPES,
    EVENT_TYPES,
    Accepted,
    BodyError,
    Envelope,
    Limits,
    Outcome,
    Rejected,
    decompress,
    key_from_authorization,
    normalise_event,
    parse_body,
    source_for_key,
    too_large,
)
from streams.metrics import Metrics
from streams.producer import lead_key
from streams.rate_limit import TokenBuckets
from streams.settings import Settings
from streams.topics import BY_SCHEMA, MAX_INPUT_RECORD_BYTES
from streams.web import PortInUse, add_ops_routes

log = logging.getLogger(__name__)

TRACKER_JS = Path(__file__).resolve().parent / "tracker.js"


def _error(status: int, code: str, message: str, **headers: str) -> web.Response:
    return web.json_response({"error": code, "message": message}, status=status, headers=headers or None)


class Collector:
    """One collector process: build with settings, serve ``app()``; the publisher starts with the app."""

    def __init__(
        self,
        settings: Settings,
        *,
        metrics: Metrics | None = None,
        registry: SchemaRegistry | None = None,
        limits: Limits | None = None,
        publisher: Publisher | None = None,
        allowed_origin: str = "*",
        server_sources: frozenset[str] | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.settings = settings
        self.metrics = metrics or Metrics(CollectorRegistry(), component="collector")
        self.registry = registry or default_registry()
        self.codec = codec_for(self.registry)
        # schema name -> (prefixed topic, topic name for metrics), looked up once per name
        self._topics = {name: (settings.topic(spec.name), spec.name) for name, spec in BY_SCHEMA.items()}
        self.limits = limits or Limits()
        self.publisher: Publisher = publisher or AioKafkaPublisher(settings)
        self.allowed_origin = allowed_origin
        self.keys = {source: key.get_secret_value().encode() for source, key in settings.write_keys.items()}
        # Sources that may send server-side types: LEADPULSE_CRM_WRITE_KEY_SOURCES (see docs/ingestion.md).
        self.server_sources = settings.crm_sources if server_sources is None else server_sources
        self.clock = clock
        self.rate_limits = TokenBuckets(settings.collector_rate_limit, settings.collector_rate_burst)
        self.started = False
        # at a stop (aiohttp's on_shutdown, the port closed) requests in flight get a grace, then a 503
        self.in_flight = InFlight(settings.collector_stop_grace_s)
        self.last_publish_error: str | None = None

    def app(self, start_publisher: bool = True) -> web.Application:
        """The aiohttp app; it starts the publisher at startup unless ``start_publisher`` is False (then
        ``start_publisher_waiting`` does, with the port already served: ``run_collector``)."""
        app = web.Application(
            client_max_size=self.limits.max_body_bytes,
            middlewares=[self._middleware],
            handler_args={"auto_decompress": False},  # decoded by streams.intake.decompress, with JSON errors
        )
        app.router.add_post("/v1/events", self.handle_events)
        app.router.add_route("OPTIONS", "/v1/events", self.handle_preflight)
        app.router.add_get("/v1/tracker.js", self.handle_tracker)
        add_ops_routes(app, self.metrics.registry, self.ready)
        if start_publisher:
            app.on_startup.append(self._start)
        app.on_shutdown.append(self.in_flight.begin_stop)
        app.on_cleanup.append(self._stop)
        return app

    async def _start(self, app: web.Application) -> None:
        await self.start_publisher_waiting(0.0)

    async def start_publisher_waiting(self, wait_s: float) -> None:
        """Start the publisher, retrying an unreachable broker for up to ``wait_s`` (0: one attempt)."""
        try:
            if wait_s > 0:
                await start_waiting(self.publisher, wait_s, self._retrying)
            else:
                await self.publisher.start()
        except OSError as exc:
            # a missing CA file was once reported as LEADPULSE_COLLECTOR_PORT's problem; name its settings
            raise ProducerStartFailed(
                f"collector cannot start its Kafka producer ({type(exc).__name__}: {exc}); check "
                "LEADPULSE_KAFKA_BOOTSTRAP and the SASL/TLS settings (LEADPULSE_KAFKA_SSL_CAFILE)"
            ) from exc
        self.started = True
        log.info("collector: Kafka producer started (%s)", self.settings.bootstrap)

    def _retrying(self, exc: BaseException, left_s: float) -> None:
        log.warning(
            "collector: cannot reach the Kafka broker at %s yet (%s); retrying for %.0f s more "
            "(LEADPULSE_COLLECTOR_BROKER_WAIT_S), /ready says not ready meanwhile",
            self.settings.bootstrap,
            exc or type(exc).__name__,
            left_s,
        )

    async def _stop(self, app: web.Application) -> None:
        self.in_flight.cancel()
        self.started = False
        await self.publisher.stop()

    def ready(self) -> tuple[bool, dict[str, Any]]:
        detail: dict[str, Any] = {"producer_started": self.started, "write_keys": len(self.keys)}
        if not self.started:
            detail["waiting_for"] = f"Kafka broker at {self.settings.bootstrap}"
        if self.last_publish_error:
            detail["last_publish_error"] = self.last_publish_error
        if self.in_flight.stopping:
            detail["stopping"] = True
        return self.started and bool(self.keys) and not self.in_flight.stopping, detail

    @web.middleware
    async def _middleware(
        self, request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
    ) -> web.StreamResponse:
        """CORS on every answer (errors included, or the browser hides them) and request metrics."""
        start = time.perf_counter()
        request_began(request)  # the stop waits for it to be answered (StoppingRunner)
        try:
            response = await handler(request)
        except web.HTTPException as exc:
            response = exc
            if exc.status >= 400 and exc.content_type != "application/json":
                # aiohttp's own 404/405 are text/plain; every other error here is {"error", "message"}
                response = _error(
                    exc.status,
                    exc.reason.lower().replace(" ", "_"),
                    f"{request.method} {request.path}: {exc.reason}"
                    + ("; use POST /v1/events" if exc.status == 405 else ""),
                    **{k: v for k, v in exc.headers.items() if k == "Allow"},
                )
        except Exception:  # a bug must still answer JSON with CORS, and be counted
            log.exception("collector: unexpected error answering %s %s", request.method, request.path)
            response = _error(500, "internal_error", "the collector failed on this request; see its log")
        finally:
            request_ended(request)
        if self.in_flight.stopping:  # Connection: close: its client's next request goes to another collector
            response.force_close()
        response.headers["Access-Control-Allow-Origin"] = self.allowed_origin
        if request.path.startswith("/v1/"):
            self.metrics.collector_requests.labels(status=str(response.status)).inc()
            self.metrics.collector_request_seconds.observe(time.perf_counter() - start)
        return response

    async def handle_preflight(self, request: web.Request) -> web.Response:
        return web.Response(
            status=204,
            headers={
                "Access-Control-Allow-Methods": "POST, OPTIONS",
                # Content-Encoding: a browser fetch that gzips its body (docs/ingestion.md) must be allowed
                "Access-Control-Allow-Headers": "Authorization, Content-Type, Content-Encoding",
                "Access-Control-Max-Age": "86400",
            },
        )

    async def handle_tracker(self, request: web.Request) -> web.Response:
        return web.Response(
            body=TRACKER_JS.read_bytes(),
            content_type="application/javascript",
            headers={"Cache-Control": "public, max-age=3600"},
        )

    async def handle_events(self, request: web.Request) -> web.Response:
        received_at = int(self.clock() * 1000)
        # begun after the stop: refused unread (re-sent); one whose head was arriving then: read, in the grace
        if self.in_flight.stopping and (self.in_flight.cut_off or not admitted(request)):
            return shutting_down("the collector is stopping")
        if request.content_length is not None and request.content_length > self.limits.max_body_bytes:
            return self._too_large(request.content_length)
        header_key = key_from_authorization(request.headers.get("Authorization"))
        outside_body = header_key or request.query.get("write_key")
        if outside_body and source_for_key(self.keys, outside_body) is None:  # refused unread
            return self._unauthorized(outside_body, events=0)
        try:
            raw = await request.read()
        except web.HTTPRequestEntityTooLarge:
            return self._too_large(None)
        except ConnectionResetError:  # the client went before its body ended (a cancelled beacon): not ours
            return _error(400, "incomplete_body", "the connection closed before the body was complete")
        try:
            body = decompress(raw, request.headers.get("Content-Encoding"), self.limits.max_body_bytes)
            envelope = parse_body(body, self.limits)
        except BodyError as exc:
            if exc.status == 413:  # a batch over the limit was parsed: its events count; a body was not: 1
                refused = exc.events if exc.events is not None else 1
                self.metrics.collector_events.labels(source="unknown", result="too_large").inc(refused)
            return _error(exc.status, exc.code, str(exc))
        presented = outside_body or envelope.write_key
        source = source_for_key(self.keys, presented)
        if source is None:
            return self._unauthorized(presented, events=len(envelope.events))
        return await self._accept(request, source, envelope, received_at)

    def _unauthorized(self, presented: str | None, events: int) -> web.Response:
        if events:
            self.metrics.collector_events.labels(source="unknown", result="unauthorized").inc(events)
        problem = "missing write key" if not presented else "unknown write key"
        return _error(
            401,
            "unauthorized",
            f"{problem}: send Authorization: Bearer <write key>, basic auth with "
            "the key as user name, ?write_key= in the URL, or write_key in the body",
            **{"WWW-Authenticate": "Bearer"},
        )

    async def _accept(
        self, request: web.Request, source: str, envelope: Envelope, received_at: int
    ) -> web.Response:
        """Rate limit, bot filter, validate, publish: a request whose key is known."""
        wait_s = self.rate_limits.take(source, len(envelope.events), self.clock())
        if wait_s:
            self.metrics.collector_events.labels(source=source, result="rate_limited").inc(
                len(envelope.events)
            )
            retry = "never as one request: split it" if math.isinf(wait_s) else f"in {math.ceil(wait_s)} s"
            return _error(
                429,
                "rate_limited",
                f"write key {source!r} is over {self.settings.collector_rate_limit:g} events/s (bursts to "
                f"{self.settings.collector_rate_burst}); nothing was accepted, retry the same batch {retry}",
                **({} if math.isinf(wait_s) else {"Retry-After": str(math.ceil(wait_s))}),
            )
        # Bot filtering looks at the visitor's user agent: the browser's own (browsers send an Origin with
        # every POST, the tracker's beacons included), or one forwarded per event by a server-side
        # integration. Where the key was put says nothing: a server-side curl may use ?write_key= too.
        browser = "Origin" in request.headers
        header_is_bot = browser and is_bot(request.headers.get("User-Agent"))  # once per request
        allowed = EVENT_TYPES if source in self.server_sources else BROWSER_TYPES
        outcome = Outcome()
        sent_at = envelope.sent_at
        registry, limits, codec = self.registry, self.limits, self.codec
        for index, event in enumerate(envelope.events):
            forwarded_ua = event.get("user_agent") if isinstance(event, dict) else None
            if (forwarded_ua is None and header_is_bot) or (
                isinstance(forwarded_ua, str) and is_bot(forwarded_ua)
            ):
                outcome.bots_dropped += 1
                continue
            result = normalise_event(
                event,
                index,
                source=source,
                received_at=received_at,
                batch_sent_at=sent_at,
                registry=registry,
                limits=limits,
                allowed_types=allowed,
                codec=codec,
            )
            if isinstance(result, Accepted):
                outcome.accepted.append(result)
            else:
                outcome.rejected.append(result)
        if outcome.accepted:
            topics = self._topics
            encode = codec.encode
            messages = []
            kept = []
            for a in outcome.accepted:
                try:
                    value = encode(a.schema, a.record)
                except SchemaValidationError as exc:  # text validation let through (a lone surrogate)
                    event_id = a.record.get("event_id")
                    outcome.rejected.append(
                        Rejected(a.index, event_id if isinstance(event_id, str) else None, exc.errors)
                    )
                    continue
                if len(value) > MAX_INPUT_RECORD_BYTES:  # the worker and the sink would dead-letter it
                    outcome.rejected.append(too_large(a, len(value)))
                else:
                    kept.append(a)
                    key = lead_key(a.record)
                    messages.append((topics[a.schema][0], key.encode() if key else None, value))
            if len(kept) < len(outcome.accepted):
                outcome.accepted = kept
                outcome.rejected.sort(key=lambda r: r.index)
        if outcome.accepted:
            try:
                if not self.started:  # run_collector still waits for the broker: no producer to publish with
                    raise PublishError(
                        f"the collector has not reached the broker {self.settings.bootstrap} yet"
                    )
                await self.in_flight.publish(self.publisher, messages)
            except PublishCut as exc:
                self.metrics.collector_events.labels(source=source, result="unavailable").inc(len(messages))
                return shutting_down(str(exc))
            except PublishError as exc:
                self.last_publish_error = str(exc)
                log.warning("collector: %s", exc)
                self.metrics.collector_events.labels(source=source, result="unavailable").inc(len(messages))
                return _error(
                    503,
                    "broker_unavailable",
                    f"{exc}; the request was not accepted, retry it with the same event_ids "
                    "(duplicates are removed downstream)",
                    **{"Retry-After": "5"},
                )
            self.last_publish_error = None  # acknowledged again: /ready must not show the old error
            ingested = self.metrics.events_ingested
            for schema, count in Counter(a.schema for a in outcome.accepted).items():
                ingested.labels(topic=topics[schema][1]).inc(count)
        self._count(source, outcome)
        return web.json_response(outcome.body(), status=outcome.status)

    def _count(self, source: str, outcome: Outcome) -> None:
        events = self.metrics.collector_events
        if outcome.accepted:
            events.labels(source=source, result="accepted").inc(len(outcome.accepted))
        if outcome.rejected:
            events.labels(source=source, result="invalid").inc(len(outcome.rejected))
        if outcome.bots_dropped:
            events.labels(source=source, result="bot").inc(outcome.bots_dropped)
            self.metrics.bots_dropped.inc(outcome.bots_dropped)

    def _too_large(self, length: int | None) -> web.Response:
        self.metrics.collector_events.labels(source="unknown", result="too_large").inc()
        size = f"{length} bytes" if length is not None else "body"
        return _error(
            413,
            "body_too_large",
            f"{size} exceeds the limit of {self.limits.max_body_bytes} bytes; "
            f"send at most {self.limits.max_batch} events per request",
        )


async def serve(collector: Collector, host: str, port: int, start_publisher: bool = True) -> web.AppRunner:
    """Start serving; returns the runner (``await runner.cleanup()`` stops it, flushing the producer).

    The producer starts first (``runner.setup``; not at all without ``start_publisher``), then the port is
    bound: only the bind's OSError is the port's, and this is the one place that names it."""
    runner = StoppingRunner(collector.app(start_publisher), collector.in_flight, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, host, port)
    try:
        await site.start()
    except OSError as exc:
        await runner.cleanup()
        raise PortInUse(
            f"collector cannot listen on {host}:{port} (LEADPULSE_COLLECTOR_PORT): {exc.strerror}"
        ) from exc
    return runner
