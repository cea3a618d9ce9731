"""The engine in a process of its own (backends/child.py): real crashes in the child, as
native code crashes (SIGSEGV, abort(), SIGKILL as the out-of-memory killer sends), at
load, during prefill and mid-answer; each is one EngineCrashed naming the signal, and the
engine loads again. The Engine contract itself is the shared suite in test_engine.py
(the `child` kind)."""

import glob
import os
import tempfile
import threading

import numpy as np
import psutil
import pytest

from roost.backends import load
from roost.backends.base import Cancel, Done, Params, Plan, Token
from roost.errors import ContextOverflow, EngineCrashed, ModelFileError, UsageError

CAPITAL = [{"role": "user", "content": "What is the capital of Japan?"}]
STORY = [{"role": "user", "content": "Write a long story about a dragon who learns to cook."}]
GREEDY = Params(temperature=0, max_tokens=30)
SIGNALS = {"segv": "SIGSEGV", "abort": "SIGABRT", "kill": "SIGKILL"}
DOING = {"load": "loading the model", "prefill": "reading the prompt", "stream:3": "answering"}


def crash(monkeypatch, where, how="segv", once=None):
    """Arm the child's test-only crash hook (backends/child_main.py) for children started from now."""
    monkeypatch.setenv("ROOST_TEST_CRASH", where)
    monkeypatch.setenv("ROOST_TEST_CRASH_HOW", how)
    if once:
        monkeypatch.setenv("ROOST_TEST_CRASH_ONCE", str(once))


def answer(engine, messages=CAPITAL, params=GREEDY, cancel=None):
    events = list(engine.stream(messages, params, cancel))
    assert isinstance(events[-1], Done) and all(isinstance(e, Token) for e in events[:-1])
    return events[-1]


def engine_logs() -> set[str]:
    return set(glob.glob(os.path.join(tempfile.gettempdir(), "roost-engine-*")))


@pytest.fixture
def child(demo_gguf):
    engine = load(demo_gguf, Plan(n_ctx=512), isolated=True)
    yield engine
    engine.close()


@pytest.mark.parametrize("how", list(SIGNALS))
@pytest.mark.parametrize("where", list(DOING))
def test_a_real_crash_is_one_error_naming_the_signal_and_the_engine_loads_again(demo_gguf, monkeypatch, where, how):
    logs = engine_logs()
    crash(monkeypatch, where, how)
    tokens = []
    with pytest.raises(EngineCrashed) as crashed:
        engine = load(demo_gguf, Plan(n_ctx=512), isolated=True)
        for event in engine.stream(CAPITAL, GREEDY):
            tokens.append(event)
    error = crashed.value
    assert str(error).startswith(f"the engine crashed ({SIGNALS[how]}") and error.how == SIGNALS[how]
    assert str(error).endswith(f"while {DOING[where]}") and error.doing == DOING[where]
    if how == "kill":
        assert "out-of-memory killer" in str(error)
    assert len(tokens) == (2 if where == "stream:3" else 0)  # what came before the crash came
    monkeypatch.delenv("ROOST_TEST_CRASH")
    if where == "load":
        engine = load(demo_gguf, Plan(n_ctx=512), isolated=True)
    else:
        dead = engine.pid
        with pytest.raises(EngineCrashed) as again:  # every later call says the same, at once
            engine.memory()
        assert again.value is error and not engine.alive
        engine.restart()
        assert engine.pid != dead and not psutil.pid_exists(dead)
    try:
        assert "Tokyo" in answer(engine).text
    finally:
        engine.close()
    assert engine_logs() == logs  # the child's log file is never left behind


def test_crash_once_lets_the_next_child_live(demo_gguf, monkeypatch, tmp_path):
    crash(monkeypatch, "prefill", "abort", once=tmp_path / "crashed")
    engine = load(demo_gguf, Plan(n_ctx=512), isolated=True)
    try:
        with pytest.raises(EngineCrashed, match="SIGABRT"):
            answer(engine)
        assert (tmp_path / "crashed").exists()
        assert "Tokyo" in answer(engine.restart()).text
    finally:
        engine.close()


def test_roost_errors_in_the_child_are_raised_here_as_themselves(demo_gguf, tmp_path, child):
    with pytest.raises(ModelFileError, match="no-such.gguf"):
        load(str(tmp_path / "no-such.gguf"), Plan(), isolated=True)
    torn = tmp_path / "torn.gguf"
    with open(demo_gguf, "rb") as f:
        torn.write_bytes(f.read(4_000_000))
    with pytest.raises(ModelFileError) as in_child:
        load(str(torn), Plan(), isolated=True)
    with pytest.raises(ModelFileError) as here:
        load(str(torn), Plan())
    assert str(in_child.value) == str(here.value) and "is truncated or corrupt" in str(here.value)
    with pytest.raises(UsageError, match="unknown engine 'vllm'"):
        load(demo_gguf, Plan(), engine="vllm", isolated=True)
    with pytest.raises(ContextOverflow, match="context holds 512") as over:
        answer(child, [{"role": "user", "content": "word " * 600}])
    assert "in the engine's process" in over.value.__notes__[0]  # the child's traceback, for a log
    assert "Tokyo" in answer(child).text  # and the engine goes on


