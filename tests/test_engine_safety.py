"""An engine that runs on the user's CPU: llama.cpp built without the AMX path that
crashes (a recorded Sapphire Rapids Xeon: no AMX CPU exists here), loaded without it
where the build has it, and a self-test that finds a native crash in a process of its
own (real crashes, made by the child engine's test hook)."""

import dataclasses
import json
import os
import shutil
import subprocess
import sys

import pytest

from conftest import ROOT, recorded_machine, roost
from roost.machine import doctor, engine_build

MACHINES = os.path.join(ROOT, "tests", "machines")
with open(os.path.join(ROOT, "tests", "recorded", "system_info.json")) as f:
    SYSTEM_INFO = json.load(f)


def facts(name: str, **changes) -> engine_build.Facts:
    with open(os.path.join(MACHINES, name)) as f:
        rec = json.load(f)
    rec.update(changes)
    return engine_build.Facts.from_recording(rec)


# -- the build: no AMX where it crashes ---------------------------------------------------


def test_an_amx_xeon_keeps_its_build_and_gets_one_without_amx_as_the_fallback():
    """The engine keeps llama.cpp off its AMX path at load (below); a build for the CPU's
    own extensions without AMX is what install.sh rebuilds if the self-test still crashes."""
    spr = facts("xeon_spr.json")
    assert spr.amx_crash == "ggml-org/llama.cpp#20824"
    build = engine_build.choose(spr)
    assert build.cmake_args == ""
    args = build.fallback_args.split()
    assert "-DGGML_NATIVE=OFF" in args and "-DGGML_AMX_INT8=OFF" in args and "-DGGML_AMX_TILE=OFF" in args
    assert {"-DGGML_AVX512=ON", "-DGGML_AVX512_VNNI=ON", "-DGGML_AVX512_BF16=ON", "-DGGML_AVX_VNNI=ON"} <= set(args)
    assert any("AMX" in w and "#20824" in w and "extra buffer types" in w for w in build.warnings)


def test_a_gpu_server_on_an_amx_xeon_falls_back_to_cuda_and_its_cpu_kernels_without_amx():
    with open(os.path.join(MACHINES, "xeon_spr.json")) as f:
        flags = json.load(f)["cpu"]["flags"]
    build = engine_build.choose(facts("h100.json", cpu={"flags": flags}))
    assert build.cmake_args == "-DGGML_CUDA=on -DCMAKE_CUDA_ARCHITECTURES=90"
    assert build.fallback_args.startswith(build.cmake_args) and "-DGGML_AMX_INT8=OFF" in build.fallback_args


def test_cpus_without_amx_keep_the_native_build_and_get_a_fallback():
    for name in ("cpu_only.json", "rtx4090.json", "tiny.json"):
        build = engine_build.choose(facts(name))
        assert "AMX" not in build.cmake_args and "-DGGML_AMX_INT8=OFF" in build.fallback_args
    assert engine_build.choose(facts("m3max64.json")).fallback_args == ""  # Metal: no x86 kernels


def test_a_release_with_the_fix_uses_amx_again():
    spr = facts("xeon_spr.json")
    fixed = dataclasses.replace(spr, llama_version="9.9.9")
    assert fixed.amx_crash is None and not any("AMX" in w for w in engine_build.choose(fixed).warnings)


# -- the engine: an AMX build is loaded without its AMX path ------------------------------


@pytest.fixture
def q4_0_model(tmp_path_factory, demo_gguf):
    """A Q4_0 file: a quant llama.cpp repacks, through the extra buffer types AMX uses too."""
    import gguf_files

    return gguf_files.synthetic_llama(demo_gguf, str(tmp_path_factory.mktemp("q4_0") / "q4_0.gguf"), n_layer=2,
                                      n_embd=256, n_head=4, n_head_kv=2, n_ff=512, qtype="Q4_0")


