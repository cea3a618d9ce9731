"""`roost serve` over real HTTP on 127.0.0.1: the official openai client, errors, auth,
the queue, disconnects, a soak; and `roost run/chat --remote` against it.

The engine is the real SmolLM2 through llama.cpp. The remote engine's own contract is
the shared suite in test_engine.py (the `remote` kind)."""

import json
import os
import signal
import subprocess
import sys
import threading
import time

import httpx2
import openai
import psutil
import pytest

from conftest import ROOT, crash_in, one_line, roost, served
from pilot import ask_and_wait, drive, until
from replay import ReplayEngine
from roost.backends import connect, load
from roost.backends.base import Params, Plan, Token

KEY = "sekret-test-key"
CAPITAL = [{"role": "user", "content": "What is the capital of Japan?"}]
STORY = [{"role": "user", "content": "Write a long story about a dragon who learns to cook."}]


@pytest.fixture(scope="module")
def llama(demo_gguf):
    """One engine for the module's servers, each served in turn."""
    engine = load(demo_gguf, Plan(n_ctx=512))
    yield engine
    engine.close()


@pytest.fixture
def url(llama):
    with served(llama, api_key=KEY, queue=8) as url:
        yield url


def client(url, key=KEY):
    return openai.OpenAI(base_url=f"{url}/v1", api_key=key, max_retries=0, timeout=60)


def post(url, body, key=KEY, path="/v1/chat/completions", timeout=60):
    return httpx2.post(url + path, headers={"Authorization": f"Bearer {key}"}, timeout=timeout,
                       **({"content": body} if isinstance(body, (str, bytes)) else {"json": body}))


def metrics(url):
    return httpx2.get(url + "/metrics", params={"format": "json"}, headers={"Authorization": f"Bearer {KEY}"},
                      timeout=10).json()


def test_chat_with_the_openai_client_whole_and_streamed(url):
    api = client(url)
    whole = api.chat.completions.create(model="demo", messages=CAPITAL, temperature=0, max_tokens=30)
    assert "Tokyo" in whole.choices[0].message.content and whole.choices[0].finish_reason == "stop"
    usage = whole.usage
    assert usage.prompt_tokens > 5 and usage.completion_tokens > 2
    assert usage.total_tokens == usage.prompt_tokens + usage.completion_tokens
    # Beyond OpenAI's fields: the engine's own speeds, as llama-server names them, and all of roost's stats.
    timings, stats = whole.model_extra["timings"], whole.model_extra["roost"]
    assert timings["predicted_n"] == usage.completion_tokens and timings["predicted_per_second"] > 0
    assert stats["stop_reason"] == "stop" and 0 < stats["prefill_s"] <= stats["ttft_s"]

    chunks = list(api.chat.completions.create(model="demo", messages=CAPITAL, temperature=0, max_tokens=30,
                                              stream=True, stream_options={"include_usage": True}))
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == whole.choices[0].message.content  # greedy: the same answer either way
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "stop"
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == usage.completion_tokens
    # The second time, the server's KV cache held the whole prompt but its last token.
    assert chunks[-1].usage.prompt_tokens_details.cached_tokens == usage.prompt_tokens - 1
    assert len([c for c in chunks if c.choices and c.choices[0].delta.content]) >= usage.completion_tokens - 2


def test_completions_continue_raw_text(url):
    api = client(url)
    whole = api.completions.create(model="demo", prompt="The capital of France is", temperature=0, max_tokens=8)
    assert "Paris" in whole.choices[0].text and whole.usage.prompt_tokens < 10
    streamed = "".join(c.choices[0].text for c in api.completions.create(
        model="demo", prompt="The capital of France is", temperature=0, max_tokens=8, stream=True) if c.choices)
    assert streamed == whole.choices[0].text


def test_models_health_and_metrics(url):
    assert [m.id for m in client(url).models.list()] == ["demo"]
    health = httpx2.get(url + "/health").json()  # open without a key: for load balancers and scripts
    assert health["status"] == "ok" and health["busy"] is False
    before = metrics(url)
    client(url).chat.completions.create(model="demo", messages=CAPITAL, temperature=0, max_tokens=4)
    after = metrics(url)
    assert after["requests"]["answered"] == before["requests"]["answered"] + 1
    assert after["last"]["generated_tokens"] == 4 and after["last"]["stop_reason"] == "length"
    assert after["engine"]["engine"] == "llama.cpp" and after["engine"]["n_ctx"] == 512
    assert after["memory"]["rss_bytes"] > 50 * 2**20 and after["memory"]["buffers"]["kv"] > 0


