"""Apple Silicon, which cannot run here: recorded Macs (tests/machines: sysctl answers
and what MLX's device_info said), recorded llama.cpp system info lines, and a stand-in
Python 3.9 for install.sh. Each checks one thing a real Mac got wrong."""

import json
import os
import subprocess

import pytest

from conftest import ROOT, one_line, recorded_machine, roost
from roost import report
from roost.machine import doctor, engine_build, fit, hardware

GiB = hardware.GiB
MACHINES = os.path.join(ROOT, "tests", "machines")
MACS = ("m1_8gb.json", "m2_16gb.json", "m4max36.json", "m3max64.json", "m4max128.json", "m5_16gb.json",
        "m5max128.json")

with open(os.path.join(ROOT, "tests", "recorded", "system_info.json")) as f:
    SYSTEM_INFO = json.load(f)  # llama_print_system_info() of each kind of build


def _recording(name):
    with open(os.path.join(MACHINES, name)) as f:
        return json.load(f)


# -- 1. a Metal build is known as one ------------------------------------------------


@pytest.mark.parametrize("build, device", [("metal_mtl", "Metal"), ("metal_before_2026", "Metal"),
                                           ("cuda", "CUDA"), ("cpu", "CPU"), ("cpu_amx", "CPU")])
def test_the_gpu_backend_is_read_from_the_system_info_line(build, device):
    assert engine_build.device_of(SYSTEM_INFO[build]) == device


def test_check_accepts_a_metal_build_that_names_itself_mtl():
    metal = engine_build.choose(engine_build.Facts("Darwin", "arm64"))
    assert engine_build.mismatch(metal, True, SYSTEM_INFO["metal_mtl"], "0.3.36") is None
    wrong = engine_build.mismatch(metal, False, SYSTEM_INFO["cpu"], "0.3.36")
    assert "built without Metal" in wrong and "-DGGML_METAL=on" in wrong


def test_doctor_calls_a_metal_build_metal(monkeypatch):
    """What a Metal build of llama-cpp-python answers, on the one seam that cannot be real here."""
    import llama_cpp

    monkeypatch.setattr(llama_cpp, "llama_print_system_info", lambda: SYSTEM_INFO["metal_mtl"].encode())
    monkeypatch.setattr(llama_cpp, "llama_supports_gpu_offload", lambda: True)
    status = doctor.llama_status()
    assert status.gpu_offload and "Metal build" in status.detail


# -- 2 and 10. install.sh stops in one line before compiling ---------------------------


def _install(tmp_path, **env):
    return subprocess.run(["bash", os.path.join(ROOT, "packaging", "install.sh")], capture_output=True, text=True,
                          timeout=60, env={**os.environ, **env})


def test_install_refuses_macos_own_python_39_before_compiling(tmp_path):
    python = tmp_path / "python3.9"  # answers as the Command Line Tools' Python does
    python.write_text('#!/bin/sh\ncase "$*" in\n  *version_info*) exit 1;;\n  *python_version*) echo 3.9.6;;\nesac\n'
                      'echo "python3.9 was asked to run: $*" >&2; exit 3\n')
    python.chmod(0o755)
    result = _install(tmp_path, PYTHON=str(python))
    assert result.returncode == 1 and result.stdout == ""
    (line,) = result.stderr.strip().splitlines()
    assert "needs Python 3.11 or newer" in line and "3.9.6" in line and "PYTHON=python3.13" in line


def test_install_refuses_a_python_under_rosetta_before_compiling(tmp_path):
    result = _install(tmp_path, ROOST_MACHINE=os.path.join(MACHINES, "m1_rosetta.json"))
    assert result.returncode == 1 and "compiling" not in result.stdout
    (line,) = result.stderr.strip().splitlines()
    assert "Rosetta" in line and "arm64 Python" in line and "ROOST_BUILD=cpu" in line


def test_rosetta_is_seen_as_the_apple_silicon_mac_it_is():
    m = recorded_machine("m1_rosetta.json")
    assert m.rosetta and m.arch == "arm64" and m.apple is not None
    assert any("Rosetta" in n and "arm64 Python" in n for n in m.notes)
    build = doctor.wanted_build(m, None)
    assert build.name == "cpu" and "arm64 Python" in build.warnings[0]
    assert "Intel Mac" not in build.why
    text = "\n".join(report.machine(m))
    assert "Intel" not in text and "Rosetta" in text


# -- 4 and 5. the budget is what Metal allows, lowered only by what is in use ----------


@pytest.mark.parametrize("name", MACS)
def test_the_budget_never_passes_metals_working_set_and_reaches_it_when_memory_is_free(name):
    """mlx-lm wires Metal's recommended working set for itself and warns past 90 % of it:
    roost's budget is at most that, and close to it on a Mac with memory to spare."""
    m = recorded_machine(name)
    b = fit.budget(m)
    assert b.unified and b.gpu_bytes <= m.apple.working_set_bytes
    if m.ram_available_bytes >= m.apple.working_set_bytes + max(0.05 * m.ram_total_bytes, GiB):
        assert b.gpu_bytes == m.apple.working_set_bytes


def test_a_16gb_mac_gets_what_mlx_can_use_not_half():
    m = recorded_machine("m2_16gb.json")
    # psutil says 7 GiB (inactive + free); the kernel, 72 % free
    assert m.ram_available_bytes == 16 * GiB * 72 // 100
    assert fit.budget(m).gpu_bytes / GiB == pytest.approx(10.5, abs=0.1)


