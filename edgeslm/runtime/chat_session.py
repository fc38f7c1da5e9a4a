"""The interactive chat loop: multi-turn history, /reset, /exit, end of input (Ctrl-D)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TextIO

from ..errors import EdgeslmError
from .generation import ContextLengthError


def run_chat(llm: Any, stdin: TextIO, stdout: TextIO, system: str | None = None, interactive: bool = True,
             spell: Callable[[str], str] | None = None, **options: Any) -> int:
    """Returns the number of answered turns. ``spell`` renders option names in messages (the CLI's flags)."""
    history: list[dict[str, str]] = []
    turns = 0
    while True:
        if interactive:
            stdout.write(">>> ")
            stdout.flush()
        line = stdin.readline()
        if not line:  # Ctrl-D / end of input
            break
        text = line.strip()
        if not text:
            continue
        if text in ("/exit", "/quit"):
            break
        if text == "/reset":
            history.clear()
            stdout.write("[history cleared]\n")
            continue
        history.append({"role": "user", "content": text})
        try:
            stream = llm.stream(history, system=system, **options)
        except ContextLengthError as exc:
            history.pop()
            stdout.write(f"[{exc.one_line(spell)}]\n")
            continue
        except EdgeslmError:
            history.pop()
            raise
        try:
            for piece in stream:
                stdout.write(piece)
                stdout.flush()
        except KeyboardInterrupt:  # Ctrl-C stops this answer, not the chat
            stream.close()
            stdout.write(" [interrupted]")
        stdout.write("\n")
        history.append({"role": "assistant", "content": stream.result.text if stream.result else ""})
        turns += 1
    return turns
