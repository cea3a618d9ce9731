"""Tool calls as each model family writes them, read out of the answer as it streams.

A model asked to call a tool writes the call in its own syntax, which its chat template
shows it: Hermes, Qwen2.5, Qwen3, SmolLM3 and many more put JSON in `<tool_call>` tags,
Qwen3-Coder and Seed-OSS put XML-ish `<function=NAME><parameter=KEY>` in them, Llama 3.x
answers with bare JSON, Mistral writes `[TOOL_CALLS]`, gpt-oss addresses a harmony message
`to=functions.NAME`, DeepSeek, Granite, Phi-4-mini and Command R7B have tags of their own.
This module recognises the format from the template and the vocabulary (never from a model's name),
turns calls in the answer into `ToolCall` events as they complete (text before and after
passes through, text that may start a call is held until it is sure either way), and
writes the grammar that forces one call in the format's syntax (tool_choice "required" or
a named function). A call inside a thought is never a call: only the answer is read.
"""

from __future__ import annotations

import json
import re
import secrets
import string
from dataclasses import dataclass, field
from typing import Iterable

from roost.backends import grammar
from roost.backends.base import ANSWER, ToolCall
from roost.backends.grammar import literal
from roost.backends.reasoning import CALL, CALLEE, COMMENTARY, Piece
from roost.errors import UsageError


class _Malformed(ValueError):
    """Text that opened a call but is not one: it is given back as the text it was."""


@dataclass(frozen=True)
class ToolFormat:
    name: str
    # What starts a run of calls in the answer ("{" is also the call's first character).
    opens: tuple[str, ...] = ()
    # What ends the run; None: the end of the calls' JSON does.
    close: str | None = None
    # How calls are written inside the run: a key of _BODIES.
    body: str = "tagged"
    # Calls only where the answer starts with them (Llama 3's bare JSON would otherwise
    # take any JSON an answer quotes for a call).
    leading: bool = False
    # What in a template (any) or a vocabulary's single tokens (all) says a model writes this format.
    signs: tuple[str, ...] = field(default=(), compare=False)
    tokens: tuple[str, ...] = field(default=(), compare=False)


HERMES = ToolFormat("hermes", ("<tool_call>",), "</tool_call>", signs=("<tool_call>",),
                    tokens=("<tool_call>", "</tool_call>"))
# Qwen3-Coder's calls are in the same tags as Hermes's; the body parser reads JSON and XML
# alike, the grammar writes the XML this model was trained on.
QWEN3_CODER = ToolFormat("qwen3-coder", ("<tool_call>",), "</tool_call>", signs=("<parameter=",))
SEED_OSS = ToolFormat("seed-oss", ("<seed:tool_call>",), "</seed:tool_call>", signs=("<seed:tool_call>",))
LLAMA3 = ToolFormat("llama3", ("<|python_tag|>", "{"), body="llama3", leading=True,
                    signs=('{"name": function name, "parameters"', "<|python_tag|>"), tokens=("<|python_tag|>",))
# Mistral 7B v0.3, Nemo: a JSON list of calls. Mistral Small 3.2, Magistral, Ministral 3:
# NAME[ARGS]{...} after each [TOOL_CALLS]. One parser reads both.
MISTRAL = ToolFormat("mistral", ("[TOOL_CALLS]",), body="mistral", signs=("[TOOL_CALLS]",), tokens=("[TOOL_CALLS]",))
MISTRAL_ARGS = ToolFormat("mistral-args", ("[TOOL_CALLS]",), body="mistral", signs=("[ARGS]",),
                          tokens=("[TOOL_CALLS]", "[ARGS]"))
# DeepSeek R1 (and its distills' template) writes "function<｜tool▁sep｜>NAME\n```json\n{...}\n```";
# V3.1 "NAME<｜tool▁sep｜>{...}". One parser reads both; the sign tells the grammar which.
DEEPSEEK_R1 = ToolFormat("deepseek-r1", ("<｜tool▁calls▁begin｜>",), "<｜tool▁calls▁end｜>", "deepseek",
                         signs=("tool['type'] + '<｜tool▁sep｜>'",))
