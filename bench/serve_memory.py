"""The memory a model loaded on demand by `roost serve` takes, and what its unload gives
back, measured in one run.

A `roost serve` with no model on 127.0.0.1; a request for MODEL loads it (its own engine
process); POST /api/stop unloads it. Printed: the resident memory of the server and its
engine processes together, before the load, while loaded (with the engine's own reading
and the planner's bytes, from /api/ps), and after the unload, and how much of the load
came back. On the demo at --ctx 1024: 51 MiB empty, 244 MiB loaded (the engine process
184 MiB, planned 146 MiB), 61 MiB after /api/stop: the engine's process ends, and the
server keeps only the engine library's imports (measured on two busy shared cores).

    .venv/bin/python bench/serve_memory.py [--model demo] [--ctx 1024]
"""

from __future__ import annotations

import argparse
import subprocess
import sys

import httpx2
import psutil

MiB = 2**20


def resident(proc: subprocess.Popen) -> float:
    """MiB resident in the server's process and every process under it."""
    server = psutil.Process(proc.pid)
    return sum(p.memory_info().rss for p in [server, *server.children(recursive=True)]) / MiB


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="demo")
    parser.add_argument("--ctx", default="1024")
    args = parser.parse_args()
    proc = subprocess.Popen([sys.executable, "-m", "roost", "serve", "--port", "0", "--ctx", args.ctx],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL, text=True)
    try:
        for line in proc.stderr:
            if "roost: serving" in line:
                break
        else:
            raise SystemExit("roost serve did not start")
        url = line.split(" at ", 1)[1].split("/v1", 1)[0]
        empty = resident(proc)
        answer = httpx2.post(url + "/v1/chat/completions", timeout=600, json={
            "model": args.model, "messages": [{"role": "user", "content": "Say hello."}], "max_tokens": 8})
        answer.raise_for_status()
        [model] = httpx2.get(url + "/api/ps", timeout=60).json()["models"]
        loaded = resident(proc)
        httpx2.post(url + "/api/stop", json={"model": model["model"]}, timeout=120).raise_for_status()
        after = resident(proc)
    finally:
        proc.terminate()
        proc.wait(60)
    print(f"{args.model} at --ctx {args.ctx}")
    print(f"  empty server            {empty:8.0f} MiB")
    print(f"  loaded                  {loaded:8.0f} MiB  (engine process {model['memory']['rss_bytes'] / MiB:.0f} MiB, "
          f"planned {model['planned_bytes'] / MiB:.0f} MiB)")
    print(f"  after /api/stop         {after:8.0f} MiB")
    print(f"  given back              {(loaded - after) / (loaded - empty):8.2f} of the load")
    return 0


if __name__ == "__main__":
    sys.exit(main())
