"""Saved conversations: one JSON-lines file each, in the history folder (paths.history_dir).

Every message is appended and flushed to disk as it is recorded, so a crash or a
`kill -9` mid-answer loses at most the answer being written. Lines are records:
{"type": "meta", …} first, then {"type": "message", "role", "content", "reasoning"?, "stats"?}
(reasoning: a reasoning model's thought before that answer),
{"type": "retract"} when the last question was withdrawn (the engine refused it), and
{"type": "mark", "index": N, "good": bool, "answer": str|None} when the user marked the
conversation's Nth answer (0 the first) good or bad, with the right answer typed for a bad
one (the latest mark of an answer counts). Readers skip record types they do not know, so
an older roost reads a newer file. The meta record holds the model and the system prompt,
and in newer files "sampling" and "think"/"think_budget" as the chat began with them.

A conversation's id is its file's name without .jsonl (time, then six hex digits); its
short id is the shortest start of those hex digits, four at least, that no other has.
"""

from __future__ import annotations

import json
import os
import time
import uuid
from dataclasses import dataclass, field

from roost.backends.base import Message, Params, Stats
from roost.errors import RoostError
from roost.paths import history_dir

SHORT_ID = 4  # hex digits a short id has at least
SAMPLING = ("temperature", "top_p", "top_k", "min_p", "repeat_penalty", "seed", "max_tokens")


@dataclass(frozen=True)
class Summary:
    path: str
    title: str  # the first question
    model: str
    updated: float  # seconds since the epoch
    messages: int
    turns: int = 0  # questions asked
    created: float | None = None  # from the meta record; None where it is lost
    marks: int = 0  # answers marked good or bad
    damaged: int = 0  # lines that could not be read (a torn write, a damaged file)
    readable: bool = True  # False: the file itself could not be opened

    @property
    def id(self) -> str:
        return conversation_id(self.path)


@dataclass
class Saved:
    """A conversation as read back: its messages (an answer's "stats" as saved, where kept),
    its marks by answer (0 the first), and how many lines could not be read."""

    meta: dict
    messages: list[dict]
    marks: dict[int, dict] = field(default_factory=dict)
    damaged: int = 0

    @property
    def answers(self) -> list[dict]:
        return [m for m in self.messages if m["role"] == "assistant"]

    @property
    def questions(self) -> list[str]:
        return [m["content"] for m in self.messages if m["role"] == "user"]


class Conversation:
    """A conversation's file: appended to as the conversation goes."""

    def __init__(self, path: str):
        self.path = path

    @property
    def id(self) -> str:
        return conversation_id(self.path)

    @classmethod
    def create(cls, model: str, system: str | None = None, params: Params | None = None) -> "Conversation":
        folder = history_dir()
        os.makedirs(folder, exist_ok=True)
        stamp = time.strftime("%Y%m%d-%H%M%S")
        conv = cls(os.path.join(folder, f"{stamp}-{uuid.uuid4().hex[:6]}.jsonl"))
        meta = {"type": "meta", "model": model, "system": system, "created": time.time()}
        if params is not None:  # what an export says the answers were sampled with
            meta.update(sampling={name: getattr(params, name) for name in SAMPLING},
                        think=params.think, think_budget=params.think_budget)
        conv._write(meta)
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

    def mark(self, index: int, good: bool, answer: str | None = None) -> None:
        """The conversation's answer `index` (0 the first) marked good or bad; `answer`:
        the right one, as the user typed it (roost eval --from-history checks for it)."""
        self._write({"type": "mark", "index": index, "good": good, "answer": answer or None})

    def read(self) -> Saved:
        """The whole record. A line that cannot be read (torn by a crash mid-write, or
        damaged) is skipped and counted, as is a record missing what its type needs."""
        saved = Saved({}, [])
        try:
            f = open(self.path, encoding="utf-8", errors="replace")
        except OSError as e:
            raise RoostError(f"cannot read conversation {self.id}: {e.strerror}") from None
        with f:
            for line in f:
                if not line.strip():
                    continue
                try:
                    record = json.loads(line)
                    kind = record.get("type")
                    if kind == "meta":
                        saved.meta = record
                        if record.get("system"):
                            saved.messages.append({"role": "system", "content": record["system"]})
                    elif kind == "message":
                        message = {"role": record["role"], "content": record["content"]}
                        if record.get("reasoning"):
                            message["reasoning"] = record["reasoning"]
                        if record.get("stats"):
                            message["stats"] = record["stats"]
                        saved.messages.append(message)
                    elif kind == "retract" and saved.messages:
                        saved.messages.pop()
                    elif kind == "mark":
                        saved.marks[int(record["index"])] = {"good": bool(record["good"]),
                                                             "answer": record.get("answer")}
                except (ValueError, KeyError, TypeError, AttributeError):
                    saved.damaged += 1
        return saved

    def load(self) -> tuple[dict, list[Message]]:
        """(meta, messages) to go on with: an answer's thought, where one was kept, is its
        message's "reasoning"; its stats stay in the file."""
        saved = self.read()
        return saved.meta, [{k: v for k, v in m.items() if k != "stats"} for m in saved.messages]


