"""How the app and an engine's own process talk (backends/child.py is the app's side,
backends/child_main.py the child's): the process started, its two pipes, and what goes
over them.

The child is a fresh interpreter (started, not forked: a fork would copy the app's
threads, Textual's or uvicorn's, in whatever state they were), given two pipes
(multiprocessing's Connection over sockets), each message a pickled tuple:

  calls    first (model_path, plan, engine name), answered ("ready", EngineInfo, can score);
           then (op, rid, *args) for stream, complete, tokenize and logits, one at a time:
           a stream answered as one TOKEN message per Token (PROGRESS per Progress,
           while a long prompt is read; TOOL_CALL per ToolCall) and ("done", Done) last;
           tokenize as ("value", tokens); logits as ("array", dtype, shape), then the raw
           bytes. Served by the child's main thread.
  control  what must get through while an answer runs: ("cancel", rid), seen by the
           engine's loop before its next token; ("memory",), answered ("value", reading);
           ("exit",). Served by a thread of its own.

Any call may be answered with an error instead (`portable`), which the app raises as
the same exception (`rebuilt`).
"""

from __future__ import annotations

import os
import pickle
import signal
import socket
import subprocess
import sys
import traceback
from multiprocessing.connection import Connection

from roost import errors
from roost.backends.base import Logprob, Progress, Token, ToolCall

TOKEN = "t"  # a Token goes as its fields, not pickled whole: a stream sends thousands
PROGRESS = "p"  # so does a Progress
TOOL_CALL = "c"  # and a ToolCall, as the others are


def token_message(token: Token) -> tuple:
    message = (TOKEN, token.text, token.generated, token.decode_s, token.ttft_s, token.prompt_tokens, token.kind)
    # Log-probabilities as plain tuples, and only when asked for: a stream without them
    # stays as it was.
    return message + (tuple((lp.token, lp.logprob, lp.top) for lp in token.logprobs),) if token.logprobs else message


def token_of(message: tuple) -> Token:
    fields, logprobs = (message[1:-1], message[-1]) if len(message) > 7 else (message[1:], ())
    return Token(*fields, logprobs=tuple(Logprob(*lp) for lp in logprobs))


def progress_message(progress: Progress) -> tuple:
    return (PROGRESS, progress.done, progress.total, progress.cached, progress.elapsed_s)


def progress_of(message: tuple) -> Progress:
    return Progress(*message[1:])


def tool_call_message(call: ToolCall) -> tuple:
    return (TOOL_CALL, call.index, call.id, call.name, call.arguments)


def tool_call_of(message: tuple) -> ToolCall:
    return ToolCall(*message[1:])


def spawn(log_fd: int):
    """A new interpreter running child_main.main() (not multiprocessing's spawn, which would import
    the app's main module again in it), and the two pipes to it: (calls, control, Popen).
    Its stdout and stderr go to log_fd; it has a session of its own, so the terminal's
    Ctrl-C and hang-up reach the app alone (which ends it: its pipes close)."""
    pairs = [socket.socketpair() for _ in range(2)]
    command = [sys.executable, "-c", "from roost.backends.child_main import main; main()"]
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


def how_it_ended(exitcode: int | None) -> str:
    if exitcode is not None and exitcode < 0:
        try:
            return signal.Signals(-exitcode).name
        except ValueError:
            return f"signal {-exitcode}"
    return f"exit code {exitcode}"


def portable(error: BaseException) -> tuple:
    """An exception as the parent rebuilds it: its class's module and name, its message and
    the child's traceback (the class itself may not survive pickling)."""
    cls = type(error)
    return ("error", cls.__module__, cls.__qualname__, str(error),
            "".join(traceback.format_exception(error)))


def rebuilt(message) -> BaseException:
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
