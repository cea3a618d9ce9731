"""Which llama-cpp-python build this machine wants, and the CMAKE_ARGS that make it.

llama-cpp-python reaches PyPI as source and compiles llama.cpp when it is installed, so
GPU support is decided then, by CMAKE_ARGS, and a wrong choice fails silently: pip
happily reuses a cached CPU wheel, and a CUDA build without a toolkit stops with a CMake
error. Standard library only: packaging/install.sh runs this file before roost, or
anything else, is installed. `roost doctor` asks the same question of an installed build.

    python3 app/machine/engine_build.py            the choice, explained
    python3 app/machine/engine_build.py --shell    ROOST_BUILD=… CMAKE_ARGS=… ROOST_EXTRAS=… for a script
    python3 app/machine/engine_build.py --check    after installing: does the build match the machine?
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shlex
import shutil
import subprocess
import sys
from dataclasses import asdict, dataclass, field, replace

# The oldest CUDA toolkit whose nvcc compiles for each GPU generation (compute
# capability major.minor), from NVIDIA's CUDA release notes. An older nvcc stops the
# build with "Unsupported gpu architecture".
MIN_TOOLKIT = {(12, 0): (12, 8), (10, 0): (12, 8), (9, 0): (11, 8), (8, 9): (11, 8), (8, 6): (11, 1),
               (8, 0): (11, 0), (7, 5): (10, 0), (7, 0): (9, 0)}
# CUDA 13 dropped the GPUs before Turing.
MAX_TOOLKIT_FOR_OLD = {(7, 0): (12, 9), (6, 1): (12, 9), (6, 0): (12, 9), (5, 2): (12, 9)}

# The GPU device each build is for, as roost names it.
DEVICE = {"cuda": "CUDA", "metal": "Metal"}
# How llama.cpp's system info line names each GPU backend ("CUDA : ARCHS = 890 | … | CPU :
# AVX2 = 1 | …"). Metal registers as "MTL" since llama.cpp's device-naming change of
# 2026-01 (#18919), "Metal" before it; HIP builds register as "ROCm".
BACKEND_NAMES = {"CUDA": ("CUDA",), "Metal": ("MTL", "Metal"), "ROCm": ("ROCm", "HIP"),
                 "Vulkan": ("Vulkan",), "SYCL": ("SYCL",)}

# Native crashes of llama.cpp's CPU backend, by the llama-cpp-python release that vendors
# them. Its AMX matmul kernels (Intel Xeon from Sapphire Rapids on: amx_int8 in
# /proc/cpuinfo) segfault on any prompt evaluated in one batch with Q4_1 or Q8_0 weights
# (ggml-org/llama.cpp#20824, open; ollama#17205 has every model crash on AWS m7i). A
# release with the fix gets no row, and roost uses AMX again there.
AMX_CRASHES = {"0.3.36": "ggml-org/llama.cpp#20824"}
# The x86 extensions llama.cpp builds kernels for, by /proc/cpuinfo flag: a build with
# GGML_NATIVE off and these on has every kernel a native build would, AMX's left out.
ISA_OPTIONS = {"avx": "GGML_AVX", "avx2": "GGML_AVX2", "fma": "GGML_FMA", "f16c": "GGML_F16C",
               "bmi2": "GGML_BMI2", "avx_vnni": "GGML_AVX_VNNI", "avx512f": "GGML_AVX512",
               "avx512vbmi": "GGML_AVX512_VBMI", "avx512_vnni": "GGML_AVX512_VNNI",
               "avx512_bf16": "GGML_AVX512_BF16"}
AMX_OFF = "-DGGML_AMX_TILE=OFF -DGGML_AMX_INT8=OFF -DGGML_AMX_BF16=OFF"

# sys.platform, as roost's hardware probe names systems, to platform.system()'s names.
SYSTEMS = {"linux": "Linux", "darwin": "Darwin", "win32": "Windows"}

TOOLKIT_HELP = {
    "Linux": "install NVIDIA's CUDA toolkit (https://developer.nvidia.com/cuda-downloads: the "
             "cuda-toolkit package, not only the driver), put its bin/ on PATH or set CUDA_HOME",
    "Windows": "install the CUDA Toolkit from https://developer.nvidia.com/cuda-downloads together with "
               "Visual Studio's 'Desktop development with C++', then run this from a Developer PowerShell",
}


@dataclass(frozen=True)
class Facts:
    """What the choice depends on."""

    system: str  # platform.system(): Linux, Darwin, Windows
    arch: str  # platform.machine(): x86_64, arm64, AMD64, aarch64
    gpus: tuple[tuple[str, str | None], ...] = ()  # NVIDIA (name, compute capability "8.9")
    nvcc: str | None = None  # the CUDA toolkit's version, "12.4"
    nvcc_path: str | None = None  # where it was found, when not on PATH
    rosetta: bool = False  # an x86_64 Python translated on Apple Silicon
    cpu_flags: tuple[str, ...] = ()  # /proc/cpuinfo's, where the system has one
    llama_version: str | None = None  # the llama-cpp-python release that is (or will be) installed

    @classmethod
    def from_recording(cls, rec: dict) -> Facts:
        """A machine recorded in tests/machines (the shape hardware.RecordedProbe reads)."""
        system, arch = rec["platform"]
        nvidia = rec.get("nvidia")  # a list of GPUs, or why there are none
        return cls(
            system=SYSTEMS.get(system, system),
            arch=arch,
            gpus=tuple((g["name"], g.get("compute_capability")) for g in nvidia) if isinstance(nvidia, list) else (),
            nvcc=rec.get("cuda_toolkit"),
            rosetta=rec.get("sysctl", {}).get("sysctl.proc_translated") == "1",
            cpu_flags=tuple(rec.get("cpu", {}).get("flags", ())),
            llama_version=llama_version(),
        )

    @property
    def amx_crash(self) -> str | None:
        return amx_crash(self.cpu_flags, self.llama_version)

    def without_amx(self) -> str:
        """CMAKE_ARGS for a CPU backend built for this CPU's extensions, AMX left out."""
        on = [f"-D{option}=ON" for flag, option in ISA_OPTIONS.items() if flag in self.cpu_flags]
        return " ".join(["-DGGML_NATIVE=OFF", *on, AMX_OFF])


