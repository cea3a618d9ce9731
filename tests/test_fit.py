"""The fit planner: estimates checked against llama.cpp, picks on simulated machines."""

import dataclasses

import pytest

from roost.machine import fit, model_memory
from roost.models import gguf_info
from roost.backends import load
from roost.backends.base import Plan
from shapes import (LLAMA_3B, LLAMA_3B_QUANTS, LLAMA_8B, LLAMA_8B_QUANTS, LLAMA_70B, LLAMA_70B_QUANTS,
                    QWEN3_MOE, QWEN3_MOE_QUANTS, quants)
from test_hardware import recorded


def estimate_and_buffers(path: str, n_ctx: int):
    """roost's estimate for a file, and what llama.cpp reports allocating for it."""
    info = gguf_info.read(path)
    shape = fit.Shape.from_gguf(info)
    engine = load(path, Plan(n_ctx=n_ctx))
    try:
        # Flash attention as the engine resolves Plan's "auto" on this CPU.
        flash = fit.flash_attention("auto", "f16", "CPU")
        return fit.estimate(shape, fit.Quant.from_gguf(info, shape), n_ctx, flash_attn=flash), engine.memory().buffers
    finally:
        engine.close()


@pytest.mark.parametrize("n_ctx", [512, 2048, 8192])
def test_estimate_matches_llama_cpp_buffers(demo_gguf, n_ctx):
    est, buffers = estimate_and_buffers(demo_gguf, n_ctx)
    assert est.kv == buffers["kv"]  # exact: the formula is the cache's layout
    assert abs(est.weights - buffers["model"]) < 2**20
    assert 0.95 < est.compute_reserved / buffers["compute"] < 1.05
    assert 0.97 < (est.weights + est.kv + est.compute_reserved) / (buffers["model"] + buffers["kv"] + buffers["compute"]) < 1.03


def rank(machine, shape, sizes, n_ctx, expert_share=0.0):
    return fit.rank(shape, quants(shape, sizes, expert_share), n_ctx, recorded(machine))


def by_name(ranking):
    return {o.quant.name: o for o in ranking.options}


def test_24gb_gpu_gets_an_8b_at_8_bits():
    r = rank("rtx4090.json", LLAMA_8B, LLAMA_8B_QUANTS, 8192)
    assert r.pick.quant.name == "Q8_0" and r.pick.fit == "full" and r.pick.n_gpu_layers == -1
    assert by_name(r)["F16"].fit == "full"  # fits too, but is no better and reads twice the bytes
    assert 100 < r.pick.ceiling_tps < 130  # 1008 GB/s over ~8.5 GB a token
    assert "RTX 4090" in r.reason


def test_8gb_m1_gets_a_3b_at_5_bits():
    r = rank("m1_8gb.json", LLAMA_3B, LLAMA_3B_QUANTS, 4096)
    assert r.pick.quant.name == "Q5_K_M"
    assert by_name(r)["Q6_K"].fit == "no" and "available" in by_name(r)["Q6_K"].why_not
    assert r.budget.unified and r.budget.device == "Metal"


def test_m3_max_runs_a_70b_only_below_4_bits():
    r = rank("m3max64.json", LLAMA_70B, LLAMA_70B_QUANTS, 8192)
    # Q3_K_M fits but is predicted at ~8 tok/s; Q2_K reaches the floor, below the ~3.5-bit
    # cliff (roost fit and pull warn of it, with the smaller model at 4 bits).
    assert by_name(r)["Q3_K_M"].fit == "full" and by_name(r)["Q3_K_M"].predicted_tps < fit.MIN_TPS
    assert r.pick.quant.name == "Q2_K" and r.pick.low_bits and not r.too_slow
    assert fit.rank(LLAMA_70B, quants(LLAMA_70B, LLAMA_70B_QUANTS), 8192, recorded("m3max64.json"),
                    min_tps=5).pick.quant.name == "Q3_K_M"
    assert by_name(r)["Q4_K_M"].fit == "no"
    # Unified memory has no partial offload: a model fits in the pool or it does not.
    assert {o.fit for o in r.options} <= {"full", "no"}


def test_cpu_box_prefers_a_quant_fast_enough_to_read():
    # The 4090 box's CPU alone, 62 GB/s, with a floor of 15 tok/s: a 3B at Q8_0 would
    # decode at ~13 tok/s, at Q6_K at ~16.
    machine = recorded("rtx4090.json")
    r = fit.rank(LLAMA_3B, quants(LLAMA_3B, LLAMA_3B_QUANTS), 8192, machine, use_gpu=False, min_tps=15)
    assert r.budget.device == "CPU" and r.min_tps == 15
    assert by_name(r)["Q8_0"].fit == "full" and by_name(r)["Q8_0"].predicted_tps < 15
    assert r.pick.quant.name == "Q6_K" and r.pick.predicted_tps >= 15 and not r.too_slow
    assert "Q8_0 would fit but decode at ~" in r.reason
    # No floor at all: the best that fits.
    assert fit.rank(LLAMA_3B, quants(LLAMA_3B, LLAMA_3B_QUANTS), 8192, machine, use_gpu=False,
                    min_tps=0).pick.quant.name == "Q8_0"


