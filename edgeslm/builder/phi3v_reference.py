"""edgeslm's own torch reference of Phi-3(.5)-vision (build side): image features, logits, greedy answers.

The checkpoint's modeling code (``modeling_phi3_v.py``, remote code) is never imported or run; its
``Phi3ImageEmbedding`` is re-implemented here for the one variant :mod:`.phi3v_config` accepts:

* image tower: ``transformers.CLIPVisionModel`` built from ``img_processor.vision_config``, weights
  ``model.vision_embed_tokens.img_processor.*``. Features are ``hidden_states[layer_idx]`` (-2: the
  penultimate layer's output) without the class token -- not ``last_hidden_state``, no
  ``post_layernorm``;
* HD transform (``sub_glb``): each crop's 24×24 patches are merged 2×2 into 12×12 tokens of 4·C
  features; an image of h×w sub-crops gives its sub-crop grid (12h rows of 12w tokens, each row
  followed by the learnable ``sub_GN`` newline), then ``glb_GN``, then the global crop's 12 rows of
  12 tokens with their newlines: ``(h·w + 1)·144 + 1 + (h + 1)·12`` tokens;
* ``img_projection``: Linear(4·C → hidden) → GELU (erf) → Linear(hidden → hidden);
* text: ``transformers.Phi3ForCausalLM`` on ``inputs_embeds``: the prompt's ids clamped at 0 go through
  ``embed_tokens``, then the positions whose id is negative (image placeholders) are overwritten, in
  order, with the image features of all images in order.

Loading is strict: every checkpoint tensor must be used, every model parameter loaded, with the
shapes the config implies; otherwise a :class:`~edgeslm.errors.ModelSourceError` names the tensors.
Computation is float32 by default (``dtype`` selects another for the weights).
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file
from torch import nn

from ..errors import ModelSourceError, UsageError
from .phi3v_config import CROP_SIZE, Phi3VisionConfig, load_config

SINGLE_FILE = "model.safetensors"
INDEX_FILE = "model.safetensors.index.json"
VISION_PREFIX = "model.vision_embed_tokens."
CLIP_PREFIX = VISION_PREFIX + "img_processor."
PROJECTION_PREFIX = VISION_PREFIX + "img_projection."
GLB_GN = VISION_PREFIX + "glb_GN"
SUB_GN = VISION_PREFIX + "sub_GN"
STOP_IDS = (32007, 32000, 32001)  # <|end|>, <|endoftext|>, <|assistant|>
CLIP_BATCH = 16  # crops per CLIP forward


def reshape_hd_patches_2x2merge(features: torch.Tensor, h_crop: int, w_crop: int) -> torch.Tensor:
    """[N, 576, C] patch features of N = n_img·h_crop·w_crop crops → [n_img, 12·h_crop, 12·w_crop, 4·C].

    Each crop's 24×24 patches are merged 2×2 (the 4·C features ordered row, column, channel within the
    2×2 block); the crops' 12×12 token grids are laid out row-major into one grid per image.
    """
    n, patches, c = features.shape
    side = int(round(patches ** 0.5))
    if side * side != patches or side % 2:
        raise ValueError(f"{patches} patches per crop is not an even square grid")
    half = side // 2
    if n % (h_crop * w_crop):
        raise ValueError(f"{n} crops do not split into images of {h_crop}x{w_crop} crops")
    n_img = n // (h_crop * w_crop)
    merged = (features.reshape(n, side, side, c).reshape(n, half, 2, half, 2, c).permute(0, 1, 3, 2, 4, 5)
              .reshape(n, -1, 4 * c))
    return (merged.reshape(n_img, h_crop, w_crop, half, half, 4 * c).permute(0, 1, 3, 2, 4, 5)
            .reshape(n_img, h_crop * half, w_crop * half, 4 * c))


def add_image_newline(grid: torch.Tensor, sub_gn: torch.Tensor) -> torch.Tensor:
    """[n_img, rows, cols, D] → [n_img, rows·(cols + 1), D]: the separator ``sub_GN`` [1, 1, 1, D] ends each row."""
    n_img, rows, _, dim = grid.shape
    newline = sub_gn.reshape(1, 1, 1, dim).expand(n_img, rows, 1, dim).to(grid.dtype)
    return torch.cat([grid, newline], dim=2).reshape(n_img, -1, dim)


class Phi3VisionReference:
    """A Phi-3(.5)-vision checkpoint in torch (see the module docstring). Build :meth:`load`."""

    def __init__(self, config: Phi3VisionConfig, clip: nn.Module, projection: nn.Module, glb_gn: torch.Tensor,
                 sub_gn: torch.Tensor, text: nn.Module, dtype: torch.dtype):
        self.config = config
        self.clip = clip.eval()
        self.projection = projection.eval()
        self.glb_gn = glb_gn
        self.sub_gn = sub_gn
        self.text = text.eval()
        self.dtype = dtype

    # ---- loading -------------------------------------------------------------------------------------
    @classmethod
    def load(cls, checkpoint: Path, dtype: torch.dtype = torch.float32) -> Phi3VisionReference:
        from transformers import CLIPVisionConfig, CLIPVisionModel, Phi3Config, Phi3ForCausalLM

        checkpoint = Path(checkpoint)
        config = load_config(checkpoint)
        tensors = {name: t.to(dtype) if t.is_floating_point() else t for name, t in _read_tensors(checkpoint).items()}

        clip_tensors = _take(tensors, CLIP_PREFIX)
        projection_tensors = _take(tensors, PROJECTION_PREFIX)
        separators = {name: tensors.pop(name) for name in (GLB_GN, SUB_GN) if name in tensors}
        stray_vision = sorted(name for name in tensors if name.startswith(VISION_PREFIX))

        c, hidden = config.merged_dim, config.hidden_size
        problems = [f"unexpected {name}" for name in stray_vision]
        for name, shape in ((GLB_GN, (1, 1, c)), (SUB_GN, (1, 1, 1, c))):
            if name not in separators:
                problems.append(f"missing {name}")
            elif tuple(separators[name].shape) != shape:
                problems.append(f"{name} has shape {tuple(separators[name].shape)}, expected {shape}")

        with _no_init():
            clip = CLIPVisionModel(CLIPVisionConfig(**config.vision_config))
            projection = nn.Sequential(nn.Linear(c, hidden), nn.GELU(), nn.Linear(hidden, hidden))
            text_config = Phi3Config(**config.text_config())
            text = Phi3ForCausalLM(text_config)
        if text_config.tie_word_embeddings and "lm_head.weight" not in tensors and "model.embed_tokens.weight" in tensors:
            tensors["lm_head.weight"] = tensors["model.embed_tokens.weight"]
        problems += _strict_problems(clip, clip_tensors, CLIP_PREFIX)
        problems += _strict_problems(projection, projection_tensors, PROJECTION_PREFIX)
        problems += _strict_problems(text, tensors, "")
        if problems:
            shown = "; ".join(problems[:6]) + (f"; and {len(problems) - 6} more" if len(problems) > 6 else "")
            raise ModelSourceError(f"{checkpoint} does not match its Phi-3.5-vision config: {shown}")
        clip.load_state_dict(clip_tensors, strict=True, assign=True)
        projection.load_state_dict(projection_tensors, strict=True, assign=True)
        text.load_state_dict(tensors, strict=True, assign=True)
        if text_config.tie_word_embeddings:
            text.tie_weights()
        return cls(config, clip, projection, separators[GLB_GN], separators[SUB_GN], text, dtype)

    # ---- image features ------------------------------------------------------------------------------
    def crop_features(self, pixel_values) -> np.ndarray:
        """CLIP's ``hidden_states[layer_idx]`` patch features, class token dropped: [..., 576, C] float32.

        ``pixel_values`` is [crops, 3, 336, 336] or [images, crops, 3, 336, 336] (every crop is run,
        zero padding crops too).
        """
        pixels = self._pixels(pixel_values, min_dims=4)
        lead = pixels.shape[:-3]
        with torch.inference_mode():
            feats = self._clip_features(pixels.reshape(-1, *pixels.shape[-3:]))
        return feats.float().reshape(*lead, *feats.shape[1:]).numpy()

    def image_features(self, pixel_values, image_sizes) -> np.ndarray:
        """[total image tokens, hidden] float32: what the embedding step writes at the negative ids.

        ``pixel_values`` [images, crops, 3, 336, 336] (global crop first, then the sub-crops row-major,
        then zero crops); ``image_sizes`` [images, 2]: each HD image's (height, width) in pixels.
        """
        with torch.inference_mode():
            return self._image_features(pixel_values, image_sizes).float().numpy()

    def image_token_counts(self, image_sizes) -> list[int]:
        """Image tokens of each image: ``(h·w + 1)·144 + 1 + (h + 1)·12`` for h×w sub-crops."""
        return [self.config.image_tokens(hc, wc) for hc, wc in self._sizes(image_sizes, None)]

    def _image_features(self, pixel_values, image_sizes) -> torch.Tensor:
        pixels = self._pixels(pixel_values, min_dims=5)
        grids = self._sizes(image_sizes, pixels)
        used = [pixels[i, :1 + hc * wc] for i, (hc, wc) in enumerate(grids)]
        feats = self._clip_features(torch.cat(used))  # [sum of used crops, 576, C]
        out, start = [], 0
        for hc, wc in grids:
            crops = feats[start:start + 1 + hc * wc]
            start += 1 + hc * wc
            sub = add_image_newline(reshape_hd_patches_2x2merge(crops[1:], hc, wc), self.sub_gn)
            glb = add_image_newline(reshape_hd_patches_2x2merge(crops[:1], 1, 1), self.sub_gn)
            out.append(torch.cat([sub[0], self.glb_gn.reshape(1, -1), glb[0]], dim=0))
        return self.projection(torch.cat(out))

    def _clip_features(self, crops: torch.Tensor) -> torch.Tensor:
        parts = []
        for start in range(0, crops.shape[0], CLIP_BATCH):
            states = self.clip(crops[start:start + CLIP_BATCH], output_hidden_states=True).hidden_states
            parts.append(states[self.config.layer_idx][:, 1:])
        return torch.cat(parts)

    def _pixels(self, pixel_values, min_dims: int) -> torch.Tensor:
        pixels = torch.as_tensor(np.asarray(pixel_values, dtype=np.float32))
        dims = (5,) if min_dims == 5 else (4, 5)
        if pixels.ndim not in dims or tuple(pixels.shape[-3:]) != (3, CROP_SIZE, CROP_SIZE):
            want = "[images, crops, 3, 336, 336]" if min_dims == 5 else "[crops, 3, 336, 336] or [images, crops, 3, 336, 336]"
            raise UsageError(f"pixel_values has shape {list(pixels.shape)}, expected {want}")
        return pixels.to(self.dtype)

    @staticmethod
    def _sizes(image_sizes, pixels: torch.Tensor | None) -> list[tuple[int, int]]:
        sizes = np.asarray(image_sizes)
        if sizes.ndim != 2 or sizes.shape[1] != 2 or not np.issubdtype(sizes.dtype, np.integer):
            raise UsageError(f"image_sizes must be integers [images, 2] (height, width), not {sizes.dtype} {list(sizes.shape)}")
        if sizes.shape[0] == 0:
            raise UsageError("no images: image_sizes is empty")
        if pixels is not None and sizes.shape[0] != pixels.shape[0]:
            raise UsageError(f"{sizes.shape[0]} image_sizes for {pixels.shape[0]} images of pixel_values")
        grids = []
        for h, w in sizes.tolist():
            if h <= 0 or w <= 0 or h % CROP_SIZE or w % CROP_SIZE:
                raise UsageError(f"image size {h}x{w} (height x width) is not a grid of {CROP_SIZE}-pixel crops")
            hc, wc = h // CROP_SIZE, w // CROP_SIZE
            if pixels is not None and 1 + hc * wc > pixels.shape[1]:
                raise UsageError(f"an image of {hc}x{wc} crops needs {1 + hc * wc} crops, pixel_values has "
                                 f"{pixels.shape[1]}")
            grids.append((hc, wc))
        return grids

    # ---- text ------------------------------------------------------------------------------------------
    # Each of these takes the images either as ``pixel_values`` + ``image_sizes`` or as ``image_features``
    # already computed (what :meth:`image_features` returns, or another pipeline's features to compare).
    def input_embeds(self, input_ids: Sequence[int], pixel_values=None, image_sizes=None, *,
                     image_features=None) -> np.ndarray:
        """The decoder's input embeddings [seq, hidden] float32 (image features at the negative ids)."""
        with torch.inference_mode():
            return self._embed(input_ids, pixel_values, image_sizes, image_features)[0].float().numpy()

    def logits(self, input_ids: Sequence[int], pixel_values=None, image_sizes=None, *,
               image_features=None) -> np.ndarray:
        """[seq, vocab] float32 logits of one prompt (negative ids are image placeholders)."""
        with torch.inference_mode():
            embeds = self._embed(input_ids, pixel_values, image_sizes, image_features)
            return self.text(inputs_embeds=embeds, use_cache=False).logits[0].float().numpy()

    def generate(self, input_ids: Sequence[int], pixel_values=None, image_sizes=None, max_new_tokens: int = 16,
                 stop_ids: Iterable[int] = STOP_IDS, *, image_features=None) -> list[int]:
        """Greedy new tokens (the stop token included when one ends the answer), with a KV cache."""
        from transformers import DynamicCache

        stops = {int(s) for s in stop_ids}
        new: list[int] = []
        with torch.inference_mode():
            cache = DynamicCache(config=self.text.config)
            embeds = self._embed(input_ids, pixel_values, image_sizes, image_features)
            out = self.text(inputs_embeds=embeds, past_key_values=cache, use_cache=True, logits_to_keep=1)
            for _ in range(max_new_tokens):
                token = int(out.logits[0, -1].argmax())
                new.append(token)
                if token in stops:
                    break
                out = self.text(input_ids=torch.tensor([[token]]), past_key_values=out.past_key_values, use_cache=True)
        return new

    def _embed(self, input_ids: Sequence[int], pixel_values, image_sizes, image_features=None) -> torch.Tensor:
        ids = torch.as_tensor(list(input_ids), dtype=torch.int64)
        if ids.ndim != 1 or ids.numel() == 0:
            raise UsageError("input_ids must be a non-empty list of token ids")
        if int(ids.max()) >= self.config.vocab_size:
            raise UsageError(f"token id {int(ids.max())} is outside the vocabulary of {self.config.vocab_size}")
        embeds = self.text.get_input_embeddings()(ids.clamp(min=0))
        image_positions = (ids < 0).nonzero()[:, 0]
        features = self._given_features(pixel_values, image_sizes, image_features)
        if features is None:
            if len(image_positions):
                raise UsageError(f"the prompt has {len(image_positions)} image positions (negative ids) but no images")
            return embeds[None]
        if features.shape != (len(image_positions), embeds.shape[1]):
            raise UsageError(f"the prompt has {len(image_positions)} image positions (negative ids), the images give "
                             f"features {list(features.shape)}")
        return embeds.index_put((image_positions,), features.to(embeds.dtype))[None]

    def _given_features(self, pixel_values, image_sizes, image_features) -> torch.Tensor | None:
        if image_features is not None:
            if pixel_values is not None:
                raise UsageError("give the images as pixel_values and image_sizes or as image_features, not both")
            features = torch.as_tensor(np.asarray(image_features, dtype=np.float32))
            if features.ndim != 2:
                raise UsageError(f"image_features has shape {list(features.shape)}, expected [tokens, hidden]")
            return features
        if pixel_values is None:
            return None
        if image_sizes is None:
            raise UsageError("pixel_values without image_sizes")
        return self._image_features(pixel_values, image_sizes)


