"""Chat templates: the model's own Jinja template, rendered in jinja2's immutable sandbox."""
from __future__ import annotations

import hashlib
from datetime import datetime
from functools import lru_cache

from .errors import ChatTemplateError


# Used when a GGUF carries no tokenizer.chat_template: the format its model family was trained on
# (as Ollama ships templates beside models). Gemma's turns, system text folded into the first user turn.
BUILTIN = {
    "gemma3": (
        "{{ bos_token }}{% set ns = namespace(sys='') %}"
        "{% for m in messages %}{% if m['role'] == 'system' %}{% set ns.sys = m['content'] + '\\n\\n' %}"
        "{% else %}<start_of_turn>{{ 'model' if m['role'] == 'assistant' else m['role'] }}\n"
        "{{ ns.sys }}{% set ns.sys = '' %}{{ m['content'] | trim }}<end_of_turn>\n{% endif %}{% endfor %}"
        "{% if add_generation_prompt %}<start_of_turn>model\n{% endif %}"
    ),
}


def template_for(metadata: dict) -> str | None:
    """The model's own template, else the built-in one for its architecture, else None."""
    return metadata.get("tokenizer.chat_template") or BUILTIN.get(metadata.get("general.architecture"))


def _raise(message: str):
    raise ChatTemplateError(f"the chat template refused the conversation: {message}")


def _bytecode_cache():
    """jinja2's cache of compiled templates, $LOCALLLM_HOME/templates (None where it cannot be made).
    A template loaded from it skips jinja2's lexer and compiler (Qwen2.5's template: 14 ms in a fresh
    process). jinja2 checks each entry against the source and Python version."""
    from jinja2 import FileSystemBytecodeCache

    from .hub.store import default_home

    folder = default_home() / "templates"
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError:
        return None
    return FileSystemBytecodeCache(str(folder))


@lru_cache(maxsize=8)
def _compile(source: str):
    from jinja2 import FunctionLoader, TemplateError
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, bytecode_cache=_bytecode_cache(),
                                        loader=FunctionLoader(lambda name: source))
    env.globals["raise_exception"] = _raise
    env.globals["strftime_now"] = lambda fmt: datetime.now().strftime(fmt)
    env.filters["tojson"] = _tojson
    # the options compile into the code, so they name the cache entry along with the source
    name = hashlib.sha256(f"immutable-sandbox|trim|lstrip|{source}".encode()).hexdigest()
    try:
        try:
            return env.get_template(name)
        except OSError:                # the cache folder exists but cannot be written
            env.bytecode_cache = None
            return env.get_template(name)
    except TemplateError as e:
        raise ChatTemplateError(f"the model's chat template does not parse: {e}") from None


def _tojson(value, indent=None, ensure_ascii=False, **_):
    import json
    return json.dumps(value, indent=indent, ensure_ascii=ensure_ascii)


def render(source: str | None, messages: list[dict], add_generation_prompt: bool = True,
           bos_token: str = "", eos_token: str = "", **extra) -> str:
    """The prompt text for `messages` ([{"role": ..., "content": ...}, ...])."""
    if not source:
        raise ChatTemplateError("this model has no chat template (tokenizer.chat_template); "
                                "send a raw prompt instead (--raw / llm.generate)")
    for m in messages:
        if not isinstance(m, dict) or "role" not in m or "content" not in m:
            raise ChatTemplateError(f"each message needs 'role' and 'content'; got {m!r}")
    from jinja2 import TemplateError

    try:
        return _compile(source).render(messages=messages, add_generation_prompt=add_generation_prompt,
                                       bos_token=bos_token, eos_token=eos_token, **extra)
    except ChatTemplateError:
        raise
    except (TemplateError, TypeError, ValueError, KeyError, IndexError, AttributeError) as e:
        raise ChatTemplateError(f"the model's chat template failed to render: {type(e).__name__}: {e}") from None
