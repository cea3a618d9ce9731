"""A chat past its context, with and without context_policy.slack, measured in one run.

The same conversation (questions of ~45 tokens, short greedy answers) is held twice on
the demo model at a small context: once as the chat does it (turns left out with a
quarter of the context to spare), once leaving out one turn at a time (slack 0). Printed
for each: the turns after the first drop, how many of them left a turn out, the prompt
tokens read (not from the cache) over them, and the time spent reading; then the ratios.

    .venv/bin/python bench/context_slack.py [--ctx 512] [--turns 30]
"""

from __future__ import annotations

import argparse
import time
from unittest import mock

from roost import context_policy
from roost.backends import load
from roost.backends.base import Done, Params, Plan
from roost.models import catalog
from roost.session import Session


def question(i: int) -> str:
    return (f"Question {i + 1}. I am writing a small book about numbers and I want each chapter to open "
            f"with something surprising. What is one interesting fact about the number {i + 1}?")


def hold(engine, turns: int) -> tuple[int, int, int, float]:
    """(turns after the first drop, of those the ones that dropped, tokens read, seconds reading)."""
    session = Session(engine, Params(temperature=0, max_tokens=8), system="Answer in one short sentence.")
    after = drops = read = 0
    reading = 0.0
    for i in range(turns):
        before = session.dropped
        done = [e for e in session.send(question(i)) if isinstance(e, Done)][-1]
        if before > 0:  # from the turn after the first drop on
            after += 1
            drops += session.dropped > before
            read += done.stats.prompt_tokens - done.stats.cached_tokens
            reading += done.stats.ttft_s
    return after, drops, read, reading


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ctx", type=int, default=512)
    parser.add_argument("--turns", type=int, default=30)
    args = parser.parse_args()
    engine = load(catalog.demo_model_path(), Plan(n_ctx=args.ctx))
    try:
        t = time.perf_counter()
        with_slack = hold(engine, args.turns)
        with mock.patch.object(context_policy, "slack", lambda n_ctx: 0):
            without = hold(engine, args.turns)
        print(f"demo model, --ctx {args.ctx}, {args.turns} turns ({time.perf_counter() - t:.0f} s)")
        for name, (after, drops, read, reading) in (("slack", with_slack), ("one turn at a time", without)):
            print(f"  {name:>18}: {drops:2d} of {after} later turns left a turn out; "
                  f"{read:6d} prompt tokens read, {reading:5.2f} s reading")
        print(f"  slack ÷ one at a time: tokens read {with_slack[2] / without[2]:.2f}, "
              f"time reading {with_slack[3] / without[3]:.2f}")
    finally:
        engine.close()


if __name__ == "__main__":
    main()
