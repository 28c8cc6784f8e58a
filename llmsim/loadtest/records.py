"""--llm-records FILE: one JSON line per measured request, for `llmsim profile fit` and any later analysis.

Each Locust process that sends requests appends its own lines as requests
finish (one write per line, so the lines of several workers on one machine
interleave whole); the local or master process starts the file afresh. The
format ("llmsim": RECORDS_FORMAT) is documented in docs/record-replay-fit.md.
"""

from __future__ import annotations

import json
from typing import IO, Any

from .metrics import RequestRecord

RECORDS_FORMAT = "requests/1"


def _r(v: float | None) -> float | None:
    return None if v is None else round(v, 3)


def record_line(rec: RequestRecord, *, model: str, stream: bool, users: int | None = None) -> dict[str, Any]:
    """One request as a records line: times in ms, wall-clock start/end in s."""
    return {"llmsim": RECORDS_FORMAT, "start_time": round(rec.start_time, 6), "end_time": round(rec.end_time, 6),
            "model": model, "stream": stream, "status": rec.status, "ok": rec.ok, "error_kind": rec.error_kind,
            "ttft_ms": _r(rec.ttft_ms), "itl_ms": [round(x, 3) for x in rec.itl_ms], "tpot_ms": _r(rec.tpot_ms),
            "e2e_ms": _r(rec.e2e_ms), "prompt_tokens": rec.prompt_tokens, "output_tokens": rec.output_tokens,
            "reasoning_tokens": rec.reasoning_tokens, "usage_reported": rec.usage_reported, "users": users}


class RecordsFile:
    """Appends records lines to FILE, opened on first use."""

    def __init__(self, path: str) -> None:
        self.path = path
        self._fh: IO[str] | None = None

    @staticmethod
    def start(path: str) -> None:
        """Start the file afresh (the local or master process, before any request)."""
        open(path, "w", encoding="utf-8").close()

    def write(self, line: dict[str, Any]) -> None:
        if self._fh is None:
            self._fh = open(self.path, "a", encoding="utf-8")
        self._fh.write(json.dumps(line, separators=(",", ":")) + "\n")
        self._fh.flush()

    def close(self) -> None:
        if self._fh is not None:
            self._fh.close()
            self._fh = None
