"""A small renderer for the subset of Go's text/template that the GGUF Modelfile's TEMPLATE uses.

Ollama renders prompts with Go's text/template; to check the Modelfile's template against edgeslm's
chat template without Go, this implements what it needs, by the Go rules: text and ``{{ }}`` actions,
the ``{{-`` / ``-}}`` markers (trim all whitespace on that side), ``range``/``if``/``else``/``end``,
field access on the dot (``.Role``; ``$`` is the top-level data), string literals, parenthesized
calls and the functions ``and``, ``or``, ``not``, ``eq``, ``ne``, ``len``. Truth is Go's: false, 0,
nil and empty strings, lists and maps are false. Anything else raises, so the test cannot pass by
silently ignoring a construct.
"""

from __future__ import annotations

import re
from typing import Any

_ACTION = re.compile(r"\{\{(-\s)?(.*?)(\s-)?\}\}", re.S)
_TOKEN = re.compile(r'\(|\)|"(?:[^"\\]|\\.)*"|[^\s()]+')


def _truth(value: Any) -> bool:
    return bool(value) if value is not None else False


def _lex(template: str) -> list[tuple[str, str]]:
    parts: list[tuple[str, str]] = []
    pos, trim_next = 0, False
    for match in _ACTION.finditer(template):
        text = template[pos:match.start()]
        if trim_next:
            text = text.lstrip()
        if match.group(1):
            text = text.rstrip()
        if text:
            parts.append(("text", text))
        parts.append(("action", match.group(2).strip()))
        pos, trim_next = match.end(), bool(match.group(3))
    tail = template[pos:]
    if trim_next:
        tail = tail.lstrip()
    if tail:
        parts.append(("text", tail))
    return parts


def _parse(parts: list[tuple[str, str]], index: int = 0, stop: tuple[str, ...] = ()) -> tuple[list, int, str]:
    """Nodes until an action in ``stop``; returns (nodes, next index, the stopping action)."""
    nodes: list = []
    while index < len(parts):
        kind, value = parts[index]
        index += 1
        if kind == "text":
            nodes.append(("text", value))
            continue
        word = value.split(None, 1)[0] if value else ""
        if word in stop:
            return nodes, index, word
        if word in ("range", "if"):
            body, index, ended = _parse(parts, index, ("end", "else"))
            other: list = []
            if ended == "else":
                other, index, _ = _parse(parts, index, ("end",))
            nodes.append((word, value.split(None, 1)[1], body, other))
        elif word in ("end", "else"):
            raise ValueError(f"unexpected {{{{ {word} }}}}")
        else:
            nodes.append(("expr", value))
    if stop:
        raise ValueError("missing {{ end }}")
    return nodes, index, ""


def _evaluate(tokens: list[str], dot: Any, root: Any) -> Any:
    def term(i: int) -> tuple[Any, int]:
        token = tokens[i]
        if token == "(":
            value, i = call(i + 1)
            if tokens[i] != ")":
                raise ValueError("unbalanced parentheses")
            return value, i + 1
        if token.startswith('"'):
            return bytes(token[1:-1], "utf-8").decode("unicode_escape"), i + 1
        if token == ".":
            return dot, i + 1
        if token.startswith(".") or token.startswith("$"):
            value = root if token.startswith("$") else dot
            for name in [n for n in token.lstrip("$").split(".") if n]:
                value = value[name]
            return value, i + 1
        raise ValueError(f"unsupported term {token!r}")

    def call(i: int) -> tuple[Any, int]:
        name = tokens[i]
        functions = {"and": lambda *a: next((x for x in a if not _truth(x)), a[-1]),
                     "or": lambda *a: next((x for x in a if _truth(x)), a[-1]),
                     "not": lambda a: not _truth(a), "eq": lambda a, b: a == b, "ne": lambda a, b: a != b,
                     "len": len}
        if name not in functions:
            return term(i)
        args, i = [], i + 1
        while i < len(tokens) and tokens[i] != ")":
            value, i = term(i)
            args.append(value)
        return functions[name](*args), i

    value, end = call(0)
    if end != len(tokens):
        raise ValueError(f"unparsed tokens {tokens[end:]}")
    return value


def _run(nodes: list, dot: Any, root: Any, out: list[str]) -> None:
    for node in nodes:
        if node[0] == "text":
            out.append(node[1])
        elif node[0] == "expr":
            out.append(str(_evaluate(_TOKEN.findall(node[1]), dot, root)))
        elif node[0] == "if":
            _run(node[2] if _truth(_evaluate(_TOKEN.findall(node[1]), dot, root)) else node[3], dot, root, out)
        else:  # range
            items = _evaluate(_TOKEN.findall(node[1]), dot, root)
            for item in items:
                _run(node[2], item, root, out)
            if not items:
                _run(node[3], dot, root, out)


def render(template: str, data: Any) -> str:
    nodes, _, _ = _parse(_lex(template))
    out: list[str] = []
    _run(nodes, data, data, out)
    return "".join(out)
