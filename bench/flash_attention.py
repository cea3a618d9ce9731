"""Flash attention on or off, on this machine: what it does to speed and to llama.cpp's
compute buffer, measured in one run. fit.CPU_FLASH_ATTN (roost's "auto" on a CPU) is
picked from this.

For each model and each depth (tokens already in the context, as llama-bench's -d), the
model is loaded with flash attention off, then on, and `roost bench`'s measurement runs
(measure/bench.py): prompt processing (pp) and generation (tg) tok/s. Printed per row:
on ÷ off for pp and tg (above 1: flash attention is faster), and the compute buffer
llama.cpp reports with each (flash attention drops the n_ctx × heads attention scores).

    .venv/bin/python bench/flash_attention.py [--model PATH ...] [--depth 0 2048] [-r 2] [--gpu-layers -1]

Without --model: the bundled SmolLM2-135M and a synthetic model of Qwen2.5-0.5B's shape
(tests/gguf_files.py). On a shared machine, run it when nothing else is.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", action="append", help="a .gguf (repeatable)")
    parser.add_argument("--depth", type=int, nargs="+", default=[0, 2048])
    parser.add_argument("-p", "--pp", type=int, default=256)
    parser.add_argument("-n", "--tg", type=int, default=32)
    parser.add_argument("-r", "--repetitions", type=int, default=2)
    parser.add_argument("--gpu-layers", type=int, default=0, help="layers on the GPU (-1: all), for a GPU's rows")
    args = parser.parse_args()

    from roost.backends.base import Plan
    from roost.backends.llama_cpp import LlamaCppEngine
    from roost.measure import bench
    from roost.models import catalog

    with tempfile.TemporaryDirectory() as tmp:
        models = args.model
        if not models:
            sys.path.insert(0, os.path.join(ROOT, "tests"))
            from gguf_files import synthetic_llama

            demo = catalog.demo_model_path()
            models = [demo, synthetic_llama(demo, os.path.join(tmp, "synthetic-0.5B-Q8_0.gguf"), n_layer=24,
                                            n_embd=896, n_head=14, n_head_kv=2, n_ff=4864, n_ctx=32768)]
        rows = [("model", "depth", "pp off", "pp on", "pp on÷off", "tg off", "tg on", "tg on÷off",
                 "compute MiB off", "on")]
        for path in models:
            for depth in args.depth:
                measured = {}
                for flash in ("off", "on"):
                    engine = LlamaCppEngine(path, Plan(n_ctx=depth + args.pp + args.tg + 64, flash_attn=flash,
                                                           n_gpu_layers=args.gpu_layers))
                    try:
                        result = bench.run(engine, args.pp, args.tg, args.repetitions, model=path, load_s=None,
                                           ceiling_tps=None, depth=depth)
                        measured[flash] = (result.pp.mean, result.tg.mean, engine.memory().buffers["compute"])
                    finally:
                        engine.close()
                (pp_off, tg_off, c_off), (pp_on, tg_on, c_on) = measured["off"], measured["on"]
                rows.append((os.path.basename(path)[:28], str(depth), f"{pp_off:.1f}", f"{pp_on:.1f}",
                             f"{pp_on / pp_off:.2f}", f"{tg_off:.1f}", f"{tg_on:.1f}", f"{tg_on / tg_off:.2f}",
                             f"{c_off / 2**20:.1f}", f"{c_on / 2**20:.1f}"))
                print("  ".join(rows[-1]), file=sys.stderr, flush=True)
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for r in rows:
        print("  ".join(c.rjust(w) for c, w in zip(r, widths)))
    print("tok/s: mean of the repetitions after a warm-up; compute: llama.cpp's reported compute buffer at "
          "that load's context (depth + pp + tg + 64)")


if __name__ == "__main__":
    main()
