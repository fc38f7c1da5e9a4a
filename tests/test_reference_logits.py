"""The layer-by-layer fp32 reference (edgeslm.builder.reference_logits) against transformers' Phi3ForCausalLM."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file
from tokenizers import Tokenizer
from transformers import AutoModelForCausalLM, Phi3Config, Phi3ForCausalLM

from edgeslm.backends.log_likelihood import nll_from_logits
from edgeslm.builder.measured_quality import source_window_nll
from edgeslm.builder.reference_logits import reference_logits

REPO = Path(__file__).resolve().parents[1]
DOCS_MODEL = REPO / "examples" / "models" / "phi3-docs-21m"
HELDOUT = REPO / "examples" / "eval" / "docs-heldout.txt"


def config_of(model_dir: Path) -> dict:
    return json.loads((model_dir / "config.json").read_text())


def transformers_logits(model_dir: Path, windows: list[list[int]]) -> list[np.ndarray]:
    """The old way: the whole model in fp32 with transformers, one window per forward."""
    model = AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=torch.float32).eval()
    with torch.inference_mode():
        return [model(input_ids=torch.tensor([w])).logits[0].numpy() for w in windows]


def window_nll(logits: np.ndarray, window: list[int]) -> float:
    return nll_from_logits(logits[:-1], window[1:])


@pytest.fixture(scope="module")
def docs_windows() -> list[list[int]]:
    """3 windows of 128 tokens of the held-out text, then one of 100 (unequal lengths in one batch)."""
    ids = Tokenizer.from_file(str(DOCS_MODEL / "tokenizer.json")).encode(
        HELDOUT.read_text(encoding="utf-8"), add_special_tokens=False).ids
    return [ids[i * 128:(i + 1) * 128] for i in range(3)] + [ids[384:484]]


@pytest.fixture(scope="module")
def docs_reference(docs_windows) -> list[np.ndarray]:
    return list(reference_logits(DOCS_MODEL, config_of(DOCS_MODEL), docs_windows))


def test_docs_model_matches_transformers(docs_windows, docs_reference):
    assert config_of(DOCS_MODEL)["rope_scaling"]["type"] == "longrope"  # the real Phi-3.5 rope path
    expected = transformers_logits(DOCS_MODEL, docs_windows)
    assert len(docs_reference) == len(docs_windows) == 4
    for ours, ref, window in zip(docs_reference, expected, docs_windows):
        assert ours.dtype == np.float32 and ours.shape == (len(window), 32064)
        assert np.abs(ours - ref).max() < 2e-3
        ours_nll, ref_nll = window_nll(ours, window), window_nll(ref, window)
        assert abs(ours_nll - ref_nll) / ref_nll < 1e-5
    # a trained model: the held-out text is predicted far better than uniform (ln 32064 = 10.4 per token)
    assert window_nll(docs_reference[0], docs_windows[0]) / 127 < 6.0


def test_source_window_nll_uses_the_reference(docs_windows, docs_reference):
    totals = source_window_nll(DOCS_MODEL, docs_windows)
    assert totals == [window_nll(logits, w) for logits, w in zip(docs_reference, docs_windows)]


def test_sharded_checkpoint_gives_identical_logits(tmp_path, docs_windows, docs_reference):
    tensors = load_file(DOCS_MODEL / "model.safetensors")
    names = sorted(tensors)
    # alternate names: every layer spans both shards, and so do the lm_head and the embedding
    halves = {"model-00001-of-00002.safetensors": names[0::2], "model-00002-of-00002.safetensors": names[1::2]}
    weight_map = {}
    for fname, part in halves.items():
        save_file({n: tensors[n] for n in part}, tmp_path / fname, metadata={"format": "pt"})
        weight_map.update({n: fname for n in part})
    (tmp_path / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    shutil.copyfile(DOCS_MODEL / "config.json", tmp_path / "config.json")
    assert not (tmp_path / "model.safetensors").exists()
    assert weight_map["lm_head.weight"] != weight_map["model.embed_tokens.weight"]
    assert weight_map["model.layers.0.self_attn.qkv_proj.weight"] != weight_map["model.layers.0.self_attn.o_proj.weight"]
    sharded = list(reference_logits(tmp_path, config_of(tmp_path), docs_windows))
    for a, b in zip(sharded, docs_reference):
        assert np.array_equal(a, b)


def tiny_phi3(out: Path, seed: int = 0, **overrides) -> Path:
    """A random Phi3ForCausalLM saved with save_pretrained (safetensors), with non-trivial norm weights."""
    settings = dict(vocab_size=96, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
                    num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=256,
                    initializer_range=0.1, pad_token_id=0, bos_token_id=1, eos_token_id=2)
    torch.manual_seed(seed)
    model = Phi3ForCausalLM(Phi3Config(**{**settings, **overrides}))
    with torch.no_grad():
        for name, param in model.named_parameters():
            if name.endswith("norm.weight"):
                param.uniform_(0.5, 1.5)
    model.save_pretrained(out)
    return out


def random_windows(lengths: list[int], vocab: int, seed: int = 1) -> list[list[int]]:
    gen = np.random.default_rng(seed)
    return [gen.integers(0, vocab, size=n).tolist() for n in lengths]


@pytest.mark.parametrize("tied, sliding_window", [(True, None), (False, 24)])
def test_grouped_query_attention_matches_transformers(tmp_path, tied, sliding_window):
    model_dir = tiny_phi3(tmp_path, num_key_value_heads=2, tie_word_embeddings=tied, sliding_window=sliding_window)
    config = config_of(model_dir)
    assert config["num_key_value_heads"] < config["num_attention_heads"]
    with open(model_dir / "model.safetensors", "rb") as f:
        assert (b"lm_head.weight" in f.read(1 << 16)) is not tied  # tied: no lm_head tensor in the file
    windows = random_windows([40, 33, 40], config["vocab_size"])
    ours = list(reference_logits(model_dir, config, windows))
    for a, b in zip(ours, transformers_logits(model_dir, windows)):
        assert a.shape == b.shape
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4)
        assert np.abs(b).max() > 0.1  # the comparison is not trivially between near-zero logits


def test_long_window_uses_long_factors(tmp_path):
    head_dim = 16
    gen = np.random.default_rng(3)
    rope = {"type": "longrope", "short_factor": gen.uniform(1.0, 2.0, head_dim // 2).tolist(),
            "long_factor": gen.uniform(4.0, 16.0, head_dim // 2).tolist()}
    model_dir = tiny_phi3(tmp_path, original_max_position_embeddings=64, max_position_embeddings=256,
                          rope_scaling=rope)
    config = config_of(model_dir)
    long_window = random_windows([100], config["vocab_size"])[0]
    windows = [long_window, long_window[:50]]  # beyond and within original_max_position_embeddings
    ours = list(reference_logits(model_dir, config, windows))
    expected = transformers_logits(model_dir, windows)
    for a, b in zip(ours, expected):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4)
    # same 50 tokens, other factors: the long window's first positions differ from the short window's
    assert np.abs(ours[0][:50] - ours[1]).max() > 1e-2


def test_refuses_other_architectures_and_partial_rotary():
    config = config_of(DOCS_MODEL)
    with pytest.raises(ValueError, match="Phi3ForCausalLM"):
        reference_logits(DOCS_MODEL, {**config, "architectures": ["LlamaForCausalLM"]}, [[1, 2, 3]])
    with pytest.raises(ValueError, match="partial_rotary_factor"):
        reference_logits(DOCS_MODEL, {**config, "partial_rotary_factor": 0.5}, [[1, 2, 3]])
