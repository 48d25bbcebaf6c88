"""Prometheus metrics of the runtime (one registry per server instance)."""

from __future__ import annotations

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    PlatformCollector,
    ProcessCollector,
)

LATENCY_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2, 4, 8, 16, 32, 64, 128)
# first token and queue waits are often a few ms: resolve 5-50 ms
FAST_BUCKETS = (0.005, 0.01, 0.02, 0.03, 0.05, 0.075, 0.1, 0.15, 0.25, 0.5, 1, 2, 4, 8, 16,
                32, 64)


class Metrics:
    def __init__(self) -> None:
        r = self.registry = CollectorRegistry()
        self.requests = Counter("synapse_requests", "Requests answered.",
                                ["endpoint", "tier", "role", "status"], registry=r)
        self.tier_requests = Counter("synapse_tier_requests", "Requests per routed tier.",
                                     ["tier", "routed"], registry=r)
        self.tokens = Counter("synapse_tokens", "Tokens processed.", ["direction", "tier", "role"],
                              registry=r)
        self.latency = Histogram("synapse_request_latency_seconds", "Total request latency.",
                                 ["tier"], buckets=LATENCY_BUCKETS, registry=r)
        self.ttft = Histogram("synapse_time_to_first_token_seconds", "Time to first token.",
                              ["tier"], buckets=FAST_BUCKETS, registry=r)
        self.queue_time = Histogram("synapse_queue_time_seconds", "Time spent waiting in queue.",
                                    buckets=FAST_BUCKETS, registry=r)
        self.router_time = Histogram(
            "synapse_router_decision_seconds", "Router classification time.",
            buckets=(1e-5, 5e-5, 1e-4, 2.5e-4, 5e-4, 1e-3, 5e-3), registry=r)
        self.queue_depth = Gauge("synapse_queue_depth", "Requests waiting or running.", registry=r)
        self.queue_capacity = Gauge("synapse_queue_capacity", "Requests allowed to wait.",
                                    registry=r)
        self.rejected = Counter("synapse_rejected", "Requests refused.", ["reason"], registry=r)
        self.errors = Counter("synapse_errors", "Error answers (4xx/5xx) by status and code.",
                              ["status", "code"], registry=r)
        self.cancelled = Counter("synapse_cancelled",
                                 "Requests whose client left, by how and the stage they were in.",
                                 ["how", "stage"], registry=r)
        self.model_info = Gauge(
            "synapse_model_info", "Identity of each loaded model (value 1).",
            ["role", "path", "sha256", "quantization", "description", "load_id"], registry=r)
        self.spec_proposed = Counter("synapse_speculative_proposed_tokens",
                                     "Draft tokens proposed.", ["tier"], registry=r)
        self.spec_accepted = Counter("synapse_speculative_accepted_tokens",
                                     "Draft tokens accepted.", ["tier"], registry=r)
        self.spec_enabled = Gauge("synapse_speculative_enabled",
                                  "1 when speculation is on for a tier.", ["tier"], registry=r)
        self.model_loaded = Gauge(
            "synapse_model_loaded", "1 for each loaded model.",
            ["role", "path", "sha256", "quantization", "load_id"], registry=r)
        self.model_memory = Gauge("synapse_model_memory_bytes", "Memory held per model.",
                                  ["role", "kind"], registry=r)
        self.model_gpu_layers = Gauge("synapse_model_gpu_layers", "Layers offloaded.", ["role"],
                                      registry=r)
        self.ready = Gauge("synapse_ready", "1 once every model is loaded.", registry=r)
        self.swaps = Counter("synapse_model_swaps", "Hot swaps.", ["role", "result"], registry=r)
        self.sessions = Gauge("synapse_sessions", "Conversation histories kept.", registry=r)
        ProcessCollector(registry=r)  # process_resident_memory_bytes, cpu seconds, fds
        PlatformCollector(registry=r)
