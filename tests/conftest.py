import os
import subprocess
import sys

import pytest

from roost import catalog
from roost.backends import load
from roost.backends.base import Plan

# Subprocesses run this checkout's roost whatever the caller's environment.
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(autouse=True)
def private_history(tmp_path_factory, monkeypatch):
    """Conversations saved by tests stay out of the user's history."""
    monkeypatch.setenv("ROOST_HISTORY_DIR", str(tmp_path_factory.mktemp("history")))


@pytest.fixture(scope="session")
def demo_gguf() -> str:
    path = catalog.demo_model_path()
    assert os.path.getsize(path) > 50_000_000, "the SmolLM2 demo model is missing or damaged"
    return path


@pytest.fixture(params=["llama"])
def make_engine(request, demo_gguf):
    """Loads engines of one kind on the demo model; the engine suite runs once per kind."""
    loaded = []

    def make(n_ctx: int = 2048):
        loaded.append(load(demo_gguf, Plan(n_ctx=n_ctx), engine=request.param))
        return loaded[-1]

    yield make
    for engine in loaded:
        engine.close()


@pytest.fixture
def engine(make_engine):
    return make_engine()


def roost(*args: str, input: str | None = None, timeout: float = 120, machine: str | None = None,
          env: dict | None = None) -> subprocess.CompletedProcess:
    """Run the real `roost` command line in a fresh process; `machine` names a recorded
    machine in tests/machines to stand in for this one."""
    env = {**os.environ, **(env or {})}
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
