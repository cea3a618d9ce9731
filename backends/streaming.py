"""The one token loop every local engine runs, whatever library runs the model.

Layered the way mlx-lm layers `generate_step` under `stream_generate`: an engine supplies
the model's side (keep what the cache holds of the prompt, prefill the rest, then each
next token with its log-probabilities, whether a token ends the turn, and how tokens
become text), and `TokenLoop` here owns everything else, once for all: the prompt rendered
and tokenized the same way, the refusal of a prompt that does not fit, max_tokens and the
context limit, a cancel, stop strings held back, text decoded as it comes and its tail,
a reasoning model's thought told from its answer (and closed when its budget is spent),
the clock, a long prompt's progress while it is read, and the one `Done` that ends every
stream."""

from __future__ import annotations

import codecs
import json
import time
from dataclasses import dataclass
from typing import Any, Callable, Generator, Iterator, Protocol, Sequence

from roost.backends import chat_template, memory, reasoning, tool_calls
from roost.backends.base import (ANSWER, REASONING, Cancel, Done, Event, Logprob, Message, Params, Progress, Stats,
                                 Token, ToolCall)
from roost.backends.grammar import to_gbnf
from roost.errors import ContextOverflow, UsageError


@dataclass(frozen=True)
class Read:
    """What an engine's `_steps` yields between prefill chunks in place of a token: how
    many of the prompt's tokens the cache holds now, the reused ones included."""

    done: int


@dataclass(frozen=True)
class Prompted:
    """A prompt as the loop runs it: its tokens, and for a reasoning model's chat its
    format (where the stream starts: in the thought or not) and thinking budget."""

    tokens: list[int]
    fmt: reasoning.ReasoningFormat | None = None
    budget: int | None = None
    # What the answer must match, as a llama.cpp GBNF grammar (a JSON schema's, a required
    # tool call's), from the first token sampled; None: free text.
    grammar: str | None = None
    # The format the model writes tool calls in, which the loop reads them out of the
    # answer by (None: no tools, or tool_choice "none"), and the tools (OpenAI's list).
    tool_format: tool_calls.ToolFormat | None = None
    tools: tuple[dict, ...] = ()


class ChatPrompt:
    """A model's chat template, rendered sandboxed, and its tokenizer, with the BOS token
    added only where the vocabulary wants one and the template left it out (templates
    differ on whether they write it themselves). A file with no template gets the format
    llama.cpp has built in for its architecture and vocabulary (chat_template.built_in):
    `architecture` is the GGUF's general.architecture (an MLX config's model_type),
    `tokenizer_pre` the GGUF's tokenizer.ggml.pre."""

    def __init__(self, template: str | None, tokenize: Callable[[str], list[int]],
                 bos_id: int | None, bos_text: str, eos_text: str, add_bos: bool,
                 architecture: str | None = None, tokenizer_pre: str | None = None):
        self._tokenize = tokenize
        built_in = None
        if not template:
            built_in = chat_template.built_in(architecture, lambda text: len(tokenize(text)) == 1, tokenizer_pre)
            template = chat_template.BUILT_IN[built_in].source
        self.template = template
        self.origin = chat_template.origin(built_in)
        self._bos_id, self._bos_text, self._eos_text = bos_id, bos_text, eos_text
        self._add_bos = add_bos and bos_id is not None
        self._specials: list[str] | None = None

    def specials(self) -> list[str]:
        """The reasoning and tool-call markers this vocabulary holds as single tokens: with
        the template, what says whether (and how) the model thinks, and how it calls tools."""
        if self._specials is None:
            signs = dict.fromkeys((*reasoning.SIGNS, *tool_calls.SIGNS))
            self._specials = [s for s in signs if len(self._tokenize(s)) == 1]
        return self._specials

    def reasoning(self) -> str | None:
        """The name of the reasoning format this model writes, None if it does not reason."""
        fmt = reasoning.detect(self.template, self.specials())
        return fmt and fmt.name

    def chat(self, messages: Sequence[Message], params: Params) -> Prompted:
        fmt = reasoning.detect(self.template, self.specials())
        control = reasoning.control(self.template, fmt, params.think, params.think_budget)
        messages = [{k: v for k, v in m.items() if k != "reasoning"} for m in messages]  # a saved thought stays out
        tools = json.loads(params.tools) if params.tools else []
        calls, grammar, tools_shown = None, schema_grammar(params), tools  # the calls' format; the tools the template is given
        if tools:
            calls = tool_calls.detect(self.template, self.specials())
            if not chat_template.takes_tools(self.template):  # it would drop them: they are listed for it
                messages, tools_shown = chat_template.tools_listed(messages, tools, hermes=calls is None), []
                calls = calls or tool_calls.HERMES
            elif calls is None:
                raise UsageError("this model's chat template takes tools, but roost does not know how the model "
                                 "writes its calls: they would come back as text")
        if calls is not None and (params.tool_choice == "required" or params.tool_name):
            if params.schema is not None:
                raise UsageError("a schema and a required tool call cannot both be asked for: "
                                 "the answer is either JSON or a call")
            grammar = tool_calls.call_grammar(calls, tools, params.tool_name)
        if grammar is not None:
            # A grammar holds from the first token sampled: no thought can come before the
            # answer. The thought is switched off, and where the prompt opens one anyway it
            # is closed in the prompt (as --think-budget 0 does).
            control = reasoning.Control(reasoning.control(self.template, fmt, "off").variables, 0)
        text = chat_template.render(self.template, messages, bos_token=self._bos_text, eos_token=self._eos_text,
                                    variables={**dict(params.template_vars), **control.variables}, tools=tools_shown)
        if fmt is not None:  # the prompt's end says whether the stream starts inside a thought
            fmt = reasoning.detect(self.template, self.specials(), prompt_tail=text[-256:])
        if params.tool_choice == "none":  # the tools are shown, and whatever the model writes is text
            calls = None
        return Prompted(self.text_tokens(text), fmt, control.budget, grammar=grammar,
                        tool_format=calls, tools=tuple(tools))

    def text_tokens(self, text: str) -> list[int]:
        """Text as the model reads it, template or not."""
        tokens = self._tokenize(text)
        if self._add_bos and (not tokens or tokens[0] != self._bos_id):
            tokens.insert(0, self._bos_id)
        return tokens

    def close_tokens(self, fmt: reasoning.ReasoningFormat) -> list[int]:
        """What a budget makes the model say to end its thought, as tokens (no BOS)."""
        return self._tokenize(fmt.close_text)


