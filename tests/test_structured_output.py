"""Structured output: a JSON schema held by a grammar (backends/grammar.py), on the real demo
SmolLM2 through llama.cpp (and MLX), `roost run --schema` (local and --remote), and `roost serve`'s
response_format through the official openai client. SmolLM2-135M follows no schema unaided:
every answer that parses and validates (jsonschema) is the grammar's doing."""

import contextlib
import json
import re

import jsonschema
import llama_cpp
import openai
import pytest

from conftest import served
from roost.backends import grammar, load
from roost.backends.base import Params, Plan
from roost.errors import UsageError
from schemas import PERSON, PROMPTS, SCHEMAS

# Room for every schema's JSON: the strings that have no maxLength are where a small model
# runs on, and an answer cut short would not parse.
MAX_TOKENS = 200


@pytest.fixture(scope="module")
def llama(demo_gguf):
    engine = load(demo_gguf, Plan(n_ctx=1024))
    yield engine
    engine.close()


def answer(engine, schema: dict, prompt: str = PROMPTS[0], seed: int = 1, **params):
    done = list(engine.stream([{"role": "user", "content": prompt}],
                              Params(max_tokens=MAX_TOKENS, seed=seed, schema=json.dumps(schema), **params)))[-1]
    assert done.stats.stop_reason == "stop", (done.stats.stop_reason, done.text)
    return done


def valid(text: str, schema: dict):
    value = json.loads(text)
    jsonschema.validate(value, schema)
    return value


# -- the grammar, without a model ---------------------------------------------------------


def as_regex(gbnf_alternatives: str) -> re.Pattern:
    """An integer rule's body (literals, character classes, counts) as the regex it is."""
    return re.compile(re.sub(r'"([^"]*)"', lambda m: re.escape(m.group(1)), gbnf_alternatives).replace(" ", ""))


@pytest.mark.parametrize("lo, hi", [(0, 0), (0, 9), (3, 47), (-37, 1234), (-200, -7), (99, 101), (100, 999),
                                    (None, 15), (-5, None), (12, None), (None, -120)])
def test_integer_bounds_allow_exactly_the_integers_between(lo, hi):
    rule = as_regex(grammar._integer_range(lo, hi))
    for n in range(-1500, 1500):
        inside = (lo is None or n >= lo) and (hi is None or n <= hi)
        assert bool(rule.fullmatch(str(n))) == inside, n
    # JSON's writing only: no leading zeros, no -0; without a bound, at most 16 digits (the
    # converter's own integers), so that a model cannot write digits until max_tokens
    assert not any(rule.fullmatch(s) for s in ("00", "007", "-0", "+5"))
    if lo is None or hi is None:
        assert bool(rule.fullmatch("1" * 16)) == (hi is None) and not rule.fullmatch("1" * 17)


@pytest.mark.parametrize("schema, named", [
    ({"type": "integer", "multipleOf": 3}, "'multipleOf' is not supported"),
    ({"type": "object", "properties": {"price": {"type": "number", "minimum": 0}}},
     "'properties.price.minimum' is not supported"),
    ({"type": "object", "properties": {"mail": {"type": "string", "format": "email"}}},
     "'properties.mail.format' is 'email'"),
    ({"oneOf": [{"type": "string"}, {"type": "integer"}]}, "'oneOf' is not supported"),
    ({"type": "array", "items": {"type": "integer"}, "uniqueItems": True}, "'uniqueItems' is not supported"),
    ({"type": "object", "properties": {"a": {"type": "string"}}, "required": ["a", "b"]},
     "'required' names 'b', which is not in properties"),
    ({"type": "string", "pattern": "^\\p{L}+$"}, "'pattern' has \\p"),
    ({"type": "string", "pattern": '^"quoted"$'}, "'pattern' matches a quote or backslash"),
    ({"type": "string", "pattern": "^[a-z]+$", "maxLength": 4}, "'pattern' is not supported together with maxLength"),
    ({"$ref": "https://example.com/s.json"}, "'$ref' is 'https://example.com/s.json'"),
    ({"type": "object", "properties": {"p": {"$ref": "#/$defs/missing"}}}, "which the schema does not hold"),
    ({"type": "array", "items": {"type": "object", "patternProperties": {"^x": {}}}},
     "'items.patternProperties' is not supported"),
    ({"type": "integer", "minimum": 5, "maximum": 2}, "no integer fits"),
    ({"anyOf": [{"type": "string"}], "minLength": 2}, "'minLength' is not supported next to anyOf"),
    ({"enum": []}, "'enum' must be a non-empty list"),
    ({"type": "object", "properties": {"n": {"type": "number", "not": {"const": 0}}}},
     "'properties.n.not' is not supported"),
])
def test_what_a_grammar_cannot_keep_is_refused_by_name(schema, named):
    with pytest.raises(UsageError, match=re.escape(named)) as e:
        grammar.to_gbnf(schema)
    assert "\n" not in str(e.value)


