"""roost run --ssh and roost chat --ssh against a real sshd on 127.0.0.1, started here with
its own host key, a client key made in a temp folder and a client config (-F) naming it
"box". roost on the box is this checkout's (--ssh-roost), with a data folder and Hugging
Face cache of its own there (sshd's SetEnv), so the box has the bundled demo and nothing else."""

import getpass
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time

import httpx2
import psutil
import pytest

from conftest import NAME, ROOT, hub, hub_root, one_line, roost  # noqa: F401 (fixtures)
from test_tui_tmux import quit_with_ctrl_q, tmux, wait_for
from pilot import ask, ask_and_wait, drive, until
from roost.backends.base import Params
from roost.tui.app import RoostApp
from roost.tui.screens.chat import ChatScreen

SSHD = shutil.which("sshd") or "/usr/sbin/sshd"
BOX_ROOST = os.path.join(ROOT, ".venv", "bin", "roost")
PROMPT = "What is the capital of Japan?"

pytestmark = pytest.mark.slow


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def box(tmp_path_factory):
    """sshd on a free port of 127.0.0.1; yields the environment that points roost's ssh at it."""
    if not os.path.exists(SSHD) or shutil.which("ssh") is None:
        pytest.skip("sshd is not installed (Debian's openssh-server; .ci/run installs it)")
    d = tmp_path_factory.mktemp("box")
    for key in ("host_key", "client_key"):
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(d / key)], check=True)
    (d / "authorized_keys").write_text((d / "client_key.pub").read_text())
    port, closed = free_port(), free_port()
    (d / "sshd_config").write_text(f"""Port {port}
ListenAddress 127.0.0.1
HostKey {d}/host_key
AuthorizedKeysFile {d}/authorized_keys
PidFile {d}/sshd.pid
StrictModes no
PermitRootLogin prohibit-password
UsePAM no
PasswordAuthentication no
KbdInteractiveAuthentication no
SetEnv ROOST_DATA_DIR={d}/box-data HF_HOME={d}/box-hf
AcceptEnv HF_ENDPOINT HF_HUB_DISABLE_XET
""")
    common = (f"  HostName 127.0.0.1\n  User {getpass.getuser()}\n  IdentityFile {d}/client_key\n"
              f"  IdentitiesOnly yes\n  UserKnownHostsFile {d}/known_hosts\n  StrictHostKeyChecking accept-new\n"
              "  LogLevel ERROR\n  SendEnv HF_ENDPOINT HF_HUB_DISABLE_XET\n")  # the Hub stand-in, for a pull there
    (d / "ssh_config").write_text(f"Host box\n  Port {port}\n{common}Host closed\n  Port {closed}\n{common}")
    os.makedirs("/run/sshd", exist_ok=True)  # sshd's privilege separation folder, as the package's service makes it
    sshd = subprocess.Popen([SSHD, "-D", "-e", "-f", str(d / "sshd_config")], stderr=open(d / "sshd.log", "wb"))
    deadline = time.monotonic() + 30
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            break
        except OSError:
            assert sshd.poll() is None and time.monotonic() < deadline, (d / "sshd.log").read_text()
            time.sleep(0.1)
    env = {"ROOST_SSH_COMMAND": f"ssh -F {d}/ssh_config"}
    yield {"env": env, "sshd": psutil.Process(sshd.pid)}
    sshd.terminate()
    sshd.wait()


def on_box(box) -> list[psutil.Process]:
    """What runs under sshd: the sessions, and roost serve and its engine in them."""
    return box["sshd"].children(recursive=True)


def left_nothing(box, timeout: float = 30) -> None:
    """Nothing of the chat's runs on the box any more: sessions, server and engine gone."""
    gone, alive = psutil.wait_procs(on_box(box), timeout=timeout)
    assert not alive, [p.cmdline() for p in alive]


def test_run_over_ssh_answers_as_here_and_leaves_nothing_running(box):
    here = roost("run", "demo", PROMPT, "-t", "0", "-n", "16", "--no-server")
    there = roost("run", "--ssh", "box", "--ssh-roost", BOX_ROOST, "demo", PROMPT, "-t", "0", "-n", "16",
                  env=box["env"])
    assert here.returncode == 0 and there.returncode == 0, there.stderr
    assert there.stdout == here.stdout and "Tokyo" in there.stdout
    left_nothing(box)


