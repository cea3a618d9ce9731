"""The chat app as a person over SSH uses it: tmux at 80x24, 256 colours, keyboard only."""

import re
import shutil
import subprocess
import sys
import time

import pytest

from conftest import ROOT

pytestmark = [pytest.mark.skipif(shutil.which("tmux") is None, reason="tmux is not installed (.ci/run installs it)"),
              pytest.mark.e2e, pytest.mark.slow]


def tmux(*args, check=True):
    return subprocess.run(["tmux", "-L", "roost-test", *args], capture_output=True, text=True, check=check)


def screen() -> str:
    return tmux("capture-pane", "-t", "chat", "-p", check=False).stdout


def wait_for(*needles, timeout=90.0) -> str:
    deadline = time.monotonic() + timeout
    while True:
        text = screen()
        if all(n in text for n in needles):
            return text
        assert time.monotonic() < deadline, f"never saw {needles!r}; the screen was:\n{text}"
        time.sleep(0.2)


def quit_with_ctrl_q(timeout: float) -> None:
    """Ctrl+Q, and the app (so its tmux session) gone within timeout seconds."""
    tmux("send-keys", "-t", "chat", "C-q")
    deadline = time.monotonic() + timeout
    while tmux("has-session", "-t", "chat", check=False).returncode == 0:
        assert time.monotonic() < deadline, "the app did not quit on Ctrl+Q"
        time.sleep(0.2)


def test_chat_in_tmux_at_80x24():
    command = f"TERM=screen-256color {sys.executable} -m roost chat demo --temperature 0"
    tmux("new-session", "-d", "-s", "chat", "-x", "80", "-y", "24", "-c", ROOT, command)
    try:
        wait_for("Ask something")
        tmux("send-keys", "-t", "chat", "What is the capital of Japan?", "Enter")
        shown = wait_for("Tokyo", "prompt ", "ctx ")  # the prompt rate is shown once the answer is done
        assert re.search(r"gen [1-9][\d,.]* tok/s", shown) and "RSS" in shown
        assert all(len(line) <= 80 for line in shown.splitlines())
        tmux("send-keys", "-t", "chat", "Escape")
        quit_with_ctrl_q(timeout=20)
    finally:
        tmux("kill-server", check=False)


def test_an_engine_crash_in_tmux_is_one_line_and_the_chat_goes_on(tmp_path):
    """A real SIGSEGV in the engine's process mid-answer (the child's test hook, once): the
    app stays, says so in its status bar, and the next question loads the model again.
    Afterwards the terminal is the shell's, not the app's screen."""
    once = tmp_path / "crashed-once"
    command = (f"ROOST_TEST_CRASH=stream:3 ROOST_TEST_CRASH_ONCE={once} TERM=screen-256color "
               f"{sys.executable} -m roost chat demo --temperature 0; echo roost-exited-$?; sleep 30")
    tmux("new-session", "-d", "-s", "chat", "-x", "80", "-y", "24", "-c", ROOT, command)
    try:
        wait_for("Ask something")
        tmux("send-keys", "-t", "chat", "What is the capital of Japan?", "Enter")
        crashed = wait_for("the engine crashed (SIGSEGV) while answering", "Ask again: the model loads anew")
        assert "The capital" in crashed  # what came before the crash stays on screen
        tmux("send-keys", "-t", "chat", "What is the capital of Japan?", "Enter")
        # Said while the model loads and answers (the status bar, a notice that times out):
        # looked for before the answer, which on a loaded machine may come after the notice went.
        wait_for("loaded again")
        wait_for("Tokyo")
        tmux("send-keys", "-t", "chat", "C-q")
        left = wait_for("roost-exited-0", timeout=20)
        assert "Ask something" not in left  # the alternate screen is gone: the shell's own lines
    finally:
        tmux("kill-server", check=False)
