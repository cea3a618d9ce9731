"""/metrics (#24): Prometheus's text format, parsed by prometheus_client's own parser, after
real answers from the demo model on a real server on 127.0.0.1; the JSON roost's clients
ask for; and each NVIDIA GPU's utilization, power and temperature, from a recorded machine
(ROOST_MACHINE: NVML as tests/machines recorded it), in /metrics and the chat's status bar."""

import os
from dataclasses import replace

import httpx2
import openai
import pytest
from prometheus_client.parser import text_string_to_metric_families

from conftest import ROOT, served
from test_serve_pool import ONE_FITS, ask, other_gguf, start  # noqa: F401 (other_gguf: a fixture)
from pilot import ask_and_wait, chat, drive, until
from replay import ReplayEngine
from roost.backends import connect, load
from roost.backends.base import Params, Plan
from roost.serve.engine_slot import TTFT_BUCKETS_S

KEY = "metrics-key"
CAPITAL = [{"role": "user", "content": "What is the capital of Japan?"}]
H100 = os.path.join(ROOT, "tests", "machines", "h100.json")  # NVML: 0% busy, 73.144 W, 36 °C
CPU_ONLY = os.path.join(ROOT, "tests", "machines", "cpu_only.json")


@pytest.fixture(scope="module")
def url(demo_gguf):
    engine = load(demo_gguf, Plan(n_ctx=512))
    try:
        with served(engine, api_key=KEY) as url:
            yield url
    finally:
        engine.close()


def scrape(url, **options) -> httpx2.Response:
    response = httpx2.get(url + "/metrics", headers={"Authorization": f"Bearer {KEY}", **options.pop("headers", {})},
                          timeout=30, **options)
    assert response.status_code == 200
    return response


def samples(text: str) -> dict:
    """{(sample name, its labels as sorted pairs): value}, as prometheus_client parses them."""
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def test_prometheus_text_counts_what_was_answered(url, monkeypatch):
    monkeypatch.setenv("ROOST_MACHINE", CPU_ONLY)  # no NVIDIA GPU
    api = openai.OpenAI(base_url=f"{url}/v1", api_key=KEY, max_retries=0, timeout=60)
    whole = api.chat.completions.create(model="demo", messages=CAPITAL, temperature=0, max_tokens=8)
    streamed = list(api.chat.completions.create(model="demo", messages=CAPITAL, temperature=0, max_tokens=5,
                                                stream=True, stream_options={"include_usage": True}))
    usages = [whole.usage, streamed[-1].usage]

    response = scrape(url)  # what curl and scrapers get: no Accept, no query
    assert response.headers["content-type"].startswith("text/plain; version=")
    got, model = samples(response.text), (("model", "demo"),)
    assert got[("roost_requests_total", (*model, ("outcome", "answered")))] == 2
    for outcome in ("cancelled", "refused", "failed"):
        assert got[("roost_requests_total", (*model, ("outcome", outcome)))] == 0
    assert got[("roost_generated_tokens_total", model)] == sum(u.completion_tokens for u in usages) == 13
    assert got[("roost_prompt_tokens_total", model)] == sum(u.prompt_tokens for u in usages)
    assert got[("roost_prompt_cached_tokens_total", model)] == usages[1].prompt_tokens_details.cached_tokens > 0
    assert got[("roost_prefill_seconds_total", model)] > 0 and got[("roost_decode_seconds_total", model)] > 0
    # The histogram: both answers counted, buckets from 50 ms to a minute, cumulative.
    assert got[("roost_time_to_first_token_seconds_count", model)] == 2
    assert got[("roost_time_to_first_token_seconds_sum", model)] > 0
    buckets = [got[("roost_time_to_first_token_seconds_bucket", (("le", le), *model))]
               for le in (*(str(b) for b in TTFT_BUCKETS_S), "+Inf")]
    assert buckets == sorted(buckets) and buckets[-1] == 2 and TTFT_BUCKETS_S[0] == 0.05 and TTFT_BUCKETS_S[-1] == 60
    assert got[("roost_requests_running", model)] == 0 and got[("roost_requests_waiting", model)] == 0
    assert got[("roost_engine_crashes_total", model)] == 0 and got[("roost_model_ready", model)] == 1
    assert got[("roost_model_rss_bytes", model)] > 50 * 2**20
    assert got[("roost_model_loads_total", ())] == 1 and got[("roost_model_unloads_total", ())] == 0
    assert got[("roost_uptime_seconds", ())] > 0
    from roost import __version__
    assert got[("roost_info", (("version", __version__),))] == 1
    assert not [name for name, _ in got if name.startswith("roost_gpu_")]  # absent, not zero, with no GPU

    # The JSON stays, by Accept or by query, with the same counts.
    for options in ({"headers": {"Accept": "application/json"}}, {"params": {"format": "json"}}):
        data = scrape(url, **options).json()
        assert data["requests"]["answered"] == 2 and data["models"]["demo"]["requests"]["answered"] == 2
        assert data["tokens"]["generated"] == 13 and data["gpu"] == [] and data["loads"] == 1


