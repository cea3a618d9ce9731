"""Log-probabilities (issue #23 item 3) and no silent drops (item 4): the official openai
client against `roost serve` on 127.0.0.1, the engine the real SmolLM2 through llama.cpp
in a process of its own (as roost serve runs it), its numbers checked against
llama-cpp-python's own logits; and each request field roost does not honour refused by
name."""

import math

import httpx2
import llama_cpp
import numpy as np
import pytest

from conftest import openai_client as client, served_in_child
from roost.backends import load
from roost.backends.base import ANSWER, REASONING, Done, Logprob, Params, Plan, Token
from roost.backends.child_protocol import token_message, token_of
from roost.machine import fit
from roost.serve.openai_api import REFUSED

CAPITAL = [{"role": "user", "content": "What is the capital of Japan?"}]
PROMPT = "The capital of France is"


@pytest.fixture(scope="module")
def url(demo_gguf):
    with served_in_child(demo_gguf, 512) as url:
        yield url


def post(url, body, path="/v1/chat/completions"):
    return httpx2.post(url + path, json=body, timeout=120)


def check_ranked(chosen, top, n):
    """One place's numbers: probabilities, the top list likeliest first, and greedy's
    choice the likeliest of all."""
    assert len(top) == n
    values = [t.logprob for t in top]
    assert all(v <= 0 for v in [chosen.logprob, *values])  # exp ≤ 1
    assert values == sorted(values, reverse=True)
    assert sum(math.exp(v) for v in values) <= 1 + 1e-6
    assert top[0].token == chosen.token and top[0].logprob == chosen.logprob
    assert chosen.bytes == list(chosen.token.encode()) and all(t.bytes == list(t.token.encode()) for t in top)


def test_chat_logprobs_whole_and_streamed(url):
    api = client(url)
    ask = dict(model="demo", messages=CAPITAL, temperature=0, max_tokens=30, logprobs=True, top_logprobs=5)
    whole = api.chat.completions.create(**ask)
    content = whole.choices[0].logprobs.content
    assert whole.choices[0].finish_reason == "stop"
    assert len(content) == whole.usage.completion_tokens - 1  # all but the end of turn, which is no content
    assert "".join(t.token for t in content) == whole.choices[0].message.content
    for place in content:
        check_ranked(place, place.top_logprobs, 5)

    chunks = [c for c in api.chat.completions.create(**ask, stream=True) if c.choices]
    streamed = [t for c in chunks if c.choices[0].logprobs for t in c.choices[0].logprobs.content]
    assert [t.model_dump() for t in streamed] == [t.model_dump() for t in content]  # greedy: the same answer
    for c in chunks:  # each chunk's tokens are its text's
        if c.choices[0].logprobs:
            assert "".join(t.token for t in c.choices[0].logprobs.content) == c.choices[0].delta.content

    # logprobs alone: each token's own, no list
    plain = api.chat.completions.create(**{**ask, "top_logprobs": None})
    assert [(t.token, t.top_logprobs) for t in plain.choices[0].logprobs.content] == [(t.token, []) for t in content]


def test_completions_logprobs_in_the_legacy_shape(url):
    api = client(url)
    ask = dict(model="demo", prompt=PROMPT, temperature=0, max_tokens=6, logprobs=3)
    whole = api.completions.create(**ask)
    lp = whole.choices[0].logprobs
    assert "".join(lp.tokens) == whole.choices[0].text and len(lp.tokens) == 6
    assert lp.text_offset[0] == len(PROMPT)
    assert lp.text_offset == [len(PROMPT) + len("".join(lp.tokens[:i])) for i in range(6)]
    for token, logprob, top in zip(lp.tokens, lp.token_logprobs, lp.top_logprobs):
        assert len(top) == 3 and top[token] == logprob == max(top.values())  # greedy: the chosen is the likeliest

    chunks = [c for c in api.completions.create(**ask, stream=True) if c.choices and c.choices[0].logprobs]
    assert [t for c in chunks for t in c.choices[0].logprobs.tokens] == lp.tokens
    assert [o for c in chunks for o in c.choices[0].logprobs.text_offset] == lp.text_offset
    assert [p for c in chunks for p in c.choices[0].logprobs.token_logprobs] == lp.token_logprobs


