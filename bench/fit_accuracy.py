"""How right is roost's memory estimate? Measured against what llama.cpp really allocates.

For each model and context, a fresh process loads the model, decodes a 128-token answer,
then fills the whole context (only then has the OS mapped every page llama.cpp reserved).
Printed per row:
  - estimate ÷ llama.cpp's own buffer report (model + KV + compute);
  - estimate with runtime overhead ÷ the process's resident memory growth;
  - predicted decode ceiling (bandwidth measured in this run) ÷ measured decode tok/s;
  - with a q8_0 and a q4_0 KV cache (flash attention on, as they need): estimate ÷
    llama.cpp's buffer report again, from a load alone.
Target (issues 3 and 22): every memory ratio between 0.90 and 1.10 at every context.

    .venv/bin/python bench/fit_accuracy.py [--model PATH ...] [--ctx 512 2048 8192]

Without --model: the bundled SmolLM2-135M and a synthetic 8-layer model of another shape.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

MEASURE = r"""
import json, sys
import llama_cpp
from roost.backends import memory
from roost.backends.base import Params, Plan
from roost.backends.llama_cpp import LlamaCppEngine
path, n_ctx = sys.argv[1], int(sys.argv[2])
base = memory.rss_bytes()
engine = LlamaCppEngine(path, Plan(n_ctx=n_ctx))
story = [{"role": "user", "content": "Write a long story about a dragon who learns to cook."}]
for event in engine.stream(story, Params(temperature=0, max_tokens=128)):
    pass
decode = event.stats
# Fill the context: llama.cpp reserves compute for a full one, and the OS only maps the
# pages a full one touches.
for event in engine.stream([{"role": "user", "content": "word " * (n_ctx - 150)}], Params(temperature=0, max_tokens=16)):
    pass
print(json.dumps({"buffers": engine.memory().buffers, "rss_growth": memory.rss_bytes() - base,
                  "decode_tps": decode.decode_tps, "decode_ctx": decode.context_tokens,
                  "filled": event.stats.context_tokens}))
"""

# A load alone, with a KV cache type: llama.cpp's buffers are all reported by then.
BUFFERS = r"""
import json, sys
from roost.backends.base import Plan
from roost.backends.llama_cpp import LlamaCppEngine
engine = LlamaCppEngine(sys.argv[1], Plan(n_ctx=int(sys.argv[2]), kv_type=sys.argv[3]))
print(json.dumps(engine.memory().buffers))
"""
QUANTIZED_KV = ("q8_0", "q4_0")


def measure(script: str, *args: str) -> dict:
    out = subprocess.run([sys.executable, "-c", script, *args], capture_output=True, text=True, cwd=ROOT)
    if out.returncode:
        sys.exit(out.stderr)
    return json.loads(out.stdout.strip().splitlines()[-1])


def reported(buffers: dict) -> int:
    return buffers["model"] + buffers["kv"] + buffers["compute"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", action="append", help="a .gguf (repeatable)")
    parser.add_argument("--ctx", type=int, nargs="+", default=[512, 2048, 8192])
    args = parser.parse_args()

    from roost.machine import bandwidth, fit, hardware
    from roost.models import catalog, gguf_info

    models = args.model
    if not models:
        sys.path.insert(0, os.path.join(ROOT, "tests"))
        from gguf_files import synthetic_llama

        synthetic = os.path.join(tempfile.mkdtemp(), "synthetic-8x1024.gguf")
        synthetic_llama(catalog.demo_model_path(), synthetic, n_layer=8, n_embd=1024, n_head=16, n_head_kv=4, n_ff=2816)
        models = [catalog.demo_model_path(), synthetic]

    threads = hardware.default_threads()
    gbs = bandwidth.measure(threads)
    print(f"CPU read bandwidth measured now: {gbs:.1f} GB/s with {threads} threads")
    cpu_budget = fit.Budget("CPU", "this CPU", 0, 1 << 50, None, gbs, False, "")
    header = (f"{'model':28}{'ctx':>6}{'est MiB':>9}{'llama.cpp':>10}{'ratio':>7}"
              f"{'est+ovh':>9}{'RSS grew':>9}{'ratio':>7}{'ceiling':>9}{'decode':>8}{'ratio':>7}"
              + "".join(f"{kv + ' ratio':>12}" for kv in QUANTIZED_KV))
    print(header)
    worst = []
    for path in models:
        info = gguf_info.read(path)
        shape = fit.Shape.from_gguf(info)
        quant = fit.Quant.from_gguf(info, shape)
        for n_ctx in args.ctx:
            if n_ctx > info.n_ctx_train:
                continue
            m = measure(MEASURE, path, str(n_ctx))
            # What Plan's "auto" loads on this CPU, as the engine resolves it.
            est = fit.estimate(shape, quant, n_ctx, flash_attn=fit.flash_attention("auto", "f16", "CPU"))
            mine = est.weights + est.kv + est.compute_reserved
            ceiling = fit.ceiling(shape, quant, cpu_budget, 0, ctx_used=m["decode_ctx"])
            r_buf, r_rss = mine / reported(m["buffers"]), est.total / m["rss_growth"]
            kv_ratios = []
            for kv in QUANTIZED_KV:
                planned = fit.estimate(shape, quant, n_ctx, kv_type=kv, flash_attn=True)
                kv_ratios.append((planned.weights + planned.kv + planned.compute_reserved)
                                 / reported(measure(BUFFERS, path, str(n_ctx), kv)))
            worst += [r_buf, r_rss, *kv_ratios]
            mib = 2**20
            print(f"{os.path.basename(path)[:27]:28}{n_ctx:>6}{mine / mib:>9.1f}{reported(m['buffers']) / mib:>10.1f}"
                  f"{r_buf:>7.3f}{est.total / mib:>9.1f}{m['rss_growth'] / mib:>9.1f}{r_rss:>7.3f}"
                  f"{ceiling:>9.0f}{m['decode_tps']:>8.1f}{m['decode_tps'] / ceiling:>7.2f}"
                  + "".join(f"{r:>12.3f}" for r in kv_ratios))
    ok = all(0.90 <= r <= 1.10 for r in worst)
    print(f"memory ratios from {min(worst):.3f} to {max(worst):.3f} (target 0.90-1.10): {'ok' if ok else 'MISSED'}")
    print("RSS is read with the context filled; decode ÷ ceiling is the share of the bandwidth bound "
          "llama.cpp reaches on a 128-token answer.")


if __name__ == "__main__":
    main()
