"""The one interface every text generator in roost speaks.

The CLI, the TUI and the server see only what is in this module: an `Engine` that
streams `Token` events and then exactly one `Done` carrying `Stats`. Timing is taken
inside the engine, at the token, so no view ever times anything itself.
"""

from __future__ import annotations

import threading
from dataclasses import asdict, dataclass, field, fields
from typing import Any, Iterator, Literal, NotRequired, Protocol, Sequence, TypedDict, Union


class Message(TypedDict):
    role: str  # "system" | "user" | "assistant" | "tool"
    content: str
    # A saved answer's thought (history.py) may ride along as "reasoning": engines never
    # send it to the model.
    # Tools (issue #23): an assistant turn's calls, OpenAI's shape with the arguments as
    # JSON text ([{"id", "type": "function", "function": {"name", "arguments"}}]); a tool
    # turn's answer names the call it answers (tool_call_id) and, where known, the tool.
    tool_calls: NotRequired[list[dict]]
    tool_call_id: NotRequired[str]
    name: NotRequired[str]


StopReason = Literal["stop", "length", "context", "cancelled"]
# stop: the model ended its turn (end-of-generation token or a stop string)
# length: max_tokens reached
# context: the context window is full
# cancelled: the caller asked to stop


@dataclass(frozen=True)
class Plan:
    """How to load a model; fit.py decides these numbers, the user may override."""

    n_ctx: int = 4096
    n_gpu_layers: int = 0  # -1: all layers
    n_threads: int | None = None  # None: the engine's default
    n_batch: int = 512
    # llama.cpp's flash attention: "auto" (roost's default for the device, fit.py), "on", "off"
    flash_attn: str = "auto"
    kv_type: str = "f16"  # the KV cache's type: "f16", "q8_0" or "q4_0" (quantized V needs flash attention)


@dataclass(frozen=True)
class Params:
    """Sampling for one answer. temperature 0 means greedy."""

    max_tokens: int | None = None  # None: until the model stops or the context is full
    temperature: float = 0.8
    top_p: float = 0.95
    top_k: int = 40
    min_p: float = 0.05
    repeat_penalty: float = 1.0
    seed: int | None = None
    stop: tuple[str, ...] = ()
    # Reasoning models (backends/reasoning.py): None is the model's own default; "on",
    # "off", or an effort ("low", "medium", "high") where the template takes one.
    think: str | None = None
    think_budget: int | None = None  # thinking tokens before roost closes the thought; None: no limit
    # More variables for the chat template (the API's chat_template_kwargs); --think's own
    # variables win over these.
    template_vars: tuple[tuple[str, Any], ...] = ()
    # Structured output: a JSON schema, as JSON text, that the answer must match (the
    # engine's grammar makes it so); '{"type": "object"}' for any JSON object.
    schema: str | None = None
    # Tools the model may call: OpenAI's `tools` list as JSON text, which the chat template
    # renders. tool_choice: "auto", "none" (the tools are shown, no call is made) or
    # "required" (a call is made); tool_name: the function that must be called.
    tools: str | None = None
    tool_choice: str = "auto"
    tool_name: str | None = None
    # Log-probabilities: None for none; n (0 to 20) for each generated token's own and the
    # n likeliest tokens' at its place, from the model's logits before sampling.
    logprobs: int | None = None
    # OpenAI's penalties (the API's): taken off the logit of each token in the last 64 of
    # the answer, once (presence) and once per time it is there (frequency), as llama.cpp's
    # sampler does; negative ones favour them.
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0


def decode_rate(generated: int, decode_s: float) -> float:
    """Tokens per second of decoding. The first token comes out of prefill, so the rate
    counts the ones after it, over the time since it."""
    n = generated - 1
    return n / decode_s if n > 0 and decode_s > 0 else 0.0


