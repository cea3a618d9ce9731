"""Turn a conversation into the prompt text a model was trained on.

Chat templates are Jinja programs that arrive inside downloaded model files, so they are
untrusted code: they are rendered in Jinja's immutable sandbox, which refuses attribute
access to Python internals (the hole behind CVE-2024-34359) and any mutation of the
objects passed in. The environment mirrors the one Hugging Face tokenizers use, so
templates written for them render the same here.
"""

from __future__ import annotations

import json
from datetime import datetime
from functools import lru_cache
from typing import Sequence

from roost.errors import TemplateError

# For models whose file carries no template. ChatML is what most small instruct models
# (SmolLM2, Qwen, many fine-tunes) use; the engine reports when this stands in.
CHATML = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


def _raise_exception(message):
    raise TemplateError(f"the chat template refused the conversation: {message}")


def _tojson(value, indent=None, ensure_ascii=False, sort_keys=False):
    return json.dumps(value, indent=indent, ensure_ascii=ensure_ascii, sort_keys=sort_keys)


def _strftime_now(fmt):
    return datetime.now().strftime(fmt)


@lru_cache(maxsize=8)
def _compile(source: str):
    from jinja2 import TemplateSyntaxError
    from jinja2.ext import loopcontrols
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    env = ImmutableSandboxedEnvironment(
        trim_blocks=True, lstrip_blocks=True, extensions=[loopcontrols]
    )
    env.filters["tojson"] = _tojson
    env.globals["raise_exception"] = _raise_exception
    env.globals["strftime_now"] = _strftime_now
    try:
        return env.from_string(source)
    except TemplateSyntaxError as e:
        raise TemplateError(f"the model's chat template does not parse (line {e.lineno}: {e.message})") from None


def render(
    source: str,
    messages: Sequence[dict],
    *,
    bos_token: str = "",
    eos_token: str = "",
    add_generation_prompt: bool = True,
    variables: dict | None = None,
) -> str:
    """`variables`: more for the template to read (enable_thinking, reasoning_effort...);
    they cannot replace the conversation or the special tokens."""
    from jinja2.exceptions import SecurityError, TemplateError as JinjaError

    template = _compile(source)
    try:
        return template.render({
            **(variables or {}),
            "messages": [dict(m) for m in messages],
            "bos_token": bos_token,
            "eos_token": eos_token,
            "add_generation_prompt": add_generation_prompt,
        })
    except SecurityError as e:
        raise TemplateError(f"the model's chat template tried something unsafe and was stopped: {e}") from None
    except TemplateError:
        raise
    except (JinjaError, TypeError, ValueError, KeyError, IndexError, AttributeError) as e:
        raise TemplateError(f"the model's chat template failed: {type(e).__name__}: {e}") from None
