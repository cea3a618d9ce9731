"""Tool calls read out of a model's answer in each format the catalog's models write: real
outputs (llama.cpp's parser tests) and ones written from each template's tool section,
streamed through the reasoning splitter and the parser as the token loop runs them, whole
and cut at every character; the format recognised from real chat templates."""

import json
from pathlib import Path

import pytest

from roost.backends import chat_template, reasoning, tool_calls
from roost.backends.base import ANSWER, REASONING, ToolCall
from roost.backends.reasoning import COMMENTARY, Piece

RECORDED = Path(__file__).parent / "recorded"
TEMPLATES = RECORDED / "templates"
# Each: the chat template the model ships, the format detected from it, the model's text,
# and what must come of it: the calls, the answer, the thought, harmony's commentary.
# `source` says where the text comes from: llama.cpp's tests, or written from the format.
OUTPUTS = json.loads((RECORDED / "tool_calls" / "outputs.json").read_text())
HI = [{"role": "user", "content": "Hi"}]
TOOLS = [
    {"type": "function", "function": {"name": "special_function", "description": "I'm special", "parameters": {
        "type": "object", "properties": {"arg1": {"type": "integer"}}, "required": ["arg1"]}}},
    {"type": "function", "function": {"name": "get_weather", "description": "The weather in a city", "parameters": {
        "type": "object", "properties": {"city": {"type": "string"}, "days": {"type": "integer"},
                                         "units": {"type": "object"}},
        "required": ["city"]}}},
]


def template(name: str) -> str:
    return (RECORDED / name if "/" in name else TEMPLATES / name).read_text()


def formats(case: dict) -> tuple[reasoning.ReasoningFormat | None, tool_calls.ToolFormat]:
    source = template(case["template"])
    tail = chat_template.render(source, HI, bos_token="<s>", eos_token="</s>", variables={})
    return reasoning.detect(source, (), tail[-256:]), tool_calls.detect(source)


def streamed(case: dict, chunks: list[str]) -> list[Piece | ToolCall]:
    """The chunks through the splitter and the parser, as the token loop feeds them."""
    thought, fmt = formats(case)
    split, parser = reasoning.Splitter(thought), tool_calls.ToolCallParser(fmt, TOOLS)
    out = []
    for chunk in chunks:
        for piece in split.feed(chunk):
            out += parser.feed(piece)
    for piece in split.flush():
        out += parser.feed(piece)
    return out + parser.flush()


def outcome(events: list[Piece | ToolCall]) -> dict:
    texts = {ANSWER: "", REASONING: "", COMMENTARY: ""}
    calls = []
    for e in events:
        if isinstance(e, ToolCall):
            calls.append([e.name, json.loads(e.arguments)])
        else:
            assert e.text, "an empty piece"
            texts[e.kind] += e.text
    return {"calls": calls, "answer": texts[ANSWER], "reasoning": texts[REASONING], "commentary": texts[COMMENTARY]}


def expected(case: dict) -> dict:
    return {k: case[k] for k in ("calls", "answer", "reasoning", "commentary")}


@pytest.mark.parametrize("name", sorted(OUTPUTS))
def test_each_format_is_detected_from_its_template(name):
    case = OUTPUTS[name]
    assert formats(case)[1].name == case["format"]


@pytest.mark.parametrize("name", sorted(OUTPUTS))
def test_whole_the_calls_and_the_text_come_apart(name):
    case = OUTPUTS[name]
    events = streamed(case, [case["text"]])
    assert outcome(events) == expected(case)
    calls = [e for e in events if isinstance(e, ToolCall)]
    assert [c.index for c in calls] == list(range(len(calls)))
    assert len({c.id for c in calls}) == len(calls)
    for call in calls:
        assert call.id.startswith("call_") and len(call.id) == 29 and call.id[5:].isalnum()
        assert call.arguments == json.dumps(json.loads(call.arguments), ensure_ascii=False, separators=(",", ":"))


