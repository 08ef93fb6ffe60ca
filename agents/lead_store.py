"""The lead states of the partitions one worker owns: in memory, restored from and written to a changelog.

Why not decode on restore: a restart restores every lead of its partitions, but a batch touches few of them.
Entries stay as the changelog's bytes until a batch or the SLA scan needs them; the scan finds due leads
from the ``due`` header written next to each state, so it never decodes a lead with nothing pending.

Pure: no Kafka here. The worker feeds ``restore`` from the changelog topic, and every rebalance starts a
new store (agents/worker_rebalance.py), so partitions are never dropped one by one.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass

import orjson

from agents.account import AccountState
from agents.state import LeadState

DUE_HEADER = "due"
#: Changelog keys of account states (on the domain's partition); NUL keeps them apart from any lead key.
ACCOUNT_PREFIX = b"\x00account:"


def due_header(due: int | None) -> list[tuple[str, bytes]]:
    return [] if due is None else [(DUE_HEADER, str(due).encode())]


def due_from_headers(headers: Iterable[tuple[str, bytes]] | None) -> int | None:
    for name, value in headers or ():
        if name == DUE_HEADER:
            return int(value)
    return None


@dataclass(slots=True)
class Entry:
    partition: int
    raw: bytes | None  # changelog bytes, dropped once decoded (the state may change afterwards)
    state: LeadState | None


class LeadStore:
    """Key (lead identity bytes) → state, for the owned partitions; plus the next SLA deadline per key."""

    def __init__(self) -> None:
        self._entries: dict[bytes, Entry] = {}
        self._accounts: dict[bytes, tuple[int, AccountState | bytes]] = {}
        self.deadlines: dict[bytes, int] = {}
        self.partitions: set[int] = set()

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, key: bytes) -> bool:
        return key in self._entries

    def lead_keys(self) -> list[bytes]:
        return list(self._entries)

    def accounts(
        self, undecodable: Callable[[bytes, Exception], None] | None = None
    ) -> list[tuple[bytes, int, AccountState]]:
        """Every account (decodes them all: for erasures, which are rare). With ``undecodable``, an account
        whose stored state does not decode is reported to it and left out instead of raising."""
        found = []
        for key in list(self._accounts):
            try:
                account = self.get_account(key)
            except Exception as exc:
                if undecodable is None:
                    raise
                undecodable(key, exc)
                continue
            if account is not None:
                found.append((key, self._accounts[key][0], account))
        return found

    def partition_of(self, key: bytes) -> int | None:
        entry = self._entries.get(key)
        return None if entry is None else entry.partition

    def restore(self, partition: int, key: bytes, value: bytes | None, due: int | None) -> None:
        """Apply one changelog record (latest wins; ``None`` is a tombstone)."""
        if key.startswith(ACCOUNT_PREFIX):
            if value is None:
                self._accounts.pop(key, None)
            else:
                self._accounts[key] = (partition, value)
            return
        if value is None:
            self.delete(key)
            return
        self._entries[key] = Entry(partition, value, None)
        if due is None:
            self.deadlines.pop(key, None)
        else:
            self.deadlines[key] = due

    def get(self, key: bytes) -> LeadState | None:
        entry = self._entries.get(key)
        if entry is None:
            return None
        if entry.state is None and entry.raw is not None:
            entry.state, entry.raw = LeadState.from_bytes(entry.raw), None
        return entry.state

    def put(self, key: bytes, partition: int, state: LeadState, due: int | None) -> None:
        self._entries[key] = Entry(partition, None, state)
        if due is None:
            self.deadlines.pop(key, None)
        else:
            self.deadlines[key] = due

    def delete(self, key: bytes) -> None:
        self._entries.pop(key, None)
        self.deadlines.pop(key, None)

    def get_account(self, key: bytes) -> AccountState | None:
        found = self._accounts.get(key)
        if found is None:
            return None
        partition, value = found
        if isinstance(value, bytes):
            value = AccountState.from_dict(orjson.loads(value))
            self._accounts[key] = (partition, value)
        return value

    def put_account(self, key: bytes, partition: int, account: AccountState) -> None:
        self._accounts[key] = (partition, account)

    def due(self, now_ms: int) -> list[bytes]:
        return [key for key, due in self.deadlines.items() if due <= now_ms]