class Detokenizer(Protocol):
    """Tokens to text as they come, for one answer: what `add` returns is ready to show;
    `finish` gives what was held back (half a character, a space that may join a word)."""

    def add(self, token: int) -> str: ...

    def finish(self) -> str: ...


class Utf8Pieces:
    """The Detokenizer of an engine whose tokens are byte strings (llama.cpp): a character
    split across tokens is shown once its last byte has come."""

    def __init__(self, token_bytes: Callable[[int], bytes]):
        self._bytes = token_bytes
        self._utf8 = codecs.getincrementaldecoder("utf-8")(errors="replace")

    def add(self, token: int) -> str:
        return self._utf8.decode(self._bytes(token))

    def finish(self) -> str:
        return self._utf8.decode(b"", final=True)


class TokenLoop:
    """A chat and a raw text reach the one token loop, `_generate`, the same way: as a
    function that renders and tokenizes, called inside the loop so that its time counts
    toward the first token. An engine subclasses this and supplies the four methods
    below `_generate`; the loop calls nothing else of it."""

    _prompt: ChatPrompt
    _n_ctx: int  # the usable window: prompt and answer together
    _n_ctx_train: int | None

    def stream(self, messages: Sequence[Message], params: Params, cancel: Cancel | None = None) -> Iterator[Event]:
        return self._generate(lambda: self._prompt.chat(messages, params), params, cancel)

    def complete(self, prompt: str, params: Params, cancel: Cancel | None = None) -> Iterator[Event]:
        """Raw text continues as raw text: no thought is told apart (bench measures all)."""
        return self._generate(lambda: Prompted(self.tokenize(prompt), grammar=schema_grammar(params)), params, cancel)

    def tokenize(self, text: str) -> list[int]:
        """Text as the model reads it, BOS first where the model wants one."""
        return self._prompt.text_tokens(text)

    def _generate(self, prompted: Callable[[], Prompted], params: Params, cancel: Cancel | None) -> Iterator[Event]:
        cancel = cancel or Cancel()
        clock = Clock()
        turn = prompted()  # inside the clock: rendering and tokenizing are part of TTFT
        prompt, fmt, budget = turn.tokens, turn.fmt, turn.budget
        split = reasoning.Splitter(fmt)
        close = self._prompt.close_tokens(fmt) if fmt is not None and budget is not None else []
        if split.over_budget(budget):
            # No thinking where only a budget can say so, and the prompt opened the thought:
            # the prompt closes it too, so the model starts on its answer.
            prompt = prompt + close
            split.feed(fmt.close_text, tokens=0)
        check_fits(prompt, self._n_ctx, self._n_ctx_train)
        cached = self._reuse_prefix(prompt)
        clock.prefill_started()
        room = self._n_ctx - len(prompt)
        limit = room if params.max_tokens is None else min(params.max_tokens, room)
        # A reasoning model's markers, and a tool format's, are control tokens in some vocabularies.
        pieces = self._detokenizer(special=fmt is not None or turn.tool_format is not None)
        stops = StopMatcher(params.stop)
        texts = Texts()
        generated = 0
        reason, stopped = "cancelled", False  # an engine that ends without a token was cancelled in prefill
        forced: list[int] = []  # tokens the loop writes in place of the model's next ones
        reading = False  # a Progress was sent: the prompt is read in more than one chunk
        # With params.logprobs: the sampled tokens' not yet sent with a Token (their text
        # held back, or part of a character), and the answer's, for Done.
        unsent: list[Logprob] = []
        answer_logprobs: list[Logprob] = []

        tools = tool_calls.ToolCallParser(turn.tool_format, turn.tools) if turn.tool_format is not None else None
        calls: list[ToolCall] = []

        def shown(parts: list[reasoning.Piece], end: bool = False) -> Iterator[Token | ToolCall]:
            if tools is not None:  # the answer's calls come out of its text, whole
                parts = [out for part in parts for out in tools.feed(part)] + (tools.flush() if end else [])
            for part in parts:
                if isinstance(part, ToolCall):
                    calls.append(part)
                    unsent.clear()  # the call's tokens: not the answer's content
                    yield part
                    continue
                kind, part = part
                # Harmony's commentary (tool preambles) is not the answer: shown with the thought.
                kind = ANSWER if kind == ANSWER else REASONING
                texts.add(kind, part)
                if kind == ANSWER:
                    answer_logprobs.extend(unsent)
                yield clock.stamp(part, generated, len(prompt), kind, tuple(unsent))
                unsent.clear()

        steps = self._steps(prompt, cached, params, cancel, turn.grammar)
        try:
            while True:
                # Before the next token is asked for: asking is what costs a step of the model.
                if generated >= limit:
                    asked = params.max_tokens is not None and generated >= params.max_tokens
                    reason = "length" if asked else "context"
                    break
                if cancel.is_set():
                    break
                try:
                    step = steps.send(forced) if forced else next(steps)
                except StopIteration:
                    break
                if isinstance(step, Read):
                    reading = True
                    yield Progress(step.done, len(prompt), cached, clock.reading_s())
                    continue
                token, logprobs = step
                forced = []
                clock.token()
                if reading and generated == 0:
                    # The last chunk is read when the first token is sampled: progress ends
                    # there, at the whole prompt, timed as the stats time the prefill.
                    yield Progress(len(prompt), len(prompt), cached, clock.reading_s())
                generated += 1
                if self._ends_turn(token):
                    split.feed("", 1)  # counted with the part it ends: a thought cut short, or the answer
                    reason = "stop"
                    break
                if logprobs is not None:
                    unsent.append(self._logprob(token, *logprobs))
                piece, stopped = stops.feed(pieces.add(token))
                yield from shown(split.feed(piece, 1))
                if stopped:
                    reason = "stop"
                    break
                if split.over_budget(budget) and generated + len(close) < limit:
                    # The thought has had its tokens: the model is made to close it (as
                    # llama.cpp's --reasoning-budget does) and goes on with its answer.
                    # These tokens are the model's text, never an end of turn or a stop.
                    forced = close
                    generated += len(forced)
                    piece, _ = stops.feed("".join(pieces.add(t) for t in forced))
                    yield from shown(split.feed(piece, len(forced)))
        finally:
            steps.close()  # the engine notes what its cache holds now
        if not stopped:  # after a stop string nothing more is shown
            tail, stopped = stops.feed(pieces.finish())
            if stopped:
                reason = "stop"
            else:  # text held back in case it began a stop string that never came
                tail += stops.flush()
            yield from shown(split.feed(tail, 0))
        yield from shown(split.flush(), end=True)  # a stream cut inside a thought ends as thought
        thought = sum(n for kind, n in split.tokens.items() if kind != ANSWER)
        yield done(texts.answer, prompt, cached, generated, reason, self._n_ctx, reasoning=texts.reasoning,
                   reasoning_tokens=thought, logprobs=tuple(answer_logprobs), tool_calls=tuple(calls),
                   **clock.durations())

    def _logprob(self, token: int, logprob: float, top: Sequence[tuple[int, float]]) -> Logprob:
        """A step's log-probabilities (`ranked`) with their tokens as text: bytes that are
        not whole characters kept as surrogates (decode's surrogateescape), so that
        `.encode("utf-8", "surrogateescape")` gives back the token's exact bytes."""
        def text(t: int) -> str:
            return self._token_bytes(t).decode("utf-8", "surrogateescape")

        return Logprob(text(token), logprob, tuple((text(t), lp) for t, lp in top))

    # -- what each engine supplies ------------------------------------------------------

    def _reuse_prefix(self, prompt: list[int]) -> int:
        """Keep the cache for the longest prefix it shares with prompt (`reusable_prefix`),
        drop the rest; how many tokens are kept."""
        raise NotImplementedError

    def _steps(self, prompt: list[int], cached: int, params: Params, cancel: Cancel,
               grammar: str | None = None) -> Generator[tuple[int, Any] | Read, list[int], None]:
        """Prefill prompt[cached:], then sample with params (and the grammar, where one is
        given: only tokens it allows): (token id, with params.logprobs not None its
        log-probabilities as `ranked` gives them, else None) for as long as the loop asks. A token is run
        through the model no later than when the next one is asked for; when the loop
        sends a list of tokens instead of asking, those are run after it (as if the model
        had written them) and the next token follows them. Between prefill chunks (after
        each but the last: a prompt read in one chunk yields none), a `Read` with how
        much of the prompt the cache holds, which the loop sends on as a Progress timed
        by its own clock; and a cancel ends it without a token. Closed when the answer
        ends, however."""
        raise NotImplementedError

    def _ends_turn(self, token: int) -> bool:
        """An end-of-generation token: counted, never shown."""
        raise NotImplementedError

    def _detokenizer(self, special: bool) -> Detokenizer:
        """A fresh one for each answer. `special`: control tokens are written out (a
        reasoning model's markers are control tokens in some vocabularies)."""
        raise NotImplementedError

    def _token_bytes(self, token: int) -> bytes:
        """One token's own text, control tokens written out: what a log-probability names."""
        raise NotImplementedError


