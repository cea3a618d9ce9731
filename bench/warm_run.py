"""What a running `roost serve` saves a shell loop of one-shot prompts, measured in one run.

A `roost serve demo` on 127.0.0.1 (in a data folder of its own, where `roost run` finds
its state file), and ten `roost run demo "..." -n 8 -t 0` through it, taking turns with
ten `--no-server` runs that load the model in-process each time, as a shell loop without
a server does. Printed: each prompt's wall time (process start to exit) both ways, their
medians, and with-server ÷ without. Both ways must give the same greedy answer.
What a server saves is the load (and the process's start with the engine's imports): on
the demo, whose load is a quarter of a second, a prompt takes about half its time (0.19
to 0.52 measured on two busy shared cores); on a real model, whose load is seconds, far less.

    .venv/bin/python bench/warm_run.py [--model demo] [--runs 10]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

PROMPTS = ["What is the capital of Japan?", "Name a colour.", "What is 2 + 2?", "Say hello.", "Name a fruit."]


def roost(*args: str, env: dict) -> tuple[float, subprocess.CompletedProcess]:
    began = time.perf_counter()
    result = subprocess.run([sys.executable, "-m", "roost", *args], capture_output=True, text=True,
                            stdin=subprocess.DEVNULL, env=env)
    if result.returncode != 0:
        sys.exit(f"roost {' '.join(args)} failed: {result.stderr}")
    return time.perf_counter() - began, result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="demo")
    parser.add_argument("--runs", type=int, default=10)
    args = parser.parse_args()

    env = {**os.environ, "ROOST_DATA_DIR": tempfile.mkdtemp(prefix="roost-warm-run-")}
    server = subprocess.Popen([sys.executable, "-m", "roost", "serve", args.model, "--port", "0"],
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL, text=True,
                              env=env)
    try:
        for line in server.stderr:
            if "roost: serving" in line:
                break
        else:
            sys.exit("the server did not start")
        url = line.split(" at ", 1)[1].split("/v1", 1)[0]
        _, first = roost("run", args.model, PROMPTS[0], "-n", "8", "-t", "0", "--json", env=env)
        if json.loads(first.stdout)["server"] != url:
            sys.exit(f"roost run did not go through the server at {url}: {first.stdout}")

        warm, cold = [], []
        print(f"{args.runs} prompts, {args.model}, -n 8 -t 0; server at {url}\n")
        print(f"{'prompt':<32}  {'with server':>11}  {'without':>8}")
        for i in range(args.runs):
            prompt = PROMPTS[i % len(PROMPTS)]
            run = ("run", args.model, prompt, "-n", "8", "-t", "0")
            # Taking turns, so that whatever else the machine does falls on both alike.
            w, through = roost(*run, env=env)
            c, here = roost(*run, "--no-server", env=env)
            if through.stdout != here.stdout:
                sys.exit(f"different answers to {prompt!r}: {through.stdout!r} (server) vs {here.stdout!r}")
            warm.append(w)
            cold.append(c)
            print(f"{prompt:<32}  {w:>9.3f} s  {c:>6.3f} s")
    finally:
        server.terminate()
        server.wait(60)

    mw, mc = statistics.median(warm), statistics.median(cold)
    print(f"\nmedian per prompt: {mw:.3f} s with the server, {mc:.3f} s without "
          f"(loop of {args.runs}: {sum(warm):.1f} s vs {sum(cold):.1f} s)")
    print(f"with server ÷ without: {mw / mc:.2f}")


if __name__ == "__main__":
    main()