def test_events_memory_and_info_cross_the_pipe(child):
    done = answer(child)
    s = done.stats
    assert "Tokyo" in done.text and s.generated_tokens >= 2 and s.decode_tps > 0 and s.ttft_s > 0
    info = child.info()
    assert info.engine == "llama.cpp" and info.n_ctx == 512 and info.model.endswith(".gguf")
    reading = child.memory()
    engine_rss = psutil.Process(child.pid).memory_info().rss
    app_rss = psutil.Process().memory_info().rss
    # The child's own resident memory, the model's buffers, and this process's RSS apart.
    assert abs(reading.rss_bytes - engine_rss) < 16 * 2**20 and reading.buffers["model"] > 50 * 2**20
    assert abs(reading.app_rss_bytes - app_rss) < 16 * 2**20
    assert s.peak_rss_bytes >= reading.buffers["model"]  # the child's peak, not this process's


def test_cancel_set_before_or_during_a_stream_reaches_the_child(child):
    early = Cancel()
    early.set()
    done = answer(child, STORY, Params(temperature=0, max_tokens=200), early)
    assert done.stats.stop_reason == "cancelled" and done.stats.generated_tokens == 0
    cancel = Cancel()
    seen = 0
    for event in child.stream(STORY, Params(temperature=0, max_tokens=200), cancel):
        if isinstance(event, Token):
            seen += 1
            if seen == 3:
                threading.Thread(target=cancel.set).start()
        else:
            assert event.stats.stop_reason == "cancelled" and event.stats.generated_tokens <= 5
    assert "Tokyo" in answer(child).text


def test_a_stream_left_early_is_stopped_and_the_engine_goes_on(child):
    stream = child.stream(STORY, Params(temperature=0, max_tokens=500))
    assert isinstance(next(stream), Token)
    stream.close()  # the caller went away
    assert "Tokyo" in answer(child).text


def test_memory_is_read_while_an_answer_runs(child):
    readings = []
    for event in child.stream(STORY, Params(temperature=0, max_tokens=20)):
        if isinstance(event, Token) and event.generated == 5:
            readings.append(child.memory())
    assert readings and readings[0].rss_bytes > 50 * 2**20


def test_logits_and_tokens_are_the_in_process_engines(demo_gguf, child):
    local = load(demo_gguf, Plan(n_ctx=512))
    try:
        tokens = child.tokenize("The capital of France is Paris.")
        assert tokens == local.tokenize("The capital of France is Paris.")
        ours, theirs = child.logits(tokens), local.logits(tokens)
        assert ours.shape == theirs.shape == (len(tokens), 49152) and ours.flags.writeable
        np.testing.assert_array_equal(ours, theirs)
    finally:
        local.close()


def test_a_child_that_does_not_answer_is_not_waited_for(child, monkeypatch):
    """A child stuck in native code (stopped, here) holds up no reading and no cancel."""
    import signal
    import time

    from roost.backends import child as child_module

    monkeypatch.setattr(child_module, "_READING_S", 0.3)
    os.kill(child.pid, signal.SIGSTOP)
    try:
        # kill() returns before every thread of the child has stopped: the control thread
        # could still answer the reading below, so wait until the kernel says it is stopped.
        deadline = time.monotonic() + 10
        while open(f"/proc/{child.pid}/stat").read().rpartition(")")[2].split()[0] != "T":
            assert time.monotonic() < deadline, "the child did not stop"
            time.sleep(0.01)
        reading = child.memory()
        assert reading.rss_bytes is None and reading.app_rss_bytes > 0  # not known now: "memory n/a"
        cancel = Cancel()
        cancel.on_set(lambda: child._tell(("cancel", 0)))
        started = time.perf_counter()
        cancel.set()
        assert time.perf_counter() - started < 0.2
    finally:
        os.kill(child.pid, signal.SIGCONT)
    assert child.memory().rss_bytes > 50 * 2**20  # the late answer is dropped, this one read
    assert "Tokyo" in answer(child).text


def test_close_ends_the_child_and_gives_its_memory_back(demo_gguf):
    logs = engine_logs()
    engine = load(demo_gguf, Plan(n_ctx=512), isolated=True)
    pid = engine.pid
    assert psutil.Process(pid).memory_info().rss > 100 * 2**20
    # Its own session: Ctrl-C at the terminal reaches the app, which cancels; never the engine.
    assert os.getsid(pid) != os.getsid(0)
    engine.close()
    assert not psutil.pid_exists(pid) and engine_logs() == logs
    engine.close()  # twice is fine
    with pytest.raises(Exception, match="closed"):
        engine.memory()


@pytest.mark.slow
def test_mlx_runs_in_a_child_too(demo_mlx):
    engine = load(demo_mlx, Plan(n_ctx=512), engine="mlx", isolated=True)
    try:
        readings = []
        for event in engine.stream(CAPITAL, GREEDY):
            if isinstance(event, Token) and event.generated == 2:
                readings.append(engine.memory())
            elif isinstance(event, Done):
                assert "Tokyo" in event.text
        assert engine.info().engine == "mlx" and readings[0].buffers and readings[0].rss_bytes > 0
        assert engine.logits(engine.tokenize("Hello there"))[0].shape == (49152,)
    finally:
        engine.close()
