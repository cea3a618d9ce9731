"""The Engine contract, run against real engines on a real model.

One suite for every engine: each new engine joins the `engine` fixture's parameters.
"""

import threading

import pytest

from roost.backends.base import Cancel, Done, Params, Token
from roost.errors import ContextOverflow

CAPITAL = [{"role": "user", "content": "What is the capital of Japan?"}]
STORY = [{"role": "user", "content": "Write a long story about a dragon who learns to cook."}]
GREEDY = Params(temperature=0, max_tokens=48)


def collect(events):
    events = list(events)
    tokens = [e for e in events if isinstance(e, Token)]
    dones = [e for e in events if isinstance(e, Done)]
    assert len(dones) == 1 and events[-1] is dones[0], "a stream ends with exactly one Done"
    return "".join(t.text for t in tokens), dones[0]


def test_stream_yields_tokens_then_done_with_stats(engine):
    text, done = collect(engine.stream(CAPITAL, GREEDY))
    assert "Tokyo" in text
    assert done.text == text
    s = done.stats
    assert s.prompt_tokens > 5 and s.cached_tokens == 0
    assert s.generated_tokens >= 2
    assert s.stop_reason in ("stop", "length")
    assert 0 < s.prefill_s <= s.ttft_s
    assert s.decode_s > 0 and s.decode_tps > 0 and s.prefill_tps > 0
    assert s.context_tokens == s.prompt_tokens + s.generated_tokens <= s.n_ctx
    assert s.peak_rss_bytes > 50 * 2**20


def test_max_tokens_stops_with_length(engine):
    _, done = collect(engine.stream(STORY, Params(temperature=0, max_tokens=7)))
    assert done.stats.generated_tokens == 7
    assert done.stats.stop_reason == "length"


def test_greedy_is_repeatable(engine):
    assert collect(engine.stream(CAPITAL, GREEDY))[0] == collect(engine.stream(CAPITAL, GREEDY))[0]


def test_seed_repeats_sampling(make_engine):
    # Two engines: on one, the second run would hit the KV cache, and a prompt evaluated
    # in one batch gives logits a float rounding apart from one replayed token by token.
    hot = Params(temperature=1.5, max_tokens=24, seed=1234)
    first, second = (collect(make_engine().stream(STORY, hot))[0] for _ in range(2))
    assert first == second
    other = collect(make_engine().stream(STORY, Params(temperature=1.5, max_tokens=24, seed=99)))[0]
    assert other != first


def test_stop_string_is_never_shown(engine):
    text, done = collect(engine.stream(CAPITAL, Params(temperature=0, max_tokens=48, stop=("Tokyo",))))
    assert "Tokyo" not in text
    assert done.stats.stop_reason == "stop"


def test_cancel_stops_within_one_token_and_engine_stays_consistent(engine):
    cancel = Cancel()
    seen = 0
    events = []
    for event in engine.stream(STORY, Params(temperature=0, max_tokens=200), cancel):
        events.append(event)
        if isinstance(event, Token):
            seen += 1
            if seen == 3:
                cancel.set()
    text, done = collect(events)
    assert done.stats.stop_reason == "cancelled"
    assert done.stats.generated_tokens <= 4
    assert done.text == text
    # The KV cache is left holding a half answer: the next answer must not depend on it.
    after, _ = collect(engine.stream(CAPITAL, GREEDY))
    fresh, _ = collect(engine.stream(CAPITAL, GREEDY))
    assert after == fresh and "Tokyo" in after


def test_cancel_from_another_thread(engine):
    # Set by a thread of its own while the answer runs, as the TUI's Escape and a server's
    # dropped client do. It lands a few tokens into a long story: only the cancel ends it there.
    cancel, answering = Cancel(), threading.Event()
    threading.Thread(target=lambda: answering.wait(60) and cancel.set(), daemon=True).start()
    events = []
    for event in engine.stream(STORY, Params(temperature=0, max_tokens=400), cancel):
        events.append(event)
        answering.set()
    _, done = collect(events)
    assert done.stats.stop_reason == "cancelled"
    assert 1 <= done.stats.generated_tokens < 400


