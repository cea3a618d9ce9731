"""`roost fit`, `roost doctor`, and `roost run` refusing what cannot fit."""

import json
import os

import llama_cpp

from conftest import ROOT, recorded_machine, roost
from roost.machine import doctor
from test_cli_run import one_error_line


def test_fit_prints_a_table_and_a_pick():
    result = roost("fit", "demo")
    assert result.returncode == 0, result.stderr
    assert "Q4_1 *" in result.stdout and "pick: Q4_1" in result.stdout and "free RAM" in result.stdout


def test_fit_json_on_a_gpu_box():
    result = roost("fit", "demo", "--ctx", "8192", "--json", machine="rtx4090.json")
    out = json.loads(result.stdout)
    assert out["budget"]["device"] == "CUDA" and out["pick"] == "Q4_1"
    (opt,) = out["options"]
    assert opt["fit"] == "full" and opt["n_gpu_layers"] == -1
    assert opt["memory"]["kv"] == 30 * 8192 * 3 * 128 * 2  # layers × ctx × KV heads × (K+V dims) × f16
    assert opt["ceiling_tps"] > 1000


def test_fit_several_quants_of_one_model(tmp_path, demo_gguf):
    copy = tmp_path / "copy.gguf"
    os.symlink(demo_gguf, copy)
    out = json.loads(roost("fit", "demo", str(copy), "--json", machine="cpu_only.json").stdout)
    assert len(out["options"]) == 2 and all(o["ceiling_tps"] for o in out["options"])


def test_fit_bad_input(roost_here):
    one_error_line(roost_here("fit", "/no/such.gguf"), "no such model file")
    one_error_line(roost_here("fit", "demo", "--ctx", "0"), "--ctx")
    one_error_line(roost_here("fit", "demo", "--ctx", "-5"), "--ctx")
    one_error_line(roost_here("fit", "demo", "--ctx", "100000"), "at most 8192")
    one_error_line(roost_here("fit", "demo", "--gpu", "--json", machine="cpu_only.json"), "no usable GPU", "NVIDIA")


def test_run_refuses_a_model_too_big_before_loading(roost_here):
    # A machine with 1.5 GiB free, of which 1 GiB is kept for other apps: the demo's
    # full context fits there with a q8_0 KV cache only.
    result = roost_here("run", "demo", "hi", "--ctx", "8192", "--kv", "f16", machine="tiny.json")
    line = one_error_line(result, "does not fit", "--ctx")
    assert "would fit with --kv q8_0 or --ctx" in line
    result = roost_here("run", "demo", "hi", "--ctx", "8192", "-n", "4", machine="tiny.json")
    assert result.returncode == 0 and result.stdout.strip()
    assert "a q8_0 KV cache lets 8192 tokens of context fit here" in result.stderr


def test_run_rejects_gpu_layers_on_a_cpu_build(roost_here):
    one_error_line(roost_here("run", "demo", "hi", "--gpu-layers", "10"), "CPU only", "roost doctor")


def test_doctor_on_this_machine():
    result = roost("doctor")
    assert result.returncode == 0, result.stderr
    assert "llama.cpp: yes" in result.stdout and "CPU-only build" in result.stdout


def test_doctor_sees_an_idle_nvidia_gpu_and_says_how_to_fix_it(tmp_path):
    data = json.loads(roost("doctor", "--json", machine="rtx4090.json").stdout)
    assert data["machine"]["gpus"][0]["name"] == "NVIDIA GeForce RTX 4090"
    assert data["build"]["wanted"] == "cuda"
    [fix] = [a for a in data["advice"] if "idle" in a]
    # the same build packaging/install.sh makes, of the version installed here
    assert 'CMAKE_ARGS="-DGGML_CUDA=on -DCMAKE_CUDA_ARCHITECTURES=89"' in fix
    assert f"llama-cpp-python=={llama_cpp.__version__}" in fix and "packaging/install.sh" in fix

    with open(os.path.join(ROOT, "tests", "machines", "rtx4090.json")) as f:
        box = json.load(f)
    del box["cuda_toolkit"]
    (tmp_path / "no-toolkit.json").write_text(json.dumps(box))
    data = json.loads(roost("doctor", "--json", machine=str(tmp_path / "no-toolkit.json")).stdout)
    assert data["build"]["wanted"] == "cpu"
    [fix] = [a for a in data["advice"] if "idle" in a]
    assert "no CUDA toolkit" in fix and "CMAKE_ARGS" not in fix