def check_fits(prompt: list[int], n_ctx: int, n_ctx_train: int | None) -> None:
    if len(prompt) >= n_ctx:
        trained = f" (this model was trained on up to {n_ctx_train})" if n_ctx_train else ""
        raise ContextOverflow(
            f"the prompt is {len(prompt)} tokens but the context holds {n_ctx}; shorten it or raise --ctx{trained}"
        )


def schema_grammar(params: Params) -> str | None:
    """The grammar params.schema holds the answer to (None: free text); UsageError says
    what of the schema cannot be kept."""
    if params.schema is None:
        return None
    try:
        schema = json.loads(params.schema)
    except json.JSONDecodeError as e:
        raise UsageError(f"the schema is not JSON: {e}") from None
    return to_gbnf(schema)


def reusable_prefix(held: Sequence[int], prompt: Sequence[int]) -> int:
    """How many leading tokens of the prompt the cache already holds. The last prompt
    token is always evaluated again: sampling needs its logits."""
    shared = 0
    for a, b in zip(held, prompt):
        if a != b:
            break
        shared += 1
    return min(shared, len(prompt) - 1)


def done(text: str, prompt: list[int], cached: int, generated: int, reason: str, n_ctx: int,
         prefill_s: float, decode_s: float, ttft_s: float, answer_ttft_s: float | None,
         reasoning: str = "", reasoning_tokens: int = 0, logprobs: tuple[Logprob, ...] = (),
         tool_calls: tuple[ToolCall, ...] = ()) -> Done:
    """The one event that ends every stream, with the engine's own timings."""
    return Done(text, Stats(
        prompt_tokens=len(prompt), cached_tokens=cached, generated_tokens=generated,
        prefill_s=prefill_s, decode_s=decode_s, ttft_s=ttft_s, stop_reason=reason,
        n_ctx=n_ctx, peak_rss_bytes=memory.peak_rss_bytes(),
        reasoning_tokens=reasoning_tokens, answer_ttft_s=answer_ttft_s,
    ), reasoning, tool_calls=tool_calls, logprobs=logprobs)


