"""Any local engine in a process of its own, behind the same Engine interface.

Native code crashes: a GGML_ASSERT aborts, a CUDA error or the out-of-memory killer ends
the process, a CPU feature the build mishandles segfaults. Run in a child process, such
a crash is an `EngineCrashed` here, naming the signal, and the app goes on; `restart()`
loads the model again in a new child. Ending the child (`close()`) gives back every
byte the model held, RAM and VRAM alike.

The child (backends/child_main.py) is a fresh interpreter that loads the model with
`roost.backends.load` and serves two pipes (backends/child_protocol.py): one for calls,
one a cancel gets through while an answer runs. Its stdout and stderr go to a file, not
the terminal (a TUI owns that): the last line there that looks like an error (a
GGML_ASSERT, a CUDA error) is quoted when it dies.
"""

from __future__ import annotations

import os
import re
import subprocess
import tempfile
import threading
from dataclasses import replace
from typing import Iterator, Sequence

from roost import errors
from roost.backends import memory
from roost.backends.base import Cancel, EngineInfo, Event, MemoryReading, Message, Params, Plan
from roost.backends.child_protocol import (PROGRESS, TOKEN, TOOL_CALL, how_it_ended, progress_of, rebuilt, spawn,
                                           token_of, tool_call_of)
from roost.errors import EngineCrashed, RoostError

_REAP_S = 5.0  # how long a dead child's exit status is waited for
_CLOSE_S = 2.0  # how long a child asked to exit is given before it is killed
_READING_S = 5.0  # how long a memory reading is waited for (its thread answers at once, unless the GIL is held)
_LAST_WORDS = re.compile(r"GGML_ASSERT|error|fail|abort|CUDA|Metal|out of memory|terminate", re.IGNORECASE)


