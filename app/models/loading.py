"""How a model file is loaded here: its context and its plan, checked to fit before
anything is loaded. The command line and the chat app load models the same way."""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Callable

from roost.errors import UsageError

if TYPE_CHECKING:
    from roost.backends.base import Plan
    from roost.machine.fit import Option

DEFAULT_CTX = 4096  # memory for the whole context is taken up front: not the model's maximum


# What to do with a model that is not here yet: fetch(text, what, pull) is given the
# reference as typed, what would be downloaded in words, and the download itself (pull(**kw),
# which returns the path), and returns the path or raises. The command line asks first at a
# terminal and shows progress; see cli.models.downloads.
Fetch = Callable[[str, str, Callable[..., str]], str]


@dataclass(frozen=True)
class Prepared:
    """A model ready to load: found (downloaded if need be), its engine chosen, and checked
    to fit, before anything is loaded."""

    path: str  # a .gguf file or an MLX model folder
    name: str
    plan: Plan  # how to load it: what backends.load takes
    engine: str  # "llama" or "mlx"
    option: Option  # the planner's view of it: memory, where it fits, the speed ceiling


def prepare(model: str, *, ctx: int | None = None, engine: str | None = None, gpu_layers: int | None = None,
            threads: int | None = None, machine=None, fetch: Fetch | None = None, kv_type: str | None = None,
            flash_attn: str | None = None) -> Prepared:
    """A model reference (anything MODEL takes) made ready to load: run, chat, serve, bench,
    eval and the chat app's model list all go through here. engine is the one asked for
    (None: chosen); machine is detected if not given; without fetch, a model that is not
    downloaded yet is an error. kv_type None: the planner's choice (fit.option);
    flash_attn None: "auto"."""
    from roost.machine import hardware
    from roost.models import catalog

    from roost.machine import fit

    ref = catalog.resolve(model)
    offload = can_offload()
    check_gpu_layers(gpu_layers, offload)  # before any download
    flash_attn = flash_attn or "auto"
    fit.flash_attention(flash_attn, kv_type or "f16", "CPU")  # --kv q8_0 --flash-attn off: refused before any download
    if machine is None:
        machine = hardware.detect(gpus=offload)
    chosen = engine_for(engine, ref, machine)
    if chosen == "mlx":
        path = mlx_folder(ref, machine, ctx, fetch)
        name, plan_, option = plan_mlx(path, machine, ctx, kv_type)
        return Prepared(path, name, plan_, chosen, option)
    path = model_file(ref, machine, ctx, fetch)
    info, plan_, option = plan(path, machine, offload, ctx, gpu_layers, threads, kv_type, flash_attn)
    return Prepared(path, info.name, plan_, chosen, option)


def model_file(ref, machine, ctx: int | None, fetch: Fetch | None) -> str:
    """A local GGUF for a model reference, fetched first if need be."""
    from roost import report
    from roost.models import library

    if ref.path:
        return ref.path
    if ref.repo:  # outside the catalog: what is downloaded needs no network to find
        have = library.find_downloaded(ref.text)
        if have:
            return max(have, key=lambda d: d.size).path
    choice = library.choose(ref, machine, ctx or DEFAULT_CTX)
    path = library.cached_path(choice.repo_id, choice.file)
    if path:
        return path
    return _fetch(fetch, ref.text, f"{choice.repo_id}/{choice.file.file} ({report.size(choice.file.size)})",
                  lambda **kw: library.pull(choice.repo_id, choice.file, **kw))


def mlx_folder(ref, machine, ctx: int | None, fetch: Fetch | None) -> str:
    """A local MLX model folder for a reference, fetched first if need be."""
    from roost.models import mlx_models

    if ref.path:
        return ref.path
    repo = ref.repo or mlx_models.pick(ref.model, machine, ctx or DEFAULT_CTX, ref.quant)[0]
    folder = mlx_models.cached_dir(repo)
    if folder:
        return folder
    return _fetch(fetch, ref.text, f"the MLX build {repo}", lambda **kw: mlx_models.pull(repo, **kw))


