"""Server-side counters, exposed as JSON (/llmsim/stats) and Prometheus text (/metrics).

Updated once per request and once per stream end, never per token, so the
counters cost nothing on the streaming hot path.
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from dataclasses import dataclass, field


@dataclass
class ServerStats:
    started: float = field(default_factory=time.time)
    requests: Counter = field(default_factory=Counter)  # (endpoint, status) -> n
    active_streams: int = 0
    output_tokens: int = 0
    prompt_tokens: int = 0
    disconnects: int = 0
    faults: Counter = field(default_factory=Counter)  # injected fault kind -> n
    cache_queries: Counter = field(default_factory=Counter)  # model -> prompt tokens looked up in a prefix cache
    cache_hits: Counter = field(default_factory=Counter)  # model -> of those, tokens found (not prefilled)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def record_request(self, endpoint: str, status: int) -> None:
        with self._lock:
            self.requests[(endpoint, status)] += 1

    def record_tokens(self, prompt: int, output: int) -> None:
        with self._lock:
            self.prompt_tokens += prompt
            self.output_tokens += output

    def record_fault(self, kind: str) -> None:
        with self._lock:
            self.faults[kind] += 1

    def record_prefix_cache(self, model: str, queries: int, hits: int) -> None:
        """A request met its deployment's prefix cache: `queries` prompt tokens looked up, `hits` reused."""
        with self._lock:
            self.cache_queries[model] += queries
            self.cache_hits[model] += hits

    def stream_started(self) -> None:
        with self._lock:
            self.active_streams += 1

    def stream_ended(self, disconnected: bool = False) -> None:
        with self._lock:
            self.active_streams -= 1
            if disconnected:
                self.disconnects += 1

    def record_disconnect(self) -> None:
        """A non-streaming client that left before its answer."""
        with self._lock:
            self.disconnects += 1

    def to_dict(self) -> dict:
        with self._lock:
            by_endpoint: dict[str, dict[str, int]] = {}
            for (endpoint, status), n in sorted(self.requests.items()):
                by_endpoint.setdefault(endpoint, {})[str(status)] = n
            return {
                "uptime_s": round(time.time() - self.started, 3),
                "requests": by_endpoint,
                "requests_total": sum(self.requests.values()),
                "active_streams": self.active_streams,
                "prompt_tokens_total": self.prompt_tokens,
                "output_tokens_total": self.output_tokens,
                "client_disconnects_total": self.disconnects,
                "faults_injected": dict(sorted(self.faults.items())),
                "prefix_cache": self._cache_dict(),
            }

    def _cache_dict(self) -> dict:
        queries, hits = sum(self.cache_queries.values()), sum(self.cache_hits.values())
        return {"queries_total": queries, "hits_total": hits, "hit_rate": round(hits / queries, 6) if queries else 0.0,
                "models": {m: {"queries_total": q, "hits_total": self.cache_hits[m]}
                           for m, q in sorted(self.cache_queries.items())}}

    def to_prometheus(self) -> str:
        with self._lock:
            lines = ["# HELP llmsim_requests_total Requests answered, by endpoint and status.",
                     "# TYPE llmsim_requests_total counter"]
            for (endpoint, status), n in sorted(self.requests.items()):
                lines.append(f'llmsim_requests_total{{endpoint="{endpoint}",status="{status}"}} {n}')
            lines += ["# HELP llmsim_faults_injected_total Faults injected (config errors:), by kind.",
                      "# TYPE llmsim_faults_injected_total counter"]
            for kind, n in sorted(self.faults.items()):
                lines.append(f'llmsim_faults_injected_total{{kind="{kind}"}} {n}')
            for name, kind, value, help_ in (
                ("llmsim_active_streams", "gauge", self.active_streams, "Streams being generated now."),
                ("llmsim_prompt_tokens_total", "counter", self.prompt_tokens, "Prompt tokens received."),
                ("llmsim_output_tokens_total", "counter", self.output_tokens, "Output tokens sent."),
                ("llmsim_client_disconnects_total", "counter", self.disconnects, "Streams cut by the client."),
            ):
                lines += [f"# HELP {name} {help_}", f"# TYPE {name} {kind}", f"{name} {value}"]
            # vLLM's names, so dashboards built for vLLM read the simulator too.
            for name, counts, help_ in (
                ("vllm:prefix_cache_queries_total", self.cache_queries,
                 "Prefix cache queries, in terms of number of queried tokens."),
                ("vllm:prefix_cache_hits_total", self.cache_hits,
                 "Prefix cache hits, in terms of number of cached tokens."),
            ):
                if counts:
                    lines += [f"# HELP {name} {help_}", f"# TYPE {name} counter"]
                    lines += [f'{name}{{model_name="{_label(m)}"}} {n}' for m, n in sorted(counts.items())]
            return "\n".join(lines) + "\n"


def _label(value: str) -> str:
    """A Prometheus label value, escaped."""
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