@dataclass(frozen=True)
class Build:
    name: str  # cuda, metal or cpu
    cmake_args: str  # for CMAKE_ARGS; "" is llama.cpp's default
    why: str
    extras: tuple[str, ...] = ()  # roost's optional extras that belong with this build
    warnings: tuple[str, ...] = field(default=())
    system: str = "Linux"  # whose shell the lines are written for
    fallback_args: str = ""  # CMAKE_ARGS to rebuild with when the engine's self-test crashes

    def pip_line(self, requirement: str = "llama-cpp-python", python: str | None = None) -> str:
        """The command that rebuilds llama-cpp-python this way: in `python`'s environment
        (the one roost runs in, where it is known), else the one at hand. --no-cache-dir:
        pip's wheel cache does not know CMAKE_ARGS and would hand back the last build."""
        pip = f"{python} -m pip" if python else "pip"
        return f"{self._env()}{pip} install --force-reinstall --no-cache-dir --no-deps '{requirement}'"

    def tool_lines(self, source: str = ".") -> dict[str, str]:
        """roost as a command of its own, in an environment of its own. `source`: a
        checkout, or "roost" once it is published."""
        spec = f"{source}[{','.join(self.extras)}]" if self.extras else source
        return {
            "uv": f"{self._env()}uv tool install --no-cache '{spec}'",
            "pipx": f"{self._env()}pipx install --pip-args=--no-cache-dir '{spec}'",
        }

    def _env(self) -> str:
        if not self.cmake_args:
            return ""
        if self.system == "Windows":  # PowerShell
            return f'$env:CMAKE_ARGS="{self.cmake_args}"; '
        return f'CMAKE_ARGS="{self.cmake_args}" '



