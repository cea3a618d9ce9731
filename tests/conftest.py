import contextlib
import os
import subprocess
import sys
import time

import pytest

from gguf_files import synthetic_llama
from hub_server import HubServer
from roost.models import catalog
from roost.backends import connect, load
from roost.backends.base import Plan

# Subprocesses run this checkout's roost whatever the caller's environment.
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def pytest_collection_modifyitems(items):
    """An end-to-end test is a slow one too: `-m "not slow"` leaves out every e2e test."""
    for item in items:
        if item.get_closest_marker("e2e") and not item.get_closest_marker("slow"):
            item.add_marker(pytest.mark.slow)


@pytest.fixture(scope="session")
def kept_bandwidth() -> str:
    """bandwidth.json as roost keeps it, with this machine's memory bandwidth measured once
    for the session: the commands that show a ceiling measure it on first use, which
    would otherwise be once in every test's fresh data folder."""
    import json

    from roost.machine import bandwidth, hardware

    probe = hardware.Probe()
    return json.dumps({probe.cpu()["model"]: round(bandwidth.measure(hardware.default_threads(probe)), 2)})


@pytest.fixture(autouse=True)
def private_history(tmp_path_factory, monkeypatch, kept_bandwidth):
    """Conversations and benchmark results saved by tests stay out of the user's; the
    data folder starts with the session's bandwidth measurement kept."""
    monkeypatch.setenv("ROOST_HISTORY_DIR", str(tmp_path_factory.mktemp("history")))
    data = tmp_path_factory.mktemp("data")
    (data / "cache").mkdir()
    (data / "cache" / "bandwidth.json").write_text(kept_bandwidth)
    monkeypatch.setenv("ROOST_DATA_DIR", str(data))
    # Other apps' model stores (paths.py) point at nothing: the user's Ollama or LM Studio
    # models do not turn up in what tests list; test_other_apps.py builds its own.
    for name in ("OLLAMA_MODELS", "ROOST_LMSTUDIO_HOME", "LLAMA_CACHE"):
        monkeypatch.setenv(name, str(tmp_path_factory.getbasetemp() / "no-other-apps" / name))


@pytest.fixture(scope="session")
def demo_gguf() -> str:
    path = catalog.demo_model_path()
    assert os.path.getsize(path) > 50_000_000, "the SmolLM2 demo model is missing or damaged"
    return path


# SmolLM2's ChatML, made a reasoning model's: the prompt opens the thought as the
# DeepSeek-R1 distills' template does, and `enable_thinking` false closes it empty as
# Qwen3's does. SmolLM2 never writes </think> itself: a budget is what ends its thought.
THINKING_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}"
    "{% if enable_thinking is defined and enable_thinking is false %}{{ '<think>\n\n</think>\n\n' }}"
    "{% else %}{{ '<think>\n' }}{% endif %}{% endif %}"
)


@pytest.fixture(scope="session")
def thinking_gguf(tmp_path_factory, demo_gguf) -> str:
    """The demo model with THINKING_TEMPLATE: a real model whose stream starts in a thought."""
    from gguf_files import with_chat_template

    return with_chat_template(demo_gguf, str(tmp_path_factory.mktemp("thinking") / "SmolLM2-think.gguf"),
                              THINKING_TEMPLATE)


@pytest.fixture(scope="session")
def demo_mlx(tmp_path_factory, demo_gguf) -> str:
    """The demo model's own weights as an MLX model directory (tests/mlx_model.py)."""
    from mlx_model import convert

    return str(convert(demo_gguf, tmp_path_factory.mktemp("mlx") / "SmolLM2-135M-Instruct-mlx"))


@pytest.fixture(scope="session")
def hybrid_mlx(tmp_path_factory, demo_mlx) -> str:
    """A tiny random LFM2, whose cache starts with recurrent state (tests/mlx_model.py)."""
    from mlx_model import HYBRID, save_random_model

    return str(save_random_model(HYBRID, tmp_path_factory.mktemp("mlx") / "Tiny-LFM2-random", demo_mlx))


@pytest.fixture(scope="session")
def recurrent_mlx(tmp_path_factory, demo_mlx) -> str:
    """A tiny random Mamba: recurrent state alone (tests/mlx_model.py)."""
    from mlx_model import RECURRENT, save_random_model

    return str(save_random_model(RECURRENT, tmp_path_factory.mktemp("mlx") / "Tiny-Mamba-random", demo_mlx))


# remote: llama.cpp behind `roost serve`'s server on 127.0.0.1, reached over real HTTP.
# child: llama.cpp in a process of its own (backends/child.py), as chat, serve and eval run it.
MODEL_OF = {"llama": "demo_gguf", "mlx": "demo_mlx", "remote": "demo_gguf", "child": "demo_gguf"}
# The fast loop runs the suite on llama.cpp; the other kinds, each with tests of its own
# there (test_mlx.py, test_serve.py, test_child.py), run it in the full one.
KINDS = [pytest.param(kind, marks=() if kind == "llama" else pytest.mark.slow) for kind in MODEL_OF]


