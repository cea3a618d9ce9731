"""What `roost doctor` checks: which engines can run here, and the mismatches users hit
between their hardware and the builds they installed."""

from __future__ import annotations

import json
import os
import sys
import threading
from dataclasses import asdict, dataclass, replace

from roost.machine import engine_build
from roost.machine.hardware import Machine
from roost.paths import self_test_file


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
    from roost.models.mlx_models import unavailable

    why = unavailable(machine)
    if why:
        return EngineStatus("mlx", False, why if machine.apple else "for Apple Silicon")
    from importlib.metadata import version

    if machine.apple is None:
        return EngineStatus("mlx", True, f"mlx-lm {version('mlx-lm')}, CPU build (llama.cpp is faster here)")
    return EngineStatus("mlx", True, f"mlx-lm {version('mlx-lm')}", True)


# A prompt of well over 64 tokens, evaluated in one batch as any chat's first turn is:
# where a CPU kernel crashes (llama.cpp's AMX path did), it crashes here.
SELF_TEST_PROMPT = "Here is a list of the planets of the solar system, with a few words on each. " + " ".join(
    f"{name} is planet number {i} from the Sun." for i, name in enumerate(
        ("Mercury", "Venus", "Earth", "Mars", "Jupiter", "Saturn", "Uranus", "Neptune"), 1))


@dataclass(frozen=True)
class SelfTest:
    ok: bool
    detail: str  # "ok (31.2 tok/s)", or what killed the engine
    build: str  # the llama-cpp-python release and build it was run on
    fix: str = ""  # the command that should make it pass, where one is known

    def line(self) -> str:
        return f"engine self-test: {self.detail}" + (f"; fix: {self.fix}" if self.fix else "")


def self_test(fresh: bool = False, timeout_s: float = 120.0) -> SelfTest:
    """The installed llama.cpp run as roost runs it, in a process of its own: the demo
    model evaluates the prompt above in one batch and decodes 8 tokens. A crash there
    is a signal named here, never a dead roost. Kept per llama-cpp-python release and
    build, so `roost doctor` runs it once per build."""
    from roost.backends.llama_cpp import build_info

    system = build_info()[2]
    key = f"{engine_build.llama_version()} | {system}"
    kept = _kept_self_tests()
    if not fresh and key in kept:
        return SelfTest(**kept[key])
    from roost.models import catalog
    from roost.errors import RoostError

    try:
        model = catalog.demo_model_path()
    except RoostError as e:  # not kept: adding the demo model is all it takes
        return SelfTest(False, f"not run: {e}", key)
    result = _run_self_test(model, key, timeout_s)
    # Kept: what this build did (ran, crashed, hung). Not kept: a crash made on purpose, or
    # a failure of something else, which may be gone by the next run.
    about_the_build = result.ok or result.detail.startswith(("the engine crashed", "the engine hung"))
    if about_the_build and os.environ.get("ROOST_TEST_CRASH") is None:
        from roost.measure import results

        results.write_json(self_test_file(), {**kept, key: asdict(result)})
    return result


def _run_self_test(model: str, build: str, timeout_s: float) -> SelfTest:
    from roost.backends.base import Done, Params, Plan
    from roost.backends.child import ChildEngine
    from roost.errors import EngineCrashed, RoostError

    outcome: list = []
    engines: list = []

    def run() -> None:
        try:
            engine = ChildEngine(model, Plan(n_ctx=512, n_batch=512), "llama")
            engines.append(engine)
            try:
                done = [e for e in engine.complete(SELF_TEST_PROMPT, Params(max_tokens=8, temperature=0))
                        if isinstance(e, Done)]
            finally:
                engine.close()
            outcome.append(done[0].stats)
        except (EngineCrashed, RoostError) as e:
            outcome.append(e)

    worker = threading.Thread(target=run, daemon=True)
    worker.start()
    worker.join(timeout_s)
    if worker.is_alive():
        for engine in engines:
            engine.close()
        return SelfTest(False, f"the engine hung for {timeout_s:.0f} s on a {len(SELF_TEST_PROMPT.split())}-word prompt",
                        build, _rebuild_line())
    result = outcome[0]
    if isinstance(result, EngineCrashed):
        return SelfTest(False, str(result), build, _rebuild_line())
    if isinstance(result, Exception):
        return SelfTest(False, f"the engine failed: {result}", build)
    if result.prompt_tokens < 64 or result.generated_tokens < 1:
        return SelfTest(False, f"the engine read {result.prompt_tokens} prompt tokens and wrote "
                               f"{result.generated_tokens}", build)
    return SelfTest(True, f"ok ({result.prompt_tokens}-token prompt at {result.prefill_tps:,.0f} tok/s, "
                          f"decoding at {result.decode_tps:,.1f} tok/s)", build)


