"""Measured CPU memory bandwidth: the ceiling's numerator where no table has the figure.

The commands that show a ceiling measure it the first time (hardware.detect(measure=True)),
and `roost doctor --measure` again; the result is kept per CPU model. The caller names the
CPU model (hardware.Probe reads it), so this module needs nothing from hardware and
hardware can ask it for the figure.
"""

from __future__ import annotations

import json
import os
import threading
import time

from roost.paths import bandwidth_file

MiB = 1024**2


def measure(threads: int, mib_per_thread: int = 128, rounds: int = 10) -> float:
    """Read bandwidth in GB/s: each thread sums its own array, larger than any cache,
    as decoding reads weights. numpy releases the GIL for the reduction. Filling the
    arrays takes most of the time (0.2-0.8 s on a 2-core box); a round is ~10 ms, and the
    best of ten is steadier than of five where other programs share the cores."""
    import numpy as np

    arrays = [np.ones(mib_per_thread * MiB // 8) for _ in range(threads)]
    best = 0.0
    for _ in range(rounds):
        workers = [threading.Thread(target=a.sum) for a in arrays]
        start = time.perf_counter()
        for w in workers:
            w.start()
        for w in workers:
            w.join()
        elapsed = time.perf_counter() - start
        best = max(best, threads * mib_per_thread * MiB / elapsed / 1e9)
    return best


def save_measured(gbs: float, cpu_model: str) -> str:
    from roost.measure.results import write_json

    path = bandwidth_file()
    data = {}
    if os.path.exists(path):
        try:
            with open(path) as f:
                data = json.load(f)
        except (OSError, json.JSONDecodeError):
            data = {}
    data[cpu_model] = round(gbs, 2)
    write_json(path, data)
    return path


def load_measured(cpu_model: str) -> float | None:
    try:
        with open(bandwidth_file()) as f:
            return json.load(f).get(cpu_model)
    except (OSError, json.JSONDecodeError, AttributeError):
        return None
