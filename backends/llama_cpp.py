"""llama.cpp through llama-cpp-python: a thin adapter from `Llama` to roost's Engine.

Only loading, the model's side of the token loop and the readings live here. The prompt
is rendered by roost.backends.chat_template (sandboxed), and the loop is roost's own
(backends/streaming.py) rather than `Llama.create_chat_completion`, so that timing is
taken at each token, a cancel is seen between prefill batches and between tokens, and the
KV cache is reused for exactly the prefix this turn shares with what was evaluated before.
"""

from __future__ import annotations

import ctypes
import re
import threading
from collections import deque
from contextlib import contextmanager
from typing import Generator, Sequence

import llama_cpp
import numpy as np
from llama_cpp.llama_grammar import LlamaGrammar

from roost.backends import memory
from roost.machine import engine_build, fit, hardware
from roost.models import gguf_info
from roost.backends.base import Cancel, EngineInfo, MemoryReading, Params, Plan
from roost.backends.streaming import ChatPrompt, Read, TokenLoop, Utf8Pieces, check_fits, ranked, reusable_prefix
from roost.errors import ModelFileError


# enum ggml_log_level (ggml.h); llama-cpp-python does not export it.
_LEVEL_DEBUG, _LEVEL_INFO, _LEVEL_WARN, _LEVEL_ERROR, _LEVEL_CONT = 1, 2, 3, 4, 5


class _Log:
    """llama.cpp's log, kept instead of printed: the errors explain failed loads, and
    the buffer-size lines are the engine's own account of the memory it allocated."""

    def __init__(self) -> None:
        self.lines: deque[tuple[int, str]] = deque(maxlen=1000)
        self._partial = ""
        self._level = _LEVEL_INFO
        self._callback = llama_cpp.llama_log_callback(self._receive)  # kept alive here
        llama_cpp.llama_log_set(self._callback, ctypes.c_void_p(0))

    def _receive(self, level: int, text: bytes, _user_data) -> None:
        if level != _LEVEL_CONT:
            self._level = level
        if self._level == _LEVEL_DEBUG:
            return  # per-tensor chatter, thousands of lines a load
        self._partial += text.decode("utf-8", errors="replace")
        *complete, self._partial = self._partial.split("\n")
        self.lines.extend((self._level, line) for line in complete if line.strip())

    def clear(self) -> None:
        self.lines.clear()

    def errors(self) -> list[str]:
        return [line for level, line in self.lines if level == _LEVEL_ERROR]

    def text(self) -> str:
        return "\n".join(line for _, line in self.lines)


_LOG = _Log()

# "load_tensors:   CPU_Mapped model buffer size =    98.03 MiB"
# "llama_kv_cache:        CPU KV buffer size =    48.00 MiB"
# "llama_context:        CPU compute buffer size =    66.50 MiB"
_BUFFER = re.compile(r"\b(\S+)\s+(model|KV|compute|output|RS) buffer size\s*=\s*([\d.]+) MiB")


def parse_buffers(log_text: str) -> tuple[dict[str, int], int]:
    """llama.cpp's reported buffers: bytes by kind ({"model": …, "kv": …, "compute": …})
    and the bytes of those that sit on a device other than the CPU."""
    by_kind: dict[str, int] = {}
    on_device = 0
    for device, kind, mib in _BUFFER.findall(log_text):
        size = int(float(mib) * 1024 * 1024)
        by_kind[kind.lower()] = by_kind.get(kind.lower(), 0) + size
        if not device.upper().startswith("CPU"):
            on_device += size
    return by_kind, on_device


def build_info() -> tuple[bool, str, str]:
    """(can offload to a GPU, device name, llama.cpp's system info line)."""
    system = llama_cpp.llama_print_system_info().decode("utf-8", errors="replace").strip()
    offload = bool(llama_cpp.llama_supports_gpu_offload())
    return offload, engine_build.device_of(system), system


def amx_crash(system_info: str) -> str | None:
    """The upstream issue when this build's AMX path crashes on this CPU, else None."""
    if "AMX_INT8 = 1" not in system_info:  # built without AMX: nothing to avoid
        return None
    return engine_build.amx_crash(hardware.default_probe().cpu().get("flags", ()), llama_cpp.__version__)


# The KV cache's types as llama.cpp names them (K and V alike).
KV_GGML_TYPES = {"f16": llama_cpp.GGML_TYPE_F16, "q8_0": llama_cpp.GGML_TYPE_Q8_0, "q4_0": llama_cpp.GGML_TYPE_Q4_0}

_PARAMS_LOCK = threading.Lock()