@dataclass(frozen=True)
class Stats:
    prompt_tokens: int  # tokens in the rendered prompt
    cached_tokens: int  # of those, reused from the KV cache (not prefilled again)
    generated_tokens: int
    prefill_s: float  # evaluating the prompt, up to the first token sampled
    decode_s: float  # from the first token to the last
    ttft_s: float  # from the call (template, tokenizing, prefill) to the first token
    stop_reason: StopReason
    n_ctx: int
    peak_rss_bytes: int | None  # of the process running the model; None where a server does not say
    # A reasoning model's split: the tokens of its thought (tags included, and the end of
    # turn where it ends one), and the time from the call to the first token that shows
    # some answer (None: no answer came; for a model that does not think, ttft_s, or
    # later where its first tokens are whitespace that is not shown).
    reasoning_tokens: int = 0
    answer_ttft_s: float | None = None

    @property
    def prefilled_tokens(self) -> int:
        return self.prompt_tokens - self.cached_tokens

    @property
    def prefill_tps(self) -> float:
        return self.prefilled_tokens / self.prefill_s if self.prefill_s > 0 else 0.0

    @property
    def decode_tps(self) -> float:
        return decode_rate(self.generated_tokens, self.decode_s)

    @property
    def context_tokens(self) -> int:
        return self.prompt_tokens + self.generated_tokens

    @property
    def answer_tokens(self) -> int:
        return self.generated_tokens - self.reasoning_tokens

    @property
    def reasoning_s(self) -> float:
        """How long the model thought: from its first token to its answer's first."""
        if not self.reasoning_tokens:
            return 0.0
        if self.answer_ttft_s is None:  # it never answered: all of it was thought
            return self.decode_s
        return max(0.0, self.answer_ttft_s - self.ttft_s)

    @property
    def reasoning_tps(self) -> float:
        return self.reasoning_tokens / self.reasoning_s if self.reasoning_s > 0 else 0.0

    @property
    def answer_tps(self) -> float:
        """The answer's decode rate alone: what a reader of the answer waits on."""
        if self.answer_ttft_s is None:
            return 0.0
        return decode_rate(self.answer_tokens, self.ttft_s + self.decode_s - self.answer_ttft_s)

    def as_dict(self) -> dict:
        d = asdict(self)
        d.update(
            prefilled_tokens=self.prefilled_tokens,
            prefill_tps=round(self.prefill_tps, 2),
            decode_tps=round(self.decode_tps, 2),
            context_tokens=self.context_tokens,
            answer_tokens=self.answer_tokens,
            reasoning_s=round(self.reasoning_s, 4),
            reasoning_tps=round(self.reasoning_tps, 2),
            answer_tps=round(self.answer_tps, 2),
        )
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "Stats":
        """The inverse of as_dict: how a roost server's stats reach a roost client (one
        from before a field was added leaves it at its default)."""
        return cls(**{f.name: d[f.name] for f in fields(cls) if f.name in d})


REASONING, ANSWER = "reasoning", "answer"  # what a Token is part of


@dataclass(frozen=True)
class Logprob:
    """One generated token's log-probability, with the likeliest tokens' at its place
    (Params.logprobs of them, likeliest first)."""

    token: str
    logprob: float
    top: tuple[tuple[str, float], ...] = ()


@dataclass(frozen=True)
class Token:
    """A piece of the answer, or of the thought before it, with the engine's clock at that
    token, so that a view can show live speed without timing anything itself."""

    text: str
    generated: int = 0  # tokens generated so far, this one included
    decode_s: float = 0.0  # since the first token
    ttft_s: float = 0.0
    prompt_tokens: int = 0
    kind: str = ANSWER  # REASONING: the model's thought, shown apart from the answer
    # With Params.logprobs: the tokens this piece of text came out of, since the last
    # Token (a piece may be held back and sent with the next, or be part of a token).
    logprobs: tuple[Logprob, ...] = ()

    @property
    def decode_tps(self) -> float:
        return decode_rate(self.generated, self.decode_s)


@dataclass(frozen=True)
class ToolCall:
    """A call the model made to one of the request's tools, sent once it is whole (its
    arguments complete): the text of the call is never part of the answer."""

    index: int  # of the calls in this answer, from 0
    id: str  # "call_" and a random part, as OpenAI's
    name: str
    arguments: str  # JSON text of an object, as OpenAI sends it


