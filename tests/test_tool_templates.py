"""Tools through real chat templates (tests/recorded/templates/): a request's tools reach
the prompt, and a conversation's calls and tool results render, in every model family's
template; a template that takes no tools is given them in its system prompt."""

import json
import os

import pytest

from roost.backends import chat_template, tool_calls
from roost.backends.base import Params
from roost.backends.streaming import ChatPrompt
from roost.errors import UsageError

TEMPLATES = os.path.join(os.path.dirname(__file__), "recorded", "templates")
TOOLS = [{"type": "function", "function": {
    "name": "get_weather", "description": "The weather now",
    "parameters": {"type": "object", "properties": {"city": {"type": "string", "description": "The city's name"}},
                   "required": ["city"]}}}]
CALL = {"id": "call_abcdefghijklmnopqrstuvwx", "type": "function",
        "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'}}
CONVERSATION = [
    {"role": "system", "content": "Be brief."},
    {"role": "user", "content": "The weather in Paris?"},
    {"role": "assistant", "content": "", "tool_calls": [CALL]},
    {"role": "tool", "content": "18 C and sunny", "tool_call_id": CALL["id"], "name": "get_weather"},
]


def template(name: str) -> str:
    with open(os.path.join(TEMPLATES, name + ".jinja"), encoding="utf-8") as f:
        return f.read()


def prompt_of(source: str, messages=CONVERSATION, **params) -> tuple[str, object]:
    """The prompt ChatPrompt renders (tokens are the text's bytes), and what it read it by."""
    prompt = ChatPrompt(source, lambda text: list(text.encode()), None, "<s>", "</s>", add_bos=False)
    prompted = prompt.chat(messages, Params(tools=json.dumps(TOOLS), **params))
    return bytes(prompted.tokens).decode(), prompted


TAKE_TOOLS = {
    "Qwen-Qwen3-0.6B": "hermes", "Qwen-Qwen2.5-7B-Instruct": "hermes", "Qwen-QwQ-32B": "hermes",
    "meta-llama-Llama-3.2-3B-Instruct": "llama3", "ibm-granite-granite-3.3-2B-Instruct": "granite",
    "openai-gpt-oss-120b": "harmony", "mistralai-Ministral-3-3B-Reasoning-2512": "mistral-args",
    "ByteDance-Seed-OSS": "seed-oss", "CohereForAI-c4ai-command-r7b-12-2024-tool_use": "command-r7b",
}


@pytest.mark.parametrize("name", sorted(TAKE_TOOLS))
def test_a_template_that_takes_tools_shows_them_and_the_turns_that_used_them(name):
    source = template(name)
    assert chat_template.takes_tools(source)
    text, prompted = prompt_of(source)
    assert "get_weather" in text and "The city's name" in text  # the tool and its schema
    assert "18 C and sunny" in text  # the tool's result
    assert prompted.tool_format.name == TAKE_TOOLS[name]
    assert prompted.grammar is None  # "auto": the model may answer in text
    if name != "ibm-granite-granite-3.3-2B-Instruct":  # Granite 3.3's template writes no past calls
        assert "Paris" in text.split("The weather in Paris?", 1)[1]  # the call's arguments
        assert '\\"city\\"' not in text  # written as JSON, not as JSON text quoted again


@pytest.mark.parametrize("name", ["deepseek-ai-DeepSeek-V3.1", "deepseek-ai-DeepSeek-R1-Distill-Qwen-32B"])
def test_a_template_that_writes_calls_but_takes_no_tools_is_shown_them_in_the_system_prompt(name):
    # DeepSeek's templates write a conversation's calls in their own tags but never list
    # the tools: the listing goes in the system prompt, and the calls stay the template's.
    source = template(name)
    assert not chat_template.takes_tools(source)
    text, prompted = prompt_of(source)
    assert "Be brief." in text and '"name": "get_weather"' in text and "The city's name" in text
    assert "<｜tool▁sep｜>" in text and "<tool_call>" not in text
    assert "18 C and sunny" in text
    assert prompted.tool_format.name.startswith("deepseek")


def test_a_template_with_no_tool_format_is_taught_hermes():
    # SmolLM2's template knows no tools: the system prompt lists them and shows Hermes's
    # <tool_call> format (Qwen2.5's words), past calls are written in it, and results
    # come back in a user turn, whose template still renders them.
    source = template("HuggingFaceTB-SmolLM2-135M-Instruct")
    assert not chat_template.takes_tools(source)
    text, prompted = prompt_of(source)
    system, rest = text.split("<|im_end|>", 1)
    assert system.startswith("<|im_start|>system\nBe brief.\n\n# Tools") and "The city's name" in system
    assert '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>' in rest
    assert "<|im_start|>user\n<tool_response>\n18 C and sunny\n</tool_response><|im_end|>" in rest
    assert prompted.tool_format is tool_calls.HERMES


def test_consecutive_tool_results_are_one_user_turn():
    results = [{"role": "tool", "content": f"result {i}", "tool_call_id": f"call_{i}"} for i in range(2)]
    messages = chat_template.tools_listed([*CONVERSATION[:3], *results], TOOLS, hermes=True)
    assert [m["role"] for m in messages] == ["system", "user", "assistant", "user"]
    assert messages[-1]["content"] == ("<tool_response>\nresult 0\n</tool_response>\n"
                                       "<tool_response>\nresult 1\n</tool_response>")


def test_tool_choice_none_shows_the_tools_and_reads_no_calls():
    text, prompted = prompt_of(template("Qwen-Qwen3-0.6B"), tool_choice="none")
    assert "get_weather" in text
    assert prompted.tool_format is None and prompted.grammar is None


def test_no_tools_no_change():
    source = template("Qwen-Qwen3-0.6B")
    prompt = ChatPrompt(source, lambda text: list(text.encode()), None, "", "", add_bos=False)
    prompted = prompt.chat(CONVERSATION[:2], Params())
    assert "get_weather" not in bytes(prompted.tokens).decode() and prompted.tool_format is None


def test_a_template_that_takes_tools_in_a_format_roost_cannot_read_is_refused():
    source = "{% for t in tools %}{{ t.function.name }}{% endfor %}{% for m in messages %}{{ m.content }}{% endfor %}"
    with pytest.raises(UsageError, match="does not know how the model writes its calls"):
        prompt_of(source, CONVERSATION[:2])
