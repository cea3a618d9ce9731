"""A conversation: its messages, the sampling it uses, and the stats of each answer.

Views drive a Session and render the events it passes through; the session is where
the record is kept, so every view records a conversation the same way. A conversation
longer than the context goes on: the oldest turns are left out of what the model is sent
(context_policy.py), and kept in the record.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterator

from roost import context_policy
from roost.backends.base import Cancel, Done, Engine, Event, Message, Params, Stats
from roost.errors import ConnectionLost, ContextOverflow
from roost.history import Conversation


@dataclass
class Session:
    engine: Engine
    params: Params = Params()
    system: str | None = None
    messages: list[Message] = field(default_factory=list)
    stats: list[Stats] = field(default_factory=list)
    saved: Conversation | None = None  # where the conversation is kept, if anywhere
    first: int = 0  # the first message the model is sent after the system prompt (context_policy)

    def __post_init__(self) -> None:
        if self.system and not self.messages:
            self.messages.append({"role": "system", "content": self.system})

    @property
    def dropped(self) -> int:
        """How many earlier turns are out of the model's view, left out to fit the context."""
        return context_policy.dropped(self.messages, self.first)

    def send(self, text: str, cancel: Cancel | None = None) -> Iterator[Event]:
        """Ask, and stream the answer. The answer joins the conversation when it is done,
        a cancelled one too (as far as it got), so what is kept is what was shown. Where
        the conversation would not fit with room to answer, its oldest turns are left out
        of what is sent first (`dropped` says how many are out now)."""
        self._record({"role": "user", "content": text})
        kept = self.first
        try:
            self.first = context_policy.fit(self.engine, self.messages, self.params, self.first, kept=True)
            while True:
                try:
                    yield from self._answer(cancel)
                    return
                except ContextOverflow:
                    # An engine that cannot count its prompt first (a remote one) refuses it
                    # before any token: one turn fewer is tried, down to the question alone.
                    later = context_policy.next_turn(self.messages, self.first)
                    if later is None:
                        raise
                    self.first = later
        except BaseException:
            self.first = kept  # the question is taken back, and what was left out for it
            if self.messages[-1]["role"] == "user":
                self.messages.pop()  # the question never got an answer: leave it unasked
                if self.saved:
                    self.saved.retract()
            raise

    def _answer(self, cancel: Cancel | None) -> Iterator[Event]:
        try:
            for event in self.engine.stream(context_policy.seen(self.messages, self.first), self.params, cancel):
                if isinstance(event, Done):
                    self._done(event)
                yield event
        except ConnectionLost as lost:  # what was shown of the answer is kept, as a stopped one is
            if lost.partial is not None and (lost.partial.text or lost.partial.reasoning):
                self._done(lost.partial)
            raise

    def _done(self, done: Done) -> None:
        self.stats.append(done.stats)
        # The thought is kept in the saved file, not in what the model reads
        # next turn (templates drop past thoughts anyway; they would fill the context).
        self._record({"role": "assistant", "content": done.text}, done.stats, done.reasoning)

    def _record(self, message: Message, stats: Stats | None = None, reasoning: str = "") -> None:
        self.messages.append(message)
        if self.saved:
            self.saved.add(message, stats, reasoning)