def test_the_numbers_are_llama_cpps_own(url, demo_gguf):
    """Each token roost chose and its top 5, against llama-cpp-python evaluating the same
    tokens with logits_all (flash attention as roost's default on this CPU has it)."""
    got = client(url).completions.create(model="demo", prompt=PROMPT, temperature=0, max_tokens=6,
                                         logprobs=5).choices[0].logprobs
    llm = llama_cpp.Llama(demo_gguf, n_ctx=512, logits_all=True, verbose=False,
                          flash_attn=fit.flash_attention("auto", "f16", "CPU"))
    try:
        bos = [llm.token_bos()] if llm._model.add_bos_token() else []
        llm.eval(bos + llm.tokenize(PROMPT.encode(), add_bos=False, special=True))
        for token, logprob, top in zip(got.tokens, got.token_logprobs, got.top_logprobs):
            logits = np.asarray(llm.scores[llm.n_tokens - 1], dtype=np.float64)
            own = logits - logits.max() - np.log(np.exp(logits - logits.max()).sum())
            best = np.argsort(-own)[:5]
            assert llm.detokenize([int(best[0])]).decode() == token
            assert logprob == pytest.approx(own[best[0]], abs=1e-3)
            assert sorted(top.values(), reverse=True) == pytest.approx(own[best].tolist(), abs=1e-3)
            llm.eval([int(best[0])])
    finally:
        llm.close()


def test_answers_without_logprobs_say_null(url):
    whole = post(url, {"model": "demo", "messages": CAPITAL, "max_tokens": 2}).json()
    assert "logprobs" in whole["choices"][0] and whole["choices"][0]["logprobs"] is None
    chunks = client(url).chat.completions.create(model="demo", messages=CAPITAL, max_tokens=2, stream=True)
    assert all(c.choices[0].logprobs is None for c in chunks if c.choices)
    text = post(url, {"model": "demo", "prompt": PROMPT, "max_tokens": 2}, "/v1/completions").json()
    assert text["choices"][0]["logprobs"] is None


def test_a_thought_is_left_out_of_the_answers_logprobs(thinking_gguf):
    """The thought's tokens carry theirs on their own Token events (the model chose them),
    the answer's alone reach Done; the tokens roost wrote to close the thought carry none."""
    engine = load(thinking_gguf, Plan(n_ctx=512))
    try:
        events = list(engine.stream(CAPITAL, Params(temperature=0, max_tokens=20, think_budget=5, logprobs=1)))
    finally:
        engine.close()
    done = events[-1]
    tokens = [e for e in events if isinstance(e, Token)]
    thought = [lp for t in tokens if t.kind == REASONING for lp in t.logprobs]
    answer = [lp for t in tokens if t.kind == ANSWER for lp in t.logprobs]
    assert isinstance(done, Done) and done.reasoning and done.text
    assert len(thought) == 5 and list(done.logprobs) == answer
    assert len(answer) == done.stats.answer_tokens
    assert "".join(lp.token for lp in answer).strip() == done.text.strip()


def test_the_engine_process_carries_logprobs_only_when_asked():
    plain = Token("Tok", 3, 0.5, 0.1, 12, ANSWER)
    assert len(token_message(plain)) == 7 and token_of(token_message(plain)) == plain  # unchanged without them
    # A token that is part of a character keeps its bytes, as surrogates.
    part = b"\xe2\x80".decode("utf-8", "surrogateescape")
    rich = Token("yo", 4, 0.6, 0.1, 12, ANSWER, (Logprob(part, -0.25, ((part, -0.25), ("x", -2.0))),))
    assert token_of(token_message(rich)) == rich


def test_a_token_that_is_part_of_a_character_shows_its_bytes():
    from roost.serve.answer_shapes import ChatShape

    part = b"\xe2\x80".decode("utf-8", "surrogateescape")
    chunk = ChatShape("demo", logprobs=True).piece("", ANSWER, (Logprob(part, -0.5),))
    shown = chunk["choices"][0]["logprobs"]["content"][0]
    assert shown == {"token": "\\xe2\\x80", "bytes": [0xE2, 0x80], "logprob": -0.5, "top_logprobs": []}


# Each refused field with a value that asks for something roost does not do.
ASKS = {"n": 2, "best_of": 3, "echo": True, "suffix": "}", "logit_bias": {"42": 5},
        "functions": [{"name": "f", "parameters": {}}], "function_call": "auto",
        "audio": {"voice": "alloy", "format": "wav"}, "modalities": ["text", "audio"],
        "prediction": {"type": "content", "content": "x"}, "web_search_options": {}, "verbosity": "low",
        "n_probs": 3, "grammar": "root ::= \"a\"", "json_schema": {"type": "object"}, "ignore_eos": True,
        "mirostat": 2, "typical_p": 0.5, "dry_multiplier": 0.8, "xtc_probability": 0.5}


def test_every_refused_field_is_tested():
    assert set(ASKS) == set(REFUSED)