def test_chat_over_ssh_in_pilot_and_the_server_gone_after_quit(box, monkeypatch):
    from roost.ssh import Box

    monkeypatch.setenv("ROOST_SSH_COMMAND", box["env"]["ROOST_SSH_COMMAND"])
    app = RoostApp(lambda: Box("box", "demo", BOX_ROOST).open(), "demo at box", Params(temperature=0, max_tokens=16))
    served = []

    async def scenario(pilot):
        await until(pilot, lambda: isinstance(app.screen, ChatScreen) and app.screen.session is not None)
        screen = app.screen
        served.extend(p for p in on_box(box) if "--api-key-stdin" in p.cmdline())
        await ask_and_wait(screen, pilot, PROMPT)
        assert "Tokyo" in screen.session.messages[-1]["content"]
        assert screen.engine.memory().host == "box"  # the status bar's reading is the box's
        await pilot.press("ctrl+q")

    drive(app, scenario)
    assert len(served) == 1  # the server there, found while the chat was open
    left_nothing(box)


def test_a_dropped_connection_mid_answer_keeps_the_partial_answer(box):
    """sshd's sessions killed while the answer streams: roost run prints what came, then one
    line, exits 1; the server there goes with its session."""
    run = subprocess.Popen([sys.executable, "-m", "roost", "run", "--ssh", "box", "--ssh-roost", BOX_ROOST, "demo",
                            "Write a very long story about a dragon and a knight.", "-t", "0", "-n", "2000"],
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL, cwd=ROOT,
                           env={**os.environ, **box["env"]})
    came = run.stdout.read(40)  # the answer has begun
    for session in [p for p in on_box(box) if p.name() == "sshd"]:  # each connection's, both halves
        session.send_signal(signal.SIGKILL)
    out, err = run.communicate(timeout=120)
    assert run.returncode == 1
    one_line(subprocess.CompletedProcess(run.args, 1, "", err.decode()), "the connection to box broke mid-answer",
             "cut short")
    assert len((came + out).decode().strip()) >= 40  # what came is printed
    left_nothing(box)


def test_refused_is_ssh_s_own_reason_in_one_line(box):
    one_line(roost("run", "--ssh", "closed", "demo", "hi", env=box["env"]), "ssh to closed failed", "refused")


def test_roost_missing_on_the_box_says_how_to_install(box):
    one_line(roost("run", "--ssh", "box", "--ssh-roost", "/nonexistent/roost", "demo", "hi", env=box["env"]),
             "roost is not installed on box", "install.sh", "--ssh-roost")
    left_nothing(box)


def test_a_model_missing_on_the_box_says_how_to_pull_it_there(box):
    one_line(roost("run", "--ssh", "box", "--ssh-roost", BOX_ROOST, "smollm2-360m", "hi", env=box["env"]),
             "smollm2-360m is not on box", "roost pull smollm2-360m -y")
    left_nothing(box)



def test_a_dropped_connection_in_the_chat_keeps_the_answer_so_far_and_f5_reconnects(box, monkeypatch):
    from roost import history
    from roost.ssh import Box

    monkeypatch.setenv("ROOST_SSH_COMMAND", box["env"]["ROOST_SSH_COMMAND"])
    app = RoostApp(lambda: Box("box", "demo", BOX_ROOST).open(), "demo at box", Params(temperature=0, max_tokens=2000))

    async def scenario(pilot):
        await until(pilot, lambda: isinstance(app.screen, ChatScreen) and app.screen.session is not None)
        screen = app.screen
        await ask(screen, pilot, "Write a very long story about a dragon and a knight.")
        await until(pilot, lambda: len(screen.query(".assistant").last().source) > 20)
        for session in [p for p in on_box(box) if p.name() == "sshd"]:
            session.send_signal(signal.SIGKILL)
        await until(pilot, lambda: not screen.generating)
        kept = screen.session.messages[-1]
        assert kept["role"] == "assistant" and len(kept["content"]) > 20  # what came, in the chat
        _, saved = history.Conversation(screen.session.saved.path).load()
        assert saved[-1]["content"] == kept["content"]  # and in its saved conversation
        assert "broke mid-answer" in str(screen.lost) and "F5 reconnects" in str(screen.query_one("#speed").render())
        await pilot.press("f5")
        await until(pilot, lambda: screen.lost is None)  # connected anew: the chat goes on
        await ask_and_wait(screen, pilot, "What is the capital of Japan?")
        # Answered on the new connection (what, after a story cut anywhere, is the model's affair).
        assert screen.session.messages[-1]["role"] == "assistant" and screen.lost is None
        assert len(screen.session.messages[-1]["content"]) > 0
        await pilot.press("ctrl+q")

    drive(app, scenario)
    left_nothing(box)


