"""What this machine has: CPU, memory, GPUs, and how fast each can read memory.

Every question to the OS or a vendor library goes through `Probe`, the one seam. Tests,
and anyone reproducing a report, replace it with `RecordedProbe`: the same readings from
a JSON file (set ROOST_MACHINE=file.json), so a CPU-only box can present an RTX 4090
or an 8 GB M1 to every command.
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
from dataclasses import asdict, dataclass, field

from roost.machine import bandwidth

GiB = 1024**3

# Peak memory bandwidth, GB/s, from the makers' spec sheets (apple.com/mac/compare and
# Apple's chip press releases; nvidia.com product pages and datasheets). Decode speed is
# bounded by it. A name matches the longest key it contains.
BANDWIDTH_GBS = {
    # Apple Silicon (unified memory). Where one name has two memory buses, see APPLE_BY_CORES.
    "Apple M1": 68.25, "Apple M1 Pro": 200, "Apple M1 Max": 400, "Apple M1 Ultra": 800,
    "Apple M2": 100, "Apple M2 Pro": 200, "Apple M2 Max": 400, "Apple M2 Ultra": 800,
    "Apple M3": 100, "Apple M3 Pro": 150, "Apple M3 Max": 300, "Apple M3 Ultra": 819,
    "Apple M4": 120, "Apple M4 Pro": 273, "Apple M4 Max": 410,
    "Apple M5": 153, "Apple M5 Pro": 307, "Apple M5 Max": 614,
    # NVIDIA GeForce
    "RTX 3060": 360, "RTX 3060 Ti": 448, "RTX 3070": 448, "RTX 3070 Ti": 608,
    "RTX 3080": 760, "RTX 3080 Ti": 912, "RTX 3090": 936, "RTX 3090 Ti": 1008,
    "RTX 4060": 272, "RTX 4060 Ti": 288, "RTX 4070": 504, "RTX 4070 SUPER": 504,
    "RTX 4070 Ti": 504, "RTX 4070 Ti SUPER": 672, "RTX 4080": 717, "RTX 4080 SUPER": 736,
    "RTX 4090": 1008, "RTX 5060 Ti": 448, "RTX 5070": 672, "RTX 5070 Ti": 896,
    "RTX 5080": 960, "RTX 5090": 1792,
    # NVIDIA workstation and data centre
    "RTX A6000": 768, "RTX 6000 Ada": 960, "L4": 300, "L40S": 864, "T4": 320, "V100": 900,
    "A10": 600, "A100-PCIE-40GB": 1555, "A100-SXM4-40GB": 1555, "A100 80GB PCIe": 1935,
    "A100-SXM4-80GB": 2039, "H100 PCIe": 2000, "H100 80GB HBM3": 3350, "H100 NVL": 3900,
    "H200": 4800, "GH200": 4000,
}

# The M3 Max and M4 Max come with a narrower memory bus in their binned version, which
# is the one with fewer CPU cores (hw.physicalcpu): M3 Max 14-core 300 GB/s, 16-core 400;
# M4 Max 14-core 410, 16-core 546 (apple.com/macbook-pro/specs of each generation).
APPLE_BY_CORES = {"Apple M3 Max": {14: 300, 16: 400}, "Apple M4 Max": {14: 410, 16: 546}}


def metal_share(total_bytes: int, macos: str | None = None) -> float:
    """The share of unified memory Metal lets a process keep resident
    (recommendedMaxWorkingSetSize), for when MLX cannot be asked. Reported by Macs: two
    thirds up to 32 GB (16 GB: 10.67 GiB), three quarters from 36 GB (36 GB M4 Max: 27
    GiB; 64 GB: 48 GiB); macOS 26 raised it to 84 % on a 128 GB Mac (107.5 GiB, read on
    an M4 Max and an M5 Max), the one size it has been read at."""
    if macos and _major(macos) >= 26 and total_bytes >= 128 * GiB:
        return 0.84
    return 0.75 if total_bytes > 32 * GiB else 2 / 3


def _major(version: str) -> int:
    head = version.split(".")[0]
    return int(head) if head.isdigit() else 0


def bandwidth_for(name: str, cores: int | None = None) -> float | None:
    hits = [key for key in BANDWIDTH_GBS if key.lower() in name.lower()]
    if not hits:
        return None
    # "Apple M1" must not claim an "Apple M1 Max": the longest match is the right one.
    key = max(hits, key=len)
    by_cores = APPLE_BY_CORES.get(key, {})
    # Without a core count, the narrower bus: a ceiling must not promise too much.
    return by_cores.get(cores, BANDWIDTH_GBS[key]) if cores else BANDWIDTH_GBS[key]


@dataclass(frozen=True)
class Gpu:
    index: int
    name: str
    total_bytes: int
    free_bytes: int
    bandwidth_gbs: float | None
    driver: str | None = None
    cuda: str | None = None
    compute_capability: str | None = None
    utilization_pct: int | None = None
    power_w: float | None = None
    temperature_c: int | None = None


@dataclass(frozen=True)
class AppleSilicon:
    chip: str
    unified_bytes: int
    working_set_bytes: int  # what Metal may keep resident
    working_set_source: str  # "mlx", "wired limit sysctl", or "estimate"
    bandwidth_gbs: float | None
    performance_cores: int | None = None  # hw.perflevel0.physicalcpu: llama.cpp's thread count


@dataclass(frozen=True)
class Machine:
    os: str
    arch: str
    cpu_model: str
    physical_cores: int
    logical_cores: int
    cpu_features: tuple[str, ...]
    ram_total_bytes: int
    ram_available_bytes: int
    gpus: tuple[Gpu, ...] = ()
    apple: AppleSilicon | None = None
    cpu_bandwidth_gbs: float | None = None  # measured by `roost doctor --measure`
    notes: tuple[str, ...] = field(default=())  # what could not be read, and why
    rosetta: bool = False  # this Python is x86_64, translated on Apple Silicon (arch is the Mac's)
    cpu_flags: tuple[str, ...] = ()  # all of /proc/cpuinfo's, for the engine build; cpu_features shows a few

    def as_dict(self) -> dict:
        return {k: v for k, v in asdict(self).items() if k != "cpu_flags"}


class Probe:
    """The live machine. Each method is one question to the OS or a vendor library."""

    def platform(self) -> tuple[str, str]:
        return sys.platform, platform.machine().lower()

    def cpu(self) -> dict:
        import psutil

        model, flags = platform.processor() or "unknown CPU", set()
        if sys.platform.startswith("linux"):
            try:
                with open("/proc/cpuinfo") as f:
                    for line in f:
                        key, _, value = line.partition(":")
                        key = key.strip().lower()
                        if key in ("model name", "hardware") and model in ("unknown CPU", platform.machine()):
                            model = value.strip()
                        elif key in ("flags", "features") and not flags:
                            flags = set(value.split())
            except OSError:
                pass
        elif sys.platform == "darwin":
            model = self.sysctl("machdep.cpu.brand_string") or model
        return {
            "model": model,
            "physical_cores": psutil.cpu_count(logical=False) or os.cpu_count() or 1,
            "logical_cores": psutil.cpu_count() or 1,
            "flags": sorted(flags),
        }

    def ram(self) -> tuple[int, int]:
        import psutil

        vm = psutil.virtual_memory()
        return vm.total, vm.available

    def nvidia(self) -> list[dict] | str:
        """One dict per NVIDIA GPU, or why there are none."""
        try:
            import pynvml
        except ImportError:
            return "nvidia-ml-py is not installed"
        try:
            pynvml.nvmlInit()
        except pynvml.NVMLError as e:
            return f"no NVIDIA driver ({e})"
        try:
            def ask(call, *args):
                try:
                    return call(*args)
                except pynvml.NVMLError:
                    return None

            driver = ask(pynvml.nvmlSystemGetDriverVersion)
            cuda = ask(pynvml.nvmlSystemGetCudaDriverVersion)
            gpus = []
            for i in range(pynvml.nvmlDeviceGetCount()):
                h = pynvml.nvmlDeviceGetHandleByIndex(i)
                mem = pynvml.nvmlDeviceGetMemoryInfo(h)
                cc = ask(pynvml.nvmlDeviceGetCudaComputeCapability, h)
                util = ask(pynvml.nvmlDeviceGetUtilizationRates, h)
                power = ask(pynvml.nvmlDeviceGetPowerUsage, h)
                gpus.append({
                    "name": _text(pynvml.nvmlDeviceGetName(h)),
                    "total_bytes": int(mem.total),
                    "free_bytes": int(mem.free),
                    "driver": _text(driver) if driver else None,
                    "cuda": f"{cuda // 1000}.{cuda % 1000 // 10}" if cuda else None,
                    "compute_capability": f"{cc[0]}.{cc[1]}" if cc else None,
                    "utilization_pct": util.gpu if util else None,
                    "power_w": power / 1000 if power is not None else None,
                    "temperature_c": ask(pynvml.nvmlDeviceGetTemperature, h, pynvml.NVML_TEMPERATURE_GPU),
                })
            return gpus
        finally:
            pynvml.nvmlShutdown()

    def sysctl(self, name: str) -> str | None:
        if sys.platform != "darwin":
            return None
        try:
            out = subprocess.run(["sysctl", "-n", name], capture_output=True, text=True, timeout=5)
        except (OSError, subprocess.TimeoutExpired):
            return None
        return out.stdout.strip() if out.returncode == 0 and out.stdout.strip() else None

    def metal_working_set(self) -> int | None:
        """Metal's recommended working set, from MLX when it is installed."""
        try:
            import mlx.core as mx
        except ImportError:
            return None
        info = mx.device_info() if hasattr(mx, "device_info") else mx.metal.device_info()
        size = info.get("max_recommended_working_set_size")
        return int(size) if size else None

    def measured_cpu_bandwidth(self, measure: bool = False) -> float | None:
        """The kept measurement for this CPU; measure: if there is none, measure it now
        and keep it (bandwidth.measure: well under a second, once per machine)."""
        model = self.cpu()["model"]
        kept = bandwidth.load_measured(model)
        if kept is None and measure:
            kept = round(bandwidth.measure(default_threads(self)), 2)
            bandwidth.save_measured(kept, model)
        return kept

    def cuda_toolkit(self) -> str | None:
        """The CUDA toolkit's version, which a CUDA build of llama.cpp is compiled with."""
        from roost.machine import engine_build

        return engine_build.find_nvcc()[0]


