"""Check an artifact's GGUF against the bundle's manifest before llama.cpp loads it (standard library only).

A GGUF swapped in from another model (a different architecture or size, another tokenizer) would load
and produce nonsense or stop on the wrong ids; a truncated copy makes llama.cpp fail with a bare message.
Each is refused here with the field that differs.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from ...errors import GgufFileError
from .gguf_file import GgufHeader, check_complete, read_header

if TYPE_CHECKING:
    from ...bundle.manifest import Manifest

ARCH_OF_MODEL_TYPE = {"phi3": "phi3"}
_HINT = "the artifact's model.gguf is not the one this bundle was built with; rebuild the bundle or copy it again"


def checked_header(path: Path, manifest: Manifest) -> GgufHeader:
    header = read_header(path)
    check_complete(header)
    model = manifest.model
    expected_arch = ARCH_OF_MODEL_TYPE.get(model.model_type, model.model_type)
    if header.architecture != expected_arch:
        raise GgufFileError(f"{path.name} is a '{header.architecture or 'unknown'}' model; the manifest's model "
                            f"{model.name} is {model.architecture} ('{expected_arch}' in GGUF)", hint=_HINT)
    shape = {"block_count": model.num_layers, "embedding_length": model.hidden_size,
             "attention.head_count": model.num_attention_heads, "attention.head_count_kv": model.num_key_value_heads}
    for key, want in shape.items():
        have = header.arch_value(key)
        if have != want:
            raise GgufFileError(f"{path.name} has {header.architecture}.{key} = {have}; the manifest's model has {want}",
                                hint=_HINT)
    check_tokenizer(header, manifest)
    return header


def check_tokenizer(header: GgufHeader, manifest: Manifest) -> None:
    name = header.path.name
    kind = header.metadata.get("tokenizer.ggml.model")
    if kind != "llama":
        raise GgufFileError(f"{name} has a '{kind}' tokenizer; the manifest's Phi-3 tokenizer is SentencePiece ('llama')",
                            hint=_HINT)
    tokens = header.metadata.get("tokenizer.ggml.tokens") or []
    if len(tokens) != manifest.model.vocab_size:
        raise GgufFileError(f"{name} has a vocabulary of {len(tokens)} tokens; the manifest's model has "
                            f"{manifest.model.vocab_size}", hint=_HINT)
    chat = manifest.chat
    expected = {**chat.special_tokens, **dict(zip(chat.stop_tokens, chat.stop_token_ids))}
    for text, token_id in sorted(expected.items(), key=lambda item: item[1]):
        if not 0 <= token_id < len(tokens) or tokens[token_id] != text:
            found = tokens[token_id] if 0 <= token_id < len(tokens) else "nothing"
            raise GgufFileError(f"{name}: token {token_id} is {found!r}, the manifest's tokenizer has {text!r} there",
                                hint=_HINT)
