"""The device-side Phi-3.5-vision image pipeline: safe opening, preprocessing equal to the hub's processor,
``<|image_N|>`` expansion and OpenAI content parts.

Fast: no model runs. The torch comparison transcribes the hub's ``image_processing_phi3_v.py`` below and
is skipped where torchvision is not installed.
"""

from __future__ import annotations

import base64
import http.server
import io
import json
import os
import struct
import subprocess
import sys
import threading
import zlib
from pathlib import Path

import numpy as np
import pytest
from conftest import FIXTURES, REPO, import_blocker
from PIL import Image

from edgeslm.errors import UsageError
from edgeslm.runtime.message_parts import ImageRef, split_images
from edgeslm.vision import image_files
from edgeslm.vision.image_files import ImageInputError, open_image
from edgeslm.vision.image_prompt import count_image_tags, expand_image_prompt
from edgeslm.vision.phi3v_processor import (
    CLIP_MEAN,
    CLIP_STD,
    bicubic_resize,
    hd_size,
    image_token_count,
    preprocess,
    tokens_per_crop_grid,
)

IMAGES = FIXTURES / "images"
DEV = FIXTURES / "eval" / "vision-dev"
VISION_MODEL = REPO / "examples" / "models" / "phi35v-shapes-tiny"
MEAN = np.array(CLIP_MEAN, np.float32)
STD = np.array(CLIP_STD, np.float32)
WHITE = (np.float32(1) - MEAN) / STD


def normalized(rgb) -> np.ndarray:
    return (np.asarray(rgb, np.float32) / np.float32(255) - MEAN) / STD