@pytest.mark.parametrize("name", sorted(OUTPUTS))
def test_cut_at_every_character_the_same_calls_and_text(name):
    case, text = OUTPUTS[name], OUTPUTS[name]["text"]
    want = expected(case)
    assert outcome(streamed(case, list(text))) == want
    for i in range(1, len(text)):
        assert outcome(streamed(case, [text[:i], text[i:]])) == want, (i, text[:i])


def test_answer_text_is_said_as_it_comes_and_only_a_possible_call_is_held():
    parser = tool_calls.ToolCallParser(tool_calls.HERMES)
    assert parser.feed(Piece(ANSWER, "Let me")) == [Piece(ANSWER, "Let me")]
    assert parser.feed(Piece(ANSWER, " check. <tool")) == [Piece(ANSWER, " check.")]  # the space may frame a call
    assert parser.feed(Piece(ANSWER, "s> are tags")) == [Piece(ANSWER, " <tools> are tags")]
    assert parser.flush() == []


def test_a_thought_passes_untouched_even_mid_answer():
    parser = tool_calls.ToolCallParser(tool_calls.HERMES)
    thought = Piece(REASONING, '<tool_call>{"name": "f", "arguments": {}}</tool_call>')
    assert parser.feed(Piece(ANSWER, "Hi <tool_")) == [Piece(ANSWER, "Hi")]
    assert parser.feed(thought) == [Piece(ANSWER, " <tool_"), thought]  # a tag cut by a thought is no tag
    assert parser.feed(Piece(ANSWER, "call> is a tag")) == [Piece(ANSWER, "call> is a tag")]
    assert parser.flush() == []


# What a call is made of, for text that only looks like calls.
FRAGMENTS = ["<tool_call>", "</tool_call>", "<function=f>", "</function>", "<parameter=a>", "</parameter>",
             "[TOOL_CALLS]", "[ARGS]", "<|python_tag|>", "<|tool_call|>", "<|/tool_call|>", "<|START_ACTION|>",
             "<|END_ACTION|>", "<｜tool▁calls▁begin｜>", "<｜tool▁call▁begin｜>", "<｜tool▁sep｜>",
             "<｜tool▁call▁end｜>", "<｜tool▁calls▁end｜>", "<seed:tool_call>", "{", "}", "[", "]", '"name"',
             '"arguments"', ": ", ", ", '"f"', "1", "<", " ", "\n", "text"]


@pytest.mark.parametrize("fmt", [f for f in tool_calls.FORMATS if f.opens], ids=lambda f: f.name)
def test_text_that_only_looks_like_calls_never_breaks_the_parser_and_stays_as_written(fmt):
    import random

    rng = random.Random(23)
    for _ in range(300):
        text = "".join(rng.choice(FRAGMENTS) for _ in range(rng.randint(1, 14)))
        cuts = sorted(rng.sample(range(len(text) + 1), min(3, len(text) + 1)))
        parser = tool_calls.ToolCallParser(fmt, TOOLS)
        out = [e for a, b in zip([0, *cuts], [*cuts, len(text)]) for e in parser.feed(Piece(ANSWER, text[a:b]))]
        out += parser.flush()
        if not any(isinstance(e, ToolCall) for e in out):
            assert "".join(e.text for e in out) == text, text


def test_a_model_without_a_known_format_gets_none():
    assert tool_calls.detect(template("HuggingFaceTB-SmolLM2-135M-Instruct.jinja")) is None
    assert tool_calls.detect(None) is None


def test_the_vocabulary_says_where_the_template_does_not():
    assert tool_calls.detect("{{ messages }}", ["[TOOL_CALLS]"]) is tool_calls.MISTRAL
    assert tool_calls.detect("{{ messages }}", ["<tool_call>", "</tool_call>"]) is tool_calls.HERMES
    assert tool_calls.detect("{{ messages }}", ["<tool_call>"]) is None
    assert set(tool_calls.SIGNS) >= {"[TOOL_CALLS]", "<tool_call>", "<|python_tag|>", "<|START_ACTION|>"}


# -- the grammar of a required call ----------------------------------------------------------