def _rebuild_line() -> str:
    """llama-cpp-python rebuilt for this CPU without AMX (and for its GPU, if it has one)."""
    from importlib.metadata import version

    build = engine_build.choose(engine_build.probe())
    args = build.fallback_args or build.cmake_args
    if not args:
        return ""
    return replace(build, cmake_args=args).pip_line(f"llama-cpp-python=={version('llama-cpp-python')}", sys.executable)


def _kept_self_tests() -> dict:
    try:
        with open(self_test_file()) as f:
            return json.load(f)
    except (OSError, ValueError):
        return {}


def wanted_build(machine: Machine, cuda_toolkit: str | None) -> engine_build.Build:
    """The llama.cpp build packaging/install.sh would choose for this machine."""
    facts = engine_build.Facts(
        system=engine_build.SYSTEMS.get(machine.os, machine.os),
        arch=machine.arch,
        gpus=tuple((g.name, g.compute_capability) for g in machine.gpus),
        nvcc=cuda_toolkit,
        rosetta=machine.rosetta,
        cpu_flags=machine.cpu_flags,
        llama_version=engine_build.llama_version(),
    )
    return engine_build.choose(facts)


def advice(machine: Machine, llama: EngineStatus, mlx: EngineStatus, build: engine_build.Build) -> list[str]:
    out = []
    if llama.available and not llama.gpu_offload:
        idle = ", ".join(g.name for g in machine.gpus) or (f"{machine.apple.chip}'s GPU" if machine.apple else "")
        if build.name != "cpu":
            from importlib.metadata import version

            # The environment's own pip, as the start screen shows it: a path of this
            # machine's would make the same advice read differently on every box.
            line = build.pip_line(f"llama-cpp-python=={version('llama-cpp-python')}")
            out.append(f"{idle} is idle: llama-cpp-python was built for the CPU only. Rebuild it for "
                       f"{engine_build.DEVICE[build.name]}: {line} (or run packaging/install.sh in roost's checkout)")
        elif idle:
            out.extend(f"{idle} is idle: {w}" for w in build.warnings)
    if llama.available and (issue := engine_build.amx_crash(machine.cpu_flags, engine_build.llama_version())):
        from roost.backends.llama_cpp import build_info

        if "AMX_INT8 = 1" in build_info()[2]:
            out.append(f"this CPU's AMX crashes llama.cpp in this llama-cpp-python ({issue}): roost loads models "
                       "with llama.cpp's extra buffer types off, which keeps it off the AMX path (and off weight "
                       "repacking: a few percent slower). If the engine still crashes, rebuild without AMX: "
                       f"{replace(build, cmake_args=build.fallback_args).pip_line(python=sys.executable)}")
    if machine.apple and not mlx.available:
        out.append(f"MLX, the faster engine on Apple Silicon, cannot run: {mlx.detail}")
    if not llama.available:
        out.append(llama.detail)
    if machine.cpu_bandwidth_gbs is None and not machine.gpus and machine.apple is None:
        out.append("CPU memory bandwidth unknown, so no speed ceiling can be predicted: run roost doctor --measure once")
    return out


def here() -> tuple[Machine, str | None]:
    """This machine, and its CUDA toolkit's version where it has an NVIDIA GPU to build for."""
    from roost.machine import hardware

    probe = hardware.default_probe()
    machine = hardware.detect(probe)
    return machine, probe.cuda_toolkit() if machine.gpus else None


def findings(machine: Machine, cuda_toolkit: str | None = None):
    """(llama.cpp's status, MLX's, the build this machine wants, advice): what `roost
    doctor` and the chat app's start screen both show."""
    llama, mlx = llama_status(), mlx_status(machine)
    build = wanted_build(machine, cuda_toolkit)
    return llama, mlx, build, advice(machine, llama, mlx, build)


def report(machine: Machine, cuda_toolkit: str | None = None, tested: SelfTest | None = None) -> dict:
    llama, mlx, build, said = findings(machine, cuda_toolkit)
    return {
        "machine": machine.as_dict(),
        "engines": [asdict(llama), asdict(mlx)],
        "build": {"wanted": build.name, "why": build.why, "cmake_args": build.cmake_args},
        "self_test": asdict(tested) if tested else None,
        "advice": said,
    }