@pytest.fixture(params=KINDS)
def make_engine(request):
    """Loads engines of one kind on the demo model; the engine suite runs once per kind."""
    path = request.getfixturevalue(MODEL_OF[request.param])
    with contextlib.ExitStack() as stack:
        def make(n_ctx: int = 2048):
            if request.param == "remote":
                local = stack.enter_context(contextlib.closing(load(path, Plan(n_ctx=n_ctx), engine="llama")))
                return stack.enter_context(contextlib.closing(connect(stack.enter_context(served(local)))))
            if request.param == "child":
                return stack.enter_context(contextlib.closing(load(path, Plan(n_ctx=n_ctx), isolated=True)))
            return stack.enter_context(contextlib.closing(load(path, Plan(n_ctx=n_ctx), engine=request.param)))

        yield make


def openai_client(url: str, api_key: str = "unused", timeout: float = 120):
    """The openai package's client of a roost server: no retries, so a failure is the test's."""
    import openai

    return openai.OpenAI(base_url=f"{url}/v1", api_key=api_key, max_retries=0, timeout=timeout)


@contextlib.contextmanager
def served_in_child(model: str, n_ctx: int):
    """A model in an engine process of its own, served as `roost serve` serves it; yields the URL."""
    engine = load(model, Plan(n_ctx=n_ctx), isolated=True)
    try:
        with served(engine) as url:
            yield url
    finally:
        engine.close()


@contextlib.contextmanager
def served(engine, model_id: str = "demo", **options):
    """`roost serve`'s server over an engine, on a free port of 127.0.0.1, in a thread; yields its URL."""
    import threading

    import uvicorn

    from roost.serve import server

    sock = server.listen("127.0.0.1", 0)
    app = server.Server(engine, model_id, **options)
    uv = uvicorn.Server(uvicorn.Config(app.app, log_level="warning", lifespan="off", timeout_graceful_shutdown=5))
    thread = threading.Thread(target=uv.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not uv.started:
        assert thread.is_alive() and time.monotonic() < deadline, "the server did not start"
        time.sleep(0.01)
    try:
        yield server.url(sock)
    finally:
        app.stop_all()
        uv.should_exit = True
        thread.join(30)
        sock.close()


@pytest.fixture
def engine(make_engine):
    return make_engine()


@pytest.fixture
def llama_engine(demo_gguf):
    """llama.cpp alone, for what only it reports (its own buffer log)."""
    engine = load(demo_gguf, Plan(n_ctx=2048), engine="llama")
    yield engine
    engine.close()


def recorded_machine(name: str):
    """A machine from tests/machines, as hardware.detect sees it."""
    from roost.machine import hardware

    return hardware.detect(hardware.RecordedProbe.from_file(os.path.join(ROOT, "tests", "machines", name)))


@pytest.fixture
def no_mlx(monkeypatch):
    """MLX is installed here (its CPU build runs the engine tests): hide it, as on a
    machine without it."""
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "mlx_lm" else real(name, *a))


def roost(*args: str, input: str | None = None, timeout: float = 120, machine: str | None = None,
          env: dict | None = None) -> subprocess.CompletedProcess:
    """Run the real `roost` command line in a fresh process; `machine` names a recorded
    machine in tests/machines to stand in for this one; an env value of None unsets it."""
    env = {k: v for k, v in {**os.environ, **(env or {})}.items() if v is not None}
    if machine:
        env["ROOST_MACHINE"] = os.path.join(ROOT, "tests", "machines", machine)
    return subprocess.run(
        [sys.executable, "-m", "roost", *args],
        input=input,
        capture_output=True,
        text=True,
        timeout=timeout,
        stdin=None if input is not None else subprocess.DEVNULL,
        cwd=ROOT,
        env=env,
    )


@pytest.fixture
def roost_here(capsys, monkeypatch):
    """`roost` as roost() runs it, but in this process, through roost.cli.main: for what a
    command says and the code it exits with, without a fresh interpreter's start-up (a
    second a call on a busy two-core machine). roost run's forked copy (cli/terminal.py's
    guarded) is left out: the command runs here, as on Windows. The entry point, its exit
    130 on Ctrl-C, a native crash and the import weight stay tested in real processes."""
    import importlib
    import io

    cli = importlib.import_module("roost.cli.main")

    def run(*args: str, input: str | None = None, machine: str | None = None,
            env: dict | None = None) -> subprocess.CompletedProcess:
        with monkeypatch.context() as m:
            m.setattr(cli, "guarded", lambda command: command())
            m.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO((input or "").encode())))  # roost(): DEVNULL
            if machine:
                m.setenv("ROOST_MACHINE", os.path.join(ROOT, "tests", "machines", machine))
            for name, value in (env or {}).items():
                m.delenv(name, raising=False) if value is None else m.setenv(name, value)
            capsys.readouterr()
            try:
                code = cli.main(list(args))
            except SystemExit as e:  # argparse's --help and --version
                code = e.code
            out, err = capsys.readouterr()
        return subprocess.CompletedProcess(["roost", *args], code, out, err)

    return run


