"""Which engine runs a catalog model on a Mac, and why: MLX when its best build that fits
is about as good as the best GGUF that fits, a named quant picking its own engine, and
what MLX needs when it cannot run (Rosetta, not installed)."""

import sys
from dataclasses import replace

import pytest

from conftest import recorded_machine
from roost.machine import hardware
from roost.models import catalog, loading, mlx_models
from roost.backends import load
from roost.errors import RoostError, UsageError

MAC = "m3max64.json"  # 64 GB: every quant of a 7B fits many times over


def qwen7b(bits=None, quants=None) -> catalog.Ref:
    """qwen2.5-7b with the MLX builds (and GGUF quants) given, to try the rule on."""
    m = catalog.models()["qwen2.5-7b"]
    if bits is not None:
        m = replace(m, mlx={str(b): f"mlx-community/Qwen2.5-7B-Instruct-{b}bit" for b in bits})
    if quants is not None:
        m = replace(m, gguf=tuple(g for g in m.gguf if g.quant in quants))
    return catalog.Ref(m.name, model=m)


def test_a_3bit_mlx_build_does_not_beat_a_q8_0_that_fits():
    choice = loading.choose_engine(None, qwen7b(bits=[3]), recorded_machine(MAC))
    assert choice.name == "llama" and choice.label == "llama.cpp on Metal"
    assert "Q8_0 (8.5 bits per weight)" in choice.why and "3bit" in choice.why and "3.5" in choice.why


def test_mlx_when_its_best_fitting_build_is_about_as_good():
    mac = recorded_machine(MAC)
    eight = loading.choose_engine(None, qwen7b(bits=[3, 4, 8]), mac)
    assert eight.name == "mlx" and "8bit" in eight.why and "Q8_0" in eight.why
    # within half a bit: MLX's 4-bit against the best GGUF being a Q4_K_M
    four = loading.choose_engine(None, qwen7b(bits=[4], quants={"Q4_K_M", "Q3_K_M"}), mac)
    assert four.name == "mlx" and "4bit" in four.why and "Q4_K_M" in four.why
    # both on the plateau where quants match the original weights
    assert loading.choose_engine(None, qwen7b(bits=[6]), mac).name == "mlx"
    # 4 bits cost measurably against a Q8_0 that fits
    assert loading.choose_engine(None, qwen7b(bits=[4]), mac).name == "llama"


def test_the_shipped_qwen_7b_pulls_its_8bit_mlx_build_on_a_64gb_mac():
    ref, mac = catalog.resolve("qwen2.5-7b"), recorded_machine(MAC)
    assert loading.engine_for(None, ref, mac) == "mlx"
    assert mlx_models.pick(ref.model, mac, loading.DEFAULT_CTX)[0] == "mlx-community/Qwen2.5-7B-Instruct-8bit"


def test_no_mlx_build_that_fits_means_llama_cpp_and_says_so():
    choice = loading.choose_engine(None, qwen7b(bits=[8]), recorded_machine("m1_8gb.json"))
    assert choice.name == "llama" and "no MLX build of qwen2.5-7b fits here" in choice.why


def test_a_named_quant_picks_its_engine():
    mac = recorded_machine(MAC)
    gguf = loading.choose_engine(None, catalog.resolve("qwen2.5-7b:Q8_0"), mac)
    assert gguf.name == "llama" and gguf.line == "engine: llama.cpp on Metal — Q8_0 is a GGUF quant"
    assert loading.engine_for(None, catalog.resolve("qwen2.5-7b:4bit"), mac) == "mlx"
    assert loading.engine_for(None, catalog.resolve("qwen2.5-7b:8bit"), recorded_machine("rtx4090.json")) == "mlx"
    # the GGUF repo by name is GGUF; a catalog MLX repo by name is that build
    assert loading.engine_for(None, catalog.resolve("bartowski/Qwen2.5-7B-Instruct-GGUF"), mac) == "llama"
    assert loading.engine_for(None, catalog.resolve("mlx-community/Qwen2.5-7B-Instruct-4bit"), mac) == "mlx"


def test_a_quant_for_the_other_engine_is_refused_in_one_line():
    mac = recorded_machine(MAC)
    with pytest.raises(UsageError, match="Q8_0 is a GGUF quant, which llama.cpp runs .*qwen2.5-7b:8bit"):
        loading.choose_engine("mlx", catalog.resolve("qwen2.5-7b:Q8_0"), mac)
    with pytest.raises(UsageError, match="4bit names an MLX build of qwen2.5-7b; llama.cpp runs its GGUF quants"):
        loading.choose_engine("llama", catalog.resolve("qwen2.5-7b:4bit"), mac)
    with pytest.raises(RoostError, match="Q8_0 is a GGUF quant of qwen2.5-7b, which llama.cpp runs"):
        mlx_models.pick(catalog.models()["qwen2.5-7b"], mac, 4096, "Q8_0")


ROSETTA = {  # an x86_64 Python on an M1: the kernel says the process is translated
    "platform": ["darwin", "x86_64"],
    "cpu": {"model": "VirtualApple @ 2.50GHz processor", "physical_cores": 8, "logical_cores": 8, "flags": []},
    "ram": [17179869184, 8589934592],
    "sysctl": {"machdep.cpu.brand_string": "VirtualApple @ 2.50GHz processor", "hw.memsize": "17179869184",
               "sysctl.proc_translated": "1"},
}


def test_under_rosetta_mlx_asks_for_a_native_python():
    machine = hardware.detect(hardware.RecordedProbe(ROSETTA))
    why = mlx_models.unavailable(machine)
    assert why and "Rosetta" in why and "arm64 Python" in why and "uv python install" in why and "Intel" not in why
    with pytest.raises(UsageError, match="Rosetta"):
        loading.choose_engine("mlx", catalog.resolve("qwen2.5-7b"), machine)
    choice = loading.choose_engine(None, catalog.resolve("qwen2.5-7b"), machine)
    assert choice.name == "llama" and "Rosetta" in choice.why and "Metal" not in choice.label


def test_an_intel_mac_is_still_an_intel_mac():
    intel = {**ROSETTA, "cpu": {**ROSETTA["cpu"], "model": "Intel(R) Core(TM) i7-9750H"},
             "sysctl": {"machdep.cpu.brand_string": "Intel(R) Core(TM) i7-9750H", "hw.memsize": "17179869184"}}
    assert "Intel CPU" in mlx_models.unavailable(hardware.detect(hardware.RecordedProbe(intel)))


INSTALL = "run packaging/install.sh, which adds MLX on Apple Silicon, or `.venv/bin/pip install -e '.[mlx]'`"


def test_without_mlx_the_hint_is_roost_s_own_installer(no_mlx, monkeypatch):
    why = mlx_models.unavailable(recorded_machine(MAC))
    assert INSTALL in why and "roost[mlx]" not in why  # roost is not on PyPI
    monkeypatch.setitem(sys.modules, "roost.backends.mlx", None)  # its import fails, as without mlx-lm
    with pytest.raises(UsageError, match="MLX is not available") as e:
        load("some-folder", engine="mlx")
    assert INSTALL in str(e.value) and "roost[mlx]" not in str(e.value)