def ranked(logits, token: int, n: int) -> tuple[float, tuple[tuple[int, float], ...]]:
    """One position's log-probabilities as an engine's `_steps` yields them: the chosen
    token's, and the n likeliest tokens' as (id, log-probability), likeliest first. From
    the model's own distribution (a numpy vector of its logits, or of its log-probabilities),
    before temperature and truncation, as OpenAI and llama-server report them."""
    import numpy as np  # here: a remote engine's stream runs without numpy

    # The logits as they come (float32, not copied): the log-sum-exp over the vocabulary,
    # summed in float64, and log-probabilities only for the tokens named.
    logits = np.asarray(logits, dtype=np.float32)
    top = np.argpartition(logits, -n)[-n:] if n else np.empty(0, dtype=np.int64)
    top = top[np.argsort(-logits[top], kind="stable")]
    peak = float(logits.max())
    total = peak + float(np.log(np.exp(logits - peak).sum(dtype=np.float64)))
    return float(logits[token]) - total, tuple((int(t), float(logits[t]) - total) for t in top)


class StopMatcher:
    """Holds back text that may be the start of a stop string, so none is ever shown."""

    def __init__(self, stops: Sequence[str]):
        self.stops = [s for s in stops if s]
        self.pending = ""

    def feed(self, piece: str) -> tuple[str, bool]:
        if not self.stops:
            return piece, False
        self.pending += piece
        cut = min((i for i in (self.pending.find(s) for s in self.stops) if i >= 0), default=-1)
        if cut >= 0:
            out, self.pending = self.pending[:cut], ""
            return out, True
        keep = max(
            (k for s in self.stops for k in range(min(len(s) - 1, len(self.pending)), 0, -1)
             if self.pending.endswith(s[:k])),
            default=0,
        )
        out = self.pending[: len(self.pending) - keep]
        self.pending = self.pending[len(out):]
        return out, False

    def flush(self) -> str:
        out, self.pending = self.pending, ""
        return out


