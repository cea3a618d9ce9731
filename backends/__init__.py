"""Engines: everything that generates text, behind the one interface in base.py."""

from __future__ import annotations

from roost.backends.base import Engine, Plan
from roost.errors import UsageError

ENGINES = ("llama", "mlx")


def load(model_path: str, plan: Plan = Plan(), engine: str = "llama", *, isolated: bool = False) -> Engine:
    """Load a model into an engine. Engines import their library only here, when used.

    isolated: in a process of its own (child.py), as the long-lived commands run it: a
    crash in native code is then an EngineCrashed here, not the end of the app."""
    if isolated:
        if engine not in ENGINES:
            raise UsageError(f"unknown engine {engine!r}; choose one of: {', '.join(ENGINES)}")
        from roost.backends.child import ChildEngine

        return ChildEngine(model_path, plan, engine)
    if engine == "llama":
        try:
            from roost.backends.llama_cpp import LlamaCppEngine
        except ImportError as e:
            raise UsageError(f"llama.cpp is not available ({e}); install it with: pip install llama-cpp-python") from None
        return LlamaCppEngine(model_path, plan)
    if engine == "mlx":
        try:
            from roost.backends.mlx import MlxEngine
        except ImportError as e:
            from roost.models.mlx_models import INSTALL_HINT

            raise UsageError(f"MLX is not available ({e}): {INSTALL_HINT}") from None
        return MlxEngine(model_path, plan)
    raise UsageError(f"unknown engine {engine!r}; choose one of: {', '.join(ENGINES)}")


def connect(url: str, model: str | None = None, api_key: str | None = None) -> Engine:
    """An engine on a server that speaks the OpenAI API (roost serve, llama-server, vLLM, Ollama)."""
    from roost.backends.remote import RemoteEngine

    return RemoteEngine(url, model, api_key)