def _text(value) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


class RecordedProbe(Probe):
    """Readings from a dict (or a JSON file) instead of the machine: the test seam."""

    def __init__(self, readings: dict):
        self.readings = readings

    @classmethod
    def from_file(cls, path: str) -> "RecordedProbe":
        try:
            with open(path) as f:
                return cls(json.load(f))
        except (OSError, json.JSONDecodeError) as e:
            from roost.errors import UsageError

            raise UsageError(f"cannot read the machine description {path}: {e}") from None

    def platform(self):
        return tuple(self.readings["platform"])

    def cpu(self):
        return self.readings["cpu"]

    def ram(self):
        return tuple(self.readings["ram"])

    def nvidia(self):
        return self.readings.get("nvidia", "no NVIDIA driver (recorded machine)")

    def sysctl(self, name):
        return self.readings.get("sysctl", {}).get(name)

    def metal_working_set(self):
        return self.readings.get("metal_working_set")

    def measured_cpu_bandwidth(self, measure: bool = False):
        return self.readings.get("cpu_bandwidth_gbs")  # a recorded machine cannot be measured here

    def cuda_toolkit(self):
        return self.readings.get("cuda_toolkit")


def default_probe() -> Probe:
    recorded = os.environ.get("ROOST_MACHINE")
    return RecordedProbe.from_file(recorded) if recorded else Probe()


