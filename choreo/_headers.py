"""Headers that any AMQP encoder can send, within a frame: what copies of a consumed
message carry (dead letters, retry and quarantine copies).

A foreign publisher's headers may hold what the client library decodes but cannot
encode again (a non-UTF-8 long string arrives as bytes, pamqp sends every float as a
32-bit float), or be so large that the copy, with what choreo adds, no longer fits in one
frame (RabbitMQ then closes the connection with FRAME_ERROR). :func:`sendable` turns such
values into strings, trims what choreo adds first, then drops the largest foreign headers,
and names every change in one header, so nothing is lost silently.
"""

from __future__ import annotations

import datetime
import decimal
import math
from collections.abc import Mapping
from typing import Any

__all__ = ["HEADER_BUDGET", "sendable"]

HEADER_BUDGET = 64 * 1024  # bytes of encoded headers: half of RabbitMQ's default frame_max
_FLOAT32_MAX = 3.4028234663852886e38
_INT64 = 2**63
_MAX_DEPTH = 16


def _clean(value: Any, depth: int = 0) -> tuple[Any, bool]:
    """``value`` as something encodable, and whether it had to change."""
    if value is None or isinstance(value, bool | datetime.datetime | decimal.Decimal):
        return value, False
    if isinstance(value, int):
        return (value, False) if -_INT64 <= value < _INT64 else (str(value), True)
    if isinstance(value, float):
        if math.isfinite(value) and abs(value) <= _FLOAT32_MAX:
            return value, False
        return repr(value), True
    if isinstance(value, str):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            return value.encode("utf-8", "replace").decode("utf-8"), True
        return value, False
    if isinstance(value, bytes | bytearray):
        try:
            return bytes(value).decode("utf-8"), True
        except UnicodeDecodeError:
            return bytearray(value), not isinstance(value, bytearray)
    if depth < _MAX_DEPTH and isinstance(value, Mapping):
        cleaned = {str(k): _clean(v, depth + 1) for k, v in value.items()}
        return {k: v for k, (v, _) in cleaned.items()}, any(c for _, c in cleaned.values())
    if depth < _MAX_DEPTH and isinstance(value, list | tuple):
        items = [_clean(v, depth + 1) for v in value]
        return [v for v, _ in items], any(c for _, c in items) or isinstance(value, tuple)
    return repr(value)[:256], True


def _size(value: Any) -> int:
    """About how many bytes ``value`` takes in an AMQP field table (an upper bound)."""
    if isinstance(value, str):
        return 5 + len(value.encode("utf-8"))
    if isinstance(value, bytes | bytearray):
        return 5 + len(value)
    if isinstance(value, Mapping):
        return 5 + sum(2 + len(str(k).encode("utf-8")) + _size(v) for k, v in value.items())
    if isinstance(value, list):
        return 5 + sum(_size(v) for v in value)
    return 10


def sendable(
    headers: Mapping[str, Any],
    *,
    ours: tuple[str, ...],
    note_header: str,
    budget: int = HEADER_BUDGET,
) -> dict[str, Any]:
    """``headers`` made encodable and within ``budget``: values no encoder takes become
    strings; when too large, the headers named in ``ours`` (what choreo added, largest
    first) are cut to 256 characters, then the largest other headers are dropped. What
    changed is listed in ``note_header``."""
    cleaned: dict[str, Any] = {}
    changed: list[str] = []
    for key, value in headers.items():
        cleaned[key], was = _clean(value)
        if was:
            changed.append(f"stringified {key}")
    if _size(cleaned) > budget:
        for key in sorted(ours, key=lambda k: -_size(cleaned.get(k, ""))):
            value = cleaned.get(key)
            if isinstance(value, str) and len(value) > 256:
                cleaned[key] = value[:256] + "...(truncated)"
                changed.append(f"truncated {key}")
            if _size(cleaned) <= budget:
                break
    if _size(cleaned) > budget:
        foreign = sorted((k for k in cleaned if k not in ours), key=lambda k: -_size(cleaned[k]))
        for key in foreign:
            del cleaned[key]
            changed.append(f"dropped {key}")
            if _size(cleaned) <= budget:
                break
    if changed:
        cleaned[note_header] = "; ".join(changed)[:1024]
    return cleaned
