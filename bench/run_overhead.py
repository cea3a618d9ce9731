"""What `roost run` costs over a bare llama-cpp-python loop, measured in one run.

Both run the same model, prompt, greedy sampling, context and threads, each in a fresh
process whose stdout is read as it streams. Printed:
  - decode tok/s: roost's own --json stats vs the raw loop's own timing, and both from
    the outside (the token count over the time between first and last streamed byte);
  - process start to first token, from the outside, and roost's extra seconds.
Targets (issue 2): decode ratio >= 0.98, start-up overhead <= 0.25 s.

    .venv/bin/python bench/run_overhead.py [--model PATH] [--tokens 256] [--repeat 6]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import time

PROMPT = "Write a long story about a dragon who learns to cook."

RAW_LOOP = r"""
import json, sys, time
import llama_cpp
model, n_ctx, threads, tokens, prompt = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), sys.argv[5]
llm = llama_cpp.Llama(model_path=model, n_ctx=n_ctx, n_threads=threads, verbose=False)
stamps, text = [], []
for chunk in llm.create_chat_completion([{"role": "user", "content": prompt}], stream=True,
                                        temperature=0, max_tokens=tokens):
    piece = chunk["choices"][0]["delta"].get("content")
    if piece:
        sys.stdout.write(piece); sys.stdout.flush()
        stamps.append(time.perf_counter()); text.append(piece)
print(json.dumps({"chunks": len(stamps), "decode_s": stamps[-1] - stamps[0]}), file=sys.stderr)
"""


def streamed(cmd: list[str]) -> dict:
    """Run cmd; time its first and last stdout bytes from the moment it was started."""
    started = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL)
    out, first, last = b"", None, None
    while chunk := os.read(proc.stdout.fileno(), 4096):
        now = time.perf_counter()
        if chunk.strip():
            first = first or now
            last = now
        out += chunk
    err = proc.stderr.read()
    if proc.wait() != 0:
        sys.exit(f"failed: {' '.join(cmd[:4])}…\n{err.decode()}")
    return {"text": out.decode().strip(), "first_s": first - started, "stream_s": last - first, "stderr": err.decode()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", help="a .gguf (default: the bundled demo model)")
    parser.add_argument("--tokens", type=int, default=256)
    parser.add_argument("--ctx", type=int, default=4096)
    parser.add_argument("--repeat", type=int, default=6)
    args = parser.parse_args()

    from roost.machine import hardware
    from roost.models import catalog

    model = args.model or catalog.demo_model_path()
    threads = hardware.default_threads()
    common = ["--temperature", "0", "-n", str(args.tokens), "--ctx", str(args.ctx), "--threads", str(threads)]
    roost_cmd = [sys.executable, "-m", "roost", "run", model, PROMPT, *common, "--stats"]
    raw_cmd = [sys.executable, "-c", RAW_LOOP, model, str(args.ctx), str(threads), str(args.tokens), PROMPT]

    rows = []
    for i in range(args.repeat):
        # Alternate the order so that a slow spell on a shared machine hits both sides.
        first, second = (roost_cmd, raw_cmd) if i % 2 == 0 else (raw_cmd, roost_cmd)
        runs = {id(cmd): streamed(cmd) for cmd in (first, second)}
        ours, raw = runs[id(roost_cmd)], runs[id(raw_cmd)]
        own = re.search(r"generated (\d+) tok at ([\d.]+) tok/s", ours["stderr"])
        n, ours_tps = int(own[1]), float(own[2])
        raw_own = json.loads(raw["stderr"].strip().splitlines()[-1])
        # From the outside only printed tokens are seen: not an end-of-turn token.
        printed = n - ("stopped:" not in ours["stderr"])
        rows.append({
            "same_text": ours["text"] == raw["text"],
            "roost_decode": ours_tps,
            "raw_decode": (raw_own["chunks"] - 1) / raw_own["decode_s"],
            "roost_decode_outside": (printed - 1) / ours["stream_s"],
            "raw_decode_outside": (raw_own["chunks"] - 1) / raw["stream_s"],
            "roost_first": ours["first_s"],
            "raw_first": raw["first_s"],
        })
        print("run " + " ".join(f"{k}={v:.3f}" for k, v in rows[-1].items() if k != "same_text"), file=sys.stderr)

    med = {k: statistics.median(r[k] for r in rows) for k in rows[0] if k != "same_text"}
    print(f"model {os.path.basename(model)}, {threads} threads, ctx {args.ctx}, up to {args.tokens} tokens, "
          f"median of {args.repeat}; same text as the raw loop: {all(r['same_text'] for r in rows)}")
    print(f"{'':34}{'roost':>10}{'raw':>10}{'ratio':>8}")
    for label, a, b in (
        ("decode tok/s, engines' own timing", med["roost_decode"], med["raw_decode"]),
        ("decode tok/s, from the outside", med["roost_decode_outside"], med["raw_decode_outside"]),
        ("start to first token, s", med["roost_first"], med["raw_first"]),
    ):
        print(f"{label:34}{a:10.3f}{b:10.3f}{a / b:8.3f}")
    overhead = med["roost_first"] - med["raw_first"]
    decode_ratio = med["roost_decode"] / med["raw_decode"]
    print(f"decode ratio {decode_ratio:.3f} (target >= 0.98): {'ok' if decode_ratio >= 0.98 else 'MISSED'}")
    print(f"start-up overhead {overhead:+.3f} s (target <= 0.25 s): {'ok' if overhead <= 0.25 else 'MISSED'}")


if __name__ == "__main__":
    main()
