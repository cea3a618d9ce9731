"""MLX from the command line, for real on this Linux box's CPU (mlx[cpu]): MLX folders,
the engine choice, refusals, and an MLX build pulled from the Hub stand-in. The engine
itself is tested in test_engine.py, in the one suite every engine passes."""

import functools
import itertools
import json
import os
import re
import shutil
import subprocess
import sys

import pytest

from conftest import NAME, ROOT, one_line, recorded_machine, roost, roost_hub
from roost.machine import fit
from roost.models import catalog, loading, mlx_models
from roost.backends import load
from roost.backends.base import Done, Params, Plan
from roost.errors import UsageError

QUESTION = "What is the capital of Japan?"
GREEDY = Params(temperature=0, max_tokens=12)


def test_a_folder_runs_on_mlx_without_asking(demo_mlx):
    result = roost("run", demo_mlx, QUESTION, "-t", "0", "--json")
    assert result.returncode == 0, result.stderr
    data = json.loads(result.stdout)
    assert "Tokyo" in data["text"]
    assert data["engine"]["engine"] == "mlx" and data["engine"]["device"] == "CPU"
    assert data["stats"]["prompt_tokens"] > 5 and data["stats"]["decode_tps"] > 0
    memory = data["memory"]
    assert memory["engine_peak_bytes"] >= memory["buffers"]["model"] > 50 * 2**20


@pytest.mark.slow
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


# -- hybrid and recurrent models ------------------------------------------------------


def answer(events) -> Done:
    return [e for e in events if isinstance(e, Done)][0]


def test_a_hybrid_model_answers_on_the_command_line(hybrid_mlx):
    result = roost("run", hybrid_mlx, QUESTION, "--engine", "mlx", "-t", "0", "-n", "8", "--json")
    assert result.returncode == 0, result.stderr
    data = json.loads(result.stdout)
    assert data["stats"]["generated_tokens"] == 8 and data["memory"]["buffers"]["kv"] > 0


@pytest.mark.parametrize("model", ["hybrid_mlx", "recurrent_mlx"])
def test_recurrent_state_is_reused_only_by_a_prompt_that_extends_it(model, request, monkeypatch):
    import mlx.core as mx

    from roost.backends import mlx as engine_module

    path = request.getfixturevalue(model)
    engine, cold = (load(path, Plan(n_ctx=2048), engine="mlx") for _ in range(2))
    asked = [{"role": "user", "content": QUESTION}]
    # A random model says anything: the first answer is made to say known words, which the
    # model still takes in token by token (the sampler is asked once more than it answers).
    said = engine.tokenize("Tokyo, of course.")
    with monkeypatch.context() as m:
        script = itertools.chain(said, itertools.repeat(said[-1]))
        m.setattr(engine_module, "make_sampler", lambda *a, **k: lambda logprobs: mx.array([next(script)]))
        first = answer(engine.stream(asked, Params(temperature=0, max_tokens=len(said))))
    assert first.text == "Tokyo, of course."
    # The next turn extends all the state took in, the answer included: it goes on from there,
    # and answers as a fresh state does.
    follow = asked + [{"role": "assistant", "content": first.text}, {"role": "user", "content": "And of Italy?"}]
    second = answer(engine.stream(follow, GREEDY))
    assert second.stats.cached_tokens == first.stats.prompt_tokens + first.stats.generated_tokens
    assert second.text == answer(cold.stream(follow, GREEDY)).text
    # An edited question does not extend it, and a state cannot be cut back: a fresh one.
    edited = [{"role": "user", "content": "What is the capital of France?"}] + follow[1:]
    third = answer(engine.stream(edited, GREEDY))
    assert third.stats.cached_tokens == 0
    assert third.text == answer(cold.stream(edited, GREEDY)).text
    assert engine.memory().buffers["kv"] > 0
    engine.close()
    cold.close()


