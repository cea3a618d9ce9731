"""Structured output on the demo model, measured in one run: how many answers parse and match
their schema (goal: all of them), and what a grammar costs in decode speed.

Every schema of tests/schemas.py is asked with each prompt (and seed); each answer is
json.loads'ed and validated with jsonschema. Decode tok/s is the engine's own (Stats), with a
grammar and without, on the same prompts, seeds and settings, alternating, so that the
ratio is read on one machine in one state. An answer cut at --tokens counts as invalid.

    .venv/bin/python bench/structured_output.py [--model PATH] [--tokens 200] [--seeds 1]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys

import jsonschema

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "tests"))

from schemas import PROMPTS, SCHEMAS  # noqa: E402

from roost.backends import load  # noqa: E402
from roost.backends.base import Params, Plan  # noqa: E402
from roost.models import catalog  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=None, help="a GGUF (default: the bundled demo)")
    parser.add_argument("--tokens", type=int, default=200, help="max_tokens of each answer")
    parser.add_argument("--seeds", type=int, default=1, help="seeds per schema and prompt")
    args = parser.parse_args()
    engine = load(args.model or catalog.demo_model_path(), Plan(n_ctx=1024))
    valid, cut, failures = 0, 0, []
    with_grammar, without = [], []
    for name, schema in SCHEMAS.items():
        for prompt in PROMPTS:
            for seed in range(1, args.seeds + 1):
                messages = [{"role": "user", "content": prompt}]
                free = list(engine.stream(messages, Params(max_tokens=args.tokens, seed=seed)))[-1]
                held = list(engine.stream(messages, Params(max_tokens=args.tokens, seed=seed,
                                                           schema=json.dumps(schema))))[-1]
                without.append(free.stats.decode_tps)
                with_grammar.append(held.stats.decode_tps)
                try:
                    jsonschema.validate(json.loads(held.text), schema)
                    valid += 1
                except (ValueError, jsonschema.ValidationError) as e:
                    cut += held.stats.stop_reason != "stop"
                    failures.append(f"  {name} / {prompt[:24]}... seed {seed} ({held.stats.stop_reason}): "
                                    f"{str(e).splitlines()[0][:80]}")
    engine.close()
    total = len(with_grammar)
    print(f"schemas: {len(SCHEMAS)}, answers: {total} ({len(PROMPTS)} prompts x {args.seeds} seed(s)), "
          f"max_tokens {args.tokens}")
    print(f"valid (parses and matches its schema): {valid}/{total} = {valid / total:.1%} (goal 100%)"
          + (f"; {cut} cut at max_tokens" if cut else ""))
    if failures:
        print("\n".join(failures))
    g, f = statistics.median(with_grammar), statistics.median(without)
    print(f"decode tok/s, median: with grammar {g:.1f}, without {f:.1f}; with / without = {g / f:.2f}")
    return 0 if valid == total else 1


if __name__ == "__main__":
    sys.exit(main())
