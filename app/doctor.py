"""What `roost doctor` checks: which engines can run here, and the mismatches users hit
between their hardware and the builds they installed."""

from __future__ import annotations

from dataclasses import asdict, dataclass

from roost import engine_build
from roost.hardware import Machine


@dataclass(frozen=True)
class EngineStatus:
    name: str
    available: bool
    detail: str  # version and build, or why it is missing
    gpu_offload: bool = False


def llama_status() -> EngineStatus:
    try:
        import llama_cpp
    except ImportError as e:
        return EngineStatus("llama.cpp", False, f"llama-cpp-python does not import ({e}); pip install llama-cpp-python")
    from roost.backends.llama_cpp import build_info

    offload, device, _ = build_info()
    build = f"{device} build" if offload else "CPU-only build (no GPU offload)"
    return EngineStatus("llama.cpp", True, f"llama-cpp-python {llama_cpp.__version__}, {build}", offload)


def mlx_status(machine: Machine) -> EngineStatus:
    """MLX runs on the GPU of Apple Silicon; its Linux build runs on the CPU, slower than
    llama.cpp, so it is offered there but never chosen by default."""
    from roost.mlx_models import unavailable

    why = unavailable()
    if why:
        return EngineStatus("mlx", False, why if machine.apple else "for Apple Silicon")
    from importlib.metadata import version

    if machine.apple is None:
        return EngineStatus("mlx", True, f"mlx-lm {version('mlx-lm')}, CPU build (llama.cpp is faster here)")
    return EngineStatus("mlx", True, f"mlx-lm {version('mlx-lm')}", True)


def wanted_build(machine: Machine, cuda_toolkit: str | None) -> engine_build.Build:
    """The llama.cpp build packaging/install.sh would choose for this machine."""
    facts = engine_build.Facts(
        system=engine_build.SYSTEMS.get(machine.os, machine.os),
        arch=machine.arch,
        gpus=tuple((g.name, g.compute_capability) for g in machine.gpus),
        nvcc=cuda_toolkit,
        rosetta=machine.rosetta,
    )
    return engine_build.choose(facts)


def advice(machine: Machine, llama: EngineStatus, mlx: EngineStatus, build: engine_build.Build) -> list[str]:
    out = []
    if llama.available and not llama.gpu_offload:
        idle = ", ".join(g.name for g in machine.gpus) or (f"{machine.apple.chip}'s GPU" if machine.apple else "")
        if build.name != "cpu":
            from importlib.metadata import version

            line = build.pip_line(f"llama-cpp-python=={version('llama-cpp-python')}")
            out.append(f"{idle} is idle: llama-cpp-python was built for the CPU only. Rebuild it for "
                       f"{engine_build.DEVICE[build.name]}: {line} (or run packaging/install.sh in roost's checkout)")
        elif idle:
            out.extend(f"{idle} is idle: {w}" for w in build.warnings)
    if machine.apple and not mlx.available:
        out.append(f"MLX, the faster engine on Apple Silicon, cannot run: {mlx.detail}")
    if not llama.available:
        out.append(llama.detail)
    if machine.cpu_bandwidth_gbs is None and not machine.gpus and machine.apple is None:
        out.append("CPU memory bandwidth unknown, so no speed ceiling can be predicted: run roost doctor --measure once")
    return out


def here() -> tuple[Machine, str | None]:
    """This machine, and its CUDA toolkit's version where it has an NVIDIA GPU to build for."""
    from roost import hardware

    probe = hardware.default_probe()
    machine = hardware.detect(probe)
    return machine, probe.cuda_toolkit() if machine.gpus else None


def findings(machine: Machine, cuda_toolkit: str | None = None):
    """(llama.cpp's status, MLX's, the build this machine wants, advice): what `roost
    doctor` and the chat app's start screen both show."""
    llama, mlx = llama_status(), mlx_status(machine)
    build = wanted_build(machine, cuda_toolkit)
    return llama, mlx, build, advice(machine, llama, mlx, build)


def report(machine: Machine, cuda_toolkit: str | None = None) -> dict:
    llama, mlx, build, said = findings(machine, cuda_toolkit)
    return {
        "machine": machine.as_dict(),
        "engines": [asdict(llama), asdict(mlx)],
        "build": {"wanted": build.name, "why": build.why, "cmake_args": build.cmake_args},
        "advice": said,
    }
