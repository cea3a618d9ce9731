"""JSON schemas for structured output, as clients send them: what the grammar must hold the
demo model to (tests/test_structured_output.py) and what bench/structured_output.py measures.
SmolLM2-135M follows none of them unaided, so an answer that matches is the grammar's doing.
A schema that lets an object have any number of keys of its choosing (additionalProperties
with a schema) also lets a small model write keys until max_tokens, an answer that is not
whole JSON: the demo does (bench/structured_output.py found it so), which says nothing of
the grammar, so none is in the set."""

PERSON = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "minLength": 1, "maxLength": 24},
        "age": {"type": "integer", "minimum": 0, "maximum": 120},
        "email": {"type": "string", "pattern": "^[a-z]{1,10}@[a-z]{1,10}\\.(com|org)$"},
    },
    "required": ["name", "age"],
    "additionalProperties": False,
}

SCHEMAS = {
    "flat object": PERSON,
    "nested objects": {
        "type": "object",
        "properties": {
            "order": {"type": "object", "properties": {
                "id": {"type": "integer", "minimum": 1000, "maximum": 9999},
                "customer": {"type": "object", "properties": {
                    "name": {"type": "string", "maxLength": 20},
                    "vip": {"type": "boolean"}}, "required": ["name", "vip"]}},
                "required": ["id", "customer"]},
        },
        "required": ["order"],
    },
    "array of strings, bounded": {"type": "array", "items": {"type": "string", "maxLength": 12},
                                  "minItems": 2, "maxItems": 4},
    "array of objects": {"type": "array", "minItems": 1, "maxItems": 3, "items": {
        "type": "object", "properties": {"x": {"type": "number"}, "y": {"type": "number"}}, "required": ["x", "y"]}},
    "enum": {"type": "object", "properties": {
        "mood": {"enum": ["happy", "sad", "angry", "calm"]},
        "level": {"enum": [1, 2, 3, None]}}, "required": ["mood", "level"]},
    "const": {"type": "object", "properties": {"version": {"const": "v2"}, "ok": {"type": "boolean"}},
              "required": ["version", "ok"]},
    "optional properties only": {"type": "object", "properties": {
        "a": {"type": "integer"}, "b": {"type": "string", "maxLength": 8}, "c": {"type": "null"}}},
    "integer with bounds": {"type": "integer", "minimum": -50, "maximum": 75},
    "integer, exclusive bounds": {"type": "object", "properties": {
        "n": {"type": "integer", "exclusiveMinimum": 10, "exclusiveMaximum": 200}}, "required": ["n"]},
    "integer, minimum only": {"type": "array", "items": {"type": "integer", "minimum": 7}, "minItems": 3,
                              "maxItems": 3},
    "negative integers": {"type": "integer", "maximum": -1000},
    "string lengths": {"type": "object", "properties": {
        "code": {"type": "string", "minLength": 3, "maxLength": 3},
        "note": {"type": "string", "minLength": 5, "maxLength": 30}}, "required": ["code", "note"]},
    "string patterns": {"type": "object", "properties": {
        "plate": {"type": "string", "pattern": "^[A-Z]{2}-\\d{3}$"},
        "hex": {"type": "string", "pattern": "#[0-9a-f]{6}"},
        "word": {"type": "string", "pattern": "^[^ ]{2,8}$"}}, "required": ["plate", "hex", "word"]},
    "formats": {"type": "object", "properties": {
        "day": {"type": "string", "format": "date"},
        "at": {"type": "string", "format": "date-time"},
        "id": {"type": "string", "format": "uuid"}}, "required": ["day", "at", "id"]},
    "anyOf": {"type": "object", "properties": {
        "value": {"anyOf": [{"type": "integer", "minimum": 0, "maximum": 9}, {"type": "string", "maxLength": 5},
                            {"type": "null"}]}}, "required": ["value"]},
    "type list": {"type": "object", "properties": {"maybe": {"type": ["boolean", "null"]}}, "required": ["maybe"]},
    "$defs and $ref": {
        "$defs": {"point": {"type": "object", "properties": {"x": {"type": "integer", "minimum": 0, "maximum": 99},
                                                             "y": {"type": "integer", "minimum": 0, "maximum": 99}},
                            "required": ["x", "y"], "additionalProperties": False}},
        "type": "object", "properties": {"from": {"$ref": "#/$defs/point"}, "to": {"$ref": "#/$defs/point"}},
        "required": ["from", "to"]},
    "tuple (prefixItems)": {"type": "array", "prefixItems": [{"type": "string", "maxLength": 6}, {"type": "integer"},
                                                             {"type": "boolean"}]},
    "any object": {"type": "object"},
}

PROMPTS = ["Tell me about the weather in Paris today.", "Write a short poem about the sea."]
