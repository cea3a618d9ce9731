"""Where roost keeps its files on this machine, all named here (docs/files.md lists them).

The data folder holds what roost records: conversations (history/), results.jsonl,
golden/, the engine's self-test. The cache folder holds what it could measure again: the
CPU's memory bandwidth. ROOST_DATA_DIR moves both (the cache to its cache/ folder), so that
tests and bench/ scripts keep everything out of the user's folders; ROOST_HISTORY_DIR
moves only the conversations. Models are not here: they stay in the Hugging Face cache
(HF_HOME), shared with other tools (models/download.py). Other apps' model stores, which
roost reads and never writes (models/other_apps.py), are named here too, each where that
app itself looks for it.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path


def data_dir() -> str:
    """What roost records: the platform's user data folder, or ROOST_DATA_DIR."""
    override = os.environ.get("ROOST_DATA_DIR")
    if override:
        return override
    from platformdirs import user_data_dir

    return user_data_dir("roost")


def cache_dir() -> str:
    """What roost could measure again: the platform's user cache folder, or
    ROOST_DATA_DIR/cache."""
    override = os.environ.get("ROOST_DATA_DIR")
    if override:
        return os.path.join(override, "cache")
    from platformdirs import user_cache_dir

    return user_cache_dir("roost")


def history_dir() -> str:
    """Saved conversations, one file each: ROOST_HISTORY_DIR, else history/ in the data folder."""
    return os.environ.get("ROOST_HISTORY_DIR") or os.path.join(data_dir(), "history")


def results_file() -> str:
    """Every bench and eval result, one JSON line each (measure/results.py)."""
    return os.path.join(data_dir(), "results.jsonl")


def golden_dir() -> str:
    """Stored greedy answers, one file per model, engine and eval set (measure/golden.py)."""
    return os.path.join(data_dir(), "golden")


def self_test_file() -> str:
    """The engine's self-test result, per llama-cpp-python release and build (machine/doctor.py)."""
    return os.path.join(data_dir(), "engine-self-test.json")


def bandwidth_file() -> str:
    """The CPU memory bandwidth `roost doctor --measure` measured, per CPU model (machine/bandwidth.py)."""
    return os.path.join(cache_dir(), "bandwidth.json")


def ollama_models() -> list[str]:
    """Ollama's model stores: OLLAMA_MODELS, as Ollama reads it (envconfig.Models); else
    ~/.ollama/models (macOS, Windows, a Linux user's `ollama serve`) and, on Linux,
    /usr/share/ollama/.ollama/models, the home of the `ollama` user its install script's
    service runs as (Ollama's docs/faq: "Where are models stored?")."""
    override = os.environ.get("OLLAMA_MODELS", "").strip("\"' ")
    if override:
        return [override]
    stores = [str(Path.home() / ".ollama" / "models")]
    if sys.platform.startswith("linux"):
        stores.append("/usr/share/ollama/.ollama/models")
    return stores


def lmstudio_models() -> str:
    """LM Studio's models folder, found as its own `lms` finds it: its home is the folder
    ~/.lmstudio-home-pointer names, else ~/.cache/lm-studio where an older version left
    one, else ~/.lmstudio; the models are `downloadsFolder` in the home's settings.json
    (set in the app's My Models tab), else models/ in the home. ROOST_LMSTUDIO_HOME stands
    in for the pointer (LM Studio has no variable of its own)."""
    home = os.environ.get("ROOST_LMSTUDIO_HOME") or _lmstudio_home()
    try:
        with open(os.path.join(home, "settings.json"), encoding="utf-8") as f:
            folder = json.load(f).get("downloadsFolder")
        if isinstance(folder, str) and folder:
            return os.path.expanduser(folder)
    except (OSError, ValueError, AttributeError):
        pass  # no settings yet, or ones we cannot read: LM Studio falls back the same way
    return os.path.join(home, "models")


def _lmstudio_home() -> str:
    user = Path.home()
    try:
        pointed = (user / ".lmstudio-home-pointer").read_text(encoding="utf-8").strip()
    except OSError:
        pointed = ""
    if pointed:
        return pointed
    older = user / ".cache" / "lm-studio"
    return str(older if older.is_dir() else user / ".lmstudio")


def llama_cpp_cache() -> str:
    """Where llama.cpp's `-hf` kept its downloads (common.cpp's fs_get_cache_directory):
    LLAMA_CACHE, else llama.cpp/ in the platform's cache folder: $XDG_CACHE_HOME or
    ~/.cache on Linux, ~/Library/Caches on macOS, %LOCALAPPDATA% on Windows. Newer
    llama.cpp (common/hf-cache.cpp) downloads into the Hugging Face cache instead, and
    moves these files there the first time it runs online; with LLAMA_CACHE set it lays
    that cache out in this folder."""
    override = os.environ.get("LLAMA_CACHE")
    if override:
        return override
    if sys.platform == "darwin":
        base = str(Path.home() / "Library" / "Caches")
    elif sys.platform == "win32":
        base = os.environ.get("LOCALAPPDATA") or str(Path.home() / "AppData" / "Local")
    else:
        base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return os.path.join(base, "llama.cpp")
