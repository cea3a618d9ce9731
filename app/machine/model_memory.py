"""What a model takes in memory, and how many bytes it reads per token.

A model's shape (the architecture numbers) and one quant's bytes decide it: memory is
weights + KV cache + compute buffers + runtime overhead, split between the GPU and host
memory the way llama.cpp places them; decoding a token reads every active weight (and the
KV cache) once. The planner (fit.py) weighs these against a machine.

Every constant here was checked against llama.cpp's own buffer report on this project's
CPU machines (bench/fit_accuracy.py); the GPU figures are llama.cpp's documented layout
and are marked as not yet measured where they are.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

MiB = 1024**2
KV_BYTES_PER_ELEMENT = {"f16": 2.0, "q8_0": 34 / 32, "q4_0": 18 / 32}
N_UBATCH = 512  # llama.cpp's default micro-batch: sizes the compute buffer
# Host memory llama.cpp allocates beyond its reported buffers: thread pools, the
# token and logit arrays of llama-cpp-python, allocator slack (measured on CPU).
RUNTIME_OVERHEAD = 24 * MiB
# A CUDA context with cuBLAS workspaces takes this much VRAM before any tensor
# (300-500 MiB seen on consumer cards; not measured by roost yet).
CUDA_CONTEXT = 400 * MiB


@dataclass(frozen=True)
class Shape:
    """The architecture numbers that decide memory, whatever the quant."""

    n_layer: int
    n_embd: int
    n_ff: int
    n_head: int
    n_head_kv: tuple[int, ...]  # per layer
    head_dim_k: int
    head_dim_v: int
    n_vocab: int
    n_ctx_train: int
    n_params: int
    tied_embeddings: bool = False
    n_expert: int = 0
    n_expert_used: int = 0
    sliding_window: int = 0  # tokens a sliding-window layer attends to; 0: none slides
    swa_layers: tuple[bool, ...] = ()  # per layer: whether it attends through the window

    @classmethod
    def from_gguf(cls, info) -> "Shape":
        names = {t.name for t in info.tensors}
        return cls(
            n_layer=info.n_layer,
            n_embd=info.n_embd,
            n_ff=_scalar(info.metadata.get(f"{info.architecture}.feed_forward_length", 0)),
            n_head=info.n_head,
            n_head_kv=tuple(info.n_head_kv_per_layer),
            head_dim_k=info.head_dim_k,
            head_dim_v=info.head_dim_v,
            n_vocab=info.n_vocab,
            n_ctx_train=info.n_ctx_train,
            n_params=info.n_params,
            tied_embeddings="output.weight" not in names,
            n_expert=info.n_expert,
            n_expert_used=info.n_expert_used,
            sliding_window=info.sliding_window,
            swa_layers=tuple(info.swa_layers) if info.sliding_window else (),
        )

    def kv_cells(self, layer: int, n_ctx: int) -> int:
        """The KV cells llama.cpp gives a layer: the context, or for a sliding-window
        layer its window and one micro-batch, padded to 256 (llama_kv_cache_iswa)."""
        if not (self.swa_layers and self.swa_layers[layer]):
            return n_ctx
        return min(n_ctx, -(-(self.sliding_window + N_UBATCH) // 256) * 256)


def _scalar(value) -> int:
    return int(max(value) if isinstance(value, list) else value or 0)


@dataclass(frozen=True)
class Quant:
    """One file of a model: how its bytes divide between the parts llama.cpp places."""

    name: str
    file_bytes: int
    layer_bytes: tuple[int, ...]
    embed_bytes: int  # token embedding: always in host memory
    output_bytes: int  # output projection; for tied embeddings, the embedding again
    expert_bytes: int = 0  # the share of layer_bytes held by MoE experts
    path: str | None = None

    @property
    def weight_bytes(self) -> int:
        return sum(self.layer_bytes) + self.embed_bytes + self.output_bytes

    def bits_per_weight(self, shape: Shape) -> float:
        return 8 * self.file_bytes / shape.n_params if shape.n_params else 0.0

    @classmethod
    def from_gguf(cls, info, shape: Shape) -> "Quant":
        embed = sum(t.n_bytes for t in info.tensors if t.name == "token_embd.weight")
        layers = tuple(info.layer_bytes)
        rest = info.tensor_bytes - embed - sum(layers)  # output projection and final norm
        return cls(
            name=info.quant,
            file_bytes=info.file_bytes,
            layer_bytes=layers,
            embed_bytes=embed,
            output_bytes=embed if shape.tied_embeddings else rest,
            expert_bytes=info.expert_bytes,
            path=info.path,
        )

    @classmethod
    def from_size(cls, shape: Shape, name: str, file_bytes: int, expert_share: float = 0.0) -> "Quant":
        """A quant known only by its file size (a catalog entry): bytes divided by
        parameter counts, at the file's average bits per weight."""
        per_param = file_bytes / shape.n_params
        embed = int(shape.n_vocab * shape.n_embd * per_param)
        output = embed if not shape.tied_embeddings else 0
        layers_total = file_bytes - embed - output
        layer = layers_total // shape.n_layer
        return cls(
            name=name,
            file_bytes=file_bytes,
            layer_bytes=(layer,) * shape.n_layer,
            embed_bytes=embed,
            output_bytes=embed if shape.tied_embeddings else output,
            expert_bytes=int(layers_total * expert_share),
        )


@dataclass(frozen=True)
class Estimate:
    weights: int
    kv: int
    compute: int
    overhead: int
    gpu: int  # of the total, what sits in GPU memory
    compute_reserved: int = 0  # the compute buffer llama.cpp reports allocating

    @property
    def total(self) -> int:
        return self.weights + self.kv + self.compute + self.overhead

    @property
    def host(self) -> int:
        return self.total - self.gpu

    def as_dict(self) -> dict:
        return {**asdict(self), "total": self.total, "host": self.host}