@contextmanager
def _model_params(**wanted):
    """Llama() has no argument for some of llama.cpp's model parameters (use_extra_bufts):
    while it loads, the defaults it starts from carry them. Values equal to llama.cpp's
    own defaults change nothing."""
    real = llama_cpp.llama_cpp.llama_model_default_params
    defaults = real()
    if all(getattr(defaults, name) == value for name, value in wanted.items()):
        yield
        return

    def with_wanted():
        params = real()
        for name, value in wanted.items():
            setattr(params, name, value)
        return params

    with _PARAMS_LOCK:  # one load at a time sees the patched defaults
        llama_cpp.llama_cpp.llama_model_default_params = with_wanted
        try:
            yield
        finally:
            llama_cpp.llama_cpp.llama_model_default_params = real


class LlamaCppEngine(TokenLoop):
    name = "llama.cpp"

    def __init__(self, model_path: str, plan: Plan = Plan()):
        gguf_info.check_file(model_path)
        self.model_path = model_path
        self.plan = plan
        _LOG.clear()
        self._offload, self._device, self._system = build_info()
        self._amx_crash = amx_crash(self._system)
        # llama-cpp-python takes flash attention as on or off only: "auto" is resolved here,
        # to roost's default for the device the layers run on.
        self._flash_attn = fit.flash_attention(plan.flash_attn, plan.kv_type,
                                               self._device if self._offload and plan.n_gpu_layers != 0 else "CPU")
        try:
            # Off, llama.cpp's extra buffer types take its AMX path with them (and CPU
            # weight repacking, a few percent: bench/cpu_repack.py).
            with _model_params(use_extra_bufts=not self._amx_crash):
                self._llm = llama_cpp.Llama(
                    model_path=model_path,
                    n_ctx=plan.n_ctx,
                    n_batch=plan.n_batch,
                    n_gpu_layers=plan.n_gpu_layers,
                    n_threads=plan.n_threads or hardware.default_threads(),
                    flash_attn=self._flash_attn,
                    type_k=KV_GGML_TYPES[plan.kv_type],
                    type_v=KV_GGML_TYPES[plan.kv_type],
                    # Sliding-window layers get the window and a batch, not n_ctx cells:
                    # _reuse_prefix re-reads a chat whose kept prefix lost its window.
                    swa_full=False,
                    verbose=False,
                )
        except (ValueError, RuntimeError) as e:
            raise ModelFileError(self._load_failure(e)) from None
        self._buffers, self._device_bytes = parse_buffers(_LOG.text())
        model = self._llm._model
        self._vocab = model.vocab
        bos_id, eos_id = model.token_bos(), model.token_eos()
        self._prompt = ChatPrompt(
            self._llm.metadata.get("tokenizer.chat_template"),
            lambda text: self._llm.tokenize(text.encode("utf-8"), add_bos=False, special=True),
            bos_id if bos_id != -1 else None,
            model.token_get_text(bos_id) if bos_id != -1 else "",
            model.token_get_text(eos_id) if eos_id != -1 else "",
            model.add_bos_token(),
            self._llm.metadata.get("general.architecture"),
            self._llm.metadata.get("tokenizer.ggml.pre"),
        )
        self._n_ctx_train = model.n_ctx_train()
        self._n_swa = llama_cpp.llama_model_n_swa(model.model)  # 0: no sliding-window layers
        # llama.cpp pads the context to a multiple of 256, but Llama's token arrays hold
        # only what was asked for: that is the usable window.
        self._n_ctx = min(self._llm.n_ctx(), plan.n_ctx)

    def _load_failure(self, error: Exception) -> str:
        reasons = [line.split(": ", 1)[-1] for line in _LOG.errors() if "failed to load model" not in line]
        detail = reasons[0].removeprefix("error loading model: ") if reasons else str(error)
        if "not within the file bounds" in detail or "failed to read" in detail:
            detail = detail.removesuffix(", model is corrupted or incomplete")
            return f"{self.model_path} is truncated or corrupt ({detail}); download it again"
        return f"llama.cpp could not load {self.model_path}: {detail}"

    # -- generation -----------------------------------------------------------

    def _steps(self, prompt: list[int], cached: int, params: Params, cancel: Cancel,
               grammar: str | None = None) -> Generator[tuple[int, tuple | None] | Read, list[int], None]:
        llm = self._llm
        for i in range(cached, len(prompt), self.plan.n_batch):
            if i > cached:
                yield Read(i)
            if cancel.is_set():
                return
            llm.eval(prompt[i : i + self.plan.n_batch])
        llm.set_seed(llama_cpp.LLAMA_DEFAULT_SEED if params.seed is None else params.seed)
        sampler = llm._init_sampler(
            top_k=params.top_k,
            top_p=params.top_p,
            min_p=params.min_p,
            temp=params.temperature,
            repeat_penalty=params.repeat_penalty,
            presence_penalty=params.presence_penalty,
            frequency_penalty=params.frequency_penalty,
            # Applied before top-k and the rest, so they choose among the tokens it allows; an
            # end of turn is allowed only once the grammar's root is whole. Nothing is forced
            # under a grammar (its thought is closed in the prompt), so it sees every token.
            grammar=None if grammar is None else LlamaGrammar.from_string(grammar),
        )
        n_vocab = llm.n_vocab()
        while True:
            token = sampler.sample(llm._ctx, -1)
            logprobs = None
            if params.logprobs is not None:
                # The sampler keeps none: they come from the logits it sampled from, which
                # stay in llm._ctx until the next eval.
                logits = np.ctypeslib.as_array(llm._ctx.get_logits_ith(-1), shape=(n_vocab,))
                logprobs = ranked(logits, token, params.logprobs)
            forced = yield token, logprobs
            # Evaluated only when another token is wanted, so the KV cache always holds
            # exactly the tokens of input_ids[:n_tokens].
            llm.eval([token, *(forced or ())])

    def _ends_turn(self, token: int) -> bool:
        return llama_cpp.llama_vocab_is_eog(self._vocab, token)

    def _detokenizer(self, special: bool) -> Utf8Pieces:
        llm = self._llm
        return Utf8Pieces(lambda token: llm.detokenize([token], special=special))

    def _token_bytes(self, token: int) -> bytes:
        return self._llm.detokenize([token], special=True)

    def _reuse_prefix(self, prompt: list[int]) -> int:
        """Keep the KV cache for the longest prefix shared with what is evaluated now."""
        llm = self._llm
        shared = reusable_prefix(llm.input_ids[: llm.n_tokens].tolist(), prompt)
        if shared > 0 and self._window_held(shared) and llm._ctx.kv_cache_seq_rm(-1, shared, -1):
            llm.n_tokens = shared
            return shared
        llm.reset()  # recurrent models cannot drop a suffix of their state
        return 0

    def _window_held(self, shared: int) -> bool:
        """Whether the sliding-window layers still hold the window the token after the
        kept prefix attends to. Their cache keeps only the window and a batch, overwriting
        older positions: a prefix that ends further back than that has lost part of its
        window (llama-server's test, in its slot's prompt reuse). Asked before the suffix
        is dropped, which may leave those layers empty."""
        oldest = llama_cpp.llama_memory_seq_pos_min(llama_cpp.llama_get_memory(self._llm._ctx.ctx), 0)
        return oldest <= max(0, shared - self._n_swa)

    # -- scoring --------------------------------------------------------------

    def logits(self, tokens: Sequence[int]) -> np.ndarray:
        """Raw next-token logits at every position of tokens, evaluated from an empty
        cache (what the chat held is given up): for perplexity and comparing quants."""
        llm = self._llm
        check_fits(list(tokens), self._n_ctx + 1, self._n_ctx_train)  # all n_ctx positions may be used
        llm._ctx.kv_cache_clear()
        llm.n_tokens = 0
        n_vocab = llm.n_vocab()
        out = np.empty((len(tokens), n_vocab), dtype=np.float32)
        for i in range(0, len(tokens), self.plan.n_batch):
            part = list(tokens[i : i + self.plan.n_batch])
            llm._batch.set_batch(part, n_past=i, logits_all=True)
            llm._ctx.decode(llm._batch)
            out[i : i + len(part)] = np.ctypeslib.as_array(llm._ctx.get_logits(), shape=(len(part), n_vocab))
        llm._ctx.kv_cache_clear()
        return out

    # -- readings -------------------------------------------------------------

    def memory(self) -> MemoryReading:
        return MemoryReading(
            rss_bytes=memory.rss_bytes(),
            peak_rss_bytes=memory.peak_rss_bytes(),
            device_used_bytes=self._device_bytes if self._offload else None,
            buffers=dict(self._buffers),
        )

    def info(self) -> EngineInfo:
        on_gpu = self._offload and self.plan.n_gpu_layers != 0
        return EngineInfo(
            engine=self.name,
            version=llama_cpp.__version__,
            device=self._device if on_gpu else "CPU",
            gpu_offload=self._offload,
            model=self.model_path,
            n_ctx=self._n_ctx,
            n_ctx_train=self._n_ctx_train,
            n_gpu_layers=self.plan.n_gpu_layers if self._offload else 0,
            n_threads=self._llm.n_threads,
            chat_template=self._prompt.origin,
            reasoning=self._prompt.reasoning(),
            flash_attn=self._flash_attn,
            kv_type=self.plan.kv_type,
            build=self._system + (f" | AMX path off (llama.cpp's extra buffer types): {self._amx_crash}"
                                  if self._amx_crash else ""),
        )

    def close(self) -> None:
        llm, self._llm = self._llm, None
        if llm is not None:
            llm.close()