def test_doctor_on_a_mac_without_mlx(no_mlx):
    data = doctor.report(recorded_machine("m1_8gb.json"))
    [mlx] = [e for e in data["engines"] if e["name"] == "mlx"]
    assert not mlx["available"] and "not installed" in mlx["detail"]
    assert any(a.startswith("MLX, the faster engine on Apple Silicon, cannot run: ") and mlx["detail"] in a
               for a in data["advice"])
    assert any("Metal" in a for a in data["advice"])


def test_doctor_offers_mlx_on_a_mac_and_its_cpu_build_here():
    mac = json.loads(roost("doctor", "--json", machine="m1_8gb.json").stdout)
    [mlx] = [e for e in mac["engines"] if e["name"] == "mlx"]
    assert mlx["available"] and mlx["gpu_offload"] and not any("MLX" in a for a in mac["advice"])
    here = json.loads(roost("doctor", "--json", machine="cpu_only.json").stdout)
    [mlx] = [e for e in here["engines"] if e["name"] == "mlx"]
    assert mlx["available"] and not mlx["gpu_offload"] and "CPU build" in mlx["detail"]


def test_doctor_measures_bandwidth_and_fit_uses_it(tmp_path):
    env = {"ROOST_DATA_DIR": str(tmp_path)}  # moves the cache too: the measurement stays out of the user's
    measured = roost("doctor", "--measure", env=env)
    assert measured.returncode == 0 and "GB/s" in measured.stderr
    saved = json.loads((tmp_path / "cache" / "bandwidth.json").read_text())
    assert list(saved.values())[0] > 0.5
    out = json.loads(roost("fit", "demo", "--json", env=env).stdout)
    assert out["options"][0]["ceiling_tps"] > 0


def test_fit_a_catalog_model_from_its_listed_sizes():
    out = json.loads(roost("fit", "smollm2-135m", "--json", machine="rtx4090.json").stdout)
    assert [o["quant"] for o in out["options"]] == ["F16", "Q8_0", "Q4_K_M"]
    assert out["pick"] == "Q8_0" and all(o["fit"] == "full" for o in out["options"])


def test_search_shows_what_fits_here():
    out = json.loads(roost("search", "smollm2", "--json", machine="m1_8gb.json").stdout)
    assert [m["name"] for m in out] == ["smollm2-135m", "smollm2-360m", "smollm2-1.7b"]
    assert all(m["fits"] == "full" and m["pick"] and m["ceiling_tps"] > 0 for m in out)
    # Bigger models read more bytes a token: slower ceilings on the same machine.
    assert out[0]["ceiling_tps"] > out[1]["ceiling_tps"] > out[2]["ceiling_tps"]
    big = json.loads(roost("search", "qwen2.5-32b", "--json", machine="m1_8gb.json").stdout)
    assert big[0]["fits"] == "no" and big[0]["pick"] is None
    table = roost("search", "--ctx", "2048", machine="cpu_only.json")
    assert table.returncode == 0 and "smollm2-135m" in table.stdout
    nothing = roost("search", "no-such-model-anywhere")
    assert nothing.returncode == 1 and "nothing in the catalog matches" in nothing.stdout


