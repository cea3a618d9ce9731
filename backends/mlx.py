"""MLX through mlx-lm: `generate_step` as the model's side of roost's token loop.

mlx-lm's `generate_step` prefills and samples; the loop around it is roost's own
(backends/streaming.py), the one llama.cpp's runs in, in place of mlx-lm's
`stream_generate`: limits, stops, cancel, the clock, and text from the tokenizer's own
streaming detokenizer. The prompt is rendered by roost.backends.chat_template (sandboxed)
exactly as for llama.cpp, and one prompt cache lives across turns, cut back to the prefix
the next prompt shares.
Hybrid and recurrent models (Qwen3-Next, LFM2, Nemotron-H, Mamba) keep a state that
cannot be cut back: theirs is reused only by a prompt that extends all it has taken in.
"""

from __future__ import annotations

import json
import os
import sys
from typing import Generator, Iterator, Sequence

import mlx.core as mx
import numpy as np
from mlx.utils import tree_flatten
from mlx_lm.generate import generate_step, generation_stream, wired_limit
from mlx_lm.models.cache import can_trim_prompt_cache, make_prompt_cache, trim_prompt_cache
from mlx_lm.sample_utils import make_logits_processors, make_sampler
from mlx_lm.utils import load as load_model

from roost.backends import memory
from roost.backends.base import Cancel, EngineInfo, Event, MemoryReading, Params, Plan
from roost.backends.streaming import ChatPrompt, TokenLoop, reusable_prefix
from roost.errors import ModelFileError, ModelTooBig

# What MLX says when memory runs out (mlx/backend/metal/allocator.cpp and device.cpp, and
# its CUDA allocator): a RuntimeError like a damaged file's, told apart only by its text.
# Metal's "Insufficient Memory" is translated on other macOS languages; its code name is not.
OUT_OF_MEMORY = ("[malloc] Unable to allocate", "maximum allowed buffer size", "Insufficient Memory", "OutOfMemory")


class _Cancelled(Exception):
    """Raised from mlx-lm's prefill progress hook: the only way into its prefill loop."""


def check_model_dir(path: str) -> None:
    """An MLX model is a directory with config.json and safetensors weights."""
    if not os.path.isdir(path):
        raise ModelFileError(f"{path} is not an MLX model directory (MLX models are folders with config.json and *.safetensors)")
    if not os.path.isfile(os.path.join(path, "config.json")):
        raise ModelFileError(f"{path} has no config.json: not an MLX model directory")
    if not any(name.endswith(".safetensors") for name in os.listdir(path)):
        raise ModelFileError(f"{path} has no .safetensors weights: download it again")


def too_big(e: RuntimeError, doing: str, fix: str) -> ModelTooBig | None:
    """The one line for MLX running out of memory, or None for any other error."""
    text = str(e).strip().rstrip(".")
    if not any(marker in text for marker in OUT_OF_MEMORY):
        return None
    return ModelTooBig(f"MLX ran out of memory {doing}: use {fix} ({text})")


def _taken_in(cache) -> int | None:
    """How many tokens the cache has taken in, as its attention layers count them; None
    for a model of recurrent layers alone, whose state keeps no count."""
    for entry in cache:
        for layer in getattr(entry, "caches", (entry,)):  # a CacheList holds several per layer
            if isinstance(getattr(layer, "offset", None), int):
                return layer.offset
    return None


class _Segments:
    """mlx-lm's streaming detokenizer (the one the model's tokenizer calls for: SPM, BPE or
    naive) as the token loop's Detokenizer."""

    def __init__(self, detokenizer):
        self._detokenizer = detokenizer

    def add(self, token: int) -> str:
        self._detokenizer.add_token(token)
        return self._detokenizer.last_segment

    def finish(self) -> str:
        self._detokenizer.finalize()
        return self._detokenizer.last_segment


def device() -> str:
    if mx.default_device().type != mx.gpu:
        return "CPU"
    return "Metal" if sys.platform == "darwin" else "CUDA"