class ChildEngine:
    """The Engine (and Scorer, where the engine in the child is one) over a child process."""

    def __init__(self, model_path: str, plan: Plan = Plan(), engine: str = "llama"):
        self.model_path, self.plan, self.engine_name = model_path, plan, engine
        self._calls_lock = threading.Lock()  # one call (a whole stream) at a time on the calls pipe
        self._control_lock = threading.Lock()  # one reading asked and answered at a time on the control pipe
        self._send_lock = threading.Lock()  # held only to write to it: a cancel never waits for a reading
        self._late = 0  # readings asked for that did not come in time: their answers are dropped
        self._death_lock = threading.Lock()
        self._rid = 0
        self._proc = None
        self._start()

    # -- the child's life ---------------------------------------------------------------

    def _start(self) -> None:
        log_fd, log_path = tempfile.mkstemp(prefix="roost-engine-", suffix=".log")
        calls, control, self._proc = spawn(log_fd)
        os.close(log_fd)
        with self._control_lock, self._send_lock:
            self._calls, self._control, self._late = calls, control, 0
            self._log, self._log_path = open(log_path, "rb"), log_path
            self._forget_log_path()  # open here and in the child: nothing is left behind (POSIX)
            self._crashed: EngineCrashed | None = None
            self._closed = False
            self._doing = "loading the model"
        try:
            self._send(calls, (self.model_path, self.plan, self.engine_name))
            reply = self._recv(calls)
        except BaseException:
            self._end()
            raise
        if reply[0] == "error":
            self._end()
            raise rebuilt(reply)
        _, self._info, self._scorer = reply
        self._doing = None

    def restart(self) -> "ChildEngine":
        """A new child with the model loaded again, after a crash (or to start afresh)."""
        with self._calls_lock:
            self._end()
            self._start()
        return self

    def close(self) -> None:
        """End the child: every byte it held is given back."""
        self._end()

    def _end(self) -> None:
        proc = self._proc
        if proc is None or self._closed:
            return
        self._closed = True
        if proc.poll() is None and self._send_lock.acquire(timeout=_CLOSE_S):
            try:
                self._control.send(("exit",))
            except OSError:
                pass
            finally:
                self._send_lock.release()
        try:
            proc.wait(_CLOSE_S)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(_REAP_S)
        for conn in (self._calls, self._control):
            conn.close()
        self._log.close()
        self._forget_log_path()

    def _forget_log_path(self) -> None:
        try:
            os.unlink(self._log_path)
        except OSError:  # gone already; or Windows, where an open file stays until closed
            pass

    @property
    def pid(self) -> int:
        return self._proc.pid

    @property
    def alive(self) -> bool:
        return not self._closed and self._crashed is None and self._proc.poll() is None

    def _died(self) -> RoostError:
        """What a call that found the child gone raises: the same EngineCrashed for every
        call that finds it, naming the signal, what it was doing and its last words."""
        with self._death_lock:
            if self._closed:
                return RoostError("the engine was closed")
            if self._crashed is None:
                proc = self._proc
                try:
                    proc.wait(_REAP_S)
                except subprocess.TimeoutExpired:  # it closed its pipes but lives on: end it
                    proc.kill()
                    proc.wait(_REAP_S)
                self._crashed = EngineCrashed(how_it_ended(proc.returncode), self._doing or "idle", self._last_words())
            return self._crashed

    def _last_words(self) -> str:
        try:
            self._log.seek(max(0, os.fstat(self._log.fileno()).st_size - 16384))
            lines = self._log.read().decode("utf-8", errors="replace").splitlines()
        except (OSError, ValueError):
            return ""
        said = [line.strip() for line in lines if _LAST_WORDS.search(line) and not line.startswith((" ", "\t"))]
        return said[-1][:200] if said else ""

    # -- the pipes ----------------------------------------------------------------------

    def _check(self) -> None:
        if self._closed or self._crashed is not None:
            raise self._died()

    def _send(self, conn, message) -> None:
        try:
            conn.send(message)
        except OSError:  # a broken pipe: the child is gone
            raise self._died() from None

    def _recv(self, conn):
        try:
            return conn.recv()
        except (EOFError, OSError):
            raise self._died() from None
        except BaseException:  # interrupted mid-message: the pipe cannot be trusted any more
            self._end()
            raise

    def _control_call(self, message, timeout: float):
        """Ask the child's control thread; None when it does not answer in time (a child
        stuck in native code that holds the GIL): its late answer is dropped later."""
        with self._control_lock:
            self._check()
            try:
                while self._late:  # the answers that came late go first
                    if not self._control.poll(timeout):
                        return None  # still stuck
                    self._control.recv()
                    self._late -= 1
            except (EOFError, OSError):
                raise self._died() from None
            with self._send_lock:
                self._send(self._control, message)
            try:
                answered = self._control.poll(timeout)
            except OSError:
                raise self._died() from None
            if not answered:
                self._late += 1
                return None
            reply = self._recv(self._control)
        if reply[0] == "error":
            raise rebuilt(reply)
        return reply[1]

    def _tell(self, message) -> None:
        """A control message that wants no answer (a cancel): never waits long, never raises."""
        with self._send_lock:
            try:
                if not self._closed and self._crashed is None:
                    self._control.send(message)
            except OSError:
                pass

    def _call(self, op: str, *args, doing: str):
        with self._calls_lock:
            self._check()
            self._rid += 1
            self._doing = doing
            try:
                self._send(self._calls, (op, self._rid, *args))
                reply = self._recv(self._calls)
                if reply[0] == "array":
                    return self._array(reply)
            finally:
                self._doing = None
        if reply[0] == "error":
            raise rebuilt(reply)
        return reply[1]

    def _array(self, reply):
        import numpy as np

        _, dtype, shape = reply
        out = np.empty(shape, dtype=dtype)
        try:
            self._calls.recv_bytes_into(out.reshape(-1).view(np.uint8))
        except (EOFError, OSError):
            raise self._died() from None
        return out

    # -- the Engine -----------------------------------------------------------------------

    def stream(self, messages: Sequence[Message], params: Params, cancel: Cancel | None = None) -> Iterator[Event]:
        return self._events("stream", list(messages), params, cancel)

    def complete(self, prompt: str, params: Params, cancel: Cancel | None = None) -> Iterator[Event]:
        return self._events("complete", prompt, params, cancel)

    def _events(self, op: str, what, params: Params, cancel: Cancel | None) -> Iterator[Event]:
        with self._calls_lock:
            self._check()
            self._rid += 1
            rid = self._rid
            self._doing = "reading the prompt"
            take_back = cancel.on_set(lambda: self._tell(("cancel", rid))) if cancel is not None else None
            ended = False
            try:
                self._send(self._calls, (op, rid, what, params))
                while True:
                    message = self._recv(self._calls)
                    if message[0] == TOKEN:
                        self._doing = "answering"
                        yield token_of(message)
                        continue
                    if message[0] == PROGRESS:
                        yield progress_of(message)
                        continue
                    if message[0] == TOOL_CALL:
                        yield tool_call_of(message)
                        continue
                    ended = True
                    if message[0] == "done":
                        yield message[1]
                        return
                    raise rebuilt(message)
            finally:
                if take_back is not None:
                    take_back()
                if not ended and self.alive:  # the caller left early: stop the answer, read it to its end
                    self._drain(rid)
                self._doing = None

    def _drain(self, rid: int) -> None:
        self._tell(("cancel", rid))
        try:
            while self._calls.recv()[0] in (TOKEN, PROGRESS, TOOL_CALL):
                pass
        except (EOFError, OSError):
            self._died()  # noted now, so that the next call says what it was doing

    def tokenize(self, text: str) -> list[int]:
        self._scoring()
        return self._call("tokenize", text, doing="tokenizing")

    def logits(self, tokens: Sequence[int]):
        self._scoring()
        return self._call("logits", list(tokens), doing="scoring")

    def _scoring(self) -> None:
        if not self._scorer:
            raise errors.UsageError(f"{self._info.engine} gives no logits to score with")

    def memory(self) -> MemoryReading:
        """The child's reading (its RSS, the engine's buffers), with this process's own RSS apart."""
        reading = self._control_call(("memory",), _READING_S)
        if reading is None:  # busy past the wait: not known now
            return MemoryReading(None, None, app_rss_bytes=memory.rss_bytes())
        peak = reading.peak_rss_bytes
        if peak is not None and reading.rss_bytes is not None:
            # Linux counts RSS per thread and sums it lazily: a young process's high-water
            # mark can read a few pages under its RSS.
            peak = max(peak, reading.rss_bytes)
        return replace(reading, peak_rss_bytes=peak, app_rss_bytes=memory.rss_bytes())

    def info(self) -> EngineInfo:
        return self._info
