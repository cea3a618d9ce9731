"""A reasoning model's stream through the engines' one token loop (backends/streaming.py):
recorded token streams of each format replayed as a model's tokens, then the real SmolLM2
made to think (the `thinking_gguf` fixture) on each local engine. What the splitter does
with text alone is tested in test_reasoning.py; here, what reaches a view: Token kinds,
Done's answer and thought, the split stats, the budget written as the model's own tokens,
a cut, a cancel, and the engine fit for the next answer."""

from __future__ import annotations

import contextlib
import json
import shutil

import pytest

from roost.backends import load, reasoning
from roost.backends.base import ANSWER, REASONING, Cancel, Done, Params, Plan, Token
from roost.backends.streaming import ChatPrompt, TokenLoop
from test_reasoning import HI, STREAMS, joined as by_kind, template  # joined reads Tokens as Pieces

EOS = "<|eos|>"
# gpt-oss's ends of turn (llama.cpp's EOG set for it); "<|end|>" too, here, so that a budget's
# close_text, which writes it, is seen never to be taken for one.
ENDS = {EOS, "<|return|>", "<|call|>", "<|end|>"}


class ScriptedModel(TokenLoop):
    """The model's side of the loop played from a script: each piece of text one token, in
    a vocabulary that grows as text needs it. When the loop writes tokens of its own (a
    budget closing the thought), the model goes on from `answer_at` in its script: it
    answers. It ends its turn at the script's end."""

    def __init__(self, source: str, script: list[str], answer_at: int | None = None, n_ctx: int = 4096):
        self.vocab: list[str] = []
        self.script = script
        self.answer_at = answer_at
        self.forced: list[list[int]] = []  # what the loop wrote, each time it did
        self.prompts: list[list[int]] = []
        self._prompt = ChatPrompt(source, self._tokenize, None, "", EOS, False)
        self._n_ctx, self._n_ctx_train = n_ctx, None

    def _id(self, text: str) -> int:
        if text not in self.vocab:
            self.vocab.append(text)
        return self.vocab.index(text)

    def _tokenize(self, text: str) -> list[int]:
        # Whole pieces of the script where they match, else one character each.
        pieces, i = [], 0
        known = sorted({p for p in self.script if p}, key=len, reverse=True)
        while i < len(text):
            piece = next((p for p in known if text.startswith(p, i)), text[i])
            pieces.append(self._id(piece))
            i += len(piece)
        return pieces

    def _reuse_prefix(self, prompt):
        self.prompts.append(prompt)
        return 0

    def _steps(self, prompt, cached, params, cancel, grammar=None):
        at = 0
        while at < len(self.script):
            forced = yield self._id(self.script[at]), None
            at += 1
            if forced:
                self.forced.append(forced)
                at = self.answer_at
        yield self._id(EOS), None

    def _ends_turn(self, token: int) -> bool:
        return self.vocab[token] in ENDS

    def _detokenizer(self, special: bool):
        vocab = self.vocab

        class Pieces:
            def add(self, token):
                return vocab[token]

            def finish(self):
                return ""
        return Pieces()


def answer(engine, params: Params = Params(), cancel: Cancel | None = None):
    events = list(engine.stream(HI, params, cancel))
    done = events[-1]
    assert isinstance(done, Done) and all(isinstance(e, Token) for e in events[:-1])
    return events[:-1], done


def scripted(name: str, **kw) -> tuple[ScriptedModel, dict]:
    source, tokens, want = STREAMS[name]
    # Harmony's commentary (preambles, tool calls) is shown with the thought, not as the answer.
    want = {ANSWER: want.get(ANSWER, ""), REASONING: want.get(REASONING, "") + want.get(reasoning.COMMENTARY, "")}
    ends = [t for t in tokens if t in ENDS and t != "<|end|>"]
    script = tokens[:tokens.index(ends[0])] if ends else tokens  # the model's own end of turn is the engine's
    return ScriptedModel(template(source), script, **kw), want


@pytest.mark.parametrize("name", sorted(STREAMS))
def test_each_format_reaches_the_views_as_thought_and_answer(name):
    engine, want = scripted(name)
    if name.startswith("gpt-oss"):  # with "<|end|>" an end of turn here, only the analysis is written
        engine.script = engine.script[:engine.script.index("<|end|>")]
        want = {ANSWER: "", REASONING: "I'm\nthinking"}
    tokens, done = answer(engine)
    assert {k: v for k, v in by_kind(tokens).items()} == {k: v for k, v in want.items() if v}
    assert (done.text, done.reasoning) == (want[ANSWER], want[REASONING])
    assert done.stats.stop_reason == "stop"
    thought = [t for t in tokens if t.kind == REASONING]
    # The tokens up to the thought's closing tag are thought, the tags too; the end of turn is not.
    first_answer = next((t.generated for t in tokens if t.kind == ANSWER), None)
    if first_answer is None:
        # An end of turn inside the thought counts with it: nothing was answered.
        assert done.stats.reasoning_tokens == done.stats.generated_tokens and done.stats.answer_ttft_s is None
    else:
        assert 0 < done.stats.reasoning_tokens < first_answer  # an answer's wrapper tag (Granite) counts with it
        assert done.stats.answer_ttft_s >= done.stats.ttft_s
        assert thought and max(t.generated for t in thought) < first_answer


