"""The llama.cpp build each machine gets (app/machine/engine_build.py): recorded machines, stand-in
nvidia-smi and nvcc programs on PATH for a GPU that cannot exist here, and the real
llama-cpp-python installed in this venv for --check."""

import json
import os
import pathlib
import stat
import subprocess
import sys

import pytest

from roost.machine import engine_build
from roost.machine.engine_build import Facts, choose

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = os.path.join(ROOT, "app", "machine", "engine_build.py")
MACHINES = os.path.join(ROOT, "tests", "machines")


def engine_build_cli(*args, env=None, isolated=True):
    """The script as packaging/install.sh runs it. isolated: without site-packages, as
    before anything is installed (-S), so an import beyond the standard library fails."""
    flags = ["-S"] if isolated else []
    return subprocess.run([sys.executable, *flags, SCRIPT, *args], capture_output=True, text=True,
                          env=env, cwd=ROOT, timeout=60)


@pytest.mark.parametrize("machine, build, cmake_args, extras", [
    ("h100.json", "cuda", "-DGGML_CUDA=on -DCMAKE_CUDA_ARCHITECTURES=90", []),
    ("rtx4090.json", "cuda", "-DGGML_CUDA=on -DCMAKE_CUDA_ARCHITECTURES=89", []),
    ("m1_8gb.json", "metal", "-DGGML_METAL=on", ["mlx"]),
    ("m3max64.json", "metal", "-DGGML_METAL=on", ["mlx"]),
    ("cpu_only.json", "cpu", "", []),
    ("tiny.json", "cpu", "", []),
])
def test_recorded_machines_get_their_build_from_the_standard_library_alone(machine, build, cmake_args, extras):
    result = engine_build_cli("--machine", os.path.join(MACHINES, machine), "--json")
    assert result.returncode == 0, result.stderr
    chosen = json.loads(result.stdout)["build"]
    assert (chosen["name"], chosen["cmake_args"], chosen["extras"]) == (build, cmake_args, extras)


def test_every_recorded_machine_is_covered():
    macs = {"m2_16gb.json", "m4max36.json", "m4max128.json", "m5_16gb.json", "m5max128.json"}
    covered = {"h100.json", "rtx4090.json", "m1_8gb.json", "m3max64.json", "cpu_only.json", "tiny.json",
               "m1_rosetta.json", "xeon_spr.json", *macs}  # xeon_spr: tests/test_engine_safety.py
    assert set(os.listdir(MACHINES)) == covered
    for mac in macs:
        assert json.loads(engine_build_cli("--machine", os.path.join(MACHINES, mac), "--json").stdout)["build"]["name"] == "metal"
    rosetta = engine_build_cli("--machine", os.path.join(MACHINES, "m1_rosetta.json"), "--json")
    assert json.loads(rosetta.stdout)["build"]["name"] == "cpu"


def test_shell_form_sets_the_variables_install_sh_reads():
    script = (f'eval "$({sys.executable} -S {SCRIPT} --machine {MACHINES}/m3max64.json --shell)"; '
              'printf "%s|%s|%s" "$ROOST_BUILD" "$CMAKE_ARGS" "$ROOST_EXTRAS"')
    out = subprocess.run(["bash", "-c", script], capture_output=True, text=True, check=True)
    assert out.stdout == "metal|-DGGML_METAL=on|mlx"


GPU = (("NVIDIA GeForce RTX 4090", "8.9"),)


def test_nvidia_gpu_without_the_toolkit_gets_the_cpu_build_and_says_what_to_install():
    b = choose(Facts("Linux", "x86_64", GPU, nvcc=None))
    assert b.name == "cpu" and b.cmake_args == ""
    assert "CUDA toolkit" in b.warnings[0] and "packaging/install.sh" in b.warnings[0]
    windows = choose(Facts("Windows", "AMD64", GPU, nvcc=None))
    assert "Visual Studio" in windows.warnings[0]


