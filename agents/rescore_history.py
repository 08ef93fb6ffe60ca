"""A re-scoring history held compactly: each event as its Avro bytes, decoded only when it is replayed.

Why: ``leadpulse rescore`` must see the whole history before replaying any of it (it replays in event-time
order, and a file's bad lines are all named before anything runs). Held as decoded dicts that is ~0.9-1.5 KB
per event, so months of topics (tens of millions of events) did not fit in memory. Here an event costs its
Single Object Encoding (~90 bytes for generated traffic) plus a bytes object, a list slot and an 8-byte
event time (140-175 bytes in all), and its place in the event-time order 8 more (``time_order``).

Exactness: the bytes come from the compiled encoder (``schemas.fast_codec``), which vouches only for records
whose values already have the exact Python types of the schema (so decoding gives an equal record, types
included), and only records with no field outside the schema are encoded. Anything else (a hand-built record
of the Python API) is kept as it was given: slower, never different.
"""

from __future__ import annotations

from array import array
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from schemas.fast_codec import EventCodec, codec_for
from schemas.registry import SchemaRegistry, default_registry

Event = tuple[str, dict[str, Any]]


def event_time(record: dict[str, Any]) -> int:
    """The replay's clock for a record (``0`` when it has none), as ``rescore`` has always read it."""
    return int(record.get("event_time") or 0)


class CompactHistory:
    """Events in input order, as Avro bytes (or the record itself when it cannot round-trip exactly), with
    their event times in an ``array('q')``. Iterating yields the decoded ``(schema, record)`` pairs."""

    def __init__(self, events: Iterable[Event] = (), registry: SchemaRegistry | None = None) -> None:
        registry = registry or default_registry()
        self._codec: EventCodec = codec_for(registry)
        self._fields = {name: len(version.raw["fields"]) for name, version in registry.current.items()}
        self._items: list[bytes | Event] = []
        self._times: array[int] | list[int] = array("q")
        for event in events:
            self.append(event)

    def __len__(self) -> int:
        return len(self._items)

    def append(self, event: Event) -> None:
        schema, record = event
        t = event_time(record)
        data = None
        if type(record) is dict and len(record) == self._fields.get(schema, -1):
            data = self._codec.fast_encode(schema, record)
        self._items.append(event if data is None else data)
        try:
            self._times.append(t)
        except OverflowError:  # an event time beyond 64 bits (the Python API only): plain ints from now on
            self._times = [*self._times, t]

    def _event(self, item: bytes | Event) -> Event:
        return self._codec.decode(item) if isinstance(item, bytes) else item

    def __iter__(self) -> Iterator[Event]:
        for item in self._items:
            yield self._event(item)

    def drop(self, unwanted: Callable[[str, dict[str, Any]], bool]) -> int:
        """Leave out the events ``unwanted`` is true for (each decoded once); returns how many were left out.
        The kept ones keep their bytes: nothing is encoded again."""
        items: list[bytes | Event] = []
        times: array[int] | list[int] = array("q") if isinstance(self._times, array) else []
        for item, t in zip(self._items, self._times, strict=True):
            if not unwanted(*self._event(item)):
                items.append(item)
                times.append(t)
        dropped = len(self._items) - len(items)
        self._items, self._times = items, times
        return dropped

    def time_order(self, up_to: int) -> array[int]:
        """Positions of the events with an event time up to ``up_to``, in event-time order; equal times keep
        their input order (a stable sort, as the worker applies a backlog). Replay them with ``at``.

        Sorted as one int per event, ``time << bits | position`` (exact for any int time; the position breaks
        ties), not as a list of keys beside a list of positions; kept as 8 bytes per event."""
        bits = max(len(self._times).bit_length(), 1)
        keys = [t << bits | i for i, t in enumerate(self._times) if t <= up_to]
        keys.sort()
        mask = (1 << bits) - 1
        return array("q", (key & mask for key in keys))

    def at(self, positions: Iterable[int]) -> Iterator[Event]:
        """The events at ``positions``, decoded one at a time (a replay holds only what its states keep)."""
        for i in positions:
            yield self._event(self._items[i])

    def in_time_order(self, up_to: int) -> Iterator[Event]:
        return self.at(self.time_order(up_to))
