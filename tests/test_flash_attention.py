"""Flash attention (--flash-attn auto|on|off): what reaches llama.cpp, and the compute
buffer the planner models with and without it, against llama.cpp's own report."""

from __future__ import annotations

import json

import pytest

from roost.backends import load
from roost.backends.base import Plan
from roost.machine import fit
from roost.models import gguf_info


@pytest.fixture(scope="module")
def compute(demo_gguf):
    """llama.cpp's compute buffer for the demo at 8192 tokens, flash attention off and on."""
    out = {}
    for setting in ("off", "on"):
        engine = load(demo_gguf, Plan(n_ctx=8192, flash_attn=setting), engine="llama")
        try:
            assert engine.info().flash_attn is (setting == "on")
            out[setting] = engine.memory().buffers["compute"]
        finally:
            engine.close()
    return out


def test_flash_attention_drops_the_attention_scores_from_the_compute_buffer(compute):
    # Off, one layer's n_ctx x heads scores rule the buffer at 8192; on, the logits do.
    assert compute["on"] < 0.7 * compute["off"]


@pytest.mark.parametrize("setting", ["off", "on"])
def test_the_planner_models_the_compute_buffer_with_and_without(demo_gguf, compute, setting):
    info = gguf_info.read(demo_gguf)
    shape = fit.Shape.from_gguf(info)
    est = fit.estimate(shape, fit.Quant.from_gguf(info, shape), 8192, flash_attn=setting == "on")
    assert 0.95 < est.compute_reserved / compute[setting] < 1.05


def test_auto_is_roosts_default_for_the_device():
    assert fit.flash_attention("auto", "f16", "CPU") is fit.CPU_FLASH_ATTN
    assert fit.flash_attention("auto", "f16", "CUDA") and fit.flash_attention("auto", "f16", "Metal")
    assert fit.flash_attention("auto", "q4_0", "CPU")  # quantized V needs it
    assert not fit.flash_attention("off", "f16", "CUDA")


def test_run_loads_with_the_setting_given_and_says_so(roost_here):
    for setting, used in (("off", False), ("on", True), ("auto", fit.CPU_FLASH_ATTN)):
        result = roost_here("run", "demo", "Hi", "-n", "1", "--flash-attn", setting, "--json")
        assert result.returncode == 0, result.stderr
        assert json.loads(result.stdout)["engine"]["flash_attn"] is used
