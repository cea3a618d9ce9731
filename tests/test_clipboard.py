"""Copying an answer: a local Mac's pbcopy (a stand-in program on PATH: macOS cannot run
here), a real tmux server's paste buffer, and OSC 52 over SSH, each said as what it was."""

import os
import stat
import subprocess
import uuid

import pytest

from roost.tui import clipboard

TEXT = "The capital of Japan is Tokyo.\nIt has 14 million people."


def _pbcopy(folder):
    """A pbcopy that keeps what it is given, as the real one gives it to the clipboard."""
    path = folder / "pbcopy"
    path.write_text(f'#!/bin/sh\ncat > "{folder}/clipboard"\n')
    path.chmod(path.stat().st_mode | stat.S_IEXEC)
    return folder / "clipboard"


def test_a_local_mac_copies_with_pbcopy_not_osc52(tmp_path):
    kept, sent = _pbcopy(tmp_path), []
    said = clipboard.copy(TEXT, sent.append, env={"PATH": f"{tmp_path}:/usr/bin:/bin"}, platform="darwin")
    assert kept.read_text() == TEXT and sent == []
    assert said == f"Copied the text ({len(TEXT)} characters) to the clipboard"


def test_over_ssh_the_text_goes_back_through_the_terminal_and_says_so(tmp_path):
    kept, sent = _pbcopy(tmp_path), []
    env = {"PATH": f"{tmp_path}:/usr/bin:/bin", "SSH_CONNECTION": "10.0.0.2 50000 10.0.0.3 22"}
    said = clipboard.copy(TEXT, sent.append, env=env, platform="darwin")
    # pbcopy there would fill the remote Mac's clipboard, not the user's
    assert sent == [TEXT] and not kept.exists()
    assert "OSC 52" in said and "Terminal.app" in said


@pytest.fixture
def tmux_server(tmp_path):
    if subprocess.run(["which", "tmux"], capture_output=True).returncode:
        pytest.skip("tmux is not installed")
    socket = str(tmp_path / f"tmux-{uuid.uuid4().hex[:8]}")
    subprocess.run(["tmux", "-S", socket, "new-session", "-d", "-s", "copy"], check=True)
    pid = subprocess.run(["tmux", "-S", socket, "display-message", "-p", "#{pid}"], capture_output=True,
                         text=True, check=True).stdout.strip()
    yield socket, f"{socket},{pid},0"
    subprocess.run(["tmux", "-S", socket, "kill-server"], capture_output=True)


def test_inside_tmux_the_answer_lands_in_tmux_paste_buffer(tmux_server):
    socket, tmux_env = tmux_server
    sent = []
    env = {"PATH": os.environ["PATH"], "TMUX": tmux_env, "SSH_TTY": "/dev/pts/3"}
    said = clipboard.copy(TEXT, sent.append, env=env, platform="linux")
    pasted = subprocess.run(["tmux", "-S", socket, "show-buffer"], capture_output=True, text=True, check=True).stdout
    assert pasted == TEXT and sent == [TEXT]
    assert "tmux's paste buffer" in said


def test_a_plain_terminal_gets_osc52_and_the_truth_about_it():
    sent = []
    said = clipboard.copy(TEXT, sent.append, env={"PATH": "/nonexistent"}, platform="linux")
    assert sent == [TEXT] and said.startswith(f"Sent the text ({len(TEXT)} characters) to the terminal's clipboard (OSC 52)")
