"""What fits on this machine, and which quant to pick: the planner.

A machine's budget (the memory a model may use, and how fast each kind reads) against
each quant's memory and bytes per token (model_memory.py) gives every quant a place (all
on the fast memory, split between GPU and CPU, on the CPU, or nowhere) and a decode
ceiling. The ceiling is physics: each token reads every active weight (and the KV cache)
once, so tok/s <= bandwidth / bytes read per token. The ranking picks the best quality
that fits and decodes fast enough to read along with.
"""

from __future__ import annotations

from dataclasses import dataclass

from roost.machine.hardware import GiB, Machine
from roost.machine.model_memory import (CUDA_CONTEXT, MiB, Estimate, Quant, Shape, bytes_per_token, estimate,
                                        unified_estimate)

# Below this ceiling a quant is too slow to read along with (people read 5-8 tok/s, and
# real decoding reaches 50-90% of the ceiling): a faster quant is preferred to it.
USABLE_TPS = 8.0
# Quality gains stop being measurable above 8-bit quants: Q8_0 and F16 rank equal,
# and the smaller (faster) one wins.
QUALITY_CAP_BPW = 8.5


@dataclass(frozen=True)
class Budget:
    """Memory a model may use on this machine, after the margin left for other apps."""

    device: str  # "CUDA", "Metal" or "CPU"
    device_name: str
    gpu_bytes: int  # 0 without a GPU; on unified memory, the one shared pool
    host_bytes: int
    gpu_bandwidth_gbs: float | None
    host_bandwidth_gbs: float | None
    unified: bool
    margin_note: str
    gpu_runtime: int = 0

    def as_dict(self) -> dict:
        return {"device": self.device, "device_name": self.device_name, "gpu_bytes": self.gpu_bytes,
                "host_bytes": self.host_bytes, "margin": self.margin_note}


def budget(machine: Machine, use_gpu: bool = True) -> Budget:
    ram_margin = max(int(0.10 * machine.ram_total_bytes), 1 * GiB)
    host = max(machine.ram_available_bytes - ram_margin, 0)
    cpu_name = f"{machine.cpu_model} ({machine.physical_cores} cores)"
    if use_gpu and machine.apple is not None:
        # Metal's working set already leaves macOS and other apps a quarter to a third of
        # memory: it is the budget as it stands, the one mlx-lm wires for itself. Only
        # what is free now, less a small margin for other apps to grow, can lower it.
        a = machine.apple
        unified_margin = max(int(0.05 * machine.ram_total_bytes), 1 * GiB)
        pool = max(min(a.working_set_bytes, machine.ram_available_bytes - unified_margin), 0)
        return Budget(
            "Metal", a.chip, pool, pool, a.bandwidth_gbs, a.bandwidth_gbs, True,
            f"Metal may use {_gib(a.working_set_bytes)} ({a.working_set_source}); "
            f"{_gib(machine.ram_available_bytes)} is free now, of which {_gib(unified_margin)} is kept for other apps",
        )
    if use_gpu and machine.gpus:
        gpu = max(machine.gpus, key=lambda g: g.free_bytes)
        vram_margin = max(int(0.05 * gpu.total_bytes), 512 * MiB)
        return Budget(
            "CUDA", gpu.name, max(gpu.free_bytes - vram_margin, 0), host, gpu.bandwidth_gbs,
            machine.cpu_bandwidth_gbs, False,
            f"{_gib(vram_margin)} of VRAM and {_gib(ram_margin)} of RAM kept free for other apps",
            gpu_runtime=CUDA_CONTEXT,
        )
    return Budget(
        "CPU", cpu_name, 0, host, None, machine.cpu_bandwidth_gbs, False,
        f"{_gib(ram_margin)} of RAM kept free for other apps",
    )


def _gib(n: int) -> str:
    return f"{n / GiB:.1f} GiB"


