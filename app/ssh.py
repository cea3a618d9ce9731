"""roost chat --ssh and roost run --ssh: `roost serve` started on a box over SSH and used
through that same connection.

The system's `ssh` does everything that touches the network, with the user's own config,
keys and agent: roost asks for no credentials of its own. One master connection (ssh -M)
carries the rest as it would for a person: the remote `roost serve` (loopback only, a port
chosen there, a one-time API key given on its stdin so that the box's `ps` never shows it)
and a port forward to it (ssh -O forward). Then the chat is the remote engine's, as with
--remote. The server goes with the connection: closing its stdin stops it (serve
--api-key-stdin), so a quit, a dropped connection and a killed roost all leave nothing
running on the box. ROOST_SSH_COMMAND replaces `ssh` (with options), as GIT_SSH_COMMAND does.
"""

from __future__ import annotations

import atexit
import collections
import os
import re
import secrets
import shlex
import shutil
import socket
import subprocess
import sys
import tempfile
import threading

from roost.backends.remote import RemoteEngine
from roost.errors import RemoteError, UsageError

# The line roost serve prints once it listens (app/cli/serve.py), and the model's id in it.
SERVING = re.compile(r"^roost: serving (?:(\S+) \(.*)?.* at http://127\.0\.0\.1:(\d+)/v1")
PID = "roost-ssh: pid "  # the remote shell's pid, which exec makes the server's
MISSING = re.compile(r"roost: error: (\S+) is not downloaded yet")
INSTALL = "in a checkout of roost there, run ./packaging/install.sh (README: Install)"
STOP_S = 10.0  # for the server to stop once its stdin closes, before it is killed
CONNECT_TIMEOUT_S = 15
MASTER_IDLE_S = 30  # seconds the connection stays with nothing using it (see _connect)