DEEPSEEK = ToolFormat("deepseek", ("<｜tool▁calls▁begin｜>",), "<｜tool▁calls▁end｜>", "deepseek",
                      signs=("<｜tool▁calls▁begin｜>",), tokens=("<｜tool▁calls▁begin｜>",))
# Phi-4-mini, as llama.cpp's own template for it words it (Microsoft's takes no `tools`).
PHI4_MINI = ToolFormat("phi4-mini", ("<|tool_call|>",), "<|/tool_call|>", signs=("<|/tool_call|>",),
                       tokens=("<|tool_call|>", "<|/tool_call|>"))
GRANITE = ToolFormat("granite", ("<|tool_call|>",), body="list", signs=("<|tool_call|>",), tokens=("<|tool_call|>",))
COMMAND_R7B = ToolFormat("command-r7b", ("<|START_ACTION|>",), "<|END_ACTION|>", "list",
                         signs=("<|START_ACTION|>",), tokens=("<|START_ACTION|>", "<|END_ACTION|>"))
# Harmony's calls are messages, not tags in the answer: the reasoning splitter reads their
# headers and hands the parser the function's name (CALLEE) and the message (CALL).
HARMONY = ToolFormat("harmony", body="harmony", signs=("<|call|>",), tokens=("<|call|>", "<|constrain|>"))

# The more particular first: Seed-OSS's and Qwen3-Coder's templates name <tool_call> too,
# Magistral's [TOOL_CALLS] too, R1's the DeepSeek tags too, Phi-4-mini's Granite's <|tool_call|>.
FORMATS = (HARMONY, SEED_OSS, QWEN3_CODER, HERMES, DEEPSEEK_R1, DEEPSEEK, MISTRAL_ARGS, MISTRAL, PHI4_MINI,
           GRANITE, COMMAND_R7B, LLAMA3)
# Every marker that, as one token of a vocabulary, says which format a model writes.
SIGNS = tuple(dict.fromkeys(t for fmt in FORMATS for t in fmt.tokens))


def detect(template: str | None, specials: Iterable[str] = ()) -> ToolFormat | None:
    """Which tool-call format a model writes, from its chat template (and its vocabulary's
    special tokens where the template is not enough); None: no tool support known."""
    template, tokens = template or "", set(specials)
    for fmt in FORMATS:
        if any(s in template for s in fmt.signs):
            return fmt
    for fmt in FORMATS:
        if fmt.tokens and tokens.issuperset(fmt.tokens):
            return fmt
    return None


# -- the calls inside a run, per body -------------------------------------------------------
# Each takes the run's text so far and gives the calls it holds, as (name, arguments), with
# where they end; None while they are not complete; _Malformed for what cannot be a call.

_DECODER = json.JSONDecoder()


def _json_at(text: str, at: int = 0) -> tuple[object, int] | None:
    """The JSON value starting at `at` (after whitespace) and where it ends; None while it is
    not whole (or not JSON: a run without a closing tag is only judged at the end)."""
    at = len(text) - len(text[at:].lstrip())
    try:
        return _DECODER.raw_decode(text, at)
    except json.JSONDecodeError:
        return None


def _call(obj: object) -> tuple[str, dict]:
    """One call as JSON formats write it: its name and arguments, under the keys models use
    (Command R7B: tool_name and parameters; Llama 3: parameters; the rest: arguments, which
    some write as JSON text)."""
    if not isinstance(obj, dict):
        raise _Malformed
    name = obj.get("name", obj.get("tool_name"))
    args = obj.get("arguments", obj.get("parameters", {}))
    if isinstance(args, str):
        try:
            args = json.loads(args or "{}")
        except json.JSONDecodeError:
            raise _Malformed from None
    if not isinstance(name, str) or not name or not isinstance(args, dict):
        raise _Malformed
    return name, args


def _tagged(text: str, types: dict) -> tuple[list, int] | None:
    """A call in tags (Hermes's, Qwen3-Coder's...): JSON, or Qwen3-Coder's XML."""
    if text.lstrip().startswith("<function="):
        return _xml(text, types)
    value = _json_at(text)
    if value is None:
        return None
    return [_call(value[0])], value[1]


_FUNCTION = re.compile(r"\s*<function=([^>\s]+)>(.*?)</function>", re.S)
_PARAMETER = re.compile(r"\s*<parameter=([^>]+)>(.*?)</parameter>", re.S)