@dataclass(frozen=True)
class FreeMemory:
    """Memory free now, for a live display: RAM (unified on a Mac), and each GPU's VRAM."""

    ram_total_bytes: int
    ram_available_bytes: int
    unified: bool
    gpus: tuple[tuple[int, int], ...] = ()  # (free, total) bytes per GPU, by index


def free_memory(probe: Probe | None = None, nvidia: list[dict] | str | None = None) -> FreeMemory:
    """Cheaper than detect(): a few questions, fit to ask every second. nvidia: NVML's
    answer (Probe.nvidia()) where the caller has it already ([]: leave GPUs out)."""
    probe = probe or default_probe()
    os_name, arch, _ = _platform(probe)
    total, available = _ram(probe, os_name)
    found = probe.nvidia() if nvidia is None else nvidia
    return FreeMemory(total, available, (os_name, arch) == ("darwin", "arm64"),
                      tuple((g["free_bytes"], g["total_bytes"]) for g in found) if isinstance(found, list) else ())


def _platform(probe: Probe) -> tuple[str, str, bool]:
    """(system, the machine's architecture, whether this Python runs under Rosetta). An
    x86_64 Python on Apple Silicon sees an Intel Mac; the kernel knows better."""
    os_name, arch = probe.platform()
    rosetta = os_name == "darwin" and probe.sysctl("sysctl.proc_translated") == "1"
    return os_name, "arm64" if rosetta else arch, rosetta


