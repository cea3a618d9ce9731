"""JSON schemas as llama.cpp grammars (GBNF): what makes a structured answer match its schema.

The conversion is llama-cpp-python's own (`llama_cpp.llama_grammar.SchemaConverter`, a port
of llama.cpp's json-schema-to-grammar), with three things it gets wrong for JSON put right:
a string's characters exclude the control characters JSON does not allow unescaped, a
pattern's `.` and `[^...]` exclude the quote and backslash too, and an integer's bounds are
kept (the converter drops them). What it cannot express, or would drop so that an answer
could break the schema, is refused: `UsageError` with one line naming the part, never a
grammar that promises less than the schema says.

The grammar is the only source of the JSON: a model that cannot follow a schema still
answers with JSON that matches it (up to max_tokens: an answer cut short is not whole)."""

from __future__ import annotations

import functools
import json
import math
import re
from typing import Any


from roost.errors import UsageError

__all__ = ["to_gbnf", "json_object_gbnf", "framed", "literal"]

# Keywords that say nothing about what the answer may be.
_ANNOTATIONS = {"title", "description", "default", "examples", "$schema", "$id", "$comment",
                "deprecated", "readOnly", "writeOnly"}
_TYPES = {"object", "array", "string", "integer", "number", "boolean", "null"}
# What each type may say beyond its type (and the annotations), as the grammar keeps it.
_KEYWORDS = {
    "object": {"properties", "required", "additionalProperties"},
    "array": {"items", "prefixItems", "minItems", "maxItems"},
    "string": {"minLength", "maxLength", "pattern", "format"},
    "integer": {"minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum"},
    "number": set(),
    "boolean": set(),
    "null": set(),
}
_FORMATS = {"date", "time", "date-time", "uuid"}
# A character in a JSON string as written out: no quote, backslash or control character
# unescaped (the converter's own `char` lets control characters through), or an escape.
_CHAR = r'[^"\\\x7F\x00-\x1F] | "\\" (["\\/bfnrt] | "u" [0-9a-fA-F] [0-9a-fA-F] [0-9a-fA-F] [0-9a-fA-F])'
# A pattern's `.`: any character a JSON string holds unescaped.
_DOT = r'[^"\\\x7F\x00-\x1F]'
# Regex escapes for classes of characters, as the characters a JSON string holds unescaped
# (\s: a space; tabs and newlines would need escaping).
_CLASS_ESCAPES = {"d": "0-9", "w": "a-zA-Z0-9_", "s": " "}


def to_gbnf(schema: dict) -> str:
    """The GBNF grammar whose root matches exactly the JSON texts `schema` allows (a JSON
    value, then at most one space). UsageError names the first part it cannot keep."""
    if not isinstance(schema, dict):
        raise UsageError("a schema is a JSON object")
    _check(schema, [], schema)
    converter = _converter_class()(prop_order={}, allow_fetch=False, dotall=False, raw_pattern=False)
    try:
        converter.visit(converter.resolve_refs(schema, ""), "")
    except (AssertionError, ValueError, KeyError, RecursionError) as e:
        raise UsageError(f"the schema cannot be made a grammar: {e}") from None
    return converter.format_grammar()


def json_object_gbnf() -> str:
    """Any JSON object: OpenAI's response_format json_object."""
    return to_gbnf({"type": "object"})


def framed(gbnf: str, before: str, after: str) -> str:
    """A grammar of the text `before`, then what gbnf's root matches, then the text `after`
    (a tool call's JSON between its markers). gbnf's root is renamed, references included."""
    renamed = re.sub(r'"(?:\\.|[^"\\])*"|\[(?:\\.|[^\]\\])*\]|[A-Za-z0-9-]+',
                     lambda m: "framed-root" if m.group(0) == "root" else m.group(0), gbnf)
    return f"root ::= {literal(before)} framed-root {literal(after)}\n{renamed}"


def literal(text: str) -> str:
    """text as a GBNF literal, quotes included."""
    def escape(c: str) -> str:
        if c in '"\\':
            return "\\" + c
        if c in "\n\r\t":
            return {"\n": r"\n", "\r": r"\r", "\t": r"\t"}[c]
        return f"\\x{ord(c):02X}" if ord(c) < 0x20 or ord(c) == 0x7F else c

    return '"' + "".join(escape(c) for c in text) + '"'


@functools.cache
def _converter_class() -> type:
    """llama-cpp-python's converter with JSON's string characters and integer bounds.

    Built on first use: llama_cpp loads libllama, which `roost run --remote` never needs."""
    from llama_cpp.llama_grammar import RESERVED_NAMES, SchemaConverter

    class _Converter(SchemaConverter):
        def _add_rule(self, name: str, rule: str) -> str:
            if name == "char":
                rule = _CHAR
            elif name == "dot":
                rule = _DOT
            return super()._add_rule(name, rule)

        def visit(self, schema: dict, name: str) -> str:
            if schema.get("type") == "integer" and _BOUNDS & schema.keys():
                lo, hi = _integer_bounds(schema)
                return self._add_rule(name + "-" if name in RESERVED_NAMES else name or "root",
                                      f"({_integer_range(lo, hi)}) space")
            if schema.get("type") == "string" and "pattern" in schema:
                schema = {**schema, "pattern": _json_safe_pattern(schema["pattern"])}
            return super().visit(schema, name)

    return _Converter


