"""Incremental detokenization for SentencePiece-style BPE vocabularies with byte fallback (Llama, Phi-3).

Runtimes whose detokenizer is a separate model call (a detokenizer IR) spend ~0.5 ms per
call, which is a sizeable share of a small model's step time. For the common tokenizer.json decoder
``Replace('▁', ' ') → ByteFallback → Fuse → Strip(1 leading space)`` the text of a token is a table
lookup, so decoding here costs microseconds. ``load`` returns None for any other decoder, and the
engine then uses its own.
"""

from __future__ import annotations

import codecs
import json
import re
from collections.abc import Callable
from pathlib import Path

_BYTE = re.compile(r"^<0x([0-9A-Fa-f]{2})>$")
_SUPPORTED = [["Replace", "ByteFallback", "Fuse", "Strip"], ["Replace", "ByteFallback", "Fuse"]]


class ByteFallbackDetokenizer:
    def __init__(self, pieces: dict[int, bytes], skipped: set[int], strip_first_space: bool):
        self.pieces, self.skipped, self.strip_first_space = pieces, skipped, strip_first_space

    def stream(self) -> Callable[[int], str]:
        """A fresh decoder: token id -> the text it completes (a partial UTF-8 character waits)."""
        utf8 = codecs.getincrementaldecoder("utf-8")("replace")
        first = [self.strip_first_space]

        def decode(token: int) -> str:
            text = "" if token in self.skipped else utf8.decode(self.pieces.get(token, b""))
            if first[0] and text:
                first[0] = False
                text = text[1:] if text.startswith(" ") else text  # the decoder's Strip(' ', 1, 0)
            return text

        return decode


def load(tokenizer_json: Path) -> ByteFallbackDetokenizer | None:
    try:
        data = json.loads(Path(tokenizer_json).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    decoder = data.get("decoder") or {}
    steps = [d.get("type") for d in decoder.get("decoders", [])] if decoder.get("type") == "Sequence" else []
    model = data.get("model") or {}
    if steps not in _SUPPORTED or model.get("type") != "BPE" or not model.get("byte_fallback"):
        return None
    replace = decoder["decoders"][0]
    if replace.get("pattern", {}).get("String") != "▁" or replace.get("content") != " ":
        return None
    pieces: dict[int, bytes] = {}
    for piece, token_id in model.get("vocab", {}).items():
        match = _BYTE.match(piece)
        pieces[int(token_id)] = bytes([int(match.group(1), 16)]) if match else piece.replace("▁", " ").encode()
    skipped = {int(t["id"]) for t in data.get("added_tokens", []) if t.get("special")}
    for token in data.get("added_tokens", []):
        if not token.get("special"):
            pieces[int(token["id"])] = token["content"].encode()
    return ByteFallbackDetokenizer(pieces, skipped, strip_first_space=steps[-1] == "Strip")
