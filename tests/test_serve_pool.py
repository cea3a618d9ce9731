"""`roost serve` loading models on demand (#24): real `roost serve` processes on 127.0.0.1,
real engines (the demo model, and a copy of it under another name as a second model), the
official openai client. Which models are loaded is read from /api/ps, and the engines'
processes from the server's children."""

import contextlib
import shutil
import threading
import time

import httpx2
import openai
import psutil
import pytest

from conftest import NAME, one_line, roost
from test_serve import CAPITAL, STORY, Serve

PLANNED_AT_1024 = 153_066_496  # what the planner gives the demo at --ctx 1024 (checked below)
ONE_FITS = "250MB"  # room for one demo at --ctx 1024, not two


@pytest.fixture(scope="module")
def other_gguf(tmp_path_factory, demo_gguf):
    """A second model: the demo's bytes under another name (the same greedy answers)."""
    path = str(tmp_path_factory.mktemp("other") / "other.Q4_1.gguf")
    shutil.copy(demo_gguf, path)
    return path


def start(*args, tmp_path_factory):
    """roost serve with no MODEL, on a free port, with a Hugging Face cache of its own
    (empty: a catalog model is not downloaded there)."""
    home = tmp_path_factory.mktemp("hf-home")
    return Serve("--port", "0", "--ctx", "1024", *args, env={"HF_HOME": str(home), "HF_HUB_OFFLINE": "1"})


@pytest.fixture(scope="module")
def one_room(tmp_path_factory):
    server = start("--max-memory", ONE_FITS, "--keep-alive", "-1", tmp_path_factory=tmp_path_factory)
    yield server
    server.stop()


def ps(url) -> list[dict]:
    return httpx2.get(url + "/api/ps", timeout=30).json()["models"]


def engines(server) -> list[int]:
    """The server's engine processes: its children running child_main."""
    return [p.pid for p in psutil.Process(server.proc.pid).children()
            if any("child_main" in part for part in p.cmdline())]


def ask(url, model, answered_by=None, **extra) -> str:
    """The greedy answer of `model` (answered_by: the id it answers as, when another)."""
    api = openai.OpenAI(base_url=f"{url}/v1", api_key="none", max_retries=0, timeout=120)
    answer = api.chat.completions.create(model=model, messages=CAPITAL, temperature=0, max_tokens=12,
                                         extra_body=extra or None)
    assert answer.model == (answered_by or model)
    return answer.choices[0].message.content


@pytest.mark.slow
def test_serve_with_no_model_starts_empty_and_lists_what_it_can_load(one_room):
    assert "loaded on demand" in one_room.line
    assert ps(one_room.url) == [] and engines(one_room) == []
    assert httpx2.get(one_room.url + "/health", timeout=10).json()["status"] == "ok"
    listed = {m["id"]: m for m in httpx2.get(one_room.url + "/v1/models", timeout=30).json()["data"]}
    assert listed["demo"]["roost"]["loaded"] is False


@pytest.mark.slow
def test_a_model_not_on_disk_is_a_404_saying_how_to_pull_it(one_room):
    api = openai.OpenAI(base_url=f"{one_room.url}/v1", api_key="none", max_retries=0, timeout=60)
    for model, words in (("qwen2.5-0.5b", "roost pull qwen2.5-0.5b"), ("no-such-model", "unknown model")):
        with pytest.raises(openai.NotFoundError) as e:
            api.chat.completions.create(model=model, messages=CAPITAL, max_tokens=4)
        error = e.value.body
        assert error["code"] == "model_not_found" and error["param"] == "model" and words in error["message"], error
    assert ps(one_room.url) == []


@pytest.mark.slow
def test_two_models_in_a_budget_for_one_take_turns_and_answer_right(one_room, other_gguf):
    url = one_room.url
    alone = ask(url, "demo")
    assert "Tokyo" in alone
    [demo] = ps(url)
    assert demo["model"] == "demo" and demo["state"] == "ok" and demo["engine"] == "llama.cpp"
    assert demo["planned_bytes"] == PLANNED_AT_1024 and demo["n_ctx"] == 1024 and demo["expires_in_s"] is None
    assert demo["memory"]["rss_bytes"] > 50 * 2**20
    [first] = engines(one_room)
    # The copy needs the demo's room: the demo is unloaded, its process gone, before the copy loads.
    assert ask(url, other_gguf) == alone
    assert [m["model"] for m in ps(url)] == [other_gguf]
    [second] = engines(one_room)
    assert second != first and not psutil.pid_exists(first)
    assert ask(url, "demo") == alone  # and back
    assert [m["model"] for m in ps(url)] == ["demo"]
    assert not psutil.pid_exists(second)
    listed = {m["id"]: m["roost"] for m in httpx2.get(url + "/v1/models", timeout=30).json()["data"]}
    assert listed["demo"]["loaded"] is True and listed["demo"]["n_ctx"] == 1024


@pytest.mark.slow
def test_keep_alive_of_a_request_unloads_its_model_when_idle(one_room):
    url = one_room.url
    assert "Tokyo" in ask(url, "demo", keep_alive="1s")
    [engine] = engines(one_room)
    deadline = time.monotonic() + 60
    while ps(url):  # unloaded once idle a second: seen in /api/ps, and its process gone
        assert time.monotonic() < deadline, ps(url)
        time.sleep(0.2)
    with contextlib.suppress(psutil.NoSuchProcess):
        psutil.Process(engine).wait(30)
    assert engines(one_room) == []