@pytest.mark.parametrize("key", [None, "wrong"])
def test_api_key_is_required(url, key):
    for path in ("/v1/models", "/metrics"):
        r = httpx2.get(url + path, headers={"Authorization": f"Bearer {key}"} if key else {})
        assert r.status_code == 401 and r.json()["error"]["code"] == "invalid_api_key"
    with pytest.raises(openai.AuthenticationError):
        client(url, key or "none-given").chat.completions.create(model="demo", messages=CAPITAL, max_tokens=2)


BAD = {
    "not JSON": ("{'model': ", 400, None),
    "not an object": ("[1, 2]", 400, None),
    "no messages": ({"model": "demo"}, 400, "messages"),
    "empty messages": ({"model": "demo", "messages": []}, 400, "messages"),
    "no model": ({"messages": CAPITAL}, 400, "model"),
    "unknown model": ({"model": "gpt-9", "messages": CAPITAL}, 404, "model"),
    "bad role": ({"model": "demo", "messages": [{"role": "wizard", "content": "hi"}]}, 400, "messages[0]"),
    "image part": ({"model": "demo", "messages": [{"role": "user", "content": [
        {"type": "image_url", "image_url": {"url": "http://x/cat.png"}}]}]}, 400, "messages[0].content"),
    "absurd max_tokens": ({"model": "demo", "messages": CAPITAL, "max_tokens": 10**12}, 400, "max_tokens"),
    "negative max_tokens": ({"model": "demo", "messages": CAPITAL, "max_tokens": -1}, 400, "max_tokens"),
    "temperature text": ({"model": "demo", "messages": CAPITAL, "temperature": "hot"}, 400, "temperature"),
    # Python's json reads NaN, which no bound check catches by comparing.
    "temperature NaN": (json.dumps({"model": "demo", "messages": CAPITAL, "temperature": float("nan")}), 400,
                        "temperature"),
    "several choices": ({"model": "demo", "messages": CAPITAL, "n": 3}, 400, "n"),
    "too many stops": ({"model": "demo", "messages": CAPITAL, "stop": ["x"] * 100}, 400, "stop"),
    "over the context": ({"model": "demo", "messages": [{"role": "user", "content": "word " * 600}]}, 400, "messages"),
}


def test_bad_requests_get_openai_errors_and_the_server_goes_on(url):
    for name, (body, status, param) in BAD.items():
        r = post(url, body)
        assert r.status_code == status, (name, r.text)
        error = r.json()["error"]
        assert error["message"] and error["type"] == "invalid_request_error" and error["param"] == param, name
    overflow = post(url, BAD["over the context"][0]).json()["error"]
    assert overflow["code"] == "context_length_exceeded" and "context holds 512" in overflow["message"]
    wrong_method = httpx2.get(url + "/v1/chat/completions")
    assert wrong_method.status_code == 405 and wrong_method.json()["error"]["message"]
    # Still serving, and none of it counted as an answer or left the engine busy.
    r = post(url, {"model": "demo", "messages": CAPITAL, "temperature": 0, "max_tokens": 30})
    assert r.status_code == 200 and "Tokyo" in r.json()["choices"][0]["message"]["content"]
    assert metrics(url)["requests"]["running"] == 0


class _Failing(ReplayEngine):
    def stream(self, messages, params, cancel=None):
        raise RuntimeError("the GPU fell off the bus")
        yield


def test_an_engine_failure_is_a_500_in_openai_shape_and_the_server_goes_on():
    with served(_Failing(), api_key=KEY) as url:
        for stream in (False, True):
            r = post(url, {"model": "demo", "messages": CAPITAL, "stream": stream})
            assert r.status_code == 500, r.text
            assert r.json()["error"]["type"] == "server_error" and "GPU fell off" in r.json()["error"]["message"]
        assert metrics(url)["requests"]["failed"] == 2 and httpx2.get(url + "/health").json()["busy"] is False