@pytest.mark.slow
def test_a_hybrid_model_chats_in_the_app(hybrid_mlx, monkeypatch):
    import pilot as tui
    from pilot import ask_and_wait, chat

    monkeypatch.setattr(tui, "load", functools.partial(load, engine="mlx"))  # chat() loads llama.cpp's

    async def scenario(app, screen, pilot):
        await ask_and_wait(screen, pilot, "Hi")
        await ask_and_wait(screen, pilot, "And again?")
        answers = screen.query(".assistant")
        assert len(answers) == 2 and not any(a.has_class("error") for a in answers)
        assert len(screen.session.stats) == 2

    chat(scenario, hybrid_mlx)


# -- out of memory --------------------------------------------------------------------

# What MLX raises when Metal runs out, word for word (mlx/backend/metal/allocator.cpp and
# device.cpp): this Linux box has no Metal to run out of.
METAL_TOO_LONG = ("[metal::malloc] Attempting to allocate 19327352832 bytes which is greater than the maximum "
                  "allowed buffer size of 17179869184 bytes.")
METAL_OUT_OF_MEMORY = ("[METAL] Command buffer execution failed: Insufficient Memory "
                       "(00000008:kIOGPUCommandBufferCallbackErrorOutOfMemory).")


def run_patched(patch: str, *args: str) -> subprocess.CompletedProcess:
    """`roost run` in a fresh process, after `patch` (Python, with the MLX engine module
    imported as `engine`) has replaced part of mlx-lm as the engine sees it."""
    code = "\n".join(["import sys", "import roost.backends.mlx as engine", patch,
                      "from roost.cli import main", "sys.exit(main(sys.argv[1:]))"])
    return subprocess.run([sys.executable, "-c", code, "run", *args], capture_output=True, text=True,
                          stdin=subprocess.DEVNULL, cwd=ROOT, timeout=120)


@pytest.mark.slow
@pytest.mark.parametrize("message", [METAL_TOO_LONG, METAL_OUT_OF_MEMORY])
def test_running_out_of_memory_is_one_line_not_a_corrupt_file(demo_mlx, message):
    at_load = f"def load_model(path):\n    raise RuntimeError({message!r})\nengine.load_model = load_model"
    line = one_line(run_patched(at_load, demo_mlx, "hi"), "ran out of memory loading", "smaller quant", message[:20])
    assert "corrupt" not in line
    answering = ("real = engine.generate_step\n"
                 "def generate_step(*args, **kwargs):\n"
                 "    for n, step in enumerate(real(*args, **kwargs)):\n"
                 f"        if n == 3:\n            raise RuntimeError({message!r})\n"
                 "        yield step\n"
                 "engine.generate_step = generate_step")
    result = run_patched(answering, demo_mlx, QUESTION, "-t", "0")
    one_line(result, "ran out of memory while answering", "smaller --ctx")
    assert result.stdout.strip()  # what was answered before stays


# -- sizing MoE folders -----------------------------------------------------------------

# Qwen3-30B-A3B's config.json, the numbers that size it: 30.5B parameters, 3.3B active.
QWEN3_30B_A3B = {
    "model_type": "qwen3_moe", "hidden_size": 2048, "num_hidden_layers": 48, "num_attention_heads": 32,
    "num_key_value_heads": 4, "head_dim": 128, "intermediate_size": 6144, "moe_intermediate_size": 768,
    "num_experts": 128, "num_experts_per_tok": 8, "vocab_size": 151936, "tie_word_embeddings": False,
    "max_position_embeddings": 40960,
}


def test_a_moe_folder_is_sized_by_its_experts():
    s = mlx_models.shape(QWEN3_30B_A3B)
    assert s.n_params == pytest.approx(30.5e9, rel=0.1)
    # A token reads 8 of the 128 experts: its active parameters, less the embedding table
    # (one row of it is read), are what the planner counts as read.
    bf16 = fit.Quant.from_size(s, "bf16", 2 * s.n_params, mlx_models.expert_share(QWEN3_30B_A3B, s))
    layers, output = fit.bytes_per_token(s, bf16)
    assert (sum(layers) + output + bf16.embed_bytes) / 2 == pytest.approx(3.3e9, rel=0.1)


