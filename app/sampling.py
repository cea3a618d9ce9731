"""Sampling, written once: each setting's name, bounds, default and help. `roost run` and
`roost chat` take them as flags, the chat app's settings screen as fields, and `roost serve`
checks API requests against them, so that a value one of them takes, all of them take."""

from __future__ import annotations

from dataclasses import dataclass

from roost.backends.base import Params


@dataclass(frozen=True)
class Setting:
    name: str  # the Params field, and the API request's field (OpenAI's, or llama-server's)
    kind: type  # float or int
    low: float
    high: float
    help: str  # what it does, for --help
    label: str  # the settings screen's label
    flags: tuple[str, ...]  # the command line's
    metavar: str

    @property
    def default(self):
        return getattr(Params(), self.name)

    def within(self, value) -> bool:
        return self.low <= value <= self.high  # False for NaN too

    def read(self, text: str):
        """The value typed, or ValueError saying in a few words why it is not taken."""
        return read(text, self.kind, self.low, self.high)


def read(text: str, kind: type, low, high):
    """text as a number of the kind given, from low to high; else ValueError, in words."""
    try:
        value = kind(text)
    except ValueError:
        raise ValueError(f"{text!r} is not a {'whole ' if kind is int else ''}number") from None
    if not low <= value <= high:
        raise ValueError(f"{value} is outside {low}–{high}")
    return value


# One set of bounds for the flags, the settings screen and the API:
#  - temperature 0-2: the range OpenAI's API and llama-server take, so a request any client
#    sends is taken here too; past 2, even a large model's text falls apart;
#  - top_k 0-1000: 0 is off; a thousand candidates already hold all the probability worth
#    sampling from, so a larger K is a typo more often than a wish;
#  - repeat_penalty 0.5-2: 1 is off; llama.cpp divides a repeated token's positive logit by
#    it (0 would divide by zero), below 1 it favours repeats, and past 2 it bans common words.
SETTINGS = (
    Setting("temperature", float, 0.0, 2.0, "sampling temperature, 0 for greedy", "temperature (0 = greedy)",
            ("-t", "--temperature"), "T"),
    Setting("top_p", float, 0.0, 1.0, "sample from the likeliest tokens whose probabilities add up to P, 1 for all",
            "top-p", ("--top-p",), "P"),
    Setting("top_k", int, 0, 1000, "sample from the K likeliest tokens, 0 for all", "top-k (0 = off)",
            ("--top-k",), "K"),
    Setting("min_p", float, 0.0, 1.0, "leave out tokens less likely than P times the likeliest, 0 for none",
            "min-p", ("--min-p",), "P"),
    Setting("repeat_penalty", float, 0.5, 2.0, "make tokens already in the context less likely, 1 for off",
            "repeat penalty (1 = off)", ("--repeat-penalty",), "X"),
)
