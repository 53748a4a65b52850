"""Render a Hugging Face chat template (Jinja) into a prompt string, the way transformers does.

Chat templates come from downloaded model folders, so they are untrusted code. They run in
jinja2's immutable sandbox (no dunder attributes, no mutation of inputs, no imports or files),
see only plain copies of the inputs, and run under a step budget, a deadline and size limits so
that a hostile or buggy template ends in a ``TokenizerError`` instead of hanging or eating memory.
"""

import contextvars
import functools
import json
import re
import time
from collections.abc import Mapping
from datetime import datetime
from typing import Any

import jinja2
import jinja2.ext
from jinja2.sandbox import ImmutableSandboxedEnvironment

from ember.errors import TokenizerError

# Generous for real conversations (the Qwen3 template takes ~20 steps a message), tiny for a
# runaway loop. A step is a call, an attribute or item lookup, or one element of a range().
MAX_STEPS = 10_000_000
MAX_SECONDS = 10.0
# Largest string or sequence a template may build in one operation, and largest output.
MAX_SIZE = 16_000_000

_budget: contextvars.ContextVar["_Budget"] = contextvars.ContextVar("ember_chat_template_budget")


class _Budget:
    """What one render may still spend."""

    def __init__(self) -> None:
        self.steps_left = MAX_STEPS
        self.deadline = time.monotonic() + MAX_SECONDS

    def spend(self, steps: int = 1) -> None:
        self.steps_left -= steps
        if self.steps_left < 0:
            raise jinja2.exceptions.SecurityError(f"the template ran more than {MAX_STEPS} steps")
        if time.monotonic() > self.deadline:
            raise jinja2.exceptions.SecurityError(f"the template ran longer than {MAX_SECONDS:g} s")


def _spend(steps: int = 1) -> None:
    budget = _budget.get(None)
    if budget is not None:
        budget.spend(steps)


def _check_size(value: Any) -> Any:
    if isinstance(value, (str, list, tuple, dict)) and len(value) > MAX_SIZE:
        raise jinja2.exceptions.SecurityError(f"the template built a value longer than {MAX_SIZE}")
    return value


def _check_args(args: Any) -> None:
    """Refuse huge numbers as arguments: they are how 'x'.ljust(10**10) and friends eat memory."""
    for arg in args:
        if isinstance(arg, int) and abs(arg) > MAX_SIZE:
            raise jinja2.exceptions.SecurityError("the template passed a huge number to a call")
        _check_size(arg)


def _check_format(fmt: Any) -> None:
    # A width or precision of eight digits or more ('%99999999s', '{:>99999999}') is a memory bomb.
    if isinstance(fmt, str) and re.search(r"\d{8,}", fmt):
        raise jinja2.exceptions.SecurityError("the template formats with a huge width")


def _guarded_filter(name: str, func: Any) -> Any:
    """A filter that spends the budget and checks its arguments (the value itself may be large)."""
    value_at = 0 if jinja2.utils._PassArg.from_obj(func) is None else 1

    @functools.wraps(func)  # keeps jinja_pass_arg, so jinja still passes the context or environment
    def guarded(*args, **kwargs):
        _spend()
        _check_args((*args[value_at + 1:], *kwargs.values()))
        if name == "format" and len(args) > value_at:
            _check_format(args[value_at])
        return func(*args, **kwargs)

    return guarded


