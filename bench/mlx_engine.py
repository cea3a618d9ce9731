"""The MLX engine against bare mlx-lm and against llama.cpp, on the same weights, in one run.

The SmolLM2 demo GGUF is turned into an MLX folder (tests/mlx_model.py: the same Q4_1
and Q8_0 blocks, not re-quantized), so the two engines run identical numbers. Printed:
  - decode and prefill tok/s: roost's MlxEngine (its own clock, taken at the token) vs
    mlx-lm's own stream_generate (read from its responses), and roost's llama.cpp engine;
  - the ratio roost-MLX / bare mlx-lm (roost's overhead) and MLX / llama.cpp;
  - greedy agreement: how far the two engines' answers run the same on a few prompts.

    .venv/bin/python bench/mlx_engine.py [--tokens 64] [--repeat 3]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

PROMPT = [{"role": "user", "content": "Write a long story about a dragon who learns to cook."}]
AGREEMENT = [
    "What is the capital of Japan?",
    "List three primary colors.",
    "Explain in one sentence what a CPU does.",
    "Write a haiku about the sea.",
]


def bare_mlx(folder: str, tokens: int) -> tuple[float, float]:
    """mlx-lm as its own README shows it, with the prompt rendered by its tokenizer."""
    from mlx_lm import load, stream_generate

    model, tokenizer = load(folder)
    prompt = tokenizer.apply_chat_template(PROMPT, add_generation_prompt=True)
    for r in stream_generate(model, tokenizer, prompt, max_tokens=tokens):
        pass
    return r.prompt_tps, r.generation_tps


def fresh(load, path: str, tokens: int):
    """(prefill tok/s, decode tok/s, answer) of one answer on a freshly loaded engine."""
    from roost.backends.base import Done, Params, Plan

    engine = load(path, Plan(n_ctx=2048))
    done = [e for e in engine.stream(PROMPT, Params(temperature=0, max_tokens=tokens)) if isinstance(e, Done)][0]
    engine.close()
    return done.stats.prefill_tps, done.stats.decode_tps


def agreement(gguf: str, folder: str, tokens: int) -> list[tuple[str, int, int, str, str]]:
    from roost.backends import load
    from roost.backends.base import Done, Params, Plan

    answers = {}
    for kind, path in (("llama", gguf), ("mlx", folder)):
        engine = load(path, Plan(n_ctx=2048), engine=kind)
        answers[kind] = [
            [e for e in engine.stream([{"role": "user", "content": q}], Params(temperature=0, max_tokens=tokens))
             if isinstance(e, Done)][0].text
            for q in AGREEMENT
        ]
        engine.close()
    rows = []
    for q, a, b in zip(AGREEMENT, answers["llama"], answers["mlx"]):
        same = next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))
        rows.append((q, same, max(len(a), len(b)), a, b))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", type=int, default=64)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()

    from mlx_model import convert

    from roost.models import catalog
    from roost.backends import load

    gguf = catalog.demo_model_path()
    with tempfile.TemporaryDirectory() as tmp:
        folder = str(convert(gguf, Path(tmp) / "smollm2-mlx"))
        runs = {"bare mlx-lm": [], "roost mlx": [], "roost llama.cpp": []}
        for _ in range(args.repeat):  # alternating, so drift on a shared machine hits all alike
            runs["bare mlx-lm"].append(bare_mlx(folder, args.tokens))
            runs["roost mlx"].append(fresh(lambda p, plan: load(p, plan, engine="mlx"), folder, args.tokens))
            runs["roost llama.cpp"].append(fresh(lambda p, plan: load(p, plan, engine="llama"), gguf, args.tokens))
        print(f"demo model (SmolLM2-135M, Q4_1 + Q8_0 embeddings) as GGUF and as MLX; {args.tokens} tokens greedy, "
              f"median of {args.repeat}, on {os.cpu_count()} CPUs")
        med = {k: (statistics.median(p for p, _ in v), statistics.median(d for _, d in v)) for k, v in runs.items()}
        for k, (p, d) in med.items():
            print(f"  {k:16} prefill {p:8.1f} tok/s   decode {d:8.1f} tok/s")
        print(f"roost MLX / bare mlx-lm decode: {med['roost mlx'][1] / med['bare mlx-lm'][1]:.3f}")
        print(f"MLX / llama.cpp decode: {med['roost mlx'][1] / med['roost llama.cpp'][1]:.3f}, "
              f"prefill: {med['roost mlx'][0] / med['roost llama.cpp'][0]:.3f}")
        print("greedy agreement, llama.cpp vs MLX (characters the same from the start):")
        for q, same, longest, a, b in agreement(gguf, folder, args.tokens):
            print(f"  {q!r}: {same}/{longest}" + ("" if same == longest else f"\n    llama.cpp: {a[same:same + 60]!r}\n    mlx:       {b[same:same + 60]!r}"))


if __name__ == "__main__":
    main()
