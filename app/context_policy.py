"""What the model sees of a conversation longer than its context.

A turn that would not fit, with room left to answer, leaves out the oldest turns (a
question and what followed it, whole, oldest first), keeping the system prompt and the
latest turns; the chat leaves out enough that its next turns fit too (`slack`). The
record keeps every message: only what is sent changes, from a "first message seen" index
on. The chat (session.py) and `roost serve --truncate` leave turns out the same way, here.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Sequence

from roost.backends.base import Engine, Message, Params, Stats
from roost.errors import ContextOverflow


def room(n_ctx: int, params: Params) -> int:
    """The tokens kept free for the answer: an eighth of the context (512 at the default
    4096, a paragraph or two), at least 256 so that a small --ctx still leaves an answer
    a few sentences long, and no more than the answer may take where max_tokens caps it."""
    share = max(256, n_ctx // 8)
    return share if params.max_tokens is None else min(share, params.max_tokens)


def slack(n_ctx: int) -> int:
    """Left free besides the answer's room once turns must go: a quarter of the context.
    Leaving out a turn changes the start of the prompt, so the engine reads all of it
    again (its cache holds the old start); left out one turn at a time, every turn after
    the first drop would be read whole. With this slack the next turns add to what was
    read, as llama.cpp's context shift frees half the context at once for the same reason."""
    return n_ctx // 4


def _system(messages: Sequence[Message]) -> int:
    """How many messages the system prompt is: those before the first of another role."""
    return next((i for i, m in enumerate(messages) if m["role"] != "system"), len(messages))


def seen(messages: Sequence[Message], first: int) -> list[Message]:
    """What is sent: the system prompt, if there is one, and the messages from `first` on."""
    head = _system(messages)
    return list(messages[:head]) + list(messages[max(first, head):])


def dropped(messages: Sequence[Message], first: int) -> int:
    """How many turns (questions) the model no longer sees."""
    return sum(1 for m in messages[:first] if m["role"] == "user")


def next_turn(messages: Sequence[Message], first: int) -> int | None:
    """Where the turn after the one seen first starts: the next question after `first`'s;
    None when none follows (the last question is never left out)."""
    start = max(first, _system(messages))
    return next((i for i in range(start + 1, len(messages)) if messages[i]["role"] == "user"), None)


def measure(engine: Engine, messages: Sequence[Message], params: Params) -> Stats | None:
    """The stats of `messages` as the engine's prompt, with no answer: its tokens and the
    context; None where the engine cannot say before it answers (a remote one: its
    server's refusal is the only sign). A local engine asked for no token renders and
    tokenizes the prompt and stops there: nothing is read into the model, and a prompt
    over the context raises ContextOverflow."""
    if not hasattr(engine, "tokenize"):  # the local engines' mark (backends.base.Scorer)
        return None
    *_, done = engine.stream(messages, replace(params, max_tokens=0))  # read to its end: the engine is free again
    return done.stats


def fit(engine: Engine, messages: Sequence[Message], params: Params, first: int = 0, *,
        kept: bool = False) -> int:
    """The first message to send after the system prompt: `first`, or a later turn's
    question where the turns from `first` on would leave less than `room` to answer. The
    last question alone is sent however long: whether it fits is the engine's to say.
    kept: the caller keeps the result for its next turns (the chat): once turns must go,
    enough go to leave `slack` free as well. A server counts each request afresh, from its
    first turn, so for it a larger drop would only leave more out."""
    dropping = False
    while (later := next_turn(messages, first)) is not None:
        try:
            stats = measure(engine, seen(messages, first), params)
        except ContextOverflow:  # not even the prompt fits
            first, dropping = later, True
            continue
        if stats is None:
            break
        free = room(stats.n_ctx, params) + (slack(stats.n_ctx) if dropping and kept else 0)
        if stats.prompt_tokens + free <= stats.n_ctx:
            break
        first, dropping = later, True
    return first
