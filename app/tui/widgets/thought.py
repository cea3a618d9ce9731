"""A reasoning model's thought, above its answer in the same turn.

It streams in dimmed, and folds to one line ("thought for 12.4 s · 512 tokens") when the
answer starts: the answer is what was asked for, the thought is there to check it. A
stream that ends inside the thought leaves it open, with its counts, since it is all
there is. The counts are the engine's (Token, then Done's stats): nothing is timed here.
"""

from __future__ import annotations

from rich.text import Text
from textual.widgets import Static


def summary(seconds: float, tokens: int) -> str:
    return f"thought for {seconds:.1f} s · {tokens} token{'' if tokens == 1 else 's'}"


class Thought(Static):
    def __init__(self, text: str = "", counts: str | None = None) -> None:
        """counts: the summary line of a thought that is over (a saved one), folded."""
        super().__init__(classes="thought")
        self.text, self.counts, self.folded = text, counts, counts is not None
        self.display = bool(text)  # mounted with every answer, seen only once a thought comes
        self._show()

    @property
    def over(self) -> bool:
        return self.counts is not None

    def append(self, text: str) -> None:
        self.text += text
        self.display = True
        self._show()

    def end(self, seconds: float, tokens: int, folded: bool) -> None:
        """The thought is over: its counts on its first line, folded when an answer follows."""
        self.counts, self.folded = summary(seconds, tokens), folded
        self._show()

    def fold(self, folded: bool) -> None:
        if self.over:  # one still streaming stays open: it is what the model is doing
            self.folded = folded
            self._show()

    def _show(self) -> None:
        # Text, not markup: a thought is the model's, and "[" in it is not Rich's.
        if self.counts is None:
            self.update(Text(self.text))
        elif self.folded:
            self.update(Text(f"▸ {self.counts}"))
        else:
            self.update(Text(f"▾ {self.counts}\n{self.text.strip()}"))
