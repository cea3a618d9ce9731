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