def _read_tensors(checkpoint: Path) -> dict[str, torch.Tensor]:
    index, single = checkpoint / INDEX_FILE, checkpoint / SINGLE_FILE
    if index.is_file():
        try:
            weight_map = json.loads(index.read_text(encoding="utf-8"))["weight_map"]
            files = sorted(set(weight_map.values()))
        except (OSError, UnicodeDecodeError, ValueError, KeyError, TypeError, AttributeError) as exc:
            raise ModelSourceError(f"cannot read {index}: {exc}") from None
    elif single.is_file():
        weight_map, files = None, [SINGLE_FILE]
    else:
        raise ModelSourceError(f"no {SINGLE_FILE} or {INDEX_FILE} in {checkpoint}")
    tensors: dict[str, torch.Tensor] = {}
    for name in files:
        path = checkpoint / name
        try:
            part = load_file(str(path))
        except (OSError, SafetensorError) as exc:
            raise ModelSourceError(f"cannot read {path}: {exc}") from None
        if weight_map is not None:
            listed = {k for k, v in weight_map.items() if v == name}
            if listed != set(part):
                odd = sorted(listed ^ set(part))
                raise ModelSourceError(f"{path} does not hold the tensors {INDEX_FILE} lists for it: {odd[:3]}")
        tensors.update(part)
    return tensors


def _take(tensors: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    return {name[len(prefix):]: tensors.pop(name) for name in [n for n in tensors if n.startswith(prefix)]}


def _strict_problems(module: nn.Module, tensors: dict[str, torch.Tensor], prefix: str) -> list[str]:
    expected = {name: tuple(t.shape) for name, t in module.state_dict().items()}
    problems = [f"missing {prefix}{name}" for name in expected if name not in tensors]
    problems += [f"unexpected {prefix}{name}" for name in sorted(tensors) if name not in expected]
    problems += [f"{prefix}{name} has shape {tuple(t.shape)}, expected {expected[name]}"
                 for name, t in tensors.items() if name in expected and tuple(t.shape) != expected[name]]
    return problems


def _no_init():
    """Skip the random initialisation of weights that the checkpoint overwrites anyway."""
    try:
        from transformers.initialization import no_init_weights
    except ImportError:  # older transformers
        return contextlib.nullcontext()
    return no_init_weights()
