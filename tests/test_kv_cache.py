"""The KV cache's type (--kv f16|q8_0|q4_0): what llama.cpp allocates for each, what the
planner plans, the planner's own q8_0 where only that fits, and what it costs in KL."""

from __future__ import annotations

import json
import os

import pytest

from conftest import ROOT, one_line
from roost.backends import load
from roost.backends.base import Plan
from roost.machine import fit
from roost.models import gguf_info

MiB = 2**20


@pytest.fixture(scope="module")
def reported(demo_gguf):
    """llama.cpp's buffer report for the demo at 2048 tokens, by KV type."""
    out = {}
    for kv in fit.KV_TYPES:
        engine = load(demo_gguf, Plan(n_ctx=2048, kv_type=kv), engine="llama")
        try:
            assert engine.info().kv_type == kv and (kv == "f16" or engine.info().flash_attn)
            out[kv] = engine.memory().buffers
        finally:
            engine.close()
    return out


def test_q8_0_kv_is_about_half_of_f16_and_q4_0_about_a_quarter(reported):
    # 34 bytes a block of 32 (q8_0) and 18 (q4_0), against 2 bytes an element.
    assert reported["q8_0"]["kv"] / reported["f16"]["kv"] == pytest.approx(34 / 64, rel=0.01)
    assert reported["q4_0"]["kv"] / reported["f16"]["kv"] == pytest.approx(18 / 64, rel=0.01)


@pytest.mark.parametrize("kv", fit.KV_TYPES)
def test_the_planner_is_within_10_percent_of_llama_cpp_for_each_kv_type(demo_gguf, reported, kv):
    info = gguf_info.read(demo_gguf)
    shape = fit.Shape.from_gguf(info)
    flash = fit.flash_attention("auto", kv, "CPU")  # as the engine resolves Plan's "auto" here
    est = fit.estimate(shape, fit.Quant.from_gguf(info, shape), 2048, kv_type=kv, flash_attn=flash)
    buffers = reported[kv]
    assert est.kv == pytest.approx(buffers["kv"], rel=0.01)
    total = buffers["model"] + buffers["kv"] + buffers["compute"]
    assert 0.90 <= (est.weights + est.kv + est.compute_reserved) / total <= 1.10


def test_run_json_says_the_kv_type_and_flash_attention_used(roost_here):
    result = roost_here("run", "demo", "Hi", "-n", "2", "--temperature", "0", "--kv", "q4_0", "--json")
    assert result.returncode == 0, result.stderr
    engine = json.loads(result.stdout)["engine"]
    assert engine["kv_type"] == "q4_0" and engine["flash_attn"] is True  # quantized V needs it


def test_a_quantized_kv_with_flash_attention_off_is_one_line(roost_here):
    one_line(roost_here("run", "demo", "Hi", "--kv", "q8_0", "--flash-attn", "off"),
             "--kv q8_0 needs flash attention")
    one_line(roost_here("bench", "demo", "--kv", "q5_1"), "--kv")
    one_line(roost_here("eval", "demo", "--kv", "f16,q5_1"), "'q5_1' is not a KV cache type")


def test_roost_fit_plans_with_the_kv_type_given(roost_here, demo_gguf):
    plans = {}
    for kv in ("f16", "q8_0"):
        result = roost_here("fit", demo_gguf, "--ctx", "8192", "--kv", kv, "--json", machine="cpu_only.json")
        assert result.returncode == 0, result.stderr
        plans[kv] = json.loads(result.stdout)["options"][0]
    assert plans["q8_0"]["kv_type"] == "q8_0" and plans["q8_0"]["flash_attn"] is True
    assert plans["q8_0"]["memory"]["kv"] / plans["f16"]["memory"]["kv"] == pytest.approx(34 / 64, rel=0.01)