@dataclass(frozen=True)
class Done:
    text: str  # the whole answer, as the caller should record it: the thought left out
    stats: Stats
    reasoning: str = ""  # the whole thought, for a reasoning model
    tool_calls: tuple[ToolCall, ...] = ()
    logprobs: tuple[Logprob, ...] = ()  # the answer's tokens, with Params.logprobs


@dataclass(frozen=True)
class Progress:
    """Prompt processing under way, sent between prefill chunks of a long prompt so that a
    view can show "reading 3,072 / 12,000 tokens" before the first token."""

    done: int  # prompt tokens evaluated so far this turn (cached ones included)
    total: int  # tokens in the prompt
    cached: int = 0  # of those, reused from the KV cache
    elapsed_s: float = 0.0  # since prefill started

    @property
    def tps(self) -> float:
        return (self.done - self.cached) / self.elapsed_s if self.elapsed_s > 0 else 0.0


Event = Union[Token, Progress, ToolCall, Done]


@dataclass(frozen=True)
class MemoryReading:
    rss_bytes: int | None  # the process running the model, now (None: not known, e.g. a server that does not say)
    peak_rss_bytes: int | None  # that process, high-water mark
    device_used_bytes: int | None = None  # GPU memory the engine holds, where known
    buffers: dict[str, int] = field(default_factory=dict)  # engine-reported, e.g. {"model": …, "kv": …}
    engine_peak_bytes: int | None = None  # the engine's own high-water mark, where it keeps one (MLX)
    host: str | None = None  # where that process runs: None for this one, else the server's address
    app_rss_bytes: int | None = None  # the app's own process, where the model runs in another (backends/child.py)

    def as_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class EngineInfo:
    engine: str  # "llama.cpp", "mlx", "remote"
    version: str
    device: str  # what runs the model: "CPU", "CUDA", "Metal", …
    gpu_offload: bool  # whether this build can put layers on a GPU at all
    model: str
    n_ctx: int
    n_ctx_train: int | None = None
    n_gpu_layers: int = 0
    n_threads: int | None = None
    chat_template: str = "model"  # "model": the file's own; otherwise which fallback
    reasoning: str | None = None  # the reasoning format the model writes ("think", "harmony"...); None: it does not reason
    build: str = ""  # the engine's own build summary
    flash_attn: bool | None = None  # whether attention runs as flash attention; None: the engine does not say
    kv_type: str | None = None  # the KV cache's type ("f16", "q8_0", "q4_0"); None: the engine does not say

    def as_dict(self) -> dict:
        return asdict(self)


class Cancel(threading.Event):
    """Set it (from any thread) to stop a stream within one token."""

    def __init__(self) -> None:
        super().__init__()
        self._hooks: list = []

    def on_set(self, hook):
        """Call hook() when this is set (at once if it already is): for a stream blocked
        in I/O, which a flag checked between tokens would not reach. Returns a function
        that takes the hook back."""
        self._hooks.append(hook)
        if self.is_set():
            hook()
        return lambda: self._hooks.remove(hook) if hook in self._hooks else None

    def set(self) -> None:
        super().set()
        for hook in list(self._hooks):
            hook()


class Engine(Protocol):
    def stream(
        self, messages: Sequence[Message], params: Params, cancel: Cancel | None = None
    ) -> Iterator[Event]:
        """Yield Token events as they are produced, then one Done.

        After a cancel the stream still ends with Done(stop_reason="cancelled") holding
        the partial text, and the engine stays usable for the next call.
        """
        ...

    def complete(self, prompt: str, params: Params, cancel: Cancel | None = None) -> Iterator[Event]:
        """The same stream for raw text, continued as is: no chat template."""
        ...

    def memory(self) -> MemoryReading: ...

    def info(self) -> EngineInfo: ...

    def close(self) -> None: ...


class Scorer(Engine, Protocol):
    """What perplexity needs, from the engines that can give it: local ones (a server
    sends at most a few log-probabilities per token, not whole distributions)."""

    def tokenize(self, text: str) -> list[int]:
        """Text as the model reads it, BOS first where the model wants one."""
        ...

    def logits(self, tokens: Sequence[int]):
        """A numpy array: one row of raw next-token logits per position of tokens."""
        ...