def _ram(probe: Probe, os_name: str) -> tuple[int, int]:
    """(total, available). On macOS psutil's available is inactive + free pages, which
    leaves out what the kernel reclaims at once when asked: purgeable pages, file cache
    and idle apps' memory it compresses (psutil#1277). The kernel's own figure is the
    "free percentage" that memory_pressure and Activity Monitor show."""
    total, available = probe.ram()
    if os_name == "darwin":
        level = probe.sysctl("kern.memorystatus_level")
        if level and level.isdigit():
            available = max(available, total * int(level) // 100)
    return total, available


def detect(probe: Probe | None = None, gpus: bool = True, measure: bool = False) -> Machine:
    """The machine now. gpus=False skips asking vendor libraries, for callers that
    cannot use a GPU anyway (a CPU-only engine build). measure: the commands that show a
    decode ceiling (fit, search, pull, bench, the model list) measure the CPU's memory
    bandwidth the first time, inline: it takes a fraction of a second once per machine,
    and the first answer then has its ceiling, which a background measurement would only
    give the next one. `roost run` shows no ceiling and never pays for it."""
    probe = probe or default_probe()
    os_name, arch, rosetta = _platform(probe)
    cpu = probe.cpu()
    total, available = _ram(probe, os_name)
    notes = []

    found: tuple[Gpu, ...] = ()
    nvidia = probe.nvidia() if gpus else "not asked: this engine build cannot use a GPU"
    if isinstance(nvidia, str):
        if os_name != "darwin":
            notes.append(f"no NVIDIA GPU: {nvidia}")
    else:
        found = tuple(Gpu(index=i, bandwidth_gbs=bandwidth_for(g["name"]), **g) for i, g in enumerate(nvidia))

    apple = None
    if os_name == "darwin" and arch == "arm64":
        chip = probe.sysctl("machdep.cpu.brand_string") or cpu["model"]
        unified = int(probe.sysctl("hw.memsize") or total)
        wired_mb = int(probe.sysctl("iogpu.wired_limit_mb") or 0)
        if wired_mb:
            working_set, source = wired_mb * 1024**2, "wired limit sysctl (iogpu.wired_limit_mb)"
        elif gpus and (metal := probe.metal_working_set()) is not None:
            working_set, source = metal, "mlx"
        else:
            share = metal_share(unified, probe.sysctl("kern.osproductversion"))
            working_set = int(unified * share)
            source = f"estimate, {share:.0%} of memory (" + (
                "MLX not installed)" if gpus else "not asked: this engine build cannot use the GPU)")
        cores = int(probe.sysctl("hw.physicalcpu") or cpu["physical_cores"])
        performance = probe.sysctl("hw.perflevel0.physicalcpu")
        apple = AppleSilicon(chip, unified, working_set, source, bandwidth_for(chip, cores),
                             int(performance) if performance else None)
        if rosetta:
            notes.append(f"this Python is x86_64, running under Rosetta: the {chip}'s GPU (Metal and MLX) "
                         "needs a native arm64 Python (python.org, Homebrew or `uv python install`)")

    flags = set(cpu.get("flags", ()))
    features = [f.upper() for f in ("avx", "avx2", "avx512f", "fma", "f16c", "amx_int8") if f in flags]
    if arch in ("arm64", "aarch64"):
        features.append("NEON")  # part of every 64-bit ARM core
    return Machine(
        os=os_name,
        arch=arch,
        cpu_model=cpu["model"],
        physical_cores=cpu["physical_cores"],
        logical_cores=cpu["logical_cores"],
        cpu_features=tuple(features),
        ram_total_bytes=total,
        ram_available_bytes=available,
        gpus=found,
        apple=apple,
        # Apple Silicon's ceiling is the chip's own bandwidth (the table): nothing to measure.
        cpu_bandwidth_gbs=probe.measured_cpu_bandwidth(measure=measure and apple is None),
        notes=tuple(notes),
        rosetta=rosetta,
        cpu_flags=tuple(sorted(flags)),
    )


def default_threads(probe: Probe | None = None) -> int:
    """Generation threads: one per physical core, as llama.cpp's own tools choose.
    (llama-cpp-python's default, half the logical CPUs, leaves a 2-core box on one.) On
    Apple Silicon, the performance cores only, as llama.cpp counts them
    (hw.perflevel0.physicalcpu): a thread on an efficiency core holds back the others
    at every layer's barrier."""
    probe = probe or default_probe()
    if probe.platform()[0] == "darwin":
        performance = probe.sysctl("hw.perflevel0.physicalcpu")
        if performance and performance.isdigit():
            return int(performance)
    return probe.cpu()["physical_cores"]