_BOUNDS = {"minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum"}


def _check(schema: Any, path: list[str], root: dict) -> None:
    """Refuse what the grammar would not keep (UsageError naming it), before converting."""
    def part(*more: str) -> str:
        return "the schema" if not path and not more else f"the schema's {'.'.join([*path, *more])!r}"

    def refuse(key: str, why: str = "is not supported") -> None:
        raise UsageError(f"{part(key)} {why}")

    if not isinstance(schema, dict):
        raise UsageError(f"{part()} is {json.dumps(schema)}: roost needs a schema object there")
    keys = set(schema) - _ANNOTATIONS
    for defs in ("$defs", "definitions"):
        if defs in keys:
            if path:
                refuse(defs, "is supported at the top of the schema only")
            for name, sub in schema[defs].items():
                _check(sub, [defs, name], root)
            keys.discard(defs)
    if "$ref" in keys:
        ref = schema["$ref"]
        if not isinstance(ref, str) or not ref.startswith("#/"):
            refuse("$ref", f"is {ref!r}: only references inside the schema (#/...) are supported")
        target: Any = root
        for step in ref[2:].split("/"):
            if not isinstance(target, dict) or step not in target:
                refuse("$ref", f"is {ref!r}, which the schema does not hold")
            target = target[step]
        for key in keys - {"$ref"}:
            refuse(key, "is not supported next to $ref")
        return
    if "anyOf" in keys:
        if not isinstance(schema["anyOf"], list) or not schema["anyOf"]:
            refuse("anyOf", "must be a non-empty list")
        for key in keys - {"anyOf"}:
            refuse(key, "is not supported next to anyOf (put it in each choice)")
        for i, sub in enumerate(schema["anyOf"]):
            _check(sub, [*path, "anyOf", str(i)], root)
        return
    for key in ("enum", "const"):
        if key in keys:
            if key == "enum" and (not isinstance(schema["enum"], list) or not schema["enum"]):
                refuse("enum", "must be a non-empty list")
            for other in keys - {key, "type"}:
                refuse(other, f"is not supported next to {key}")
            return
    kind = schema.get("type")
    if isinstance(kind, list):
        for t in kind:
            if t not in _TYPES:
                refuse("type", f"has {t!r}, which is not a JSON schema type")
        for other in keys - {"type"}:
            refuse(other, "is not supported with a list of types (use anyOf)")
        return
    if kind is None:
        # The converter reads an untyped schema by what it holds; say which.
        kind = "object" if keys & _KEYWORDS["object"] else "array" if keys & _KEYWORDS["array"] else None
        if kind is None:
            if keys:
                refuse(sorted(keys)[0])
            return  # {}: any value (the converter makes it any object, which still matches)
    if kind not in _TYPES:
        refuse("type", f"is {kind!r}, which is not a JSON schema type")
    for key in sorted(keys - {"type"} - _KEYWORDS[kind]):
        refuse(key)
    if kind == "object":
        props = schema.get("properties", {})
        if not isinstance(props, dict):
            refuse("properties", "must be an object")
        for name in schema.get("required", []):
            if name not in props:
                refuse("required", f"names {name!r}, which is not in properties")
        for name, sub in props.items():
            _check(sub, [*path, "properties", name], root)
        extra = schema.get("additionalProperties")
        if isinstance(extra, dict):
            _check(extra, [*path, "additionalProperties"], root)
        elif extra is not None and not isinstance(extra, bool):
            refuse("additionalProperties", "must be true, false or a schema")
    elif kind == "array":
        items = schema.get("prefixItems", schema.get("items"))
        if isinstance(items, list):
            for key in ("minItems", "maxItems"):
                if key in keys:
                    refuse(key, "is not supported with a list of items (their number is fixed)")
            for i, sub in enumerate(items):
                _check(sub, [*path, "prefixItems" if "prefixItems" in schema else "items", str(i)], root)
        elif isinstance(items, dict):
            _check(items, [*path, "items"], root)
        elif items is not None:
            refuse("items", "must be a schema")
        elif keys & {"minItems", "maxItems"}:
            refuse(sorted(keys & {"minItems", "maxItems"})[0], "is supported only with items")
        if "items" in schema and "prefixItems" in schema:
            refuse("items", "is not supported next to prefixItems")
    elif kind == "string":
        shapes = [k for k in ("pattern", "format") if k in keys]
        if len(shapes) > 1 or (shapes and keys & {"minLength", "maxLength"}):
            refuse(shapes[-1], f"is not supported together with {', '.join(sorted(keys & {'pattern', 'format', 'minLength', 'maxLength'} - {shapes[-1]}))}")
        if "format" in keys and schema["format"] not in _FORMATS:
            refuse("format", f"is {schema['format']!r}; roost keeps {', '.join(sorted(_FORMATS))}")
        if "pattern" in keys:
            try:
                _json_safe_pattern(schema["pattern"])
            except UsageError as e:
                refuse("pattern", str(e))
    elif kind == "integer" and keys & _BOUNDS:
        lo, hi = _integer_bounds(schema)
        if lo is not None and hi is not None and lo > hi:
            refuse("minimum", f"is above the maximum: no integer fits")