@pytest.mark.slow
def test_stop_unloads_a_model_and_a_model_not_loaded_is_a_404(one_room):
    url = one_room.url
    ask(url, "demo")
    assert httpx2.post(url + "/api/stop", json={"model": "demo"}, timeout=60).json() == {"stopped": "demo"}
    assert ps(url) == []
    missing = httpx2.post(url + "/api/stop", json={"model": "demo"}, timeout=60)
    assert missing.status_code == 404 and missing.json()["error"]["code"] == "model_not_found"


@pytest.mark.slow
def test_model_given_to_serve_with_a_keep_alive_is_unloaded_and_loaded_again_by_its_name(demo_gguf):
    server = Serve(demo_gguf, "--name", "mine", "--port", "0", "--ctx", "1024", "--keep-alive", "0")
    try:
        assert server.line.startswith("roost: serving mine (llama.cpp on CPU, context 1024) at http://127.0.0.1:")
        first = ask(server.url, "mine")
        deadline = time.monotonic() + 60
        while ps(server.url):  # keep-alive 0: unloaded once the answer is done
            assert time.monotonic() < deadline, ps(server.url)
            time.sleep(0.2)
        assert ask(server.url, "mine") == first  # "mine" is no catalog name: loaded again as it was planned
        assert ask(server.url, demo_gguf, answered_by="mine") == first  # MODEL as given: the same model
        assert len(engines(server)) <= 1
    finally:
        server.stop()


@pytest.mark.slow
def test_models_max_caps_how_many_are_loaded(tmp_path_factory, other_gguf):
    server = start("--models-max", "1", tmp_path_factory=tmp_path_factory)
    try:
        assert ask(server.url, "demo") == ask(server.url, other_gguf)
        assert [m["model"] for m in ps(server.url)] == [other_gguf] and len(engines(server)) == 1
    finally:
        server.stop()


@pytest.mark.slow
def test_requests_for_a_model_that_is_loading_share_its_load(tmp_path_factory):
    server = start("--keep-alive", "0", tmp_path_factory=tmp_path_factory)
    answers = []
    try:
        threads = [threading.Thread(target=lambda: answers.append(ask(server.url, "demo"))) for _ in range(3)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(120)
    finally:
        code, err = server.stop()
    assert len(answers) == 3 and len(set(answers)) == 1 and "Tokyo" in answers[0]
    assert err.count("loading demo for a request") == 1, err


@pytest.mark.slow
def test_with_pull_a_model_not_on_disk_is_downloaded_for_the_request(hub, home):
    server = Serve("--port", "0", "--ctx", "1024", "--pull", env={
        "HF_ENDPOINT": hub.url, "HF_HOME": str(home), "HF_HUB_DISABLE_XET": "1", "HF_HUB_DISABLE_TELEMETRY": "1"})
    try:
        assert "Tokyo" in ask(server.url, NAME)
        [model] = ps(server.url)
        assert model["model"] == NAME and model["path"].startswith(str(home))
    finally:
        code, err = server.stop()
    assert "roost: downloading" in err and NAME in err


@pytest.mark.slow
def test_a_model_that_cannot_fit_the_budget_is_refused_naming_sizes(tmp_path_factory):
    server = start("--max-memory", "100MB", tmp_path_factory=tmp_path_factory)
    try:
        r = httpx2.post(server.url + "/v1/chat/completions", json={"model": "demo", "messages": CAPITAL}, timeout=60)
        error = r.json()["error"]
        assert r.status_code == 400 and error["code"] == "model_too_big" and "146 MiB of RAM (this server may use 95 MiB)" in error["message"], error
        assert ps(server.url) == []
    finally:
        server.stop()
    # MODEL given to roost serve: refused before it loads, in one line.
    one_line(roost("serve", "demo", "--max-memory", "100MB", "--port", "0"), "demo does not fit", "95 MiB")


@pytest.mark.slow
def test_two_clients_on_two_models_are_answered_at_once(tmp_path_factory, other_gguf):
    server = start(tmp_path_factory=tmp_path_factory)
    try:
        for model in ("demo", other_gguf):  # both loaded first: what overlaps is the answering
            ask(server.url, model)
        assert len(engines(server)) == 2
        times: dict[str, list[float]] = {}

        def client(model):
            api = openai.OpenAI(base_url=f"{server.url}/v1", api_key="none", max_retries=0, timeout=300)
            stream = api.chat.completions.create(model=model, messages=STORY, temperature=0, max_tokens=64,
                                                 stream=True)
            times[model] = [time.monotonic() for c in stream if c.choices and c.choices[0].delta.content]

        threads = [threading.Thread(target=client, args=(m,)) for m in ("demo", other_gguf)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(300)
        a, b = times["demo"], times[other_gguf]
        assert len(a) > 20 and len(b) > 20
        # Each began before the other ended: answered side by side, not one after the other.
        assert a[0] < b[-1] and b[0] < a[-1]
    finally:
        server.stop()


@pytest.mark.parametrize("port", ["99999", "-1", "abc"])
def test_a_port_out_of_range_is_one_line(roost_here, port):
    one_line(roost_here("serve", "demo", "--port", port), "--port")