def png_header(width: int, height: int) -> bytes:
    """A PNG whose IHDR claims width x height, with no pixel data: only its header can be read."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"")) + chunk(b"IEND", b"")


def encoded(image: Image.Image, fmt: str = "PNG", **options) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **options)
    return buffer.getvalue()


# --- preprocessing -----------------------------------------------------------------------------------

@pytest.mark.parametrize(("name", "hd", "tokens"), [
    ("shapes-336.png", (672, 672), 757),
    ("gradient-1280x720.jpg", (672, 672), 757),
    ("tall-64x900.png", (1344, 336), 781),
])
def test_fixture_table(name, hd, tokens):
    image = open_image(IMAGES / name, label="image 1")
    result = preprocess([image], num_crops=4)
    assert result.pixel_values.shape == (1, 5, 3, 336, 336) and result.pixel_values.dtype == np.float32
    assert result.image_sizes.tolist() == [list(hd)] and result.image_sizes.dtype == np.int64
    assert result.num_img_tokens == (tokens,) and result.count == 1
    assert hd_size(*image.size, 4) == hd and image_token_count(*image.size, 4) == tokens


def test_wide_image_is_padded_with_white_bands_top_and_bottom():
    result = preprocess([open_image(IMAGES / "gradient-1280x720.jpg", label="image 1")])
    # 1280x720 → 672x378, padded to 672: 147 white rows on top, 147 at the bottom
    hd = np.concatenate([np.concatenate(list(result.pixel_values[0, 1 + 2 * r:3 + 2 * r]), axis=2) for r in (0, 1)],
                        axis=1)
    assert hd.shape == (3, 672, 672)
    white = np.broadcast_to(WHITE[:, None, None], (3, 147, 672))
    assert np.array_equal(hd[:, :147], white) and np.array_equal(hd[:, 525:], white)
    assert not np.array_equal(hd[:, 147:148], white[:, :1]) and not np.array_equal(hd[:, 524:525], white[:, :1])


def test_smaller_grids_leave_zero_crops_and_batches_mix_grids():
    wide = Image.new("RGB", (672, 336), (10, 200, 30))  # ratio 2 at num_crops=4: 1x2 tiles
    tall = open_image(IMAGES / "tall-64x900.png", label="image 2")
    result = preprocess([wide, tall], num_crops=4)
    assert result.pixel_values.shape == (2, 5, 3, 336, 336)
    assert result.image_sizes.tolist() == [[336, 672], [1344, 336]] and result.num_img_tokens == (457, 781)
    assert not result.pixel_values[0, :3].any(axis=(1, 2, 3)).tolist().count(False)
    assert not result.pixel_values[0, 3:].any() and result.pixel_values[1].any(axis=(1, 2, 3)).all()
    empty = preprocess([], num_crops=16)
    assert empty.pixel_values.shape == (0, 17, 3, 336, 336) and empty.image_sizes.shape == (0, 2) and empty.count == 0


@pytest.mark.parametrize(("size", "boxes"), [
    ((672, 672), [(0, 0), (336, 0), (0, 336), (336, 336)]),  # 2x2: TL, TR, BL, BR
    ((1008, 336), [(0, 0), (336, 0), (672, 0)]),  # 1x3: left to right
    ((336, 1008), [(0, 0), (0, 336), (0, 672)]),  # 3x1 (transposed internally): top to bottom
])
def test_crops_are_row_major(size, boxes):
    colours = [(255, 0, 0), (0, 255, 0), (0, 0, 255), (255, 255, 0)]
    image = Image.new("RGB", size)
    for (x, y), colour in zip(boxes, colours):
        image.paste(colour, (x, y, x + 336, y + 336))
    result = preprocess([image], num_crops=4)
    for k, colour in enumerate(colours[:len(boxes)]):
        assert np.allclose(result.pixel_values[0, 1 + k].mean(axis=(1, 2)), normalized(colour), atol=1e-6), k


def test_channels_are_rgb_and_one_tile_global_image_is_the_tile():
    red = preprocess([Image.new("RGB", (336, 336), (255, 0, 0))], num_crops=1).pixel_values[0]
    assert red.shape == (2, 3, 336, 336)
    assert np.allclose(red[1, 0], WHITE[0]) and np.allclose(red[1, 2], -MEAN[2] / STD[2]) and red[1, 0, 0, 0] > 1.9
    noise = Image.fromarray(np.random.default_rng(1).integers(0, 256, (336, 336, 3), dtype=np.uint8))
    one = preprocess([noise], num_crops=1).pixel_values[0]
    assert np.abs(one[0] - one[1]).max() < 1e-6  # bicubic at scale 1 is the identity
    for mode in ("L", "RGBA", "P", "CMYK", "LA"):
        converted = preprocess([noise.convert(mode)], num_crops=1).pixel_values[0, 1]
        assert np.array_equal(converted, preprocess([noise.convert(mode).convert("RGB")], num_crops=1).pixel_values[0, 1])


def test_num_crops_and_inputs_are_checked():
    image = Image.new("RGB", (8, 8))
    for bad in (0, 17, 4.0, True, "4", None):
        with pytest.raises(UsageError, match="num_crops"):
            preprocess([image], num_crops=bad)
    with pytest.raises(UsageError, match="not a PIL image"):
        preprocess([np.zeros((8, 8, 3))])
    with pytest.raises(UsageError, match="mean"):
        preprocess([image], mean=(0.5, 0.5))
    with pytest.raises(ImageInputError, match="too thin"):
        preprocess([Image.new("RGB", (5000, 1))], num_crops=4)
    with pytest.raises(ImageInputError, match="too thin"):
        hd_size(1, 5000, 4)
    with pytest.raises(UsageError, match="positive"):
        hd_size(0, 10, 4)


def test_tokens_per_crop_grid_lists_exactly_the_reachable_grids():
    assert tokens_per_crop_grid(1) == {"1x1": 313}
    four = tokens_per_crop_grid(4)
    assert four == {"1x2": 457, "2x1": 469, "1x3": 601, "3x1": 625, "1x4": 745, "2x2": 757, "4x1": 781}
    sixteen = tokens_per_crop_grid(16)
    assert sixteen["4x4"] == 2509 and sixteen["16x1"] == 2653 and "1x1" not in sixteen and "3x3" not in sixteen
    for num_crops in (2, 4, 9):
        seen = set()
        for height in range(1, 120, 3):
            for width in range(height, height * num_crops * 336, max(1, height // 2)):
                grid_h, grid_w = (v // 336 for v in hd_size(width, height, num_crops))
                seen |= {f"{grid_h}x{grid_w}", f"{grid_w}x{grid_h}"}
        assert seen == set(tokens_per_crop_grid(num_crops)), num_crops


def test_pipeline_needs_no_torch_torchvision_or_transformers(tmp_path):
    code = ("from edgeslm.vision.image_files import open_image; from edgeslm.vision.phi3v_processor import preprocess; "
            "from edgeslm.vision.image_prompt import expand_image_prompt; "
            "from edgeslm.runtime.message_parts import split_images; import sys; "
            f"r = preprocess([open_image({str(IMAGES / 'shapes-336.png')!r}, label='image 1')]); "
            "assert r.num_img_tokens == (757,); "
            "assert not {'torch', 'torchvision', 'transformers'} & set(sys.modules)")
    env = {**os.environ, **import_blocker(tmp_path, "torch", "torchvision", "transformers")}
    proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr


# --- the reference: the hub's image_processing_phi3_v.py, transcribed with torch/torchvision ---------------

def reference_preprocess(images, num_crops):
    torch = pytest.importorskip("torch")
    torchvision = pytest.importorskip("torchvision")

    def padding_336(b):
        width, height = b.size
        tar = int(np.ceil(height / 336) * 336)
        top_padding = int((tar - height) / 2)
        bottom_padding = tar - height - top_padding
        return torchvision.transforms.functional.pad(b, [0, top_padding, 0, bottom_padding], fill=[255, 255, 255])

    def hd_transform(img, hd_num):
        width, height = img.size
        trans = False
        if width < height:
            img = img.transpose(Image.TRANSPOSE)
            trans = True
            width, height = img.size
        ratio = width / height
        scale = 1
        while scale * np.ceil(scale / ratio) <= hd_num:
            scale += 1
        scale -= 1
        new_w = int(scale * 336)
        new_h = int(new_w / ratio)
        img = torchvision.transforms.functional.resize(img, [new_h, new_w])
        img = padding_336(img)
        if trans:
            img = img.transpose(Image.TRANSPOSE)
        return img

    img_processor = torchvision.transforms.Compose([torchvision.transforms.ToTensor(),
                                                    torchvision.transforms.Normalize(CLIP_MEAN, CLIP_STD)])
    images = [image.convert("RGB") for image in images]
    hd_images = [img_processor(hd_transform(im, num_crops)) for im in images]
    global_image = [torch.nn.functional.interpolate(im.unsqueeze(0).float(), size=(336, 336), mode="bicubic").to(im.dtype)
                    for im in hd_images]
    shapes = [[im.size(1), im.size(2)] for im in hd_images]
    num_img_tokens = [int(((h // 336) * (w // 336) + 1) * 144 + 1 + (h // 336 + 1) * 12) for h, w in shapes]
    reshaped = [im.reshape(1, 3, h // 336, 336, w // 336, 336).permute(0, 2, 4, 1, 3, 5).reshape(-1, 3, 336, 336)
                for im, (h, w) in zip(hd_images, shapes)]
    joined = [torch.cat([g] + [im], dim=0) for g, im in zip(global_image, reshaped)]
    padded = [torch.cat([im, torch.zeros(num_crops + 1 - im.shape[0], 3, 336, 336)]) for im in joined]
    return torch.stack(padded).numpy(), np.array(shapes), tuple(num_img_tokens)


def assert_matches_reference(images, num_crops):
    pixel_values, image_sizes, tokens = reference_preprocess(images, num_crops)
    result = preprocess(images, num_crops=num_crops)
    assert result.image_sizes.tolist() == image_sizes.tolist() and result.num_img_tokens == tokens
    assert result.pixel_values.shape == pixel_values.shape
    assert np.abs(result.pixel_values - pixel_values).max() < 1e-4
    assert np.array_equal(result.pixel_values[:, 1:], pixel_values[:, 1:])  # tiles: same float32 operations


def test_fixture_images_match_the_torch_reference():
    paths = [IMAGES / name for name in ("shapes-336.png", "gradient-1280x720.jpg", "tall-64x900.png")]
    images = [open_image(path, label=path.name) for path in paths + sorted(DEV.glob("*.png"))]
    assert len(images) == 33
    for start in range(0, len(images), 8):  # num_crops=4: the fixture model's preprocessor_config.json
        assert_matches_reference(images[start:start + 8], 4)
    assert_matches_reference(images[:3] + images[4:9], 16)  # Phi-3.5-vision's single-image setting


def test_random_sizes_match_the_torch_reference():
    rng = np.random.default_rng(0)
    sizes = [(1, 1), (17, 500), (500, 17), (999, 333), (337, 335), (673, 336), (2000, 37), (1343, 1)]
    images = [Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)) for w, h in sizes]
    for num_crops in (1, 7, 16):
        fits = [image for image in images if max(image.size) <= min(image.size) * 336 * num_crops]
        assert len(fits) >= len(images) - 1
        assert_matches_reference(fits, num_crops)
    # 1343x1 at one tile: the reference's resize fails (height 0); here it is a clear ImageInputError
    with pytest.raises(ValueError, match="must be > 0"):
        reference_preprocess(images[-1:], 1)
    with pytest.raises(ImageInputError, match="too thin"):
        preprocess(images[-1:], num_crops=1)


def test_bicubic_matches_torch_interpolate():
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(2)
    for (height, width), (out_h, out_w) in [((672, 672), (336, 336)), ((1344, 336), (336, 336)), ((50, 70), (336, 336)),
                                            ((700, 1000), (336, 336)), ((5, 5), (3, 7)), ((1, 9), (4, 2))]:
        x = rng.standard_normal((3, height, width)).astype(np.float32)
        expected = torch.nn.functional.interpolate(torch.from_numpy(x)[None], size=(out_h, out_w), mode="bicubic")[0]
        assert np.abs(bicubic_resize(x, out_h, out_w) - expected.numpy()).max() < 1e-4, (height, width, out_h, out_w)


# --- opening images -----------------------------------------------------------------------------------

def test_opens_paths_bytes_data_and_file_urls_as_loaded_rgb():
    path = IMAGES / "shapes-336.png"
    reference = np.asarray(Image.open(path).convert("RGB"))
    data = path.read_bytes()
    b64 = base64.b64encode(data).decode()
    sources = [path, str(path), data, bytearray(data), f"data:image/png;base64,{b64}", path.as_uri(),
               "data:image/jpeg;base64," + "\n".join(b64[i:i + 76] for i in range(0, len(b64), 76)).rstrip("="),
               ]
    for source in sources:
        image = open_image(source, label="image 1")
        assert image.mode == "RGB" and image.size == (336, 336)
        assert np.array_equal(np.asarray(image), reference)


@pytest.mark.parametrize("mode", ["RGBA", "LA", "L", "P", "I;16", "1"])
def test_modes_convert_like_the_reference(mode):
    rng = np.random.default_rng(3)
    rgba = Image.fromarray(rng.integers(0, 256, (20, 30, 4), dtype=np.uint8), "RGBA")
    if mode == "I;16":
        source = Image.fromarray((rng.integers(0, 400, (20, 30))).astype(np.uint16))
    elif mode == "P":
        source = rgba.convert("RGB").quantize(16)
        source.info["transparency"] = 0
    else:
        source = rgba.convert(mode)
    data = encoded(source, "PNG", **({"transparency": 0} if mode == "P" else {}))
    expected = Image.open(io.BytesIO(data)).convert("RGB")
    image = open_image(data, label="image 1")
    assert image.mode == "RGB" and np.array_equal(np.asarray(image), np.asarray(expected))
    cmyk = encoded(rgba.convert("CMYK"), "JPEG")
    assert np.array_equal(np.asarray(open_image(cmyk, label="x")), np.asarray(Image.open(io.BytesIO(cmyk)).convert("RGB")))


def assert_bad(source, *fragments, **options) -> ImageInputError:
    with pytest.raises(ImageInputError) as caught:
        open_image(source, label="image 1", **options)
    error = caught.value
    assert isinstance(error, UsageError) and error.exit_code == 2 and error.param is None
    line = error.one_line()
    assert "\n" not in line and line.startswith("image 1"), line
    for fragment in fragments:
        assert fragment in line, (fragment, line)
    return error


def test_bad_files_give_one_line_errors(tmp_path):
    assert_bad(tmp_path / "missing.png", "no such file")
    assert_bad(str(tmp_path), "folder")
    assert_bad(IMAGES / "not-an-image.png", "is not an image", "not-an-image.png")
    (tmp_path / "empty.png").write_bytes(b"")
    assert_bad(tmp_path / "empty.png", "empty (0 bytes)")
    assert_bad(b"", "empty (0 bytes)")
    for name in ("shapes-336.png", "gradient-1280x720.jpg"):
        data = (IMAGES / name).read_bytes()
        (tmp_path / name).write_bytes(data[:len(data) // 2])
        assert_bad(tmp_path / name, "truncated", name)
    assert_bad(png_header(0, 10), "not an image")  # Pillow refuses zero-size images in their header
    assert_bad(encoded(Image.new("RGB", (4, 4)), "TGA"), "is not an image edgeslm can read")  # format not allowed
    assert_bad(12345, "expected a file path")
    assert_bad("   ", "empty")
    assert_bad("bad\0name.png", "not a usable file path")
    with Image.open(tmp_path / "shapes-336.png") as lazy, \
            pytest.raises(ImageInputError, match="image 1 cannot be decoded"):  # the truncated copy, opened lazily
        preprocess([lazy])


def test_pixel_limits_are_checked_before_decoding():
    before = Image.MAX_IMAGE_PIXELS
    assert_bad(png_header(50000, 50000), "too large", "decompression-bomb")  # Pillow's own guard
    # the header claims 48 MP and there are no pixels: the size check fires before any decode
    assert_bad(png_header(8000, 6000), "too large", "8000x6000", "48.0 MP", "40.0 MP")
    big = encoded(Image.new("RGB", (2000, 1000), (1, 2, 3)))
    assert_bad(big, "2000x1000", "over the limit of 1.0 MP", max_pixels=1_000_000)
    assert open_image(big, label="image 1", max_pixels=2_000_000).size == (2000, 1000)
    assert before == Image.MAX_IMAGE_PIXELS


def test_bad_data_urls():
    b64 = base64.b64encode((IMAGES / "shapes-336.png").read_bytes()).decode()
    assert_bad("data:image/png," + b64[:50], "not base64-encoded")
    assert_bad("data:text/plain;base64,aGVsbG8=", "type text/plain")
    assert_bad("data:;base64,aGVsbG8=", "type text/plain")
    assert_bad("data:image/png;base64,@@@@", "invalid base64")
    assert_bad("data:image/png;base64", "no comma")
    assert_bad("data:image/png;base64," + base64.b64encode(b"this is not a png").decode(), "is not an image")


def test_sources_can_be_refused():
    assert_bad("http://127.0.0.1:9/cat.png", "http:// URLs is turned off", "data:image")
    assert_bad("https://example.com/cat.png", "https:// URLs is turned off")
    assert_bad("ftp://example.com/cat.png", "unsupported URL scheme ftp://")
    path = IMAGES / "shapes-336.png"
    for source in (path, str(path), path.as_uri()):
        assert_bad(source, "not allowed here", allow_files=False)
    assert_bad("file://otherhost/x.png", "another host")
    assert open_image("data:image/png;base64," + base64.b64encode(path.read_bytes()).decode(), label="x",
                      allow_files=False).size == (336, 336)


@pytest.fixture()
def image_server(monkeypatch):
    """A local HTTP server: /shapes.png, /big.png (over a lowered byte cap), anything else 404."""
    monkeypatch.setenv("no_proxy", "*")
    for name in ("http_proxy", "HTTP_PROXY", "all_proxy", "ALL_PROXY"):
        monkeypatch.delenv(name, raising=False)
    body = (IMAGES / "shapes-336.png").read_bytes()

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802 (http.server's name)
            if self.path not in ("/shapes.png", "/big.png"):
                self.send_error(404)
                return
            self.send_response(200)
            self.send_header("Content-Type", "image/png")
            if self.path == "/shapes.png":
                self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def test_remote_images_when_allowed(image_server, monkeypatch):
    image = open_image(f"{image_server}/shapes.png", label="image 1", allow_remote=True)
    assert np.array_equal(np.asarray(image), np.asarray(Image.open(IMAGES / "shapes-336.png").convert("RGB")))
    assert_bad(f"{image_server}/nothing.png", "HTTP 404", allow_remote=True)
    monkeypatch.setattr(image_files, "MAX_REMOTE_BYTES", 1000)
    assert_bad(f"{image_server}/shapes.png", "larger than", allow_remote=True)  # refused by Content-Length
    assert_bad(f"{image_server}/big.png", "larger than", allow_remote=True)  # refused while downloading


def test_image_input_error_carries_param():
    error = ImageInputError("messages[0].content[1] is bad", hint="fix it", param="messages[0].content[1]")
    assert error.param == "messages[0].content[1]" and error.hint == "fix it" and error.exit_code == 2


# --- <|image_N|> placeholders -------------------------------------------------------------------------

def test_expand_image_prompt_gives_the_hub_ids():
    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_file(str(VISION_MODEL / "tokenizer.json"))

    def encode(text: str) -> list[int]:
        ids = tokenizer.encode(text, add_special_tokens=True).ids
        assert ids[0] == 1  # every chunk starts with BOS, as in the hub processor
        return ids

    prompt = "<|user|>\n<|image_1|>\nHow many shapes are there?<|end|>\n<|assistant|>\n"
    ids = expand_image_prompt(prompt, encode, [757])
    assert ids == [1, 32010, 29871, 13] + [-1] * 757 + [1, 29871, 13, 5328, 1784, 25834, 526, 727, 29973, 32007,
                                                        29871, 13, 32001]
    assert len(ids) == 774
    num_crops = json.loads((VISION_MODEL / "preprocessor_config.json").read_text())["num_crops"]
    tokens = preprocess([open_image(IMAGES / "shapes-336.png", label="image 1")], num_crops=num_crops).num_img_tokens
    assert tokens == (757,)


def test_expand_several_images_and_plain_prompts():
    def encode(text):
        return [1] + [ord(c) for c in text]

    assert expand_image_prompt("a<|image_1|>b<|image_2|>", encode, [3, 2]) == \
        [1, 97, -1, -1, -1, 1, 98, -2, -2, 1]
    assert expand_image_prompt("no images", encode, []) == encode("no images")
    assert count_image_tags("<|image_1|> x <|image_12|> <|image|> <|image_a|>") == 2


@pytest.mark.parametrize(("prompt", "counts", "fragments"), [
    ("<|image_1|><|image_2|>", [5, 5, 5], ["3 images were given but the prompt has 2 <|image_N|> placeholders"]),
    ("<|image_1|><|image_2|>", [5], ["1 image was given but the prompt has 2 <|image_N|> placeholders"]),
    ("<|image_1|>", [], ["no image was given but the prompt has 1 <|image_N|> placeholder"]),
    ("hello", [5], ["1 image was given but the prompt has no <|image_N|> placeholder"]),
    ("<|image_1|><|image_3|>", [5, 5], ["<|image_3|> matches no image", "2 images were given", "<|image_2|>"]),
    ("<|image_0|>", [5], ["<|image_0|> matches no image"]),
    ("<|image_2|><|image_1|>", [5, 5], ["numbered from 1 in order", "<|image_2|>, <|image_1|>"]),
    ("<|image_1|><|image_1|>", [5, 5], ["once each", "<|image_1|>, <|image_1|>"]),
])
def test_expand_image_prompt_mismatches(prompt, counts, fragments):
    with pytest.raises(ImageInputError) as caught:
        expand_image_prompt(prompt, lambda text: [1], counts)
    line = caught.value.one_line()
    assert "\n" not in line
    for fragment in fragments:
        assert fragment in line, (fragment, line)


# --- OpenAI content parts -----------------------------------------------------------------------------

def test_split_images_numbers_images_across_the_conversation():
    png = (IMAGES / "shapes-336.png").read_bytes()
    messages = [
        {"role": "system", "content": "You see shapes."},
        {"role": "user", "name": "ana", "content": [
            {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA", "detail": "high"}},
            {"type": "text", "text": "What is this?"},
            {"type": "image_url", "image_url": "https://example.com/b.png"},
        ]},
        {"role": "assistant", "content": None},
        {"role": "user", "content": [{"type": "text", "text": "And "}, {"type": "image", "image": png},
                                     {"type": "image", "image": IMAGES / "tall-64x900.png"}, {"type": "text", "text": "?"}]},
    ]
    converted, images = split_images(messages)
    assert converted == [
        {"role": "system", "content": "You see shapes."},
        {"role": "user", "name": "ana", "content": "<|image_1|>\nWhat is this?<|image_2|>\n"},
        {"role": "assistant", "content": ""},
        {"role": "user", "content": "And <|image_3|>\n<|image_4|>\n?"},
    ]
    assert images == [ImageRef("data:image/png;base64,AAAA", "messages[1].content[0]"),
                      ImageRef("https://example.com/b.png", "messages[1].content[2]"),
                      ImageRef(png, "messages[3].content[1]"),
                      ImageRef(IMAGES / "tall-64x900.png", "messages[3].content[2]")]
    assert messages[1]["content"][0]["type"] == "image_url"  # the request is not changed


def test_string_contents_keep_their_placeholders():
    messages = [{"role": "user", "content": "<|image_1|>\nWhat is this?"}]
    assert split_images(messages) == (messages, [])
    assert split_images([{"role": "user", "content": [{"type": "text", "text": "<|image_1|> hi"}]}])[1] == []


@pytest.mark.parametrize(("messages", "param", "fragment"), [
    ({"role": "user"}, "messages", "must be a list"),
    (["hi"], "messages[0]", "must be an object"),
    ([{"role": "user", "content": 5}], "messages[0].content", "string or a list"),
    ([{"role": "user", "content": ["hi"]}], "messages[0].content[0]", "content part object"),
    ([{"role": "user", "content": [{"text": "hi"}]}], "messages[0].content[0]", "type (missing)"),
    ([{"role": "user", "content": [{"type": "input_audio"}]}], "messages[0].content[0]", "'input_audio'"),
    ([{"role": "user", "content": [{"type": "text", "text": 3}]}], "messages[0].content[0]", "text must be a string"),
    ([{"role": "user", "content": [{"type": "text", "text": ""}, {"type": "image_url", "image_url": {}}]}],
     "messages[0].content[1]", "image_url.url"),
    ([{"role": "user", "content": [{"type": "image", "image": 7}]}], "messages[0].content[0]", "image must be"),
    ([{"role": "user", "content": [{"type": "image", "image": b""}]}], "messages[0].content[0]", "image must be"),
    ([{"role": "user", "content": "<|image_1|> and"}, {"role": "user", "content": [
        {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}}]}],
     "messages[0].content", "literal <|image_N|> placeholder"),
    ([{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}},
                                   {"type": "text", "text": "see <|image_1|>"}]}],
     "messages[0].content[1]", "literal <|image_N|> placeholder"),
])
def test_split_images_bad_shapes_name_the_field(messages, param, fragment):
    with pytest.raises(ImageInputError) as caught:
        split_images(messages)
    assert caught.value.param == param and fragment in caught.value.one_line()
    assert "\n" not in caught.value.one_line()


def test_parts_to_token_ids_end_to_end(tmp_path: Path):
    path = tmp_path / "dev.png"
    path.write_bytes((DEV / "dev-001.png").read_bytes())
    converted, refs = split_images([{"role": "user", "content": [{"type": "image", "image": path},
                                                                 {"type": "text", "text": "Colour?"}]}])
    images = [open_image(ref.source, label=ref.label) for ref in refs]
    processed = preprocess(images, num_crops=4)
    prompt = f"<|user|>\n{converted[0]['content']}<|end|>\n<|assistant|>\n"
    ids = expand_image_prompt(prompt, lambda text: [1, len(text)], processed.num_img_tokens)
    assert ids.count(-1) == processed.num_img_tokens[0] == image_token_count(672, 336, 4) == 457