@pytest.mark.parametrize("name", ["qwen3", "r1-distill", "gpt-oss", "magistral", "command-r7b", "gemma4"])
def test_tags_cut_into_single_characters_never_leak(name):
    """Every tag split at every position at once: one character per token."""
    engine, want = scripted(name)
    if name == "gpt-oss":
        ENDS.discard("<|end|>")
    try:
        engine.script = list("".join(engine.script))
        tokens, done = answer(engine)
    finally:
        ENDS.add("<|end|>")
    assert by_kind(tokens) == {k: v for k, v in want.items() if v}
    assert done.stats.generated_tokens == len(engine.script) + 1


def test_a_stream_cut_inside_the_thought_is_all_thought_and_no_answer():
    engine, _ = scripted("r1-distill")
    tokens, done = answer(engine, Params(max_tokens=4))
    assert done.stats.stop_reason == "length" and done.stats.generated_tokens == 4
    assert done.text == "" and done.reasoning == "Okay, 2+" and {t.kind for t in tokens} == {REASONING}
    assert done.stats.reasoning_tokens == 4 and done.stats.answer_tokens == 0 and done.stats.answer_ttft_s is None
    assert done.stats.reasoning_s == done.stats.decode_s


def test_a_cancel_inside_the_thought_keeps_the_thought_and_the_engine_answers_again():
    engine, want = scripted("qwen3")
    cancel, seen = Cancel(), []
    for event in engine.stream(HI, Params(), cancel):
        seen.append(event)
        if isinstance(event, Token) and event.kind == REASONING and len(seen) == 2:
            cancel.set()
    done = seen[-1]
    assert done.stats.stop_reason == "cancelled" and done.text == ""
    assert want[REASONING].startswith(done.reasoning) and done.reasoning
    tokens, again = answer(engine)
    assert (again.text, again.reasoning) == (want[ANSWER], want[REASONING])


LONG_THOUGHT = [" hmm"] * 40


@pytest.mark.parametrize("name,head,head_thinks,answer_start", [
    ("r1-distill", [], 0, "</think>"),  # the prompt opened the thought
    ("qwen3", ["<think>", "\n"], 2, "</think>"),  # the tag, and the newline in the thought
    ("magistral", ["[THINK]"], 1, "[/THINK]"),
    ("gpt-oss", ["<|channel|>", "analysis", "<|message|>"], 1, "final"),  # the header's last token opens it
])
def test_a_budget_closes_the_thought_with_the_models_own_tokens_and_it_answers(name, head, head_thinks, answer_start):
    source, tokens, want = STREAMS[name]
    at = tokens.index(answer_start) + (2 if name == "gpt-oss" else 1)  # gpt-oss: past "final", "<|message|>"
    rest = [t for t in tokens[at:] if t not in ENDS]
    # The model, made to close its thought, goes on with the answer part of its script.
    engine = ScriptedModel(template(source), head + LONG_THOUGHT + rest, answer_at=len(head) + len(LONG_THOUGHT))
    budget = 5
    events, done = answer(engine, Params(think_budget=budget))
    fmt = reasoning.detect(engine._prompt.template, ())
    close = engine._tokenize(fmt.close_text)
    assert engine.forced == [close]  # once: the format's closing text, as tokens
    assert done.text == "".join(rest).strip() == want[ANSWER].strip()
    thought = done.reasoning.split()
    assert set(thought) == {"hmm"} and len(thought) == budget - head_thinks  # an opening tag is thinking too
    assert done.stats.reasoning_tokens == len(head) + len(thought) + len(close)  # so is the writing that closes it
    assert done.stats.generated_tokens == done.stats.reasoning_tokens + len(rest) + 1  # and the end of turn
    assert done.stats.stop_reason == "stop" and done.stats.answer_ttft_s is not None


def test_no_budget_no_writing():
    engine, want = scripted("qwen3")
    tokens, done = answer(engine, Params(think_budget=100))
    assert engine.forced == [] and (done.text, done.reasoning) == (want[ANSWER], want[REASONING])


def test_budget_zero_where_the_prompt_opened_the_thought_closes_it_in_the_prompt():
    source, tokens, want = STREAMS["r1-distill"]
    rest = tokens[tokens.index("</think>") + 1:]
    engine = ScriptedModel(template(source), rest)
    tokens_, done = answer(engine, Params(think="off"))
    fmt = reasoning.detect(engine._prompt.template, ())
    prompt = engine.prompts[-1]
    assert "".join(engine.vocab[t] for t in prompt).endswith("<think>\n" + fmt.close_text)
    assert engine.forced == [] and done.reasoning == "" and done.text == want[ANSWER]
    assert done.stats.reasoning_tokens == 0 and done.stats.answer_ttft_s >= done.stats.ttft_s