def test_a_toolkit_too_old_or_too_new_for_the_gpu_is_caught_before_compiling():
    blackwell = choose(Facts("Linux", "x86_64", (("NVIDIA GeForce RTX 5090", "12.0"),), nvcc="12.4"))
    assert blackwell.name == "cpu" and "12.8 or newer" in blackwell.warnings[0]
    assert choose(Facts("Linux", "x86_64", (("NVIDIA GeForce RTX 5090", "12.0"),), nvcc="12.8")).name == "cuda"
    pascal = choose(Facts("Linux", "x86_64", (("NVIDIA GeForce GTX 1080", "6.1"),), nvcc="13.0"))
    assert pascal.name == "cpu" and "12.9 or older" in pascal.warnings[0]


def test_cuda_builds_for_each_gpu_in_the_box_and_names_an_nvcc_off_path():
    b = choose(Facts("Linux", "x86_64", (("NVIDIA GeForce RTX 4090", "8.9"), ("NVIDIA GeForce RTX 3090", "8.6"),
                                          ("NVIDIA GeForce RTX 4090", "8.9")), nvcc="12.4",
                     nvcc_path="/usr/local/cuda/bin/nvcc"))
    assert b.cmake_args == ("-DGGML_CUDA=on -DCMAKE_CUDA_ARCHITECTURES=86;89 "
                            "-DCMAKE_CUDA_COMPILER=/usr/local/cuda/bin/nvcc")
    # unknown compute capability (an old driver): llama.cpp's own list of architectures
    assert choose(Facts("Linux", "x86_64", (("Tesla T4", None),), nvcc="12.4")).cmake_args == "-DGGML_CUDA=on"


def test_macs():
    intel = choose(Facts("Darwin", "x86_64"))
    assert (intel.name, intel.cmake_args, intel.extras) == ("cpu", "-DGGML_METAL=off", ())
    rosetta = choose(Facts("Darwin", "x86_64", rosetta=True))
    assert rosetta.name == "cpu" and "arm64 Python" in rosetta.warnings[0]


def test_install_lines_per_tool_and_shell():
    mac = choose(Facts("Darwin", "arm64"))
    assert mac.tool_lines()["uv"] == "CMAKE_ARGS=\"-DGGML_METAL=on\" uv tool install --no-cache '.[mlx]'"
    assert mac.tool_lines("roost")["pipx"] == ("CMAKE_ARGS=\"-DGGML_METAL=on\" pipx install "
                                               "--pip-args=--no-cache-dir 'roost[mlx]'")
    win = choose(Facts("Windows", "AMD64", GPU, nvcc="12.6"))
    assert win.pip_line().startswith('$env:CMAKE_ARGS="-DGGML_CUDA=on -DCMAKE_CUDA_ARCHITECTURES=89"; pip install')
    assert "--no-cache-dir" in win.pip_line() and "--force-reinstall" in win.pip_line()
    assert choose(Facts("Linux", "x86_64")).tool_lines()["uv"] == "uv tool install --no-cache '.'"


def _program(folder, name, text):
    path = os.path.join(folder, name)
    with open(path, "w") as f:
        f.write("#!/bin/sh\n" + text)
    os.chmod(path, os.stat(path).st_mode | stat.S_IEXEC)


