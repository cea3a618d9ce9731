"""Reasoning models write a thought before their answer, between markers that their chat
template knows: `<think>…</think>` (Qwen3, DeepSeek-R1 and its distills, QwQ, Phi-4-reasoning,
GLM-4.5, Granite 3.3, Hunyuan, SmolLM3), gpt-oss's harmony channels, Magistral's
`[THINK]…[/THINK]`, Seed-OSS's `<seed:think>`, Gemma 4's `<|channel>thought…<channel|>`,
Cohere's `<|START_THINKING|>`. This module recognises the format from the template and the
vocabulary (never from a model's name), splits the generated text into thought and answer as
it streams, and says how each format's thinking is switched off, given an effort, or cut
short. It knows no engine: the token loop feeds it text and asks it questions.
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass, field, replace
from typing import Iterable, Iterator, NamedTuple

from roost.backends.base import ANSWER, REASONING
from roost.errors import UsageError

COMMENTARY = "commentary"  # harmony's tool calls and preambles: neither the thought nor the answer
CONTROL = "control"  # harmony's message headers, shown nowhere
# Harmony's tool calls: a message addressed to=functions.NAME gives NAME (CALLEE) and then
# its arguments (CALL), which backends/tool_calls.py turns into a call.
CALLEE, CALL = "callee", "call"
_CALLEE = re.compile(r"to=functions\.([^\s<]+)")


class Piece(NamedTuple):
    kind: str  # REASONING, ANSWER, COMMENTARY, or a harmony call's CALLEE and CALL
    text: str


@dataclass(frozen=True)
class ReasoningFormat:
    name: str
    open: str
    close: str
    # What a budget writes to end a thought so that the model answers: the closing tag with
    # the whitespace the model itself puts around it (llama.cpp's --reasoning-budget forces
    # the same tokens).
    close_text: str
    # Tags that wrap the answer (Granite's <response>, Hunyuan's <answer>): never shown.
    drop: tuple[str, ...] = ()
    # Where the stream starts: a template may open the thought in the prompt (the R1
    # distills end it with "<think>\n"), or close it there to switch thinking off.
    start: str = ANSWER
    # What in a template (any) or a vocabulary (all) says a model uses this format.
    signs: tuple[str, ...] = field(default=(), compare=False)


THINK = ReasoningFormat("think", "<think>", "</think>", "\n</think>\n\n")
SEED = ReasoningFormat("seed", "<seed:think>", "</seed:think>", "\n</seed:think>\n\n")
MISTRAL = ReasoningFormat("mistral", "[THINK]", "[/THINK]", "[/THINK]")
GEMMA = ReasoningFormat("gemma", "<|channel>thought", "<channel|>", "<channel|>", signs=("<|channel>", "<channel|>"))
COHERE = ReasoningFormat("cohere", "<|START_THINKING|>", "<|END_THINKING|>", "<|END_THINKING|>",
                         drop=("<|START_RESPONSE|>", "<|END_RESPONSE|>"))
# Harmony is not a pair of tags but messages with headers; open/close are what one
# analysis message looks like, and the splitter reads the headers itself.
HARMONY = ReasoningFormat("harmony", "<|channel|>analysis<|message|>", "<|end|>",
                          "<|end|><|start|>assistant<|channel|>final<|message|>",
                          start=CONTROL, signs=("<|channel|>", "<|message|>"))
_HARMONY_TAGS = ("<|start|>", "<|channel|>", "<|constrain|>", "<|message|>", "<|end|>", "<|return|>", "<|call|>")
_HARMONY_ENDS = ("<|start|>", "<|end|>", "<|return|>", "<|call|>")

# No real template seen names two of these; were one to, the more particular wins.
FORMATS = (HARMONY, SEED, MISTRAL, GEMMA, COHERE, THINK)
_ANSWER_WRAPPERS = (("<response>", "</response>"), ("<answer>", "</answer>"))
# Every marker that, as one token of a vocabulary, says which format a model writes.
SIGNS = tuple(dict.fromkeys(s for fmt in FORMATS for s in (fmt.signs or (fmt.open, fmt.close))))


def detect(template: str | None, special_tokens: Iterable[str] = (), prompt_tail: str = "") -> ReasoningFormat | None:
    """The reasoning format a model writes, or None for a model that does not reason (its
    text then passes through untouched). `prompt_tail` is the end of the rendered prompt:
    it says whether the stream starts inside a thought."""
    template, tokens = template or "", set(special_tokens)
    for fmt in FORMATS:
        signs = fmt.signs or (fmt.open, fmt.close)
        if any(s in template for s in signs) or tokens.issuperset(signs):
            break
    else:
        return None
    if fmt is THINK:
        fmt = replace(fmt, drop=tuple(t for pair in _ANSWER_WRAPPERS if pair[0] in template for t in pair))
    return replace(fmt, start=_start(fmt, prompt_tail))


def _start(fmt: ReasoningFormat, tail: str) -> str:
    if fmt.name != "harmony":
        return REASONING if tail.rfind(fmt.open) > tail.rfind(fmt.close) else ANSWER
    opened = tail.rfind("<|message|>")
    if opened <= max(tail.rfind(t) for t in _HARMONY_ENDS):
        return CONTROL  # between messages: the model writes the next header
    return _channel(tail[max(tail.rfind(t) for t in _HARMONY_ENDS):opened])


def _channel(header: str) -> str:
    """The kind of text a harmony message holds, from its header ("<|channel|>analysis",
    "assistant to=functions.f<|channel|>commentary <|constrain|>json"...)."""
    if _CALLEE.search(header):
        return CALL  # a call to one of the request's tools, whichever channel carries it
    if "to=" in header:
        return COMMENTARY  # a built-in tool's call
    name = re.search(r"<\|channel\|>\s*(\w+)", header)
    return {"analysis": REASONING, "commentary": COMMENTARY}.get(name and name[1], ANSWER)


class _Tags:
    """Cuts text into plain runs and whole tags, holding back the end of the text while it
    may be the start of a tag (a tag often arrives over several tokens), as StopMatcher
    does for stop strings."""

    def __init__(self, tags: Iterable[str]):
        self.tags = tuple(t for t in tags if t)
        self.pending = ""

    def feed(self, text: str) -> Iterator[tuple[bool, str]]:
        self.pending += text
        while self.tags:
            hits = [(i, -len(t), t) for t in self.tags if (i := self.pending.find(t)) >= 0]
            if not hits:
                break
            at, _, tag = min(hits)
            if at:
                yield False, self.pending[:at]
            yield True, tag
            self.pending = self.pending[at + len(tag):]
        keep = max((k for t in self.tags for k in range(min(len(t) - 1, len(self.pending)), 0, -1)
                    if self.pending.endswith(t[:k])), default=0)
        out, self.pending = self.pending[:len(self.pending) - keep], self.pending[len(self.pending) - keep:]
        if out:
            yield False, out

    def flush(self) -> str:
        out, self.pending = self.pending, ""
        return out


class Splitter:
    """Fed a model's text piece by piece (a token's text, or a network chunk), returns it as
    pieces of thought and answer, with no part of a tag in either. Whitespace that only
    frames a tag (the newline after <think>, the blank line after </think>) goes too; a
    model without a format gets its text back unchanged, piece for piece."""

    def __init__(self, fmt: ReasoningFormat | None):
        self.fmt = fmt
        self.kind = fmt.start if fmt else ANSWER
        self.tokens: Counter[str] = Counter()  # tokens per kind, tags counted with their thought
        self.thought_tokens = 0  # in the current thought: what a budget counts
        harmony = fmt is not None and fmt.name == "harmony"
        self._tags = _Tags(_HARMONY_TAGS if harmony else (fmt.open, fmt.close, *fmt.drop) if fmt else ())
        self._header = ""  # harmony: the header being read
        self._tagged = False  # whether any tag came at all
        self._trim = fmt is not None  # drop leading whitespace until text comes
        self._ws = ""  # whitespace at the end of a thought, dropped if the thought ends there

    @property
    def in_thought(self) -> bool:
        return self.kind == REASONING

    def over_budget(self, budget: int | None) -> bool:
        """Whether the loop should write `fmt.close_text` now to end the thought."""
        return budget is not None and self.in_thought and self.thought_tokens >= budget

    def feed(self, text: str, tokens: int = 1) -> list[Piece]:
        """`tokens`: how many tokens `text` is (0 for a chunk that is not a token boundary).
        A token that touches a thought, its tags included, counts as thinking."""
        before, out = self.kind, []
        for is_tag, part in self._tags.feed(text):
            if is_tag:
                self._tag(part, out)
            else:
                self._text(part, out)
        if tokens:
            kind = REASONING if REASONING in (before, self.kind) else self.kind
            self.tokens[kind] += tokens
            self.thought_tokens += tokens if kind == REASONING else 0
        return _merged(out)

    def flush(self) -> list[Piece]:
        """What was held back, at the end of the stream: a stream cut inside a thought ends
        as thought; an unfinished harmony header is dropped, unless no tag came at all (an
        engine that hides control tokens would otherwise lose the whole answer)."""
        out: list[Piece] = []
        self._text(self._tags.flush(), out)
        if self.kind == CONTROL and not self._tagged and self._header:
            out.append(Piece(ANSWER, self._header))
        if self._ws:
            out.append(Piece(REASONING, self._ws))
        self._ws = self._header = ""
        return _merged(out)

    def _enter(self, kind: str) -> None:
        if kind == REASONING and self.kind != REASONING:
            self.thought_tokens = 0
        self._ws = ""  # whitespace before a closing tag frames it
        self.kind, self._trim = kind, True

    def _tag(self, tag: str, out: list[Piece]) -> None:
        fmt, self._tagged = self.fmt, True
        if fmt.name == "harmony":
            if self.kind == CONTROL and tag == "<|message|>":
                self._enter(_channel(self._header))
                if self.kind == CALL:
                    out.append(Piece(CALLEE, _CALLEE.search(self._header)[1]))
            elif self.kind == CONTROL and tag in ("<|channel|>", "<|constrain|>"):
                self._header += tag
            elif tag in _HARMONY_ENDS:
                self._enter(CONTROL)
                self._header = ""
        elif tag == fmt.open and self.kind != REASONING:
            self._enter(REASONING)
        elif tag == fmt.close and self.kind == REASONING:
            self._enter(ANSWER)
        # Any other tag (an answer wrapper, a nested <think>, a stray </think>) is dropped: a
        # tag is structure wherever it comes, even in an answer that talks about tags.

    def _text(self, text: str, out: list[Piece]) -> None:
        if self.kind == CONTROL:
            self._header += text
            return
        if self._trim:
            text = text.lstrip()
            if not text:
                return
            self._trim = False
        if self.kind == REASONING:
            text = self._ws + text
            body = text.rstrip()
            self._ws = text[len(body):]
            text = body
        if text:
            out.append(Piece(self.kind, text))


def _merged(pieces: list[Piece]) -> list[Piece]:
    out: list[Piece] = []
    for p in pieces:
        if out and out[-1].kind == p.kind:
            out[-1] = Piece(p.kind, out[-1].text + p.text)
        else:
            out.append(p)
    return out


# Controls. What --think asks for, and how each template lets it be said: a template
# variable where the template reads one, else a budget of 0 (the loop closes the thought
# the moment it opens, as llama.cpp's --reasoning-budget 0 does).

EFFORTS = ("low", "medium", "high")
THINK_SETTINGS = ("on", "off", *EFFORTS)
# Granite 3.3 and DeepSeek-V3.1 read a plain `thinking` flag (off unless set).
_THINKING_FLAG = re.compile(r"\{%-?\s*(?:el)?if\s+(?:not\s+)?thinking\b")


@dataclass(frozen=True)
class Control:
    variables: dict = field(default_factory=dict)  # extra variables to render the template with
    budget: int | None = None  # thinking tokens allowed per thought; None: no limit


def control(template: str | None, fmt: ReasoningFormat | None, think: str | None = None,
            budget: int | None = None) -> Control:
    """How to render and run a model for `--think` (None: the model's own default) and
    `--think-budget`. A model that does not reason is run as it always was."""
    if think is not None and think not in THINK_SETTINGS:
        raise UsageError(f"--think takes {', '.join(THINK_SETTINGS)}, not {think!r}")
    if budget is not None and budget < 0:
        raise UsageError(f"--think-budget is a number of tokens, 0 or more, not {budget}")
    template, off = template or "", think == "off"
    if fmt is None:
        return Control({}, None)
    if think is None:  # the model's own default; Seed-OSS is told its budget in the prompt
        told = budget is not None and "thinking_budget" in template
        return Control({"thinking_budget": budget} if told else {}, budget)
    if "reasoning_effort" in template:
        # gpt-oss always writes an analysis; off asks for the least and closes it at once.
        return Control({"reasoning_effort": "low" if off else think if think in EFFORTS else "medium"},
                       0 if off else budget)
    if think in EFFORTS:
        raise UsageError(f"this model's thinking is on or off; --think {think} needs a model with "
                         "effort levels (gpt-oss)")
    if "enable_thinking" in template:  # Qwen3, SmolLM3, Gemma 4, GLM-4.5
        return Control({"enable_thinking": not off}, budget)
    if "thinking_budget" in template:  # Seed-OSS tells the model its budget in the prompt
        told = 0 if off else budget
        return Control({} if told is None else {"thinking_budget": told}, budget)
    if _THINKING_FLAG.search(template):
        return Control({"thinking": not off}, budget)
    return Control({}, 0 if off else budget)  # R1 distills, QwQ, Magistral: no switch
