"""The engine's own process (backends/child.py starts it): the model loaded with
`roost.backends.load`, calls served on one pipe by the main thread, cancels and memory
readings on the other by a thread of its own (backends/child_protocol.py says what goes
over them)."""

from __future__ import annotations

import os
import pickle
import signal
import socket
import sys
import threading
from multiprocessing.connection import Connection

from roost.backends import memory
from roost.backends.base import Cancel, MemoryReading, Progress, Token, ToolCall
from roost.backends.child_protocol import portable, progress_message, token_message, tool_call_message


# A test-only hook, so that tests can watch a real crash: it makes the child die as native
# code would, at one of three points. Read here, in the child only; unset, it costs one
# string comparison per token.
#   ROOST_TEST_CRASH=load | prefill | stream:N   loading the model; once a prompt has
#       arrived, before its first token; before the Nth token of an answer is sent
#   ROOST_TEST_CRASH_HOW=segv | abort | kill     SIGSEGV (reading address 0 through ctypes),
#       abort() (as a failed GGML_ASSERT does), SIGKILL (as the out-of-memory killer does)
#   ROOST_TEST_CRASH_ONCE=FILE                   only the first child to get there dies (it
#       creates FILE first), so that the one loaded after it lives
_crash_at = ""  # set from ROOST_TEST_CRASH as the child starts


def _crash_point(where: str) -> None:
    if where != _crash_at:
        return
    once = os.environ.get("ROOST_TEST_CRASH_ONCE")
    if once:
        try:
            os.close(os.open(once, os.O_CREAT | os.O_EXCL | os.O_WRONLY))
        except FileExistsError:
            return
    try:
        import resource

        resource.setrlimit(resource.RLIMIT_CORE, (0, 0))  # no core file to write: die at once
    except (ImportError, ValueError, OSError):
        pass
    how = os.environ.get("ROOST_TEST_CRASH_HOW", "segv")
    if how == "abort":
        os.abort()
    if how == "kill":
        os.kill(os.getpid(), signal.SIGKILL)
    import ctypes

    ctypes.string_at(0)


class _Answering:
    """Which answer runs now, and the cancels that came for it (early ones too)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._rid: int | None = None
        self._cancel: Cancel | None = None
        self._cancelled: set[int] = set()

    def begin(self, rid: int) -> Cancel:
        with self._lock:
            self._rid, self._cancel = rid, Cancel()
            self._cancelled = {r for r in self._cancelled if r >= rid}
            if rid in self._cancelled:
                self._cancel.set()
            return self._cancel

    def cancel(self, rid: int) -> None:
        with self._lock:
            self._cancelled.add(rid)
            if rid == self._rid:
                self._cancel.set()

    def end(self) -> None:
        with self._lock:
            self._rid = self._cancel = None


def main() -> None:
    """The child's main: the pipes from its arguments (or stdin, on Windows), then the
    model, then calls until the app closes its end."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the app's: it cancels through the control pipe
    global _crash_at
    _crash_at = os.environ.get("ROOST_TEST_CRASH", "")
    if os.name == "posix":
        calls, control = (Connection(int(fd)) for fd in sys.argv[1:3])
    else:
        calls, control = (Connection(socket.fromshare(data).detach()) for data in pickle.load(sys.stdin.buffer))
    model_path, plan, engine_name = calls.recv()

    answering = _Answering()
    engine = None
    send_lock = threading.Lock()  # the main thread and the control thread both answer

    def serve_control() -> None:
        while True:
            try:
                message = control.recv()
            except (EOFError, OSError):  # the app is gone
                os._exit(0)
            if message[0] == "cancel":
                answering.cancel(message[1])
            elif message[0] == "memory":
                try:  # while loading, this process's own memory is all there is to read
                    reading = (engine.memory() if engine is not None else
                               MemoryReading(memory.rss_bytes(), memory.peak_rss_bytes()))
                    reply = ("value", reading)
                except Exception as e:
                    reply = portable(e)
                with send_lock:
                    control.send(reply)
            elif message[0] == "exit":
                os._exit(0)  # the quickest way to give everything back

    threading.Thread(target=serve_control, name="roost-engine-control", daemon=True).start()
    try:
        _crash_point("load")
        from roost.backends import load

        engine = load(model_path, plan, engine_name)
        calls.send(("ready", engine.info(), callable(getattr(engine, "logits", None))))
    except Exception as e:
        calls.send(portable(e))
        return
    while True:
        try:
            op, rid, *args = calls.recv()
        except (EOFError, OSError):
            break
        try:
            if op in ("stream", "complete"):
                cancel = answering.begin(rid)
                _crash_point("prefill")
                n = 0
                for event in getattr(engine, op)(*args, cancel):
                    if isinstance(event, Token):
                        n += 1
                        _crash_point(f"stream:{n}")
                        calls.send(token_message(event))
                    elif isinstance(event, Progress):
                        calls.send(progress_message(event))
                    elif isinstance(event, ToolCall):
                        calls.send(tool_call_message(event))
                    else:
                        calls.send(("done", event))
            elif op == "tokenize":
                calls.send(("value", engine.tokenize(*args)))
            elif op == "logits":
                import numpy as np

                out = np.ascontiguousarray(engine.logits(*args))
                calls.send(("array", out.dtype.str, out.shape))
                calls.send_bytes(out.reshape(-1).view(np.uint8))
        except Exception as e:
            calls.send(portable(e))
        finally:
            answering.end()
    os._exit(0)
