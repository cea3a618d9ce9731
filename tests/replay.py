"""A real answer, recorded once from SmolLM2 on llama.cpp and replayed: for the snapshot
tests, since a picture of the chat screen can only be compared if every number in it is
the same each run, and live speed and memory never are; and for what the screens do with
an answer whatever it says (settings, the prompt's recall, copying, switching model:
test_tui_screens.py), in a fraction of a real model's time. What the answer says, its
live stats, cancelling and a crashing engine are tested with the real engine
(test_tui_chat.py).

A reasoning model's answer is recorded too (THINKING, from conftest's thinking_gguf: the
demo model with a template that opens a thought, which a budget of 16 tokens closes), for
what the chat screen does with a thought before the answer.

Record again (after changing the question or the events): .venv/bin/python tests/replay.py
"""

from __future__ import annotations

import json
import os
import threading
import time
from dataclasses import asdict

from roost.backends.base import REASONING, Done, EngineInfo, MemoryReading, Stats, Token

HERE = os.path.dirname(os.path.abspath(__file__))
RECORDED = os.path.join(HERE, "recorded", "cities.json")
QUESTION = "Name three cities in Japan as a Markdown list, one short sentence each."
THINKING = os.path.join(HERE, "recorded", "thinking.json")
THINKING_QUESTION = "What is the capital of Japan? Explain."


class ReplayEngine:
    """The Engine interface over recorded events. `pause_after` holds the stream after that
    many tokens until `resume` is set (or it is cancelled): the screen is then mid-answer,
    as a person sees it. Several counts hold it at each in turn: `held` says how many it
    has reached, and `resume` lets it on to the next. Tokens come `gap_s` apart, longer
    than the chat screen's batching, so that each is drawn on its own and the picture is
    the same every run."""

    def __init__(self, path: str = RECORDED, pause_after: int | tuple[int, ...] | None = None, gap_s: float = 0.15):
        with open(path) as f:
            self.recorded = json.load(f)
        self.pauses = (pause_after,) if isinstance(pause_after, int) else tuple(pause_after or ())
        self.gap_s = gap_s
        self.paused, self.resume = threading.Event(), threading.Event()
        self.held = 0

    def stream(self, messages, params, cancel=None):
        text = thought = ""
        for i, event in enumerate(self.recorded["events"]):
            if "token" in event:
                if i in self.pauses:
                    self.held += 1
                    self.paused.set()
                    while not self.resume.wait(0.05):
                        if cancel is not None and cancel.is_set():
                            yield Done(text, cancelled(self.recorded, i, text), thought)
                            return
                    if i != self.pauses[-1]:  # held again at the next
                        self.resume.clear()
                time.sleep(self.gap_s)
                token = Token(**event["token"])
                if token.kind == REASONING:
                    thought += token.text
                else:
                    text += token.text
                yield token
            else:
                done = event["done"]
                yield Done(done["text"], Stats.from_dict(done["stats"]), done.get("reasoning", ""))

    def memory(self) -> MemoryReading:
        return MemoryReading(**self.recorded["memory"])

    def info(self) -> EngineInfo:
        return EngineInfo(**self.recorded["info"])

    def close(self) -> None:
        pass


def event_stats(recorded: dict) -> dict:
    return recorded["events"][-1]["done"]["stats"]


def cancelled(recorded: dict, at: int, answered: str) -> Stats:
    """The stats of the recorded stream cut before its event `at`, as the engine's loop
    would count them: a thought cut before its answer has none of the answer's."""
    tokens = [e["token"] for e in recorded["events"][:at]]
    thought = [t for t in tokens if t.get("kind") == REASONING]
    return Stats.from_dict({**event_stats(recorded), "generated_tokens": tokens[-1]["generated"] if tokens else 0,
                            "stop_reason": "cancelled",
                            "decode_s": tokens[-1]["decode_s"] if tokens else 0.0,
                            "reasoning_tokens": thought[-1]["generated"] if thought else 0,
                            "answer_ttft_s": event_stats(recorded).get("answer_ttft_s") if answered else None})


def record(path: str = RECORDED, model: str | None = None, question: str = QUESTION, **params) -> None:
    from roost.models import catalog
    from roost.backends import load
    from roost.backends.base import Params, Plan

    model = model or catalog.demo_model_path()
    engine = load(model, Plan(n_ctx=4096))
    messages = [{"role": "user", "content": question}]
    events = [{"token": asdict(e)} if isinstance(e, Token) else
              {"done": {"text": e.text, "reasoning": e.reasoning, "stats": asdict(e.stats)}}
              for e in engine.stream(messages, Params(temperature=0, **params))]
    info = {**asdict(engine.info()), "model": os.path.basename(model)}
    with open(path, "w") as f:
        json.dump({"messages": messages, "info": info, "memory": asdict(engine.memory()), "events": events}, f, indent=1)
    engine.close()


def record_thinking(path: str = THINKING) -> None:
    import tempfile

    from conftest import THINKING_TEMPLATE
    from gguf_files import with_chat_template
    from roost.models import catalog

    with tempfile.TemporaryDirectory() as tmp:
        model = with_chat_template(catalog.demo_model_path(), os.path.join(tmp, "SmolLM2-think.gguf"),
                                   THINKING_TEMPLATE)
        record(path, model, THINKING_QUESTION, max_tokens=60, think_budget=16)


if __name__ == "__main__":
    record(max_tokens=120)
    print(f"recorded {RECORDED}")
    record_thinking()
    print(f"recorded {THINKING}")