def test_chat_over_ssh_in_tmux(box):
    command = (f"ROOST_SSH_COMMAND='{box['env']['ROOST_SSH_COMMAND']}' TERM=screen-256color "
               f"{sys.executable} -m roost chat --ssh box --ssh-roost {BOX_ROOST} demo --temperature 0")
    tmux("new-session", "-d", "-s", "chat", "-x", "80", "-y", "24", "-c", ROOT, command)
    try:
        wait_for("Ask something")
        tmux("send-keys", "-t", "chat", PROMPT, "Enter")
        wait_for("Tokyo", "prompt ", "ctx ", "box: ")  # the status bar's memory is the box's
        quit_with_ctrl_q(timeout=30)
    finally:
        tmux("kill-server", check=False)
    left_nothing(box)


@pytest.mark.parametrize("how", ["stdin closed", "SIGHUP"])
def test_serve_with_its_key_on_stdin_stops_when_its_session_goes(how):
    """What the remote end sees of its ssh session ending: stdin closed (no terminal) or a
    hang-up (a terminal): either way the server stops as at Ctrl-C, cleanly."""
    serve = subprocess.Popen([sys.executable, "-m", "roost", "serve", "demo", "--port", "0", "--api-key-stdin"],
                             stdin=subprocess.PIPE, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, cwd=ROOT)
    serve.stdin.write(b"one-time-key\n")
    serve.stdin.flush()
    for line in serve.stderr:
        if line.startswith(b"roost: serving demo"):
            break
    assert b"API key required" in line
    url = re.search(rb"at (http://\S+)/v1", line).group(1).decode()
    assert httpx2.get(f"{url}/health", timeout=60).status_code == 200  # served, as when ssh forwards to it
    if how == "SIGHUP":
        serve.send_signal(signal.SIGHUP)
    else:
        serve.stdin.close()
    rest = serve.stderr.read()
    assert serve.wait(timeout=60) == 130 and b"roost: server stopped" in rest


def test_a_model_missing_on_the_box_is_pulled_there_when_asked_at_a_terminal(box, hub):
    """In tmux, a terminal: asked, yes, the download's progress over ssh, then the answer."""
    command = (f"HF_ENDPOINT={hub.url} HF_HUB_DISABLE_XET=1 ROOST_SSH_COMMAND='{box['env']['ROOST_SSH_COMMAND']}' "
               f"{sys.executable} -m roost run --ssh box --ssh-roost {BOX_ROOST} {NAME} '{PROMPT}' -t 0 -n 16; "
               "echo roost-exited-$?; sleep 30")
    tmux("new-session", "-d", "-s", "chat", "-x", "120", "-y", "30", "-c", ROOT, command)
    try:
        wait_for(f"{NAME} is not on box. Download it there now? [y/N]")
        tmux("send-keys", "-t", "chat", "y", "Enter")
        shown = wait_for("Tokyo", "roost-exited-0")
        assert re.search(r"download \S+\.gguf .* MB/s", shown), shown  # the pull's progress bar, from the box
    finally:
        tmux("kill-server", check=False)
    left_nothing(box)


def test_ctrl_c_at_the_terminal_cancels_the_answer_not_the_connection(box):
    """Ctrl-C goes to the terminal's foreground process group: roost's ssh processes are
    not in it, so the answer stops as a local one does (exit 130) and roost closes the rest."""
    command = (f"ROOST_SSH_COMMAND='{box['env']['ROOST_SSH_COMMAND']}' {sys.executable} -m roost run --ssh box "
               f"--ssh-roost {BOX_ROOST} demo 'Write a very long story about a dragon and a knight.' -t 0 -n 2000; "
               "echo roost-exited-$?; sleep 30")
    tmux("new-session", "-d", "-s", "chat", "-x", "120", "-y", "30", "-c", ROOT, command)
    try:
        wait_for("Once upon a time")  # the greedy story has begun
        tmux("send-keys", "-t", "chat", "C-c")
        shown = wait_for("roost-exited-130")
        assert "Once upon a time" in shown and "roost: error" not in shown  # what came stays, and no error
    finally:
        tmux("kill-server", check=False)
    left_nothing(box)


def test_roost_killed_outright_leaves_nothing_on_the_box(box):
    """SIGKILL to roost and its forked copy mid-answer: no cleanup of its own runs, yet the
    server's stdin closes with them (it stops) and the connection goes once idle."""
    from roost.ssh import MASTER_IDLE_S

    run = subprocess.Popen([sys.executable, "-m", "roost", "run", "--ssh", "box", "--ssh-roost", BOX_ROOST, "demo",
                            "Write a very long story about a dragon and a knight.", "-t", "0", "-n", "2000"],
                           stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL, cwd=ROOT,
                           env={**os.environ, **box["env"]}, start_new_session=True)
    run.stdout.read(40)  # the answer has begun
    os.killpg(run.pid, signal.SIGKILL)
    run.wait()
    left_nothing(box, timeout=MASTER_IDLE_S + 30)
