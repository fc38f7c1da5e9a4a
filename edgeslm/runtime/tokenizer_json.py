"""Tokenization from an artifact's ``tokenizer.json`` with the ``tokenizers`` package (engines that have
no tokenizer of their own). Decoding uses the byte-fallback table where it applies, else
``tokenizers``' incremental DecodeStream."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from . import byte_fallback_detokenizer


class TokenizerJson:
    def __init__(self, path: Path):
        from tokenizers import Tokenizer

        self.tokenizer = Tokenizer.from_file(str(path))
        self.fast_detokenizer = byte_fallback_detokenizer.load(path)

    def encode(self, text: str) -> list[int]:
        return list(self.tokenizer.encode(text, add_special_tokens=False).ids)

    def text_decoder(self) -> Callable[[int], str]:
        if self.fast_detokenizer is not None:
            return self.fast_detokenizer.stream()
        from tokenizers.decoders import DecodeStream

        stream = DecodeStream(skip_special_tokens=True)
        return lambda token: stream.step(self.tokenizer, token) or ""
