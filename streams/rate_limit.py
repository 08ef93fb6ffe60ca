"""Per-write-key rate limits for the collector (DESIGN §10: "collector write keys and size/rate limits").

A token bucket per source: ``rate`` events per second, bursts up to ``burst``. A request is taken whole or
refused whole (429 with Retry-After), so a client's retry of the same batch (same event ids) is all it
needs. Why per key: one misbehaving integration (a loop re-sending its backlog) must not crowd out the
others, and keys are what the collector already knows its clients by. Pure: the clock is passed in.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field


@dataclass
class TokenBuckets:
    rate: float  # events per second per key; 0 = no limit
    burst: float
    _buckets: dict[str, tuple[float, float]] = field(default_factory=dict)  # key -> (tokens, at)

    def take(self, key: str, events: int, now: float) -> float:
        """0 when ``events`` may pass (and are counted), else the seconds until they could."""
        if self.rate <= 0:
            return 0.0
        tokens, at = self._buckets.get(key, (self.burst, now))
        # max(0, …): the clock is the wall clock (the collector's, which stamps received_at); stepped back by
        # NTP, a negative elapsed time put the bucket that many seconds of events into debt (a lockout)
        tokens = min(self.burst, tokens + max(0.0, now - at) * self.rate)
        if events <= tokens:
            self._buckets[key] = (tokens - events, now)
            return 0.0
        self._buckets[key] = (tokens, now)
        if events > self.burst:
            return math.inf  # never: the request is larger than a whole burst
        return (events - tokens) / self.rate