def _integer_bounds(schema: dict) -> tuple[int | None, int | None]:
    """The least and greatest integer a schema allows (None: no bound)."""
    lo = hi = None
    if "minimum" in schema:
        lo = math.ceil(schema["minimum"])
    if "exclusiveMinimum" in schema:
        lo = max(lo if lo is not None else -math.inf, math.floor(schema["exclusiveMinimum"]) + 1)
    if "maximum" in schema:
        hi = math.floor(schema["maximum"])
    if "exclusiveMaximum" in schema:
        hi = min(hi if hi is not None else math.inf, math.ceil(schema["exclusiveMaximum"]) - 1)
    return lo, hi


def _integer_range(lo: int | None, hi: int | None) -> str:
    """GBNF for the integers from lo to hi as JSON writes them (no leading zeros, no -0)."""
    alts = []
    if lo is None or lo < 0:  # the negative ones: a minus, then their size
        alts.append('"-" (' + _natural_range(1 if hi is None or hi >= 0 else -hi, None if lo is None else -lo) + ")")
    if hi is None or hi >= 0:
        alts.append(_natural_range(0 if lo is None or lo < 0 else lo, hi))
    return " | ".join(f"({a})" for a in alts)


def _natural_range(lo: int, hi: int | None) -> str:
    """GBNF for the integers lo..hi (0 <= lo; hi None: up to 16 digits, so that a model
    cannot write digits until max_tokens) without leading zeros."""
    alts = []
    width = len(str(lo))
    top = hi if hi is not None else 10 ** width - 1
    for w in range(width, len(str(top)) + 1):
        a, b = max(lo, 10 ** (w - 1) if w > 1 else 0), min(top, 10 ** w - 1)
        alts.append(_same_width(str(a), str(b)))
    if hi is None:  # every number with more digits, up to the 16 the converter's own integers have
        alts.append(f"[1-9] [0-9]{{{width},15}}")
    return " | ".join(f"({a})" for a in alts)


def _same_width(lo: str, hi: str) -> str:
    """GBNF for the numbers from lo to hi, both written with the same number of digits."""
    if not lo:
        return '""'
    rest = len(lo) - 1
    tail = f" [0-9]{{{rest}}}" if rest else ""
    if lo[0] == hi[0]:
        return f'"{lo[0]}"' + (" (" + _same_width(lo[1:], hi[1:]) + ")" if rest else "")
    if lo[1:] == "0" * rest and hi[1:] == "9" * rest:
        return f"[{lo[0]}-{hi[0]}]{tail}"
    alts = [f'"{lo[0]}" (' + _same_width(lo[1:], "9" * rest) + ")"]
    if int(hi[0]) - int(lo[0]) > 1:
        alts.append(f"[{int(lo[0]) + 1}-{int(hi[0]) - 1}]{tail}")
    alts.append(f'"{hi[0]}" (' + _same_width("0" * rest, hi[1:]) + ")")
    return " | ".join(alts)


def _json_safe_pattern(pattern: str) -> str:
    """A pattern as the converter takes it (anchored at both ends: an unanchored pattern
    is matched whole, which still matches it), its character classes held to what a JSON
    string holds unescaped. UsageError says what cannot be kept."""
    if not isinstance(pattern, str):
        raise UsageError("must be a string")
    if '"' in pattern or "\\\\" in pattern:
        raise UsageError("matches a quote or backslash, which roost cannot keep")
    core = pattern[1:] if pattern.startswith("^") else pattern
    core = core[:-1] if core.endswith("$") and not core.endswith("\\$") else core
    if "^" in core.replace("[^", "") or re.search(r"(?<!\\)\$", core):
        raise UsageError("has an anchor (^ or $) inside it, which is not supported")
    out, i, in_class = [], 0, False
    while i < len(core):
        c = core[i]
        if c == "\\" and i + 1 < len(core):
            e = core[i + 1]
            if e in _CLASS_ESCAPES:
                out.append(_CLASS_ESCAPES[e] if in_class else f"[{_CLASS_ESCAPES[e]}]")
            elif e.isalnum():
                raise UsageError(f"has \\{e}, which is not supported")
            else:  # an escaped character, written as GBNF's character class writes it
                char = "\\" + e if e in "[]" else f"\\x{ord(e):02X}" if e in "-^" else e
                out.append(char if in_class else f"[{char}]")
            i += 2
            continue
        if c == "[" and not in_class:
            in_class = True
            if core.startswith("[^", i):  # a negated class leaves out what JSON escapes too
                out.append(r'[^"\\\x7F\x00-\x1F')
                i += 2
                continue
        elif c == "]" and in_class:
            in_class = False
        out.append(c)
        i += 1
    return "^(" + "".join(out) + ")$"
