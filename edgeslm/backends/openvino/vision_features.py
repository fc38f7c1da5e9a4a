"""Image features from a Phi-3.5-vision OpenVINO artifact's IRs with plain ``openvino.Core`` (device side).

The same computation as openvino-genai's phi3_v ``hd_feature_transform``, done right for every crop
grid: the vision embeddings IR on edgeslm's preprocessed crops (``vision.phi3v_processor``), the 2x2
merge of each crop's 24x24 patches, the sub-crop grid laid out ``rows`` x ``cols`` with a ``sub_GN``
newline per row of tokens, ``glb_GN``, the global crop's 12 rows, then the projection IR.

Why this exists beside VLMPipeline: openvino-genai 2026.x builds the HD image size as
``ImageSize{shape[2], shape[1]}`` of an NHWC tensor, i.e. height and width swapped
(``visual_language/phi3_vision/classes.cpp``, ``VisionEncoderPhi3V::encode`` and
``get_pixel_values_phi3_v``). For square crop grids (1x1, 2x2, ...) that changes nothing; for a grid
of rows != cols (an image of aspect ratio 2:1 or more at num_crops 4) the pipeline lays the crops out
transposed and puts ``(cols + 1)·12`` newlines instead of ``(rows + 1)·12`` -- other features and
another token count than the model was trained on. The engine sends those prompts here.
Standard library, numpy and openvino only.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

CROP = 336
VISION_EMBEDDINGS = "openvino_vision_embeddings_model.xml"
VISION_PROJECTION = "openvino_vision_projection_model.xml"


def square_grids(image_sizes) -> bool:
    """Whether every image's crop grid is square (what VLMPipeline lays out right)."""
    return all(int(h) == int(w) for h, w in np.asarray(image_sizes).reshape(-1, 2).tolist())


def merge_2x2(features: np.ndarray, rows: int, cols: int) -> np.ndarray:
    """[rows·cols, 576, C] -> [12·rows, 12·cols, 4C] (features within a 2x2 block: row, column, channel)."""
    n, patches, c = features.shape
    half = int(round(patches ** 0.5)) // 2
    merged = features.reshape(n, half, 2, half, 2, c).transpose(0, 1, 3, 2, 4, 5).reshape(n, half * half, 4 * c)
    return merged.reshape(rows, cols, half, half, 4 * c).transpose(0, 2, 1, 3, 4).reshape(rows * half, cols * half,
                                                                                          4 * c)


def with_newlines(grid: np.ndarray, sub_gn: np.ndarray) -> np.ndarray:
    rows, _, dim = grid.shape
    return np.concatenate([grid, np.broadcast_to(sub_gn, (rows, 1, dim))], axis=1).reshape(-1, dim)


class VisionFeatures:
    """The vision embeddings and projection IRs compiled on ``device`` (CPU or GPU), and the separators."""

    def __init__(self, artifact_dir: Path, device: str = "CPU", core=None, properties: dict | None = None):
        import openvino as ov

        core = core or ov.Core()
        config = json.loads((Path(artifact_dir) / "config.json").read_text(encoding="utf-8"))
        self.sub_gn = np.asarray(config["sub_GN"], dtype=np.float32).reshape(-1)
        self.glb_gn = np.asarray(config["glb_GN"], dtype=np.float32).reshape(1, -1)
        props = properties or {}
        self.vision = core.compile_model(str(Path(artifact_dir) / VISION_EMBEDDINGS), device, props)
        self.projection = core.compile_model(str(Path(artifact_dir) / VISION_PROJECTION), device, props)

    def __call__(self, pixel_values: np.ndarray, image_sizes: np.ndarray) -> np.ndarray:
        """[all images' tokens, hidden] float32 for ``ProcessedImages``' pixel_values and image_sizes."""
        out = []
        for pixels, (height, width) in zip(np.asarray(pixel_values, np.float32),
                                           np.asarray(image_sizes).reshape(-1, 2).tolist()):
            rows, cols = int(height) // CROP, int(width) // CROP
            feats = np.asarray(self.vision(pixels[:1 + rows * cols])[0], dtype=np.float32)
            sub = with_newlines(merge_2x2(feats[1:], rows, cols), self.sub_gn)
            glb = with_newlines(merge_2x2(feats[:1], 1, 1), self.sub_gn)
            merged = np.concatenate([sub, self.glb_gn, glb])[None]
            out.append(np.asarray(self.projection(merged)[0], dtype=np.float32)[0])
        return np.concatenate(out)