def tight_machine(tmp_path, demo_gguf, n_ctx: int) -> str:
    """A recorded machine with room for the demo at n_ctx with a q8_0 KV cache, not f16."""
    info = gguf_info.read(demo_gguf)
    shape = fit.Shape.from_gguf(info)
    quant = fit.Quant.from_gguf(info, shape)
    totals = {kv: fit.estimate(shape, quant, n_ctx, kv_type=kv, flash_attn=fit.flash_attention("auto", kv, "CPU")).total
              for kv in ("f16", "q8_0")}
    assert totals["q8_0"] < totals["f16"]
    with open(os.path.join(ROOT, "tests", "machines", "cpu_only.json")) as f:
        machine = json.load(f)
    margin = 2**30  # fit.budget keeps 1 GiB free on a machine of 10 GiB or less
    machine["ram"] = [4 * 2**30, margin + (totals["q8_0"] + totals["f16"]) // 2]
    path = tmp_path / "tight.json"
    path.write_text(json.dumps(machine))
    return str(path)


def test_the_planner_takes_q8_0_by_itself_where_only_that_fits(tmp_path, demo_gguf, roost_here):
    machine = {"ROOST_MACHINE": tight_machine(tmp_path, demo_gguf, 4096)}  # roost run's default context
    planned = json.loads(roost_here("fit", demo_gguf, "--json", env=machine).stdout)
    assert planned["options"][0]["kv_type"] == "q8_0" and "with a q8_0 KV cache" in planned["reason"]
    refused = roost_here("fit", demo_gguf, "--kv", "f16", "--json", env=machine)
    assert json.loads(refused.stdout)["pick"] is None  # an explicit --kv wins

    ran = roost_here("run", "demo", "Hi", "-n", "2", "--json", env=machine)
    assert ran.returncode == 0, ran.stderr
    assert json.loads(ran.stdout)["engine"]["kv_type"] == "q8_0"
    assert "a q8_0 KV cache lets 4096 tokens of context fit here" in ran.stderr
    one_line(roost_here("run", "demo", "Hi", "--kv", "f16", env=machine), "does not fit in memory at 4096 tokens")


def test_bench_measures_at_a_depth_with_the_kv_type_and_keeps_both(roost_here):
    result = roost_here("bench", "demo", "-p", "16", "-n", "4", "-r", "1", "-d", "128", "--kv", "q8_0", "--json")
    assert result.returncode == 0, result.stderr
    out = json.loads(result.stdout)
    assert (out["depth"], out["kv_type"], out["flash_attn"]) == (128, "q8_0", True)
    assert out["n_ctx"] >= 128 + 16 + 4 + 64
    assert out["pp"]["tokens"] <= 20  # the depth was in the cache already: only the pp tokens were read
    assert out["ttft_s"]["tokens"] >= 128 + 16  # the prompt itself holds the depth
    kept = json.loads(roost_here("bench", "--history", "--json").stdout)[-1]
    assert (kept["depth"], kept["kv_type"], kept["flash_attn"]) == (128, "q8_0", True)


def test_eval_ppl_shows_what_each_kv_type_costs_in_kl(roost_here):
    result = roost_here("eval", "--ppl", os.path.join(ROOT, "README.md"), "demo", "--kv", "f16,q8_0,q4_0",
                        "--chunks", "2", "--json")
    assert result.returncode == 0, result.stderr
    f16, q8_0, q4_0 = json.loads(result.stdout)
    assert f16["model"] == "demo · KV f16" and f16["kl_mean"] is None  # the reference
    assert q4_0["kl_mean"] >= q8_0["kl_mean"] >= 0


@pytest.mark.parametrize("kv", ["q8_0", "q4_0"])
def test_mlx_quantized_kv_keeps_prefix_reuse_right(demo_mlx, kv):
    """mlx-lm's kv_bits: turn 2 reuses turn 1's quantized cache and answers as a fresh
    engine given the whole conversation does."""
    from roost.backends.base import Done, Params

    greedy = Params(temperature=0, max_tokens=12)

    def answer(engine, messages):
        done = [e for e in engine.stream(messages, greedy) if isinstance(e, Done)][0]
        return done.text, done.stats

    turn1 = [{"role": "user", "content": "What is the capital of Japan?"}]
    engine = load(demo_mlx, Plan(n_ctx=1024, kv_type=kv), engine="mlx")
    try:
        assert engine.info().kv_type == kv
        first, _ = answer(engine, turn1)
        turn2 = turn1 + [{"role": "assistant", "content": first}, {"role": "user", "content": "And of France?"}]
        second, stats = answer(engine, turn2)
        assert stats.cached_tokens > 10  # the first turn's cache was reused
        assert engine.memory().buffers["kv"] > 0
    finally:
        engine.close()
    fresh = load(demo_mlx, Plan(n_ctx=1024, kv_type=kv), engine="mlx")
    try:
        assert answer(fresh, turn2)[0] == second
    finally:
        fresh.close()