def _loaded_buffers(path):
    from roost.backends import llama_cpp
    from roost.backends.base import Plan

    engine = llama_cpp.LlamaCppEngine(path, Plan(n_ctx=512, n_threads=2))
    try:
        return [line for line in llama_cpp._LOG.text().splitlines() if "model buffer" in line], engine.info().build
    finally:
        engine.close()


def test_an_amx_build_on_an_amx_cpu_loads_without_extra_buffer_types(q4_0_model, monkeypatch):
    from roost.backends import llama_cpp

    buffers, build = _loaded_buffers(q4_0_model)
    assert any("CPU_REPACK" in b for b in buffers) and "AMX" not in build  # this machine, as it is
    # What an AMX build of llama-cpp-python says of itself, on a recorded Sapphire Rapids.
    real = llama_cpp.build_info
    monkeypatch.setattr(llama_cpp, "build_info", lambda: (*real()[:2], SYSTEM_INFO["cpu_amx"]))
    monkeypatch.setenv("ROOST_MACHINE", os.path.join(MACHINES, "xeon_spr.json"))
    buffers, build = _loaded_buffers(q4_0_model)
    assert not any("CPU_REPACK" in b for b in buffers) and "AMX path off" in build and "#20824" in build
    assert llama_cpp.llama_cpp.llama_cpp.llama_model_default_params().use_extra_bufts  # put back


def test_doctor_says_why_an_amx_build_is_loaded_without_it_and_how_to_rebuild(monkeypatch):
    from roost.backends import llama_cpp

    real = llama_cpp.build_info
    monkeypatch.setattr(llama_cpp, "build_info", lambda: (*real()[:2], SYSTEM_INFO["cpu_amx"]))
    advice = doctor.report(recorded_machine("xeon_spr.json"))["advice"]
    [line] = [a for a in advice if "AMX" in a]
    assert "#20824" in line and "extra buffer types off" in line and "-DGGML_AMX_INT8=OFF" in line


# -- the self-test: a crash in its own process is one line ----------------------------------


def test_the_self_test_passes_here_and_is_kept_per_build():
    first = roost("doctor", "--self-test")
    assert first.returncode == 0, first.stderr
    assert first.stdout.startswith("engine self-test: ok (") and "tok/s" in first.stdout
    # kept: a crash made now is not seen, the build has already passed
    again = roost("doctor", "--json", env={"ROOST_TEST_CRASH": "prefill"})
    assert json.loads(again.stdout)["self_test"]["ok"]


@pytest.mark.slow
@pytest.mark.parametrize("where, how, signal", [("prefill", "segv", "SIGSEGV"), ("load", "abort", "SIGABRT"),
                                                ("stream:2", "kill", "SIGKILL")])
def test_a_crashing_engine_is_one_line_naming_the_signal_and_the_fix(where, how, signal):
    result = roost("doctor", "--self-test", env={"ROOST_TEST_CRASH": where, "ROOST_TEST_CRASH_HOW": how})
    assert result.returncode == 1 and result.stdout == "" and "Traceback" not in result.stderr
    (line,) = result.stderr.strip().splitlines()
    assert line.startswith("roost: error: engine self-test: the engine crashed") and signal in line
    assert "fix: CMAKE_ARGS=" in line and "-DGGML_NATIVE=OFF" in line


