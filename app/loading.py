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
    """(GGUF info, Plan, the planner's Option) for one file on this machine; ModelTooBig
    before any loading."""
    from roost import fit, gguf_info

    check_gpu_layers(gpu_layers, offload)
    info = gguf_info.read(path)
    chosen, option = fit.plan_file(info, context(ctx, info.name, info.n_ctx_train), machine, offload, gpu_layers)
    return info, replace(chosen, n_threads=threads) if threads else chosen, option


def engine_for(requested: str | None, ref, machine) -> str:
    """The engine that runs a model reference here: the one asked for if it can, else
    MLX on Apple Silicon where the catalog has an MLX build that fits, else llama.cpp."""
    from roost import mlx_models

    folder = ref.path is not None and mlx_models.is_model_dir(ref.path)
    if requested == "llama":
        if folder:
            raise UsageError(f"{ref.text} is an MLX model folder; llama.cpp runs .gguf files (use --engine mlx)")
        return "llama"
    if requested == "mlx" or folder:
        why = mlx_models.unavailable()
        if why:
            raise UsageError(f"the MLX engine cannot run here: {why}")
        if ref.path is not None and not folder:
            raise UsageError(f"{ref.text} is not an MLX model: MLX runs model folders (config.json and "
                             ".safetensors), not .gguf files; use --engine llama for this one")
        if ref.model is not None and not ref.model.mlx:
            raise UsageError(f"{ref.model.name} has no MLX build in the catalog; use --engine llama")
        return "mlx"
    if (ref.model is not None and ref.model.mlx and machine.apple is not None and mlx_models.unavailable() is None
            and mlx_models.fits(ref.model, machine, DEFAULT_CTX)):
        return "mlx"
    return "llama"


def plan_mlx(path: str, machine, ctx: int | None = None):
    """(name, Plan, Option) for an MLX model folder; ModelTooBig before any loading. MLX
    places everything on the GPU of a Mac, and on the CPU elsewhere."""
    from roost import fit, mlx_models

    model = mlx_models.local(path)
    n_ctx = context(ctx, model.name, model.shape.n_ctx_train)
    chosen, option = fit.plan_quant(model.name, model.shape, model.quant, n_ctx, machine,
                                    use_gpu=machine.apple is not None)
    return model.name, chosen, option
