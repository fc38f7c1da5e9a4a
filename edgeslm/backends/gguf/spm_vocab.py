"""The Llama/SentencePiece vocabulary of a Phi-3 checkpoint as llama.cpp's converter writes it.

``convert_hf_to_gguf.py`` (``Phi3MiniModel.set_vocab``) loads ``tokenizer.model`` with sentencepiece
and writes each piece, its score and its type, pads the table to the config's ``vocab_size`` with
``[PAD{i}]`` pieces (score -10000, UNUSED), then overwrites the added tokens of ``added_tokens.json``,
``tokenizer_config.json``'s ``added_tokens_decoder`` and ``tokenizer.json``'s ``added_tokens`` (score
-1000, USER_DEFINED, or CONTROL when special). The same, reading the ``.model`` protobuf with the
standard library (no sentencepiece needed): field 1 of ModelProto holds the pieces; a piece has its
text (1), score (2, float) and type (3: NORMAL 1, UNKNOWN 2, CONTROL 3, USER_DEFINED 4, UNUSED 5,
BYTE 6). As in the converter, a USER_DEFINED piece of the .model file is written as NORMAL.
"""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass
from pathlib import Path

from ...errors import BuildError

NORMAL, UNKNOWN, CONTROL, USER_DEFINED, UNUSED, BYTE = 1, 2, 3, 4, 5, 6
_KEPT_TYPES = {UNKNOWN, CONTROL, UNUSED, BYTE}


@dataclass(frozen=True)
class Vocab:
    tokens: list[bytes]
    scores: list[float]
    types: list[int]


def _varint(data: bytes, pos: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        if pos >= len(data):
            raise ValueError("varint runs past the end")
        byte = data[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return value, pos
        shift += 7


def _fields(data: bytes):
    """(field number, wire type, value) of a protobuf message; length-delimited values as bytes."""
    pos = 0
    while pos < len(data):
        tag, pos = _varint(data, pos)
        field, wire = tag >> 3, tag & 7
        if wire == 0:
            value, pos = _varint(data, pos)
        elif wire == 1:
            value, pos = data[pos:pos + 8], pos + 8
        elif wire == 2:
            length, pos = _varint(data, pos)
            value, pos = data[pos:pos + length], pos + length
        elif wire == 5:
            value, pos = data[pos:pos + 4], pos + 4
        else:
            raise ValueError(f"wire type {wire}")
        yield field, wire, value


def sentencepiece_pieces(path: Path) -> list[tuple[bytes, float, int]]:
    """(piece, score, type) of every piece of a SentencePiece ``.model`` file."""
    pieces = []
    try:
        for field, wire, value in _fields(path.read_bytes()):
            if field != 1 or wire != 2:
                continue
            piece, score, kind = b"", 0.0, NORMAL
            for sub, sub_wire, sub_value in _fields(value):
                if sub == 1 and sub_wire == 2:
                    piece = sub_value
                elif sub == 2 and sub_wire == 5:
                    score = struct.unpack("<f", sub_value)[0]
                elif sub == 3 and sub_wire == 0:
                    kind = sub_value
            pieces.append((piece, score, kind))
    except (ValueError, struct.error) as exc:
        raise BuildError(f"{path} is not a readable SentencePiece model: {exc}",
                         hint="the checkpoint's tokenizer.model is damaged; download it again") from None
    if not pieces:
        raise BuildError(f"{path} holds no SentencePiece pieces")
    return pieces


def phi3_vocab(folder: Path, vocab_size: int) -> Vocab:
    """The vocabulary of ``Phi3MiniModel.set_vocab`` for an SPM (Llama) tokenizer."""
    model = folder / "tokenizer.model"
    if not model.is_file():
        raise BuildError(f"{folder.name} has no tokenizer.model: the GGUF writer reads the SentencePiece vocabulary "
                         "from it, as llama.cpp's converter does", hint="copy tokenizer.model from the model's hub page")
    tokens = [f"[PAD{i}]".encode() for i in range(vocab_size)]
    scores = [-10000.0] * vocab_size
    types = [UNUSED] * vocab_size
    for token_id, (piece, score, kind) in enumerate(sentencepiece_pieces(model)[:vocab_size]):
        tokens[token_id], scores[token_id] = piece, score
        types[token_id] = kind if kind in _KEPT_TYPES else NORMAL
    for token_id, content, special in _added_tokens(folder):
        if 0 <= token_id < vocab_size:
            tokens[token_id], scores[token_id] = content.encode(), -1000.0
            types[token_id] = CONTROL if special else USER_DEFINED
    return Vocab(tokens, scores, types)


def _added_tokens(folder: Path) -> list[tuple[int, str, bool]]:
    """Added tokens in the converter's order: added_tokens.json, tokenizer_config.json, tokenizer.json."""
    found: list[tuple[int, str, bool]] = []
    added = folder / "added_tokens.json"
    if added.is_file():
        found += [(int(i), key, False) for key, i in json.loads(added.read_text(encoding="utf-8")).items()]
    config = folder / "tokenizer_config.json"
    if config.is_file():
        decoder = json.loads(config.read_text(encoding="utf-8")).get("added_tokens_decoder", {})
        found += [(int(i), entry["content"], bool(entry.get("special"))) for i, entry in decoder.items()]
    tokenizer = folder / "tokenizer.json"
    if tokenizer.is_file():
        entries = json.loads(tokenizer.read_text(encoding="utf-8")).get("added_tokens", [])
        found += [(int(entry["id"]), entry["content"], bool(entry.get("special"))) for entry in entries]
    return found
