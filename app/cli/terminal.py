"""What the commands share at the terminal: asking, a download's progress bar, Ctrl-C, and
the forked copy a one-shot command runs in so that a native crash is one line."""

from __future__ import annotations

import os
import signal
import sys


EXIT_INTERRUPTED = 130  # 128 + SIGINT, as a shell reports a command Ctrl-C stopped


# The signals native code dies of: a crash, an abort (a failed GGML_ASSERT), the OOM killer.
_CRASHES = ("SIGSEGV", "SIGBUS", "SIGILL", "SIGFPE", "SIGABRT", "SIGKILL")


def guarded(run) -> int:
    """Run a one-shot command in a forked copy of this process, so that a native crash in
    the engine (which no Python code survives) is one line from here, not a dead shell
    line. Forked, not spawned: nothing is imported again, so it costs a millisecond where
    a fresh engine process costs 0.1 s of start-up (bench/child_overhead.py). The copy
    shares the terminal: it streams, reads stdin and takes Ctrl-C as roost always did.
    run: the command, called with no arguments, returning the exit code."""
    if not hasattr(os, "fork"):  # Windows: in-process, as before
        return run()
    sys.stdout.flush()
    sys.stderr.flush()
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            code = run()
        except KeyboardInterrupt:  # a Ctrl-C that came after the command's own handler
            code = EXIT_INTERRUPTED
        finally:
            _exit_copy(code)
    status = _wait_forwarding(pid)
    if os.WIFEXITED(status):
        return os.WEXITSTATUS(status)
    died = signal.Signals(os.WTERMSIG(status)).name
    if died in _CRASHES:
        from roost.errors import EngineCrashed

        crash = EngineCrashed(died, "running the model")
        print(f"\nroost: error: {crash}; `roost doctor --self-test` checks the engine build", file=sys.stderr)
        return crash.exit_code
    return 128 + os.WTERMSIG(status)  # ended from outside (SIGTERM, SIGHUP): as a shell reports it


def _exit_copy(code) -> None:
    """End the copy: its output flushed, then out at once. Nothing may stop it on the way:
    an exception past here would run the rest of the parent's program in the copy, and a
    Ctrl-C counted twice (one sent to the whole group reaches both processes, and the
    parent passes on what a process sent it) must not print a traceback or end it by the
    signal instead of its own exit code."""
    try:
        signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
        for stream in (sys.stdout, sys.stderr):
            try:
                stream and stream.flush()
            except (OSError, ValueError):
                pass
    finally:
        os._exit(code if isinstance(code, int) else 1)


def _wait_forwarding(pid: int) -> int:
    """Wait for the copy, passing on the signals meant for roost. The terminal's Ctrl-C
    reaches both processes (one process group): the copy handles it, and passing it on
    too would make one Ctrl-C count as two. One sent to this process alone (kill -INT,
    timeout -s INT) is passed on."""
    if not hasattr(signal, "sigwaitinfo"):  # macOS: Ctrl-C from the terminal only
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        for forwarded in (signal.SIGTERM, signal.SIGHUP):
            signal.signal(forwarded, lambda signum, frame: os.kill(pid, signum))
        while True:
            try:
                return os.waitpid(pid, 0)[1]
            except InterruptedError:
                continue
    watched = {signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGCHLD}
    signal.pthread_sigmask(signal.SIG_BLOCK, watched)
    while True:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            return status
        info = signal.sigwaitinfo(watched)
        from_a_process = info.si_code <= 0  # SI_USER, SI_QUEUE, SI_TKILL; the terminal's is SI_KERNEL
        if info.si_signo != signal.SIGCHLD and (info.si_signo != signal.SIGINT or from_a_process):
            os.kill(pid, info.si_signo)


def confirm(question: str) -> bool:
    """Ask on the terminal; Enter means yes."""
    print(f"{question} [Y/n] ", end="", file=sys.stderr, flush=True)
    return sys.stdin.readline().strip().lower() in ("", "y", "yes")


def pull_with_progress(fetch) -> str:
    """Run a download with a progress bar on stderr; the first Ctrl-C cancels it."""
    from roost.backends.base import Cancel

    cancel = Cancel()
    with download_bar() as on_progress, first_interrupt_cancels(cancel):
        return fetch(on_progress=on_progress, cancel=cancel)


class download_bar:
    """rich's progress bar on stderr, fed by download Progress events."""

    def __enter__(self):
        from rich.console import Console
        from rich.progress import (BarColumn, DownloadColumn, Progress, TextColumn, TimeRemainingColumn,
                                   TransferSpeedColumn)

        self.bar = Progress(TextColumn("{task.description}"), BarColumn(), DownloadColumn(), TransferSpeedColumn(),
                            TimeRemainingColumn(), console=Console(stderr=True), transient=False)
        self.bar.start()
        self.tasks = {}
        return self.update

    def update(self, p) -> None:
        key = (p.filename, p.phase)
        if key not in self.tasks:
            self.tasks[key] = self.bar.add_task(f"{p.phase} {p.filename}", total=p.total)
        self.bar.update(self.tasks[key], completed=p.done, total=p.total)

    def __exit__(self, *exc) -> None:
        self.bar.stop()


class first_interrupt_cancels:
    """Ctrl-C during generation stops it cleanly within a token; a second Ctrl-C is the
    usual KeyboardInterrupt, for an engine that does not come back."""

    def __init__(self, cancel) -> None:
        self.cancel = cancel

    def _handle(self, signum, frame) -> None:
        if self.cancel.is_set():
            raise KeyboardInterrupt
        self.cancel.set()

    def __enter__(self):
        self.previous = signal.signal(signal.SIGINT, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        signal.signal(signal.SIGINT, self.previous)
