"""MLX models: folders of config.json, tokenizer files and safetensors weights, as
mlx-community publishes them. Sized for the fit planner from their config.json and the
bytes of their weights; found in or pulled into the Hugging Face cache file by file,
with the same checks as a GGUF download."""

from __future__ import annotations

import fnmatch
import importlib.util
import json
import os
from dataclasses import dataclass

from roost.machine import fit
from roost.models.catalog import Model
from roost.errors import ModelFileError, RoostError

# What mlx-lm reads from a repo: mlx-community repos also carry READMEs and, at times,
# the original checkpoint's files, which are not needed.
NEEDED = ("*.json", "*.safetensors", "*.jinja", "tokenizer.model", "*.tiktoken", "*.txt")
# Affine quantization keeps a scale and a bias (16 bits each) per group of 64 weights.
GROUP_OVERHEAD_BITS = 32 / 64


# roost is not on PyPI: MLX comes with roost's own installer, or as its extra from the checkout.
INSTALL_HINT = ("run packaging/install.sh, which adds MLX on Apple Silicon, or `.venv/bin/pip install -e '.[mlx]'` "
                "from roost's checkout")


def unavailable(machine=None) -> str | None:
    """Why MLX cannot run here, or None when it can. `machine` (hardware.detect()'s,
    recorded ones included) says what this Python runs on."""
    if machine is None:
        from roost.machine import hardware

        machine = hardware.detect(gpus=False)
    if getattr(machine, "rosetta", False):
        return ("this Python is an x86_64 one running under Rosetta, and MLX needs a native arm64 Python: "
                "install one (python.org, Homebrew or `uv python install`) and run packaging/install.sh with it")
    if machine.os == "darwin" and machine.arch != "arm64":
        return "MLX needs Apple Silicon; this Mac has an Intel CPU"
    if machine.os not in ("darwin", "linux"):
        return "MLX runs on macOS (Apple Silicon) and Linux only"
    if importlib.util.find_spec("mlx_lm") is None:
        return f"MLX is not installed: {INSTALL_HINT}"
    return None


def is_model_dir(path: str) -> bool:
    return os.path.isdir(path) and os.path.isfile(os.path.join(path, "config.json"))


def read_config(path: str) -> dict:
    try:
        with open(os.path.join(path, "config.json")) as f:
            config = json.load(f)
    except (OSError, ValueError) as e:
        raise ModelFileError(f"{path}/config.json cannot be read: {e}") from None
    # Vision-language checkpoints keep the language model's numbers one level down.
    return {**config, **config.get("text_config", {})}


def shape(config: dict) -> fit.Shape:
    try:
        n_layer, n_embd, n_head = config["num_hidden_layers"], config["hidden_size"], config["num_attention_heads"]
        n_ff, n_vocab = config.get("intermediate_size") or 4 * n_embd, config["vocab_size"]
    except KeyError as e:
        raise ModelFileError(f"config.json has no {e.args[0]}: not a language model roost can size") from None
    n_head_kv = config.get("num_key_value_heads") or n_head
    head_dim = config.get("head_dim") or n_embd // n_head
    tied = config.get("tie_word_embeddings", False)
    attention = n_embd * head_dim * (2 * n_head + 2 * n_head_kv)
    mlp = _mlp(config, n_layer, n_embd, n_ff)
    return fit.Shape(
        n_layer=n_layer, n_embd=n_embd, n_ff=n_ff, n_head=n_head, n_head_kv=(n_head_kv,) * n_layer,
        head_dim_k=head_dim, head_dim_v=head_dim, n_vocab=n_vocab,
        n_ctx_train=config.get("max_position_embeddings", 0),
        n_params=n_vocab * n_embd * (1 if tied else 2) + n_layer * attention + mlp.params,
        tied_embeddings=tied, n_expert=mlp.n_expert, n_expert_used=mlp.n_expert_used,
    )


