"""Where roost keeps its files on this machine, all named here (docs/files.md lists them).

The data folder holds what roost records: conversations (history/), results.jsonl,
golden/, the engine's self-test. The cache folder holds what it could measure again: the
CPU's memory bandwidth. ROOST_DATA_DIR moves both (the cache to its cache/ folder), so that
tests and bench/ scripts keep everything out of the user's folders; ROOST_HISTORY_DIR
moves only the conversations. Models are not here: they stay in the Hugging Face cache
(HF_HOME), shared with other tools (models/download.py).
"""

from __future__ import annotations

import os


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