def test_probe_reads_nvidia_smi_and_nvcc(tmp_path):
    """A GPU box as the script sees it: nvidia-smi and nvcc on PATH (stand-ins printing
    what the real ones print, since no GPU can exist here)."""
    _program(tmp_path, "nvidia-smi", 'echo "NVIDIA GeForce RTX 3060, 8.6"\n')
    _program(tmp_path, "nvcc", 'echo "nvcc: NVIDIA (R) Cuda compiler driver"\n'
                               'echo "Cuda compilation tools, release 12.6, V12.6.77"\n')
    env = {**os.environ, "PATH": f"{tmp_path}:/usr/bin:/bin"}
    result = engine_build_cli("--json", env=env)
    assert result.returncode == 0, result.stderr
    data = json.loads(result.stdout)
    assert data["facts"]["gpus"] == [["NVIDIA GeForce RTX 3060", "8.6"]] and data["facts"]["nvcc"] == "12.6"
    assert data["build"]["cmake_args"] == "-DGGML_CUDA=on -DCMAKE_CUDA_ARCHITECTURES=86"

    # The toolkit installed but not on PATH: found through CUDA_HOME, and named to CMake.
    home = tmp_path / "cuda"
    (home / "bin").mkdir(parents=True)
    os.rename(tmp_path / "nvcc", home / "bin" / "nvcc")
    data = json.loads(engine_build_cli("--json", env={**env, "CUDA_HOME": str(home)}).stdout)
    assert data["build"]["cmake_args"].endswith(f"-DCMAKE_CUDA_COMPILER={home}/bin/nvcc")

    # No toolkit: the CPU build, and the warning on stderr, where install.sh shows it.
    # (Through a recording: this machine may have a toolkit in /usr/local/cuda.)
    recording = tmp_path / "no-toolkit.json"
    recording.write_text(json.dumps({"platform": ["linux", "x86_64"], "nvidia": [{"name": "NVIDIA GeForce RTX 3060"}]}))
    result = engine_build_cli("--machine", str(recording), "--shell")
    assert result.stdout.startswith("ROOST_BUILD=cpu ") and "CUDA toolkit" in result.stderr


def test_probe_here_finds_no_gpu():
    assert engine_build.probe().gpus == ()
    assert choose(engine_build.probe()).name == "cpu"


def test_check_passes_for_the_build_installed_here_and_fails_in_one_line_for_a_missing_gpu_build():
    ok = engine_build_cli("--check", isolated=False)
    assert ok.returncode == 0 and "matches this machine: cpu" in ok.stdout
    wrong = engine_build_cli("--check", "--build", "cuda", isolated=False)
    assert wrong.returncode == 1 and "Traceback" not in wrong.stderr
    assert len(wrong.stderr.strip().splitlines()) == 1
    assert "built without CUDA" in wrong.stderr and 'CMAKE_ARGS="-DGGML_CUDA=on"' in wrong.stderr


@pytest.mark.e2e
@pytest.mark.slow  # pip builds the wheel
def test_a_wheel_carries_everything_roost_reads(tmp_path):
    """What `uv tool install .`, pipx and Homebrew install: a wheel, not this checkout. It
    must hold the chat app, its styles, the catalog and the built-in eval set."""
    import zipfile

    built = subprocess.run([sys.executable, "-m", "pip", "wheel", ROOT, "--no-deps", "-q", "-w", str(tmp_path)],
                           capture_output=True, text=True, timeout=300)
    assert built.returncode == 0, built.stderr
    wheel = next(tmp_path.glob("roost-*.whl"))
    names = set(zipfile.ZipFile(wheel).namelist())
    # every module of the checkout (a package missing from pyproject.toml's list would be left out)
    for folder, inside in (("app", "roost"), ("backends", "roost/backends")):
        for module in pathlib.Path(ROOT, folder).rglob("*.py"):
            needed = f"{inside}/{module.relative_to(pathlib.Path(ROOT, folder)).as_posix()}"
            assert needed in names, needed
    for needed in ("roost/cli/main.py", "roost/backends/base.py", "roost/tui/app.py", "roost/tui/screens/chat.py",
                   "roost/tui/widgets/status.py", "roost/tui/roost.tcss", "roost/catalog_file/models.toml",
                   "roost/data/eval-basic.jsonl"):
        assert needed in names, needed
    # Installed on its own, away from the checkout, it finds its catalog and eval set inside itself.
    target = tmp_path / "site"
    zipfile.ZipFile(wheel).extractall(target)
    probe = ("import roost.models.catalog as c, roost.measure.eval_set as e; "
             "import os; print(os.path.relpath(str(c.CATALOG)), os.path.relpath(str(e.BUILTIN)), "
             "len(c.models()), len(e.load()[1]))")
    found = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, cwd=tmp_path,
                           env={**os.environ, "PYTHONPATH": str(target)}, timeout=60)
    assert found.returncode == 0, found.stderr
    catalog_at, eval_set_at, models, items = found.stdout.split()
    assert (catalog_at, eval_set_at) == ("site/roost/catalog_file/models.toml", "site/roost/data/eval-basic.jsonl")
    assert int(models) > 5 and int(items) > 40