def test_framed_puts_the_grammar_between_two_texts(llama):
    body = grammar.framed(grammar.json_object_gbnf(), '<tool_call>\n"x"', "\n</tool_call>")
    assert body.startswith('root ::= "<tool_call>\\n\\"x\\"" framed-root "\\n</tool_call>"\n')
    assert "\nframed-root ::= object\n" in body and "\nroot ::=" not in body
    # llama.cpp's own parser takes it (a grammar it cannot parse gives no sampler)
    sampler = llama_cpp.llama_sampler_init_grammar(llama._llm._model.vocab, body.encode(), b"root")
    assert sampler
    llama_cpp.llama_sampler_free(sampler)


# -- answers ------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["flat object", "nested objects", "enum", "integer with bounds", "string patterns",
                                  "$defs and $ref", "anyOf"])
def test_answers_match_their_schema(llama, name):
    for seed in (1, 2):
        valid(answer(llama, SCHEMAS[name], seed=seed).text, SCHEMAS[name])


@pytest.mark.slow
@pytest.mark.parametrize("name", list(SCHEMAS))
def test_every_schema_of_the_set_is_matched_whatever_the_prompt(llama, name):
    for prompt in PROMPTS:
        valid(answer(llama, SCHEMAS[name], prompt, seed=len(prompt), temperature=1.0).text, SCHEMAS[name])


def test_without_the_grammar_the_demo_does_not_answer_in_json(llama):
    done = list(llama.stream([{"role": "user", "content": PROMPTS[0]}], Params(max_tokens=40, seed=1)))[-1]
    with pytest.raises(ValueError):
        json.loads(done.text)


@pytest.mark.slow
def test_mlx_holds_the_answer_to_the_same_grammar(demo_mlx):
    with contextlib.closing(load(demo_mlx, Plan(n_ctx=1024), engine="mlx")) as engine:
        for name in ("flat object", "string patterns", "$defs and $ref"):
            valid(answer(engine, SCHEMAS[name]).text, SCHEMAS[name])


def test_a_raw_completion_is_held_to_the_schema_too(llama):
    done = list(llama.complete("Once upon a time", Params(max_tokens=MAX_TOKENS, seed=4, schema=json.dumps(PERSON))))[-1]
    valid(done.text, PERSON)


def test_a_reasoning_model_answers_in_json_without_a_thought(thinking_gguf):
    with contextlib.closing(load(thinking_gguf, Plan(n_ctx=1024))) as engine:
        done = answer(engine, PERSON)
    assert done.reasoning == "" and done.stats.reasoning_tokens == 0
    valid(done.text, PERSON)


# -- roost run --schema -------------------------------------------------------------------


def test_run_schema_prints_the_json_alone(roost_here, demo_gguf, tmp_path):
    path = tmp_path / "person.json"
    path.write_text(json.dumps(PERSON))
    for given in (str(path), json.dumps(PERSON)):
        result = roost_here("run", demo_gguf, PROMPTS[1], "--schema", given, "-n", str(MAX_TOKENS), "--seed", "5")
        assert result.returncode == 0, result.stderr
        valid(result.stdout, PERSON)
    result = roost_here("run", demo_gguf, PROMPTS[1], "--schema", str(path), "-n", str(MAX_TOKENS), "--json")
    valid(json.loads(result.stdout)["text"], PERSON)


