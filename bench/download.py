"""Download throughput: `roost pull` vs `hf download` (huggingface-hub's own CLI), the same
file from the same local Hub stand-in, each into an empty HF cache, alternating, in one run.
roost also verifies the file's sha256 against the Hub's record; hf does not, so the ratio
includes that check. Target (issue 4): ratio >= 0.95.

    .venv/bin/python bench/download.py [--mib 1024] [--repeat 3]
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
REPO, FILE = "bench/Big-GGUF", "big-Q8_0.gguf"


def timed(cmd: list[str], hf_home: str, endpoint: str) -> float:
    env = {**os.environ, "HF_HOME": hf_home, "HF_ENDPOINT": endpoint, "HF_HUB_DISABLE_XET": "1"}
    start = time.perf_counter()
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, stdin=subprocess.DEVNULL)
    elapsed = time.perf_counter() - start
    if out.returncode:
        sys.exit(f"{' '.join(cmd)} failed:\n{out.stderr}")
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--mib", type=int, default=1024, help="size of the served file")
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()

    sys.path.insert(0, os.path.join(ROOT, "tests"))
    from hub_server import HubServer

    work = tempfile.mkdtemp(prefix="roost-bench-")
    repo_dir = os.path.join(work, "hub", *REPO.split("/"))
    os.makedirs(repo_dir)
    with open(os.path.join(repo_dir, FILE), "wb") as f:
        for _ in range(args.mib):
            f.write(os.urandom(1024 * 1024))
    size = args.mib * 1024 * 1024
    hf = os.path.join(os.path.dirname(sys.executable), "hf")
    roost = [sys.executable, "-m", "roost", "pull", f"{REPO}:{FILE}", "--yes"]
    hf_cmd = [hf, "download", REPO, FILE]
    times = {"roost": [], "hf": []}
    with HubServer(os.path.join(work, "hub")) as hub:
        for i in range(args.repeat):
            order = [("roost", roost), ("hf", hf_cmd)] if i % 2 == 0 else [("hf", hf_cmd), ("roost", roost)]
            for name, cmd in order:
                home = os.path.join(work, f"home-{name}-{i}")
                times[name].append(timed(cmd, home, hub.url))
                shutil.rmtree(home)
    shutil.rmtree(work)
    r, h = statistics.median(times["roost"]), statistics.median(times["hf"])
    mb = size / 1e6
    print(f"{args.mib} MiB file from a local Hub stand-in, median of {args.repeat} (process start to exit)")
    print(f"roost pull (with sha256 check): {r:.2f} s, {mb / r:,.0f} MB/s")
    print(f"hf download                   : {h:.2f} s, {mb / h:,.0f} MB/s")
    print(f"throughput ratio roost/hf {h / r:.3f} (target >= 0.95): {'ok' if h / r >= 0.95 else 'MISSED'}")


if __name__ == "__main__":
    main()