def _xml(text: str, types: dict) -> tuple[list, int] | None:
    """Qwen3-Coder's and Seed-OSS's <function=NAME><parameter=KEY>VALUE</parameter></function>:
    a value is text, typed by the tool's schema (a number, a boolean, an object... read as
    JSON; a string, or text that is not JSON, as it is)."""
    calls, at = [], 0
    while m := _FUNCTION.match(text, at):
        name, inner, args, pos = m[1], m[2], {}, 0
        while p := _PARAMETER.match(inner, pos):
            key = p[1].strip()
            args[key] = _typed(p[2], types.get(name, {}).get(key))
            pos = p.end()
        if inner[pos:].strip():
            raise _Malformed
        calls.append((name, args))
        at = m.end()
    return (calls, at) if calls else None


def _typed(value: str, kind: object) -> object:
    # The templates write a value between newlines: those frame it.
    value = value.removeprefix("\n").removesuffix("\n")
    kinds = kind if isinstance(kind, list) else [kind]
    if "string" in kinds:
        return value
    try:
        return json.loads(value)
    except json.JSONDecodeError:
        return value


def _llama3(text: str, types: dict) -> tuple[list, int] | None:
    value = _json_at(text)
    if value is None:
        return None
    obj, end = value
    if not isinstance(obj, dict) or "name" not in obj or not {"parameters", "arguments"} & obj.keys():
        raise _Malformed  # JSON the answer begins with, not a call
    return [_call(obj)], end


def _list(text: str, types: dict) -> tuple[list, int] | None:
    value = _json_at(text)
    if value is None:
        return None
    calls = value[0] if isinstance(value[0], list) else [value[0]]
    if not calls:
        raise _Malformed
    return [_call(c) for c in calls], value[1]


_MISTRAL_NAME = re.compile(r"\s*([^\s\[\]{]+)(?:\[CALL_ID\][^\[]*)?\[ARGS\]")


def _mistral(text: str, types: dict) -> tuple[list, int] | None:
    if text.lstrip().startswith("["):
        return _list(text, types)
    m = _MISTRAL_NAME.match(text)
    if m is None:
        if "[ARGS]" in text or "{" in text:
            raise _Malformed
        return None
    value = _json_at(text, m.end())
    if value is None:
        return None
    if not isinstance(value[0], dict):
        raise _Malformed
    return [(m[1], value[0])], value[1]


_DEEPSEEK_CALL = re.compile(
    r"\s*<｜tool▁call▁begin｜>\s*(?:function\s*<｜tool▁sep｜>\s*([^\s<]+)\s*```(?:json)?\s*(.*?)\s*```"
    r"|([^\s<]+?)\s*<｜tool▁sep｜>(.*?))\s*<｜tool▁call▁end｜>", re.S)


def _deepseek(text: str, types: dict) -> tuple[list, int] | None:
    calls, at = [], 0
    while m := _DEEPSEEK_CALL.match(text, at):
        name, args = (m[1], m[2]) if m[1] else (m[3], m[4])
        try:
            calls.append(_call({"name": name, "arguments": json.loads(args)}))
        except json.JSONDecodeError:
            raise _Malformed from None
        at = m.end()
    return (calls, at) if calls else None


_BODIES = {"tagged": _tagged, "llama3": _llama3, "list": _list, "mistral": _mistral, "deepseek": _deepseek}
_ID_CHARS = string.ascii_letters + string.digits


def call_id() -> str:
    return "call_" + "".join(secrets.choice(_ID_CHARS) for _ in range(24))


def _arguments(args: dict) -> str:
    return json.dumps(args, ensure_ascii=False, separators=(",", ":"))


def _parameter_types(tools: Iterable[dict]) -> dict[str, dict[str, object]]:
    """Each function's parameters' JSON types, from OpenAI's tools list."""
    types = {}
    for tool in tools:
        fn = tool.get("function", tool)
        props = (fn.get("parameters") or {}).get("properties") or {}
        types[fn.get("name")] = {k: v.get("type") for k, v in props.items() if isinstance(v, dict)}
    return types


