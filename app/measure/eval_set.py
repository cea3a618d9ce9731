"""Eval sets: JSON lines, each a prompt and one check on the model's answer.

    {"id": "arith-01", "prompt": "What is 7 + 5?", "regex": "(?<![\\d.])12(?!\\d)"}
    {"prompt": "Is 7 even? Answer yes or no.", "answer": "no"}
    {"prompt": "Which is a mammal?", "choices": ["Shark", "Dolphin"], "answer": "B"}
    {"prompt": "What is the capital of France?", "contains": "Paris"}

The checks:
  answer    the whole answer equals this, ignoring case, surrounding whitespace, quotes
            and a final full stop; numbers compare as numbers ("1,000" = "1000.0")
  regex     Python's re.search finds this in the answer (case matters unless (?i))
  choices   multiple choice: the choices are listed under the prompt as A., B., … and
            `answer` is the right letter; the first letter of a choice that stands
            alone in the answer is the model's pick ("A" before a lower-case word is
            the article, not a pick)
  contains  the answer contains this text, ignoring case (a list: any one of them)
Optional: "id" (default: the line number), "system", "max_tokens" (default 48), and
"messages": the conversation before the prompt, a list of {"role": "user"|"assistant",
"content": ...} (roost eval --from-history writes them; default: none).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from roost.errors import UsageError

BUILTIN = resources.files("roost") / "data" / "eval-basic.jsonl"  # package data, in a wheel too
DEFAULT_MAX_TOKENS = 48
LETTERS = "ABCDEFGHIJ"
_FIELDS = {"id", "prompt", "system", "max_tokens", "answer", "regex", "choices", "contains", "messages"}
# A letter standing alone, but not the article in "A dolphin is a mammal".
_STANDALONE = re.compile(r"(?<![A-Za-z])(?!A [a-z])([A-J])(?![A-Za-z])")


@dataclass(frozen=True)
class Item:
    id: str
    question: str  # the prompt as the model reads it (choices listed)
    kind: str  # "answer", "regex", "choices" or "contains"
    expected: tuple[str, ...]  # the answer, the pattern, the letter, or the texts
    system: str | None = None
    max_tokens: int = DEFAULT_MAX_TOKENS
    letters: str = ""  # a multiple-choice item's letters
    before: tuple[dict, ...] = ()  # the conversation before the question ("messages")

    def check(self, output: str) -> bool:
        if self.kind == "answer":
            return _normal(output) == _normal(self.expected[0])
        if self.kind == "regex":
            return re.search(self.expected[0], output) is not None
        if self.kind == "choices":
            return picked(output, self.letters) == self.expected[0]
        folded = output.casefold()
        return any(text.casefold() in folded for text in self.expected)

    def wanted(self) -> str:
        """What the check wanted, in a few words, for a listing."""
        if self.kind == "contains":
            text = " or ".join(repr(t) for t in self.expected)
        else:
            text = {"answer": "= ", "regex": "/", "choices": "letter "}[self.kind] + self.expected[0]
        return text if len(text) <= 30 else text[:29] + "…"


def picked(output: str, letters: str) -> str | None:
    """The choice a multiple-choice answer names: the first of its letters standing alone."""
    for match in _STANDALONE.finditer(output):
        if match.group(1) in letters:
            return match.group(1)
    return None


def _normal(text: str):
    text = " ".join(text.split()).strip("`\"'* ").rstrip(".!").strip().casefold()
    try:
        return float(text.replace(",", "").replace("_", ""))
    except ValueError:
        return text


def _question(prompt: str, choices: list[str]) -> str:
    listed = "\n".join(f"{letter}. {choice}" for letter, choice in zip(LETTERS, choices))
    return f"{prompt}\n\n{listed}\n\nAnswer with the letter of the right choice."


def _item(record, number: int) -> Item:
    """One line's item; ValueError says what is wrong with it."""
    if not isinstance(record, dict):
        raise ValueError("expected a JSON object")
    unknown = sorted(set(record) - _FIELDS)
    if unknown:
        raise ValueError(f"unknown field {unknown[0]!r} (fields: {', '.join(sorted(_FIELDS))})")
    prompt = record.get("prompt")
    if not isinstance(prompt, str) or not prompt.strip():
        raise ValueError("no prompt: give \"prompt\" as a non-empty string")
    checks = [k for k in ("regex", "choices", "contains") if k in record]
    if "answer" in record and "choices" not in record:
        checks.append("answer")
    if len(checks) != 1:
        raise ValueError("give exactly one check: answer, regex, choices (with answer) or contains"
                         + (f", not {' and '.join(checks)}" if checks else ""))
    kind = checks[0]
    value = record[kind]
    letters = ""
    if kind == "choices":
        if not (isinstance(value, list) and 2 <= len(value) <= len(LETTERS)
                and all(isinstance(c, str) and c.strip() and "\n" not in c for c in value)):
            raise ValueError(f"choices: give a list of 2 to {len(LETTERS)} one-line strings")
        letters = LETTERS[: len(value)]
        answer = record.get("answer")
        if not (isinstance(answer, str) and len(answer.strip()) == 1 and answer.strip().upper() in letters):
            raise ValueError(f"answer {answer!r} is not one of the choices' letters {letters[0]}–{letters[-1]}")
        question, expected = _question(prompt, value), (answer.strip().upper(),)
    elif kind == "contains":
        texts = [value] if isinstance(value, str) else value
        if not (isinstance(texts, list) and texts and all(isinstance(t, str) and t for t in texts)):
            raise ValueError("contains: give a non-empty string or a list of them")
        question, expected = prompt, tuple(texts)
    else:
        if kind == "answer" and isinstance(value, (int, float)) and not isinstance(value, bool):
            value = str(value)
        if not isinstance(value, str) or not value.strip():
            raise ValueError(f"{kind}: give a non-empty string")
        if kind == "regex":
            try:
                re.compile(value)
            except re.error as e:
                raise ValueError(f"regex {value!r} does not compile: {e}") from None
        question, expected = prompt, (value,)
    system = record.get("system")
    if system is not None and not isinstance(system, str):
        raise ValueError("system: give a string")
    max_tokens = record.get("max_tokens", DEFAULT_MAX_TOKENS)
    if not (isinstance(max_tokens, int) and not isinstance(max_tokens, bool) and max_tokens > 0):
        raise ValueError(f"max_tokens: give a whole number of at least 1, not {max_tokens!r}")
    before = record.get("messages", [])
    if not (isinstance(before, list) and all(
            isinstance(m, dict) and set(m) == {"role", "content"} and m["role"] in ("user", "assistant")
            and isinstance(m["content"], str) for m in before)):
        raise ValueError('messages: give a list of {"role": "user" or "assistant", "content": TEXT}')
    item_id = record.get("id", f"line {number}")
    if not isinstance(item_id, (str, int)) or isinstance(item_id, bool) or not str(item_id).strip():
        raise ValueError("id: give a string or a number")
    return Item(str(item_id), question, kind, expected, system, max_tokens, letters, tuple(before))