def _version(text: str) -> tuple[int, ...]:
    return tuple(int(p) for p in text.split("."))


def _arch(cc: str) -> str:
    return cc.replace(".", "")


def choose(facts: Facts) -> Build:
    return with_fallback(replace(_choose(facts), system=facts.system), facts)


def with_fallback(build: Build, facts: Facts) -> Build:
    """The build made safe for this CPU, with what to rebuild it as if it still crashes."""
    if build.name == "metal" or facts.arch.lower() not in ("x86_64", "amd64") or not facts.cpu_flags:
        return build
    # The CPU kernels also run what a GPU build leaves on the CPU: CUDA builds too.
    safe = f"{build.cmake_args} {facts.without_amx()}".strip()
    if issue := facts.amx_crash:
        # Loaded without llama.cpp's extra buffer types (its AMX path goes with them, and
        # CPU weight repacking too) rather than built without AMX: measured the faster of
        # the two on a Sapphire Rapids (issue 17: 2.07 s against 2.36 s for 128 tokens),
        # and repacking's part is small (2-12 % on an AVX-512 EPYC, bench/cpu_repack.py).
        # It needs no rebuild; the build without AMX stays as the fallback.
        build = replace(build, warnings=build.warnings + (
            f"this CPU has AMX, and llama.cpp's AMX path in llama-cpp-python {facts.llama_version} crashes "
            f"on prompts ({issue}): roost loads models with llama.cpp's extra buffer types off, which keeps "
            "it off that path; if the engine's self-test still crashes, install.sh rebuilds without AMX",))
    return replace(build, fallback_args=safe)


def amx_crash(cpu_flags, version: str | None) -> str | None:
    """The upstream issue, when llama.cpp's AMX path crashes on a CPU with these flags in
    this llama-cpp-python release; else None."""
    has_amx = bool({"amx_int8", "amx_tile"} & set(cpu_flags))
    return AMX_CRASHES.get(version or "") if has_amx else None


