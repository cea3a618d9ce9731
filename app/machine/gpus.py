"""What each NVIDIA GPU is doing now: utilization, power and temperature, from NVML.

For /metrics and the chat's status bar, the quick check that the model really runs on
the GPU. Read through hardware.py's Probe, so tests present a recorded machine
(ROOST_MACHINE) in place of a GPU this box does not have.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

from roost.machine import hardware


@dataclass(frozen=True)
class GpuReading:
    index: int
    name: str
    utilization_pct: float | None  # None: the driver does not say
    power_w: float | None
    temperature_c: float | None

    def as_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "GpuReading":
        return cls(**{k: d.get(k) for k in ("index", "name", "utilization_pct", "power_w", "temperature_c")})


def read(probe: hardware.Probe | None = None) -> list[GpuReading]:
    """Each NVIDIA GPU's reading; none where there is no NVIDIA GPU (or driver)."""
    return of((probe or hardware.default_probe()).nvidia())


def of(found: list[dict] | str) -> list[GpuReading]:
    """The readings in NVML's answer (Probe.nvidia()), for a caller that asked it already."""
    if not isinstance(found, list):  # why there are none
        return []
    return [GpuReading(i, g["name"], g.get("utilization_pct"), g.get("power_w"), g.get("temperature_c"))
            for i, g in enumerate(found)]
