"""The README's "A first real chat", run as a newcomer types it: each line of its code
block in a shell with `roost` on PATH, against the local Hub stand-in (which serves the
README's model under its real repo and file names, with the demo's weights inside: no
hub can be reached here), and the chat line in tmux at 80x24."""

import os
import re
import shutil
import subprocess
import sys
import time

import pytest

from conftest import ROOT
from hub_server import HubServer
from roost.models import catalog

README = os.path.join(ROOT, "README.md")


def first_chat_block() -> list[str]:
    with open(README) as f:
        text = f.read()
    section = text.split("## A first real chat", 1)[1]
    block = re.search(r"```sh\n(.*?)```", section, re.S).group(1)
    return [line.split("  #", 1)[0].strip() for line in block.splitlines() if line.strip()]


@pytest.fixture
def newcomer(tmp_path, demo_gguf):
    """A shell as the README leaves it: `roost` on PATH, an empty model cache, and the
    Hub stand-in serving every catalog model the block names."""
    lines = first_chat_block()
    names = {m for line in lines for m in re.findall(r"roost (?:pull|chat|run) ([\w.:-]+)", line)}
    assert names, lines
    root = tmp_path / "hub"
    for name in names:
        entry = catalog.models()[name.split(":")[0]]
        repo = root.joinpath(*entry.gguf_repo.split("/"))
        repo.mkdir(parents=True, exist_ok=True)
        for g in entry.gguf:
            os.symlink(demo_gguf, repo / g.file)
    bin_ = tmp_path / "bin"
    bin_.mkdir()
    (bin_ / "roost").write_text(f'#!/bin/sh\nexec {sys.executable} -m roost "$@"\n')
    (bin_ / "roost").chmod(0o755)
    with HubServer(str(root)) as hub:
        yield lines, {**os.environ, "PATH": f"{bin_}:{os.environ['PATH']}", "HF_ENDPOINT": hub.url,
                      "HF_HOME": str(tmp_path / "hf-home"), "HF_HUB_DISABLE_XET": "1",
                      "HF_HUB_DISABLE_TELEMETRY": "1", "HF_TOKEN": ""}


def tmux(*args, check=True):
    return subprocess.run(["tmux", "-L", "roost-readme", *args], capture_output=True, text=True, check=check)


def chat_in_tmux(line: str, env: dict) -> str:
    exports = " ".join(f"{k}={v}" for k, v in env.items() if k in ("PATH", "HF_ENDPOINT", "HF_HOME", "HF_HUB_DISABLE_XET",
                                                                    "HF_HUB_DISABLE_TELEMETRY", "ROOST_HISTORY_DIR",
                                                                    "ROOST_DATA_DIR"))
    tmux("new-session", "-d", "-s", "chat", "-x", "80", "-y", "24", "-c", ROOT,
         f"env {exports} TERM=screen-256color {line} --temperature 0")
    try:
        deadline = time.monotonic() + 90
        while "Ask something" not in (shown := tmux("capture-pane", "-t", "chat", "-p", check=False).stdout):
            assert time.monotonic() < deadline, shown
            time.sleep(0.2)
        tmux("send-keys", "-t", "chat", "What is the capital of Japan?", "Enter")
        while "Tokyo" not in (shown := tmux("capture-pane", "-t", "chat", "-p", check=False).stdout):
            assert time.monotonic() < deadline, shown
            time.sleep(0.2)
        tmux("send-keys", "-t", "chat", "C-q")
        return shown
    finally:
        tmux("kill-server", check=False)


@pytest.mark.e2e
@pytest.mark.slow
@pytest.mark.skipif(shutil.which("tmux") is None, reason="tmux is not installed (.ci/run installs it)")
def test_the_readme_first_chat_works_as_typed(newcomer):
    lines, env = newcomer
    kinds = []
    for line in lines:
        if line.startswith("roost chat "):
            shown = chat_in_tmux(line, env)
            assert "Tokyo" in shown
            kinds.append("chat")
            continue
        done = subprocess.run(["bash", "-c", line], capture_output=True, text=True, env=env, cwd=ROOT,
                              stdin=subprocess.DEVNULL, timeout=300)
        assert done.returncode == 0, f"{line}\n{done.stderr}"
        assert "Traceback" not in done.stderr
        kinds.append(line.split()[1] if line.startswith("roost ") else "pipe")
        if line.startswith("roost search"):
            named = re.findall(r"roost (?:pull|chat|run) ([\w.:-]+)", " ".join(lines))
            assert all(f"\n{name} " in done.stdout for name in named)
        elif "roost run" in line:
            assert done.stdout.strip()  # an answer
    assert kinds == ["search", "pull", "chat", "pipe"]


# The README's table of first models, row by row: the recorded machine each row describes.
TABLE_MACHINES = {
    "8 GB Mac or laptop": "m1_8gb", "16 GB Mac": "m2_16gb", "PC without a GPU, 16 GB": "cpu_only",
    "36 GB Mac": "m4max36", "24 GB NVIDIA (RTX 4090)": "rtx4090", "128 GB Mac": "m4max128",
}


def test_the_readme_table_of_first_models_is_what_search_picks(roost_here):
    import json

    text = open(README).read().split("| machine | a good first model |", 1)[1].split("\n\n", 1)[0]
    rows = [[c.strip() for c in line.strip("|").split("|")] for line in text.splitlines()[2:]]
    assert [r[0] for r in rows] == list(TABLE_MACHINES)
    for machine, models, quants in rows:
        offers = {o["name"]: o for o in json.loads(roost_here("search", "--json",
                                                              machine=TABLE_MACHINES[machine] + ".json").stdout)}
        names = re.findall(r"`([\w.-]+)`", models)
        picks = quants.split(",")[0].split(" or ")
        said = [float(t) for t in re.findall(r"~(\d+) tok/s", quants)][:1]
        for name, quant in zip(names, picks):
            o = offers[name]
            assert o["pick"] == quant and o["fits"] == "full" and not o["too_slow"], (machine, o)
            # the rate said is the prediction, to within the rounding a row allows
            assert abs(o["predicted_tps"] - said[0]) <= max(0.1 * said[0], 1), (machine, o)
