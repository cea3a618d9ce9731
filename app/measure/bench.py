"""`roost bench`: prompt processing and generation speed on this machine, measured the
way llama-bench measures them, beside the ceiling that memory bandwidth sets.

Each repetition runs two raw-text completions through the Engine interface, so every
engine (llama.cpp, MLX, a server) is measured by the same code and with its own clock:
  - pp: a prompt of about `pp` tokens and one token out: prefill tok/s, and TTFT;
  - tg: a short prompt and `tg` tokens out: generation tok/s at an empty context.
Every prompt opens with the repetition's number, so no run reuses another's KV cache.
A warm-up run comes first and is not counted. At a depth (llama-bench's -d), each
repetition first fills the context with that many tokens, not measured, and both runs
continue from it: the engine reuses that prefix, so what is timed is prompt processing
and generation with `depth` tokens already in the context.
"""

from __future__ import annotations

import statistics
import time
from dataclasses import asdict, dataclass

from roost.backends.base import Done, Engine, Params

# Common words that are one token each in most vocabularies: the prompt's length in
# tokens is then close to its length in words. The count used is the engine's own.
WORDS = ("the of and to in is it that for on was with as at by this from or an be are not have "
         "but one all were we when there can more if no out so up about into than them some").split()
COUNTING = "1, 2, 3, 4, 5, 6, 7, 8,"  # a continuation a model keeps going without stopping


@dataclass(frozen=True)
class Rate:
    """tok/s over the repetitions: mean and sample standard deviation."""

    tokens: float  # tokens per run, on average (the engine's count)
    mean: float
    sd: float

    @classmethod
    def of(cls, tokens: list[int], rates: list[float]) -> "Rate":
        return cls(statistics.fmean(tokens), statistics.fmean(rates), statistics.stdev(rates) if len(rates) > 1 else 0.0)


@dataclass(frozen=True)
class Result:
    model: str
    engine: str
    device: str
    n_ctx: int
    n_gpu_layers: int
    n_threads: int | None
    repetitions: int
    pp: Rate
    tg: Rate
    ttft_s: Rate  # mean and sd of the pp runs' time to first token, in seconds (tokens: the prompt)
    load_s: float | None
    ceiling_tps: float | None  # generation's bandwidth ceiling on this machine; None where unknown (a server)
    short_tg: int  # tg runs that stopped before `tg` tokens (an end-of-text token)
    when: float = 0.0
    depth: int = 0  # tokens already in the context when each run starts
    kv_type: str | None = None  # the KV cache's type, where the engine says
    flash_attn: bool | None = None  # flash attention on or off, where the engine says

    @property
    def efficiency(self) -> float | None:
        return self.tg.mean / self.ceiling_tps if self.ceiling_tps else None

    def as_dict(self) -> dict:
        d = asdict(self)
        d["efficiency"] = round(self.efficiency, 4) if self.efficiency else None
        return d


def _words(n: int) -> str:
    return " ".join(WORDS[i % len(WORDS)] for i in range(n))


def pp_prompt(rep: int, n: int) -> str:
    return f"{rep}. " + _words(n - 2)


def run(engine: Engine, pp: int = 512, tg: int = 128, repetitions: int = 5, *, model: str, load_s: float | None,
        ceiling_tps: float | None, depth: int = 0, cancel=None, on_step=None) -> Result:
    """Measure, with `depth` tokens in the context before each run; on_step(text) hears
    what runs, for a progress line."""
    def complete(prompt: str, max_tokens: int) -> Done:
        for event in engine.complete(prompt, Params(temperature=0, seed=0, max_tokens=max_tokens), cancel):
            if isinstance(event, Done):
                if event.stats.stop_reason == "cancelled":
                    raise KeyboardInterrupt
                return event

    step = on_step or (lambda text: None)
    step("warm-up")
    complete(f"warm up. {COUNTING}", 8)
    pp_runs, tg_runs = [], []
    at = f" @ d{depth}" if depth else ""
    for rep in range(1, repetitions + 1):
        if depth:
            step(f"filling {depth} tokens {rep}/{repetitions}")
            context = pp_prompt(rep, depth) + "\n"
            complete(context, 1)
            pp_text, tg_text = context + _words(pp), context + COUNTING
        else:
            pp_text, tg_text = pp_prompt(rep, pp), f"{rep}. {COUNTING}"
        step(f"pp{pp}{at} {rep}/{repetitions}")
        pp_runs.append(complete(pp_text, 1).stats)
        step(f"tg{tg}{at} {rep}/{repetitions}")
        tg_runs.append(complete(tg_text, tg).stats)
    info = engine.info()
    return Result(
        model=model, engine=info.engine, device=info.device, n_ctx=info.n_ctx, n_gpu_layers=info.n_gpu_layers,
        n_threads=info.n_threads, repetitions=repetitions,
        pp=Rate.of([s.prefilled_tokens for s in pp_runs], [s.prefill_tps for s in pp_runs]),
        tg=Rate.of([s.generated_tokens for s in tg_runs], [s.decode_tps for s in tg_runs]),
        ttft_s=Rate.of([s.prompt_tokens for s in pp_runs], [s.ttft_s for s in pp_runs]),
        load_s=load_s, ceiling_tps=ceiling_tps, short_tg=sum(s.generated_tokens < tg for s in tg_runs),
        when=time.time(), depth=depth, kv_type=info.kv_type, flash_attn=info.flash_attn,
    )