def test_a_128gb_mac_on_macos_26_gets_its_107_gib():
    b = fit.budget(recorded_machine("m4max128.json"))
    assert b.gpu_bytes / GiB == pytest.approx(107.5, abs=0.1)


@pytest.mark.parametrize("name, share, gib", [
    ("m1_8gb.json", 2 / 3, 5.33), ("m5_16gb.json", 2 / 3, 10.67),
    ("m4max36.json", 0.75, 27.0), ("m3max64.json", 0.75, 48.0), ("m5max128.json", 0.84, 107.5),
])
def test_without_mlx_the_working_set_is_estimated_as_macos_sets_it(name, share, gib):
    rec = _recording(name)
    rec.pop("metal_working_set", None)
    m = hardware.detect(hardware.RecordedProbe(rec))
    assert m.apple.working_set_bytes / GiB == pytest.approx(gib, abs=0.02)
    assert m.apple.working_set_source == f"estimate, {share:.0%} of memory (MLX not installed)"
    if "metal_working_set" in _recording(name):  # the estimate agrees with what MLX said
        assert m.apple.working_set_bytes == pytest.approx(_recording(name)["metal_working_set"], rel=0.01)


def test_the_estimate_does_not_blame_mlx_when_it_was_not_asked():
    m = hardware.detect(hardware.RecordedProbe.from_file(os.path.join(MACHINES, "m3max64.json")), gpus=False)
    assert "MLX not installed" not in m.apple.working_set_source and "not asked" in m.apple.working_set_source


# -- 6. bandwidth by chip and core count -----------------------------------------------


@pytest.mark.parametrize("name, gbs", [("m3max64.json", 400), ("m4max36.json", 410), ("m4max128.json", 546),
                                       ("m5_16gb.json", 153), ("m5max128.json", 614), ("m2_16gb.json", 100)])
def test_bandwidth_tells_the_binned_max_chips_apart(name, gbs):
    assert recorded_machine(name).apple.bandwidth_gbs == gbs


def test_bandwidth_by_core_count_and_the_lower_bound_without_one():
    assert hardware.bandwidth_for("Apple M3 Max", 14) == 300 and hardware.bandwidth_for("Apple M3 Max", 16) == 400
    assert hardware.bandwidth_for("Apple M4 Max") == 410 and hardware.bandwidth_for("Apple M5 Pro") == 307


# -- 8. threads on the performance cores ------------------------------------------------


@pytest.mark.parametrize("name, threads", [("m3max64.json", 12), ("m1_8gb.json", 4), ("m5max128.json", 6),
                                           ("cpu_only.json", 8)])
def test_default_threads_are_the_performance_cores(name, threads):
    probe = hardware.RecordedProbe.from_file(os.path.join(MACHINES, name))
    assert hardware.default_threads(probe) == threads


# -- 12. words for unified memory -------------------------------------------------------


def test_a_mac_is_never_asked_to_measure_cpu_bandwidth():
    rec = _recording("m4max36.json")
    rec["sysctl"]["machdep.cpu.brand_string"] = "Apple M9 Max"  # a chip roost's table does not know yet
    m = hardware.detect(hardware.RecordedProbe(rec))
    shape = fit.Shape(24, 2048, 8192, 16, (8,) * 24, 64, 64, 32000, 4096, 1_000_000_000)
    ranking = fit.rank(shape, [fit.Quant.from_size(shape, "Q4_K_M", 600_000_000)], 4096, m)
    text = report.ranking("test", shape, ranking) + "\n".join(report.machine(m))
    assert "doctor --measure" not in text and "Apple M9 Max" in text


def test_doctor_on_a_recorded_mac_runs_in_one_process():
    result = roost("doctor", "--json", machine="m2_16gb.json")
    assert result.returncode == 0, result.stderr
    data = json.loads(result.stdout)
    assert data["machine"]["apple"]["bandwidth_gbs"] == 100 and data["machine"]["apple"]["performance_cores"] == 4
    assert data["build"]["wanted"] == "metal"


def test_status_bar_calls_unified_memory_metal_not_vram():
    import asyncio

    from textual.app import App

    from roost.backends.base import MemoryReading
    from roost.tui.widgets.status import StatusBar

    class Bar(App):
        def compose(self):
            yield StatusBar()

    async def main():
        app = Bar()
        async with app.run_test():
            bar = app.query_one(StatusBar)
            reading = MemoryReading(rss_bytes=GiB, peak_rss_bytes=GiB, device_used_bytes=5 * GiB)
            bar.show_memory(reading, hardware.FreeMemory(16 * GiB, 9 * GiB, unified=True))
            mac = str(bar.query_one("#memory").render())
            bar.show_memory(reading, hardware.FreeMemory(64 * GiB, 40 * GiB, unified=False, gpus=((10 * GiB, 24 * GiB),)))
            pc = str(bar.query_one("#memory").render())
        return mac, pc

    mac, pc = asyncio.run(main())
    assert "Metal 5.0 GiB" in mac and "VRAM" not in mac
    assert "VRAM 5.0 GiB" in pc


def test_bad_recording_is_one_line():
    result = roost("doctor", machine="does-not-exist.json")
    one_line(result, "cannot read the machine description")
