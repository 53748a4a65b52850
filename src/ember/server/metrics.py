"""Prometheus metrics for /metrics, in a registry of the server's own (several servers can
share a process, as in the tests).

Counters and histograms are updated by the engine thread as tokens come out (prometheus_client
is thread-safe); gauges are read from the engine's last published ``stats()`` at scrape time.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

_LATENCY_BUCKETS = (0.001, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0, 60.0)


class ServerMetrics:
    def __init__(self, model_name: str):
        self.registry = CollectorRegistry()
        labels = {"model_name": model_name}
        reg = self.registry

        def gauge(name, doc):
            return Gauge(name, doc, labelnames=list(labels), registry=reg).labels(**labels)

        self.running = gauge("ember_num_requests_running", "Sequences in the running batch.")
        self.waiting = gauge("ember_num_requests_waiting", "Sequences waiting to be scheduled.")
        self.kv_cache_usage = gauge("ember_kv_cache_usage_perc", "Fraction of KV-cache blocks in use (0-1).")
        self.prefix_cache_hit_rate = gauge(
            "ember_prefix_cache_hit_rate", "Prefix-cache hits / queries since start (0 until it exists)."
        )
        self.preemptions = Counter("ember_num_preemptions", "Sequences preempted for lack of KV blocks.",
                                   labelnames=list(labels), registry=reg).labels(**labels)
        self.prompt_tokens = Counter("ember_prompt_tokens", "Prompt tokens admitted.",
                                     labelnames=list(labels), registry=reg).labels(**labels)
        self.generation_tokens = Counter("ember_generation_tokens", "Tokens generated.",
                                         labelnames=list(labels), registry=reg).labels(**labels)
        self.time_to_first_token = Histogram(
            "ember_time_to_first_token_seconds", "Arrival to first generated token.",
            labelnames=list(labels), buckets=_LATENCY_BUCKETS, registry=reg).labels(**labels)
        self.time_per_output_token = Histogram(
            "ember_time_per_output_token_seconds", "Mean time between tokens of a finished sequence.",
            labelnames=list(labels), buckets=_LATENCY_BUCKETS, registry=reg).labels(**labels)
        self._preemptions_seen = 0

    def update_preemptions(self, total: int) -> None:
        """The engine reports a running total; the counter only takes increments (engine thread)."""
        if total > self._preemptions_seen:
            self.preemptions.inc(total - self._preemptions_seen)
            self._preemptions_seen = total

    def render(self, stats: dict[str, int]) -> bytes:
        self.running.set(stats.get("num_running", 0))
        self.waiting.set(stats.get("num_waiting", 0))
        total = stats.get("kv_blocks_total", 0)
        self.kv_cache_usage.set(stats.get("kv_blocks_used", 0) / total if total else 0.0)
        queries = stats.get("prefix_cache_queries", 0)
        self.prefix_cache_hit_rate.set(stats.get("prefix_cache_hits", 0) / queries if queries else 0.0)
        return generate_latest(self.registry)
