"""How a model file is loaded here: its context and its plan, checked to fit before
anything is loaded. The command line and the chat app load models the same way."""

from __future__ import annotations

from dataclasses import replace

from roost.errors import UsageError

DEFAULT_CTX = 4096  # memory for the whole context is taken up front: not the model's maximum


def context(requested: int | None, name: str, trained: int) -> int:
    """The context to plan and load: as asked, within what the model was trained on."""
    limit = trained or requested or DEFAULT_CTX
    if requested is None:
        return min(DEFAULT_CTX, limit)
    if requested > limit:
        raise UsageError(f"--ctx {requested} is more than {name} allows: at most {limit} tokens")
    return requested


def can_offload() -> bool:
    """Whether this llama.cpp build can put layers on a GPU."""
    from roost.backends.llama_cpp import build_info

    return build_info()[0]


def check_gpu_layers(gpu_layers: int | None, offload: bool) -> None:
    if gpu_layers and not offload:
        raise UsageError("--gpu-layers needs a GPU build of llama-cpp-python, and this one is CPU only (see: roost doctor)")


def plan(path: str, machine, offload: bool, ctx: int | None = None, gpu_layers: int | None = None,
         threads: int | None = None):
    """(GGUF info, Plan) for one file on this machine; ModelTooBig before any loading."""
    from roost import fit, gguf_info

    check_gpu_layers(gpu_layers, offload)
    info = gguf_info.read(path)
    chosen, _ = fit.plan_file(info, context(ctx, info.name, info.n_ctx_train), machine, offload, gpu_layers)
    return info, replace(chosen, n_threads=threads) if threads else chosen
