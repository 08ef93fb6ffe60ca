"""The erasure log's tail (``streams.erasures.ErasureLog``) outlives a failure that is not the broker's: the
worker, the sink and the notifier each rely on it to see erasures published while they run."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest

from streams import erasures as erasures_module
from streams.erasures import ErasureLog, erasure_record, publish_erasure
from streams.settings import Settings

pytestmark = pytest.mark.integration


async def _until(condition: Any, what: str, timeout_s: float = 20.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.1)


def test_a_fetch_or_a_record_that_raises_does_not_end_the_tail(
    broker_settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Anything but a KafkaError out of the fetch or out of taking a record ended the tail task: the
    process went on, seeing no erasure published after it (a forgotten lead kept being scored and stored
    until a restart), and ``stop()`` raised it. Now the failure is logged and the tail goes on; the record
    that raised is taken again, not skipped (its lead stayed unerased for the life of the process)."""
    real_take = ErasureLog._take
    raised: list[str] = []

    def take_failing_for_one(self: ErasureLog, value: bytes | None, offset: int) -> None:
        record = erasures_module._decode(value, "test")
        if record is not None and record["lead_id"] == "L-poison" and "take" not in raised:
            raised.append("take")
            raise RuntimeError("injected: a record the tail cannot take")
        real_take(self, value, offset)

    monkeypatch.setattr(ErasureLog, "_take", take_failing_for_one)

    async def scenario() -> None:
        log = ErasureLog(broker_settings)
        await log.start()
        try:
            assert log._consumer is not None
            consumer = log._consumer
            real_getmany = consumer.getmany

            async def getmany_failing_once(*args: Any, **kwargs: Any) -> Any:
                if "fetch" not in raised:
                    raised.append("fetch")
                    raise RuntimeError("injected: the fetch failed, not the broker")
                return await real_getmany(*args, **kwargs)

            consumer.getmany = getmany_failing_once  # type: ignore[method-assign]
            now = int(time.time() * 1000)
            await asyncio.to_thread(publish_erasure, broker_settings, erasure_record("L-poison", [], now))
            await asyncio.to_thread(publish_erasure, broker_settings, erasure_record("L-after", [], now))
            await _until(lambda: log.is_erased("L-after"), "the erasure published after both failures")
            assert raised == ["fetch", "take"]
            assert log.is_erased("L-poison")  # the record that raised is taken again (it was skipped)
        finally:
            await log.stop()  # raised the tail's exception before

    asyncio.run(scenario())
