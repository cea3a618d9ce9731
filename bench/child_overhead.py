"""What running the engine in a process of its own (backends/child.py) costs, measured in one run.

Each way runs in fresh processes, as a command would: the same model, prompt, greedy sampling,
context and threads, in-process and through the child, alternating. Printed:
  - decode tok/s: the engine's own timing (taken in the child, at the token) and as the
    caller receives the tokens (after the pipe), child ÷ in-process;
  - time to first token, warm, by the engine's clock and as the caller sees it (the call
    to the first Token in hand): a prompt of about 40 tokens, new each time;
  - start-up: a fresh process's start to its first token, as `roost run` would see it,
    each way (so the child's own interpreter start is counted);
  - memory: the app's RSS before loading, with the model loaded (the app and, apart, the
    child), and after close(), each way: what ending the child gives back.
Targets (issue 17): decode ratio >= 0.99, TTFT added <= 5 ms; `roost run` would use the
child only if start-up and TTFT added are <= 0.05 s.

    .venv/bin/python bench/child_overhead.py [--model PATH] [--tokens 128] [--repeat 8]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

PROMPT = "Write a long story about a dragon who learns to cook."

# One fresh process, the way a command runs: load (in-process or isolated), one short answer
# whose first token is printed at once (start-up, timed from outside), then, warm: nine
# one-token answers to new prompts (TTFT, their median) and a long one (decode), timed by
# the engine and as the caller gets them; memory before, loaded and after close. JSON on stderr.
FRESH = r"""
import json, sys, time
from roost.backends import load, memory
from roost.backends.base import Done, Params, Plan, Token
model, mode, ctx, tokens, prompt = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), sys.argv[5]
PROBES = 9
before = memory.rss_bytes()
engine = load(model, Plan(n_ctx=ctx), isolated=mode == "child")
for event in engine.stream([{"role": "user", "content": "Say hello."}], Params(temperature=0, max_tokens=4)):
    if isinstance(event, Token):
        sys.stdout.write(event.text); sys.stdout.flush()
def answer(prompt, n):
    called, stamps = time.perf_counter(), []
    for event in engine.stream([{"role": "user", "content": prompt}], Params(temperature=0, max_tokens=n)):
        if isinstance(event, Token):
            stamps.append(time.perf_counter())
        else:
            return event, called, stamps
