"""A model file without a chat template (a base model, most often): the format llama.cpp has
built in for its architecture and vocabulary, and one note that says so, in roost run and
in the chat. The formats themselves are checked against llama.cpp's own rendering in
test_chat_template.py; here real files run through the real engines."""

import json
import shutil

import pytest
from gguf_files import with_vocabulary
from pilot import chat, notes
from test_chat_template import llama_cpp_renders
from test_serve import Serve

from roost.backends import chat_template, load
from roost.backends.base import Done, Params, Plan

CONVERSATION = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "What is the capital of Japan?"}]

# The demo model (llama architecture, SmolLM2's vocabulary) with its template taken out,
# and with its turn tokens spelled as another family's: the same weights, so each loads
# and runs, and only what is read from the vocabulary changes.
VOCABULARIES = {
    "chatml": {},
    "gemma": {"<|im_start|>": "<start_of_turn>", "<|im_end|>": "<end_of_turn>"},
    "llama3": {"<|im_start|>": "<|start_header_id|>", "<|im_end|>": "<|eot_id|>", "<repo_name>": "<|end_header_id|>"},
}
NOTE = "has no chat template"


@pytest.fixture(scope="module")
def plain(tmp_path_factory, demo_gguf):
    """Each vocabulary's file, made once: {format name: path}."""
    folder = tmp_path_factory.mktemp("no-template")
    return {name: with_vocabulary(demo_gguf, str(folder / f"{name}-base.gguf"), renamed)
            for name, renamed in VOCABULARIES.items()}


@pytest.mark.parametrize("name", sorted(VOCABULARIES))
def test_the_prompt_is_llama_cpps_own_format_for_the_vocabulary(plain, name):
    engine = load(plain[name], Plan(n_ctx=2048))
    try:
        assert engine.info().chat_template == f"fallback: {name} (the file has none)"
        prompt = engine._prompt
        expected = prompt.text_tokens(llama_cpp_renders(name, CONVERSATION, True))
        assert prompt.chat(CONVERSATION, Params()).tokens == expected
        done = list(engine.stream(CONVERSATION, Params(temperature=0, max_tokens=4)))[-1]
        assert isinstance(done, Done) and done.stats.prompt_tokens == len(expected)
    finally:
        engine.close()


def test_roost_run_says_once_which_format_and_that_it_may_be_a_base_model(plain, demo_gguf, roost_here):
    result = roost_here("run", plain["gemma"], "hi", "-t", "0", "-n", "4", "--json")
    assert result.returncode == 0, result.stderr
    said = [line for line in result.stderr.splitlines() if NOTE in line]
    assert len(said) == 1
    assert said[0].startswith("roost: note: ") and "llama.cpp's built-in Gemma format" in said[0]
    assert "may be a base model" in said[0]
    # stdout stays the answer alone; --json names the format in the engine's info.
    assert json.loads(result.stdout)["engine"]["chat_template"] == "fallback: gemma (the file has none)"
    # A file with its own template: nothing said.
    assert NOTE not in roost_here("run", demo_gguf, "hi", "-t", "0", "-n", "4").stderr


def test_roost_serve_says_it_once_before_serving(plain):
    server = Serve(plain["gemma"], "--port", "0", "--ctx", "512")
    try:
        said = [line for line in server.before if NOTE in line]
        assert len(said) == 1 and "built-in Gemma format" in said[0] and said[0].startswith("roost: note: ")
    finally:
        server.stop()
    # A file with its own template: nothing said before serving.
    server = Serve("demo", "--port", "0", "--ctx", "512")
    assert not any(NOTE in line for line in server.before)
    server.stop()


def test_the_chat_says_it_once_when_the_model_loads(plain):
    async def scenario(app, screen, pilot):
        said = [n for n in notes(app) if NOTE in n]
        assert said == [chat_template.missing_note(screen.engine_info.chat_template, "SmolLM2")]
        assert "Llama 3 format" in said[0]

    chat(scenario, plain["llama3"])


@pytest.mark.slow
def test_mlx_reads_the_same_from_its_tokenizer(tmp_path, demo_mlx):
    """MLX's folder without a template, its turn tokens Gemma's: the same choice."""
    path = tmp_path / "gemma-base-mlx"
    shutil.copytree(demo_mlx, path)
    config = json.loads((path / "tokenizer_config.json").read_text())
    config.pop("chat_template", None)
    (path / "tokenizer_config.json").write_text(json.dumps(config))
    (path / "chat_template.jinja").unlink(missing_ok=True)
    for name in ("tokenizer.json", "tokenizer_config.json"):
        text = (path / name).read_text()
        for old, new in VOCABULARIES["gemma"].items():
            text = text.replace(json.dumps(old), json.dumps(new))
        (path / name).write_text(text)
    engine = load(str(path), Plan(n_ctx=2048), engine="mlx")
    try:
        assert engine.info().chat_template == "fallback: gemma (the file has none)"
        prompt = engine._prompt
        assert prompt.chat(CONVERSATION, Params()).tokens == prompt.text_tokens(
            llama_cpp_renders("gemma", CONVERSATION, True))
    finally:
        engine.close()
