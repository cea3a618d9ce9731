"""Turn a conversation into the prompt text a model was trained on.

Chat templates are Jinja programs that arrive inside downloaded model files, so they are
untrusted code: they are rendered in Jinja's immutable sandbox, which refuses attribute
access to Python internals (the hole behind CVE-2024-34359) and any mutation of the
objects passed in. The environment mirrors the one Hugging Face tokenizers use, so
templates written for them render the same here.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime
from functools import lru_cache
from typing import Callable, Sequence

from roost.errors import TemplateError

# ChatML: what most small instruct models (SmolLM2, Qwen, many fine-tunes) use, and what
# llama.cpp's own server falls back to for a file with no template and no other sign.
CHATML = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


@dataclass(frozen=True)
class BuiltIn:
    """One of llama.cpp's built-in chat formats (src/llama-chat.cpp, `llm_chat_apply_template`),
    written as Jinja so that it renders in the same sandbox, through the same code, as a
    file's own template. tests/test_chat_template.py checks each against llama.cpp's own
    rendering of the same name (`llama_chat_apply_template`)."""

    label: str  # as the note names it: "using llama.cpp's built-in Gemma format"
    markers: tuple[str, ...]  # the special tokens the format is written in
    source: str


def _turns(open_: str, between: str, close: str, trim: bool = False, generation: str | None = None) -> str:
    """The common shape: each message as open + role + between + content + close."""
    content = "message['content'] | trim" if trim else "message['content']"
    prompt = open_ + "assistant" + between if generation is None else generation
    return (
        "{% for message in messages %}"
        f"{{{{ {open_!r} + message['role'] + {between!r} + {content} + {close!r} }}}}"
        "{% endfor %}"
        f"{{% if add_generation_prompt %}}{{{{ {prompt!r} }}}}{{% endif %}}"
    )


def _mistral_v7(space: str) -> str:
    # No generation prompt: a user turn's [/INST] is where the answer starts.
    return (
        "{% for message in messages %}"
        f"{{% if message['role'] == 'system' %}}{{{{ '[SYSTEM_PROMPT]{space}' + message['content'] + '[/SYSTEM_PROMPT]' }}}}"
        f"{{% elif message['role'] == 'user' %}}{{{{ '[INST]{space}' + message['content'] + '[/INST]' }}}}"
        f"{{% else %}}{{{{ '{space}' + message['content'] + '</s>' }}}}{{% endif %}}"
        "{% endfor %}"
    )


BUILT_IN = {
    "chatml": BuiltIn("ChatML", ("<|im_start|>", "<|im_end|>"), CHATML),
    "phi4": BuiltIn("Phi-4", ("<|im_start|>", "<|im_sep|>", "<|im_end|>"),
                    _turns("<|im_start|>", "<|im_sep|>", "<|im_end|>")),
    "phi3": BuiltIn("Phi-3", ("<|assistant|>", "<|end|>"), _turns("<|", "|>\n", "<|end|>\n")),
    # Gemma has no system turn: llama.cpp puts the system prompt at the top of the next user turn.
    "gemma": BuiltIn("Gemma", ("<start_of_turn>", "<end_of_turn>"), (
        "{% set ns = namespace(system='') %}"
        "{% for message in messages %}"
        "{% if message['role'] == 'system' %}{% set ns.system = ns.system + message['content'] | trim %}"
        "{% else %}"
        "{% set role = 'model' if message['role'] == 'assistant' else message['role'] %}"
        "{{ '<start_of_turn>' + role + '\n' }}"
        "{% if ns.system and role != 'model' %}{{ ns.system + '\n\n' }}{% set ns.system = '' %}{% endif %}"
        "{{ message['content'] | trim + '<end_of_turn>\n' }}"
        "{% endif %}"
        "{% endfor %}"
        "{% if add_generation_prompt %}{{ '<start_of_turn>model\n' }}{% endif %}"
    )),
    "llama3": BuiltIn("Llama 3", ("<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"),
                      _turns("<|start_header_id|>", "<|end_header_id|>\n\n", "<|eot_id|>", trim=True)),
    "llama4": BuiltIn("Llama 4", ("<|header_start|>", "<|header_end|>", "<|eot|>"),
                      _turns("<|header_start|>", "<|header_end|>\n\n", "<|eot|>", trim=True)),
    "mistral-v7": BuiltIn("Mistral v7", ("[SYSTEM_PROMPT]", "[INST]", "[/INST]"), _mistral_v7(" ")),
    "mistral-v7-tekken": BuiltIn("Mistral v7 Tekken", ("[SYSTEM_PROMPT]", "[INST]", "[/INST]"),
                                 _mistral_v7("")),
    "granite": BuiltIn("Granite", ("<|start_of_role|>", "<|end_of_role|>"), (
        "{% for message in messages %}"
        "{{ '<|start_of_role|>' + message['role'] + '<|end_of_role|>' }}"
        "{% if message['role'] == 'assistant_tool_call' %}{{ '<|tool_call|>' }}{% endif %}"
        "{{ message['content'] + '<|end_of_text|>\n' }}"
        "{% endfor %}"
        "{% if add_generation_prompt %}{{ '<|start_of_role|>assistant<|end_of_role|>' }}{% endif %}"
    )),
    "command-r": BuiltIn("Command R", ("<|START_OF_TURN_TOKEN|>", "<|USER_TOKEN|>", "<|CHATBOT_TOKEN|>"), (
        "{% set names = {'system': '<|SYSTEM_TOKEN|>', 'user': '<|USER_TOKEN|>', 'assistant': '<|CHATBOT_TOKEN|>'} %}"
        "{% for message in messages if message['role'] in names %}"
        "{{ '<|START_OF_TURN_TOKEN|>' + names[message['role']] + message['content'] | trim + '<|END_OF_TURN_TOKEN|>' }}"
        "{% endfor %}"
        "{% if add_generation_prompt %}{{ '<|START_OF_TURN_TOKEN|><|CHATBOT_TOKEN|>' }}{% endif %}"
    )),
    "deepseek3": BuiltIn("DeepSeek V3", ("<｜User｜>", "<｜Assistant｜>"), (
        "{% for message in messages %}"
        "{% if message['role'] == 'system' %}{{ message['content'] + '\n\n' }}"
        "{% elif message['role'] == 'user' %}{{ '<｜User｜>' + message['content'] }}"
        "{% elif message['role'] == 'assistant' %}{{ '<｜Assistant｜>' + message['content'] + '<｜end▁of▁sentence｜>' }}"
        "{% endif %}"
        "{% endfor %}"
        "{% if add_generation_prompt %}{{ '<｜Assistant｜>' }}{% endif %}"
    )),
}

# Which format a file without a template gets. llama.cpp itself names its format from the
# template's text (`llm_chat_detect_template`: "<start_of_turn>" in it means gemma, and so
# on); with no text to read, the same markers are looked for in the vocabulary, in the same
# order, with the file's architecture tried first where it names one family. A format is
# taken only when its markers are whole tokens: written out as text, in pieces, they would
# mean nothing to the model. Nothing found: ChatML, as llama-server does.
_BY_ARCHITECTURE = {
    "gemma": ("gemma",), "gemma2": ("gemma",), "gemma3": ("gemma",), "gemma3n": ("gemma",),
    "gemma3_text": ("gemma",),  # MLX's config.json name
    "phi3": ("phi4", "phi3"),  # Phi-4 (14B) is llama.cpp's phi3 architecture in ChatML with <|im_sep|>
    "llama4": ("llama4",),
    "granite": ("granite",), "granitemoe": ("granite",), "granitehybrid": ("granite",),
    "command-r": ("command-r",), "cohere": ("command-r",), "cohere2": ("command-r",),
}
_BY_VOCABULARY = ("deepseek3", "phi4", "chatml", "mistral-v7", "phi3", "gemma", "llama3", "granite", "llama4",
                  "command-r")


def built_in(architecture: str | None, is_token: Callable[[str], bool], tokenizer_pre: str | None = None) -> str:
    """The name of llama.cpp's built-in format for a model with no chat template.
    tokenizer_pre: the GGUF's tokenizer.ggml.pre, which tells Mistral's two v7 formats
    apart (Tekken writes no space after [INST]); unknown, Tekken, which every Mistral
    model with [SYSTEM_PROMPT] since Small 3 (2501) uses."""
    for name in (*_BY_ARCHITECTURE.get(architecture or "", ()), *_BY_VOCABULARY):
        if all(is_token(marker) for marker in BUILT_IN[name].markers):
            if name == "mistral-v7" and tokenizer_pre in (None, "tekken"):
                return "mistral-v7-tekken"
            return name
    return "chatml"


def origin(name: str | None) -> str:
    """What EngineInfo.chat_template says: "model", or the built-in format that stands in."""
    return "model" if name is None else f"fallback: {name} (the file has none)"


def missing_note(chat_template: str, model: str) -> str | None:
    """The line run and chat show once for a model whose file has no template: a base model,
    most often, which continues text rather than answering."""
    if not chat_template.startswith("fallback: "):
        return None
    name = chat_template.removeprefix("fallback: ").split(" ", 1)[0]
    label = BUILT_IN[name].label if name in BUILT_IN else name
    return (f"{model} has no chat template; using llama.cpp's built-in {label} format (it may be a base "
            "model, which continues text rather than chatting)")


def _raise_exception(message):
    raise TemplateError(f"the chat template refused the conversation: {message}")


def _tojson(value, indent=None, ensure_ascii=False, sort_keys=False):
    return json.dumps(value, indent=indent, ensure_ascii=ensure_ascii, sort_keys=sort_keys)


def _strftime_now(fmt):
    return datetime.now().strftime(fmt)


@lru_cache(maxsize=1)
def _environment():
    from jinja2.ext import loopcontrols
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    env = ImmutableSandboxedEnvironment(
        trim_blocks=True, lstrip_blocks=True, extensions=[loopcontrols]
    )
    env.filters["tojson"] = _tojson
    env.globals["raise_exception"] = _raise_exception
    env.globals["strftime_now"] = _strftime_now
    return env


@lru_cache(maxsize=8)
def _compile(source: str):
    from jinja2 import TemplateSyntaxError

    try:
        return _environment().from_string(source)
    except TemplateSyntaxError as e:
        raise TemplateError(f"the model's chat template does not parse (line {e.lineno}: {e.message})") from None


@lru_cache(maxsize=8)
def takes_tools(source: str) -> bool:
    """Whether a template reads the `tools` variable: one that does not would drop them."""
    from jinja2 import TemplateSyntaxError, meta

    try:
        return "tools" in meta.find_undeclared_variables(_environment().parse(source))
    except TemplateSyntaxError:
        return False  # rendering says what is wrong with it


# What a template that takes no tools is given in its system prompt (llama-server does the
# same for such a template, in its own words). A model with no call format of its own (SmolLM2's
# template, most built-in formats) is taught Hermes's, as Qwen2.5's template words it, and
# its calls are read back out of <tool_call> tags (tool_calls.HERMES); one with a format
# its template writes but does not teach (DeepSeek V3.1's) is shown the tools alone.
_TOOLS_LISTED = ("# Tools\n\nYou may call one or more functions to assist with the user query.\n\n"
                 "You are provided with function signatures within <tools></tools> XML tags:\n"
                 "<tools>\n{tools}\n</tools>")
_HERMES_TAUGHT = ("\n\nFor each function call, return a json object with function name and arguments within "
                  "<tool_call></tool_call> XML tags:\n<tool_call>\n"
                  '{"name": <function-name>, "arguments": <args-json-object>}\n</tool_call>')


def tools_listed(messages: Sequence[dict], tools: Sequence[dict], hermes: bool) -> list[dict]:
    """The conversation with its tools listed at the end of the system prompt (its own,
    where it has one), for a template that takes no tools. hermes: the model is taught
    Hermes's format, and the conversation's calls and results are written in it as plain
    turns (the template knows no such turns): each call as the model would have written
    it, each run of tool results as one user turn (so that templates wanting user and
    assistant turns to alternate still render)."""
    listing = _TOOLS_LISTED.format(tools="\n".join(_tojson(tool) for tool in tools))
    out: list[dict] = [dict(m) for m in messages]
    if hermes:
        listing += _HERMES_TAUGHT
        out = []
        for i, m in enumerate(messages):
            m = dict(m)
            if m["role"] == "tool":
                result = f"<tool_response>\n{m['content']}\n</tool_response>"
                if i and messages[i - 1]["role"] == "tool":
                    out[-1]["content"] += "\n" + result
                else:
                    out.append({"role": "user", "content": result})
                continue
            calls = m.pop("tool_calls", None) or ()
            written = [f'<tool_call>\n{{"name": {_tojson(c["function"]["name"])}, '
                       f'"arguments": {c["function"]["arguments"]}}}\n</tool_call>' for c in calls]
            m["content"] = "\n".join(filter(None, (m["content"], *written)))
            out.append(m)
    if out and out[0]["role"] == "system":
        return [{**out[0], "content": out[0]["content"] + "\n\n" + listing}, *out[1:]]
    return [{"role": "system", "content": listing}, *out]


@lru_cache(maxsize=8)
def _call_writing(source: str) -> tuple[bool, bool]:
    """How a template writes a turn of calls, tried on a sample call as llama.cpp's minja
    does (`requires_object_arguments`, `requires_non_null_content`): (whether it wants the
    arguments as an object, where most write them with tojson, which would quote JSON text
    again; whether it wants a turn of calls alone to have null content, as DeepSeek R1's
    does to write the calls at all). Else: JSON text, as the API sends it, and "" content."""
    def written(arguments, content) -> str:
        call = {"id": "call_1", "type": "function", "function": {"name": "probe", "arguments": arguments}}
        try:
            return _compile(source).render(messages=[{"role": "user", "content": "x"},
                                                     {"role": "assistant", "content": content, "tool_calls": [call]}],
                                           bos_token="", eos_token="", add_generation_prompt=False)
        except Exception:  # a template that cannot render the sample: it is not the way
            return ""

    for content in ("", None):
        as_text = written('{"argument_needle": "x"}', content)
        if '"argument_needle":' in as_text or "'argument_needle':" in as_text:  # written as it is
            return False, content is None
        if "argument_needle" in written({"argument_needle": "x"}, content):  # written any way (XML writes each key)
            return True, content is None
    return False, False


def _template_message(message: dict, source: str) -> dict:
    """A message as its template reads it: a turn of calls as the template writes them
    (`_call_writing`)."""
    m = dict(message)
    if not m.get("tool_calls"):
        return m
    object_arguments, null_content = _call_writing(source)
    if null_content and not m["content"]:
        m["content"] = None
    if object_arguments:
        m["tool_calls"] = [{**c, "function": {**c["function"], "arguments": json.loads(c["function"]["arguments"])}}
                           for c in m["tool_calls"]]
    return m


def render(
    source: str,
    messages: Sequence[dict],
    *,
    bos_token: str = "",
    eos_token: str = "",
    add_generation_prompt: bool = True,
    variables: dict | None = None,
    tools: Sequence[dict] | None = None,
) -> str:
    """`variables`: more for the template to read (enable_thinking, reasoning_effort...);
    they cannot replace the conversation or the special tokens. `tools`: OpenAI's list
    ({"type": "function", "function": {...}}), which templates that take tools read as
    `tools` (`takes_tools`)."""
    from jinja2.exceptions import SecurityError, TemplateError as JinjaError

    template = _compile(source)
    try:
        return template.render({
            **(variables or {}),
            **({"tools": [dict(t) for t in tools]} if tools else {}),
            "messages": [_template_message(m, source) for m in messages],
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
