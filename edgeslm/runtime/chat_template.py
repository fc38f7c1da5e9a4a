"""Render the manifest's chat template exactly as transformers' ``apply_chat_template`` does.

Same Jinja settings as transformers (sandboxed, trim_blocks, lstrip_blocks, loop controls,
``raise_exception``), so the token ids match for the same messages.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from ..bundle.manifest import ChatInfo
from ..errors import BackendMissingError, UsageError

ROLES = ("system", "user", "assistant")


def validate_messages(messages: Any) -> list[dict[str, str]]:
    if not isinstance(messages, list) or not messages:
        raise UsageError("messages must be a non-empty list")
    clean = []
    for i, message in enumerate(messages):
        if not isinstance(message, dict) or message.get("role") not in ROLES:
            raise UsageError(f"message {i} needs a role of {', '.join(ROLES)}")
        content = message.get("content")
        if not isinstance(content, str):
            raise UsageError(f"message {i} content must be text")
        clean.append({"role": message["role"], "content": content})
    if not any(m["role"] == "user" and m["content"].strip() for m in clean):
        raise UsageError("the prompt is empty", hint="give at least one non-empty user message")
    return clean


class ChatTemplate:
    def __init__(self, chat: ChatInfo):
        try:
            from jinja2.ext import loopcontrols
            from jinja2.sandbox import ImmutableSandboxedEnvironment
        except ImportError:
            raise BackendMissingError("jinja2 is needed to render the chat template",
                                      hint="pip install 'edgeslm[ort]'") from None

        def raise_exception(message: str) -> None:
            raise UsageError(f"chat template: {message}")

        env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=[loopcontrols])
        env.globals["raise_exception"] = raise_exception
        env.globals["strftime_now"] = lambda fmt: datetime.now().strftime(fmt)
        self._template = env.from_string(chat.template)
        self._chat = chat

    def render(self, messages: list[dict[str, str]], add_generation_prompt: bool = True) -> str:
        return self._template.render(messages=validate_messages(messages), add_generation_prompt=add_generation_prompt,
                                     bos_token=self._chat.bos_token, eos_token=self._chat.eos_token)
