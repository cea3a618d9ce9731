"""A reasoning model's thought told apart from its answer: the format read from real chat
templates, the stream split wherever the pieces cut it, and --think as the templates take it."""

import json
from pathlib import Path

import pytest

from roost.backends import chat_template, reasoning
from roost.backends.reasoning import ANSWER, CALL, CALLEE, COMMENTARY, REASONING, Piece
from roost.errors import UsageError

TEMPLATES = Path(__file__).parent / "recorded" / "templates"
HI = [{"role": "user", "content": "Hi"}]

# Gemma 4's template, its namespace and its last lines (llama.cpp's models/templates/gemma4.jinja):
# thinking is off unless enable_thinking, by an empty thought written into the prompt.
GEMMA4 = """{%- set ns = namespace(prev_message_type=None) -%}
{%- if add_generation_prompt -%}
    {%- if ns.prev_message_type != 'tool_response' -%}
        {{- '<|turn>model\\n' -}}
    {%- endif -%}
    {%- if not enable_thinking | default(false) -%}
        {{- '<|channel>thought\\n<channel|>' -}}
    {%- endif -%}
{%- endif -%}"""

# Each format's answer to a question, cut as the models' tokenizers cut text: a tag is one
# token (it is in these vocabularies), words come in pieces. Where llama.cpp's parser tests
# (tests/test-chat.cpp) have a model's output for the format, the text is theirs.
STREAMS = {
    # Qwen3 opens the thought itself.
    "qwen3": ("Qwen-Qwen3-0.6B.jinja", [
        "<think>", "\n", "The", " user", " asks", " for", " the", " capital", ".", "\n", "</think>", "\n\n",
        "Paris", " is", " the", " capital", ".",
    ], {REASONING: "The user asks for the capital.", ANSWER: "Paris is the capital."}),
    # The R1 distills' template ends the prompt with "<think>\n": the stream starts inside.
    "r1-distill": ("deepseek-ai-DeepSeek-R1-Distill-Qwen-32B.jinja", [
        "Okay", ",", " 2", "+", "2", " is", " 4", ".\n", "</think>", "\n\n",
        "The", " answer", " is", " **", "4", "**.",
    ], {REASONING: "Okay, 2+2 is 4.", ANSWER: "The answer is **4**."}),
    "gpt-oss": ("openai-gpt-oss-120b.jinja", [
        "<|channel|>", "analysis", "<|message|>", "I", "'m", "\n", "thinking", "<|end|>",
        "<|start|>", "assistant", "<|channel|>", "final", "<|message|>", "Hello", ",", " world", "!\n",
        "What", "'s", " up", "?", "<|return|>",
    ], {REASONING: "I'm\nthinking", ANSWER: "Hello, world!\nWhat's up?"}),
    # A preamble goes to commentary, apart from the answer; a call gives the function's name
    # and its arguments (tool_calls.py makes them a call).
    "gpt-oss-tool": ("openai-gpt-oss-120b.jinja", [
        "<|channel|>", "analysis", "<|message|>", "I", "'m", "\n", "thinking", "<|end|>",
        "<|start|>", "assistant", "<|channel|>", "commentary", "<|message|>", "Let", " me", " look", ".", "<|end|>",
        "<|start|>", "assistant", "<|channel|>", "commentary", " to", "=functions", ".f", " ",
        "<|constrain|>", "json", "<|message|>", '{"', "a", '":', " 1", "}", "<|call|>",
    ], {REASONING: "I'm\nthinking", COMMENTARY: "Let me look.", CALLEE: "f", CALL: '{"a": 1}'}),
    "magistral": ("mistralai-Ministral-3-3B-Reasoning-2512.jinja", [
        "[THINK]", "Simple", " arithmetic", ":", " 2", "+", "2", "=", "4", ".", "[/THINK]",
        "The", " answer", " is", " 4", ".",
    ], {REASONING: "Simple arithmetic: 2+2=4.", ANSWER: "The answer is 4."}),
    "seed-oss": ("ByteDance-Seed-OSS.jinja", [
        "<seed:think>", "I", "'m", " thinking", " about", " the", " answer", "</seed:think>",
        "Hello", ",", " world", "!",
    ], {REASONING: "I'm thinking about the answer", ANSWER: "Hello, world!"}),
    "granite": ("ibm-granite-granite-3.3-2B-Instruct.jinja", [
        "<think>", "I", "'m", "\n", "thinking", "</think>", "<response>", "Hello", ",", " world", "!\n",
        "What", "'s", " up", "?", "</response>",
    ], {REASONING: "I'm\nthinking", ANSWER: "Hello, world!\nWhat's up?"}),
    "command-r7b": ("CohereForAI-c4ai-command-r7b-12-2024-tool_use.jinja", [
        "<|START_THINKING|>", "I", "'m", "\n", "thinking", "<|END_THINKING|>",
        "<|START_RESPONSE|>", "Hello", ",", " world", "!", "<|END_RESPONSE|>",
    ], {REASONING: "I'm\nthinking", ANSWER: "Hello, world!"}),
    "gemma4": (GEMMA4, [
        "<|channel>", "thought", "\n", "Think", "ing", " it", " over", ".", "<channel|>", "Hi", " there", "!",
    ], {REASONING: "Thinking it over.", ANSWER: "Hi there!"}),
}


