"""A conversation: its messages, the sampling it uses, and the stats of each answer.

Views drive a Session and render the events it passes through; the session is where
the record is kept, so every view records a conversation the same way.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterator

from roost.backends.base import Cancel, Done, Engine, Event, Message, Params, Stats
from roost.history import Conversation


@dataclass
class Session:
    engine: Engine
    params: Params = Params()
    system: str | None = None
    messages: list[Message] = field(default_factory=list)
    stats: list[Stats] = field(default_factory=list)
    saved: Conversation | None = None  # where the conversation is kept, if anywhere

    def __post_init__(self) -> None:
        if self.system and not self.messages:
            self.messages.append({"role": "system", "content": self.system})

    def send(self, text: str, cancel: Cancel | None = None) -> Iterator[Event]:
        """Ask, and stream the answer. The answer joins the conversation when it is done,
        a cancelled one too (as far as it got), so what is kept is what was shown."""
        self._record({"role": "user", "content": text})
        try:
            for event in self.engine.stream(self.messages, self.params, cancel):
                if isinstance(event, Done):
                    self.stats.append(event.stats)
                    # The thought is kept in the saved file, not in what the model reads
                    # next turn (templates drop past thoughts anyway; they would fill the context).
                    self._record({"role": "assistant", "content": event.text}, event.stats, event.reasoning)
                yield event
        except BaseException:
            if self.messages[-1]["role"] == "user":
                self.messages.pop()  # the question never got an answer: leave it unasked
                if self.saved:
                    self.saved.retract()
            raise

    def _record(self, message: Message, stats: Stats | None = None, reasoning: str = "") -> None:
        self.messages.append(message)
        if self.saved:
            self.saved.add(message, stats, reasoning)
