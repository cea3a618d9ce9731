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
from typing import Callable, Generator, Iterator, Sequence

import mlx.core as mx
import numpy as np
from mlx.utils import tree_flatten
from mlx_lm.generate import generate_step, generation_stream, maybe_quantize_kv_cache, wired_limit
from mlx_lm.models.cache import can_trim_prompt_cache, make_prompt_cache, trim_prompt_cache
from mlx_lm.sample_utils import make_logits_processors, make_sampler
from mlx_lm.utils import load as load_model

from roost.backends import memory
from roost.backends.base import Cancel, EngineInfo, Event, MemoryReading, Params, Plan
from roost.backends.streaming import ChatPrompt, Read, TokenLoop, ranked, reusable_prefix
from roost.errors import ModelFileError, ModelTooBig, UsageError

# What MLX says when memory runs out (mlx/backend/metal/allocator.cpp and device.cpp, and
# its CUDA allocator): a RuntimeError like a damaged file's, told apart only by its text.
# Metal's "Insufficient Memory" is translated on other macOS languages; its code name is not.
# mlx-lm's quantized KV cache for roost's --kv: groups of 64 with an f16 scale and bias each,
# 8.5 and 4.5 bits an element, the bytes of llama.cpp's q8_0 and q4_0 (as fit.py plans them).
KV_BITS = {"q8_0": 8, "q4_0": 4}
KV_GROUP_SIZE = 64
PENALTY_LAST_N = 64  # llama-cpp-python's last_n_tokens_size, the window of llama.cpp's penalties