def kv_bytes(shape: Shape, n_ctx: int, kv_type: str = "f16", layers: range | None = None) -> int:
    layers = range(shape.n_layer) if layers is None else layers
    elements = sum(shape.n_head_kv[i] * (shape.head_dim_k + shape.head_dim_v) * shape.kv_cells(i, n_ctx)
                   for i in layers)
    return int(elements * KV_BYTES_PER_ELEMENT[kv_type])


def compute_bytes(shape: Shape, n_ctx: int, flash_attn: bool = False) -> tuple[int, int]:
    """llama.cpp's compute buffer: (reserved, touched). It reserves the larger of two
    peaks: a micro-batch's logits, or one layer's attention. With flash attention off,
    that layer holds its attention scores over the full context (n_ctx × heads, f32, and
    the f32 mask); on, the scores are never materialised and only the f16 mask grows with
    the context, so the logits usually rule. roost asks for one token's logits at a time,
    so on the CPU only the attention peak is ever written, and only once the context is
    full; untouched pages never become resident."""
    u = min(N_UBATCH, n_ctx)
    logits = (shape.n_vocab + 2 * shape.n_embd) * u * 4
    layer = (shape.n_ff + 3 * shape.n_embd) * u * 4
    attention = layer + (n_ctx * u * 2 if flash_attn else n_ctx * (shape.n_head + 1) * u * 4)
    return max(logits, attention), attention


def cpu_attention_work(shape: Shape, n_ctx: int) -> int:
    """The CPU backend's scratch for multiplying f32 attention scores by the f16 V cache:
    the scores converted to f16, outside any reported buffer."""
    return n_ctx * min(N_UBATCH, n_ctx) * shape.n_head * 2


def estimate(shape: Shape, quant: Quant, n_ctx: int, n_gpu_layers: int = 0, kv_type: str = "f16",
             gpu_runtime: int = CUDA_CONTEXT, flash_attn: bool = False) -> Estimate:
    """Memory for one context of n_ctx tokens, with n_gpu_layers on the GPU in
    llama.cpp's order: the last layers first, then (at n_layer + 1, or -1) the output.
    Host figures are what becomes resident with the context full; GPU figures are what
    is allocated, since device memory is taken whole."""
    L = shape.n_layer
    k = L + 1 if n_gpu_layers < 0 else min(n_gpu_layers, L + 1)
    gpu_layers = range(L - min(k, L), L)
    output_on_gpu = k > L
    # Host keeps the embedding always; the output projection too unless offloaded (a tied
    # one is then copied to the GPU, so the embedding stays behind as well).
    gpu_weights = sum(quant.layer_bytes[i] for i in gpu_layers) + (quant.output_bytes if output_on_gpu else 0)
    host_weights = quant.weight_bytes - gpu_weights
    if shape.tied_embeddings and not output_on_gpu:
        host_weights -= quant.output_bytes  # output reads the embedding in place
    reserved, touched = compute_bytes(shape, n_ctx, flash_attn)
    # Flash attention on the CPU works on a few rows a thread: no scratch to speak of.
    attention_work = 0 if flash_attn else cpu_attention_work(shape, n_ctx)
    host_compute, overhead, gpu = touched, RUNTIME_OVERHEAD + attention_work, 0
    if k > 0:
        gpu = gpu_weights + kv_bytes(shape, n_ctx, kv_type, gpu_layers) + reserved + gpu_runtime
        overhead += gpu_runtime
        if output_on_gpu:  # every layer runs on the GPU: the host only stages inputs
            host_compute = shape.n_embd * 4 * min(N_UBATCH, n_ctx) * 4
            overhead -= attention_work
    return Estimate(
        weights=gpu_weights + host_weights,
        kv=kv_bytes(shape, n_ctx, kv_type),
        compute=host_compute + (reserved if k > 0 else 0),
        overhead=overhead,
        gpu=gpu,
        compute_reserved=reserved,
    )


def unified_estimate(shape: Shape, quant: Quant, n_ctx: int, kv_type: str = "f16",
                     flash_attn: bool = False) -> Estimate:
    """Everything on the GPU of a unified-memory Mac: Metal maps the weights where they
    lie (no copies), and its compute buffer is allocated whole."""
    reserved, _ = compute_bytes(shape, n_ctx, flash_attn)
    weights = quant.weight_bytes - (quant.output_bytes if shape.tied_embeddings else 0)
    kv = kv_bytes(shape, n_ctx, kv_type)
    total = weights + kv + reserved + RUNTIME_OVERHEAD
    return Estimate(weights, kv, reserved, RUNTIME_OVERHEAD, gpu=total, compute_reserved=reserved)


def bytes_per_token(shape: Shape, quant: Quant, ctx_used: int = 0, kv_type: str = "f16") -> tuple[list[int], int]:
    """Bytes read to decode one token: (per layer, outside the layers). MoE layers read
    only the experts a token is routed to."""
    active = shape.n_expert_used / shape.n_expert if shape.n_expert else 1.0
    share = quant.expert_bytes / sum(quant.layer_bytes) if quant.expert_bytes else 0.0
    # A sliding-window layer reads only the cells its cache holds, however long the chat.
    kv_per_layer = [int(h * (shape.head_dim_k + shape.head_dim_v) * shape.kv_cells(i, ctx_used)
                        * KV_BYTES_PER_ELEMENT[kv_type])
                    for i, h in enumerate(shape.n_head_kv)]
    layers = [int(b * (1 - share) + b * share * active) + kv for b, kv in zip(quant.layer_bytes, kv_per_layer)]
    return layers, quant.output_bytes
