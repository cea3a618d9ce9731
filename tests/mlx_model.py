"""An MLX model directory made from the SmolLM2 GGUF, so the MLX engine runs the very
weights llama.cpp runs, with no download.

MLX reads GGUF itself: `mx.load` turns Q4_1 and Q8_0 blocks into MLX's own affine
quantization (scale and bias per group of 32), bit for bit, so nothing is dequantized.
What is left is what llama.cpp's converter did to the Hugging Face checkpoint: rename
the tensors back, undo its reordering of the query and key rows, and rebuild the
tokenizer files from the vocabulary the GGUF carries.

Also: models of any architecture mlx-lm knows, with random weights (`random_model`),
for what the demo's cannot show: hybrid models' recurrent state, MoE sizes.

Run it as a script to write the directory: python tests/mlx_model.py OUT_DIR
"""

from __future__ import annotations

import json
import re
import shutil
import sys
from pathlib import Path

import gguf
import mlx.core as mx
from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers

_NAMES = {
    "token_embd": "model.embed_tokens",
    "output_norm": "model.norm",
    "output": "lm_head",
    "attn_norm": "input_layernorm",
    "ffn_norm": "post_attention_layernorm",
    "attn_q": "self_attn.q_proj",
    "attn_k": "self_attn.k_proj",
    "attn_v": "self_attn.v_proj",
    "attn_output": "self_attn.o_proj",
    "ffn_gate": "mlp.gate_proj",
    "ffn_up": "mlp.up_proj",
    "ffn_down": "mlp.down_proj",
}


def _hf_name(name: str) -> str:
    block = re.fullmatch(r"blk\.(\d+)\.(\w+)\.(\w+)", name)
    if block:
        layer, part, kind = block.groups()
        return f"model.layers.{layer}.{_NAMES[part]}.{kind}"
    part, kind = name.rsplit(".", 1)
    return f"{_NAMES[part]}.{kind}"


def _unpermute(rows: mx.array, n_head: int) -> mx.array:
    """llama.cpp's converter interleaves each head's two rotary halves; put them back
    in the order Hugging Face's (and MLX's) rotary embedding expects."""
    shape = rows.shape
    return rows.reshape(n_head, shape[0] // n_head // 2, 2, *shape[1:]).swapaxes(1, 2).reshape(shape)


def _field(reader: gguf.GGUFReader, key: str):
    return reader.fields[key].contents()


def convert(gguf_path: str, out: Path) -> Path:
    reader = gguf.GGUFReader(gguf_path)
    arch = _field(reader, "general.architecture")
    assert arch == "llama", f"only llama-architecture GGUFs convert here, not {arch}"
    key = lambda k: _field(reader, f"llama.{k}")  # noqa: E731
    n_head, n_head_kv = key("attention.head_count"), key("attention.head_count_kv")

    weights = {}
    for name, value in mx.load(gguf_path).items():
        hf = _hf_name(name)
        if ".self_attn.q_proj." in hf:
            value = _unpermute(value, n_head)
        elif ".self_attn.k_proj." in hf:
            value = _unpermute(value, n_head_kv)
        weights[hf] = value
    out.mkdir(parents=True, exist_ok=True)
    mx.save_safetensors(str(out / "model.safetensors"), weights, metadata={"format": "mlx"})

    bos, eos = _field(reader, "tokenizer.ggml.bos_token_id"), _field(reader, "tokenizer.ggml.eos_token_id")
    config = {
        "model_type": "llama",
        "architectures": ["LlamaForCausalLM"],
        "hidden_size": key("embedding_length"),
        "num_hidden_layers": key("block_count"),
        "intermediate_size": key("feed_forward_length"),
        "num_attention_heads": n_head,
        "num_key_value_heads": n_head_kv,
        "head_dim": key("rope.dimension_count"),
        "rms_norm_eps": key("attention.layer_norm_rms_epsilon"),
        "rope_theta": key("rope.freq_base"),
        "max_position_embeddings": key("context_length"),
        "vocab_size": key("vocab_size"),
        "tie_word_embeddings": "output.weight" not in {t.name for t in reader.tensors},
        "bos_token_id": bos,
        "eos_token_id": eos,
        # The default for the Q4_1 blocks; the Q8_0 embedding's own width is read from
        # its shapes when the model loads.
        "quantization": {"group_size": 32, "bits": 4},
    }
    (out / "config.json").write_text(json.dumps(config, indent=2))
    _write_tokenizer(reader, out, bos, eos)
    return out


def _write_tokenizer(reader: gguf.GGUFReader, out: Path, bos: int, eos: int) -> None:
    assert _field(reader, "tokenizer.ggml.model") == "gpt2", "a byte-level BPE vocabulary is expected"
    tokens = _field(reader, "tokenizer.ggml.tokens")
    types = _field(reader, "tokenizer.ggml.token_type")
    merges = [tuple(m.split(" ", 1)) for m in _field(reader, "tokenizer.ggml.merges")]
    bpe = Tokenizer(models.BPE(vocab={t: i for i, t in enumerate(tokens)}, merges=merges))
    # SmolLM2's pre-tokenizer ("smollm" in llama.cpp): single digits, then GPT-2's split.
    bpe.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Digits(individual_digits=True),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True),
    ])
    bpe.decoder = decoders.ByteLevel()
    control = gguf.TokenType.CONTROL
    bpe.add_special_tokens([AddedToken(t, special=True, normalized=False)
                            for t, kind in zip(tokens, types) if kind == control])
    bpe.save(str(out / "tokenizer.json"))
    (out / "tokenizer_config.json").write_text(json.dumps({
        "tokenizer_class": "PreTrainedTokenizerFast",
        "bos_token": tokens[bos],
        "eos_token": tokens[eos],
        "unk_token": tokens[_field(reader, "tokenizer.ggml.unknown_token_id")],
        "pad_token": tokens[_field(reader, "tokenizer.ggml.padding_token_id")],
        "add_bos_token": bool(_field(reader, "tokenizer.ggml.add_bos_token")),
        "chat_template": _field(reader, "tokenizer.chat_template"),
        "model_max_length": int(_field(reader, "llama.context_length")),
    }, indent=2))