@dataclass(frozen=True)
class Option:
    quant: Quant
    fit: str  # "full": all on the fast memory; "partial": split GPU/CPU; "cpu"; "no"
    n_gpu_layers: int
    estimate: Estimate
    ceiling_tps: float | None
    bits_per_weight: float
    why_not: str = ""

    def as_dict(self) -> dict:
        return {
            "quant": self.quant.name,
            "file_bytes": self.quant.file_bytes,
            "path": self.quant.path,
            "bits_per_weight": round(self.bits_per_weight, 2),
            "fit": self.fit,
            "n_gpu_layers": self.n_gpu_layers,
            "memory": self.estimate.as_dict(),
            "ceiling_tps": round(self.ceiling_tps, 1) if self.ceiling_tps else None,
            "why_not": self.why_not or None,
        }


def ceiling(shape: Shape, quant: Quant, b: Budget, n_gpu_layers: int, ctx_used: int = 0) -> float | None:
    layers, output = bytes_per_token(shape, quant, ctx_used)
    L = shape.n_layer
    k = L + 1 if n_gpu_layers < 0 else min(n_gpu_layers, L + 1)
    on_gpu = sum(layers[L - min(k, L):]) + (output if k > L else 0)
    on_host = sum(layers) + output - on_gpu
    seconds = 0.0
    for nbytes, gbs in ((on_gpu, b.gpu_bandwidth_gbs), (on_host, b.host_bandwidth_gbs)):
        if nbytes:
            if not gbs:
                return None
            seconds += nbytes / (gbs * 1e9)
    return 1 / seconds if seconds else None


def option(shape: Shape, quant: Quant, n_ctx: int, b: Budget) -> Option:
    bpw = quant.bits_per_weight(shape)

    def make(fit: str, k: int, est: Estimate, why: str = "") -> Option:
        return Option(quant, fit, k, est, ceiling(shape, quant, b, k), bpw, why)

    if b.unified or b.device == "CPU":
        k = -1 if b.unified else 0
        est = unified_estimate(shape, quant, n_ctx) if b.unified else estimate(shape, quant, n_ctx, 0)
        room = b.gpu_bytes if b.unified else b.host_bytes
        if est.total <= room:
            return make("full", k, est)
        return make("no", k, est, f"needs {_gib(est.total)}, {_gib(room)} available")

    def fits(k: int) -> Estimate | None:
        est = estimate(shape, quant, n_ctx, k, gpu_runtime=b.gpu_runtime)
        return est if est.gpu <= b.gpu_bytes and est.host <= b.host_bytes else None

    if est := fits(-1):
        return make("full", -1, est)
    for k in range(shape.n_layer, 0, -1):
        if est := fits(k):
            return make("partial", k, est)
    cpu = estimate(shape, quant, n_ctx, 0)
    if cpu.total <= b.host_bytes:
        return make("cpu", 0, cpu)
    full = estimate(shape, quant, n_ctx, -1, gpu_runtime=b.gpu_runtime)
    return make("no", 0, full,
                f"needs {_gib(full.total)}; {_gib(b.gpu_bytes)} on the GPU and {_gib(b.host_bytes)} in RAM available")


@dataclass(frozen=True)
class Ranking:
    options: list[Option]  # largest file first
    pick: Option | None
    reason: str
    budget: Budget
    n_ctx: int = 0

    def as_dict(self) -> dict:
        return {"n_ctx": self.n_ctx, "budget": self.budget.as_dict(), "options": [o.as_dict() for o in self.options],
                "pick": self.pick.quant.name if self.pick else None, "reason": self.reason}


