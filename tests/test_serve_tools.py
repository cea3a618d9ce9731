"""Tools behind `roost serve`, with the official openai client over real HTTP on
127.0.0.1, and the engine in its own process as roost serve runs it (the calls cross its
pipe as ToolCall events).

The model is the real SmolLM2, whose template takes no tools: roost lists them in its
system prompt in Hermes's words and reads its calls out of <tool_call> tags. It cannot be
relied on to call a tool by itself; tool_choice "required" and a named function make it
(the grammar), so the calls are valid ones, whose arguments match their tool's schema."""

import json
import re

import httpx2
import jsonschema
import pytest

from conftest import openai_client as client, served, served_in_child
from roost.backends import load
from roost.backends.base import Plan

WEATHER = {"type": "object", "properties": {"city": {"type": "string"}, "unit": {"enum": ["celsius", "fahrenheit"]}},
           "required": ["city", "unit"]}
TIME = {"type": "object", "properties": {"timezone": {"type": "string"}, "hours": {"type": "integer", "minimum": 0}},
        "required": ["timezone"]}
TOOLS = [
    {"type": "function", "function": {"name": "get_weather", "description": "The weather in a city now",
                                      "parameters": WEATHER}},
    {"type": "function", "function": {"name": "get_time", "description": "The time in a timezone",
                                      "parameters": TIME}},
]
SCHEMAS = {"get_weather": WEATHER, "get_time": TIME}
QUESTION = [{"role": "user", "content": "What is the weather like in Paris today?"}]
ASK = dict(model="demo", messages=QUESTION, tools=TOOLS, temperature=0, max_tokens=96)
CALL_ID = re.compile(r"call_[A-Za-z0-9]{24}")


@pytest.fixture(scope="module")
def url(demo_gguf):
    with served_in_child(demo_gguf, 2048) as url:  # roost serve's own way: the engine in a process of its own
        yield url


def valid(name: str, arguments: str) -> dict:
    args = json.loads(arguments)
    jsonschema.validate(args, SCHEMAS[name])
    return args


def test_required_gives_a_valid_call(url):
    reply = client(url).chat.completions.create(**ASK, tool_choice="required")
    choice = reply.choices[0]
    assert choice.finish_reason == "tool_calls"
    assert choice.message.content is None  # calls alone
    [call] = choice.message.tool_calls
    assert call.type == "function" and CALL_ID.fullmatch(call.id)
    valid(call.function.name, call.function.arguments)


def test_a_named_function_is_the_one_called(url):
    reply = client(url).chat.completions.create(**ASK, tool_choice={"type": "function",
                                                                    "function": {"name": "get_time"}})
    [call] = reply.choices[0].message.tool_calls
    assert call.function.name == "get_time"
    valid("get_time", call.function.arguments)
    assert reply.choices[0].finish_reason == "tool_calls"


def test_streamed_calls_come_as_deltas_with_their_index(url):
    stream = client(url).chat.completions.create(**ASK, tool_choice={"type": "function",
                                                                     "function": {"name": "get_weather"}}, stream=True)
    deltas, finish, text = [], None, ""
    for chunk in stream:
        for choice in chunk.choices:
            deltas += choice.delta.tool_calls or []
            text += choice.delta.content or ""
            finish = choice.finish_reason or finish
    assert finish == "tool_calls" and text == ""
    assert [d.index for d in deltas] == [0]
    [delta] = deltas
    assert CALL_ID.fullmatch(delta.id) and delta.type == "function" and delta.function.name == "get_weather"
    valid("get_weather", delta.function.arguments)


def test_a_tool_result_is_answered_on_the_next_turn(url):
    api = client(url)
    first = api.chat.completions.create(**ASK, tool_choice="required").choices[0].message
    [call] = first.tool_calls
    messages = [*QUESTION, first.model_dump(exclude_none=True),
                {"role": "tool", "tool_call_id": call.id, "content": '{"temperature": 18, "sky": "sunny"}'}]
    reply = api.chat.completions.create(**{**ASK, "messages": messages}, tool_choice="none")
    choice = reply.choices[0]
    assert choice.message.tool_calls is None and choice.message.content.strip()
    assert choice.finish_reason in ("stop", "length")
    # The call and its result reached the model: the prompt holds them beyond the first turn's.
    asked = api.chat.completions.create(**{**ASK, "max_tokens": 1}, tool_choice="none").usage.prompt_tokens
    assert reply.usage.prompt_tokens > asked + 20