class _Sandbox(ImmutableSandboxedEnvironment):
    """The immutable sandbox, plus a budget on every call, lookup and arithmetic size bomb."""

    # Intercepted operators are also never folded into constants at compile time.
    intercepted_binops = frozenset({"*", "**", "+", "%"})

    def call(__self, __context, __obj, *args, **kwargs):  # noqa: N805 - jinja's own signature style
        _spend()
        _check_args((*args, *kwargs.values()))
        return super().call(__context, __obj, *args, **kwargs)

    def getattr(self, obj, attribute):
        _spend()
        return super().getattr(obj, attribute)

    def getitem(self, obj, argument):
        _spend()
        return super().getitem(obj, argument)

    def wrap_str_format(self, value):
        wrapped = super().wrap_str_format(value)  # not None for a str's format / format_map method
        if wrapped is not None:
            _check_format(value.__self__)
        return wrapped

    def call_binop(self, context, operator, left, right):
        _spend()
        if operator == "**" and isinstance(right, int) and abs(right) > 1024:
            raise jinja2.exceptions.SecurityError("the template raised a number to a huge power")
        if operator == "%" and isinstance(left, str):
            _check_format(left)
            _check_args(right if isinstance(right, tuple) else (right,))
        if operator == "*":
            for seq, n in ((left, right), (right, left)):
                if isinstance(seq, (str, list, tuple)) and isinstance(n, int) and len(seq) * n > MAX_SIZE:
                    raise jinja2.exceptions.SecurityError("the template repeated a sequence too many times")
        return _check_size(super().call_binop(context, operator, left, right))


def _raise_exception(message: Any) -> None:
    raise TokenizerError(f"The chat template refused the conversation: {message}")


def _tojson(value: Any, ensure_ascii: bool = False, indent=None, separators=None, sort_keys: bool = False) -> str:
    # transformers' tojson: unlike jinja's own, it does not HTML-escape and keeps non-ASCII as is.
    return json.dumps(value, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)


def _strftime_now(fmt: str) -> str:
    return datetime.now().strftime(fmt)


def _range(*args: int) -> range:
    # jinja's sandbox caps one range at 100k, but nested loops multiply: charge every element.
    r = range(*args)
    _spend(len(r))
    return r


class _TemplateDict:
    """``dict(...)`` for templates without exposing the ``dict`` type itself (as transformers does)."""

    def __call__(self, *args, **kwargs):
        return dict(*args, **kwargs)

    def fromkeys(self, *args, **kwargs):
        return dict.fromkeys(*args, **kwargs)


class _TemplateNamespace(jinja2.utils.Namespace):
    """``namespace(...)`` that refuses underscore names and oversized values."""

    def __init__(*args, **kwargs):  # noqa: N805 - same trick as jinja's Namespace, so namespace(self=1) works
        self, args = args[0], args[1:]
        attrs = dict(*args, **kwargs)
        for name, value in attrs.items():
            _TemplateNamespace._check(name, value)
        jinja2.utils.Namespace.__init__(self, attrs)

    def __setitem__(self, name, value):
        _TemplateNamespace._check(name, value)
        jinja2.utils.Namespace.__setitem__(self, name, value)

    @staticmethod
    def _check(name: Any, value: Any) -> None:
        if isinstance(name, str) and name.startswith("_"):
            raise jinja2.exceptions.SecurityError(f"a namespace cannot hold the private name {name!r}")
        _check_size(value)  # stops a string doubling in a loop


