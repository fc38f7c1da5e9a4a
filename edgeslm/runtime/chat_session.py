"""The interactive chat loop: multi-turn history, /reset, /exit, end of input (Ctrl-D)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TextIO

from ..errors import EdgeslmError, UsageError
from .generation import ContextLengthError


def run_chat(llm: Any, stdin: TextIO, stdout: TextIO, system: str | None = None, interactive: bool = True,
             spell: Callable[[str], str] | None = None, **options: Any) -> int:
    """Returns the number of answered turns. ``spell`` renders option names in messages (the CLI's flags).
    ``/image PATH`` queues an image for the next message; it stays in the history with that message."""
    from .message_parts import user_message

    history: list[dict[str, Any]] = []
    pending: list[str] = []
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
            pending.clear()
            stdout.write("[history cleared]\n")
            continue
        if text.startswith("/image"):
            path = text[len("/image"):].strip()
            if not path:
                stdout.write("[usage: /image PATH]\n")
            elif not getattr(llm, "takes_images", False):
                stdout.write("[this bundle's model does not take images]\n")
            else:
                pending.append(path)
                stdout.write(f"[image {len(pending)} queued for your next message: {path}]\n")
            continue
        history.append(user_message(text, pending))
        queued, pending = pending, []
        try:
            stream = llm.stream(history, system=system, **options)
        except ContextLengthError as exc:
            history.pop()
            stdout.write(f"[{exc.one_line(spell)}]\n")
            continue
        except UsageError as exc:  # a bad image: say so, keep the chat
            history.pop()
            if queued:
                stdout.write(f"[{exc.one_line(spell)}; the queued images were dropped]\n")
                continue
            raise
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
