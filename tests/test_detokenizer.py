"""The table-lookup detokenizer gives exactly transformers' decode for the Phi-3 tokenizer."""

from __future__ import annotations

from conftest import DOCS_MODEL, EVAL

from edgeslm.runtime import byte_fallback_detokenizer


def test_matches_transformers_decode_including_bytes_and_specials(tmp_path):
    from transformers import AutoTokenizer

    reference = AutoTokenizer.from_pretrained(str(DOCS_MODEL))
    detok = byte_fallback_detokenizer.load(DOCS_MODEL / "tokenizer.json")
    assert detok is not None
    text = (EVAL / "docs-heldout.txt").read_text()[:40000] + " héllo wörld ✓ 日本語 🙂 <|end|> tail"
    ids = reference.encode(text, add_special_tokens=False)
    decode = detok.stream()
    pieces = [decode(i) for i in ids]
    assert "".join(pieces) == reference.decode(ids, skip_special_tokens=True)
    assert all("\ufffd" not in p for p in pieces)  # multi-byte characters wait for their last byte


def test_other_decoders_are_not_claimed(tmp_path):
    path = tmp_path / "tokenizer.json"
    path.write_text('{"decoder": {"type": "ByteLevel"}, "model": {"type": "BPE", "vocab": {}}}')
    assert byte_fallback_detokenizer.load(path) is None
    assert byte_fallback_detokenizer.load(tmp_path / "missing.json") is None