OUT_OF_MEMORY = ("[malloc] Unable to allocate", "maximum allowed buffer size", "Insufficient Memory", "OutOfMemory")


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
        self._ll_tokenizer = None  # llguidance's view of the tokenizer, made for the first grammar
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
        self._kv_bits = KV_BITS.get(plan.kv_type)  # None: f16, mlx-lm's own cache
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

    def _steps(self, prompt: list[int], cached: int, params: Params, cancel: Cancel,
               grammar: str | None = None) -> Generator[tuple[int, tuple | None] | Read, list[int], None]:
        if params.seed is not None:
            mx.random.seed(params.seed)
        held = [] if grammar is None else [self._grammar_processor(grammar)]

        def segment(tokens: list[int]):
            return generate_step(
                mx.array(tokens), self._model,
                max_tokens=-1,  # the loop stops asking
                sampler=make_sampler(params.temperature, params.top_p, params.min_p, top_k=params.top_k),
                # Presence and frequency over the last 64 tokens, as llama.cpp's sampler
                # counts them (mlx-lm's window holds the prompt's end too).
                logits_processors=make_logits_processors(
                    repetition_penalty=params.repeat_penalty if params.repeat_penalty != 1.0 else None,
                    presence_penalty=params.presence_penalty, presence_context_size=PENALTY_LAST_N,
                    frequency_penalty=params.frequency_penalty, frequency_context_size=PENALTY_LAST_N) + held or None,
                prompt_cache=self._cache,
                prefill_step_size=self.plan.n_batch,
                kv_bits=self._kv_bits, kv_group_size=KV_GROUP_SIZE, quantized_kv_start=0,
            )

        # mlx-lm tells its prefill's progress to a callback, from inside which a generator
        # cannot yield: the prompt up to its last chunk is run here, a Read after each chunk,
        # and generate_step reads the last (whole, so that a repetition penalty sees it).
        last = max(cached, len(prompt) - self.plan.n_batch)
        read = cached  # how much of the prompt the cache holds, for a cache that keeps no count
        generated: list[int] = []  # after the prompt: sampled and forced tokens, in order
        steps = segment(prompt[last:])
        try:
            with wired_limit(self._model, [generation_stream]):
                # Quantized from the first token (as generate_step has it with start 0), so
                # that the prefill below writes into the cache the planner planned.
                maybe_quantize_kv_cache(self._cache, 0, KV_GROUP_SIZE, self._kv_bits)
                while read < last:
                    if cancel.is_set():
                        return
                    chunk = prompt[read : min(read + self.plan.n_batch, last)]
                    with mx.stream(generation_stream):
                        self._model(mx.array(chunk)[None], cache=self._cache)
                        mx.eval([c.state for c in self._cache])
                    mx.clear_cache()
                    read += len(chunk)
                    yield Read(read)
                while True:
                    for token, logprobs in steps:
                        generated.append(token)
                        # generate_step's are the model's own (after the penalties and a grammar, where asked,
                        # before temperature), over the whole vocabulary.
                        forced = yield token, (None if params.logprobs is None else
                                               ranked(np.array(logprobs.astype(mx.float32)), token, params.logprobs))
                        if forced:
                            break
                    else:
                        return
                    # generate_step takes no tokens from outside: the forced ones start a
                    # new one on the same cache, which holds every token yielded so far.
                    steps.close()
                    generated.extend(forced)
                    steps = segment(forced)
        finally:
            steps.close()
            taken = _taken_in(self._cache)
            if taken is None:  # generate_step runs each token through the model before it yields it
                taken = (len(prompt) if generated else read) + len(generated)
            self._held = (prompt + generated)[:taken]

    def _ends_turn(self, token: int) -> bool:
        return token in self._tokenizer.eos_token_ids

    def _detokenizer(self, special: bool) -> "_Segments":
        # mlx-lm's detokenizers write special tokens out always.
        return _Segments(self._tokenizer.detokenizer)

    def _grammar_processor(self, gbnf: str) -> Callable[[mx.array, mx.array], mx.array]:
        """A logits processor that leaves only the tokens the grammar allows next: llguidance's
        matcher (it reads llama.cpp's GBNF, so both engines run the one grammar), fed each
        token sampled. An end of turn is among them once the grammar's root is whole. It runs
        last, after the penalties, as llama.cpp's grammar sampler comes before sampling."""
        import llguidance
        import llguidance.hf
        import llguidance.numpy

        if self._ll_tokenizer is None:  # about a second: once per model
            self._ll_tokenizer = llguidance.hf.from_tokenizer(
                self._tokenizer._tokenizer, eos_token=sorted(self._tokenizer.eos_token_ids))
        matcher = llguidance.LLMatcher(self._ll_tokenizer, llguidance.grammar_from("gbnf", gbnf))
        if matcher.is_error():
            raise UsageError(f"the grammar cannot be run on MLX: {matcher.get_error()}")
        mask = llguidance.numpy.allocate_token_bitmask(1, self._ll_tokenizer.vocab_size)
        first = True

        def allowed_only(tokens: mx.array, logits: mx.array) -> mx.array:
            nonlocal first
            if not first:  # generate_step's tokens end with the one it sampled last
                matcher.consume_token(int(tokens[-1].item()))
            first = False
            llguidance.numpy.fill_next_token_bitmask(matcher, mask)
            bits = np.unpackbits(mask.view(np.uint8), bitorder="little").astype(bool)
            allowed = np.zeros(logits.shape[-1], dtype=bool)  # the model's rows past the vocabulary: never
            n = min(len(bits), len(allowed))
            allowed[:n] = bits[:n]
            return mx.where(mx.array(allowed), logits, -mx.inf)

        return allowed_only

    def _token_bytes(self, token: int) -> bytes:
        # A token that is part of a character decodes to U+FFFD: the tokenizer gives no bytes.
        return self._tokenizer.decode([token]).encode()

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
        maybe_quantize_kv_cache(cache, 0, KV_GROUP_SIZE, self._kv_bits)  # scored as answers are made
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
            kv_type=self.plan.kv_type,
            build=f"mlx {mx.__version__} on {mx.default_device()}",
        )

    def close(self) -> None:
        self._model = self._tokenizer = self._cache = None
        self._held = []
        mx.clear_cache()
