"""How right is the planner's predicted decode speed? `roost fit`'s predicted tok/s (the
bandwidth ceiling × fit.DECODE_SHARE for the device) against what `roost bench` measures,
on the same machine, in one run.

For each model: the bandwidth is measured once (as the first `roost fit` does), then
`roost fit FILE --json` gives the ceiling and the prediction and `roost bench FILE --json`
the measured generation rate. Printed per model:
  - predicted ÷ measured (1.0: the prediction is right; > 1: it promises too much);
  - measured ÷ ceiling: the share decoding reached here, to compare with DECODE_SHARE.
Target: predicted ÷ measured between 0.7 and 1.4 for models of 100 MB and more on a CPU,
so that the 10 tok/s floor (fit.MIN_TPS) passes over what really crawls.

    .venv/bin/python bench/predicted_speed.py [--model PATH ...] [-r 3] [-n 64]

Without --model: the bundled SmolLM2-135M and two synthetic llama models the tests build
(random weights, real shapes: ~0.5B at Q8_0, ~1B and ~3B at Q4_0), which read as many bytes
a token as real models of their size. On a shared machine, run it when nothing else is.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# (n_layer, n_embd, n_head, n_head_kv, n_ff, qtype): shapes of Qwen2.5-0.5B, Llama-3.2-1B and Qwen2.5-3B
SYNTHETIC = {"synthetic-0.5B-Q8_0": (24, 896, 14, 2, 4864, "Q8_0"),
             "synthetic-1B-Q4_0": (16, 2048, 32, 8, 8192, "Q4_0"),
             "synthetic-3B-Q4_0": (36, 2048, 16, 2, 11008, "Q4_0")}


def roost(*args: str, env: dict) -> dict:
    out = subprocess.run([sys.executable, "-m", "roost", *args, "--json"], capture_output=True, text=True,
                         cwd=ROOT, env=env, check=True)
    return json.loads(out.stdout)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", action="append", help="a .gguf file (default: the demo and two synthetic models)")
    parser.add_argument("-r", "--repetitions", type=int, default=3)
    parser.add_argument("-n", "--tg", type=int, default=64)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        env = {**os.environ, "ROOST_DATA_DIR": tmp}  # its own bandwidth measurement and bench history
        env.pop("ROOST_MACHINE", None)  # this machine, not a recorded one
        models = args.model or _default_models(tmp)
        rows = [("model", "file MiB", "ceiling", "predicted", "measured tg", "pred ÷ meas", "meas ÷ ceiling")]
        for path in models:
            planned = roost("fit", path, env=env)
            option = planned["options"][0]
            bench = roost("bench", path, "-r", str(args.repetitions), "-n", str(args.tg), "-p", "64", env=env)
            measured = bench["tg"]["mean"]
            rows.append((os.path.basename(path), f"{os.path.getsize(path) / 2**20:.0f}",
                         f"{option['ceiling_tps']:.1f}", f"{option['predicted_tps']:.1f}",
                         f"{measured:.1f} ± {bench['tg']['sd']:.1f}", f"{option['predicted_tps'] / measured:.2f}",
                         f"{measured / option['ceiling_tps']:.2f}"))
        with open(os.path.join(tmp, "cache", "bandwidth.json")) as f:
            print(f"bandwidth measured: {json.load(f)} GB/s")
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for r in rows:
        print("  ".join(c.rjust(w) for c, w in zip(r, widths)))


def _default_models(tmp: str) -> list[str]:
    sys.path.insert(0, os.path.join(ROOT, "tests"))
    from gguf_files import synthetic_llama

    from roost.models import catalog

    demo = catalog.demo_model_path()
    models = [demo]
    for name, (n_layer, n_embd, n_head, n_head_kv, n_ff, qtype) in SYNTHETIC.items():
        models.append(synthetic_llama(demo, os.path.join(tmp, f"{name}.gguf"), n_layer=n_layer, n_embd=n_embd,
                                      n_head=n_head, n_head_kv=n_head_kv, n_ff=n_ff, qtype=qtype))
    return models


if __name__ == "__main__":
    main()
