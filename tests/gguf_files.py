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


def _shaped(source: str, dest: str, arch: str, *, n_layer: int, n_embd: int, n_head: int, n_head_kv: int,
            n_ff: int, n_ctx: int) -> tuple[gguf.GGUFWriter, int]:
    """A writer for a synthetic model: its shape, and `source`'s tokenizer and chat
    template; with the size of that vocabulary (the embedding's and output's rows)."""
    reader = gguf.GGUFReader(source, "r")
    writer = gguf.GGUFWriter(dest, arch=arch)
    writer.add_name(f"synthetic {arch} {n_layer}x{n_embd}")
    writer.add_block_count(n_layer)
    writer.add_context_length(n_ctx)
    writer.add_embedding_length(n_embd)
    writer.add_feed_forward_length(n_ff)
    writer.add_head_count(n_head)
    writer.add_head_count_kv(n_head_kv)
    for field in reader.fields.values():
        if field.name.startswith("tokenizer."):
            kind = field.types[0]
            sub = field.types[-1] if kind == gguf.GGUFValueType.ARRAY else None
            writer.add_key_value(field.name, field.contents(), kind, sub_type=sub)
    return writer, len(reader.fields["tokenizer.ggml.tokens"].data)


def synthetic_llama(source: str, dest: str, *, n_layer: int, n_embd: int, n_head: int, n_head_kv: int,
                    n_ff: int, n_ctx: int = 8192, qtype: str = "Q8_0", seed: int = 0) -> str:
    """A llama-architecture model of any shape with random weights and `source`'s
    tokenizer and chat template: it loads and runs in llama.cpp like a real one (and
    talks nonsense). For checking memory formulas on shapes other than SmolLM2's."""
    import numpy as np
    from gguf.quants import quantize

    writer, n_vocab = _shaped(source, dest, "llama", n_layer=n_layer, n_embd=n_embd, n_head=n_head,
                              n_head_kv=n_head_kv, n_ff=n_ff, n_ctx=n_ctx)
    writer.add_rope_dimension_count(n_embd // n_head)
    writer.add_rope_freq_base(10000.0)
    writer.add_layer_norm_rms_eps(1e-5)

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


def synthetic_gemma3(source: str, dest: str, *, n_layer: int = 12, n_embd: int = 256, n_head: int = 4,
                     n_head_kv: int = 2, head_dim: int = 64, n_ff: int = 512, sliding_window: int = 128,
                     n_ctx: int = 32768, seed: int = 0) -> str:
    """A Gemma-3-shaped model: every 6th layer attends to the whole context, the others
    to the last `sliding_window` tokens only (llama.cpp's gemma3 pattern), with random
    F16 weights and `source`'s tokenizer and chat template. For what sliding-window
    caches change: their memory and the KV cache kept between chat turns."""
    import numpy as np

    writer, n_vocab = _shaped(source, dest, "gemma3", n_layer=n_layer, n_embd=n_embd, n_head=n_head,
                              n_head_kv=n_head_kv, n_ff=n_ff, n_ctx=n_ctx)
    writer.add_key_length(head_dim)
    writer.add_value_length(head_dim)
    writer.add_rope_freq_base(1_000_000.0)
    writer.add_layer_norm_rms_eps(1e-6)
    writer.add_sliding_window(sliding_window)

    rng = np.random.default_rng(seed)

    def add(name, rows, cols=None):
        if cols is None:  # norms stay f32, as in real files
            writer.add_tensor(name, np.ones(rows, dtype=np.float32))
            return
        writer.add_tensor(name, rng.normal(0, cols ** -0.5, size=(rows, cols)).astype(np.float16))

    add("token_embd.weight", n_vocab, n_embd)
    add("output_norm.weight", n_embd)
    # An output of its own (real Gemma 3 ties it to the embedding), and a large one: tied,
    # random weights predict the token just read, over and over, whatever the context; and
    # logits far apart keep a greedy answer from turning on a float rounding between two
    # ways of evaluating the same tokens.
    writer.add_tensor("output.weight", rng.normal(0, 4 * n_embd ** -0.5, size=(n_vocab, n_embd)).astype(np.float16))
    for i in range(n_layer):
        add(f"blk.{i}.attn_norm.weight", n_embd)
        add(f"blk.{i}.attn_q.weight", n_head * head_dim, n_embd)
        add(f"blk.{i}.attn_k.weight", n_head_kv * head_dim, n_embd)
        add(f"blk.{i}.attn_v.weight", n_head_kv * head_dim, n_embd)
        add(f"blk.{i}.attn_q_norm.weight", head_dim)
        add(f"blk.{i}.attn_k_norm.weight", head_dim)
        add(f"blk.{i}.attn_output.weight", n_embd, n_head * head_dim)
        add(f"blk.{i}.post_attention_norm.weight", n_embd)
        add(f"blk.{i}.ffn_norm.weight", n_embd)
        add(f"blk.{i}.ffn_gate.weight", n_ff, n_embd)
        add(f"blk.{i}.ffn_up.weight", n_ff, n_embd)
        add(f"blk.{i}.ffn_down.weight", n_embd, n_ff)
        add(f"blk.{i}.post_ffw_norm.weight", n_embd)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return dest
