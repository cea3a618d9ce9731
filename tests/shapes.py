"""Real models' shapes and quant file sizes (as published in their GGUF repos), for
planning on simulated machines without the files."""

from roost.machine.fit import Quant, Shape

LLAMA_8B = Shape(n_layer=32, n_embd=4096, n_ff=14336, n_head=32, n_head_kv=(8,) * 32, head_dim_k=128,
                 head_dim_v=128, n_vocab=128256, n_ctx_train=131072, n_params=8_030_000_000)
LLAMA_8B_QUANTS = {"F16": 16.07e9, "Q8_0": 8.54e9, "Q6_K": 6.60e9, "Q5_K_M": 5.73e9, "Q4_K_M": 4.92e9,
                   "Q3_K_M": 4.02e9, "Q2_K": 3.18e9}

LLAMA_3B = Shape(n_layer=28, n_embd=3072, n_ff=8192, n_head=24, n_head_kv=(8,) * 28, head_dim_k=128,
                 head_dim_v=128, n_vocab=128256, n_ctx_train=131072, n_params=3_210_000_000, tied_embeddings=True)
LLAMA_3B_QUANTS = {"F16": 6.43e9, "Q8_0": 3.42e9, "Q6_K": 2.64e9, "Q5_K_M": 2.32e9, "Q4_K_M": 2.02e9,
                   "Q3_K_M": 1.69e9}

LLAMA_70B = Shape(n_layer=80, n_embd=8192, n_ff=28672, n_head=64, n_head_kv=(8,) * 80, head_dim_k=128,
                  head_dim_v=128, n_vocab=128256, n_ctx_train=131072, n_params=70_550_000_000)
LLAMA_70B_QUANTS = {"Q8_0": 74.98e9, "Q6_K": 57.89e9, "Q5_K_M": 49.95e9, "Q4_K_M": 42.52e9, "Q3_K_M": 34.27e9,
                    "Q2_K": 26.38e9}

# Qwen3-30B-A3B: 128 experts, 8 routed per token; experts hold ~95% of the layer weights.
QWEN3_MOE = Shape(n_layer=48, n_embd=2048, n_ff=768, n_head=32, n_head_kv=(4,) * 48, head_dim_k=128,
                  head_dim_v=128, n_vocab=151936, n_ctx_train=40960, n_params=30_530_000_000,
                  n_expert=128, n_expert_used=8)
QWEN3_MOE_QUANTS = {"Q8_0": 32.48e9, "Q6_K": 25.09e9, "Q4_K_M": 18.56e9, "Q3_K_M": 14.71e9}


def quants(shape: Shape, sizes: dict, expert_share: float = 0.0) -> list[Quant]:
    return [Quant.from_size(shape, name, int(size), expert_share) for name, size in sizes.items()]