class Texts:
    """The answer and the thought of one reply, joined as their pieces come, the same for
    every engine: a second thought, after some of the answer, is kept apart from the first
    by a blank line (roost run shows it so on a terminal too)."""

    THOUGHTS_APART = "\n\n"

    def __init__(self):
        self._parts: dict[str, list[str]] = {ANSWER: [], REASONING: []}
        self._last: str | None = None

    def add(self, kind: str, text: str) -> None:
        if kind == REASONING and self._parts[REASONING] and self._last == ANSWER:
            self._parts[REASONING].append(self.THOUGHTS_APART)
        self._parts[kind].append(text)
        self._last = kind

    @property
    def answer(self) -> str:
        return "".join(self._parts[ANSWER])

    @property
    def reasoning(self) -> str:
        return "".join(self._parts[REASONING])


class Clock:
    """The moments that make the stats, all taken at the token (the engine's, or the
    chunk's as a client receives it)."""

    def __init__(self) -> None:
        self.called = self.prefill_start = time.perf_counter()
        self.first = self.last = self.answered = None

    def prefill_started(self) -> None:
        self.prefill_start = time.perf_counter()

    def reading_s(self) -> float:
        """Since prefill started: at a chunk's end, or at the first token (the prefill's end)."""
        return (self.first or time.perf_counter()) - self.prefill_start

    def token(self) -> None:
        self.last = time.perf_counter()
        self.first = self.first or self.last

    def stamp(self, text: str, generated: int, prompt_tokens: int, kind: str = ANSWER,
              logprobs: tuple[Logprob, ...] = ()) -> Token:
        first = self.first or time.perf_counter()
        if kind == ANSWER and self.answered is None:
            self.answered = self.last or first
        return Token(text, generated, (self.last or first) - first, first - self.called, prompt_tokens, kind, logprobs)

    def durations(self) -> dict[str, float]:
        # A token's logits are only certain to be computed once it has been sampled
        # (GPU backends decode asynchronously), so prefill ends at the first sample.
        first = self.first or time.perf_counter()
        return dict(
            prefill_s=first - self.prefill_start,
            decode_s=(self.last or first) - first,
            ttft_s=first - self.called,
            answer_ttft_s=None if self.answered is None else self.answered - self.called,
        )
