"""`roost bench` on the real demo model: llama.cpp, MLX and a roost server; the history it keeps."""

import json
import os
import signal
import subprocess
import sys

import pytest

from conftest import ROOT, one_line, roost, served
from roost.backends import load
from roost.backends.base import Plan

SMALL = ["-p", "48", "-n", "12", "-r", "2"]


@pytest.fixture
def data(tmp_path):
    return {"ROOST_DATA_DIR": str(tmp_path / "data")}


def bench(*args, env):
    result = roost("bench", *args, "--json", env=env, timeout=300)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def test_bench_measures_prompt_and_generation_apart(data):
    r = bench("demo", *SMALL, env=data)
    assert r["engine"] == "llama.cpp" and r["device"] == "CPU" and r["repetitions"] == 2
    # The prompt runs prefill about the tokens asked for; generation makes exactly those asked for.
    assert 40 <= r["pp"]["tokens"] <= 56 and r["tg"]["tokens"] == 12 and r["short_tg"] == 0
    assert r["pp"]["mean"] > r["tg"]["mean"] > 0 and r["pp"]["sd"] >= 0 and r["tg"]["sd"] >= 0
    assert 0 < r["ttft_s"]["mean"] and r["load_s"] > 0
    assert r["n_ctx"] == 48 + 12 + 64  # only the memory the runs need
    if r["ceiling_tps"]:  # the machine's bandwidth is known: generation is set beside it
        assert r["efficiency"] == pytest.approx(r["tg"]["mean"] / r["ceiling_tps"], rel=1e-3)


@pytest.mark.slow
def test_history_keeps_each_result(data):
    first = bench("demo", *SMALL, env=data)
    text = roost("bench", "demo", "-p", "32", "-n", "8", "-r", "1", env=data, timeout=300)
    assert text.returncode == 0 and "pp" in text.stdout and "tg8" in text.stdout and "kept in" in text.stderr
    # A line torn by a crash is skipped, not fatal.
    with open(os.path.join(data["ROOST_DATA_DIR"], "results.jsonl"), "a") as f:
        f.write('{"model": "torn')
    history = json.loads(roost("bench", "--history", "--json", env=data).stdout)
    assert [h["tg"]["tokens"] for h in history] == [12, 8] and history[0]["when"] == first["when"]
    table = roost("bench", "--history", env=data).stdout
    assert table.count("llama.cpp") == 2 and "tg12" in table and "tg8" in table
    assert json.loads(roost("bench", "--history", "nothing-like-it", "--json", env=data).stdout) == []


@pytest.mark.slow
def test_bench_on_mlx(demo_mlx, data):
    r = bench(demo_mlx, "--engine", "mlx", "-p", "32", "-n", "8", "-r", "1", env=data)
    assert r["engine"] == "mlx" and r["tg"]["tokens"] == 8 and r["pp"]["mean"] > 0


def test_bench_on_a_server(demo_gguf, data):
    with served(load(demo_gguf, Plan(n_ctx=512))) as url:
        r = bench("--remote", url, "-p", "32", "-n", "8", "-r", "1", env=data)
    assert r["engine"] == "remote" and r["tg"]["tokens"] == 8 and r["ceiling_tps"] is None and r["load_s"] is None


def test_bench_mistakes_get_one_line(data, roost_here):
    one_line(roost_here("bench", "missing.gguf", env=data), "missing.gguf")
    one_line(roost_here("bench", env=data), "give a model")
    empty = roost_here("bench", "--history", env=data)
    assert empty.returncode == 0 and "no benchmarks yet" in empty.stdout


@pytest.mark.slow
def test_ctrl_c_stops_a_bench_and_keeps_nothing(data):
    proc = subprocess.Popen([sys.executable, "-m", "roost", "bench", "demo", "-p", "256", "-n", "400", "-r", "50"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL, cwd=ROOT,
                            env={**os.environ, **data}, text=True)
    while "tg400" not in proc.stderr.readline():  # the progress lines: interrupt while it generates
        assert proc.poll() is None
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 130 and "Traceback" not in err and err.strip().splitlines()[-1] == "roost: interrupted"
    assert not os.path.exists(os.path.join(data["ROOST_DATA_DIR"], "results.jsonl"))