def llama_version() -> str | None:
    """The llama-cpp-python release installed here, else the one packaging/constraints.txt
    pins (what install.sh is about to install)."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("llama-cpp-python")
    except PackageNotFoundError:
        pass
    checkout = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # app/machine/ -> the top
    pins = os.path.join(checkout, "packaging", "constraints.txt")
    try:
        with open(pins) as f:
            found = re.search(r"^llama-cpp-python==(\S+)", f.read(), re.MULTILINE)
    except OSError:
        return None
    return found.group(1) if found else None


def _cpu_flags() -> tuple[str, ...]:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                key, _, value = line.partition(":")
                if key.strip() == "flags":
                    return tuple(value.split())
    except OSError:
        pass
    return ()


def _choose(facts: Facts) -> Build:
    if facts.system == "Darwin":
        if facts.rosetta:
            return Build("cpu", "-DGGML_METAL=off", "this Python is an x86_64 one running under Rosetta",
                         warnings=("Metal and MLX need a native arm64 Python on Apple Silicon: install one "
                                   "(python.org, Homebrew or `uv python install`) and run packaging/install.sh with it",))
        if facts.arch == "arm64":
            return Build("metal", "-DGGML_METAL=on", "Apple Silicon: llama.cpp on Metal, and MLX beside it",
                         extras=("mlx",))
        return Build("cpu", "-DGGML_METAL=off", "an Intel Mac: llama.cpp on the CPU (Metal is slower there)")

    if facts.gpus and facts.system in ("Linux", "Windows"):
        names = ", ".join(sorted({name for name, _ in facts.gpus}))
        if facts.nvcc is None:
            return Build("cpu", "", f"{names} found, but no CUDA toolkit (nvcc) to build for it",
                         warnings=(f"no CUDA toolkit (nvcc) to build for the {names}. To use it, {TOOLKIT_HELP[facts.system]}; then run "
                                   "packaging/install.sh again. Until then models run on the CPU.",))
        caps = sorted({cc for _, cc in facts.gpus if cc}, key=_version)
        toolkit = _version(facts.nvcc)[:2]
        for cc in caps:
            need = MIN_TOOLKIT.get(_version(cc)[:2])
            if need and toolkit < need:
                return Build("cpu", "", f"CUDA toolkit {facts.nvcc} cannot compile for {names} (compute {cc})",
                             warnings=(f"install CUDA toolkit {need[0]}.{need[1]} or newer, then run "
                                       "packaging/install.sh again; until then models run on the CPU.",))
            top = MAX_TOOLKIT_FOR_OLD.get(_version(cc)[:2])
            if top and toolkit > top:
                return Build("cpu", "", f"CUDA toolkit {facts.nvcc} no longer supports {names} (compute {cc})",
                             warnings=(f"install CUDA toolkit {top[0]}.{top[1]} or older beside it, then "
                                       "run packaging/install.sh again; until then models run on the CPU.",))
        args = ["-DGGML_CUDA=on"]
        if caps:
            # Only this machine's GPUs: llama.cpp's CUDA kernels for every architecture
            # take most of an hour to compile; for one they take minutes.
            args.append("-DCMAKE_CUDA_ARCHITECTURES=" + ";".join(_arch(cc) for cc in caps))
        if facts.nvcc_path:
            args.append(f"-DCMAKE_CUDA_COMPILER={facts.nvcc_path}")
        for_ = f" (compute {', '.join(caps)})" if caps else ""
        return Build("cuda", " ".join(args), f"{names}{for_} with CUDA toolkit {facts.nvcc}")

    return Build("cpu", "", "no GPU that llama.cpp can build for was found")


# --- reading this machine -------------------------------------------------------------

def _run(cmd: list[str]) -> str | None:
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout if out.returncode == 0 else None


def _nvidia_gpus() -> tuple[tuple[str, str | None], ...]:
    # nvidia-smi, not pynvml: nothing but the driver is installed yet.
    out = _run(["nvidia-smi", "--query-gpu=name,compute_cap", "--format=csv,noheader"])
    if out is None:  # drivers before compute_cap was a query field
        out = _run(["nvidia-smi", "--query-gpu=name", "--format=csv,noheader"])
    gpus = []
    for line in (out or "").splitlines():
        name, _, cc = (part.strip() for part in line.partition(","))
        if name:
            gpus.append((name, cc if re.fullmatch(r"\d+\.\d+", cc) else None))
    return tuple(gpus)


def find_nvcc() -> tuple[str | None, str | None]:
    """(version, path when it is not on PATH). CMake looks in the same places."""
    on_path = shutil.which("nvcc")
    candidates = [on_path] if on_path else []
    for var in ("CUDA_HOME", "CUDA_PATH", "CUDAToolkit_ROOT"):
        if os.environ.get(var):
            candidates.append(os.path.join(os.environ[var], "bin", "nvcc"))
    candidates.append("/usr/local/cuda/bin/nvcc")
    for path in candidates:
        out = _run([path, "--version"]) if os.path.exists(path) else None
        if out and (m := re.search(r"release (\d+\.\d+)", out)):
            return m.group(1), None if path == on_path else path
    return None, None


def probe() -> Facts:
    system = platform.system()
    rosetta = system == "Darwin" and (_run(["sysctl", "-n", "sysctl.proc_translated"]) or "").strip() == "1"
    gpus = _nvidia_gpus() if system in ("Linux", "Windows") else ()
    nvcc, nvcc_path = find_nvcc() if gpus else (None, None)
    return Facts(system, platform.machine(), gpus, nvcc, nvcc_path, rosetta, _cpu_flags(), llama_version())


def device_of(system_info: str) -> str:
    """The GPU backend a llama.cpp build has, from its system info line; "CPU" if none."""
    for device, names in BACKEND_NAMES.items():
        if any(re.search(rf"\b{name}\b", system_info) for name in names):
            return device
    return "CPU"


def check(build: Build) -> str | None:
    """After installing: None when the llama-cpp-python that imports here is the build
    `build` asked for, else what went wrong and what to do."""
    try:
        import llama_cpp
    except ImportError as e:
        return f"llama-cpp-python does not import: {e}"
    offload = bool(llama_cpp.llama_supports_gpu_offload())
    system = llama_cpp.llama_print_system_info().decode("utf-8", "replace")
    return mismatch(build, offload, system, llama_cpp.__version__)


def mismatch(build: Build, offload: bool, system_info: str, version: str) -> str | None:
    """What check() says of a build with these readings."""
    device = DEVICE.get(build.name)
    if device and not (offload and device_of(system_info) == device):
        return (f"llama-cpp-python {version} was built without {device} "
                f"(GPU offload: {'yes' if offload else 'no'}). The usual cause is a CPU wheel from pip's "
                f"cache, or a build that could not find the toolkit. Rebuild it: {build.pip_line(python=sys.executable)}")
    return None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--machine", help="a recorded machine (tests/machines/*.json) instead of this one")
    parser.add_argument("--build", choices=("cpu", "cuda", "metal"),
                        help="insist on a build, e.g. CUDA in a container built without the GPU attached")
    out = parser.add_mutually_exclusive_group()
    out.add_argument("--shell", action="store_true", help="shell assignments for packaging/install.sh")
    out.add_argument("--json", action="store_true")
    out.add_argument("--check", action="store_true", help="does the installed llama-cpp-python match?")
    args = parser.parse_args(argv)

    # ROOST_MACHINE: the recorded machine every roost command takes instead of this one.
    recording = args.machine or os.environ.get("ROOST_MACHINE")
    if recording:
        with open(recording) as f:
            facts = Facts.from_recording(json.load(f))
    else:
        facts = probe()
    build = choose(facts)
    if args.build and args.build != build.name:
        forced = {"cpu": "", "cuda": "-DGGML_CUDA=on", "metal": "-DGGML_METAL=on"}[args.build]
        build = with_fallback(Build(args.build, forced, f"asked for with --build (this machine suggests {build.name})",
                                    ("mlx",) if args.build == "metal" else (), system=facts.system), facts)

    if args.check:
        problem = check(build)
        if problem:
            print(f"roost: {problem}", file=sys.stderr)
            return 1
        print(f"llama-cpp-python's build matches this machine: {build.name}")
        return 0
    if args.json:
        print(json.dumps({"facts": asdict(facts), "build": asdict(build)}, indent=2))
        return 0
    if args.shell:
        if facts.rosetta and not args.build:
            # Metal and MLX are lost under Rosetta, and the x86 build runs translated: say
            # so before minutes of compiling, unless a CPU build is what the user asked for.
            print(f"roost: this Python runs under Rosetta (x86_64): {build.warnings[0]} "
                  "(or ROOST_BUILD=cpu for a translated CPU build)", file=sys.stderr)
            return 1
        print(f"ROOST_BUILD={build.name} CMAKE_ARGS={shlex.quote(build.cmake_args)} "
              f"ROOST_EXTRAS={shlex.quote(','.join(build.extras))} "
              f"ROOST_FALLBACK_ARGS={shlex.quote(build.fallback_args)}")
        for w in build.warnings:
            print(f"roost: {w}", file=sys.stderr)
        return 0
    print(f"build: {build.name} ({build.why})")
    if build.cmake_args:
        print(f"CMAKE_ARGS: {build.cmake_args}")
    for w in build.warnings:
        print(f"note: {w}")
    if build.fallback_args:
        print(f"if the engine's self-test crashes here, install.sh rebuilds it with CMAKE_ARGS: {build.fallback_args}")
    print(f"rebuild llama-cpp-python where it is installed: {build.pip_line()}")
    for tool, line in build.tool_lines().items():
        print(f"install roost from this checkout with {tool}: {line}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
