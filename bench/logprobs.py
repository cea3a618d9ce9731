"""What log-probabilities cost, measured in one run: decode tok/s with them ÷ without.

One engine, in this process; the same prompt, greedy, each way in turn (alternating, so a
busy machine slows both alike), decode tok/s by the engine's own clock, the median of the
repeats. With them, each token takes a log-softmax over the whole vocabulary in numpy and
the top N (backends/streaming.ranked), and names N + 1 tokens. Printed: the ratio for
top_logprobs 0, 5 and 20. Target: >= 0.95 at 20 on the demo model (its vocabulary is
49,152 tokens; a 152k vocabulary costs about three times as much a token, against a
larger model's slower token).

    .venv/bin/python bench/logprobs.py [--model PATH] [--engine llama|mlx] [--tokens 128] [--repeat 5]
"""

from __future__ import annotations

import argparse
import statistics

from roost.backends import load
from roost.backends.base import Done, Params, Plan
from roost.models import catalog

PROMPT = [{"role": "user", "content": "Write a long story about a dragon who learns to cook."}]


def decode_tps(engine, tokens: int, logprobs: int | None) -> float:
    params = Params(temperature=0, max_tokens=tokens, logprobs=logprobs)
    done = next(e for e in engine.stream(PROMPT, params) if isinstance(e, Done))
    return done.stats.decode_tps


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=catalog.demo_model_path())
    parser.add_argument("--engine", default="llama")
    parser.add_argument("--tokens", type=int, default=128)
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    engine = load(args.model, Plan(n_ctx=1024), engine=args.engine)
    try:
        decode_tps(engine, 8, None)  # warm: the first answer's allocations are not the cost measured
        ways = (None, 0, 5, 20)
        runs: dict[int | None, list[float]] = {way: [] for way in ways}
        for _ in range(args.repeat):
            for way in ways:
                runs[way].append(decode_tps(engine, args.tokens, way))
    finally:
        engine.close()
    base = statistics.median(runs[None])
    print(f"{args.model} ({args.engine}), {args.tokens} tokens, median of {args.repeat}")
    print(f"  without logprobs: {base:.1f} tok/s")
    for way in ways[1:]:
        tps = statistics.median(runs[way])
        print(f"  top_logprobs {way:>2}: {tps:.1f} tok/s, {tps / base:.3f} of without")


if __name__ == "__main__":
    main()