def test_a_model_that_does_not_reason_streams_as_before():
    # Its vocabulary has no "<think>" token: the text is just text.
    engine = ScriptedModel(template("HuggingFaceTB-SmolLM2-135M-Instruct.jinja"), ["<th", "ink>Hi</", "think>", "!"])
    tokens, done = answer(engine, Params(think="on", think_budget=0))
    assert engine._prompt.reasoning() is None
    assert done.text == "<think>Hi</think>!" and done.reasoning == "" and {t.kind for t in tokens} == {ANSWER}
    assert done.stats.reasoning_tokens == 0 and done.stats.answer_ttft_s == done.stats.ttft_s


def test_held_back_text_that_never_became_a_stop_string_is_shown_at_the_end_of_turn():
    engine = ScriptedModel(template("HuggingFaceTB-SmolLM2-135M-Instruct.jinja"), ["Hi", " there", " Us"])
    _, done = answer(engine, Params(stop=("User:",)))
    assert done.text == "Hi there Us" and done.stats.stop_reason == "stop"


# -- for real: SmolLM2 made to think (tests/conftest.py THINKING_TEMPLATE) -------------------


@pytest.fixture(scope="module")
def thinking_mlx(tmp_path_factory, demo_mlx):
    """The MLX demo model with the same thinking template."""
    from conftest import THINKING_TEMPLATE

    path = tmp_path_factory.mktemp("mlx") / "SmolLM2-think-mlx"
    shutil.copytree(demo_mlx, path)
    config = json.loads((path / "tokenizer_config.json").read_text())
    config["chat_template"] = THINKING_TEMPLATE
    (path / "tokenizer_config.json").write_text(json.dumps(config))
    (path / "chat_template.jinja").unlink(missing_ok=True)
    return str(path)


ENGINES = [pytest.param("llama"), pytest.param("child", marks=pytest.mark.slow),
           pytest.param("mlx", marks=pytest.mark.slow)]


@pytest.fixture(params=ENGINES)
def thinking_engine(request, thinking_gguf):
    with contextlib.ExitStack() as stack:
        if request.param == "mlx":
            path = request.getfixturevalue("thinking_mlx")
            engine = load(path, Plan(n_ctx=1024), engine="mlx")
        else:
            engine = load(thinking_gguf, Plan(n_ctx=1024), engine="llama", isolated=request.param == "child")
        stack.callback(engine.close)
        yield engine


QUESTION = [{"role": "user", "content": "Write a long story about a dragon who learns to bake bread."}]


def test_a_real_model_thinks_within_its_budget_then_answers(thinking_engine):
    assert thinking_engine.info().reasoning == "think"
    events = list(thinking_engine.stream(QUESTION, Params(temperature=0, max_tokens=48, think_budget=16)))
    done, tokens = events[-1], events[:-1]
    close = "\n</think>\n\n"
    stats = done.stats
    assert done.reasoning and done.text, "a thought, then an answer"
    assert "<think>" not in done.text + done.reasoning and "</think>" not in done.text + done.reasoning
    # 16 tokens of thought and the few of the closing tag, then the answer to the end.
    assert 16 < stats.reasoning_tokens <= 16 + len(close)
    assert stats.answer_tokens == 48 - stats.reasoning_tokens and stats.stop_reason == "length"
    assert [t.kind for t in tokens] == sorted((t.kind for t in tokens), key=[REASONING, ANSWER].index)
    assert stats.answer_ttft_s > stats.ttft_s and stats.reasoning_s > 0
    assert "".join(t.text for t in tokens if t.kind == ANSWER) == done.text


def test_a_real_model_with_thinking_off_answers_at_once(thinking_engine):
    done = list(thinking_engine.stream(QUESTION, Params(temperature=0, max_tokens=24, think="off")))[-1]
    assert done.reasoning == "" and done.text and done.stats.reasoning_tokens == 0
    # Without a budget the model, which never closes its thought itself, only thinks.
    done = list(thinking_engine.stream(QUESTION, Params(temperature=0, max_tokens=24)))[-1]
    assert done.text == "" and done.reasoning and done.stats.reasoning_tokens == 24


def test_a_second_thought_after_some_answer_is_kept_apart_from_the_first():
    source, tokens, _ = STREAMS["qwen3"]
    engine = ScriptedModel(template(source), tokens + ["<think>", "Also", " Lyon", "</think>", "Yes", "."])
    _, done = answer(engine)
    assert done.reasoning == "The user asks for the capital.\n\nAlso Lyon"
    assert done.text == "Paris is the capital.Yes."  # whitespace around a tag frames it: none is kept
