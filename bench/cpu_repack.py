"""What loading without llama.cpp's extra buffer types costs on a CPU, measured in one run.

On an AMX CPU roost loads models with use_extra_bufts off (issue 17: llama.cpp's AMX
matmul crashes in llama-cpp-python 0.3.36), which also turns off CPU weight repacking.
The other way round the crash, a build without AMX, keeps repacking. This prints, for
quants llama.cpp repacks (Q4_0) and one it does not (Q8_0 here), prefill and decode
tok/s with the extra buffer types on and off, and their ratios, on this machine: on a
CPU without AMX that is what repacking is worth, the price of the runtime way round.

    .venv/bin/python bench/cpu_repack.py [--layers 12] [--embd 1024] [--repeat 3]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "tests"))

PROMPT = " ".join(f"Item {i} is a small grey stone found near the river." for i in range(40))


def measure(path: str, extra_bufts: bool, threads: int, repeat: int) -> tuple[float, float]:
    from roost.backends import llama_cpp
    from roost.backends.base import Params, Plan

    # The one switch the engine turns on an AMX CPU, turned here by hand.
    real = llama_cpp.engine_build.amx_crash
    llama_cpp.engine_build.amx_crash = lambda *a: None if extra_bufts else "bench"
    try:
        engine = llama_cpp.LlamaCppEngine(path, Plan(n_ctx=1024, n_threads=threads))
    finally:
        llama_cpp.engine_build.amx_crash = real
    pp, tg = [], []
    try:
        for i in range(repeat + 1):  # the first is a warm-up
            stats = None
            for event in engine.complete(f"{i} {PROMPT}", Params(max_tokens=32, temperature=0)):
                stats = getattr(event, "stats", stats)
            if i:
                pp.append(stats.prefill_tps)
                tg.append(stats.decode_tps)
    finally:
        engine.close()
    return statistics.median(pp), statistics.median(tg)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--layers", type=int, default=12)
    parser.add_argument("--embd", type=int, default=1024)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()

    import gguf_files
    from roost.machine import hardware
    from roost.models import catalog

    threads = hardware.default_threads()
    print(f"{hardware.detect(gpus=False).cpu_model}, {threads} threads; synthetic llama, "
          f"{args.layers} layers × {args.embd}")
    print(f"{'quant':6} {'pp on':>9} {'pp off':>9} {'off/on':>7} {'tg on':>8} {'tg off':>8} {'off/on':>7}")
    with tempfile.TemporaryDirectory() as folder:
        for qtype in ("Q4_0", "Q8_0"):
            path = gguf_files.synthetic_llama(
                catalog.demo_model_path(), os.path.join(folder, f"{qtype}.gguf"), n_layer=args.layers,
                n_embd=args.embd, n_head=args.embd // 64, n_head_kv=args.embd // 256, n_ff=args.embd * 11 // 4,
                qtype=qtype)
            (pp_on, tg_on), (pp_off, tg_off) = (measure(path, on, threads, args.repeat) for on in (True, False))
            print(f"{qtype:6} {pp_on:9.1f} {pp_off:9.1f} {pp_off / pp_on:7.2f} {tg_on:8.1f} {tg_off:8.1f} "
                  f"{tg_off / tg_on:7.2f}")


if __name__ == "__main__":
    main()