class ToolCallParser:
    """Fed the loop's pieces after the reasoning splitter, in order: thought and commentary
    pass through untouched; the answer passes through except its calls, which come out as
    whole ToolCall events (index from 0). Whitespace that only frames a call goes with it.
    `tools` (OpenAI's list) types an XML call's values by their schema."""

    def __init__(self, fmt: ToolFormat, tools: Iterable[dict] = ()):
        self.fmt = fmt
        self._types = _parameter_types(tools)
        self._pending = ""  # answer text not said yet: it may be the start of a call
        self._lead = ""  # the whitespace before the run of calls being read
        self._open = ""  # the tag that opened it
        self._body: str | None = None  # that run's text so far; None: outside any
        self._ws = ""  # whitespace at the end of what was said: dropped if a call follows
        self._trim = False  # after a call: whitespace before the next text is dropped
        self._started = False  # the answer has shown text (a leading format's call must come first)
        self._callee: str | None = None  # harmony: the function the message being read calls
        self._args = ""
        self._index = 0

    def feed(self, piece: Piece) -> list[Piece | ToolCall]:
        out: list[Piece | ToolCall] = []
        if piece.kind == CALL:
            self._args += piece.text
            return out
        self._end_message(out)
        if piece.kind == CALLEE:
            self._callee = piece.text
        elif piece.kind == ANSWER:
            self._pending += piece.text
            while self._inside(out) if self._body is not None else self._outside(out):
                pass
        else:
            if self._body is None:  # a tag's start cut by a thought is no tag
                self._say(self._pending, out)
                self._pending = ""
            out.append(piece)
        return out

    def flush(self) -> list[Piece | ToolCall]:
        """At the end: held text, and a run of calls left open: its calls where they are
        whole (a model may end its turn in place of the closing tag), else the text as
        written (a call cut off by the token limit)."""
        out: list[Piece | ToolCall] = []
        self._end_message(out)
        if self._body is not None:
            try:
                parsed = _BODIES[self.fmt.body](self._body, self._types)
            except _Malformed:
                parsed = None
            if parsed is not None and not self._body[parsed[1]:].strip():
                self._calls(parsed[0], out)
            else:
                self._say(self._lead + self._open + self._body, out)
            self._body = None
        self._say(self._pending, out)
        if self._ws and not self._trim:
            _add(out, Piece(ANSWER, self._ws))
        self._pending = self._ws = ""
        return out

    def _outside(self, out: list) -> bool:
        """Says the answer's text up to a call's opening; whether one opened."""
        opens, text = self.fmt.opens, self._pending
        if self.fmt.leading:
            if self._started:
                return self._said(text, out)
            start = text.lstrip()
            tag = next((t for t in opens if start.startswith(t)), None)
            if tag is not None:
                return self._enter(text[:len(text) - len(start)], tag, start[len(tag):])
            if not start or any(t.startswith(start) for t in opens):
                return False  # whitespace, or the start of a tag: not sure yet
            return self._said(text, out)
        hits = [(at, -len(t), t) for t in opens if (at := text.find(t)) >= 0]
        if hits:
            at, _, tag = min(hits)
            self._say(text[:at], out)
            return self._enter("", tag, text[at + len(tag):])
        keep = max((k for t in opens for k in range(min(len(t) - 1, len(text)), 0, -1) if text.endswith(t[:k])),
                   default=0)
        self._say(text[:len(text) - keep], out)
        self._pending = text[len(text) - keep:]
        return False

    def _said(self, text: str, out: list) -> bool:
        self._say(text, out)
        self._pending = ""
        return False

    def _enter(self, lead: str, tag: str, rest: str) -> bool:
        # Whitespace before a call frames it: it goes with the call, or back if no call comes.
        self._lead, self._ws = self._ws + lead, ""
        self._open, self._body = ("", "{") if tag == "{" else (tag, "")
        self._pending = rest
        return True

    def _inside(self, out: list) -> bool:
        """Reads the run of calls on; whether it ended (its calls out, or its text)."""
        searched = max(0, len(self._body) - len(self.fmt.close or ""))
        new, self._body, self._pending = self._pending, self._body + self._pending, ""
        close, parse = self.fmt.close, _BODIES[self.fmt.body]
        if close is not None:
            at = self._body.find(close, searched)
            if at < 0:
                return False
            run, self._pending = self._body[:at], self._body[at + len(close):]
            try:
                parsed = parse(run, self._types)
            except _Malformed:
                parsed = None
            if parsed is not None and not run[parsed[1]:].strip():
                self._calls(parsed[0], out)
            else:
                self._say(self._lead + self._open + run + close, out)
        else:
            if "}" not in new and "]" not in new:
                return False  # JSON ends with one of these: no need to read it all again
            try:
                parsed = parse(self._body, self._types)
            except _Malformed:
                self._say(self._lead + self._open + self._body, out)
                self._body = None
                return True
            if parsed is None:
                return False
            self._calls(parsed[0], out)
            self._pending = self._body[parsed[1]:]
        self._body = None
        return True

    def _calls(self, calls: list[tuple[str, dict]], out: list) -> None:
        for name, args in calls:
            out.append(ToolCall(self._index, call_id(), name, _arguments(args)))
            self._index += 1
        self._started = self._trim = True
        self._ws = ""

    def _end_message(self, out: list) -> None:
        """Harmony: a call message ends where another piece begins, or the stream does.
        Arguments that are not a JSON object stay what the message was: commentary."""
        try:
            args = json.loads(self._args) if self._callee is not None else None
        except json.JSONDecodeError:
            args = None
        if isinstance(args, dict):
            self._calls([(self._callee, args)], out)
        elif self._args:
            out.append(Piece(COMMENTARY, self._args))
        self._callee, self._args = None, ""

    def _say(self, text: str, out: list) -> None:
        """Answer text, its trailing whitespace held back until more text comes."""
        if self._trim:
            text = text.lstrip()
            if not text:
                return
            self._trim = False
        text = self._ws + text
        body = text.rstrip()
        self._ws = text[len(body):]
        if body:
            self._started = True
            _add(out, Piece(ANSWER, body))


