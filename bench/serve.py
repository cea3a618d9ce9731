"""What the HTTP path of `roost serve` costs, measured in one run.

One `roost serve` process on 127.0.0.1 and, taking turns with it, `roost run --json` on the
same model, prompt, greedy sampling, context and threads. Printed, as medians:
  - decode tok/s seen by a streaming client (chunks over the time between the first
    and last, on the client's clock) vs what `roost run` reports for the same answer;
  - the same client's rate vs the server engine's own rate for that request (the
    transport alone);
  - added TTFT: the client's time to first token minus the engine's own, for the same
    request (request parsing, the thread hop, SSE, loopback).
Targets (issue 7): decode ratio >= 0.95, added TTFT <= 20 ms.

    .venv/bin/python bench/serve.py [--model PATH] [--tokens 256] [--repeat 6]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time

import httpx2

PROMPT = "Write a long story about a dragon who learns to cook."


def start_server(cmd: list[str]) -> tuple[subprocess.Popen, str]:
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL, text=True)
    line = proc.stderr.readline()
    if "roost: serving" not in line:
        sys.exit(f"the server did not start: {line}{proc.stderr.read()}")
    return proc, line.split(" at ", 1)[1].split("/v1", 1)[0]


def streamed(client: httpx2.Client, url: str, tokens: int, i: int) -> dict:
    # A different last word each time: the server's cache keeps the shared prefix, as a chat would.
    body = {"model": "bench", "messages": [{"role": "user", "content": f"{PROMPT} ({i})"}], "temperature": 0,
            "max_tokens": tokens, "stream": True, "seed": 0}
    stamps, server = [], None
    sent = time.perf_counter()
    with client.stream("POST", url + "/v1/chat/completions", json=body) as r:
        for sse in httpx2.EventSource(r):
            if sse.data == "[DONE]":
                break
            chunk = json.loads(sse.data)
            if chunk["choices"] and chunk["choices"][0]["delta"].get("content"):
                stamps.append(time.perf_counter())
            server = chunk.get("roost", server) if "stop_reason" in chunk.get("roost", {}) else server
    generated = server["generated_tokens"]
    return {"client_tps": (generated - 1) / (stamps[-1] - stamps[0]), "server_tps": server["decode_tps"],
            "client_ttft": stamps[0] - sent, "server_ttft": server["ttft_s"], "generated": generated}


def run_json(cmd: list[str]) -> dict:
    out = subprocess.run(cmd, capture_output=True, text=True, stdin=subprocess.DEVNULL)
    if out.returncode != 0:
        sys.exit(f"roost run failed: {out.stderr}")
    return json.loads(out.stdout)["stats"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="demo", help="a .gguf or catalog name (default: the bundled demo model)")
    parser.add_argument("--tokens", type=int, default=256)
    parser.add_argument("--ctx", type=int, default=4096)
    parser.add_argument("--repeat", type=int, default=6)
    args = parser.parse_args()

    from roost.machine import hardware

    common = ["--ctx", str(args.ctx), "--threads", str(hardware.default_threads())]
    server, url = start_server([sys.executable, "-m", "roost", "serve", args.model, "--port", "0", "--name", "bench",
                                *common])
    run_cmd = [sys.executable, "-m", "roost", "run", args.model, PROMPT, "--json", "-t", "0", "-n", str(args.tokens),
               "--seed", "0", *common]
    # One client for every request, as an app would keep: a new one per request would add its
    # own set-up (TLS context, connection) to the time to first token.
    client = httpx2.Client(timeout=600)
    try:
        streamed(client, url, 8, -1)  # the first request pays for warming the server's caches
        rows = []
        for i in range(args.repeat):
            # Taking turns, so a slow spell on a shared machine falls on both sides.
            if i % 2 == 0:
                local, seen = run_json(run_cmd), streamed(client, url, args.tokens, i)
            else:
                seen, local = streamed(client, url, args.tokens, i), run_json(run_cmd)
            rows.append({**seen, "run_tps": local["decode_tps"]})
            print(f"run {i + 1}: client {seen['client_tps']:.1f} tok/s · server engine {seen['server_tps']:.1f}"
                  f" · roost run {local['decode_tps']:.1f} · TTFT client {seen['client_ttft'] * 1000:.1f} ms"
                  f" vs engine {seen['server_ttft'] * 1000:.1f} ms", file=sys.stderr)
    finally:
        client.close()
        server.terminate()
        server.wait(30)

    med = {k: statistics.median(r[k] for r in rows) for k in rows[0]}
    vs_run = statistics.median(r["client_tps"] / r["run_tps"] for r in rows)
    vs_engine = statistics.median(r["client_tps"] / r["server_tps"] for r in rows)
    added_ms = statistics.median((r["client_ttft"] - r["server_ttft"]) * 1000 for r in rows)
    print(json.dumps({"tokens": args.tokens, "repeat": args.repeat, "median": {k: round(v, 4) for k, v in med.items()},
                      "client_vs_run": round(vs_run, 3), "client_vs_server_engine": round(vs_engine, 3),
                      "added_ttft_ms": round(added_ms, 2)}, indent=2))
    print(f"decode, streaming client / roost run: {vs_run:.3f} (target >= 0.95: {'ok' if vs_run >= 0.95 else 'MISSED'})")
    print(f"decode, streaming client / server engine: {vs_engine:.3f}")
    print(f"added TTFT of the HTTP path: {added_ms:.1f} ms (target <= 20 ms: {'ok' if added_ms <= 20 else 'MISSED'})")


if __name__ == "__main__":
    main()
