"""Any local engine in a process of its own, behind the same Engine interface.

Native code crashes: a GGML_ASSERT aborts, a CUDA error or the out-of-memory killer ends
the process, a CPU feature the build mishandles segfaults. Run in a child process, such
a crash is an `EngineCrashed` here, naming the signal, and the app goes on; `restart()`
loads the model again in a new child. Ending the child (`close()`) gives back every
byte the model held, RAM and VRAM alike.

The child is a fresh interpreter (started, not forked: a fork would copy the app's
threads, Textual's or uvicorn's, in whatever state they were) that loads the model with
`roost.backends.load` and serves two pipes (multiprocessing's Connection over sockets):

  calls    stream, complete, tokenize, logits, one at a time, answered on the same pipe:
           a stream as one message per Token and a Done last; served by the main thread
  control  what must get through while an answer runs: a cancel (the engine's loop sees
           it before its next token) and memory readings; served by a thread of its own

Its stdout and stderr go to a file, not the terminal (a TUI owns that): the last
line there that looks like an error (a GGML_ASSERT, a CUDA error) is quoted when it dies.
"""

from __future__ import annotations

import os
import pickle
import re
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import traceback
from dataclasses import replace
from multiprocessing.connection import Connection
from typing import Iterator, Sequence

from roost import errors
from roost.backends import memory
from roost.backends.base import Cancel, EngineInfo, Event, MemoryReading, Message, Params, Plan, Token
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
        calls, control, self._proc = _spawn(log_fd)
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
            raise _rebuilt(reply)
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
                self._crashed = EngineCrashed(_how(proc.returncode), self._doing or "idle", self._last_words())
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
            raise _rebuilt(reply)
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
            raise _rebuilt(reply)
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
                    if message[0] == "t":
                        self._doing = "answering"
                        yield Token(*message[1:])
                        continue
                    ended = True
                    if message[0] == "done":
                        yield message[1]
                        return
                    raise _rebuilt(message)
            finally:
                if take_back is not None:
                    take_back()
                if not ended and self.alive:  # the caller left early: stop the answer, read it to its end
                    self._drain(rid)
                self._doing = None

    def _drain(self, rid: int) -> None:
        self._tell(("cancel", rid))
        try:
            while self._calls.recv()[0] == "t":
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


def _spawn(log_fd: int):
    """A new interpreter running _child() (not multiprocessing's spawn, which would import
    the app's main module again in it), and the two pipes to it: (calls, control, Popen).
    Its stdout and stderr go to log_fd; it has a session of its own, so the terminal's
    Ctrl-C and hang-up reach the app alone (which ends it: its pipes close)."""
    pairs = [socket.socketpair() for _ in range(2)]
    command = [sys.executable, "-c", "from roost.backends.child import _child; _child()"]
    if os.name == "posix":
        ends = [child.fileno() for _, child in pairs]
        proc = subprocess.Popen(command + [str(fd) for fd in ends], pass_fds=ends, stdin=subprocess.DEVNULL,
                                stdout=log_fd, stderr=log_fd, start_new_session=True)
    else:  # Windows: sockets are handed over as socket.share() data on stdin
        proc = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=log_fd, stderr=log_fd,
                                creationflags=subprocess.CREATE_NEW_PROCESS_GROUP)
        proc.stdin.write(pickle.dumps([child.share(proc.pid) for _, child in pairs]))
        proc.stdin.close()
    for _, child in pairs:
        child.close()
    calls, control = (Connection(parent.detach()) for parent, _ in pairs)
    return calls, control, proc


def _how(exitcode: int | None) -> str:
    if exitcode is not None and exitcode < 0:
        try:
            return signal.Signals(-exitcode).name
        except ValueError:
            return f"signal {-exitcode}"
    return f"exit code {exitcode}"


def _portable(error: BaseException) -> tuple:
    """An exception as the parent rebuilds it: its class's module and name, its message and
    the child's traceback (the class itself may not survive pickling)."""
    cls = type(error)
    return ("error", cls.__module__, cls.__qualname__, str(error),
            "".join(traceback.format_exception(error)))


def _rebuilt(message) -> BaseException:
    """roost's own errors come back as themselves, with their message; Python's built-in
    ones too; anything else as a RuntimeError naming it. The child's traceback is a note."""
    _, module, name, text, trace = message
    cls = getattr(errors, name, None) if module == "roost.errors" else None
    if cls is None and module == "builtins":
        import builtins

        cls = getattr(builtins, name, None)
    if isinstance(cls, type) and issubclass(cls, Exception):
        try:
            error = cls(text)
        except TypeError:
            error = RuntimeError(f"{name}: {text}")
    else:
        error = RuntimeError(f"{name}: {text}")
    error.add_note(f"in the engine's process:\n{trace}")
    return error


# -- in the child ---------------------------------------------------------------------------


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


def _child() -> None:
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
                    reply = _portable(e)
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
        calls.send(_portable(e))
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
                        calls.send(("t", event.text, event.generated, event.decode_s, event.ttft_s,
                                    event.prompt_tokens))
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
            calls.send(_portable(e))
        finally:
            answering.end()
    os._exit(0)