class Box:
    """One box: the master connection, the remote server and its forward. open() returns
    the remote engine on it; close() stops the server and the connection."""

    def __init__(self, target: str, model: str | None, roost: str | None = None, interactive: bool = False):
        if target.startswith("-"):
            raise UsageError(f"--ssh {target!r} is not a host; give [user@]host")
        self.target, self.model, self.roost = target, model, roost or "roost"
        self.interactive = interactive  # a terminal to ask at (a password, pulling a model)
        self.ssh = shlex.split(os.environ.get("ROOST_SSH_COMMAND") or "ssh")
        self.folder = self.socket = None
        self.master = False  # the connection is up
        self.server = None
        self.server_pid: int | None = None
        self.said: collections.deque[str] = collections.deque(maxlen=20)  # the server's last lines

    def open(self):
        """Connect, start the server and forward to it: the remote engine. RemoteError (or
        UsageError) in one line where any step fails; what was started is stopped then."""
        try:
            self._connect()
            model_id, port, key = self._serve()
            engine = self._engine(self._forward(port), model_id, key)
        except BaseException:
            self.close()
            raise
        return engine

    # -- steps --------------------------------------------------------------------------

    def _connect(self) -> None:
        # A short path: a unix socket's is limited to about 100 bytes.
        self.folder = tempfile.mkdtemp(prefix="roost-ssh-")
        self.socket = os.path.join(self.folder, "s")
        atexit.register(self.close)  # an error that ends roost ends the connection too (and see below)
        # The master outlives its first command (`true`) while the server's session, a pull's
        # or a forward uses it, and goes MASTER_IDLE_S after the last: so even a roost killed
        # outright (its server stopped by its stdin closing) leaves no connection behind.
        options = ["-o", f"ControlPersist={MASTER_IDLE_S}", "-o", f"ConnectTimeout={CONNECT_TIMEOUT_S}",
                   "-o", "ServerAliveInterval=10", "-o", "ExitOnForwardFailure=yes"]
        if not self.interactive:  # nobody to type a password: fail at once rather than wait
            options += ["-o", "BatchMode=yes"]
        # A password or passphrase is asked at the terminal here if ssh must; then the master
        # goes to the background in a session of its own, where a Ctrl-C meant for roost (a
        # cancel) does not reach it.
        with open(os.path.join(self.folder, "ssh.log"), "w+b") as log:
            code = subprocess.run([*self.ssh, "-M", "-S", self.socket, *options, self.target, "true"],
                                  stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=log).returncode
            if code != 0 or not self._check():
                log.seek(0)
                said = [line for line in log.read().decode("utf-8", "replace").splitlines() if line.strip()]
                raise RemoteError(f"ssh to {self.target} failed: "
                                  f"{said[-1] if said else f'ssh exited with {code}'}")
        self.master = True

    def _check(self) -> bool:
        return os.path.exists(self.socket) and self._control("check").returncode == 0

    def _control(self, command: str, *more: str) -> subprocess.CompletedProcess:
        return subprocess.run([*self.ssh, "-S", self.socket, "-O", command, *more, self.target],
                              stdin=subprocess.DEVNULL, capture_output=True, timeout=CONNECT_TIMEOUT_S)

    def _remote(self, command: str, **popen) -> subprocess.Popen:
        """A command on the box over the master connection, through a login shell so that
        the box's PATH (~/.local/bin, a venv added in .profile) applies."""
        # A process group of its own: a Ctrl-C at the terminal (a cancel) is roost's alone.
        return subprocess.Popen([*self.ssh, "-S", self.socket, self.target, f"sh -lc {shlex.quote(command)}"],
                                process_group=0, **popen)

    def _serve(self) -> tuple[str | None, int, str]:
        """The server started there: (its model's id, its port there, its API key)."""
        key = secrets.token_urlsafe(24)
        while True:
            argv = ["serve", *([self.model] if self.model else []), "--host", "127.0.0.1", "--port", "0",
                    "--api-key-stdin"]
            # --ssh-roost as the box's shell reads it (~/..., or a command of several words).
            self.server = self._remote(f"echo {PID}$$ >&2; exec {self.roost} {shlex.join(argv)}",
                                       stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
            try:
                self.server.stdin.write(f"{key}\n".encode())
                self.server.stdin.flush()
            except BrokenPipeError:  # ssh has gone already: its exit code and last words say why
                pass
            for raw in self.server.stderr:
                line = raw.decode("utf-8", "replace").rstrip()
                if line.startswith(PID):
                    self.server_pid = int(line.removeprefix(PID))
                    continue
                self.said.append(line)
                if found := SERVING.match(line):
                    # Drained from now on: a full pipe would stop the server mid-log.
                    threading.Thread(target=self._drain, daemon=True).start()
                    return found.group(1), int(found.group(2)), key
            code = self.server.wait()
            self.server = None
            if not self._pulled(code):
                raise self._failed(code)

    def _drain(self) -> None:
        server = self.server
        for raw in server.stderr:
            self.said.append(raw.decode("utf-8", "replace").rstrip())

    def _failed(self, code: int) -> RemoteError:
        said = [line for line in self.said if line.strip() and not line.startswith("INFO:")]
        if code in (126, 127):  # the shell's: no such command, or not one it may run
            return RemoteError(f"roost is not installed on {self.target} (no {self.roost} there for a login shell): "
                               f"{INSTALL}, or name it with --ssh-roost PATH")
        if code == 255:  # ssh's own failure: its last words say why
            return RemoteError(f"ssh to {self.target} failed: {said[-1] if said else 'the connection was lost'}")
        last = (said[-1] if said else f"exited with {code}").removeprefix("roost: error: ")
        return RemoteError(f"roost serve on {self.target} failed: {last}")

    def _pulled(self, code: int) -> bool:
        """The model is not on the box: at a terminal, offered and pulled there (progress
        shown); True to start the server again. Elsewhere the command to run is said."""
        missing = next((m.group(1) for line in self.said if (m := MISSING.search(line))), None)
        if code == 0 or missing is None:
            return False
        pull = f"{self.roost} pull {missing} -y"
        if not (self.interactive and sys.stdin.isatty()):
            raise RemoteError(f"{missing} is not on {self.target}: pull it there with "
                              f"`ssh {self.target} {pull}`, or run this at a terminal to be asked")
        answer = input(f"roost: {missing} is not on {self.target}. Download it there now? [y/N] ")
        if answer.strip().lower() not in ("y", "yes"):
            raise RemoteError(f"{missing} is not on {self.target}: pull it there with `ssh {self.target} {pull}`")
        # -t: a terminal there, so that the download's progress bar draws as it does here.
        done = subprocess.run([*self.ssh, "-t", "-S", self.socket, self.target, f"sh -lc {shlex.quote(pull)}"])
        if done.returncode != 0:
            raise RemoteError(f"roost pull {missing} on {self.target} failed (exit {done.returncode})")
        self.said.clear()
        return True

    def _forward(self, port: int) -> int:
        """A free port here forwarded to the server's there, on the master connection."""
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            local = probe.getsockname()[1]
        done = self._control("forward", "-L", f"127.0.0.1:{local}:127.0.0.1:{port}")
        if done.returncode != 0:
            raise RemoteError(f"ssh could not forward a port to {self.target}: "
                              f"{done.stderr.decode('utf-8', 'replace').strip() or done.returncode}")
        return local

    def _engine(self, local: int, model_id: str | None, key: str):
        engine = BoxEngine(f"http://127.0.0.1:{local}", model_id, key)
        engine.box = self
        engine.host = self.target  # the status bar's and the errors' name for it: the box, not the forward
        return engine

    # -- the end ------------------------------------------------------------------------

    def close(self) -> None:
        """The server stopped (its stdin closed: it shuts down as at Ctrl-C; killed over
        the connection if it has not in STOP_S), then the connection."""
        if self.server is not None:
            try:
                self.server.stdin.close()
            except OSError:
                pass
            try:
                self.server.wait(STOP_S)
            except subprocess.TimeoutExpired:
                if self.server_pid is not None:
                    subprocess.run([*self.ssh, "-S", self.socket, self.target, f"kill {self.server_pid}"],
                                   stdin=subprocess.DEVNULL, capture_output=True, timeout=CONNECT_TIMEOUT_S)
                self.server.kill()
                self.server.wait()
            self.server = None
        if self.master:
            try:
                self._control("exit")
            except subprocess.TimeoutExpired:
                pass
            self.master = False
        if self.folder is not None:
            shutil.rmtree(self.folder, ignore_errors=True)
            self.folder = None


class BoxEngine(RemoteEngine):
    """The remote engine on a box's server: closing it stops the server and the connection."""

    box: Box

    def close(self) -> None:
        super().close()
        self.box.close()
