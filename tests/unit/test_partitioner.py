"""The partitioner the worker, its sender and the collector share must pick the partition every Kafka client
picks for a key, or one lead's records would split across partitions (and its state with them)."""

from __future__ import annotations

import pytest
from aiokafka.partitioner import murmur2 as aiokafka_murmur2
from hypothesis import given, settings
from hypothesis import strategies as st
from kafka.partitioner.default import murmur2 as kafka_python_murmur2

from streams.partitioner import key_hash, murmur2, partition_of

pytestmark = pytest.mark.unit


@settings(max_examples=500, deadline=None)
@given(st.binary(max_size=64))
def test_murmur2_is_the_hash_of_aiokafka_and_kafka_python(data: bytes) -> None:
    assert murmur2(data) == aiokafka_murmur2(data) == kafka_python_murmur2(data) & 0xFFFFFFFF


@pytest.mark.parametrize("size", range(0, 9))
def test_every_tail_length_is_hashed_like_the_reference(size: int) -> None:
    data = bytes(range(200, 200 + size))  # bytes >= 0x80: the reference masks them as Java's signed bytes
    assert murmur2(data) == aiokafka_murmur2(data)


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=30), st.integers(min_value=1, max_value=64))
def test_a_key_lands_where_the_java_clients_default_partitioner_puts_it(lead: str, count: int) -> None:
    key = lead.encode()
    expected = (aiokafka_murmur2(key) & 0x7FFFFFFF) % count
    assert partition_of(key, count) == expected
    assert partition_of(key, count) == expected  # the memoised answer is the same
    assert 0 <= key_hash(key) <= 0x7FFFFFFF
