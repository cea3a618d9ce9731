"""Progress while a long prompt is read: the engine's loop sends one between prefill
chunks (of the plan's n_batch), on llama.cpp, MLX and across the engine's own process;
the chat's status bar and `roost run --stats` at a terminal show it. A prompt read in
one chunk gets none. Small chunks (32 tokens) make a prompt of a few hundred tokens long."""

import contextlib
import re
import threading

import pytest
from pilot import ask, chat, until

from roost import report
from roost.backends import load
from roost.backends.base import Cancel, Done, Params, Plan, Progress, Token
from roost.tui.widgets.status import StatusBar

CHUNK = 32
LONG = " ".join(f"Line {i}: the quick brown fox jumps over the lazy dog." for i in range(12))  # ~170 tokens
GREEDY = Params(temperature=0, max_tokens=4)


def events_of(engine, text=LONG, cancel=None):
    return list(engine.complete(text, GREEDY, cancel))


def check_progress(events):
    """Progress before the first token, growing, ending at the whole prompt, and its
    last rate the prefill's own (Done's stats)."""
    done = events[-1]
    assert isinstance(done, Done)
    progress = [e for e in events if isinstance(e, Progress)]
    first_token = next(i for i, e in enumerate(events) if isinstance(e, Token))
    assert all(isinstance(e, Progress) for e in events[:first_token])
    assert len(progress) == first_token >= 3
    counts = [p.done for p in progress]
    assert counts == sorted(counts) and len(set(counts)) == len(counts), counts
    assert all(p.total == done.stats.prompt_tokens for p in progress)
    assert counts[-1] == done.stats.prompt_tokens
    assert progress[-1].elapsed_s == pytest.approx(done.stats.prefill_s)
    assert progress[-1].tps == pytest.approx(done.stats.prefill_tps)
    return progress


@pytest.fixture
def chunked(demo_gguf):
    engine = load(demo_gguf, Plan(n_ctx=2048, n_batch=CHUNK))
    yield engine
    engine.close()


def test_a_long_prompt_is_read_with_progress_and_a_short_one_without(chunked):
    check_progress(events_of(chunked))
    short = events_of(chunked, "The capital of Japan is")
    assert not any(isinstance(e, Progress) for e in short)


def test_progress_counts_what_the_cache_kept(chunked):
    events_of(chunked, LONG)
    progress = check_progress(events_of(chunked, LONG + " And then the fox rested." + LONG[:300]))
    kept = progress[0].cached
    assert kept > CHUNK and all(p.cached == kept for p in progress)
    assert progress[0].done == kept + CHUNK  # counted from what was kept, a chunk at a time


def test_a_cancel_while_reading_ends_before_any_token(chunked):
    cancel = Cancel()
    events = []
    for event in chunked.complete(LONG, GREEDY, cancel):
        events.append(event)
        cancel.set()
    assert isinstance(events[0], Progress) and events[0].done < events[0].total
    assert [type(e) for e in events] == [Progress, Done]
    assert events[-1].stats.stop_reason == "cancelled" and events[-1].stats.generated_tokens == 0
    assert isinstance(events_of(chunked, "The capital of Japan is")[-1], Done)  # and the engine goes on


@pytest.mark.slow
def test_progress_crosses_the_engines_process(demo_gguf):
    with contextlib.closing(load(demo_gguf, Plan(n_ctx=2048, n_batch=CHUNK), isolated=True)) as engine:
        check_progress(events_of(engine))
        left = engine.complete("Again: " + LONG, GREEDY)
        assert isinstance(next(left), Progress)
        left.close()  # left while the prompt is read: the child's answer is stopped and read to its end
        assert isinstance(events_of(engine, "The capital of Japan is")[-1], Done)


@pytest.mark.slow
def test_mlx_reads_in_chunks_with_progress_and_the_same_answer(demo_mlx):
    """The chunks before the last are run by roost (mlx-lm's prefill only calls back): the
    greedy answer is the one mlx-lm gives reading the prompt at once."""
    params = Params(temperature=0, max_tokens=12)
    with contextlib.closing(load(demo_mlx, Plan(n_ctx=2048, n_batch=CHUNK), engine="mlx")) as engine:
        chunked = list(engine.complete(LONG, params))
        again = list(engine.complete(LONG + " Then", params))  # the cache kept is cut back and read on
    with contextlib.closing(load(demo_mlx, Plan(n_ctx=2048, n_batch=4096), engine="mlx")) as engine:
        whole = list(engine.complete(LONG, params))
        whole_again = list(engine.complete(LONG + " Then", params))
    check_progress(chunked)
    assert not any(isinstance(e, Progress) for e in whole)
    assert chunked[-1].text == whole[-1].text and again[-1].text == whole_again[-1].text


def test_the_reading_line():
    assert report.reading(Progress(3072, 12000, 0, 2.0)) == "reading 3,072 / 12,000 tokens · 1,536 tok/s"
    assert report.reading(Progress(1024, 12000, 512, 0.5)) == "reading 1,024 / 12,000 tokens · 1,024 tok/s"
    assert report.reading(Progress(512, 600, 0, 0.0)) == "reading 512 / 600 tokens"


class HeldAtProgress:
    """A real engine whose stream is held at its first Progress until `resume` is set:
    the screen is then mid-read, as a person sees it."""

    def __init__(self, engine):
        self.engine = engine
        self.held, self.resume = threading.Event(), threading.Event()

    def stream(self, messages, params, cancel=None):
        for event in self.engine.stream(messages, params, cancel):
            yield event
            if isinstance(event, Progress) and not self.held.is_set():
                self.held.set()
                self.resume.wait(60)

    def __getattr__(self, name):
        return getattr(self.engine, name)


@pytest.mark.slow
def test_the_chat_shows_the_prompt_being_read_then_its_rate_with_the_answer(demo_gguf):
    engine = HeldAtProgress(load(demo_gguf, Plan(n_ctx=2048, n_batch=CHUNK)))

    async def scenario(app, screen, pilot):
        speed = screen.query_one(StatusBar).query_one("#speed")
        await ask(screen, pilot, "hi")
        await until(pilot, engine.held.is_set)
        await until(pilot, lambda: str(speed.render()).startswith("reading "))
        assert re.fullmatch(r"reading [\d,]+ / [\d,]+ tokens · [\d,]+ tok/s", str(speed.render()))
        engine.resume.set()
        await until(pilot, lambda: not screen.generating)
        assert " · prompt " in str(speed.render())

    try:
        chat(scenario, engine, params=Params(temperature=0, max_tokens=4), system=LONG)
    finally:
        engine.resume.set()
        engine.engine.close()
