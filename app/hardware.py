"""What this machine has."""

from __future__ import annotations

import os


def default_threads() -> int:
    """Generation threads: one per physical core, as llama.cpp's own tools choose.
    (llama-cpp-python's default, half the logical CPUs, leaves a 2-core box on one.)"""
    import psutil

    return psutil.cpu_count(logical=False) or os.cpu_count() or 1