def conversation_id(path: str) -> str:
    return os.path.basename(path).removesuffix(".jsonl")


def _hex(conv_id: str) -> str:
    return conv_id.rsplit("-", 1)[-1]


def short_ids(ids: list[str]) -> dict[str, str]:
    """Each id's short one: the fewest of its hex digits (SHORT_ID at least) that no
    other id starts its hex digits with; the whole id where even all of them are shared."""
    out = {}
    for conv_id in ids:
        mine, others = _hex(conv_id), [_hex(i) for i in ids if i != conv_id]
        n = SHORT_ID
        while n < len(mine) and any(o.startswith(mine[:n]) for o in others):
            n += 1
        out[conv_id] = mine[:n] if not any(o.startswith(mine[:n]) for o in others) else conv_id
    return out


def find(ref: str) -> Conversation:
    """The saved conversation `ref` names: the start of its id or of its hex digits (its
    short id), unique among them; otherwise a one-line error saying so."""
    folder = history_dir()
    try:
        ids = sorted(conversation_id(n) for n in os.listdir(folder) if n.endswith(".jsonl"))
    except FileNotFoundError:
        ids = []
    ref = ref.strip().removesuffix(".jsonl")
    matches = [i for i in ids if ref and (i == ref or i.startswith(ref) or _hex(i).startswith(ref))]
    if len(matches) != 1:
        if not matches:
            raise RoostError(f"no conversation {ref!r}: roost history lists them")
        shorts = short_ids(ids)
        raise RoostError(f"{ref!r} names {len(matches)} conversations ("
                         f"{', '.join(shorts[i] for i in matches[:5])}{', …' if len(matches) > 5 else ''}): "
                         "give more of its id")
    return Conversation(os.path.join(folder, matches[0] + ".jsonl"))


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
        try:
            saved = Conversation(path).read()
            updated = os.path.getmtime(path)
        except (RoostError, OSError):  # gone since listed, or not ours to read: listed as such
            out.append(Summary(path, "(cannot be read)", "?", 0.0, 0, readable=False))
            continue
        questions = saved.questions
        if not questions and not saved.damaged:  # every question withdrawn: nothing to show
            continue
        title = questions[0].strip().splitlines()[0][:80] if questions and questions[0].strip() else "(no question)"
        created = saved.meta.get("created")
        out.append(Summary(path, title, saved.meta.get("model") or "?", updated,
                           len(saved.messages), len(questions),
                           created if isinstance(created, (int, float)) else None,
                           len(saved.marks), saved.damaged))
    return sorted(out, key=lambda s: -s.updated)


def _when(seconds) -> str:
    return time.strftime("%Y-%m-%d %H:%M", time.localtime(seconds)) if isinstance(seconds, (int, float)) else "?"


def settings(meta: dict) -> list[tuple[str, str]]:
    """The settings the meta record holds, in words; what an older file did not keep says so."""
    sampling = meta.get("sampling")
    if isinstance(sampling, dict):
        unset = {"seed": "random", "max_tokens": "no limit"}
        told = " · ".join(f"{k} {unset.get(k, '—') if v is None else v}" for k, v in sampling.items())
        think = meta.get("think") or "the model's own"
        if meta.get("think_budget") is not None:
            think += f", at most {meta['think_budget']} tokens"
    else:
        told = think = "not kept (saved by an older roost)"
    return [("System prompt", meta.get("system") or "none (the model's own, if its template has one)"),
            ("Sampling", told), ("Thinking", think)]


def stats_line(message: dict) -> str | None:
    """An answer's stats line, as `roost run --stats` prints it; None where none was kept."""
    from roost import report

    try:
        return report.stats_line(Stats.from_dict(message["stats"])) if message.get("stats") else None
    except (TypeError, KeyError, AttributeError):  # a damaged record: the answer stands without
        return None