# -- the grammar of one call -----------------------------------------------------------------

# An XML value as a grammar lets it run: no "</" (a value's end).
_TEXT = 'text ::= ([^<] | "<" [^/])*'


def call_grammar(fmt: ToolFormat, tools: list[dict], name: str | None = None) -> str:
    """A GBNF grammar forcing exactly one call in fmt's syntax to one of `tools` (OpenAI's
    tools list), or to `name`: its arguments match that function's `parameters` schema
    (backends/grammar.py's conversion; UsageError names what it cannot keep). The loop
    closes a thought in the prompt under a grammar: the call is the answer's first text."""
    functions = [t.get("function", t) for t in tools]
    if name is not None:
        functions = [f for f in functions if f.get("name") == name]
        if not functions:
            raise UsageError(f"tool_choice names {name!r}, which is not among the tools")
    if not functions:
        raise UsageError("a call is required but no tools were given")
    rules, calls = [], []
    for i, fn in enumerate(functions):
        call, more = _CALL_SYNTAX[fmt.name](fn, f"t{i}-")
        calls.append(call)
        rules += more
    return "\n".join([f"root ::= {' | '.join(calls)}", *dict.fromkeys(rules)]) + "\n"


def _schema_rule(schema: dict, prefix: str) -> tuple[str, list[str]]:
    """The rule a JSON schema's values match, and the rules it needs, named apart by prefix."""
    gbnf = _prefixed(grammar.to_gbnf(schema), prefix)
    return f"{prefix}root", [line for line in gbnf.splitlines() if line.strip()]


def _prefixed(gbnf: str, prefix: str) -> str:
    """gbnf with every rule named prefix + its name (literals, classes and counts kept)."""
    return re.sub(r'"(?:\\.|[^"\\])*"|\[(?:\\.|[^\]\\])*\]|\{[^}]*\}|[A-Za-z0-9-]+',
                  lambda m: m[0] if m[0][0] in '"[{' else prefix + m[0], gbnf)


def _parameters(fn: dict) -> dict:
    return fn.get("parameters") or {"type": "object", "properties": {}}