def _fetch(fetch: Fetch | None, text: str, what: str, pull: Callable[..., str]) -> str:
    if fetch is None:
        raise UsageError(f"{text} is not downloaded yet: run `roost pull {text}` first")
    return fetch(text, what, pull)


def context(requested: int | None, name: str, trained: int) -> int:
    """The context to plan and load: as asked, within what the model was trained on."""
    limit = trained or requested or DEFAULT_CTX
    if requested is None:
        return min(DEFAULT_CTX, limit)
    if requested > limit:
        raise UsageError(f"--ctx {requested} is more than {name} allows: at most {limit} tokens")
    return requested


def input_tokens(path: str, engine: str, text: str) -> int | None:
    """How many tokens text is to a model, before the model is loaded: from its vocabulary
    alone (llama.cpp's vocab_only: ~0.1 s, and ~0.02 s for 12,000 tokens) or an MLX
    folder's tokenizer.json. None where neither can be read (loading the model says why)."""
    import os

    if engine == "mlx":
        from tokenizers import Tokenizer

        tokenizer = os.path.join(path, "tokenizer.json")
        return len(Tokenizer.from_file(tokenizer).encode(text).ids) if os.path.isfile(tokenizer) else None
    import llama_cpp

    import roost.backends.llama_cpp  # noqa: F401  its log handler keeps llama.cpp's lines off the terminal

    try:
        vocab = llama_cpp.Llama(model_path=path, vocab_only=True, verbose=False)
    except (ValueError, RuntimeError):
        return None
    try:
        return len(vocab.tokenize(text.encode("utf-8"), add_bos=True, special=False))
    finally:
        vocab.close()