@pytest.mark.parametrize("field", sorted(ASKS))
def test_a_field_roost_does_not_honour_is_a_400_naming_it(url, field):
    for path, body in (("/v1/chat/completions", {"messages": CAPITAL}), ("/v1/completions", {"prompt": PROMPT})):
        r = post(url, {"model": "demo", "max_tokens": 2, **body, field: ASKS[field]}, path)
        assert r.status_code == 400, (path, r.text)
        error = r.json()["error"]
        assert error["param"] == field and field in error["message"] and error["type"] == "invalid_request_error"


BAD_LOGPROBS = {
    "chat logprobs a number": ("/v1/chat/completions", {"logprobs": 3}, "logprobs"),
    "top_logprobs without logprobs": ("/v1/chat/completions", {"top_logprobs": 2}, "top_logprobs"),
    "top_logprobs over 20": ("/v1/chat/completions", {"logprobs": True, "top_logprobs": 21}, "top_logprobs"),
    "completions logprobs over 5": ("/v1/completions", {"logprobs": 6}, "logprobs"),
    "completions logprobs true": ("/v1/completions", {"logprobs": True}, "logprobs"),
    "presence_penalty over 2": ("/v1/chat/completions", {"presence_penalty": 2.5}, "presence_penalty"),
    "frequency_penalty text": ("/v1/completions", {"frequency_penalty": "high"}, "frequency_penalty"),
}


@pytest.mark.parametrize("case", BAD_LOGPROBS)
def test_bad_logprobs_are_400(url, case):
    path, fields, param = BAD_LOGPROBS[case]
    body = {"messages": CAPITAL} if path.endswith("chat/completions") else {"prompt": PROMPT}
    r = post(url, {"model": "demo", "max_tokens": 2, **body, **fields}, path)
    assert r.status_code == 400 and r.json()["error"]["param"] == param, r.text


def test_presence_and_frequency_penalties_are_llama_cpps(url):
    """Greedy under OpenAI's penalties picks the likeliest token once each is taken off the
    model's own log-probability (which logprobs report unchanged): the frequency one per
    time the token is already in the answer, the presence one once."""
    api = client(url)
    ask = dict(model="demo", messages=[{"role": "user", "content": "Say the word cat twenty times."}],
               temperature=0, max_tokens=24, logprobs=True, top_logprobs=20)
    plain = api.chat.completions.create(**ask).choices[0]
    penalized = api.chat.completions.create(**ask, frequency_penalty=1.5, presence_penalty=0.5).choices[0]
    assert penalized.message.content != plain.message.content
    content = penalized.logprobs.content
    for i, place in enumerate(content):
        before = [t.token for t in content[:i]]
        score = {t.token: t.logprob - 1.5 * before.count(t.token) - 0.5 * (t.token in before) for t in place.top_logprobs}
        assert place.token == max(score, key=score.get), i


def test_defaults_and_fields_that_change_nothing_are_accepted(url):
    r = post(url, {"model": "demo", "messages": CAPITAL, "max_tokens": 2, "n": 1, "presence_penalty": 0,
                   "frequency_penalty": 0.0, "logit_bias": {}, "modalities": ["text"], "logprobs": False,
                   "top_logprobs": 0, "user": "me", "metadata": {"a": "b"}, "store": False, "service_tier": "auto",
                   "prompt_cache_key": "k", "safety_identifier": "s", "cache_prompt": True})
    assert r.status_code == 200, r.text
    r = post(url, {"model": "demo", "prompt": PROMPT, "max_tokens": 2, "best_of": 1, "echo": False,
                   "suffix": None, "user": "me"}, "/v1/completions")
    assert r.status_code == 200, r.text


@pytest.mark.slow
def test_mlx_gives_them_in_the_same_shape(demo_mlx, demo_gguf):
    """MLX's (generate_step's own) on the demo's weights: the same greedy tokens as
    llama.cpp's, the same likeliest at each place, each probability within 0.1 (the two
    engines' arithmetic differs in the last bits, and more over a few layers)."""
    answers = {}
    for kind, path in (("mlx", demo_mlx), ("llama", demo_gguf)):
        engine = load(path, Plan(n_ctx=512), engine=kind)
        try:
            answers[kind] = list(engine.stream(CAPITAL, Params(temperature=0, max_tokens=8, logprobs=3)))[-1]
        finally:
            engine.close()
    mlx, llama = answers["mlx"], answers["llama"]
    assert mlx.text == llama.text and "".join(lp.token for lp in mlx.logprobs) == mlx.text
    for ours, theirs in zip(mlx.logprobs, llama.logprobs, strict=True):
        assert ours.token == theirs.token == ours.top[0][0] and len(ours.top) == 3
        assert math.exp(ours.logprob) == pytest.approx(math.exp(theirs.logprob), abs=0.1)