def test_second_turn_reuses_the_kv_cache(engine):
    messages = list(CAPITAL)
    _, first = collect(engine.stream(messages, GREEDY))
    messages += [
        {"role": "assistant", "content": first.text},
        {"role": "user", "content": "And of Italy?"},
    ]
    _, second = collect(engine.stream(messages, GREEDY))
    s = second.stats
    # Everything up to the end of the first answer is already in the cache; only the
    # new question and the template's framing around it are prefilled.
    assert s.cached_tokens >= first.stats.prompt_tokens + first.stats.generated_tokens - 2
    assert s.prefilled_tokens < 20 < s.prompt_tokens


def test_context_overflow_is_refused_with_the_numbers(make_engine):
    small = make_engine(n_ctx=64)
    with pytest.raises(ContextOverflow) as err:
        collect(small.stream([{"role": "user", "content": "word " * 100}], GREEDY))
    assert "context holds 64" in str(err.value)
    # Filling the context while answering is a stop, not an error.
    _, done = collect(small.stream(STORY, Params(temperature=0)))
    assert done.stats.stop_reason == "context"
    assert done.stats.context_tokens == done.stats.n_ctx == 64


# What each engine reports beyond the shared contract: llama.cpp's own buffer log
# (compute scratch, threads), MLX's allocator (its high-water mark, freed buffers kept).
OWN = {
    "llama.cpp": {"buffers": {"compute"}, "threads": True, "peak": False},
    "mlx": {"buffers": {"other", "cache"}, "threads": False, "peak": True},
    "remote": {"buffers": {"compute"}, "threads": True, "peak": False},  # the server's llama.cpp, read over HTTP
}


def test_memory_reading_has_engine_buffers(engine):
    collect(engine.stream(CAPITAL, Params(temperature=0, max_tokens=4)))
    reading = engine.memory()
    own = OWN[engine.info().engine]
    assert reading.rss_bytes > 0 and reading.peak_rss_bytes >= reading.rss_bytes
    assert reading.buffers["model"] > 50 * 2**20
    assert reading.buffers["kv"] > 0
    assert own["buffers"] <= set(reading.buffers) and reading.buffers.get("compute", 1) > 0
    assert reading.device_used_bytes is None  # no GPU here
    if own["peak"]:
        assert reading.engine_peak_bytes >= reading.buffers["model"] + reading.buffers["kv"]


def test_info_describes_engine_and_build(engine):
    info = engine.info()
    assert info.engine in OWN
    assert info.device == "CPU" and info.n_gpu_layers == 0 and not info.gpu_offload
    assert info.n_ctx == 2048 and info.n_ctx_train >= 2048
    assert info.chat_template == "model"
    assert (info.n_threads or 0) >= 1 if OWN[info.engine]["threads"] else info.n_threads is None
    assert "CPU" in info.build or "cpu" in info.build


def test_tokens_carry_the_engines_clock(engine):
    tokens = [e for e in engine.stream(STORY, Params(temperature=0, max_tokens=20)) if isinstance(e, Token)]
    assert [t.generated for t in tokens] == sorted(t.generated for t in tokens)
    assert tokens[-1].generated >= 19 and tokens[-1].decode_tps > 0
    assert all(t.ttft_s == tokens[0].ttft_s > 0 for t in tokens) and tokens[0].prompt_tokens > 5


def test_complete_continues_raw_text_without_the_chat_template(engine):
    text, done = collect(engine.complete("The capital of France is", Params(temperature=0, max_tokens=8)))
    assert "Paris" in text and done.text == text
    # No template around it: the prompt is the few tokens of the text (and BOS, where the model wants one).
    assert 5 <= done.stats.prompt_tokens <= 7
    assert done.stats.stop_reason in ("stop", "length")