def template(name: str) -> str:
    return name if "{%" in name else (TEMPLATES / name).read_text()


def tail(source: str, **variables) -> str:
    return chat_template.render(source, HI, bos_token="<s>", eos_token="</s>", variables=variables)


def stream(name: str):
    source, tokens, want = STREAMS[name]
    return reasoning.detect(template(source), (), tail(template(source))), tokens, want


def split(fmt, pieces) -> list[Piece]:
    splitter = reasoning.Splitter(fmt)
    return [p for piece in pieces for p in splitter.feed(piece)] + splitter.flush()


def joined(pieces: list[Piece]) -> dict[str, str]:
    out: dict[str, str] = {}
    for p in pieces:
        assert p.text, "an empty piece"
        out[p.kind] = out.get(p.kind, "") + p.text
    return out


def tags(fmt) -> list[str]:
    return [fmt.open, fmt.close, *fmt.drop, *("<|start|>", "<|channel|>", "<|message|>", "<|end|>", "<|return|>",
                                              "<|call|>", "<|constrain|>", "<|channel>", "<channel|>")]


@pytest.mark.parametrize("name", sorted(STREAMS))
def test_token_by_token_the_thought_and_the_answer_come_apart(name):
    fmt, tokens, want = stream(name)
    pieces = split(fmt, tokens)
    assert joined(pieces) == want
    leaked = [p for p in pieces for t in tags(fmt) if t in p.text]
    assert not leaked


@pytest.mark.parametrize("name", sorted(STREAMS))
def test_every_cut_in_two_or_three_pieces_splits_the_same(name):
    fmt, tokens, want = stream(name)
    text = "".join(tokens)
    for i in range(len(text) + 1):
        assert joined(split(fmt, [text[:i], text[i:]])) == want, (i, text[:i])
        for j in range(i, len(text) + 1):
            assert joined(split(fmt, [text[:i], text[i:j], text[j:]])) == want, (i, j)


@pytest.mark.parametrize("name", sorted(STREAMS))
def test_all_at_once_splits_the_same(name):
    fmt, tokens, want = stream(name)
    assert joined(split(fmt, ["".join(tokens)])) == want


def test_tokens_are_counted_apart_and_tags_count_with_the_thought():
    fmt, tokens, _ = stream("qwen3")
    splitter = reasoning.Splitter(fmt)
    for token in tokens:
        splitter.feed(token)
    assert splitter.tokens == {REASONING: 11, ANSWER: 6}  # <think> … </think>; "\n\n" and five words
    assert splitter.thought_tokens == 11  # the last thought's, for the budget: the answer is not in it

    fmt, tokens, _ = stream("gpt-oss")
    splitter = reasoning.Splitter(fmt)
    for token in tokens:
        splitter.feed(token)
    # The analysis header's <|message|> opens the thought; the final message's header and
    # its <|return|> are control text.
    assert splitter.tokens == {"control": 7, REASONING: 6, ANSWER: 9}


def test_a_chunk_that_is_no_token_boundary_counts_nothing():
    splitter = reasoning.Splitter(reasoning.THINK)
    splitter.feed("<think>a", tokens=0)
    splitter.feed("b</think>c", tokens=3)
    assert splitter.tokens == {REASONING: 3}


def test_a_stream_cut_inside_a_thought_ends_as_thought():
    fmt, tokens, _ = stream("r1-distill")
    splitter = reasoning.Splitter(fmt)
    assert splitter.in_thought
    pieces = [p for t in tokens[:8] for p in splitter.feed(t)] + splitter.flush()
    assert joined(pieces) == {REASONING: "Okay, 2+2 is 4.\n"}
    assert splitter.in_thought

    # Cut halfway through the closing tag: the held text is the thought's, not the answer's.
    splitter = reasoning.Splitter(fmt)
    pieces = splitter.feed("Okay.</th") + splitter.flush()
    assert joined(pieces) == {REASONING: "Okay.</th"}