GRAMMAR_TOOLS = [*TOOLS, {"type": "function", "function": {"name": "set_alarm", "parameters": {
    "type": "object", "properties": {"hour": {"type": "integer", "minimum": 0, "maximum": 23},
                                     "label": {"type": "string", "enum": ["wake", "nap"]}},
    "required": ["hour", "label"], "additionalProperties": False}}}]


@pytest.fixture(scope="module")
def demo(demo_gguf):
    import llama_cpp

    return llama_cpp.Llama(demo_gguf, n_ctx=1024, verbose=False)


def compiles(llm, gbnf: str) -> bool:
    """Whether llama.cpp's own grammar parser takes it (LlamaGrammar only keeps the text)."""
    import llama_cpp

    sampler = llama_cpp.llama_sampler_init_grammar(llm._model.vocab, gbnf.encode(), b"root")
    if not sampler:
        return False
    llama_cpp.llama_sampler_free(sampler)
    return True


@pytest.mark.parametrize("fmt", tool_calls.FORMATS, ids=lambda f: f.name)
def test_each_formats_call_grammar_compiles_in_llama_cpp(demo, fmt):
    assert compiles(demo, tool_calls.call_grammar(fmt, GRAMMAR_TOOLS))
    assert compiles(demo, tool_calls.call_grammar(fmt, GRAMMAR_TOOLS, "set_alarm"))
    assert not compiles(demo, "root ::= (")  # the check can fail


# Hermes in the fast loop; XML values, and harmony's call through the splitter, a few seconds more.
@pytest.mark.parametrize("fmt", [tool_calls.HERMES, *(pytest.param(f, marks=pytest.mark.slow)
                                                      for f in (tool_calls.QWEN3_CODER, tool_calls.HARMONY))],
                         ids=lambda f: f.name)
def test_under_the_grammar_the_demo_model_writes_a_call_the_parser_reads(demo, fmt):
    """SmolLM2 knows none of these formats: the grammar is what makes its answer a call."""
    import llama_cpp

    prompt = ("<|im_start|>user\nSet an alarm for a nap at three in the afternoon.<|im_end|>\n"
              "<|im_start|>assistant\n")
    grammar = llama_cpp.LlamaGrammar.from_string(tool_calls.call_grammar(fmt, GRAMMAR_TOOLS, "set_alarm"))
    text = demo.create_completion(prompt, grammar=grammar, max_tokens=96, temperature=0)["choices"][0]["text"]
    events = streamed_as(fmt, text)
    calls = [e for e in events if isinstance(e, ToolCall)]
    assert [c.name for c in calls] == ["set_alarm"] and not [e for e in events if e not in calls], text
    args = json.loads(calls[0].arguments)
    assert set(args) == {"hour", "label"} and 0 <= args["hour"] <= 23 and args["label"] in ("wake", "nap"), text


def streamed_as(fmt: tool_calls.ToolFormat, text: str) -> list[Piece | ToolCall]:
    """A model's text through the splitter (harmony's, where the format is) and the parser."""
    split = reasoning.Splitter(reasoning.HARMONY if fmt is tool_calls.HARMONY else None)
    parser = tool_calls.ToolCallParser(fmt, GRAMMAR_TOOLS)
    out = [e for piece in split.feed(text) + split.flush() for e in parser.feed(piece)]
    return out + parser.flush()


def test_a_call_grammar_refuses_a_missing_tool_and_what_the_syntax_cannot_keep():
    from roost.errors import UsageError

    with pytest.raises(UsageError, match="'nope'"):
        tool_calls.call_grammar(tool_calls.HERMES, TOOLS, "nope")
    with pytest.raises(UsageError, match="no tools"):
        tool_calls.call_grammar(tool_calls.HERMES, [])
    patterned = [{"type": "function", "function": {"name": "f", "parameters": {
        "type": "object", "properties": {"code": {"type": "string", "pattern": "^[A-Z]{3}$"}}}}}]
    assert tool_calls.call_grammar(tool_calls.HERMES, patterned)  # JSON keeps a pattern
    with pytest.raises(UsageError, match="'code'"):
        tool_calls.call_grammar(tool_calls.QWEN3_CODER, patterned)  # a value as text cannot
