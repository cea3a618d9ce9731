"""Several clients at once on a real `roost serve`, measured in one run (#24).

`roost serve` of the demo model on 127.0.0.1, and 1, 2 and 4 clients (the official openai client, a
thread each) asking it at the same moment: each client sends its own prompt, greedy, up to
--tokens tokens, --requests times in a row. One engine answers one request at a time, the
others waiting in its queue, so this is what a household sharing one model sees today.
Printed for each number of clients: every client's tok/s (its tokens over its own wall time,
waiting included), the aggregate (all tokens over the wall time until the last answer) and
its ratio to one client's; each the median of --rounds, the numbers of clients in turn.

With --two-models, also 2 clients each on a model of its own: `roost serve` with no model,
loading each on demand in an engine process of its own (the model's file and a copy of it,
which the server takes for another model), one client on each at once, set beside one
client alone with both loaded.

    .venv/bin/python bench/serve_clients.py [--model PATH] [--tokens 64] [--requests 3] [--rounds 3]
                                            [--threads N] [--two-models]
"""

from __future__ import annotations

import argparse
import itertools
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from contextlib import contextmanager

from openai import OpenAI

from parallel_sequences import PROMPTS
from roost.machine import hardware
from roost.models import catalog

NUMBERS = itertools.count(1)  # every request's, across all runs


@contextmanager
def server(threads: int, *model: str):
    """A `roost serve [MODEL --name bench]` on a free port (with no MODEL, it loads the
    models requests name); yields its URL and stops it after."""
    named = [*model, "--name", "bench"] if model else []
    cmd = [sys.executable, "-m", "roost", "serve", *named, "--port", "0", "--ctx", "2048", "--threads", str(threads)]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL, text=True)
    try:
        line = proc.stderr.readline()
        if "roost: serving" not in line:
            sys.exit(f"the server did not start: {line}{proc.stderr.read()}")
        yield line.split(" at ", 1)[1].split("/v1", 1)[0] + "/v1"
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def clients(url: str, models: list[str], tokens: int, requests: int) -> tuple[list[float], float]:
    """One client a model named (the same one several times: several clients on it), all
    starting at once, each asking `requests` times in a row. Returns each client's tok/s
    and the aggregate tok/s."""
    made, spent = [0] * len(models), [0.0] * len(models)
    start = threading.Barrier(len(models))

    def client(i: int) -> None:
        openai = OpenAI(base_url=url, api_key="none", max_retries=0, timeout=600)
        start.wait()
        began = time.perf_counter()
        for _ in range(requests):
            # Numbered first, so that no answer finds its prompt in the server's cache: one
            # client would otherwise skip the prefill that clients taking turns pay.
            prompt = f"Request {next(NUMBERS)}. {PROMPTS[i]}"
            answer = openai.chat.completions.create(
                model=models[i], messages=[{"role": "user", "content": prompt}], temperature=0, max_tokens=tokens,
                seed=0)
            made[i] += answer.usage.completion_tokens
        spent[i] = time.perf_counter() - began

    threads = [threading.Thread(target=client, args=(i,)) for i in range(len(models))]
    began = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - began
    return [m / s for m, s in zip(made, spent)], sum(made) / wall


def rounds(url: str, setups: dict[str, list[str]], args) -> None:
    """Each setup (a label and the model each of its clients asks) in turn, --rounds times
    (alternating, so a busy machine slows them alike); printed: each client's median tok/s,
    the median aggregate and its ratio to the first setup's."""
    runs: dict[str, list[tuple[list[float], float]]] = {label: [] for label in setups}
    for _ in range(args.rounds):
        for label, models in setups.items():
            runs[label].append(clients(url, models, args.tokens, args.requests))
    base = None
    for label, results in runs.items():
        each = " ".join(f"{statistics.median(r[0][i] for r in results):.1f}" for i in range(len(setups[label])))
        aggregate = statistics.median(r[1] for r in results)
        base = base or aggregate
        print(f"{label}: each {each} tok/s; aggregate {aggregate:.1f} tok/s ({aggregate / base:.2f}x the first)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=catalog.demo_model_path(), help="a .gguf (default: the demo model)")
    parser.add_argument("--tokens", type=int, default=64)
    parser.add_argument("--requests", type=int, default=3, help="requests each client sends in a row")
    parser.add_argument("--rounds", type=int, default=3, help="times each setup is run (the median is printed)")
    parser.add_argument("--threads", type=int, default=hardware.default_threads())
    parser.add_argument("--two-models", action="store_true",
                        help="also 2 clients on two models at once (MODEL and a copy of its file)")
    args = parser.parse_args()

    load_avg = os.getloadavg()
    print(f"roost serve {os.path.basename(args.model)}, {args.threads} threads, {args.requests} requests of up to "
          f"{args.tokens} tokens a client, greedy, median of {args.rounds} rounds; "
          f"load average before: {load_avg[0]:.2f} {load_avg[1]:.2f}")
    with server(args.threads, args.model) as url:
        # Warm, two at once: the first answers' allocations (and the first clients waiting
        # together) are not the cost measured.
        clients(url, ["bench"] * 2, 8, 1)
        rounds(url, {f"{n} client{'s' if n > 1 else ' '}": ["bench"] * n for n in (1, 2, 4)}, args)
    if args.two_models:
        with tempfile.TemporaryDirectory() as folder, server(args.threads) as url:
            # Another file is another model to the server: an engine process of its own.
            copy = shutil.copy(args.model, os.path.join(folder, "copy.gguf"))
            models = [args.model, copy]
            clients(url, models, 8, 1)  # both loaded and warm
            rounds(url, {"1 client, two models loaded": models[:1], "2 clients on two models": models}, args)
    load_avg = os.getloadavg()
    print(f"load average after: {load_avg[0]:.2f} {load_avg[1]:.2f}")


if __name__ == "__main__":
    main()