def expert_share(config: dict, s: fit.Shape) -> float:
    """The share of the layers' weights held by routed experts, of which a token reads only
    n_expert_used / n_expert: what fit.Quant.from_size needs to count them so."""
    layers = s.n_params - s.n_vocab * s.n_embd * (1 if s.tied_embeddings else 2)
    return _mlp(config, s.n_layer, s.n_embd, s.n_ff).routed / layers


@dataclass(frozen=True)
class _Mlp:
    params: int  # the feed-forward weights of every layer, routers included
    routed: int = 0  # of which routed experts
    n_expert: int = 0
    n_expert_used: int = 0


def _mlp(config: dict, n_layer: int, n_embd: int, n_ff: int) -> _Mlp:
    """Feed-forward weights: gate, up and down projections. MoE configs give their experts'
    width apart (Mixtral-style ones in intermediate_size), may add shared experts that
    every token reads, and may keep some layers dense, of intermediate_size."""
    n_expert = config.get("num_experts") or config.get("num_local_experts") or config.get("n_routed_experts") or 0
    dense = 3 * n_embd * n_ff
    if not n_expert:
        return _Mlp(n_layer * dense)
    n_expert_ff = config.get("moe_intermediate_size") or n_ff
    n_shared_ff = config.get("shared_expert_intermediate_size") or (config.get("n_shared_experts") or 0) * n_expert_ff
    n_moe = sum(_is_moe_layer(config, i) for i in range(n_layer))
    routed = n_moe * n_expert * 3 * n_embd * n_expert_ff
    every_token = n_moe * (3 * n_embd * n_shared_ff + n_embd * n_expert) + (n_layer - n_moe) * dense  # routers too
    # A config that does not say how many experts a token reads: all, lest the ceiling promise too much.
    n_used = config.get("num_experts_per_tok") or config.get("experts_per_token") or n_expert
    return _Mlp(routed + every_token, routed, n_expert, n_used)


def _is_moe_layer(config: dict, i: int) -> bool:
    """Qwen's MoE configs name their dense layers (mlp_only_layers, decoder_sparse_step),
    DeepSeek's and GLM's keep the first few dense (first_k_dense_replace, moe_layer_freq)."""
    return (i not in (config.get("mlp_only_layers") or ())
            and i >= (config.get("first_k_dense_replace") or 0)
            and (i + 1) % (config.get("decoder_sparse_step") or 1) == 0
            and i % (config.get("moe_layer_freq") or 1) == 0)


def quant_name(config: dict) -> str:
    q = config.get("quantization") or {}
    if "bits" in q:
        return f"{q['bits']}bit"
    return str(config.get("torch_dtype") or config.get("dtype") or "float")


def weight_bytes(path: str) -> int:
    return sum(os.path.getsize(os.path.join(path, n)) for n in os.listdir(path) if n.endswith(".safetensors"))


@dataclass(frozen=True)
class Local:
    """An MLX model folder on disk, sized for the planner."""

    path: str
    name: str
    shape: fit.Shape
    quant: fit.Quant


def local(path: str) -> Local:
    config = read_config(path)
    s = shape(config)
    size = weight_bytes(path)
    if size == 0:
        raise ModelFileError(f"{path} has no .safetensors weights: download it again")
    name = _repo_of_snapshot(path) or os.path.basename(os.path.normpath(path))
    return Local(path, name, s, fit.Quant.from_size(s, quant_name(config), size, expert_share(config, s)))


def _repo_of_snapshot(path: str) -> str | None:
    """owner/name for a folder inside the Hugging Face cache."""
    parts = os.path.normpath(path).split(os.sep)
    for part in reversed(parts):
        if part.startswith("models--"):
            return part.removeprefix("models--").replace("--", "/")
    return None


# -- catalog builds -------------------------------------------------------------


def builds(model: Model) -> list[tuple[str, fit.Quant]]:
    """The catalog's MLX builds of a model, as (repo, quant): sized by the bytes of their
    weights where the catalog gives them (mlx_size), else from the parameter count, which
    misses what a build keeps at higher precision (embeddings, a vision tower)."""
    s, share = model.shape(), model.expert_share()
    out = []
    for bits, repo in sorted(model.mlx.items(), key=lambda kv: int(kv[0])):
        size = model.mlx_size.get(bits) or int(model.params * (int(bits) + GROUP_OVERHEAD_BITS) / 8)
        out.append((repo, fit.Quant.from_size(s, f"{bits}bit", size, share)))
    return out