def test_predicted_speed_is_the_ceiling_at_the_share_decoding_reaches():
    for machine, device in (("cpu_only.json", "CPU"), ("rtx4090.json", "CUDA"), ("m1_8gb.json", "Metal")):
        r = rank(machine, LLAMA_3B, LLAMA_3B_QUANTS, 4096)
        assert r.budget.device == device
        for o in r.options:
            if o.fit == "full":
                assert o.predicted_tps == pytest.approx(o.ceiling_tps * fit.DECODE_SHARE[device])
    # Split between GPU and RAM, each part is read at its own device's share: the whole is
    # between the ceiling at one share and at the other.
    q4 = by_name(rank("rtx4090.json", LLAMA_70B, LLAMA_70B_QUANTS, 8192))["Q4_K_M"]
    low, high = sorted((fit.DECODE_SHARE["CPU"], fit.DECODE_SHARE["CUDA"]))
    assert q4.fit == "partial" and q4.ceiling_tps * low < q4.predicted_tps < q4.ceiling_tps * high


def test_nothing_fast_enough_keeps_quality_and_says_too_slow():
    # An 8B on the 38 GB/s CPU box: Q8_0 and below fit, none is predicted at 10 tok/s. The
    # pick is the fastest above the ~3.5-bit cliff, not Q2_K, and it is marked too slow.
    r = rank("cpu_only.json", LLAMA_8B, LLAMA_8B_QUANTS, 8192)
    assert by_name(r)["Q8_0"].fit == "full"
    assert all(o.predicted_tps < fit.MIN_TPS for o in r.options if o.fit == "full")
    assert r.pick.quant.name == "Q4_K_M" and r.too_slow and "nothing that fits" in r.reason
    assert by_name(r)["Q3_K_M"].low_bits and by_name(r)["Q2_K"].low_bits and not r.pick.low_bits
    # Where only quants below the cliff fit, the best of them.
    low = {k: v for k, v in LLAMA_8B_QUANTS.items() if k in ("Q3_K_M", "Q2_K")}
    assert rank("cpu_only.json", LLAMA_8B, low, 8192).pick.quant.name == "Q3_K_M"
    # A bandwidth nobody measured predicts nothing, and holds nothing back.
    unknown = fit.rank(LLAMA_8B, quants(LLAMA_8B, LLAMA_8B_QUANTS), 8192,
                       dataclasses.replace(recorded("cpu_only.json"), cpu_bandwidth_gbs=None))
    assert unknown.pick.quant.name == "Q8_0" and not unknown.too_slow and unknown.pick.predicted_tps is None


@pytest.mark.parametrize("name, low", [("Q2_K", True), ("Q3_K_M", True), ("Q3_K_S", True), ("IQ3_XXS", True),
                                       ("IQ2_M", True), ("IQ1_S", True), ("TQ1_0", True), ("3bit", True),
                                       ("Q4_K_M", False), ("IQ4_XS", False), ("Q4_0", False), ("4bit", False),
                                       ("MXFP4", False), ("Q8_0", False)])
def test_quants_below_three_and_a_half_bits_by_type(name, low):
    q = fit.Quant.from_size(LLAMA_8B, name, int(LLAMA_8B_QUANTS["Q4_K_M"]))  # its file size says 4.9 bits
    assert fit.option(LLAMA_8B, q, 4096, fit.budget(recorded("cpu_only.json"))).low_bits is low


def test_partial_offload_takes_as_many_layers_as_fit():
    r = rank("rtx4090.json", LLAMA_70B, LLAMA_70B_QUANTS, 8192)
    q4 = by_name(r)["Q4_K_M"]
    assert q4.fit == "partial" and 0 < q4.n_gpu_layers < LLAMA_70B.n_layer
    one_more = fit.estimate(LLAMA_70B, q4.quant, 8192, q4.n_gpu_layers + 1, q4.kv_type, r.budget.gpu_runtime,
                            q4.flash_attn)
    assert q4.estimate.gpu <= r.budget.gpu_bytes < one_more.gpu
    # Fewer bytes, more layers on the GPU, faster: the pick is the fastest split.
    assert r.pick.fit == "partial" and r.pick.ceiling_tps == max(o.ceiling_tps for o in r.options if o.ceiling_tps)
    assert "slow" in r.reason
    # Each layer moved to the GPU speeds decoding up.
    assert fit.ceiling(LLAMA_70B, q4.quant, r.budget, q4.n_gpu_layers) > fit.ceiling(LLAMA_70B, q4.quant, r.budget, 10)


