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