def rank(model: Model, machine, n_ctx: int, min_tps: float = fit.MIN_TPS) -> fit.Ranking:
    """The fit planner's ranking of a catalog model's MLX builds on this machine."""
    return fit.rank(model.shape(), [q for _, q in builds(model)], min(n_ctx, model.context), machine, min_tps=min_tps)


def best(ranking: fit.Ranking) -> fit.Option | None:
    """The build to run from a ranking of MLX builds: MLX has no partial offload, so
    only one that fits whole."""
    return ranking.pick if ranking.pick is not None and ranking.pick.fit == "full" else None


def pick(model: Model, machine, n_ctx: int, bits: str | None = None) -> tuple[str, fit.Ranking | None]:
    """The MLX repo of a catalog model to run here: the bits asked for, else the best
    quality that fits. Raises when none does."""
    available = builds(model)
    if bits:
        wanted = bits.lower().removesuffix("bit").removesuffix("-")
        for repo, q in available:
            if q.name == f"{wanted}bit":
                return repo, None
        have = ", ".join(q.name for _, q in available)
        if any(g.quant.lower() == bits.lower() for g in model.gguf):
            raise RoostError(f"{bits} is a GGUF quant of {model.name}, which llama.cpp runs (--engine llama); "
                             f"its MLX builds are: {have}")
        raise RoostError(f"{model.name} has no {bits} MLX build; it has: {have}")
    ranking = rank(model, machine, n_ctx)
    chosen = best(ranking)
    if chosen is None:
        raise RoostError(f"no MLX build of {model.name} fits on this machine: {ranking.reason}")
    return next(repo for repo, q in available if q.name == chosen.quant.name), ranking


def fits(model: Model, machine, n_ctx: int) -> bool:
    return best(rank(model, machine, n_ctx)) is not None


# -- the Hub ----------------------------------------------------------------------


def cached_dir(repo_id: str) -> str | None:
    """The downloaded folder of an MLX repo, found with no network."""
    from huggingface_hub import try_to_load_from_cache

    config = try_to_load_from_cache(repo_id, "config.json")
    if isinstance(config, str) and os.path.exists(config):
        folder = os.path.dirname(config)
        if weight_bytes(folder) and _complete(folder):
            return folder
    return None


def _complete(folder: str) -> bool:
    """A folder whose safetensors index (where there is one) names no missing file."""
    index = os.path.join(folder, "model.safetensors.index.json")
    if not os.path.exists(index):
        return True
    with open(index) as f:
        files = set(json.load(f).get("weight_map", {}).values())
    return all(os.path.exists(os.path.join(folder, name)) for name in files)


def remote_files(repo_id: str) -> list[tuple[str, int]]:
    """(file, size) of what mlx-lm needs from the repo."""
    from huggingface_hub import HfApi

    from roost.models import download

    with download.hub_errors(repo_id):
        info = HfApi().model_info(repo_id, files_metadata=True)
    files = [(s.rfilename, s.size or 0) for s in info.siblings or []
             if "/" not in s.rfilename and any(fnmatch.fnmatch(s.rfilename, p) for p in NEEDED)]
    if not any(name == "config.json" for name, _ in files) or not any(n.endswith(".safetensors") for n, _ in files):
        raise RoostError(f"{repo_id} is not an MLX model repo (no config.json and .safetensors weights)")
    return files


def pull(repo_id: str, on_progress=None, cancel=None) -> str:
    """Download an MLX repo's files, each checked as a GGUF is; the folder's path."""
    from roost.models import download

    files = remote_files(repo_id)
    download.check_disk(sum(size for _, size in files))
    paths = [download.download(repo_id, name, on_progress=on_progress, cancel=cancel) for name, _ in files]
    return os.path.dirname(paths[0])
