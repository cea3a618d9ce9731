"""/metrics: what `roost serve` has done, in Prometheus's text format (what scrapers and
curl get) or as JSON (what roost's own clients ask for).

The numbers are read from the server's state at scrape time (each model's Counters, the
pool's loads and unloads, each engine's memory, NVML's GPU reading), so the exposition is
prometheus_client's over a collector of that reading, not metrics kept on the side.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, InfoMetricFamily

from roost.machine.gpus import GpuReading
from roost.serve.engine_slot import TTFT_BUCKETS_S, EngineSlot

CONTENT_TYPE = CONTENT_TYPE_LATEST


@dataclass(frozen=True)
class Reading:
    """The server at one scrape."""

    version: str
    uptime_s: float
    loads: int
    unloads: int
    models: list[tuple[str, EngineSlot, dict | None]]  # (id, its slot, its MemoryReading.as_dict() or None)
    gpus: list[GpuReading]


def wants_json(accept: str, query_format: str | None) -> bool:
    """JSON by ?format=json or an Accept that names it; else the text scrapers expect."""
    if query_format is not None:
        return query_format == "json"
    return "application/json" in accept


def prometheus_text(reading: Reading) -> bytes:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Collector(reading))
    return generate_latest(registry)


def model_json(slot: EngineSlot, memory: dict | None) -> dict:
    """One model as the JSON gives it (roost's remote engine reads engine and memory)."""
    c = slot.counters
    return {"state": slot.state, "crashes": c.crashes, "engine": slot.info.as_dict(), "memory": memory,
            "requests": {"running": int(slot.gate.busy), "waiting": slot.gate.waiting, "answered": c.answered,
                         "cancelled": c.cancelled, "refused": c.refused, "failed": c.failed},
            "tokens": {"prompt": c.prompt_tokens, "cached": c.cached_tokens, "generated": c.generated_tokens},
            "last": c.last.as_dict() if c.last else None}


class _Collector:
    def __init__(self, reading: Reading):
        self.reading = reading

    def collect(self) -> Iterator:
        r = self.reading
        info = InfoMetricFamily("roost", "the roost serving", labels=())
        info.add_metric([], {"version": r.version})
        yield info
        yield GaugeMetricFamily("roost_uptime_seconds", "seconds since the server started", value=r.uptime_s)
        yield CounterMetricFamily("roost_model_loads", "models loaded (preloaded, on demand)", value=r.loads)
        yield CounterMetricFamily("roost_model_unloads", "models unloaded (idle, to make room, asked)",
                                  value=r.unloads)
        yield from self._models()
        yield from self._gpus()

    def _models(self) -> Iterator:
        m = ["model"]
        requests = CounterMetricFamily("roost_requests", "requests by outcome: answered, cancelled, "
                                       "refused (503: busy or reloading), failed (5xx)", labels=m + ["outcome"])
        prompt = CounterMetricFamily("roost_prompt_tokens", "prompt tokens, cached ones included", labels=m)
        cached = CounterMetricFamily("roost_prompt_cached_tokens", "prompt tokens reused from the KV cache",
                                     labels=m)
        generated = CounterMetricFamily("roost_generated_tokens", "tokens generated", labels=m)
        prefill = CounterMetricFamily("roost_prefill_seconds", "seconds reading prompts (to the first token)",
                                      labels=m)
        decode = CounterMetricFamily("roost_decode_seconds", "seconds generating after the first token", labels=m)
        ttft = HistogramMetricFamily("roost_time_to_first_token_seconds", "time to first token", labels=m)
        running = GaugeMetricFamily("roost_requests_running", "answers being generated", labels=m)
        waiting = GaugeMetricFamily("roost_requests_waiting", "requests waiting their turn", labels=m)
        crashes = CounterMetricFamily("roost_engine_crashes", "times the engine's process died", labels=m)
        up = GaugeMetricFamily("roost_model_ready", "1 when the model answers; 0 while it loads again after a "
                               "crash, or that failed", labels=m)
        rss = GaugeMetricFamily("roost_model_rss_bytes", "resident memory of the model's engine process", labels=m)
        device = GaugeMetricFamily("roost_model_gpu_memory_bytes", "GPU memory the model's engine holds", labels=m)
        for model_id, slot, memory in self.reading.models:
            c, label = slot.counters, [model_id]
            for outcome in ("answered", "cancelled", "refused", "failed"):
                requests.add_metric(label + [outcome], getattr(c, outcome))
            prompt.add_metric(label, c.prompt_tokens)
            cached.add_metric(label, c.cached_tokens)
            generated.add_metric(label, c.generated_tokens)
            prefill.add_metric(label, c.prefill_s)
            decode.add_metric(label, c.decode_s)
            cumulative, buckets = 0, []
            for bound, n in zip((*map(str, TTFT_BUCKETS_S), "+Inf"), c.ttft_counts):
                cumulative += n
                buckets.append((bound, cumulative))
            ttft.add_metric(label, buckets, c.ttft_s)
            running.add_metric(label, int(slot.gate.busy))
            waiting.add_metric(label, slot.gate.waiting)
            crashes.add_metric(label, c.crashes)
            up.add_metric(label, int(slot.state == "ok"))
            if memory and memory.get("rss_bytes") is not None:
                rss.add_metric(label, memory["rss_bytes"])
            if memory and memory.get("device_used_bytes") is not None:
                device.add_metric(label, memory["device_used_bytes"])
        yield from (requests, prompt, cached, generated, prefill, decode, ttft, running, waiting, crashes, up, rss,
                    device)

    def _gpus(self) -> Iterator:
        if not self.reading.gpus:  # no NVIDIA GPU: no GPU metrics at all, rather than empty ones
            return
        labels = ["gpu", "name"]
        families = {
            "utilization_pct": GaugeMetricFamily("roost_gpu_utilization_ratio", "GPU busy, 0 to 1 (NVML)",
                                                 labels=labels),
            "power_w": GaugeMetricFamily("roost_gpu_power_watts", "GPU power draw (NVML)", labels=labels),
            "temperature_c": GaugeMetricFamily("roost_gpu_temperature_celsius", "GPU temperature (NVML)",
                                               labels=labels),
        }
        for gpu in self.reading.gpus:
            for field, family in families.items():
                value = getattr(gpu, field)
                if value is not None:
                    family.add_metric([str(gpu.index), gpu.name], value / 100 if field == "utilization_pct" else value)
        yield from families.values()
