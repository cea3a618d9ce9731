"""A real answer, recorded once from SmolLM2 on llama.cpp and replayed: for the snapshot
tests, since a picture of the chat screen can only be compared if every number in it is
the same each run, and live speed and memory never are; and for what the screens do with
an answer whatever it says (settings, the prompt's recall, copying, switching model:
test_tui_screens.py), in a fraction of a real model's time. What the answer says, its
live stats, cancelling and a crashing engine are tested with the real engine
(test_tui_chat.py).

Record again (after changing the question or the events): .venv/bin/python tests/replay.py
"""

from __future__ import annotations

import json
import os
import threading
import time
from dataclasses import asdict

from roost.backends.base import Done, EngineInfo, MemoryReading, Stats, Token

RECORDED = os.path.join(os.path.dirname(os.path.abspath(__file__)), "recorded", "cities.json")
QUESTION = "Name three cities in Japan as a Markdown list, one short sentence each."


class ReplayEngine:
    """The Engine interface over recorded events. `pause_after` holds the stream after that
    many tokens until `resume` is set (or it is cancelled): the screen is then mid-answer,
    as a person sees it. Tokens come `gap_s` apart, longer than the chat screen's batching,
    so that each is drawn on its own and the picture is the same every run."""

    def __init__(self, path: str = RECORDED, pause_after: int | None = None, gap_s: float = 0.15):
        with open(path) as f:
            self.recorded = json.load(f)
        self.pause_after, self.gap_s = pause_after, gap_s
        self.paused, self.resume = threading.Event(), threading.Event()

    def stream(self, messages, params, cancel=None):
        text = ""
        for i, event in enumerate(self.recorded["events"]):
            if "token" in event:
                if i == self.pause_after:
                    self.paused.set()
                    while not self.resume.wait(0.05):
                        if cancel is not None and cancel.is_set():
                            stats = Stats(**{**event_stats(self.recorded), "generated_tokens": i,
                                             "stop_reason": "cancelled"})
                            yield Done(text, stats)
                            return
                time.sleep(self.gap_s)
                text += event["token"]["text"]
                yield Token(**event["token"])
            else:
                yield Done(event["done"]["text"], Stats(**event["done"]["stats"]))

    def memory(self) -> MemoryReading:
        return MemoryReading(**self.recorded["memory"])

    def info(self) -> EngineInfo:
        return EngineInfo(**self.recorded["info"])

    def close(self) -> None:
        pass


def event_stats(recorded: dict) -> dict:
    return recorded["events"][-1]["done"]["stats"]


def record(path: str = RECORDED) -> None:
    from roost.models import catalog
    from roost.backends import load
    from roost.backends.base import Params, Plan

    model = catalog.demo_model_path()
    engine = load(model, Plan(n_ctx=4096))
    messages = [{"role": "user", "content": QUESTION}]
    events = [{"token": asdict(e)} if isinstance(e, Token) else {"done": {"text": e.text, "stats": asdict(e.stats)}}
              for e in engine.stream(messages, Params(temperature=0, max_tokens=120))]
    info = {**asdict(engine.info()), "model": os.path.basename(model)}
    with open(path, "w") as f:
        json.dump({"messages": messages, "info": info, "memory": asdict(engine.memory()), "events": events}, f, indent=1)
    engine.close()


if __name__ == "__main__":
    record()
    print(f"recorded {RECORDED}")
