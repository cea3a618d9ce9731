"""Sliding-window models (Gemma 2 and 3, gpt-oss): most layers attend to the last few
hundred tokens only, and llama.cpp gives them a cache of that window, not of the context.
Tested on a Gemma-3-shaped model made here: 12 layers, every 6th global, a 128-token window.
"""

import dataclasses

import pytest

from gguf_files import synthetic_gemma3
from roost.backends import load
from roost.backends.base import Done, Params, Plan
from roost.machine import model_memory
from roost.models import catalog, gguf_info

WINDOW = 128


@pytest.fixture(scope="module")
def gemma3_gguf(tmp_path_factory, demo_gguf) -> str:
    return synthetic_gemma3(demo_gguf, str(tmp_path_factory.mktemp("gemma3") / "gemma3-swa.gguf"),
                            sliding_window=WINDOW)


def answer(engine, messages, max_tokens):
    done = [e for e in engine.stream(messages, Params(temperature=0, max_tokens=max_tokens)) if isinstance(e, Done)]
    return done[0]


# A document of ~1,000 tokens: far longer than the window.
DOCUMENT = " ".join(f"Line {i} of the report says the river rose by {i % 7} feet." for i in range(60))


def test_the_header_gives_the_window_and_llama_cpps_layer_pattern(gemma3_gguf, demo_gguf):
    info = gguf_info.read(gemma3_gguf)
    assert info.sliding_window == WINDOW
    assert info.swa_layers == [i % 6 != 5 for i in range(12)]
    demo = gguf_info.read(demo_gguf)
    assert demo.sliding_window == 0 and not any(demo.swa_layers)


@pytest.mark.parametrize("n_ctx", [4096, 16384])
def test_the_planned_kv_cache_is_what_llama_cpp_allocates(gemma3_gguf, n_ctx):
    shape = model_memory.Shape.from_gguf(gguf_info.read(gemma3_gguf))
    planned = model_memory.kv_bytes(shape, n_ctx)
    engine = load(gemma3_gguf, Plan(n_ctx=n_ctx), engine="llama")
    try:
        reported = engine.memory().buffers["kv"]
    finally:
        engine.close()
    assert 0.9 <= planned / reported <= 1.1
    # The sliding layers hold 768 cells (the window and a 512-token batch), not n_ctx.
    full_size = model_memory.kv_bytes(dataclasses.replace(shape, swa_layers=()), n_ctx)
    assert reported < full_size / 3


def test_a_second_turn_reuses_the_cache_and_answers_as_a_fresh_engine(gemma3_gguf):
    chat = load(gemma3_gguf, Plan(n_ctx=4096), engine="llama")
    fresh = load(gemma3_gguf, Plan(n_ctx=4096), engine="llama")
    try:
        messages = [{"role": "user", "content": DOCUMENT + " What happened?"}]
        first = answer(chat, messages, 24)
        messages += [{"role": "assistant", "content": first.text}, {"role": "user", "content": "And then?"}]
        second = answer(chat, messages, 24)
        assert second.stats.cached_tokens > first.stats.prompt_tokens > 4 * WINDOW
        assert second.text == answer(fresh, messages, 24).text
    finally:
        chat.close()
        fresh.close()


def test_a_prefix_whose_window_was_overwritten_is_read_again(gemma3_gguf):
    # A long answer, then the question edited at its end: the prefix the two prompts share
    # ends a long answer back, where the sliding layers' cache (256 cells at a 128-token
    # batch) no longer holds the window. Kept, it would attend to what is gone.
    plan = Plan(n_ctx=4096, n_batch=128)
    chat, fresh = load(gemma3_gguf, plan, engine="llama"), load(gemma3_gguf, plan, engine="llama")
    try:
        long = answer(chat, [{"role": "user", "content": DOCUMENT + " What happened?"}], 300)
        assert long.stats.generated_tokens == 300
        edited = [{"role": "user", "content": DOCUMENT + " What happened next?"}]
        again = answer(chat, edited, 24)
        assert again.text == answer(fresh, edited, 24).text
        assert again.stats.cached_tokens == 0
    finally:
        chat.close()
        fresh.close()


def test_the_catalog_plans_gemma3_at_its_real_kv_cache():
    gemma = catalog.models()["gemma3-4b"].shape()
    assert gemma.sliding_window == 1024
    assert gemma.swa_layers.count(False) == 34 // 6  # layers 5, 11, …, 29 see the whole context
    # At 32K, the 29 sliding layers hold 1,536 cells each: about a fifth of the full-size cache.
    full_size = model_memory.kv_bytes(dataclasses.replace(gemma, swa_layers=()), 32768)
    assert model_memory.kv_bytes(gemma, 32768) < full_size / 4
    gpt_oss = catalog.models()["gpt-oss-20b"].shape()
    assert gpt_oss.sliding_window == 128 and gpt_oss.swa_layers[:4] == (True, False, True, False)


def test_a_catalog_window_must_be_a_count(tmp_path):
    entry = (catalog.CATALOG.read_text().split('[models."gemma3-1b"]')[1].split("\n\n")[0]
             .replace("sliding_window = 512", 'sliding_window = "512"'))
    with pytest.raises(catalog.CatalogError, match="sliding_window and sliding_window_pattern must be"):
        catalog.parse('[models."gemma3-1b"]' + entry)
