"""Chat templates are untrusted code from model files: rendered, never run."""

import pytest

from roost.backends import chat_template
from roost.errors import TemplateError

CHAT = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}]

# Each tries what CVE-2024-34359 did: reach Python internals from a template.
HOSTILE = {
    "subclasses": "{{ ''.__class__.__mro__[1].__subclasses__() }}",
    "globals": "{{ cycler.__init__.__globals__.os.popen('touch {canary}').read() }}",
    "mutation": "{% set _ = messages.append({'role': 'user', 'content': 'x'}) %}{{ messages|length }}",
    "format": "{{ '{0.__class__.__init__.__globals__}'.format(raise_exception) }}",
}


def test_chatml_renders_roles_and_generation_prompt():
    text = chat_template.render(chat_template.CHATML, CHAT)
    assert text == (
        "<|im_start|>system\nBe brief.<|im_end|>\n"
        "<|im_start|>user\nHi<|im_end|>\n"
        "<|im_start|>assistant\n"
    )


def test_hugging_face_helpers_are_available():
    source = (
        "{{ bos_token }}{% for m in messages %}{% if m.role == 'system' %}{% continue %}{% endif %}"
        "{{ m | tojson }}{% endfor %}{{ strftime_now('%Y') | length }}"
    )
    assert chat_template.render(source, CHAT, bos_token="<s>") == '<s>{"role": "user", "content": "Hi"}4'


def test_template_may_refuse_a_conversation():
    source = "{% if messages[0].role != 'user' %}{{ raise_exception('Conversation must start with user') }}{% endif %}"
    with pytest.raises(TemplateError, match="must start with user"):
        chat_template.render(source, CHAT)


@pytest.mark.parametrize("name", sorted(HOSTILE))
def test_hostile_templates_are_stopped(name, tmp_path):
    canary = tmp_path / "canary"
    with pytest.raises(TemplateError, match="unsafe|failed"):
        chat_template.render(HOSTILE[name].replace("{canary}", str(canary)), CHAT)
    assert not canary.exists()


def test_broken_template_says_where():
    with pytest.raises(TemplateError, match="line 1"):
        chat_template.render("{% for m in messages %}", CHAT)


# -- llama.cpp's built-in formats, for a file with no template ---------------------------

# What tells the formats apart: turns from every role, a system prompt that Gemma folds
# into the next user turn, spaces that some formats trim, a second system prompt.
CONVERSATIONS = [
    [{"role": "system", "content": " Be brief. "}, {"role": "user", "content": "Hi "},
     {"role": "assistant", "content": " Hello.\n"}, {"role": "user", "content": "Why?"}],
    [{"role": "user", "content": "Hi\n"}],
    [{"role": "system", "content": "a"}, {"role": "system", "content": "b"}, {"role": "user", "content": "c"}],
]


def llama_cpp_renders(name: str, messages, add_generation_prompt: bool) -> str:
    """llama.cpp's own rendering of its built-in format `name` (llama_chat_apply_template
    takes a name as well as a template's text)."""
    import ctypes

    import llama_cpp

    parts = [(m["role"].encode(), m["content"].encode()) for m in messages]
    chat = (llama_cpp.llama_chat_message * len(parts))(*parts)
    size = llama_cpp.llama_chat_apply_template(name.encode(), chat, len(parts), add_generation_prompt, None, 0)
    assert size >= 0, f"llama.cpp does not know the format {name!r}"
    buf = ctypes.create_string_buffer(size + 1)
    llama_cpp.llama_chat_apply_template(name.encode(), chat, len(parts), add_generation_prompt, buf, size + 1)
    return buf.raw[:size].decode()


@pytest.mark.parametrize("add_generation_prompt", [True, False])
@pytest.mark.parametrize("name", sorted(chat_template.BUILT_IN))
def test_built_in_formats_render_as_llama_cpp_does(name, add_generation_prompt):
    for messages in CONVERSATIONS:
        ours = chat_template.render(chat_template.BUILT_IN[name].source, messages,
                                    add_generation_prompt=add_generation_prompt)
        assert ours == llama_cpp_renders(name, messages, add_generation_prompt)


# Each family's turn markers, a few of its special tokens (Gemma 3, Llama 3.x, Qwen,
# Phi-3.5-mini, Phi-4, Mistral Small 3's Tekken): written from those tokenizers as
# llama.cpp's detection reads their templates, not re-read from the Hub (it cannot be
# reached from here); the engine tests run a real vocabulary (tests/test_no_template.py).
GEMMA = {"<bos>", "<eos>", "<start_of_turn>", "<end_of_turn>"}
LLAMA3 = {"<|begin_of_text|>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"}
QWEN = {"<|endoftext|>", "<|im_start|>", "<|im_end|>"}
PHI3 = {"<|assistant|>", "<|end|>", "<|user|>", "<|system|>", "<|endoftext|>"}
PHI4 = {"<|im_start|>", "<|im_sep|>", "<|im_end|>", "<|endoftext|>"}
MISTRAL = {"<s>", "</s>", "[INST]", "[/INST]", "[SYSTEM_PROMPT]", "[/SYSTEM_PROMPT]"}


@pytest.mark.parametrize("architecture, vocabulary, pre, expected", [
    ("gemma3", GEMMA, "default", "gemma"),
    (None, GEMMA, None, "gemma"),  # the vocabulary alone says it
    ("llama", LLAMA3, "llama-bpe", "llama3"),
    ("qwen3", QWEN, "qwen2", "chatml"),
    ("phi3", PHI3, "default", "phi3"),
    ("phi3", PHI4, "default", "phi4"),
    # A vocabulary with both: the architecture decides (and ChatML is first without one).
    ("phi3", PHI3 | QWEN, "default", "phi3"),
    (None, PHI3 | QWEN, None, "chatml"),
    ("llama", MISTRAL, "tekken", "mistral-v7-tekken"),
    ("llama", MISTRAL, None, "mistral-v7-tekken"),  # an MLX folder does not say
    ("llama", MISTRAL, "default", "mistral-v7"),
    # An architecture whose markers the vocabulary lacks: they would be text in pieces.
    ("gemma3", QWEN, "qwen2", "chatml"),
    ("llama", {"<s>", "</s>"}, "default", "chatml"),  # no sign at all: llama-server's default
])
def test_built_in_format_comes_from_architecture_and_vocabulary(architecture, vocabulary, pre, expected):
    assert chat_template.built_in(architecture, vocabulary.__contains__, pre) == expected


def test_the_note_names_the_format_and_says_base_model():
    origin = chat_template.origin("gemma")
    assert origin == "fallback: gemma (the file has none)"
    assert chat_template.missing_note(origin, "gemma-3-1b-pt.gguf") == (
        "gemma-3-1b-pt.gguf has no chat template; using llama.cpp's built-in Gemma format "
        "(it may be a base model, which continues text rather than chatting)")
    assert chat_template.missing_note(chat_template.origin(None), "x.gguf") is None
