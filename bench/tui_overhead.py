"""Does drawing the chat app slow decoding? The same prompt, seed and model through the
TUI (headless, driven by Pilot; stats are the engine's own events) and through
`roost run --json`, alternating, in one run. Also the app's own memory: resident memory
with the model loaded and one answer given, minus llama.cpp's buffers.
Targets (issue 5): decode ratio >= 0.97; app memory beyond the model <= 150 MB.

    .venv/bin/python bench/tui_overhead.py [--tokens 256] [--repeat 3]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PROMPT = "Write a long story about a dragon who learns to cook."

TUI = r"""
import asyncio, json, sys, time
from roost.backends import load, memory
from roost.models import catalog
from roost.backends.base import Params, Plan
from roost.tui.app import RoostApp
tokens = int(sys.argv[1]); prompt = sys.argv[2]
app = RoostApp(lambda: load(catalog.demo_model_path(), Plan(n_ctx=4096), isolated=True), "demo",
               Params(temperature=0, max_tokens=tokens))  # as `roost chat` loads: the engine in its own process

async def main():
    async with app.run_test(size=(100, 30)) as pilot:
        while getattr(app.screen, "session", None) is None:
            await pilot.pause(0.05)
        screen = app.screen
        screen.query_one("#prompt").value = prompt
        ui_cpu, wall = time.thread_time(), time.perf_counter()
        await pilot.press("enter")
        while not screen.session.stats:
            await pilot.pause(0.5)  # seldom: the bench's own polling would count as the app's
        ui_share = (time.thread_time() - ui_cpu) / (time.perf_counter() - wall)
        stats, reading = screen.session.stats[-1], screen.engine.memory()
        print(json.dumps({"decode_tps": stats.decode_tps, "generated": stats.generated_tokens,
                          "rss": reading.rss_bytes + (reading.app_rss_bytes or 0), "buffers": sum(reading.buffers.values()),
                          "model": reading.buffers.get("model", 0), "ui_share": ui_share}))
        await app.action_quit()

asyncio.run(main())
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tokens", type=int, default=256)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    env = {**os.environ, "ROOST_HISTORY_DIR": os.path.join(ROOT, ".bench-history")}
    run_cmd = [sys.executable, "-m", "roost", "run", "demo", PROMPT, "--temperature", "0", "-n", str(args.tokens), "--json"]
    tui_cmd = [sys.executable, "-c", TUI, str(args.tokens), PROMPT]
    tui, cli, app_mem, beyond_model, ui, tui_rss, cli_rss = [], [], [], [], [], [], []
    for i in range(args.repeat):
        for name in (("tui", "cli") if i % 2 == 0 else ("cli", "tui")):
            out = subprocess.run(tui_cmd if name == "tui" else run_cmd, capture_output=True, text=True, env=env, cwd=ROOT)
            if out.returncode:
                sys.exit(out.stderr)
            data = json.loads(out.stdout.strip().splitlines()[-1] if name == "tui" else out.stdout)
            if name == "tui":
                tui.append(data["decode_tps"])
                ui.append(data["ui_share"])
                tui_rss.append(data["rss"])
                app_mem.append(data["rss"] - data["buffers"])
                beyond_model.append(data["rss"] - data["model"])
            else:
                cli.append(data["stats"]["decode_tps"])
                cli_rss.append(data["stats"]["peak_rss_bytes"])
    t, c = statistics.median(tui), statistics.median(cli)
    mem = statistics.median(app_mem) / 1e6
    print(f"demo model, {args.tokens} tokens greedy, median of {args.repeat}, alternating")
    print(f"decode tok/s: TUI {t:.1f}, roost run {c:.1f}, ratio {t / c:.3f} (target >= 0.97): {'ok' if t / c >= 0.97 else 'MISSED'}")
    print(f"the TUI's own thread (drawing, timers) used {statistics.median(ui):.0%} of a core while the engine decoded "
          f"on {os.cpu_count()} CPUs")
    over_model = statistics.median(beyond_model) / 1e6
    print(f"TUI process RSS minus the model's mapped weights: {over_model:.0f} MB (target <= 150 MB): "
          f"{'ok' if over_model <= 150 else 'MISSED'}; minus all llama.cpp buffers (KV, compute too): {mem:.0f} MB")
    extra = (statistics.median(tui_rss) - statistics.median(cli_rss)) / 1e6
    print(f"TUI process RSS minus `roost run`'s peak RSS, same model and context: {extra:.0f} MB (the app's own cost)")


if __name__ == "__main__":
    main()
