"""Copying text to the user's clipboard, by the way that works where roost runs.

OSC 52 asks the terminal to set its clipboard, and crosses SSH; but Terminal.app ignores
it, iTerm2 ignores it until allowed, and tmux drops it from programs by default
(set-clipboard external). So a local Mac uses pbcopy, and a local Linux desktop
wl-copy or xclip; inside tmux the text also goes into tmux's own paste buffer (and,
with -w, on to the outer terminal where tmux may); elsewhere it is OSC 52, and the
message says that is all it was.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from typing import Callable, Mapping


def copy(text: str, osc52: Callable[[str], None], label: str = "the text", env: Mapping[str, str] | None = None,
         platform: str | None = None) -> str:
    """Copy text; return what was done, to tell the user. osc52 sends the escape
    sequence to the terminal (Textual's App.copy_to_clipboard)."""
    env = os.environ if env is None else env
    platform = platform or sys.platform
    what = f"{label} ({len(text)} characters)"
    remote = bool(env.get("SSH_CONNECTION") or env.get("SSH_TTY"))
    if not remote:
        for command in _local_commands(env, platform):
            if _run(command, text, env):
                return f"Copied {what} to the clipboard"
    osc52(text)  # costs nothing where it is ignored, and is the only way back over SSH
    if env.get("TMUX"):
        # -w also hands it to the outer terminal where tmux allows it (tmux 3.2+).
        if _run(["tmux", "load-buffer", "-w", "-"], text, env) or _run(["tmux", "load-buffer", "-"], text, env):
            return f"Copied {what} into tmux's paste buffer (prefix ] pastes it)"
    return (f"Sent {what} to the terminal's clipboard (OSC 52); if nothing was copied, this terminal "
            "does not allow it (Terminal.app never does; iTerm2 asks for it in its settings)")


def _local_commands(env: Mapping[str, str], platform: str) -> list[list[str]]:
    if platform == "darwin":
        return [["pbcopy"]]
    commands = []
    if env.get("WAYLAND_DISPLAY"):
        commands.append(["wl-copy"])
    if env.get("DISPLAY"):
        commands += [["xclip", "-selection", "clipboard"], ["xsel", "--clipboard", "--input"]]
    return commands


def _run(command: list[str], text: str, env: Mapping[str, str]) -> bool:
    if shutil.which(command[0], path=env.get("PATH")) is None:
        return False
    try:
        # Not captured: xclip stays behind to serve the selection, holding any pipe open.
        done = subprocess.run(command, input=text.encode(), env=dict(env), timeout=5,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return done.returncode == 0