def _plain(value: Any) -> Any:
    """A copy of ``value`` made only of JSON types, so the template never sees a caller's rich objects."""
    if value is None or type(value) in (str, int, float, bool):
        return value
    # Subclasses (enums, ...) can carry methods the sandbox does not know about: strip to the base type.
    if isinstance(value, str):
        return str.__str__(value)
    if isinstance(value, int):
        return int.__int__(value)
    if isinstance(value, float):
        return float.__float__(value)
    if isinstance(value, Mapping):
        return {_plain(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_plain(v) for v in value]
    if isinstance(value, tuple):
        return tuple(_plain(v) for v in value)
    return f"<{type(value).__name__}>"


# Names a message's reasoning may come under; templates read the first (transformers aliases them too).
_REASONING_FIELDS = ("reasoning_content", "thinking", "reasoning")


def _prepare_messages(messages: Any) -> list[dict]:
    """Validate lightly and normalise like transformers: drop None values, alias reasoning fields."""
    if not isinstance(messages, (list, tuple)):
        raise TokenizerError("Chat messages must be a list of dicts.")
    if not messages:
        raise TokenizerError("Cannot apply a chat template to an empty conversation.")
    prepared = []
    for i, message in enumerate(messages):
        if not isinstance(message, Mapping):
            raise TokenizerError(f"Chat message {i} must be a dict, not {type(message).__name__}.")
        if not isinstance(message.get("role"), str):
            raise TokenizerError(f"Chat message {i} needs a string 'role'.")
        content = message.get("content")
        if content is not None and not isinstance(content, (str, list)):
            raise TokenizerError(f"Chat message {i} has a 'content' that is not a string, a list of parts or None.")
        message = {k: v for k, v in _plain(message).items() if v is not None}
        reasoning = next((message[k] for k in _REASONING_FIELDS if k in message), None)
        if reasoning is not None:
            message = {"thinking": reasoning, **message, "reasoning_content": reasoning}
        prepared.append(message)
    return prepared


def _make_environment() -> _Sandbox:
    env = _Sandbox(trim_blocks=True, lstrip_blocks=True, extensions=[jinja2.ext.loopcontrols])
    env.filters["tojson"] = _tojson
    env.filters.update({name: _guarded_filter(name, f) for name, f in env.filters.items()})
    env.globals.update(
        raise_exception=_raise_exception,
        strftime_now=_strftime_now,
        range=_range,
        dict=_TemplateDict(),
        namespace=_TemplateNamespace,
    )
    env.globals.pop("lipsum", None)  # makes arbitrarily long text from one call; no template needs it
    return env


_ENVIRONMENT = _make_environment()


def _sentence(error: Any) -> str:
    return str(error).strip().rstrip(".") + "."


class ChatTemplate:
    """One compiled chat template; ``render`` is safe to call from several threads."""

    def __init__(self, source: str) -> None:
        if not isinstance(source, str):
            raise TokenizerError("A chat template must be a string of Jinja source.")
        self.source = source
        try:
            self._template = _ENVIRONMENT.from_string(source)
        except jinja2.exceptions.TemplateSyntaxError as e:
            where = f"line {e.lineno}"
            raise TokenizerError(f"The chat template is not valid Jinja ({where}): {_sentence(e.message)}") from None
        except Exception as e:  # the compiler can choke on odd input, too
            raise TokenizerError(f"The chat template cannot be compiled: {_sentence(e)}") from None

    def render(
        self,
        messages: list[dict],
        tools: list[dict] | None = None,
        add_generation_prompt: bool = True,
        **kwargs: Any,
    ) -> str:
        """The prompt for ``messages``; ``kwargs`` (bos_token, enable_thinking, ...) become template
        variables, except None values, which stay undefined so ``x is defined`` behaves as in transformers."""
        prepared = _prepare_messages(messages)
        if tools is not None:
            if not isinstance(tools, (list, tuple)) or not all(isinstance(t, Mapping) for t in tools):
                raise TokenizerError("Tools must be a list of JSON-schema dicts.")
            tools = _plain(list(tools))
        variables = {k: _plain(v) for k, v in kwargs.items() if v is not None}
        variables.update(messages=prepared, tools=tools, add_generation_prompt=bool(add_generation_prompt))

        token = _budget.set(_Budget())
        try:
            chunks, size = [], 0
            for chunk in self._template.generate(**variables):
                size += len(chunk)
                if size > MAX_SIZE:
                    raise jinja2.exceptions.SecurityError(f"the template wrote more than {MAX_SIZE} characters")
                chunks.append(chunk)
            return "".join(chunks)
        except TokenizerError:
            raise
        except jinja2.exceptions.SecurityError as e:
            raise TokenizerError(f"The chat template was stopped: {_sentence(e)}") from None
        except RecursionError:
            raise TokenizerError("The chat template recursed too deeply.") from None
        except MemoryError:
            raise TokenizerError("The chat template ran out of memory.") from None
        except Exception as e:  # any other failure inside template code is the template's fault
            raise TokenizerError(f"The chat template failed: {type(e).__name__}: {_sentence(e)}") from None
        finally:
            _budget.reset(token)
