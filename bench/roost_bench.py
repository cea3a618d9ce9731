"""`roost bench` against a raw llama-cpp-python loop, and against the bandwidth ceiling.

Both generate the same tokens (greedy, the same short prompt) with the same model,
context, threads and GPU layers, each in a fresh process, taking turns. The raw loop
(llama-cpp-python's `Llama.generate`) times its tokens the way `roost bench` counts:
tokens after the first over the time since the first. Printed:
  - tg tok/s: roost bench's mean vs the raw loop's mean (target, issue 8: >= 0.98);
  - roost bench's generation rate as a share of the bandwidth ceiling roost plans with
    (the team's reference: raw llama-cpp-python reaches ~0.72 of single-thread read
    bandwidth here with SmolLM2 Q4_1).

    .venv/bin/python bench/roost_bench.py [--model PATH] [--tg 128] [--repeat 4] [--gpu-layers N]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile

RAW = r"""
import json, sys, time
import llama_cpp
model, n_ctx, threads, tg, reps, layers = sys.argv[1], *map(int, sys.argv[2:7])
llm = llama_cpp.Llama(model_path=model, n_ctx=n_ctx, n_threads=threads, n_gpu_layers=layers, verbose=False)
def once(prompt, n):
    # Tokens as they are sampled: text chunks would be held back while a token's bytes
    # are not yet whole UTF-8, and bunch up.
    stamps = []
    for _ in llm.generate(llm.tokenize(prompt.encode()), temp=0.0, reset=True):
        stamps.append(time.perf_counter())
        if len(stamps) == n:
            break
    return (len(stamps) - 1) / (stamps[-1] - stamps[0])
once("warm up. 1, 2, 3, 4, 5, 6, 7, 8,", 8)
rates = []
for rep in range(1, reps + 1):
    rates.append(once(f"{rep}. 1, 2, 3, 4, 5, 6, 7, 8,", tg))
print(json.dumps(rates))
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", help="a .gguf (default: the bundled demo model)")
    parser.add_argument("--tg", type=int, default=128)
    parser.add_argument("--pp", type=int, default=512)
    parser.add_argument("--reps", type=int, default=5, help="repetitions inside each process")
    parser.add_argument("--repeat", type=int, default=4, help="processes of each, taking turns")
    parser.add_argument("--gpu-layers", type=int,
                        help="layers on the GPU for both (default: roost's choice, and all of them for the raw loop on a GPU build)")
    args = parser.parse_args()

    from roost.machine import hardware
    from roost.models import catalog

    model = args.model or catalog.demo_model_path()
    threads, n_ctx = hardware.default_threads(), args.pp + args.tg + 64
    data = tempfile.mkdtemp(prefix="roost-bench-")  # this script's results stay out of the user's history
    ours_cmd = [sys.executable, "-m", "roost", "bench", model, "--json", "-p", str(args.pp), "-n", str(args.tg),
                "-r", str(args.reps), "--threads", str(threads)]
    if args.gpu_layers is not None:
        ours_cmd += ["--gpu-layers", str(args.gpu_layers)]
    import llama_cpp

    layers = args.gpu_layers if args.gpu_layers is not None else -1 if llama_cpp.llama_supports_gpu_offload() else 0
    raw_cmd = [sys.executable, "-c", RAW, model, str(n_ctx), str(threads), str(args.tg), str(args.reps), str(layers)]
    env = {**os.environ, "ROOST_DATA_DIR": data}

    def run(cmd):
        out = subprocess.run(cmd, capture_output=True, text=True, env=env, stdin=subprocess.DEVNULL)
        if out.returncode != 0:
            sys.exit(f"failed: {' '.join(cmd[:5])}…\n{out.stderr}")
        return json.loads(out.stdout)

    ours, raw, ceiling = [], [], None
    for i in range(args.repeat):
        for cmd in ((ours_cmd, raw_cmd) if i % 2 == 0 else (raw_cmd, ours_cmd)):
            if cmd is ours_cmd:
                r = run(cmd)
                ours.append(r["tg"]["mean"])
                ceiling = r["ceiling_tps"]
            else:
                raw.append(statistics.fmean(run(cmd)))
        print(f"round {i + 1}: roost bench tg{args.tg} {ours[-1]:.1f} tok/s · raw loop {raw[-1]:.1f}", file=sys.stderr)

    ratio = statistics.median(o / r for o, r in zip(ours, raw))
    print(json.dumps({"tg": args.tg, "roost_bench_tps": [round(x, 2) for x in ours], "raw_tps": [round(x, 2) for x in raw],
                      "ratio": round(ratio, 3), "ceiling_tps": ceiling,
                      "of_ceiling": round(statistics.median(ours) / ceiling, 3) if ceiling else None}, indent=2))
    print(f"generation, roost bench / raw llama-cpp-python: {ratio:.3f} (target >= 0.98: {'ok' if ratio >= 0.98 else 'MISSED'})")
    if ceiling:
        print(f"generation / bandwidth ceiling ({ceiling:.1f} tok/s): {statistics.median(ours) / ceiling:.2f}")


if __name__ == "__main__":
    main()
