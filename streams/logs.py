"""Process logging: one format for every component, and no flood while a dependency is down.

Why the repeat filter: with the broker stopped, the Kafka clients log the same connection error many times
a second (2,660 lines in 10 s across four processes was measured), which buries everything else and fills
disks. The first occurrence of a message is logged; identical ones (same logger, level and text) within
``window_s`` are counted and reported once, with their number, when the message next gets through.
"""

from __future__ import annotations

import logging
import time

FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


class RepeatFilter(logging.Filter):
    def __init__(self, window_s: float = 30.0) -> None:
        super().__init__()
        self.window_s = window_s
        self._seen: dict[tuple[str, int, str], tuple[float, int]] = {}  # key -> (first shown, suppressed)

    def filter(self, record: logging.LogRecord) -> bool:
        key = (record.name, record.levelno, record.getMessage())
        now = time.monotonic()
        shown = self._seen.get(key)
        if shown is not None and now - shown[0] < self.window_s:
            self._seen[key] = (shown[0], shown[1] + 1)
            return False
        if shown is not None and shown[1]:
            record.msg = f"{record.getMessage()} (repeated {shown[1]} more time(s) in {self.window_s:g} s)"
            record.args = None
        self._seen[key] = (now, 0)
        if len(self._seen) > 10_000:  # messages with ids in them: forget the oldest half
            for old in sorted(self._seen, key=lambda k: self._seen[k][0])[:5_000]:
                del self._seen[old]
        return True


def setup_logging(level: str = "INFO", window_s: float = 30.0) -> None:
    """Root logging for a long-running component; the Kafka clients log warnings and errors only."""
    logging.basicConfig(level=level.upper(), format=FORMAT, force=True)
    for handler in logging.getLogger().handlers:
        handler.addFilter(RepeatFilter(window_s))
    for noisy in ("aiokafka", "kafka"):
        logging.getLogger(noisy).setLevel(max(logging.WARNING, logging.getLogger().level))