def roost_hub(hub, home, *args, env=None, timeout=180, machine=None):
    """`roost` against the Hub stand-in, with its own cache in `home` and only the token a
    test gives."""
    return roost(*args, timeout=timeout, machine=machine, env={
        "HF_ENDPOINT": hub.url, "HF_HOME": str(home), "HF_HUB_DISABLE_XET": "1",
        "HF_HUB_DISABLE_TELEMETRY": "1", "HF_TOKEN": None, **(env or {})})


def one_line(result, *needles):
    assert result.returncode != 0
    lines = result.stderr.strip().splitlines()
    assert lines and lines[-1].startswith("roost: error: ") and "Traceback" not in result.stderr, result.stderr
    for n in needles:
        assert n in lines[-1], lines[-1]
    return lines[-1]


# The Hub stand-in on 127.0.0.1 (tests/hub_server.py), for downloads.
NAME = "smollm2-135m"  # a catalog entry, served by the stand-in under its real repo and file names
TINY_REPO = "roost-test/Tiny-GGUF"  # a repo the catalog does not know
GATED_REPO = "roost-test/Gated-GGUF"
MLX_REPO = catalog.models()[NAME].mlx["8"]  # the entry's MLX build: the demo's weights as MLX (demo_mlx)


@pytest.fixture(scope="module")
def hub_root(tmp_path_factory, demo_gguf):
    root = tmp_path_factory.mktemp("hub")
    entry = catalog.models()[NAME]
    repo = root.joinpath(*entry.gguf_repo.split("/"))
    repo.mkdir(parents=True)
    for g in entry.gguf:  # every quant of the entry is the real SmolLM2 file
        os.symlink(demo_gguf, repo / g.file)
    tiny = root.joinpath(*TINY_REPO.split("/"))
    tiny.mkdir(parents=True)
    os.symlink(demo_gguf, tiny / "Tiny-Q4_1.gguf")
    synthetic_llama(demo_gguf, str(tiny / "Tiny-Q8_0.gguf"), n_layer=2, n_embd=256, n_head=4, n_head_kv=2, n_ff=512)
    gated = root.joinpath(*GATED_REPO.split("/"))
    gated.mkdir(parents=True)
    os.symlink(demo_gguf, gated / "Gated-Q4_1.gguf")
    return root


@pytest.fixture
def hub(hub_root):
    with HubServer(str(hub_root)) as server:
        server.gated.add(GATED_REPO)
        server.tokens.add("hf_good_token")
        yield server


@pytest.fixture
def home(tmp_path):
    return tmp_path / "hf-home"


def in_process(hub, home, monkeypatch):
    """huggingface-hub reads HF_ENDPOINT and HF_HOME at import: in-process tests import it
    afresh under the stand-in's settings."""
    monkeypatch.setenv("HF_ENDPOINT", hub.url)
    monkeypatch.setenv("HF_HOME", str(home))
    monkeypatch.setenv("HF_HUB_DISABLE_XET", "1")
    for name in [m for m in sys.modules if m.startswith("huggingface_hub")]:
        monkeypatch.delitem(sys.modules, name)
    from roost.models import library

    return library


@pytest.fixture
def mlx_repo(hub_root, demo_mlx):
    """The catalog entry's MLX repo on the stand-in, with a README mlx-lm does not need."""
    repo = hub_root.joinpath(*MLX_REPO.split("/"))
    repo.mkdir(parents=True, exist_ok=True)
    for name in os.listdir(demo_mlx):
        if not (repo / name).exists():
            os.symlink(os.path.join(demo_mlx, name), repo / name)
    (repo / "README.md").write_text("# not needed to run\n")
    return repo


def crash_in(monkeypatch, tmp_path, where: str, how: str = "segv") -> None:
    """Arm the engine process's test-only crash hook (backends/child_main.py) for engine processes
    started from now, in this process and in the roost commands it runs: the first to get to
    `where` (load, prefill, stream:N) dies `how` (segv, abort, kill); those after it live."""
    monkeypatch.setenv("ROOST_TEST_CRASH", where)
    monkeypatch.setenv("ROOST_TEST_CRASH_HOW", how)
    monkeypatch.setenv("ROOST_TEST_CRASH_ONCE", str(tmp_path / "crashed"))
