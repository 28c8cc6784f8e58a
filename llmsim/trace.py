"""Ground truth per request: what the server planned and what it actually emitted, and when.

A request that carries `x-llmsim-trace: 1` has its chunks' deadlines kept as
the pacer sets them (`Pacer.planned`) beside the times they were written
(`Generation.emitted`, stamped in `api.stream_bytes` right after each chunk
was handed to the socket). Just before the stream's terminator the server
sends them as one SSE comment, which SDKs ignore:

    : llmsim-trace {"id":"req_...","queue_ms":0.0,"ttft_ms":600.112,"gaps_ms":[40.03,...],
                    "planned_ttft_ms":600.0,"planned_gaps_ms":[40.0,...]}

and keeps the record for `GET /llmsim/requests/{id}` in a bounded window of
recent traces (`TraceStore`). Times are milliseconds, rounded to the
microsecond; see docs/observability.md for what each one measures.
"""

from __future__ import annotations

import json
import threading
from collections import OrderedDict
from operator import sub
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # pragma: no cover
    from collections.abc import Sequence

    from .engine import Generation

__all__ = ["TRACE_HEADER", "TraceStore", "trace_comment", "trace_record", "wants_trace"]

TRACE_HEADER = "x-llmsim-trace"
TRACE_WINDOW = 1000
"""Traced requests kept for GET /llmsim/requests/{id}, most recent first out last."""


def wants_trace(value: str | None) -> bool:
    """Whether a request header value asks for a trace ("1", "true", "yes", "on")."""
    return value is not None and value.strip().lower() in ("1", "true", "yes", "on")


def _ms(seconds: float) -> float:
    """Milliseconds to the microsecond (as round(ms, 3), at half its cost: no decimal digits to place)."""
    return round(seconds * 1e6) / 1000


def _gaps_ms(stamps: Sequence[float]) -> list[float]:
    """Each gap between consecutive stamps, in _ms's units: one pass, no call per gap."""
    return [round(d * 1e6) / 1000 for d in map(sub, stamps[1:], stamps)]


def trace_record(gen: Generation) -> dict:
    """The trace of a generation so far: queue wait, TTFT and gaps as emitted, and as planned.

    ttft_ms runs from the request's arrival (its first bytes) to the first content chunk
    written; planned_ttft_ms from the arrival to that chunk's deadline. gaps_ms has one
    entry per content chunk after the first. A response with no content has TTFTs of None.
    """
    arrival = gen.arrival if gen.arrival is not None else gen.slot.submitted_at
    emitted = gen.emitted
    planned = (gen.pacer.planned or [])[:len(emitted)] if emitted else []
    return {
        "id": gen.trace_id,
        "queue_ms": _ms(gen.slot.queue_wait_s),
        "ttft_ms": _ms(emitted[0] - arrival) if emitted else None,
        "gaps_ms": _gaps_ms(emitted),
        "planned_ttft_ms": _ms(planned[0] - arrival) if planned else None,
        "planned_gaps_ms": _gaps_ms(planned),
    }


def trace_comment(record: dict) -> bytes:
    """The record as the SSE comment sent just before the stream's terminator."""
    return b": llmsim-trace " + json.dumps(record, separators=(",", ":")).encode() + b"\n\n"


class TraceStore:
    """The last `size` traces by request id (oldest dropped first)."""

    def __init__(self, size: int = TRACE_WINDOW) -> None:
        self.size = size
        self._items: OrderedDict[str, dict] = OrderedDict()
        self._lock = threading.Lock()

    def add(self, record: dict) -> None:
        with self._lock:
            self._items[record["id"]] = record
            self._items.move_to_end(record["id"])
            while len(self._items) > self.size:
                self._items.popitem(last=False)

    def get(self, request_id: str) -> dict | None:
        with self._lock:
            return self._items.get(request_id)

    def __len__(self) -> int:
        return len(self._items)
