"""docs/serve.md's recipe for the box, run as typed (less the ssh hop: no sshd here, and
the tunnel only maps one local port onto another): the server started detached with
nohup, and in tmux, both with the Hub stand-in serving the recipe's model under its real
names; then the recipe's curl lines and `roost run --remote` as the laptop's clients, and
its stop line."""

import json
import os
import re
import shutil
import socket
import subprocess
import sys
import time

import pytest

from conftest import ROOT
from hub_server import HubServer
from roost.models import catalog

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

RECIPE = os.path.join(ROOT, "docs", "serve.md")


def blocks() -> list[str]:
    with open(RECIPE) as f:
        return re.findall(r"```sh\n(.*?)```", f.read(), re.S)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def box(tmp_path, demo_gguf):
    """The box's home: a 'checkout' at ~/roost whose .venv/bin/roost is this roost, and
    the Hub stand-in with the recipe's model in it."""
    model = re.search(r"roost serve ([\w.-]+) --yes", RECIPE_TEXT).group(1)
    entry = catalog.models()[model]
    hub_root = tmp_path / "hub"
    repo = hub_root.joinpath(*entry.gguf_repo.split("/"))
    repo.mkdir(parents=True)
    for g in entry.gguf:
        os.symlink(demo_gguf, repo / g.file)
    home = tmp_path / "home"
    venv_bin = home / "roost" / ".venv" / "bin"
    venv_bin.mkdir(parents=True)
    (venv_bin / "roost").write_text(f'#!/bin/sh\nexec {sys.executable} -m roost "$@"\n')
    (venv_bin / "roost").chmod(0o755)
    with HubServer(str(hub_root)) as hub:
        yield model, home, {**os.environ, "HOME": str(home), "HF_ENDPOINT": hub.url, "HF_HOME": str(tmp_path / "hf"),
                            "HF_HUB_DISABLE_XET": "1", "HF_HUB_DISABLE_TELEMETRY": "1", "HF_TOKEN": ""}


with open(RECIPE) as _f:
    RECIPE_TEXT = _f.read()


def on_port(line: str, port: int) -> str:
    """The recipe's line with its port 8080 moved to one that is free here."""
    line = line.replace("8080", str(port))
    return line + f" --port {port}" if re.search(r"roost serve \S+ --yes$", line) else line.replace(
        "--yes >", f"--yes --port {port} >")


def wait_healthy(port: int, timeout: float = 120) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        done = subprocess.run(["curl", "-s", f"http://127.0.0.1:{port}/health"], capture_output=True, text=True)
        if done.returncode == 0 and '"ok"' in done.stdout:
            return json.loads(done.stdout)
        assert time.monotonic() < deadline, done.stdout
        time.sleep(0.3)


def laptop_asks(model: str, port: int, env: dict) -> None:
    curl = next(b for b in blocks() if "/v1/chat/completions" in b)
    answer = subprocess.run(["bash", "-c", on_port(curl, port)], capture_output=True, text=True, env=env, timeout=120)
    assert json.loads(answer.stdout)["choices"][0]["message"]["content"].strip()
    run = next(line for b in blocks() for line in b.splitlines() if line.startswith("roost run --remote http://127"))
    run = on_port(run.split("  #")[0], port).replace("roost ", f"{sys.executable} -m roost ", 1)
    asked = subprocess.run(["bash", "-c", run], capture_output=True, text=True, env=env, timeout=120, cwd=ROOT)
    assert asked.returncode == 0 and asked.stdout.strip(), asked.stderr


@pytest.mark.skipif(shutil.which("curl") is None, reason="curl is not installed")
def test_the_detached_server_of_the_recipe_serves_and_stops(box):
    model, home, env = box
    port = free_port()
    start = next(b for b in blocks() if "nohup" in b and "ssh box" in b)
    lines = [line.split("  #")[0].strip() for line in start.splitlines()
             if line.strip() and not line.startswith(("ssh box", "tail ", "exit"))]
    assert lines[0] == "cd ~/roost" and lines[1].startswith("nohup .venv/bin/roost serve ")
    subprocess.run(["bash", "-c", "\n".join(on_port(line, port) for line in lines)], env=env, cwd=home,
                   timeout=30, check=True)
    try:
        assert wait_healthy(port)["model"] == model
        laptop_asks(model, port, env)
    finally:
        stop = next(line for b in blocks() for line in b.splitlines() if "kill $(cat roost-serve.pid)" in line)
        subprocess.run(["bash", "-c", stop.removeprefix("ssh box ").strip("'")], env=env, cwd=home, timeout=30)
    deadline = time.monotonic() + 30
    while subprocess.run(["curl", "-s", f"http://127.0.0.1:{port}/health"], capture_output=True).returncode == 0:
        assert time.monotonic() < deadline, "the server did not stop"
        time.sleep(0.3)
    assert "serving" in (home / "roost" / "roost-serve.log").read_text()


@pytest.mark.skipif(shutil.which("tmux") is None or shutil.which("curl") is None, reason="needs tmux and curl")
def test_the_server_in_tmux_of_the_recipe_keeps_serving_detached(box):
    model, home, env = box
    port = free_port()
    block = next(b for b in blocks() if "tmux new -A -s roost-serve" in b)
    serve = next(line for line in block.splitlines() if " serve " in line).split("  #")[0].strip()
    exports = " ".join(f"{k}={v}" for k, v in env.items() if k.startswith("HF_") or k in ("HOME", "PATH"))
    tmux = ["tmux", "-L", "roost-serve-test"]
    subprocess.run([*tmux, "new-session", "-d", "-s", "roost-serve", "-x", "100", "-y", "30",
                    f"env {exports} {on_port(serve, port).replace('~', str(home))}"], check=True)
    try:
        assert wait_healthy(port)["model"] == model
        laptop_asks(model, port, env)
    finally:
        subprocess.run([*tmux, "kill-server"], capture_output=True)