@pytest.mark.e2e
def test_install_rebuilds_without_amx_when_the_self_test_crashes_and_tests_again(tmp_path):
    """install.sh's own logic, on a stand-in venv: pip only records what it is asked to
    build (no compiling here), and roost is the real one, its engine made to crash
    through the child's test hook until llama-cpp-python was rebuilt."""
    checkout = tmp_path / "roost"
    for part in ("packaging/install.sh", "packaging/constraints.txt", "app/machine/engine_build.py"):
        os.makedirs(checkout / os.path.dirname(part), exist_ok=True)
        shutil.copy(os.path.join(ROOT, part), checkout / part)
    bin_ = checkout / ".venv" / "bin"
    bin_.mkdir(parents=True)
    log = tmp_path / "pip.log"
    (bin_ / "python").write_text(f"""#!/bin/sh
case "$*" in
  "-m pip"*) echo "CMAKE_ARGS=$CMAKE_ARGS $*" >> {log}; exit 0;;
  *) exec {sys.executable} "$@";;
esac
""")
    (bin_ / "roost").write_text(f"""#!/bin/sh
grep -q "GGML_NATIVE=OFF.*force-reinstall" {log} || export ROOST_TEST_CRASH=prefill
cd {ROOT} && exec {sys.executable} -m roost "$@"
""")
    for program in ("python", "roost"):
        (bin_ / program).chmod(0o755)
    env = {**os.environ, "PYTHON": sys.executable, "ROOST_MACHINE": os.path.join(MACHINES, "cpu_only.json"),
           "HOME": str(tmp_path / "home"), "ROOST_NO_LINK": "1"}
    result = subprocess.run(["bash", str(checkout / "packaging" / "install.sh")], capture_output=True, text=True,
                            env=env, timeout=300)
    assert result.returncode == 0, result.stderr
    crash = [line for line in result.stderr.splitlines() if "self-test" in line]
    assert len(crash) == 1 and "SIGSEGV" in crash[0]
    assert "rebuilding llama-cpp-python" in result.stdout and "engine self-test: ok" in result.stdout
    rebuilt = [line for line in log.read_text().splitlines() if "--force-reinstall" in line]
    assert len(rebuilt) == 1 and "-DGGML_NATIVE=OFF" in rebuilt[0] and "-DGGML_AMX_INT8=OFF" in rebuilt[0]


# -- roost run: a native crash is one line, not "Segmentation fault" -------------------------


@pytest.mark.slow
@pytest.mark.parametrize("sig, name", [("SIGSEGV", "SIGSEGV"), ("SIGABRT", "SIGABRT"), ("SIGKILL", "SIGKILL")])
def test_a_crash_in_roost_run_is_one_line_and_what_was_written_stays(sig, name):
    """A real signal, sent to the process that runs the model mid-answer, as native code
    (or the out-of-memory killer) would send it."""
    import signal
    import time

    import psutil

    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "roost", "run", "demo", "Write a long story about a dragon.",
                             "-n", "2000", "-t", "0"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            stdin=subprocess.DEVNULL, cwd=ROOT, env=env)
    try:
        first = proc.stdout.read(40)  # the answer has begun
        assert first.strip()
        deadline = time.monotonic() + 30
        while not (workers := psutil.Process(proc.pid).children()):
            assert time.monotonic() < deadline
            time.sleep(0.05)
        os.kill(workers[0].pid, getattr(signal, sig))
        out, err = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode == 1 and (first + out).strip()
    lines = err.decode().strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in err.decode(), err.decode()
    assert lines[0].startswith(f"roost: error: the engine crashed ({name}") and "roost doctor --self-test" in lines[0]


def test_roost_run_still_exits_130_on_ctrl_c_and_passes_its_exit_codes_through():
    import signal

    missing = roost("run", "/nonexistent.gguf", "hi")
    assert missing.returncode == 1 and missing.stderr.count("\n") == 1
    # PYTHONFAULTHANDLER: a run that does not end is made to say where it is stuck (below).
    proc = subprocess.Popen([sys.executable, "-m", "roost", "run", "demo", "Write a long story about a dragon.",
                             "-n", "2000"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL,
                            cwd=ROOT, start_new_session=True, env={**os.environ, "PYTHONFAULTHANDLER": "1"})
    try:
        assert proc.stdout.read(20).strip()
        os.killpg(proc.pid, signal.SIGINT)  # as the terminal sends Ctrl-C: to the whole group
        try:
            out, err = proc.communicate(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGABRT)  # every process's Python stacks, on its stderr
            pytest.fail("still running a minute after Ctrl-C:\n" + proc.communicate(timeout=30)[1].decode()[-6000:])
    finally:
        proc.kill()
    assert proc.returncode == 130, err
