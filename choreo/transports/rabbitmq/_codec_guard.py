"""Input that pamqp cannot decode must not kill aiormq's frame reader.

Two kinds of foreign input did: a ``timestamp`` property out of ``datetime``'s range (a
publisher that sends microseconds: ``ValueError: year 58860 is out of range``) and a
header table nested some hundreds of levels deep (``RecursionError``). The reader died,
the connection reconnected about once a second forever, and nothing was consumed.

:func:`install` wraps pamqp's decoders for timestamps and tables (process-wide; choreo's
RabbitMQ transport is the only part of choreo that uses pamqp): an out-of-range timestamp
decodes to :data:`OUT_OF_RANGE`, and a property table nested deeper than
:data:`MAX_DEPTH` is skipped by its length and decodes to an :class:`UndecodableTable`.
``_amqp.from_delivered`` turns either into ``Message.undecodable``, which dispatch
dead-letters with the reason. Both checks are identity checks, free on the hot path.
"""

from __future__ import annotations

import datetime
import struct
from collections.abc import Callable
from typing import Any

from pamqp import decode

__all__ = ["MAX_DEPTH", "OUT_OF_RANGE", "UndecodableTable", "install"]

MAX_DEPTH = 64
OUT_OF_RANGE = datetime.datetime.max.replace(tzinfo=datetime.UTC)


class UndecodableTable(dict[str, Any]):
    """A header table that could not be decoded; ``reason`` says why."""

    reason = ""


class _TooDeep(Exception):
    pass


_depth = 0  # decoding is synchronous: a plain counter follows the nesting
_UNSIGNED_64 = struct.Struct(">Q")


def _timestamp(value: bytes) -> tuple[int, datetime.datetime]:
    """pamqp's timestamp decoding (seconds; milliseconds past 2106), in one step, with an
    out-of-range value decoded to :data:`OUT_OF_RANGE` instead of raising."""
    try:
        (seconds,) = _UNSIGNED_64.unpack_from(value, 0)
    except struct.error:
        raise ValueError("Could not unpack timestamp value") from None
    if seconds > 0xFFFFFFFF:
        seconds /= 1000.0
    try:
        return 8, datetime.datetime.fromtimestamp(seconds, tz=datetime.UTC)
    except (ValueError, OverflowError, OSError):
        return 8, OUT_OF_RANGE


def _nested(decoder: Callable[[bytes], tuple[int, Any]]) -> Callable[[bytes], tuple[int, Any]]:
    def decode_nested(value: bytes) -> tuple[int, Any]:
        global _depth
        if _depth >= MAX_DEPTH:
            raise _TooDeep
        _depth += 1
        try:
            return decoder(value)
        finally:
            _depth -= 1

    return decode_nested


def _table(value: bytes) -> tuple[int, Any]:
    """A top-level table (the ``headers`` property, method arguments)."""
    try:
        return _original_table(value)
    except (_TooDeep, RecursionError):
        length = struct.unpack(">I", value[0:4])[0]
        table = UndecodableTable()
        table.reason = f"a header table is nested more than {MAX_DEPTH} levels deep"
        return 4 + length, table


_original_table = decode.field_table


def install() -> None:
    """Wrap pamqp's decoders (idempotent)."""
    if decode.METHODS.get("timestamp") is _timestamp:
        return
    decode.METHODS["timestamp"] = _timestamp
    decode.TABLE_MAPPING[b"T"] = _timestamp
    decode.METHODS["table"] = _table
    decode.TABLE_MAPPING[b"F"] = _nested(decode.field_table)
    decode.TABLE_MAPPING[b"A"] = _nested(decode.field_array)
