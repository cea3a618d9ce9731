"""Saved conversations: one JSON-lines file each, in the history folder (paths.history_dir).

Every message is appended and flushed to disk as it is recorded, so a crash or a
`kill -9` mid-answer loses at most the answer being written. Lines are records:
{"type": "meta", …} first, then {"type": "message", "role", "content", "reasoning"?, "stats"?}
(reasoning: a reasoning model's thought before that answer), and
{"type": "retract"} when the last question was withdrawn (the engine refused it).
"""

from __future__ import annotations

import json
import os
import time
import uuid
from dataclasses import dataclass

from roost.backends.base import Message, Stats
from roost.paths import history_dir


@dataclass(frozen=True)
class Summary:
    path: str
    title: str  # the first question
    model: str
    updated: float  # seconds since the epoch
    messages: int


class Conversation:
    """A conversation's file: appended to as the conversation goes."""

    def __init__(self, path: str):
        self.path = path

    @classmethod
    def create(cls, model: str, system: str | None = None) -> "Conversation":
        folder = history_dir()
        os.makedirs(folder, exist_ok=True)
        stamp = time.strftime("%Y%m%d-%H%M%S")
        conv = cls(os.path.join(folder, f"{stamp}-{uuid.uuid4().hex[:6]}.jsonl"))
        conv._write({"type": "meta", "model": model, "system": system, "created": time.time()})
        return conv

    def _write(self, record: dict) -> None:
        line = (json.dumps(record, ensure_ascii=False) + "\n").encode("utf-8")
        with open(self.path, "ab+") as f:
            if f.tell() > 0:
                f.seek(-1, os.SEEK_END)
                if f.read(1) != b"\n":  # a write torn by a crash: start on a line of our own
                    line = b"\n" + line
            f.write(line)
            f.flush()
            os.fsync(f.fileno())

    def add(self, message: Message, stats: Stats | None = None, reasoning: str = "") -> None:
        record = {"type": "message", "role": message["role"], "content": message["content"]}
        if reasoning:
            record["reasoning"] = reasoning
        if stats is not None:
            record["stats"] = stats.as_dict()
        self._write(record)

    def retract(self) -> None:
        self._write({"type": "retract"})

    def load(self) -> tuple[dict, list[Message]]:
        """(meta, messages); an answer's thought, where one was kept, is its message's
        "reasoning". A torn last line, from a crash mid-write, is skipped."""
        meta, messages = {}, []
        with open(self.path, encoding="utf-8") as f:
            for line in f:
                try:
                    record = json.loads(line)
                except json.JSONDecodeError:
                    continue
                kind = record.get("type")
                if kind == "meta":
                    meta = record
                    if record.get("system"):
                        messages.append({"role": "system", "content": record["system"]})
                elif kind == "message":
                    message = {"role": record["role"], "content": record["content"]}
                    if record.get("reasoning"):
                        message["reasoning"] = record["reasoning"]
                    messages.append(message)
                elif kind == "retract" and messages:
                    messages.pop()
        return meta, messages


def conversations() -> list[Summary]:
    """Saved conversations, the most recent first."""
    folder = history_dir()
    try:
        names = [n for n in os.listdir(folder) if n.endswith(".jsonl")]
    except FileNotFoundError:
        return []
    out = []
    for name in names:
        path = os.path.join(folder, name)
        meta, messages = Conversation(path).load()
        questions = [m["content"] for m in messages if m["role"] == "user"]
        if not questions:
            continue
        out.append(Summary(path, questions[0].splitlines()[0][:80], meta.get("model", "?"),
                           os.path.getmtime(path), len(messages)))
    return sorted(out, key=lambda s: -s.updated)
