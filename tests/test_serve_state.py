"""The servers on this machine: the state file `roost serve` keeps (serve/state.py), and
what reads it: `roost run` answering through a running server, `roost ps`, `roost stop`.
Real `roost serve` processes on 127.0.0.1, real signals, the demo model."""

import json
import os
import signal
import stat
import subprocess
import sys
import time

import pytest

from conftest import ROOT, one_line, roost
from roost.serve import state
from test_serve import KEY, Serve

PROMPT = "What is the capital of Japan?"


def _state_files() -> list[str]:
    try:
        return sorted(os.listdir(state.servers_dir()))
    except FileNotFoundError:
        return []


# -- the state file ----------------------------------------------------------------------------


def test_a_file_whose_server_is_gone_is_skipped_and_deleted():
    path = state.announce("http://127.0.0.1:1", "k", "127.0.0.1")
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600  # it holds the key
    assert [s["url"] for s in state.running()] == ["http://127.0.0.1:1"]  # this process: alive
    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    dead = os.path.join(state.servers_dir(), f"{gone.stdout.strip()}.json")
    reused = os.path.join(state.servers_dir(), "1.json")  # pid 1 runs, but began long after this file's server
    for file, pid, started in ((dead, int(gone.stdout), time.time()), (reused, 1, 1000.0)):
        with open(file, "w") as f:
            json.dump({"url": "http://127.0.0.1:2", "pid": pid, "api_key": None, "host": "127.0.0.1",
                       "started": started, "version": "0"}, f)
    assert [s["url"] for s in state.running()] == ["http://127.0.0.1:1"]
    assert _state_files() == [os.path.basename(path)]
    state.withdraw(path)
    assert state.running() == [] and _state_files() == []


def test_a_server_on_every_address_is_reached_on_loopback():
    state.announce("http://0.0.0.0:8080", None, "0.0.0.0")
    assert state.running()[0]["url"] == "http://127.0.0.1:8080"


@pytest.mark.slow
def test_serve_writes_its_file_and_removes_it_and_a_killed_ones_is_skipped(demo_gguf):
    server = Serve("demo", "--port", "0", "--ctx", "512", env={"ROOST_API_KEY": KEY})
    assert _state_files() == [f"{server.proc.pid}.json"]
    [found] = state.running()
    assert (found["url"], found["pid"], found["api_key"]) == (server.url, server.proc.pid, KEY)
    code, err = server.stop()
    assert code == 130 and _state_files() == [], err

    killed = Serve("demo", "--port", "0", "--ctx", "512")
    killed.proc.send_signal(signal.SIGKILL)
    killed.proc.wait(30)
    assert _state_files() == [f"{killed.proc.pid}.json"]  # it had no chance to remove it
    result = roost("run", "demo", PROMPT, "-t", "0", "-n", "8", "--json")  # answered here, not through it
    assert result.returncode == 0 and json.loads(result.stdout)["server"] is None, result.stderr
    assert _state_files() == []


# -- roost run, ps and stop with a server running ---------------------------------------------


@pytest.fixture(scope="module")
def here(tmp_path_factory, demo_gguf):
    """A `roost serve demo` running here (with an API key: run, ps and stop find it in the
    state file), and the environment that finds it: its data folder."""
    env = {"ROOST_DATA_DIR": str(tmp_path_factory.mktemp("data-with-server"))}
    server = Serve("demo", "--port", "0", "--ctx", "1024", env={**env, "ROOST_API_KEY": KEY})
    server.env = env
    yield server
    if server.proc.poll() is None:
        server.stop()


def test_run_answers_through_the_server_as_it_would_without(here):
    warm = roost("run", "demo", PROMPT, "-t", "0", "-n", "12", "--json", env=here.env)
    assert warm.returncode == 0, warm.stderr
    through = json.loads(warm.stdout)
    assert through["server"] == here.url and through["engine"]["engine"] == "remote"
    cold = json.loads(roost("run", "demo", PROMPT, "-t", "0", "-n", "12", "--json", "--no-server", env=here.env).stdout)
    assert cold["server"] is None and cold["engine"]["engine"] == "llama.cpp"
    assert through["text"] == cold["text"] and "Tokyo" in through["text"]
    # Piped, as text: the same answer on stdout.
    piped = roost("run", "demo", "-t", "0", "-n", "12", input=PROMPT, env=here.env)
    assert piped.stdout.strip() == cold["text"].strip()


