"""Errors a user can act on. Views print them as one line and exit non-zero."""


class RoostError(Exception):
    exit_code = 1


class UsageError(RoostError):
    """The command line asks for something that cannot be done as asked."""

    exit_code = 2


class ModelFileError(RoostError):
    """The model file is missing, not a model, or damaged."""


class ContextOverflow(RoostError):
    """The prompt does not fit in the context window."""


class TemplateError(RoostError):
    """The model's chat template is broken or tried something the sandbox forbids."""


class ModelTooBig(RoostError):
    """The model would not fit in memory: refused before loading."""


class RemoteError(RoostError):
    """A server roost talks to cannot be reached, or failed while answering."""


class ConnectionLost(RemoteError):
    """The connection to a server broke mid-answer. partial: the answer as far as it came
    (a Done), kept in the conversation as it was shown."""

    def __init__(self, message: str, partial=None):
        super().__init__(message)
        self.partial = partial


class EngineCrashed(RoostError):
    """The engine's own process died (a signal, abort(), the out-of-memory killer) and took
    the model with it. The app goes on; the engine can be loaded again."""

    def __init__(self, how: str, doing: str, detail: str = ""):
        self.how, self.doing, self.detail = how, doing, detail  # "SIGSEGV", "answering", its last words
        hint = ", which the out-of-memory killer sends" if how == "SIGKILL" else ""
        super().__init__(f"the engine crashed ({how}{hint}) while {doing}" + (f": {detail}" if detail else ""))

    def __reduce__(self):
        return type(self), (self.how, self.doing, self.detail)