def mark_words(mark: dict | None) -> str | None:
    if mark is None:
        return None
    if mark["good"]:
        return "marked good"
    return "marked bad" + (f"; the right answer: {mark['answer']}" if mark.get("answer") else "")


def markdown(conv: Conversation) -> str:
    """The conversation as Markdown: a header with the model and settings, then each
    question, thought (folded, where the viewer folds <details>), answer and its stats."""
    saved = conv.read()
    meta = saved.meta
    title = saved.questions[0].strip().splitlines()[0] if saved.questions and saved.questions[0].strip() else conv.id
    lines = [f"# {title}", "", f"- Model: {meta.get('model') or '?'}",
             f"- Started: {_when(meta.get('created'))} (roost conversation {conv.id})"]
    lines += [f"- {name}: {value}" for name, value in settings(meta)]
    if saved.damaged:
        lines.append(f"- Damaged: {saved.damaged} line{'s' * (saved.damaged > 1)} could not be read")
    answer = 0
    for message in saved.messages:
        if message["role"] == "user":
            lines += ["", "## You", "", message["content"].strip()]
        elif message["role"] == "assistant":
            lines += ["", "## Answer", ""]
            if message.get("reasoning"):
                lines += ["<details><summary>Thought</summary>", "", message["reasoning"].strip(), "", "</details>", ""]
            lines.append(message["content"].strip())
            notes = [n for n in (stats_line(message), mark_words(saved.marks.get(answer))) if n]
            lines += ["", *(f"*{n}*  " for n in notes)] if notes else []
            answer += 1
    return "\n".join(lines).rstrip() + "\n"


def as_json(conv: Conversation) -> dict:
    """The conversation for programs: OpenAI-style messages (a thought as
    "reasoning_content", as llama-server and others send it), the meta record, each
    answer's stats (null where none was kept) and the marks."""
    saved = conv.read()
    messages, stats = [], []
    for message in saved.messages:
        out = {"role": message["role"], "content": message["content"]}
        if message.get("reasoning"):
            out["reasoning_content"] = message["reasoning"]
        messages.append(out)
        if message["role"] == "assistant":
            stats.append(message.get("stats"))
    meta = {k: v for k, v in saved.meta.items() if k != "type"}
    return {"id": conv.id, "meta": meta, "messages": messages, "stats": stats,
            "marks": [{"index": i, **m} for i, m in sorted(saved.marks.items())], "damaged_lines": saved.damaged}


def eval_records() -> tuple[list[dict], int]:
    """An eval set from the marked answers of every saved conversation (roost eval
    --from-history): one item per answer marked, its prompt the question, with the
    conversation before it as "messages" and the system prompt as "system"; its check
    `contains`: the right answer typed for a bad one, or for a good one its first sentence
    (its first line, up to the first full stop), since the answer word for word is rarely
    what another model or quant writes. Returns (items, bad marks left out for want of a
    right answer)."""
    items, untyped = [], 0
    for summary in sorted(conversations(), key=lambda s: s.id):
        if not summary.marks:  # an unreadable file has none either
            continue
        saved = Conversation(summary.path).read()
        answer, before = 0, []
        for message in saved.messages:
            if message["role"] == "assistant":
                mark = saved.marks.get(answer)
                if mark is not None:
                    expected = mark.get("answer") if not mark["good"] else _first_sentence(message["content"])
                    if not expected:
                        untyped += 1 if not mark["good"] else 0
                    elif before and before[-1]["role"] == "user":
                        spent = (message.get("stats") or {}).get("answer_tokens")
                        item = {"id": f"{summary.id}#{answer + 1}", "prompt": before[-1]["content"],
                                "contains": expected.strip()}
                        if saved.meta.get("system"):
                            item["system"] = saved.meta["system"]
                        if len(before) > 1:
                            item["messages"] = before[:-1]
                        if isinstance(spent, int) and spent > 48:  # room for what the marked answer needed
                            item["max_tokens"] = spent
                        items.append(item)
                answer += 1
            if message["role"] in ("user", "assistant"):
                before.append({"role": message["role"], "content": message["content"]})
    return items, untyped


def _first_sentence(text: str) -> str:
    line = next((l.strip() for l in text.splitlines() if l.strip()), "")
    end = [i for i in (line.find(". "), line.find("? "), line.find("! ")) if i >= 0]
    return (line[: min(end)] if end else line).rstrip(".!?").strip()