def parse(text: str, where: str) -> list[Item]:
    """Every item of a set; the first bad line is one UsageError naming it."""
    items, problems, seen = [], [], {}
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            try:
                record = json.loads(line)
            except ValueError as e:
                raise ValueError(f"not JSON ({e})") from None
            item = _item(record, number)
            if item.id in seen:
                raise ValueError(f"id {item.id!r} is also on line {seen[item.id]}")
        except ValueError as e:
            problems.append(f"{where}:{number}: {e}")
            continue
        seen[item.id] = number
        items.append(item)
    if problems:
        more = f" (and {len(problems) - 1} more bad line{'s' * (len(problems) > 2)})" if len(problems) > 1 else ""
        raise UsageError(problems[0] + more)
    if not items:
        raise UsageError(f"{where} has no items: one JSON object per line, each with a prompt and a check")
    return items


def load(path: str | None = None) -> tuple[str, list[Item]]:
    """(the set's name, its items): the file given, or the built-in set."""
    source = Path(path) if path else BUILTIN
    try:
        text = source.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise UsageError(f"no eval set at {source}") from None
    except IsADirectoryError:
        raise UsageError(f"{source} is a folder; give a .jsonl file") from None
    except UnicodeDecodeError:
        raise UsageError(f"{source} is not UTF-8 text: an eval set is JSON lines") from None
    return ("built-in" if path is None else str(source)), parse(text, str(source) if path else source.name)