def _ask_at_once(url, n, max_tokens=12):
    """n clients at the same moment; their responses."""
    start = threading.Barrier(n)
    results = [None] * n

    def one(i):
        start.wait()
        results[i] = post(url, {"model": "demo", "messages": CAPITAL, "temperature": 0, "max_tokens": max_tokens})

    threads = [threading.Thread(target=one, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    return threads, results


@pytest.mark.slow
def test_eight_clients_at_once_are_all_answered_in_turn(url):
    threads, results = _ask_at_once(url, 8)
    for t in threads:
        t.join(120)
    assert [r.status_code for r in results] == [200] * 8
    answers = {r.json()["choices"][0]["message"]["content"] for r in results}
    assert len(answers) == 1 and "Tokyo" in answers.pop()  # greedy, one after another on one engine


def test_beyond_the_queue_clients_are_refused_cleanly():
    # A recorded answer that holds the engine mid-stream until told to go on: the queue is
    # then full for as long as the test needs, on any machine.
    engine = ReplayEngine(pause_after=2, gap_s=0)
    with served(engine, api_key=KEY, queue=2) as url:
        with httpx2.stream("POST", url + "/v1/chat/completions", headers={"Authorization": f"Bearer {KEY}"},
                           json={"model": "demo", "messages": CAPITAL, "stream": True}, timeout=60) as holding:
            lines = holding.iter_lines()  # kept: a line iterator dropped early hangs up
            next(lines)
            assert engine.paused.wait(30)
            threads, results = _ask_at_once(url, 6)
            deadline = time.monotonic() + 60
            while sum(r is not None for r in results) < 4:  # two wait their turn; the rest are told at once
                assert time.monotonic() < deadline, [r and r.status_code for r in results]
                time.sleep(0.05)
            assert metrics(url)["requests"]["waiting"] == 2
            engine.resume.set()
            assert [line for line in lines if line][-1] == "data: [DONE]"
        for t in threads:
            t.join(120)
        refused = [r for r in results if r.status_code == 503]
        assert len(refused) == 4 and sum(r.status_code == 200 for r in results) == 2
        assert all(r.json()["error"]["code"] == "server_busy" and r.headers["retry-after"] for r in refused)
        assert metrics(url)["requests"] == {"running": 0, "waiting": 0, "answered": 3, "cancelled": 0,
                                            "refused": 4, "failed": 0}


def test_a_client_that_leaves_the_queue_is_not_answered():
    engine = ReplayEngine(pause_after=2, gap_s=0)
    with served(engine, api_key=KEY) as url:
        with httpx2.stream("POST", url + "/v1/chat/completions", headers={"Authorization": f"Bearer {KEY}"},
                           json={"model": "demo", "messages": CAPITAL, "stream": True}, timeout=60) as holding:
            lines = holding.iter_lines()
            next(lines)
            assert engine.paused.wait(30)
            with pytest.raises(httpx2.ReadTimeout):  # gives up waiting, and hangs up
                post(url, {"model": "demo", "messages": CAPITAL}, timeout=1)
            engine.resume.set()
            assert [line for line in lines if line][-1] == "data: [DONE]"
        deadline = time.monotonic() + 30
        while metrics(url)["requests"]["cancelled"] == 0:
            assert time.monotonic() < deadline, metrics(url)["requests"]
            time.sleep(0.05)
        assert metrics(url)["requests"]["answered"] == 1  # the one that stayed


def test_a_client_that_hangs_up_mid_stream_frees_the_engine(url):
    with httpx2.stream("POST", url + "/v1/chat/completions", headers={"Authorization": f"Bearer {KEY}"},
                       json={"model": "demo", "messages": STORY, "max_tokens": 400, "stream": True}, timeout=60) as r:
        read = 0
        for line in r.iter_lines():
            read += line.startswith("data: ")
            if read == 4:
                break
    deadline = time.monotonic() + 30
    while httpx2.get(url + "/health").json()["busy"]:
        assert time.monotonic() < deadline, "the engine is still generating for a client that left"
        time.sleep(0.02)
    last = metrics(url)["last"]
    # Stopped within a few tokens of the hang-up, far short of the 400 asked for.
    assert last["stop_reason"] == "cancelled" and last["generated_tokens"] < 40
    r = post(url, {"model": "demo", "messages": CAPITAL, "temperature": 0, "max_tokens": 30})
    assert "Tokyo" in r.json()["choices"][0]["message"]["content"]


# -- the command line ----------------------------------------------------------------------


class Serve:
    """`roost serve` in its own process; its URL read from the line it prints."""

    def __init__(self, *args, env=None):
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "roost", "serve", *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            stdin=subprocess.DEVNULL, cwd=ROOT, text=True, env={**os.environ, **(env or {})})
        self.before = []  # what it said before the serving line: notes and warnings
        for self.line in self.proc.stderr:
            if "roost: serving" in self.line:
                break
            self.before.append(self.line)
        else:
            raise AssertionError("".join(self.before) or "roost serve said nothing")
        self.url = self.line.split(" at ", 1)[1].split("/v1", 1)[0]

    def stop(self):
        self.proc.send_signal(signal.SIGINT)
        out, err = self.proc.communicate(timeout=60)
        return self.proc.returncode, err


@pytest.fixture(scope="module")
def cli_server(demo_gguf):
    server = Serve("demo", "--port", "0", "--ctx", "1024", env={"ROOST_API_KEY": KEY})
    yield server
    if server.proc.poll() is None:
        server.stop()


def test_serve_listens_on_loopback_only_by_default(cli_server):
    assert cli_server.url.startswith("http://127.0.0.1:") and "API key required" in cli_server.line
    listening = [c.laddr for c in psutil.Process(cli_server.proc.pid).net_connections() if c.status == "LISTEN"]
    assert [a.ip for a in listening] == ["127.0.0.1"]


def test_run_remote_answers_like_run(cli_server):
    env = {"ROOST_API_KEY": KEY}
    result = roost("run", "--remote", cli_server.url, "What is the capital of Japan?", "-t", "0", "--json", env=env)
    assert result.returncode == 0, result.stderr
    out = json.loads(result.stdout)
    assert "Tokyo" in out["text"] and out["engine"]["engine"] == "remote"
    assert out["stats"]["prompt_tokens"] > 5 and out["stats"]["n_ctx"] == 1024 and out["memory"]["rss_bytes"] > 0
    piped = roost("run", "--remote", cli_server.url, "demo", "-t", "0", input="What is the capital of Japan?", env=env)
    assert "Tokyo" in piped.stdout


def test_run_remote_imports_no_engine_and_no_app():
    # -X importtime logs every import, the forked process's that runs the command included.
    result = subprocess.run([sys.executable, "-X", "importtime", "-m", "roost", "run", "--remote", "http://127.0.0.1:1",
                             "hi"], capture_output=True, text=True, stdin=subprocess.DEVNULL, cwd=ROOT)
    imported = {line.rsplit("|", 1)[-1].strip() for line in result.stderr.splitlines() if line.startswith("import time:")}
    assert "roost.backends.remote" in imported  # it did reach for the server
    assert not {"llama_cpp", "textual", "mlx", "huggingface_hub", "starlette", "uvicorn"} & imported


def test_remote_mistakes_get_one_line(cli_server, llama, roost_here):
    one_line(roost_here("run", "--remote", cli_server.url, "hi", env={"ROOST_API_KEY": None}), "refused the API key")
    one_line(roost_here("run", "--remote", cli_server.url, "hi", env={"ROOST_API_KEY": "nope"}), "refused the API key")
    one_line(roost_here("run", "--remote", "http://127.0.0.1:9", "hi"), "cannot reach http://127.0.0.1:9")
    one_line(roost_here("run", "--remote", cli_server.url, "gpt-9", "hi", env={"ROOST_API_KEY": KEY}), "no model 'gpt-9'")
    one_line(roost_here("run", "--remote", cli_server.url, "hi", "--ctx", "99", env={"ROOST_API_KEY": KEY}),
             "--ctx", "set on the server")
    one_line(roost_here("run", "--remote", cli_server.url, "word " * 1100, env={"ROOST_API_KEY": KEY}), "context holds 1024")
    one_line(roost_here("serve", "demo", "--port", cli_server.url.rsplit(":", 1)[1]), "is in use", "--port")
    one_line(roost_here("serve", "missing.gguf", "--port", "0"), "missing.gguf")


@pytest.mark.slow
def test_ctrl_c_stops_the_server_and_its_answer(demo_gguf):
    server = Serve("demo", "--port", "0")
    with httpx2.stream("POST", server.url + "/v1/chat/completions", timeout=60,
                       json={"model": "demo", "messages": STORY, "max_tokens": 3000, "stream": True}) as r:
        lines = r.iter_lines()
        next(lines)
        code, err = server.stop()
        tail = [line for line in lines if line]  # the answer ends rather than running to 3000 tokens
    assert code == 130 and err.strip().splitlines()[-1] == "roost: server stopped" and "Traceback" not in err
    assert tail[-1] == "data: [DONE]"
    assert json.loads(tail[-2][6:])["roost"]["stop_reason"] == "cancelled"


@pytest.mark.slow
def test_soak_keeps_memory_flat(demo_gguf):
    """200 requests, whole and streamed, on the CLI's server: its RSS settles and stays."""
    server = Serve("demo", "--port", "0", "--ctx", "512")
    try:
        api = client(server.url, key="unused")
        process = psutil.Process(server.proc.pid)
        rss = []
        for i in range(200):
            question = [{"role": "user", "content": f"Say the number {i}."}]
            if i % 2:
                r = api.chat.completions.create(model="demo", messages=question, max_tokens=4, seed=i)
                assert r.choices[0].message.content
            else:
                assert list(api.chat.completions.create(model="demo", messages=question, max_tokens=4, stream=True))
            if i in (49, 199):  # the server and its engine's process
                rss.append(sum(p.memory_info().rss for p in (process, *process.children())))
        assert rss[1] - rss[0] < 16 * 2**20, [f"{x / 2**20:.1f} MiB" for x in rss]
    finally:
        server.stop()


@pytest.mark.slow
def test_chat_app_on_a_remote_engine(url):
    app_engine = connect(url, api_key=KEY)
    from roost.tui.app import RoostApp
    from roost.tui.screens.chat import ChatScreen
    from roost.tui.widgets.status import StatusBar

    app = RoostApp(lambda: app_engine, "demo at server", Params(temperature=0, max_tokens=40))

    async def scenario(pilot):
        await until(pilot, lambda: isinstance(app.screen, ChatScreen) and app.screen.session is not None)
        chat = app.screen
        await ask_and_wait(chat, pilot, "What is the capital of Japan?")
        assert "Tokyo" in chat.query(".assistant").last().source
        status = chat.query_one(StatusBar)
        host = url.split("//", 1)[1]
        await until(pilot, lambda: str(status.query_one("#memory").render()).startswith(f"{host}: RSS"))
        assert "free:" not in str(status.query_one("#memory").render())  # the laptop's memory is beside the point
        assert "/512" in str(status.query_one("#context-label").render())

    try:
        drive(app, scenario)
    finally:
        app_engine.close()


# -- another OpenAI-compatible server ------------------------------------------------------


@pytest.fixture(scope="module")
def other_server(demo_gguf):
    """llama-cpp-python's own OpenAI-compatible server: no roost stats, no JSON metrics, no
    usage when streaming. What the remote engine knows of it, it measures itself."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen([sys.executable, "-m", "llama_cpp.server", "--model", demo_gguf, "--host", "127.0.0.1",
                             "--port", str(port), "--n_ctx", "1024", "--model_alias", "smol"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while True:
        assert proc.poll() is None and time.monotonic() < deadline, "llama_cpp.server did not start"
        try:
            if httpx2.get(url + "/v1/models", timeout=2).status_code == 200:
                break
        except httpx2.HTTPError:
            time.sleep(0.2)
    yield url
    proc.terminate()
    proc.wait(30)


@pytest.mark.slow
def test_remote_engine_on_another_server_measures_at_the_client(other_server):
    engine = connect(other_server)
    try:
        events = list(engine.stream(CAPITAL, Params(temperature=0, max_tokens=30)))
        done = events[-1]
        assert "Tokyo" in done.text and done.text == "".join(e.text for e in events[:-1])
        s = done.stats
        assert s.generated_tokens >= 2 and s.ttft_s > 0 and s.decode_s > 0 and s.decode_tps > 0
        assert s.stop_reason == "stop" and s.peak_rss_bytes is None and s.n_ctx == 0  # the server does not say
        info, reading = engine.info(), engine.memory()
        assert info.engine == "remote" and info.model == "smol" and "OpenAI-compatible server" in info.build
        assert reading.rss_bytes is None and reading.host == other_server.split("//")[1]
        text = "".join(e.text for e in engine.complete("The capital of France is", Params(temperature=0, max_tokens=8))
                       if isinstance(e, Token))
        assert "Paris" in text
    finally:
        engine.close()
    result = roost("run", "--remote", other_server, "What is the capital of Japan?", "-t", "0", "--stats")
    assert "Tokyo" in result.stdout and "peak memory n/a" in result.stderr and "context " in result.stderr


# -- the engine's process dying ------------------------------------------------------------
# Real crashes in the engine's own process, through its test-only hook (backends/child_main.py).


def _loaded_again(url, timeout=120):
    """/health while the model loads again: 503 "loading" with Retry-After; then "ok"."""
    seen = []
    deadline = time.monotonic() + timeout
    while True:
        r = httpx2.get(url + "/health", timeout=10)
        seen.append(r.json()["status"])
        if r.status_code == 200:
            return seen
        assert r.status_code == 503 and r.headers["Retry-After"] and r.json()["crash"], r.text
        assert time.monotonic() < deadline, "the model was not loaded again"
        time.sleep(0.05)


@pytest.mark.slow
@pytest.mark.parametrize("stream, where, how", [(False, "stream:3", "segv"), (True, "stream:3", "kill"),
                                                (True, "prefill", "abort")])
def test_an_engine_crash_is_a_500_then_503_while_it_loads_again_then_served(demo_gguf, monkeypatch, tmp_path,
                                                                            stream, where, how):
    crash_in(monkeypatch, tmp_path, where, how)
    engine = load(demo_gguf, Plan(n_ctx=512), isolated=True)
    signal_name = {"segv": "SIGSEGV", "abort": "SIGABRT", "kill": "SIGKILL"}[how]
    try:
        with served(engine, api_key=KEY) as url:
            api = client(url)
            asked = dict(model="demo", messages=CAPITAL, temperature=0, max_tokens=30)
            with pytest.raises(openai.APIError) as err:
                if stream:
                    for _ in api.chat.completions.create(**asked, stream=True):
                        pass
                else:
                    api.chat.completions.create(**asked)
            # In flight: a 500 in OpenAI's shape (an error event once a stream has begun).
            assert err.value.code == "engine_crashed" and f"the engine crashed ({signal_name}" in err.value.message
            if where == "prefill":
                assert isinstance(err.value, openai.InternalServerError)
            # While it loads again: 503 with Retry-After, and /health says so.
            busy = post(url, {**asked, "stream": stream})
            assert busy.status_code == 503 and busy.headers["Retry-After"] == "1"
            assert busy.json()["error"]["code"] == "engine_loading"
            assert _loaded_again(url)[0] == "loading"
            # Then it serves again, from a new process.
            again = api.chat.completions.create(**asked)
            assert "Tokyo" in again.choices[0].message.content
            m = metrics(url)
            assert m["state"] == "ok" and m["crashes"] == 1 and m["requests"]["failed"] == 1
            assert m["memory"]["rss_bytes"] > 50 * 2**20 and m["memory"]["app_rss_bytes"] > 0
    finally:
        engine.close()


@pytest.mark.slow
def test_roost_serve_runs_its_engine_in_a_process_that_may_crash(demo_gguf, monkeypatch, tmp_path):
    crash_in(monkeypatch, tmp_path, "stream:2", "segv")
    server = Serve("demo", "--port", "0", "--ctx", "512")
    try:
        engines = psutil.Process(server.proc.pid).children()
        assert len(engines) == 1 and "roost.backends.child" in " ".join(engines[0].cmdline())
        r = post(server.url, {"model": "demo", "messages": CAPITAL, "temperature": 0, "max_tokens": 30})
        assert r.status_code == 500 and r.json()["error"]["code"] == "engine_crashed", r.text
        _loaded_again(server.url)
        r = post(server.url, {"model": "demo", "messages": CAPITAL, "temperature": 0, "max_tokens": 30})
        assert r.status_code == 200 and "Tokyo" in r.json()["choices"][0]["message"]["content"]
        assert [p.pid for p in psutil.Process(server.proc.pid).children()] != [engines[0].pid]
    finally:
        code, err = server.stop()
    assert code == 130 and "Traceback" not in err
    assert "the engine crashed (SIGSEGV) while answering; loading the model again" in err
    assert "the model is loaded again; serving" in err