def rank(shape: Shape, quants: list[Quant], n_ctx: int, machine: Machine, use_gpu: bool = True) -> Ranking:
    b = budget(machine, use_gpu)
    options = sorted((option(shape, q, n_ctx, b) for q in quants), key=lambda o: -o.quant.file_bytes)
    by_quality = sorted(options, key=lambda o: (-min(o.bits_per_weight, QUALITY_CAP_BPW), o.quant.file_bytes))
    where = {"CUDA": f"the {b.device_name}'s free VRAM", "Metal": f"the {b.device_name}'s unified memory",
             "CPU": "free RAM"}[b.device]
    full = [o for o in by_quality if o.fit == "full"]
    usable = [o for o in full if o.ceiling_tps is None or o.ceiling_tps >= USABLE_TPS]
    if usable:
        pick = usable[0]
        reason = f"{pick.quant.name} is the best quality that fits entirely in {where} at {n_ctx} tokens of context"
        if pick is not full[0]:
            reason += f" and decodes at least {USABLE_TPS:.0f} tok/s ({full[0].quant.name} would fit but reads too slowly)"
    elif full:
        pick = max(full, key=lambda o: o.ceiling_tps or 0)
        reason = f"{pick.quant.name} fits in {where} and is the fastest that does; nothing fitting reaches {USABLE_TPS:.0f} tok/s"
    else:
        split = [o for o in options if o.fit in ("partial", "cpu")]
        if split:
            pick = max(split, key=lambda o: (o.ceiling_tps or 0, o.bits_per_weight))
            reason = (f"no quant fits entirely in {where}; {pick.quant.name} with {pick.n_gpu_layers} of "
                      f"{shape.n_layer} layers on the GPU is the fastest split (slow: the rest is read from RAM)")
        else:
            pick = None
            smallest = min(options, key=lambda o: o.estimate.total) if options else None
            reason = "nothing fits at this context" + (
                f": the smallest, {smallest.quant.name}, {smallest.why_not}; try a smaller --ctx or a smaller model"
                if smallest else "")
    return Ranking(options, pick, reason, b, n_ctx)


def for_gguf(info, n_ctx: int, machine: Machine, use_gpu: bool = True) -> tuple[Shape, Ranking]:
    shape = Shape.from_gguf(info)
    return shape, rank(shape, [Quant.from_gguf(info, shape)], n_ctx, machine, use_gpu)


def largest_context(shape: Shape, quant: Quant, b: Budget, up_to: int) -> int:
    """The largest context (a multiple of 256, as llama.cpp pads it) at which this quant
    still fits somewhere on this machine; 0 if none does."""
    best, lo, hi = 0, 1, up_to // 256
    while lo <= hi:
        mid = (lo + hi) // 2
        if option(shape, quant, mid * 256, b).fit != "no":
            best, lo = mid * 256, mid + 1
        else:
            hi = mid - 1
    return best


def plan_file(info, n_ctx: int, machine: Machine, can_offload: bool, gpu_layers: int | None = None):
    """How to load one GGUF for a run: (Plan, Option), or ModelTooBig before any loading."""
    shape = Shape.from_gguf(info)
    return plan_quant(info.name, shape, Quant.from_gguf(info, shape), n_ctx, machine, can_offload, gpu_layers)


def plan_quant(name: str, shape: Shape, quant: Quant, n_ctx: int, machine: Machine, use_gpu: bool,
               gpu_layers: int | None = None):
    """How to load one model for a run, whatever the engine: (Plan, Option), or
    ModelTooBig before any loading."""
    from roost.backends.base import Plan
    from roost.errors import ModelTooBig

    ranking = rank(shape, [quant], n_ctx, machine, use_gpu)
    chosen = ranking.options[0]
    if chosen.fit == "no" and gpu_layers is None:
        fits_at = largest_context(shape, chosen.quant, ranking.budget, n_ctx)
        hint = (f"it would fit with --ctx {fits_at}" if fits_at >= 256
                else "it does not fit at any context; pick a smaller quant or model")
        raise ModelTooBig(f"{name} does not fit in memory at {n_ctx} tokens of context: "
                          f"it {chosen.why_not}; {hint}")
    layers = chosen.n_gpu_layers if gpu_layers is None else gpu_layers
    return Plan(n_ctx=n_ctx, n_gpu_layers=layers if use_gpu else 0), chosen