def test_moe_ceiling_counts_active_experts_only():
    moe = rank("rtx4090.json", QWEN3_MOE, QWEN3_MOE_QUANTS, 8192, expert_share=0.95)
    dense = rank("rtx4090.json", QWEN3_MOE, QWEN3_MOE_QUANTS, 8192, expert_share=0.0)
    for name in ("Q4_K_M", "Q3_K_M"):
        assert by_name(moe)[name].ceiling_tps > 5 * by_name(dense)[name].ceiling_tps
    assert moe.pick.quant.name == "Q4_K_M" and moe.pick.fit == "full"
    assert by_name(moe)["Q8_0"].fit == "partial"


def test_kv_cache_grows_with_context_and_shrinks_with_q8():
    assert model_memory.kv_bytes(LLAMA_8B, 8192) == 2 * 32 * 8192 * 8 * 128 * 2
    assert model_memory.kv_bytes(LLAMA_8B, 8192, "q8_0") < 0.55 * model_memory.kv_bytes(LLAMA_8B, 8192)


def test_nothing_fits_says_what_is_smallest():
    r = rank("m1_8gb.json", LLAMA_70B, LLAMA_70B_QUANTS, 4096)
    assert r.pick is None and "Q2_K" in r.reason and "smaller" in r.reason


def test_largest_context_that_fits():
    machine = recorded("m1_8gb.json")
    q = quants(LLAMA_3B, {"Q4_K_M": LLAMA_3B_QUANTS["Q4_K_M"]})[0]
    b = fit.budget(machine)
    n = fit.largest_context(LLAMA_3B, q, b, 131072)
    assert n % 256 == 0 and fit.option(LLAMA_3B, q, n, b).fit == "full"
    assert fit.option(LLAMA_3B, q, n + 256, b).fit == "no"


@pytest.fixture(scope="module", params=[(8, 1024, 16, 4, 2816), (4, 2048, 8, 8, 8192)], ids=["gqa", "mha"])
def synthetic(request, demo_gguf, tmp_path_factory):
    from gguf_files import synthetic_llama

    n_layer, n_embd, n_head, n_head_kv, n_ff = request.param
    path = str(tmp_path_factory.mktemp("synthetic") / "model.gguf")
    return synthetic_llama(demo_gguf, path, n_layer=n_layer, n_embd=n_embd, n_head=n_head,
                           n_head_kv=n_head_kv, n_ff=n_ff)


@pytest.mark.parametrize("n_ctx", [512, 8192])
def test_estimate_holds_for_other_shapes(synthetic, n_ctx):
    est, buffers = estimate_and_buffers(synthetic, n_ctx)
    assert est.kv == buffers["kv"]
    assert abs(est.weights - buffers["model"]) < 2**20
    assert 0.92 < est.compute_reserved / buffers["compute"] < 1.08


def test_roost_fit_says_which_engine_runs_a_catalog_model_and_why(monkeypatch, capsys):
    import json
    import os

    from roost import cli

    monkeypatch.setenv("ROOST_MACHINE", os.path.join(os.path.dirname(__file__), "machines", "m3max64.json"))
    assert cli.main(["fit", "qwen2.5-7b"]) == 0
    last = capsys.readouterr().out.strip().splitlines()[-1]
    assert last.startswith("engine: MLX — its 8bit build") and "Q8_0" in last
    assert cli.main(["fit", "qwen2.5-7b:Q8_0", "--json"]) == 0
    engine = json.loads(capsys.readouterr().out)["engine"]
    assert engine == {"engine": "llama", "label": "llama.cpp on Metal", "why": "Q8_0 is a GGUF quant"}
    assert cli.main(["fit", "qwen2.5-7b", "--cpu", "--json"]) == 0  # planned for the CPU: no engine to choose
    assert json.loads(capsys.readouterr().out)["engine"] is None


def test_a_pick_below_four_bits_names_the_smaller_model_of_its_family_at_4_bits():
    from roost import report
    from roost.models.listing import Offer, smaller_at_4_bits

    # The 64 GB M3 Max: a 70B reaches the floor only at Q2_K; the 8B of the family at 8 bits.
    machine = recorded("m3max64.json")

    def offer(name, family, shape, sizes):
        ranking = fit.rank(shape, quants(shape, sizes), 8192, machine)
        return Offer(name, family, shape.n_params, "chat", "", "r/r", (), ranking, shape.n_layer)

    big = offer("llama-70b", "Llama", LLAMA_70B, LLAMA_70B_QUANTS)
    small = offer("llama-8b", "Llama", LLAMA_8B, LLAMA_8B_QUANTS)
    other = offer("other-8b", "Other", LLAMA_8B, LLAMA_8B_QUANTS)
    assert big.pick.low_bits and not small.pick.low_bits
    found, q = smaller_at_4_bits(big.family, big.params, [big, small, other])
    assert found is small and q is small.pick
    line = report.low_bits(big.name, big.pick, (found, q))
    assert line.startswith(f"llama-70b {big.pick.quant.name} quantizes most weights below ~3.5 bits")
    assert f"llama-8b at {small.pick.quant.name} fits here too, ~" in line
    assert smaller_at_4_bits("Llama", LLAMA_8B.n_params, [big, small]) is None  # nothing smaller
    assert report.low_bits(big.name, big.pick).endswith("quality falls off")
