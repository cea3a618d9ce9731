"""What `roost doctor` checks: which engines can run here, and the mismatches users hit
between their hardware and the builds they installed."""

from __future__ import annotations

from dataclasses import asdict, dataclass

from roost.hardware import Machine

CUDA_REBUILD = 'CMAKE_ARGS="-DGGML_CUDA=on" pip install --force-reinstall --no-cache-dir llama-cpp-python'
METAL_REBUILD = 'CMAKE_ARGS="-DGGML_METAL=on" pip install --force-reinstall --no-cache-dir llama-cpp-python'


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


def advice(machine: Machine, llama: EngineStatus, mlx: EngineStatus) -> list[str]:
    out = []
    if machine.gpus and llama.available and not llama.gpu_offload:
        names = ", ".join(g.name for g in machine.gpus)
        out.append(f"{names} is idle: llama-cpp-python was built for the CPU only. Rebuild it with CUDA: {CUDA_REBUILD}")
    if machine.apple and llama.available and not llama.gpu_offload:
        out.append(f"llama-cpp-python was built without Metal, so models run on the CPU. Rebuild it: {METAL_REBUILD}")
    if machine.apple and not mlx.available:
        out.append("MLX, the faster engine on Apple Silicon, is not installed: pip install 'roost[mlx]'")
    if not llama.available:
        out.append(llama.detail)
    if machine.cpu_bandwidth_gbs is None and not machine.gpus and machine.apple is None:
        out.append("CPU memory bandwidth unknown, so no speed ceiling can be predicted: run roost doctor --measure once")
    return out


def report(machine: Machine) -> dict:
    llama, mlx = llama_status(), mlx_status(machine)
    return {
        "machine": machine.as_dict(),
        "engines": [asdict(llama), asdict(mlx)],
        "advice": advice(machine, llama, mlx),
    }
