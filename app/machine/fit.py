"""What fits on this machine, and which quant to pick: the planner.

A machine's budget (the memory a model may use, and how fast each kind reads) against
each quant's memory and bytes per token (model_memory.py) gives every quant a place (all
on the fast memory, split between GPU and CPU, on the CPU, or nowhere) and a decode
ceiling. The ceiling is physics: each token reads every active weight (and the KV cache)
once, so tok/s <= bandwidth / bytes read per token. Decoding reaches a share of that
(DECODE_SHARE): the ceiling times the share is the predicted rate. The ranking picks the
best quality that fits and is predicted to decode at least a floor (MIN_TPS) fast.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, replace

from roost.machine.hardware import GiB, Machine
from roost.machine.model_memory import (CUDA_CONTEXT, MiB, Estimate, Quant, Shape, bytes_per_token, estimate,
                                        unified_estimate)

# The share of the bandwidth ceiling llama.cpp's decoding reaches, by device, as measured
# (prediction = ceiling × share; bench/predicted_speed.py checks it against roost bench):
# - CPU: 0.70 of the bandwidth roost measures (bandwidth.measure), from
#   bench/predicted_speed.py on a 2-core EPYC box (25 GB/s): 0.59 for a 0.4 GB model,
#   0.72 at 0.6 GB, 0.85 at 1.5 GB. Each token also has a fixed cost, which rules for tiny
#   models (the 94 MiB demo reached 0.30, the README's "41 % on a small CPU" on a quieter
#   day) and fades for the models near the floor; 0.70 errs on the slow side for those.
# - CUDA: 0.31, an 8B Q4_0 on an H100 (docs/cuda.md: 256 tok/s of an 829 tok/s ceiling).
#   Small models on big GPUs reach less (the 135M demo: 0.02), where each token's fixed
#   cost rules; a consumer card's share is not measured here.
# - Metal: 0.70, the median of llama.cpp's Apple Silicon table (ggml-org/llama.cpp
#   discussion #4167, Llama 2 7B Q4_0 tg128 against each chip's spec-sheet bandwidth:
#   0.45 on an M2 Ultra to 0.84 on an M2; read from copies of the table, not the thread).
# Where part of a model is read from RAM and part from the GPU, each part is read at its
# own device's share.
DECODE_SHARE = {"CPU": 0.70, "CUDA": 0.31, "Metal": 0.70}
# Predicted decode below this is too slow to be a pick (people read 5-8 tok/s; a reply
# that streams slower than reading is a wait). `--min-speed` changes it.
MIN_TPS = 10.0
# Below about 3.5 bits a weight quality falls off a cliff (llama.cpp's perplexity tables
# for Q3_K_S, Q2_K and the IQ2/IQ3 types), where a smaller model at 4 bits usually wins.
LOW_BITS = 3.5
# Quant types below LOW_BITS by their design, even where a file's mixed tensors average
# more (a Q3_K_M file is ~3.9 bits a weight over the whole file).
LOW_BIT_QUANT = re.compile(r"^(I?Q[123]_|IQ[123]|TQ[12]_|[123]-?bit$)", re.I)
# Quality gains stop being measurable above 8-bit quants: Q8_0 and F16 rank equal,
# and the smaller (faster) one wins.
QUALITY_CAP_BPW = 8.5
# Flash attention where roost's "auto" turns it on. On CUDA and Metal: on, as llama.cpp's
# own auto has it (llama_context enables it wherever the device holding the KV cache runs
# the flash-attention kernel, which CUDA and Metal do for the common head sizes); on an
# H200, an 8B shape Q4_0 (docs/cuda.md), on ÷ off: pp 1.64, tg 1.20 empty, pp 1.55, tg
# 1.16 at 8,192 tokens of depth, and a compute buffer of 142 MiB instead of 651. On the
# CPU: on, measured by bench/flash_attention.py on this project's 2-core EPYC (shared with
# other work, so each figure is ±15 %): on ÷ off, a 0.5B shape (Qwen2.5-0.5B's, Q8_0) at
# an empty context pp 1.04, tg 1.28, at 4,096 tokens of depth pp 1.15, tg 1.40; the 135M
# demo pp 1.15, tg 1.18 empty, but pp 0.61, tg 0.88 at 4,096 (its 9 small heads: a model
# that size is the exception, not what people run). Its compute buffer also stops growing
# with n_ctx × heads (the 0.5B shape at 4,288 tokens: 137 -> 100 MiB; at 8,192: 249 -> 100).
CPU_FLASH_ATTN = True
KV_TYPES = ("f16", "q8_0", "q4_0")


def flash_attention(setting: str, kv_type: str, device: str) -> bool:
    """Whether to run flash attention: setting is "auto", "on" or "off", device where
    the layers run ("CPU", "CUDA", "Metal"). A quantized KV cache needs it: llama.cpp
    quantizes V only with flash attention, so auto turns it on, and off is refused."""
    if kv_type != "f16":
        if setting == "off":
            from roost.errors import UsageError

            raise UsageError(f"--kv {kv_type} needs flash attention (llama.cpp quantizes the V cache only with it): "
                             "drop --flash-attn off, or use --kv f16")
        return True
    return (device != "CPU" or CPU_FLASH_ATTN) if setting == "auto" else setting == "on"


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
    predicted_tps: float | None = None  # the ceiling at the share decoding reaches (DECODE_SHARE)
    kv_type: str = "f16"  # the KV cache's type this option is planned with
    flash_attn: bool = False  # whether it is planned with flash attention

    @property
    def low_bits(self) -> bool:
        """Below the ~3.5 bits a weight where quality falls off."""
        return bool(LOW_BIT_QUANT.match(self.quant.name)) or 0 < self.bits_per_weight < LOW_BITS

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
            "predicted_tps": round(self.predicted_tps, 1) if self.predicted_tps else None,
            "low_bits": self.low_bits,
            "why_not": self.why_not or None,
            "kv_type": self.kv_type,
            "flash_attn": self.flash_attn,
        }


def ceiling(shape: Shape, quant: Quant, b: Budget, n_gpu_layers: int, ctx_used: int = 0,
            predicted: bool = False) -> float | None:
    """Decode tok/s at most: each part of the model read once a token at its memory's
    bandwidth. predicted: at the share of it llama.cpp reaches there (DECODE_SHARE)."""
    layers, output = bytes_per_token(shape, quant, ctx_used)
    L = shape.n_layer
    k = L + 1 if n_gpu_layers < 0 else min(n_gpu_layers, L + 1)
    on_gpu = sum(layers[L - min(k, L):]) + (output if k > L else 0)
    on_host = sum(layers) + output - on_gpu
    # On unified memory the GPU reads it all; a CPU budget has no GPU part.
    gpu_share, host_share = (DECODE_SHARE[b.device], DECODE_SHARE["Metal" if b.unified else "CPU"]) \
        if predicted else (1.0, 1.0)
    seconds = 0.0
    for nbytes, gbs, share in ((on_gpu, b.gpu_bandwidth_gbs, gpu_share), (on_host, b.host_bandwidth_gbs, host_share)):
        if nbytes:
            if not gbs:
                return None
            seconds += nbytes / (gbs * 1e9 * share)
    return 1 / seconds if seconds else None


def option(shape: Shape, quant: Quant, n_ctx: int, b: Budget, kv_type: str = "f16",
           flash_attn: str = "auto") -> Option:
    bpw = quant.bits_per_weight(shape)
    fa = flash_attention(flash_attn, kv_type, b.device)

    def make(fit: str, k: int, est: Estimate, why: str = "") -> Option:
        return Option(quant, fit, k, est, ceiling(shape, quant, b, k), bpw, why,
                      ceiling(shape, quant, b, k, predicted=True), kv_type, fa)

    def place(k: int, gpu_runtime: int = 0) -> Estimate:
        return estimate(shape, quant, n_ctx, k, kv_type, gpu_runtime, fa)

    if b.unified or b.device == "CPU":
        k = -1 if b.unified else 0
        est = unified_estimate(shape, quant, n_ctx, kv_type, fa) if b.unified else place(0)
        room = b.gpu_bytes if b.unified else b.host_bytes
        if est.total <= room:
            return make("full", k, est)
        return make("no", k, est, f"needs {_gib(est.total)}, {_gib(room)} available")

    def fits(k: int) -> Estimate | None:
        est = place(k, b.gpu_runtime)
        return est if est.gpu <= b.gpu_bytes and est.host <= b.host_bytes else None

    if est := fits(-1):
        return make("full", -1, est)
    for k in range(shape.n_layer, 0, -1):
        if est := fits(k):
            return make("partial", k, est)
    cpu = place(0)
    if cpu.total <= b.host_bytes:
        return make("cpu", 0, cpu)
    full = place(-1, b.gpu_runtime)
    return make("no", 0, full,
                f"needs {_gib(full.total)}; {_gib(b.gpu_bytes)} on the GPU and {_gib(b.host_bytes)} in RAM available")


@dataclass(frozen=True)
class Ranking:
    options: list[Option]  # largest file first
    pick: Option | None
    reason: str
    budget: Budget
    n_ctx: int = 0
    min_tps: float = MIN_TPS

    @property
    def too_slow(self) -> bool:
        """The pick fits but is predicted to decode below the floor: a listing passes it
        over; a model named on its own is still given, with a warning."""
        p = self.pick
        return p is not None and p.predicted_tps is not None and p.predicted_tps < self.min_tps

    def as_dict(self) -> dict:
        return {"n_ctx": self.n_ctx, "budget": self.budget.as_dict(), "options": [o.as_dict() for o in self.options],
                "pick": self.pick.quant.name if self.pick else None, "reason": self.reason,
                "min_tps": self.min_tps, "too_slow": self.too_slow}


def tps(value: float | None) -> str:
    """A predicted rate as the reasons say it: whole numbers from 10, one decimal below,
    rounded down there so that a rate under a floor of 10 never reads as 10."""
    return "?" if value is None else f"{value:.0f}" if value >= 10 else f"{int(value * 10) / 10:.1f}"


# How well a pick fits, best first.
FIT_ORDER = ("full", "partial", "cpu", "no")


def rank(shape: Shape, quants: list[Quant], n_ctx: int, machine: Machine, use_gpu: bool = True,
         min_tps: float = MIN_TPS, kv_type: str | None = None, flash_attn: str = "auto") -> Ranking:
    """Every quant placed and the pick, with its reason. kv_type None: the planner's own
    choice, f16, or q8_0 (half the memory, nearly f16's quality) where nothing fits all on
    the fast memory with f16 and q8_0 lets the pick fit better."""
    if kv_type is not None:
        return _rank(shape, quants, n_ctx, budget(machine, use_gpu), min_tps, kv_type, flash_attn)
    f16 = _rank(shape, quants, n_ctx, budget(machine, use_gpu), min_tps, "f16", flash_attn)
    if f16.pick is not None and f16.pick.fit == "full" or flash_attn == "off":
        return f16
    q8 = _rank(shape, quants, n_ctx, f16.budget, min_tps, "q8_0", flash_attn)
    if q8.pick is None or FIT_ORDER.index(q8.pick.fit) >= FIT_ORDER.index(f16.pick.fit if f16.pick else "no"):
        return f16
    return replace(q8, reason=q8.reason + ", with a q8_0 KV cache (an f16 one would not fit as well)")


def _rank(shape: Shape, quants: list[Quant], n_ctx: int, b: Budget, min_tps: float, kv_type: str,
          flash_attn: str) -> Ranking:
    options = sorted((option(shape, q, n_ctx, b, kv_type, flash_attn) for q in quants),
                     key=lambda o: -o.quant.file_bytes)
    by_quality = sorted(options, key=lambda o: (-min(o.bits_per_weight, QUALITY_CAP_BPW), o.quant.file_bytes))
    where = {"CUDA": f"the {b.device_name}'s free VRAM", "Metal": f"the {b.device_name}'s unified memory",
             "CPU": "free RAM"}[b.device]
    full = [o for o in by_quality if o.fit == "full"]
    # Unknown bandwidth predicts nothing: such a quant is not held back.
    usable = [o for o in full if o.predicted_tps is None or o.predicted_tps >= min_tps]
    floor = f"{min_tps:g} tok/s"
    if usable:
        pick = usable[0]
        reason = f"{pick.quant.name} is the best quality that fits entirely in {where} at {n_ctx} tokens of context"
        if pick is not full[0]:
            reason += (f" and is predicted to decode at least {floor} (~{tps(pick.predicted_tps)}); "
                       f"{full[0].quant.name} would fit but decode at ~{tps(full[0].predicted_tps)} tok/s")
    elif full:
        # Nothing reaches the floor: the fastest that keeps its quality (at LOW_BITS or
        # more), else the best of the low-bit ones; speed lost either way, not quality too.
        sound = [o for o in full if not o.low_bits]
        pick = max(sound, key=lambda o: o.predicted_tps or 0) if sound else full[0]
        reason = (f"{pick.quant.name} fits in {where}, but nothing that fits is predicted to decode {floor} here "
                  f"(~{tps(pick.predicted_tps)} tok/s); " +
                  ("it is the fastest at 3.5 bits a weight or more" if sound else "it is the best quality that fits"))
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
    return Ranking(options, pick, reason, b, n_ctx, min_tps)


def for_gguf(info, n_ctx: int, machine: Machine, use_gpu: bool = True,
             min_tps: float = MIN_TPS) -> tuple[Shape, Ranking]:
    shape = Shape.from_gguf(info)
    return shape, rank(shape, [Quant.from_gguf(info, shape)], n_ctx, machine, use_gpu, min_tps)


def largest_context(shape: Shape, quant: Quant, b: Budget, up_to: int, kv_type: str = "f16",
                    flash_attn: str = "auto") -> int:
    """The largest context (a multiple of 256, as llama.cpp pads it) at which this quant
    still fits somewhere on this machine; 0 if none does."""
    best, lo, hi = 0, 1, up_to // 256
    while lo <= hi:
        mid = (lo + hi) // 2
        if option(shape, quant, mid * 256, b, kv_type, flash_attn).fit != "no":
            best, lo = mid * 256, mid + 1
        else:
            hi = mid - 1
    return best


def plan_file(info, n_ctx: int, machine: Machine, can_offload: bool, gpu_layers: int | None = None,
              kv_type: str | None = None, flash_attn: str = "auto"):
    """How to load one GGUF for a run: (Plan, Option), or ModelTooBig before any loading."""
    shape = Shape.from_gguf(info)
    return plan_quant(info.name, shape, Quant.from_gguf(info, shape), n_ctx, machine, can_offload, gpu_layers,
                      kv_type, flash_attn)


def plan_quant(name: str, shape: Shape, quant: Quant, n_ctx: int, machine: Machine, use_gpu: bool,
               gpu_layers: int | None = None, kv_type: str | None = None, flash_attn: str = "auto"):
    """How to load one model for a run, whatever the engine: (Plan, Option), or
    ModelTooBig before any loading. The Plan carries the KV type and flash attention the
    option was planned with, so that what loads is what was planned."""
    from roost.backends.base import Plan
    from roost.errors import ModelTooBig

    ranking = rank(shape, [quant], n_ctx, machine, use_gpu, kv_type=kv_type, flash_attn=flash_attn)
    chosen = ranking.options[0]
    if chosen.fit == "no" and gpu_layers is None:
        # The planner's own choice would take a q8_0 KV cache at a context only that fits.
        fits_at = largest_context(shape, chosen.quant, ranking.budget, n_ctx,
                                  kv_type or ("f16" if flash_attn == "off" else "q8_0"), flash_attn)
        # An f16 cache asked for by name, where the planner would have taken q8_0.
        q8_fits = kv_type == "f16" and flash_attn != "off" and option(
            shape, chosen.quant, n_ctx, ranking.budget, "q8_0", flash_attn).fit != "no"
        ways = ["--kv q8_0"] * q8_fits + [f"--ctx {fits_at}"] * (fits_at >= 256)
        hint = (f"it would fit with {' or '.join(ways)}" if ways
                else "it does not fit at any context; pick a smaller quant or model")
        raise ModelTooBig(f"{name} does not fit in memory at {n_ctx} tokens of context: "
                          f"it {chosen.why_not}; {hint}")
    layers = chosen.n_gpu_layers if gpu_layers is None else gpu_layers
    return Plan(n_ctx=n_ctx, n_gpu_layers=layers if use_gpu else 0, flash_attn="on" if chosen.flash_attn else "off",
                kv_type=chosen.kv_type), chosen