def test_a_call_the_model_writes_by_itself_is_read_out_of_its_text(url):
    # No grammar ("auto"): after three turns that called the tool, SmolLM2 (greedy) writes
    # the fourth call itself, in the <tool_call> tags its system prompt shows.
    messages = []
    for i, (city, weather) in enumerate([("Paris", "18 C"), ("Berlin", "12 C"), ("Madrid", "25 C")]):
        call = {"id": f"call_{i}", "type": "function",
                "function": {"name": "get_weather", "arguments": json.dumps({"city": city, "unit": "celsius"})}}
        messages += [{"role": "user", "content": f"Weather in {city}?"},
                     {"role": "assistant", "content": None, "tool_calls": [call]},
                     {"role": "tool", "tool_call_id": f"call_{i}", "content": weather},
                     {"role": "assistant", "content": f"It is {weather} in {city}."}]
    ask = {**ASK, "messages": [*messages, {"role": "user", "content": "Weather in Rome?"}]}
    whole = client(url).chat.completions.create(**ask).choices[0]
    [call] = whole.message.tool_calls
    assert whole.finish_reason == "tool_calls" and call.function.name == "get_weather"
    assert valid("get_weather", call.function.arguments)["city"] == "Rome"
    deltas, text = [], ""
    for chunk in client(url).chat.completions.create(**ask, stream=True):
        for choice in chunk.choices:
            deltas += choice.delta.tool_calls or []
            text += choice.delta.content or ""
    assert text == "" and [(d.index, d.function.name, d.function.arguments) for d in deltas] == [
        (0, "get_weather", call.function.arguments)]


def test_tool_choice_none_gives_text(url):
    reply = client(url).chat.completions.create(**ASK, tool_choice="none")
    choice = reply.choices[0]
    assert choice.message.tool_calls is None and choice.message.content
    assert choice.finish_reason in ("stop", "length")


def test_a_call_cut_off_by_max_tokens_is_text(url):
    # The grammar's call is not whole when max_tokens ends it: no call, the text as written.
    reply = client(url).chat.completions.create(**{**ASK, "max_tokens": 6}, tool_choice="required")
    choice = reply.choices[0]
    assert choice.finish_reason == "length" and choice.message.tool_calls is None
    assert choice.message.content.startswith("<tool_call>")


BAD = [
    ({"tools": {"name": "get_weather"}}, "tools"),
    ({"tools": [{"type": "retrieval"}]}, "tools[0]"),
    ({"tools": [{"type": "function", "function": {"name": "get weather"}}]}, "tools[0].function.name"),
    ({"tools": [{"type": "function", "function": {"name": "x" * 65}}]}, "tools[0].function.name"),
    ({"tools": [TOOLS[0], TOOLS[0]]}, "tools[1].function.name"),
    ({"tools": [{"type": "function", "function": {"name": "f", "parameters": {"type": "array"}}}]},
     "tools[0].function.parameters"),
    ({"tool_choice": "always"}, "tool_choice"),
    ({"tool_choice": {"type": "function", "function": {"name": "get_news"}}}, "tool_choice"),
    ({"tools": [], "tool_choice": "required"}, "tool_choice"),
    ({"parallel_tool_calls": "yes"}, "parallel_tool_calls"),
    ({"messages": [*QUESTION, {"role": "tool", "content": "18 C"}]}, "messages[1].tool_call_id"),
    ({"messages": [*QUESTION, {"role": "assistant", "content": None, "tool_calls": [
        {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": "{city"}}]}]},
     "messages[1].tool_calls[0].function.arguments"),
]


@pytest.mark.parametrize("change, param", BAD, ids=[param for _, param in BAD])
def test_a_bad_tool_request_is_400_naming_the_field(url, change, param):
    response = httpx2.post(url + "/v1/chat/completions", json={**ASK, **change}, timeout=120)
    assert response.status_code == 400
    assert response.json()["error"]["param"] == param


def test_a_reasoning_model_asked_for_a_call_makes_it_in_its_answer(thinking_gguf):
    # The prompt opens a thought, and a call inside a thought is never a call: a required
    # one is made in the answer, the thought closed in the prompt (the grammar holds from
    # the first token).
    engine = load(thinking_gguf, Plan(n_ctx=1024), engine="llama")
    try:
        with served(engine) as thinker:
            reply = client(thinker).chat.completions.create(**ASK, tool_choice="required")
    finally:
        engine.close()
    message = reply.choices[0].message
    [call] = message.tool_calls
    valid(call.function.name, call.function.arguments)
    assert message.content is None and not getattr(message, "reasoning_content", None)