def test_gpu_gauges_from_nvml(url, monkeypatch):
    monkeypatch.setenv("ROOST_MACHINE", H100)
    got = samples(scrape(url).text)
    gpu = (("gpu", "0"), ("name", "NVIDIA H100 80GB HBM3"))
    assert got[("roost_gpu_utilization_ratio", gpu)] == 0
    assert got[("roost_gpu_power_watts", gpu)] == pytest.approx(73.144)
    assert got[("roost_gpu_temperature_celsius", gpu)] == 36
    assert scrape(url, params={"format": "json"}).json()["gpu"] == [
        {"index": 0, "name": "NVIDIA H100 80GB HBM3", "utilization_pct": 0, "power_w": 73.144, "temperature_c": 36}]


class CudaReplay(ReplayEngine):
    """A recorded answer from an engine that says its model is on a CUDA GPU."""

    def info(self):
        return replace(super().info(), device="CUDA")


def memory_line(screen) -> str:
    from roost.tui.widgets.status import StatusBar

    return str(screen.query_one(StatusBar).query_one("#memory").render())


def test_status_bar_shows_the_gpu_at_work(monkeypatch):
    """What the GPU is doing and its free VRAM, from one NVML query a refresh."""
    from roost.machine import hardware
    from roost.tui.widgets.status import StatusBar

    monkeypatch.setenv("ROOST_MACHINE", os.path.join(ROOT, "tests", "machines", "rtx4090.json"))
    asked, shown = [], []
    nvidia, show_memory = hardware.RecordedProbe.nvidia, StatusBar.show_memory
    monkeypatch.setattr(hardware.RecordedProbe, "nvidia", lambda self: asked.append(1) or nvidia(self))
    monkeypatch.setattr(StatusBar, "show_memory", lambda self, *a: shown.append(len(asked)) or show_memory(self, *a))

    async def scenario(app, screen, pilot):
        await until(pilot, lambda: memory_line(screen).startswith("GPU 3% 28W 41°C · RSS") and len(shown) >= 3)
        assert " · GPU0 " in memory_line(screen)  # the free VRAM, from the same reading
        assert {b - a for a, b in zip(shown, shown[1:])} == {1}  # NVML asked once between two refreshes

    chat(scenario, CudaReplay(gap_s=0), size=(120, 30))


@pytest.mark.slow  # a TUI session
def test_status_bar_shows_a_servers_gpu(url, monkeypatch):
    monkeypatch.setenv("ROOST_MACHINE", H100)  # the server's NVML (in this process), not the client's
    engine = connect(url, api_key=KEY)
    from roost.tui.app import RoostApp
    from roost.tui.screens.chat import ChatScreen

    app = RoostApp(lambda: engine, "demo at server", Params(temperature=0, max_tokens=4))
    host = url.split("//", 1)[1]

    async def scenario(pilot):
        await until(pilot, lambda: isinstance(app.screen, ChatScreen) and app.screen.session is not None)
        await ask_and_wait(app.screen, pilot, "Hi")
        await until(pilot, lambda: memory_line(app.screen).startswith(f"{host}: GPU 0% 73W 36°C · RSS"))

    try:
        drive(app, scenario, size=(120, 30))
    finally:
        engine.close()


@pytest.mark.slow
def test_a_pool_counts_loads_and_unloads_and_each_model_apart(tmp_path_factory, other_gguf):
    server = start("--max-memory", ONE_FITS, "--keep-alive", "-1", tmp_path_factory=tmp_path_factory)
    try:
        got = samples(httpx2.get(server.url + "/metrics", timeout=30).text)  # empty: nothing loaded yet
        assert got[("roost_model_loads_total", ())] == 0 and not [n for n, _ in got if n == "roost_requests_total"]
        ask(server.url, "demo")
        ask(server.url, other_gguf)  # room for one: the demo is unloaded first
        got = samples(httpx2.get(server.url + "/metrics", timeout=30).text)
        assert got[("roost_model_loads_total", ())] == 2 and got[("roost_model_unloads_total", ())] == 1
        answered = {labels: value for (name, labels), value in got.items()
                    if name == "roost_requests_total" and ("outcome", "answered") in labels}
        assert answered == {(("model", other_gguf), ("outcome", "answered")): 1}  # the demo's went with it
        data = httpx2.get(server.url + "/metrics", params={"format": "json"}, timeout=30).json()
        assert data["model"] is None and data["requests"] is None and list(data["models"]) == [other_gguf]
    finally:
        server.stop()