def _framed_call(before: str, after: str, keys: tuple[str, str] = ("name", "arguments"), extra: str = ""):
    """Formats that write the name in the call's JSON: before {"name": NAME, "arguments": {...}}
    after, the keys as the format names them (`extra`: what comes first in the object)."""
    def syntax(fn: dict, prefix: str) -> tuple[str, list[str]]:
        args, rules = _schema_rule(_parameters(fn), prefix)
        head = before + "{" + extra + f"{json.dumps(keys[0])}: {json.dumps(fn['name'])}, {json.dumps(keys[1])}: "
        return f"{literal(head)} {args} {literal('}' + after)}", rules
    return syntax


def _named_call(before: str, between: str, after: str):
    """Formats that write the name outside the arguments' JSON: before NAME between {...} after."""
    def syntax(fn: dict, prefix: str) -> tuple[str, list[str]]:
        args, rules = _schema_rule(_parameters(fn), prefix)
        return f"{literal(before + fn['name'] + between)} {args} {literal(after)}", rules
    return syntax


def _xml_call(before: str, after: str, framing: str):
    """Qwen3-Coder's and Seed-OSS's XML: each parameter in the schema's order, the required
    ones always, a string as text (one of its enum's where it has one), anything else as
    its JSON. `framing`: what the template writes around a value."""
    def syntax(fn: dict, prefix: str) -> tuple[str, list[str]]:
        schema = _parameters(fn)
        required, parts, rules = set(schema.get("required", [])), [], [_TEXT]
        for j, (key, sub) in enumerate((schema.get("properties") or {}).items()):
            shape = set(sub) - {"type", "description", "title"} if isinstance(sub, dict) else set()
            if isinstance(sub, dict) and sub.get("type") == "string":
                if shape - {"enum"}:
                    raise UsageError(f"the tool {fn['name']!r}'s parameter {key!r} is a string with "
                                     f"{', '.join(sorted(shape))}, which this model's call syntax cannot keep")
                value = " | ".join(literal(v) for v in sub["enum"]) if "enum" in shape else "text"
            else:
                value, more = _schema_rule(sub, f"{prefix}p{j}-")
                rules += more
            opened, closed = literal(f"<parameter={key}>{framing}"), literal(f"{framing}</parameter>\n")
            part = f"{opened} ({value}) {closed}"
            parts.append(part if key in required else f"({part})?")
        head, tail = literal(f"{before}<function={fn['name']}>\n"), literal(f"</function>\n{after}")
        return " ".join([head, *parts, tail]), rules
    return syntax

_CALL_SYNTAX = {
    "hermes": _framed_call("<tool_call>\n", "\n</tool_call>"),
    "qwen3-coder": _xml_call("<tool_call>\n", "</tool_call>", "\n"),
    "seed-oss": _xml_call("<seed:tool_call>\n", "</seed:tool_call>", ""),
    "llama3": _framed_call("", "", ("name", "parameters")),
    "mistral": _framed_call("[TOOL_CALLS][", "]"),
    "mistral-args": _named_call("[TOOL_CALLS]", "[ARGS]", ""),
    "deepseek-r1": _named_call("<｜tool▁calls▁begin｜><｜tool▁call▁begin｜>function<｜tool▁sep｜>", "\n```json\n",
                               "\n```<｜tool▁call▁end｜><｜tool▁calls▁end｜>"),
    "deepseek": _named_call("<｜tool▁calls▁begin｜><｜tool▁call▁begin｜>", "<｜tool▁sep｜>",
                            "<｜tool▁call▁end｜><｜tool▁calls▁end｜>"),
    "phi4-mini": _framed_call("<|tool_call|>", "<|/tool_call|>"),
    "granite": _framed_call("<|tool_call|>[", "]"),
    "command-r7b": _framed_call("<|START_ACTION|>[\n    ", "\n]<|END_ACTION|>", ("tool_name", "parameters"),
                                extra='"tool_call_id": "0", '),
    # The prompt ends with "<|start|>assistant": the call's header comes next.
    "harmony": _named_call("<|channel|>commentary to=functions.", " <|constrain|>json<|message|>", ""),
}


def _add(out: list, piece: Piece) -> None:
    if out and isinstance(out[-1], Piece) and out[-1].kind == piece.kind:
        out[-1] = Piece(piece.kind, out[-1].text + piece.text)
    else:
        out.append(piece)