def test_harmony_text_with_no_header_at_all_is_still_shown():
    # What an engine that does not render control tokens would pass on: not lost, if late.
    fmt, _, _ = stream("gpt-oss")
    pieces = split(fmt, ["analysis", "Thinking.", "assistantfinal", "Hi"])
    assert joined(pieces) == {ANSWER: "analysisThinking.assistantfinalHi"}
    assert split(fmt, ["<|channel|>", "analysis"]) == []  # cut inside a header: control text


def test_a_stream_that_starts_inside_a_thought_without_an_opening_tag():
    # Without the prompt's "<think>\n" the same text would be all answer up to a stray tag.
    source = template("deepseek-ai-DeepSeek-R1-Distill-Qwen-32B.jinja")
    assert reasoning.detect(source, (), tail(source)).start == REASONING
    assert reasoning.detect(source, (), "<｜Assistant｜>").start == ANSWER
    assert joined(split(reasoning.detect(source), ["Okay", "</think>", "Hi"])) == {ANSWER: "OkayHi"}


def test_text_without_a_format_passes_through_piece_for_piece():
    pieces = ["\n", "  Hello", " <think>", "</think>", "\n\n", "[THINK] world <|end|>", " "]
    assert split(None, pieces) == [Piece(ANSWER, p) for p in pieces]


def test_a_reasoning_model_that_does_not_think_answers_untouched():
    fmt, _, _ = stream("qwen3")
    pieces = split(fmt, ["Paris", " is", " <b>", "the", "</b>", " capital", "."])
    assert joined(pieces) == {ANSWER: "Paris is <b>the</b> capital."}


@pytest.mark.parametrize(("source", "name", "start"), [
    ("Qwen-Qwen3-0.6B.jinja", "think", ANSWER),
    ("Qwen-QwQ-32B.jinja", "think", REASONING),
    ("deepseek-ai-DeepSeek-R1-Distill-Qwen-32B.jinja", "think", REASONING),
    ("deepseek-ai-DeepSeek-V3.1.jinja", "think", ANSWER),  # thinking off unless asked: "</think>" ends the prompt
    ("ibm-granite-granite-3.3-2B-Instruct.jinja", "think", ANSWER),
    ("openai-gpt-oss-120b.jinja", "harmony", "control"),  # the model writes the first header
    ("ByteDance-Seed-OSS.jinja", "seed", ANSWER),
    ("mistralai-Ministral-3-3B-Reasoning-2512.jinja", "mistral", ANSWER),
    (GEMMA4, "gemma", ANSWER),
    ("CohereForAI-c4ai-command-r7b-12-2024-tool_use.jinja", "cohere", ANSWER),
])
def test_format_is_read_from_real_templates(source, name, start):
    fmt = reasoning.detect(template(source), (), tail(template(source)))
    assert (fmt.name, fmt.start) == (name, start)


@pytest.mark.parametrize("source", [
    "HuggingFaceTB-SmolLM2-135M-Instruct.jinja", "Qwen-Qwen2.5-7B-Instruct.jinja",
    "meta-llama-Llama-3.2-3B-Instruct.jinja",
    chat_template.CHATML,
])
def test_no_format_for_models_that_do_not_reason(source):
    source = template(source) if source.endswith(".jinja") else source
    smollm2 = json.loads((TEMPLATES / "HuggingFaceTB-SmolLM2-135M-Instruct.special_tokens.json").read_text())
    assert reasoning.detect(source, smollm2, tail(source)) is None


@pytest.mark.parametrize(("tokens", "name"), [
    (["<|im_start|>", "<think>", "</think>"], "think"),  # Qwen3's added tokens
    (["<|start|>", "<|channel|>", "<|message|>", "<|end|>", "<|return|>"], "harmony"),
    (["[INST]", "[THINK]", "[/THINK]"], "mistral"),  # Magistral 2509's control tokens
])
def test_format_is_read_from_the_vocabulary_when_the_template_does_not_say(tokens, name):
    assert reasoning.detect(None, tokens).name == name
    assert reasoning.detect(None, tokens[:1]) is None


def test_granite_answer_wrappers_are_dropped_only_where_the_template_has_them():
    granite = reasoning.detect(template("ibm-granite-granite-3.3-2B-Instruct.jinja"))
    qwen3 = reasoning.detect(template("Qwen-Qwen3-0.6B.jinja"))
    assert granite.drop == ("<response>", "</response>") and qwen3.drop == ()
    assert joined(split(qwen3, ["<response>ok</response>"])) == {ANSWER: "<response>ok</response>"}