def test_fit_measures_bandwidth_on_first_use_and_run_does_not(tmp_path, roost_here):
    """A machine roost has run on has a ceiling: the first command that shows one measures
    the memory bandwidth and keeps it. `roost run` shows none and leaves it unmeasured."""
    from roost.machine import hardware

    env = {"ROOST_DATA_DIR": str(tmp_path)}  # no kept measurement yet
    kept = tmp_path / "cache" / "bandwidth.json"
    ran = roost_here("run", "demo", "hi", "-n", "1", env=env)
    assert ran.returncode == 0, ran.stderr
    assert not kept.exists()
    out = json.loads(roost_here("fit", "demo", "--json", env=env).stdout)
    assert out["options"][0]["ceiling_tps"] > 0 and out["options"][0]["predicted_tps"] > 0
    saved = json.loads(kept.read_text())
    assert list(saved) == [hardware.Probe().cpu()["model"]] and saved[hardware.Probe().cpu()["model"]] > 0.5
    # Kept, not measured again: a figure written there is the one used.
    kept.write_text(json.dumps({k: 1.0 for k in saved}))
    again = json.loads(roost_here("fit", "demo", "--json", env=env).stdout)
    assert again["options"][0]["ceiling_tps"] < out["options"][0]["ceiling_tps"]
    assert json.loads(kept.read_text()) == {k: 1.0 for k in saved}


def test_search_passes_over_what_is_predicted_too_slow(roost_here):
    # The 38 GB/s CPU box: small models reach 10 tok/s, large ones fit but crawl.
    offers = json.loads(roost_here("search", "--json", machine="cpu_only.json").stdout)
    slow = [o for o in offers if o["too_slow"]]
    fast = [o for o in offers if o["pick"] and not o["too_slow"]]
    assert slow and fast
    assert all(o["fits"] == "full" and o["predicted_tps"] < 10 for o in slow)
    assert all(o["predicted_tps"] >= 10 for o in fast)
    assert all(o["predicted_tps"] < o["ceiling_tps"] for o in slow + fast)
    table = roost_here("search", machine="cpu_only.json").stdout
    for o in slow:
        row = next(line for line in table.splitlines() if line.startswith(o["name"] + " "))  # the table's
        assert "too slow" in row and f" {o['pick']} " not in row  # not offered as best here
        assert row.split()[-2].startswith(f"~{int(o['predicted_tps'])}.")  # its predicted rate, under 10
    assert f"too slow: {len(slow)} models fit here but decode under 10 tok/s predicted" in table
    # A floor of 0 passes nothing over.
    everything = json.loads(roost_here("search", "--json", "--min-speed", "0", machine="cpu_only.json").stdout)
    assert not any(o["too_slow"] for o in everything)
    one_error_line(roost_here("search", "--min-speed", "fast"), "--min-speed")
    one_error_line(roost_here("fit", "demo", "--min-speed", "-1"), "--min-speed", "0 or more")


def test_fit_of_a_named_model_below_the_floor_gives_it_with_a_warning(roost_here):
    result = roost_here("fit", "demo", "--min-speed", "100000")
    assert result.returncode == 0
    assert "pick: Q4_1" in result.stdout
    assert " Q4_1: fits, ~" in result.stdout and "too slow here (floor 100000" in result.stdout
    assert result.stdout.splitlines()[-1].startswith("warning: ")
    out = json.loads(roost_here("fit", "demo", "--min-speed", "100000", "--json").stdout)
    assert out["pick"] == "Q4_1" and out["too_slow"] and out["min_tps"] == 100000
    assert out["warnings"] and "too slow" in out["warnings"][0]
    assert not json.loads(roost_here("fit", "demo", "--json").stdout)["warnings"]


def test_pull_of_a_named_model_below_the_floor_warns_and_pulls(hub, home):
    from conftest import NAME, roost_hub

    pulled = roost_hub(hub, home, "pull", NAME, "--yes", "--min-speed", "100000")
    assert pulled.returncode == 0, pulled.stderr
    assert pulled.stdout.strip().endswith(".gguf")
    assert f"roost: warning: {NAME} " in pulled.stderr and "too slow here (floor 100000" in pulled.stderr