class MlxEngine(TokenLoop):
    name = "mlx"

    def __init__(self, model_path: str, plan: Plan = Plan()):
        check_model_dir(model_path)
        self.model_path = model_path
        self.plan = plan
        try:
            self._model, self._tokenizer = load_model(model_path)
        except RuntimeError as e:  # out of memory, or MLX's own reader: a short or damaged .safetensors
            if (oom := too_big(e, f"loading {model_path}", "a smaller quant")) is not None:
                raise oom from None
            detail = str(e).split("] ", 1)[-1].split(". Perhaps", 1)[0]
            raise ModelFileError(f"{model_path} is truncated or corrupt ({detail}); download it again") from None
        except (ValueError, OSError, KeyError) as e:
            raise ModelFileError(f"mlx-lm could not load {model_path}: {e}") from None
        with open(os.path.join(model_path, "config.json")) as f:
            config = json.load(f)
        self._n_ctx_train = config.get("max_position_embeddings")
        tok = self._tokenizer
        self._prompt = ChatPrompt(
            tok.chat_template,
            lambda text: tok.encode(text, add_special_tokens=False),
            tok.bos_token_id,
            tok.bos_token or "",
            tok.eos_token or "",
            # Whether the tokenizer itself would begin a text with BOS.
            tok.bos_token_id is not None and tok.encode("", add_special_tokens=True)[:1] == [tok.bos_token_id],
            config.get("model_type"),
        )
        self._n_ctx = plan.n_ctx
        self._model_bytes = sum(v.nbytes for _, v in tree_flatten(self._model.parameters()))
        self._cache = make_prompt_cache(self._model)
        self._held: list[int] = []  # the tokens the cache has taken in

    # -- generation -----------------------------------------------------------

    def _generate(self, tokenize, params: Params, cancel: Cancel | None) -> Iterator[Event]:
        try:
            yield from super()._generate(tokenize, params, cancel)
        except RuntimeError as e:
            # A step that failed leaves the cache half-written: the next answer starts afresh.
            self._cache, self._held = make_prompt_cache(self._model), []
            if (oom := too_big(e, "while answering", "a smaller --ctx or a smaller quant")) is None:
                raise
            raise oom from None

    def _steps(self, prompt: list[int], cached: int, params: Params,
               cancel: Cancel) -> Generator[tuple[int, mx.array], list[int], None]:
        if params.seed is not None:
            mx.random.seed(params.seed)
        prefilled = 0  # tokens of prompt[cached:] run so far, for a cache that keeps no count

        def hook(processed: int, total: int) -> None:
            nonlocal prefilled
            prefilled = processed
            if processed < total and cancel.is_set():
                raise _Cancelled

        def segment(tokens: list[int], progress):
            return generate_step(
                mx.array(tokens), self._model,
                max_tokens=-1,  # the loop stops asking
                sampler=make_sampler(params.temperature, params.top_p, params.min_p, top_k=params.top_k),
                logits_processors=(make_logits_processors(repetition_penalty=params.repeat_penalty)
                                   if params.repeat_penalty != 1.0 else None),
                prompt_cache=self._cache,
                prefill_step_size=self.plan.n_batch,
                prompt_progress_callback=progress,
            )

        generated: list[int] = []  # after the prompt: sampled and forced tokens, in order
        steps = segment(prompt[cached:], hook)
        try:
            with wired_limit(self._model, [generation_stream]):
                while True:
                    for token, logprobs in steps:
                        generated.append(token)
                        forced = yield token, logprobs
                        if forced:
                            break
                    else:
                        return
                    # generate_step takes no tokens from outside: the forced ones start a
                    # new one on the same cache, which holds every token yielded so far.
                    steps.close()
                    generated.extend(forced)
                    steps = segment(forced, None)
        except _Cancelled:
            return
        finally:
            steps.close()
            taken = _taken_in(self._cache)
            if taken is None:  # generate_step runs each token through the model before it yields it
                taken = cached + prefilled + len(generated)
            self._held = (prompt + generated)[:taken]

    def _ends_turn(self, token: int) -> bool:
        return token in self._tokenizer.eos_token_ids

    def _detokenizer(self, special: bool) -> "_Segments":
        # mlx-lm's detokenizers write special tokens out always.
        return _Segments(self._tokenizer.detokenizer)

    def _reuse_prefix(self, prompt: list[int]) -> int:
        """Cut the cache back to the prefix this prompt shares with what it holds."""
        shared = reusable_prefix(self._held, prompt)
        extra = len(self._held) - shared
        if extra > 0:
            if can_trim_prompt_cache(self._cache):
                trim_prompt_cache(self._cache, extra)
            else:  # sliding-window and recurrent caches cannot drop a suffix: only extending them works
                self._cache, shared = make_prompt_cache(self._model), 0
        self._held = self._held[:shared]
        return shared

    # -- scoring --------------------------------------------------------------

    def logits(self, tokens: Sequence[int]) -> np.ndarray:
        """Raw next-token logits at every position of tokens, in a cache of their own."""
        cache = make_prompt_cache(self._model)
        rows = []
        for i in range(0, len(tokens), self.plan.n_batch):
            out = self._model(mx.array(list(tokens[i : i + self.plan.n_batch]))[None], cache=cache)
            rows.append(np.array(out[0].astype(mx.float32)))
        return np.concatenate(rows)

    # -- readings -------------------------------------------------------------

    def memory(self) -> MemoryReading:
        active, held = mx.get_active_memory(), mx.get_cache_memory()
        kv = sum(c.nbytes for c in self._cache)
        return MemoryReading(
            rss_bytes=memory.rss_bytes(),
            peak_rss_bytes=memory.peak_rss_bytes(),
            device_used_bytes=active + held if device() != "CPU" else None,
            # Summed, these are MLX's active memory plus the freed buffers it keeps for reuse.
            buffers={"model": self._model_bytes, "kv": kv,
                     "other": max(0, active - self._model_bytes - kv), "cache": held},
            engine_peak_bytes=mx.get_peak_memory(),
        )

    def info(self) -> EngineInfo:
        from importlib.metadata import version

        where = device()
        return EngineInfo(
            engine=self.name,
            version=version("mlx-lm"),
            device=where,
            gpu_offload=where != "CPU",
            model=self.model_path,
            n_ctx=self.plan.n_ctx,
            n_ctx_train=self._n_ctx_train,
            n_gpu_layers=-1 if where != "CPU" else 0,
            chat_template=self._prompt.origin,
            reasoning=self._prompt.reasoning(),
            build=f"mlx {mx.__version__} on {mx.default_device()}",
        )

    def close(self) -> None:
        self._model = self._tokenizer = self._cache = None
        self._held = []
        mx.clear_cache()