# LFM2 (Liquid's hybrid): short convolutions with attention between; a convolution layer
# first, so the cache begins with recurrent state. Tiny, on SmolLM2's vocabulary.
HYBRID = {
    "model_type": "lfm2", "architectures": ["Lfm2ForCausalLM"], "vocab_size": 49152,
    "hidden_size": 64, "num_hidden_layers": 4, "layer_types": ["conv", "full_attention", "conv", "full_attention"],
    "num_attention_heads": 4, "num_key_value_heads": 2, "intermediate_size": 128, "block_ff_dim": 128,
    "block_dim": 64, "block_multiple_of": 16, "block_ffn_dim_multiplier": 1.0, "block_auto_adjust_ff_dim": False,
    "conv_bias": False, "conv_L_cache": 3, "norm_eps": 1e-5, "max_position_embeddings": 8192,
    "tie_word_embeddings": True,
}

# Mamba: recurrent state alone, no attention layer to count the tokens it has taken in.
RECURRENT = {
    "model_type": "mamba", "architectures": ["MambaForCausalLM"], "vocab_size": 49152,
    "hidden_size": 64, "num_hidden_layers": 2, "intermediate_size": 128, "state_size": 8, "conv_kernel": 4,
    "time_step_rank": 4, "use_bias": False, "use_conv_bias": True, "tie_word_embeddings": True,
}


def random_model(config: dict):
    """mlx-lm's model for config, as its loader builds it, with seeded random weights."""
    from mlx_lm.utils import _get_classes

    model_class, args_class = _get_classes(config)
    mx.random.seed(0)
    model = model_class(args_class.from_dict(config))
    mx.eval(model.parameters())
    return model


def save_random_model(config: dict, out: Path, tokenizer_from: str) -> Path:
    """A random model written as mlx-lm writes its conversions, with the tokenizer (and
    chat template) of another MLX folder."""
    from mlx_lm.utils import save_config, save_model

    save_model(out, random_model(config))
    theirs = json.loads(Path(tokenizer_from, "config.json").read_text())
    save_config({**config, **{k: v for k, v in theirs.items() if k.endswith("_token_id")}}, out / "config.json")
    for name in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(Path(tokenizer_from, name), out)
    return out


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    from roost.models import catalog

    print(convert(catalog.demo_model_path(), Path(sys.argv[1])))