def test_run_loads_here_what_the_server_cannot_honour(here):
    # --ctx is the server's own: given, the model is loaded here at it rather than ignored there.
    local = json.loads(roost("run", "demo", PROMPT, "-t", "0", "-n", "4", "--json", "--ctx", "256", env=here.env).stdout)
    assert local["server"] is None and local["stats"]["n_ctx"] == 256
    # A model the server does not serve, and a long input the server's context may not hold.
    other = json.loads(roost("run", demo_path(), PROMPT, "-t", "0", "-n", "4", "--json", env=here.env).stdout)
    assert other["server"] is None
    long = roost("run", "demo", "Summarise: " + "the cat sat on the mat. " * 60, "-n", "4", "--json", env=here.env)
    assert json.loads(long.stdout)["server"] is None


def demo_path() -> str:
    from roost.models import catalog

    return catalog.demo_model_path()


def test_run_through_the_server_imports_no_engine_and_no_app(here):
    result = subprocess.run([sys.executable, "-X", "importtime", "-m", "roost", "run", "demo", "hi", "-n", "2"],
                            capture_output=True, text=True, stdin=subprocess.DEVNULL, cwd=ROOT,
                            env={**os.environ, **here.env})
    assert result.returncode == 0, result.stderr
    imported = {line.rsplit("|", 1)[-1].strip() for line in result.stderr.splitlines() if line.startswith("import time:")}
    assert "roost.backends.remote" in imported  # it did answer through the server
    assert not {"llama_cpp", "textual", "mlx", "huggingface_hub", "starlette", "uvicorn"} & imported


def test_ps_and_stop(here, roost_here):
    shown = roost_here("ps", env=here.env)
    assert shown.returncode == 0, shown.stderr
    title, header, row = shown.stdout.strip().splitlines()
    assert title == f"roost serve at {here.url} (pid {here.proc.pid})"
    assert header.split()[:3] == ["MODEL", "ENGINE", "DEVICE"]
    assert row.split()[:3] == ["demo", "llama.cpp", "CPU"] and row.split()[-1] == "ok"
    [server] = json.loads(roost_here("ps", "--json", env=here.env).stdout)["servers"]
    [model] = server["models"]
    assert server["url"] == here.url and model["model"] == "demo" and model["memory"]["rss_bytes"] > 0
    assert model["planned_bytes"] > 0 and model["n_ctx"] == 1024

    one_line(roost_here("stop", "gpt-9", env=here.env), "gpt-9 is not loaded", "loaded: demo")
    stopped = roost_here("stop", "demo", env=here.env)
    assert stopped.returncode == 0 and "unloaded demo" in stopped.stdout, stopped.stderr
    assert roost_here("ps", env=here.env).stdout.strip().endswith(": no model loaded")
    one_line(roost_here("stop", "demo", env=here.env), "demo is not loaded", "loaded: none")
    # The next prompt loads it on the server again, on demand.
    again = json.loads(roost("run", "demo", PROMPT, "-t", "0", "-n", "12", "--json", env=here.env).stdout)
    assert again["server"] == here.url and "Tokyo" in again["text"]


def test_with_no_server_ps_says_so_and_stop_fails(roost_here):
    shown = roost_here("ps")
    assert (shown.returncode, shown.stdout) == (0, "no roost server is running here\n")
    assert json.loads(roost_here("ps", "--json").stdout) == {"servers": []}
    one_line(roost_here("stop", "demo"), "no roost server is running here")


@pytest.mark.slow
def test_a_keep_alive_unload_is_seen_in_ps(demo_gguf, roost_here):
    server = Serve("demo", "--port", "0", "--ctx", "512", "--keep-alive", "5s")
    try:
        [listed] = json.loads(roost_here("ps", "--json").stdout)["servers"]
        [model] = listed["models"]
        assert model["model"] == "demo" and 0 < model["expires_in_s"] <= 5
        assert " in " in roost_here("ps").stdout.splitlines()[-1]  # EXPIRES: in N s
        deadline = time.monotonic() + 120
        while not roost_here("ps").stdout.strip().endswith(": no model loaded"):
            assert time.monotonic() < deadline, "demo was never unloaded"
            time.sleep(0.5)
    finally:
        server.stop()