def input_context(prepared: Prepared, prompt: int, need: int, gpu_layers: int | None = None,
                  kv_type: str | None = None, flash_attn: str | None = None) -> int:
    """The context for a prompt of `prompt` tokens that needs `need` with its answer's, when
    no --ctx was given: as many (padded to llama.cpp's 256), up to what the model was
    trained on and the largest context that fits in memory here (fit.largest_context,
    with a q8_0 KV cache where the planner would take one by itself, kv_type None).
    A prompt that neither holds is refused before anything is loaded."""
    from roost.machine import fit, hardware
    from roost.models import gguf_info, mlx_models

    offload = can_offload()
    machine = hardware.detect(gpus=offload)
    if prepared.engine == "mlx":
        shape, use_gpu = mlx_models.local(prepared.path).shape, machine.apple is not None
    else:
        shape, use_gpu = fit.Shape.from_gguf(gguf_info.read(prepared.path)), offload and gpu_layers != 0
    if shape.n_ctx_train and prompt >= shape.n_ctx_train:
        raise UsageError(f"the input is about {prompt:,} tokens, and {prepared.name} was trained on up to "
                         f"{shape.n_ctx_train:,}: shorten it")
    wanted = -(-need // 256) * 256
    if shape.n_ctx_train:
        wanted = min(wanted, shape.n_ctx_train)
    flash_attn = flash_attn or "auto"
    fits = fit.largest_context(shape, prepared.option.quant, fit.budget(machine, use_gpu), wanted,
                               kv_type or ("f16" if flash_attn == "off" else "q8_0"), flash_attn)
    if fits <= prompt:
        raise UsageError(f"the input is about {prompt:,} tokens, and memory here holds a context of "
                         f"{fits:,} at most (--ctx {fits} fits here): shorten it")
    return fits


def can_offload() -> bool:
    """Whether this llama.cpp build can put layers on a GPU."""
    from roost.backends.llama_cpp import build_info

    return build_info()[0]


def check_gpu_layers(gpu_layers: int | None, offload: bool) -> None:
    if gpu_layers and not offload:
        raise UsageError("--gpu-layers needs a GPU build of llama-cpp-python, and this one is CPU only (see: roost doctor)")


def plan(path: str, machine, offload: bool, ctx: int | None = None, gpu_layers: int | None = None,
         threads: int | None = None, kv_type: str | None = None, flash_attn: str = "auto"):
    """(GGUF info, Plan, the planner's Option) for one file on this machine; ModelTooBig
    before any loading."""
    from roost.machine import fit
    from roost.models import gguf_info

    check_gpu_layers(gpu_layers, offload)
    info = gguf_info.read(path)
    chosen, option = fit.plan_file(info, context(ctx, info.name, info.n_ctx_train), machine, offload, gpu_layers,
                                   kv_type, flash_attn)
    return info, replace(chosen, n_threads=threads) if threads else chosen, option


# The engine for a catalog model on Apple Silicon, unless one is asked for: MLX when its
# best build that fits is about as good as llama.cpp's best GGUF that fits, else llama.cpp
# on Metal. Quality is judged as the fit planner judges quants, by bits per weight capped
# at fit.QUALITY_CAP_BPW, and "about as good" is either of:
#  - within MLX_SLACK_BPW: MLX's 4-bit (4.5 bits per weight with its group scales) against
#    a Q4_K_M (4.8-5.0) is a like-for-like pair, and MLX is the faster engine on Apple
#    Silicon; a 3-bit build against a Q8_0 that fits many times over is not;
#  - both at or above PLATEAU_BPW: from about 6 bits per weight on, quants sit beside the
#    original weights in llama.cpp's perplexity tables (Q6_K, Q8_0 next to F16), so a
#    6-bit build is as good as a Q8_0.
# A 4-bit build does not displace a Q6_K or Q8_0 that fits: 4 bits cost measurably, and the
# planner itself takes Q8_0 over Q4_K_M wherever both fit.
MLX_SLACK_BPW = 0.5
PLATEAU_BPW = 6.0


@dataclass(frozen=True)
class EngineChoice:
    """The engine a model runs on here, and why, in words for one line."""

    name: str  # "llama" or "mlx", as backends.load takes it
    label: str  # the engine as people read it: "MLX", "llama.cpp on Metal", "llama.cpp"
    why: str

    @property
    def line(self) -> str:
        return f"engine: {self.label} — {self.why}"

    def as_dict(self) -> dict:
        return {"engine": self.name, "label": self.label, "why": self.why}


def choose_engine(requested: str | None, ref, machine, n_ctx: int | None = None) -> EngineChoice:
    """The engine that runs a model reference here: the one asked for (--engine, or a
    quant only one engine runs: NAME:Q8_0 is a GGUF, NAME:4bit an MLX build) if it can;
    else, on Apple Silicon, MLX where its best fitting build is about as good as the best
    fitting GGUF (see MLX_SLACK_BPW); else llama.cpp."""
    from roost.models import catalog, mlx_models

    n_ctx = n_ctx or DEFAULT_CTX
    model = ref.model
    folder = ref.path is not None and mlx_models.is_model_dir(ref.path)
    mlx_quant = bool(model is not None and ref.quant and model.mlx and catalog.MLX_BITS.fullmatch(ref.quant))
    gguf_quant = bool(ref.quant) and not mlx_quant
    # Under Rosetta the Mac's GPU is out of reach: llama.cpp is an x86_64 CPU build there.
    metal = machine.apple is not None and not getattr(machine, "rosetta", False)
    llama = "llama.cpp on Metal" if metal else "llama.cpp"
    if requested == "llama":
        if folder:
            raise UsageError(f"{ref.text} is an MLX model folder; llama.cpp runs .gguf files (use --engine mlx)")
        if mlx_quant:
            raise UsageError(f"{ref.quant} names an MLX build of {model.name}; llama.cpp runs its GGUF quants "
                             f"({', '.join(g.quant for g in model.gguf)}): name one of those, or drop --engine llama")
        return EngineChoice("llama", llama, "as asked (--engine llama)")
    if requested == "mlx" or folder or mlx_quant:
        why = mlx_models.unavailable(machine)
        if why and mlx_quant and requested is None:
            raise UsageError(f"{ref.quant} names an MLX build, and the MLX engine cannot run here: {why}; for "
                             f"llama.cpp name a GGUF quant ({', '.join(g.quant for g in model.gguf)}) or none")
        if why:
            raise UsageError(f"the MLX engine cannot run here: {why}")
        if ref.path is not None and not folder:
            raise UsageError(f"{ref.text} is not an MLX model: MLX runs model folders (config.json and "
                             ".safetensors), not .gguf files; use --engine llama for this one")
        if model is not None and not model.mlx:
            raise UsageError(f"{model.name} has no MLX build in the catalog; use --engine llama")
        if model is not None and gguf_quant:
            raise UsageError(f"{ref.quant} is a GGUF quant, which llama.cpp runs (drop --engine mlx); "
                             f"{model.name}'s MLX builds: {', '.join(f'{model.name}:{b}bit' for b in model.mlx)}")
        said = ("as asked (--engine mlx)" if requested == "mlx" else
                "an MLX model folder" if folder else f"{ref.quant} names an MLX build")
        return EngineChoice("mlx", "MLX", said)
    if ref.path is not None:
        return EngineChoice("llama", llama, "a .gguf file")
    if model is None:
        return EngineChoice("llama", llama, f"{ref.repo} is a Hub repo of GGUF files")
    if gguf_quant:
        return EngineChoice("llama", llama, f"{ref.quant} is a GGUF quant")
    if model.gguf_repo and ref.text.partition(":")[0].lower() == model.gguf_repo.lower():
        return EngineChoice("llama", llama, f"{model.gguf_repo} is a repo of GGUF files")
    if machine.apple is None:
        return EngineChoice("llama", llama, "MLX is picked on Apple Silicon only")
    if not model.mlx:
        return EngineChoice("llama", llama, f"{model.name} has no MLX build in the catalog")
    why = mlx_models.unavailable(machine)
    if why:
        return EngineChoice("llama", llama, f"MLX cannot run here: {why}")
    return _mlx_or_gguf(model, machine, n_ctx, llama)


def _mlx_or_gguf(model, machine, n_ctx: int, llama: str) -> EngineChoice:
    from roost.machine import fit
    from roost.models import mlx_models

    built = mlx_models.best(mlx_models.rank(model, machine, n_ctx))
    gguf = fit.rank(model.shape(), model.quants(), min(n_ctx, model.context), machine).pick
    if built is None:
        return EngineChoice("llama", llama, f"no MLX build of {model.name} fits here at {n_ctx} tokens of context"
                            + (f"; {gguf.quant.name} does" if gguf else ""))
    mlx_bpw = min(built.bits_per_weight, fit.QUALITY_CAP_BPW)
    if gguf is None:
        return EngineChoice("mlx", "MLX", f"its {built.quant.name} build ({mlx_bpw:.1f} bits per weight) fits here "
                            "and no GGUF quant does")
    gguf_bpw = min(gguf.bits_per_weight, fit.QUALITY_CAP_BPW)
    if mlx_bpw >= gguf_bpw - MLX_SLACK_BPW or min(mlx_bpw, gguf_bpw) >= PLATEAU_BPW:
        return EngineChoice("mlx", "MLX", f"its {built.quant.name} build ({mlx_bpw:.1f} bits per weight) is about as "
                            f"good as llama.cpp's best fit here, {gguf.quant.name} ({gguf_bpw:.1f}), and MLX is the "
                            "faster engine on Apple Silicon")
    return EngineChoice("llama", llama, f"{gguf.quant.name} ({gguf_bpw:.1f} bits per weight) fits here, and the best "
                        f"MLX build that does, {built.quant.name}, has only {mlx_bpw:.1f}")


def engine_for(requested: str | None, ref, machine, n_ctx: int | None = None) -> str:
    """The name of the engine choose_engine picks."""
    return choose_engine(requested, ref, machine, n_ctx).name


def plan_mlx(path: str, machine, ctx: int | None = None, kv_type: str | None = None):
    """(name, Plan, Option) for an MLX model folder; ModelTooBig before any loading. MLX
    places everything on the GPU of a Mac, and on the CPU elsewhere; its quantized KV
    cache (kv_bits) is planned as llama.cpp's q8_0 and q4_0, the same bytes an element."""
    from roost.machine import fit
    from roost.models import mlx_models

    model = mlx_models.local(path)
    n_ctx = context(ctx, model.name, model.shape.n_ctx_train)
    chosen, option = fit.plan_quant(model.name, model.shape, model.quant, n_ctx, machine,
                                    use_gpu=machine.apple is not None, kv_type=kv_type)
    return model.name, chosen, option