probes = [answer(f"Question {k}. " + prompt, 1) for k in range(PROBES)]  # prefill alone, new prompts
own_ttft = sorted(d.stats.ttft_s for d, _, _ in probes)[PROBES // 2]
caller_ttft = sorted(s[0] - c for _, c, s in probes)[PROBES // 2]
done, called, stamps = answer(prompt, tokens)
reading = engine.memory()
loaded_app = memory.rss_bytes()
engine.close()
print(json.dumps({"text": done.text, "own_decode": done.stats.decode_tps, "own_ttft": own_ttft,
                  "caller_ttft": caller_ttft, "caller_decode": (len(stamps) - 1) / (stamps[-1] - stamps[0]),
                  "before": before, "app_loaded": loaded_app, "engine": reading.rss_bytes if mode == "child" else 0,
                  "after": memory.rss_bytes()}), file=sys.stderr)
"""


def fresh(cmd: list[str]) -> dict:
    """Run cmd; time its first stdout byte from the moment it was started."""
    started = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL)
    first = None
    while chunk := os.read(proc.stdout.fileno(), 4096):
        if first is None and chunk.strip():
            first = time.perf_counter() - started
    err = proc.stderr.read()
    if proc.wait() != 0:
        sys.exit(f"failed: {' '.join(cmd[:4])}…\n{err.decode()}")
    return {"first_s": first, **json.loads(err.decode().strip().splitlines()[-1])}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", help="a .gguf (default: the bundled demo model)")
    parser.add_argument("--tokens", type=int, default=128)
    parser.add_argument("--ctx", type=int, default=2048)
    parser.add_argument("--repeat", type=int, default=8)
    args = parser.parse_args()

    from roost.machine import hardware
    from roost.models import catalog

    model = args.model or catalog.demo_model_path()
    runs = {"llama": [], "child": []}
    for i in range(args.repeat):
        # Alternate the order so that a slow spell on a shared machine hits both ways.
        for mode in (("llama", "child") if i % 2 == 0 else ("child", "llama")):
            cmd = [sys.executable, "-c", FRESH, model, mode, str(args.ctx), str(args.tokens), f"Story {i + 1}. {PROMPT}"]
            runs[mode].append(fresh(cmd))
            r = runs[mode][-1]
            print(f"run {i} {mode:5} " + " ".join(f"{k}={r[k]:.4f}" for k in
                  ("first_s", "own_decode", "caller_decode", "own_ttft", "caller_ttft")), file=sys.stderr)
    med = {mode: {k: statistics.median(r[k] for r in rs) for k in rs[0] if k != "text"} for mode, rs in runs.items()}
    same = all(a["text"] == b["text"] for a, b in zip(runs["llama"], runs["child"]))

    mib = 2**20
    c, l = med["child"], med["llama"]
    print(f"model {os.path.basename(model)}, {hardware.default_threads()} threads, ctx {args.ctx}, "
          f"{args.tokens} tokens, median of {args.repeat}; same text both ways: {same}")
    print(f"{'':40}{'child':>10}{'in-proc':>10}{'ratio':>8}")
    for label, key, scale in (
        ("decode tok/s, engine's own timing", "own_decode", 1),
        ("decode tok/s, as the caller gets them", "caller_decode", 1),
        ("TTFT, engine's own, ms", "own_ttft", 1000),
        ("TTFT, as the caller gets it, ms", "caller_ttft", 1000),
        ("process start to first token, s", "first_s", 1),
    ):
        print(f"{label:40}{c[key] * scale:10.3f}{l[key] * scale:10.3f}{c[key] / l[key]:8.3f}")
    print(f"{'memory, MiB':32}{'app before':>11}{'app loaded':>11}{'engine proc':>12}{'app after close':>16}")
    for mode, label in (("llama", "in-process"), ("child", "child")):
        m = {k: med[mode][k] / mib for k in ("before", "app_loaded", "engine", "after")}
        print(f"  {label:30}{m['before']:11.1f}{m['app_loaded']:11.1f}{m['engine']:12.1f}{m['after']:16.1f}")
    print(f"  kept after close: child {(c['after'] - c['before']) / mib:+.1f} MiB (the engine's all given back), "
          f"in-process {(l['after'] - l['before']) / mib:+.1f} MiB")
    decode = c["own_decode"] / l["own_decode"]
    caller = c["caller_decode"] / l["caller_decode"]
    ttft = (c["caller_ttft"] - l["caller_ttft"]) * 1000
    startup = c["first_s"] - l["first_s"]
    print(f"decode ratio {decode:.3f}, as received {caller:.3f} (target >= 0.99): "
          f"{'ok' if min(decode, caller) >= 0.99 else 'MISSED'}")
    # What the pipe itself adds is the caller's TTFT beyond the engine's, child vs in-process:
    # free of the run-to-run noise in prefill that the difference of medians carries.
    pipe = ((c["caller_ttft"] - c["own_ttft"]) - (l["caller_ttft"] - l["own_ttft"])) * 1000
    print(f"TTFT added {ttft:+.2f} ms, of which the pipe {pipe:+.2f} ms (target <= 5 ms): "
          f"{'ok' if max(ttft, pipe) <= 5 else 'MISSED'}")
    print(f"start-up to first token added {startup:+.3f} s (roost run would take the child at <= 0.05 s): "
          f"{'would' if startup + ttft / 1000 <= 0.05 else 'stays in-process'}")


if __name__ == "__main__":
    main()