def test_a_moe_folder_decodes_as_fast_as_its_active_weights_allow(tmp_path):
    folder = tmp_path / "Qwen3-30B-A3B-4bit"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({**QWEN3_30B_A3B, "quantization": {"group_size": 64, "bits": 4}}))
    with open(folder / "model.safetensors", "wb") as f:  # sparse: 17 GB on paper, nothing on disk
        f.truncate(int(30.5e9 * 4.5 / 8))
    machine = recorded_machine("m3max64.json")
    _, _, option = loading.plan_mlx(str(folder), machine)
    read = (3.3e9 - 151936 * 2048) * 4.5 / 8
    assert option.ceiling_tps == pytest.approx(machine.apple.bandwidth_gbs * 1e9 / read, rel=0.1)


_TINY = {"vocab_size": 1000, "hidden_size": 64, "num_hidden_layers": 4, "num_attention_heads": 4,
         "num_key_value_heads": 2, "head_dim": 16, "intermediate_size": 256, "rms_norm_eps": 1e-6,
         "max_position_embeddings": 4096, "rope_theta": 10000.0, "tie_word_embeddings": False}
TINY_MOE = [
    # Qwen3: a dense first layer (mlp_only_layers).
    {**_TINY, "model_type": "qwen3_moe", "moe_intermediate_size": 32, "num_experts": 8, "num_experts_per_tok": 2,
     "decoder_sparse_step": 1, "mlp_only_layers": [0], "norm_topk_prob": True},
    # Qwen2: a shared expert beside the routed ones.
    {**_TINY, "model_type": "qwen2_moe", "moe_intermediate_size": 32, "num_experts": 8, "num_experts_per_tok": 2,
     "shared_expert_intermediate_size": 64},
    # Mixtral: the experts' width is intermediate_size.
    {**_TINY, "model_type": "mixtral", "intermediate_size": 32, "num_local_experts": 8, "num_experts_per_tok": 2},
    # GLM-4.5 (DeepSeek's layout): the first layer dense, a shared expert of the experts' width.
    {**_TINY, "model_type": "glm4_moe", "moe_intermediate_size": 32, "n_routed_experts": 8, "num_experts_per_tok": 2,
     "n_shared_experts": 1, "first_k_dense_replace": 1, "n_group": 1, "topk_group": 1, "routed_scaling_factor": 1.0,
     "norm_topk_prob": True, "use_qk_norm": False, "attention_bias": False, "partial_rotary_factor": 0.5,
     "rope_scaling": None},
]


@pytest.mark.parametrize("config", TINY_MOE, ids=lambda c: c["model_type"])
def test_a_moe_config_is_sized_as_its_weights(config):
    from mlx.utils import tree_flatten

    from mlx_model import random_model

    weights = sum(v.size for _, v in tree_flatten(random_model(config).parameters()))
    assert mlx_models.shape(config).n_params == pytest.approx(weights, rel=0.1)


# -- choosing the engine ----------------------------------------------------------------


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
    with pytest.raises(UsageError, match=re.escape(mlx_models.INSTALL_HINT)):
        loading.engine_for("mlx", smol, recorded_machine("m3max64.json"))


@pytest.mark.slow
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


@pytest.mark.slow
def test_a_corrupt_weight_file_is_refused_and_fetched_again(hub, home, mlx_repo):
    hub.corrupt("model.safetensors")
    one_line(roost_hub(hub, home, "pull", NAME, "--engine", "mlx", "-y"), "model.safetensors", "failed verification")
    # Nothing half-done is taken for the model: offline, it is simply not there.
    one_line(roost_hub(hub, home, "run", NAME, "hi", "--engine", "mlx", env={"HF_HUB_OFFLINE": "1"}))
    again = roost_hub(hub, home, "pull", NAME, "--engine", "mlx", "-y")
    assert again.returncode == 0, again.stderr
    weights = os.path.join(again.stdout.strip(), "model.safetensors")
    assert os.path.getsize(weights) == os.path.getsize(mlx_repo / "model.safetensors")