@pytest.mark.parametrize("given, line", [
    ("missing.json", "roost: error: --schema: cannot read missing.json: No such file or directory"),
    ("{not json", "roost: error: --schema: the schema is not JSON: "),
    ('{"type": "integer", "multipleOf": 2}', "roost: error: the schema's 'multipleOf' is not supported"),
])
def test_run_refuses_a_bad_schema_in_one_line(roost_here, demo_gguf, given, line):
    result = roost_here("run", demo_gguf, "hi", "--schema", given)
    assert result.returncode == 2 and result.stdout == ""
    assert result.stderr.startswith(line) and result.stderr.count("\n") == 1, result.stderr


def test_run_says_when_the_json_was_cut_short(roost_here, demo_gguf):
    # Two required keys take more than 3 tokens however the model fills them ("[]" would not).
    result = roost_here("run", demo_gguf, "hi", "--schema", json.dumps(PERSON), "-n", "3")
    assert result.returncode == 1
    assert result.stderr == "roost: error: the JSON was cut short at 3 tokens (-n); raise -n\n"


def test_run_remote_sends_the_schema(roost_here, llama):
    with served(llama) as url:
        result = roost_here("run", "--remote", url, PROMPTS[0], "--schema", json.dumps(PERSON),
                            "-n", str(MAX_TOKENS), "--seed", "6")
    assert result.returncode == 0, result.stderr
    valid(result.stdout, PERSON)


# -- roost serve's response_format ----------------------------------------------------------


@pytest.fixture(scope="module")
def api(llama):
    with served(llama) as url:
        yield openai.OpenAI(base_url=f"{url}/v1", api_key="none", max_retries=0, timeout=120)


def json_schema(schema: dict, strict: bool = True) -> dict:
    return {"type": "json_schema", "json_schema": {"name": "answer", "schema": schema, "strict": strict}}


def test_response_format_json_schema_whole_and_streamed(api):
    schema = SCHEMAS["nested objects"]
    messages = [{"role": "user", "content": PROMPTS[1]}]
    whole = api.chat.completions.create(model="demo", messages=messages, response_format=json_schema(schema),
                                        max_tokens=MAX_TOKENS, seed=7)
    assert whole.choices[0].finish_reason == "stop"
    valid(whole.choices[0].message.content, schema)
    chunks = api.chat.completions.create(model="demo", messages=messages, response_format=json_schema(schema, False),
                                         max_tokens=MAX_TOKENS, seed=8, stream=True)
    valid("".join(c.choices[0].delta.content or "" for c in chunks if c.choices), schema)


def test_response_format_json_object(api):
    reply = api.chat.completions.create(model="demo", messages=[{"role": "user", "content": PROMPTS[0]}],
                                        response_format={"type": "json_object"}, max_tokens=MAX_TOKENS, seed=9)
    assert isinstance(json.loads(reply.choices[0].message.content), dict)
    text = api.completions.create(model="demo", prompt="A list:", max_tokens=MAX_TOKENS, seed=10, stream=False,
                                  extra_body={"response_format": json_schema(SCHEMAS["enum"])}).choices[0].text
    valid(text, SCHEMAS["enum"])


def test_response_format_text_is_free_text(api):
    reply = api.chat.completions.create(model="demo", messages=[{"role": "user", "content": PROMPTS[0]}],
                                        response_format={"type": "text"}, max_tokens=20, seed=1)
    assert reply.choices[0].message.content


@pytest.mark.parametrize("response_format, says", [
    (json_schema({"type": "integer", "multipleOf": 2}), "response_format: the schema's 'multipleOf' is not supported"),
    (json_schema({"type": "string", "format": "email"}), "response_format: the schema's 'format' is 'email'"),
    ({"type": "json_schema"}, "response_format.json_schema must be"),
    ({"type": "json_schema", "json_schema": {"name": "a", "schema": "{}"}}, "response_format.json_schema must be"),
    ({"type": "xml"}, "response_format must be"),
    ("json", "response_format must be"),
])
def test_a_bad_response_format_is_a_400_naming_it(api, response_format, says):
    with pytest.raises(openai.BadRequestError) as e:
        api.chat.completions.create(model="demo", messages=[{"role": "user", "content": "hi"}],
                                    response_format=response_format, max_tokens=5)
    error = e.value.body
    assert error["param"] == "response_format" and error["message"].startswith(says), error
