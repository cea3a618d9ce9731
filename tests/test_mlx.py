"""MLX from the command line, for real on this Linux box's CPU (mlx[cpu]): MLX folders,
the engine choice, refusals, and an MLX build pulled from the Hub stand-in. The engine
itself is tested in test_engine.py, in the one suite every engine passes."""

import json
import os
import shutil

import pytest

from conftest import NAME, one_line, recorded_machine, roost, roost_hub
from roost import catalog, loading
from roost.errors import UsageError

QUESTION = "What is the capital of Japan?"


def test_a_folder_runs_on_mlx_without_asking(demo_mlx):
    result = roost("run", demo_mlx, QUESTION, "-t", "0", "--json")
    assert result.returncode == 0, result.stderr
    data = json.loads(result.stdout)
    assert "Tokyo" in data["text"]
    assert data["engine"]["engine"] == "mlx" and data["engine"]["device"] == "CPU"
    assert data["stats"]["prompt_tokens"] > 5 and data["stats"]["decode_tps"] > 0
    memory = data["memory"]
    assert memory["engine_peak_bytes"] >= memory["buffers"]["model"] > 50 * 2**20


def test_engine_flag_streams_text_and_stats(demo_mlx):
    result = roost("run", "--engine", "mlx", demo_mlx, QUESTION, "-t", "0", "-n", "12", "--stats")
    assert result.returncode == 0, result.stderr
    assert "Tokyo" in result.stdout
    assert "tok/s" in result.stderr.splitlines()[-1]


@pytest.mark.parametrize("args, needle", [
    (("--engine", "mlx", "demo"), "not an MLX model"),
    (("--engine", "llama", "{mlx}"), "is an MLX model folder"),
    (("--engine", "mlx", "qwen2.5-0.5b"), "has no MLX build"),
    (("--engine", "mlx", "{mlx}/.."), "not an MLX model"),
    (("--engine", "mlx", "smollm2-135m:3bit"), "has no 3bit MLX build"),
])
def test_what_mlx_cannot_run_gets_one_line(demo_mlx, args, needle):
    args = [a.replace("{mlx}", demo_mlx) for a in args]
    one_line(roost("run", *args, "hi"), needle)


def test_damaged_folders_get_one_line(demo_mlx, tmp_path):
    config_only = tmp_path / "config-only"
    config_only.mkdir()
    shutil.copy(os.path.join(demo_mlx, "config.json"), config_only)
    one_line(roost("run", str(config_only), "hi"), "no .safetensors weights")
    broken = tmp_path / "broken"
    shutil.copytree(demo_mlx, broken)
    (broken / "config.json").write_text("{ not json")
    one_line(roost("run", str(broken), "hi"), "config.json cannot be read")
    cut = tmp_path / "cut"
    shutil.copytree(demo_mlx, cut)
    with open(cut / "model.safetensors", "r+b") as f:
        f.truncate(os.path.getsize(cut / "model.safetensors") // 2)
    one_line(roost("run", str(cut), "hi"), "truncated or corrupt", "download it again")


def test_too_big_is_refused_before_loading(demo_mlx, tmp_path):
    big = tmp_path / "big"
    big.mkdir()
    shutil.copy(os.path.join(demo_mlx, "config.json"), big)
    with open(big / "model.safetensors", "wb") as f:  # sparse: 20 GB on paper, nothing on disk
        f.truncate(20 * 2**30)
    line = one_line(roost("run", str(big), "hi", machine="m1_8gb.json"), "does not fit in memory")
    assert "big" in line


def test_auto_choice_is_mlx_on_apple_silicon_where_a_build_fits():
    smol, huge = catalog.resolve(NAME), catalog.resolve("llama3.3-70b")
    assert loading.engine_for(None, smol, recorded_machine("m3max64.json")) == "mlx"
    assert loading.engine_for(None, smol, recorded_machine("rtx4090.json")) == "llama"  # MLX is for Macs
    assert loading.engine_for(None, huge, recorded_machine("m1_8gb.json")) == "llama"  # its MLX build does not fit
    assert loading.engine_for(None, catalog.resolve("demo"), recorded_machine("m3max64.json")) == "llama"  # a .gguf
    assert loading.engine_for("llama", smol, recorded_machine("m3max64.json")) == "llama"


def test_without_mlx_installed(no_mlx):
    smol = catalog.resolve(NAME)
    assert loading.engine_for(None, smol, recorded_machine("m3max64.json")) == "llama"
    with pytest.raises(UsageError, match=r"pip install 'roost\[mlx\]'"):
        loading.engine_for("mlx", smol, recorded_machine("m3max64.json"))


def test_mlx_build_is_pulled_and_run(hub, home, mlx_repo):
    ran = roost_hub(hub, home, "run", NAME, QUESTION, "--engine", "mlx", "-y", "-t", "0", "-n", "12", "--json")
    assert ran.returncode == 0, ran.stderr
    data = json.loads(ran.stdout)
    assert "Tokyo" in data["text"] and data["engine"]["engine"] == "mlx"
    folder = data["model"]
    assert sorted(os.listdir(folder)) == sorted(n for n in os.listdir(mlx_repo) if n != "README.md")
    # Downloaded is found with no network, by `pull` and by an Apple Silicon machine's default choice.
    offline = {"HF_HUB_OFFLINE": "1"}
    pulled = roost_hub(hub, home, "pull", NAME, "--engine", "mlx", env=offline)
    assert pulled.returncode == 0 and pulled.stdout.strip() == folder, pulled.stderr
    auto = roost_hub(hub, home, "run", NAME, QUESTION, "-t", "0", "-n", "3", "--json", env=offline,
                     machine="m3max64.json")
    assert auto.returncode == 0, auto.stderr
    assert json.loads(auto.stdout)["engine"]["engine"] == "mlx"


def test_a_corrupt_weight_file_is_refused_and_fetched_again(hub, home, mlx_repo):
    hub.corrupt("model.safetensors")
    one_line(roost_hub(hub, home, "pull", NAME, "--engine", "mlx", "-y"), "model.safetensors", "failed verification")
    # Nothing half-done is taken for the model: offline, it is simply not there.
    one_line(roost_hub(hub, home, "run", NAME, "hi", "--engine", "mlx", env={"HF_HUB_OFFLINE": "1"}))
    again = roost_hub(hub, home, "pull", NAME, "--engine", "mlx", "-y")
    assert again.returncode == 0, again.stderr
    weights = os.path.join(again.stdout.strip(), "model.safetensors")
    assert os.path.getsize(weights) == os.path.getsize(mlx_repo / "model.safetensors")
