"""Model files made for tests from the real SmolLM2 GGUF."""

from __future__ import annotations

import gguf
from gguf.scripts.gguf_new_metadata import MetadataDetails, copy_with_new_metadata


def with_chat_template(source: str, dest: str, template: str | None) -> str:
    """A copy of `source` whose chat template is `template` (None: no template at all)."""
    reader = gguf.GGUFReader(source, "r")
    arch = reader.fields[gguf.Keys.General.ARCHITECTURE].contents()
    writer = gguf.GGUFWriter(dest, arch=arch, endianess=reader.endianess)
    new, remove = {}, []
    if template is None:
        remove = [name for name in reader.fields if name.startswith(gguf.Keys.Tokenizer.CHAT_TEMPLATE)]
    else:
        new[gguf.Keys.Tokenizer.CHAT_TEMPLATE] = MetadataDetails(gguf.GGUFValueType.STRING, template)
    copy_with_new_metadata(reader, writer, new, remove)
    return dest


def truncated(source: str, dest: str, keep_fraction: float = 0.5) -> str:
    with open(source, "rb") as f:
        data = f.read()
    with open(dest, "wb") as f:
        f.write(data[: int(len(data) * keep_fraction)])
    return dest


def synthetic_llama(source: str, dest: str, *, n_layer: int, n_embd: int, n_head: int, n_head_kv: int,
                    n_ff: int, n_ctx: int = 8192, qtype: str = "Q8_0", seed: int = 0) -> str:
    """A llama-architecture model of any shape with random weights and `source`'s
    tokenizer and chat template: it loads and runs in llama.cpp like a real one (and
    talks nonsense). For checking memory formulas on shapes other than SmolLM2's."""
    import numpy as np
    from gguf.quants import quantize

    reader = gguf.GGUFReader(source, "r")
    writer = gguf.GGUFWriter(dest, arch="llama")
    writer.add_name(f"synthetic llama {n_layer}x{n_embd}")
    writer.add_block_count(n_layer)
    writer.add_context_length(n_ctx)
    writer.add_embedding_length(n_embd)
    writer.add_feed_forward_length(n_ff)
    writer.add_head_count(n_head)
    writer.add_head_count_kv(n_head_kv)
    writer.add_rope_dimension_count(n_embd // n_head)
    writer.add_rope_freq_base(10000.0)
    writer.add_layer_norm_rms_eps(1e-5)
    for field in reader.fields.values():
        if field.name.startswith("tokenizer."):
            kind = field.types[0]
            sub = field.types[-1] if kind == gguf.GGUFValueType.ARRAY else None
            writer.add_key_value(field.name, field.contents(), kind, sub_type=sub)
    n_vocab = len(reader.fields["tokenizer.ggml.tokens"].data)

    # One pool of quantized blocks, tiled into every tensor: quantizing billions of random
    # numbers in Python would take minutes, and a model's speed and memory do not depend
    # on what its weights say.
    rng = np.random.default_rng(seed)
    q = gguf.GGMLQuantizationType[qtype]
    block, type_size = gguf.GGML_QUANT_SIZES[q]
    pool = quantize(rng.normal(0, 0.02, size=(1, 1 << 20)).astype(np.float32), q).reshape(-1, type_size)
    head_dim = n_embd // n_head

    def add(name, rows, cols=None):
        if cols is None:  # norms stay f32, as in real files
            writer.add_tensor(name, np.ones(rows, dtype=np.float32))
            return
        start = int(rng.integers(len(pool)))
        blocks = np.resize(np.roll(pool, -start, axis=0), (rows * cols // block, type_size))
        writer.add_tensor(name, blocks.reshape(rows, -1), raw_dtype=q)  # shape read from the bytes

    add("token_embd.weight", n_vocab, n_embd)
    add("output_norm.weight", n_embd)
    for i in range(n_layer):
        add(f"blk.{i}.attn_norm.weight", n_embd)
        add(f"blk.{i}.attn_q.weight", n_embd, n_embd)
        add(f"blk.{i}.attn_k.weight", n_head_kv * head_dim, n_embd)
        add(f"blk.{i}.attn_v.weight", n_head_kv * head_dim, n_embd)
        add(f"blk.{i}.attn_output.weight", n_embd, n_embd)
        add(f"blk.{i}.ffn_norm.weight", n_embd)
        add(f"blk.{i}.ffn_gate.weight", n_ff, n_embd)
        add(f"blk.{i}.ffn_up.weight", n_ff, n_embd)
        add(f"blk.{i}.ffn_down.weight", n_embd, n_ff)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return dest


def with_vocabulary(source: str, dest: str, renamed: dict[str, str]) -> str:
    """A copy of `source` with no chat template whose vocabulary spells some tokens anew
    ({"<|im_start|>": "<start_of_turn>"}): the same weights, with another family's turn
    markers as whole tokens, for what is read from the vocabulary alone."""
    reader = gguf.GGUFReader(source, "r")
    arch = reader.fields[gguf.Keys.General.ARCHITECTURE].contents()
    writer = gguf.GGUFWriter(dest, arch=arch, endianess=reader.endianess)
    tokens = [renamed.get(t, t) for t in reader.fields[gguf.Keys.Tokenizer.LIST].contents()]
    new = {gguf.Keys.Tokenizer.LIST: MetadataDetails(gguf.GGUFValueType.ARRAY, tokens, sub_type=gguf.GGUFValueType.STRING)}
    remove = [name for name in reader.fields if name.startswith(gguf.Keys.Tokenizer.CHAT_TEMPLATE)]
    copy_with_new_metadata(reader, writer, new, remove)
    return dest