@pytest.mark.parametrize("name", sorted(set(STREAMS) - {"gpt-oss-tool"}))
def test_a_budget_closes_the_thought_and_the_model_answers(name):
    """The engine loop's part, played here: after N thinking tokens it writes the format's
    close_text as tokens of its own, and what the model writes next is the answer."""
    fmt, tokens, _ = stream(name)
    splitter, budget, written = reasoning.Splitter(fmt), 4, 0
    opening = [] if fmt.start == REASONING else tokens[:tokens.index("<|message|>") + 1] if fmt.name == "harmony" \
        else [fmt.open]
    for token in opening + [" hmm"] * 100:
        splitter.feed(token)
        if splitter.over_budget(budget):
            break
        written += 1
    assert splitter.in_thought and splitter.thought_tokens == budget
    for char in fmt.close_text:
        splitter.feed(char)
    assert not splitter.in_thought
    pieces = splitter.feed("Four") + splitter.flush()
    assert pieces == [Piece(ANSWER, "Four")]


def test_budget_zero_is_over_at_once_when_the_prompt_opened_the_thought():
    fmt, _, _ = stream("r1-distill")
    assert reasoning.Splitter(fmt).over_budget(0)
    assert not reasoning.Splitter(fmt).over_budget(None)


def test_think_off_renders_qwen3_without_a_thought():
    source = template("Qwen-Qwen3-0.6B.jinja")
    fmt = reasoning.detect(source)
    off = reasoning.control(source, fmt, "off")
    assert off == reasoning.Control({"enable_thinking": False}, None)
    prompt = tail(source, **off.variables)
    assert prompt.endswith("<think>\n\n</think>\n\n")
    assert reasoning.detect(source, (), prompt).start == ANSWER
    assert tail(source, **reasoning.control(source, fmt, "on").variables).endswith("assistant\n")


def test_think_on_opens_the_thought_where_the_template_has_a_flag():
    source = template("deepseek-ai-DeepSeek-V3.1.jinja")
    on = reasoning.control(source, reasoning.detect(source), "on")
    assert on.variables == {"thinking": True}
    assert reasoning.detect(source, (), tail(source, **on.variables)).start == REASONING
    granite = template("ibm-granite-granite-3.3-2B-Instruct.jinja")
    assert "<think></think>" in tail(granite, **reasoning.control(granite, reasoning.detect(granite), "on").variables)


@pytest.mark.parametrize("effort", ["low", "medium", "high"])
def test_gpt_oss_effort_is_its_template_variable(effort):
    source = template("openai-gpt-oss-120b.jinja")
    control = reasoning.control(source, reasoning.detect(source), effort, budget=100)
    assert control == reasoning.Control({"reasoning_effort": effort}, 100)
    assert f"Reasoning: {effort}" in tail(source, **control.variables)


def test_think_off_where_the_template_has_no_switch_is_a_budget_of_zero():
    for name in ("deepseek-ai-DeepSeek-R1-Distill-Qwen-32B.jinja", "mistralai-Ministral-3-3B-Reasoning-2512.jinja",
                 "openai-gpt-oss-120b.jinja"):
        source = template(name)
        assert reasoning.control(source, reasoning.detect(source), "off", budget=50).budget == 0


def test_seed_oss_is_told_its_budget():
    source = template("ByteDance-Seed-OSS.jinja")
    fmt = reasoning.detect(source)
    assert reasoning.control(source, fmt, "on", budget=512) == reasoning.Control({"thinking_budget": 512}, 512)
    assert reasoning.control(source, fmt, None, budget=512) == reasoning.Control({"thinking_budget": 512}, 512)
    assert reasoning.control(source, fmt, None) == reasoning.Control({}, None)
    off = tail(source, **reasoning.control(source, fmt, "off").variables)
    assert off.endswith("</seed:think>") and reasoning.detect(source, (), off).start == ANSWER


def test_a_model_that_does_not_reason_is_run_as_always():
    source = template("HuggingFaceTB-SmolLM2-135M-Instruct.jinja")
    for think in (None, "on", "off", "high"):
        assert reasoning.control(source, None, think, budget=8) == reasoning.Control({}, None)


@pytest.mark.parametrize(("source", "think", "budget", "message"), [
    ("Qwen-Qwen3-0.6B.jinja", "high", None, "on or off"),
    ("Qwen-Qwen3-0.6B.jinja", "maybe", None, "--think takes on, off, low, medium, high"),
    ("Qwen-Qwen3-0.6B.jinja", "on", -1, "--think-budget"),
])
def test_bad_think_settings_say_what_is_wrong(source, think, budget, message):
    source = template(source)
    with pytest.raises(UsageError, match=message):
        reasoning.control(source, reasoning.detect(source), think, budget)
