"""Open an untrusted image safely: one-line errors, pixel limits checked before decoding, RGB out.

Images reach the device from users: a path on the command line, bytes from the Python API, a
``data:image/...;base64,`` URL in an HTTP request. Any of them can be missing, not an image, cut short,
or a "decompression bomb" (a few KB that claim 50000x50000 pixels). Pillow helps here because
``Image.open`` is lazy: it reads the header only, so the pixel count is checked *before* a single pixel
is decoded. The full decode (``load()``) then runs inside a ``try`` so that a truncated file becomes an
:class:`ImageInputError` naming the image, never a traceback.

Pillow's own bomb checks stay on as a second guard: its ``DecompressionBombWarning`` (above
``Image.MAX_IMAGE_PIXELS``, 89.5 MP by default) is raised as an error while the image is opened, so the
effective limit is the smaller of ``max_pixels`` and Pillow's. The global ``Image.MAX_IMAGE_PIXELS`` is
never changed (an application that wants bigger images sets it itself).

Only common raster formats are opened (``FORMATS``): Pillow can also read EPS, which runs Ghostscript,
and many rare formats with a history of decoder bugs; a device server has no use for them.

The result is ``image.convert("RGB")``, exactly what Phi-3-vision's processor does (``convert_to_rgb``
then ``convert('RGB')``): no alpha compositing, no EXIF rotation, so a device sees the same pixels as the
reference processor would for the same file.
"""

from __future__ import annotations

import base64
import binascii
import http.client
import io
import os
import re
import time
import urllib.error
import urllib.parse
import urllib.request
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO

from edgeslm.errors import UsageError

if TYPE_CHECKING:  # Pillow is imported when an image is decoded: a device that only falls back has none
    from PIL import Image

MAX_PIXELS = 40_000_000
MAX_REMOTE_BYTES = 20 * 1024 * 1024  # 20 MiB: a remote image larger than this is refused while it downloads
REMOTE_TIMEOUT_S = 15.0  # whole download, not per read
FORMATS = ("PNG", "JPEG", "GIF", "BMP", "WEBP", "TIFF", "PPM", "AVIF")
_FORMAT_NAMES = "PNG, JPEG, GIF, BMP, WebP, TIFF, PPM or AVIF"
_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*)://")
_DECODE_ERRORS = (OSError, SyntaxError, ValueError, EOFError, IndexError, KeyError, TypeError)

ImageSource = str | bytes | bytearray | memoryview | os.PathLike


class ImageInputError(UsageError):
    """An image the user gave cannot be used (missing, not an image, damaged, too large, refused source).

    ``param`` names the request field it came from (``messages[0].content[1]``) so the HTTP server can
    answer with an OpenAI error object whose ``param`` points at it; it is ``None`` elsewhere.
    """

    def __init__(self, message: str, hint: str | None = None, param: str | None = None):
        super().__init__(message, hint)
        self.param = param


def open_image(source: ImageSource, *, label: str, max_pixels: int = MAX_PIXELS, allow_remote: bool = False,
               allow_files: bool = True) -> Image.Image:
    """A fully decoded RGB image from a path, bytes, or a ``data:``, ``file://`` or ``http(s)://`` URL.

    ``label`` names the image in messages ("image 1", "messages[0].content[1]"). ``allow_files=False``
    refuses paths and ``file://`` URLs (a server must not read its own disk on a client's behalf);
    ``http(s)://`` URLs are fetched only with ``allow_remote=True`` (a server that fetches URLs can be
    pointed at its own network), with a timeout and a ``MAX_REMOTE_BYTES`` cap.
    """
    if isinstance(source, (bytes, bytearray, memoryview)):
        data = bytes(source)
        return _decode(data, label, f"{len(data)} bytes", max_pixels)
    if isinstance(source, os.PathLike):
        return _open_file(Path(source), label, max_pixels, allow_files)
    if not isinstance(source, str):
        raise ImageInputError(f"{label}: expected a file path, bytes or a data:/http(s):/file: URL, "
                              f"not {type(source).__name__}")
    if source[:5].lower() == "data:":
        return _decode(_data_url_bytes(source, label), label, "data: URL", max_pixels)
    scheme = _SCHEME.match(source)
    if scheme is None:
        if not source.strip():
            raise ImageInputError(f"{label}: the image path is empty")
        return _open_file(Path(source), label, max_pixels, allow_files)
    kind = scheme.group(1).lower()
    if kind == "file":
        return _open_file(_file_url_path(source, label), label, max_pixels, allow_files)
    if kind in ("http", "https"):
        if not allow_remote:
            raise ImageInputError(f"{label}: fetching images from {kind}:// URLs is turned off here ({_short(source)})",
                                  hint="send the image inline as a data:image/...;base64, URL")
        return _decode(_fetch(source, label), label, _short(source), max_pixels)
    raise ImageInputError(f"{label}: unsupported URL scheme {kind}:// ({_short(source)})",
                          hint="use a file path, a data:image/...;base64, URL or an http(s):// URL")


def _open_file(path: Path, label: str, max_pixels: int, allow_files: bool) -> Image.Image:
    if not allow_files:
        raise ImageInputError(f"{label}: reading image files from this machine is not allowed here ({_short(str(path))})",
                              hint="send the image inline as a data:image/...;base64, URL")
    try:
        handle = path.open("rb")
    except FileNotFoundError:
        raise ImageInputError(f"{label}: no such file: {path}") from None
    except IsADirectoryError:
        raise ImageInputError(f"{label}: {path} is a folder, not an image file") from None
    except OSError as exc:
        raise ImageInputError(f"{label}: cannot read {path}: {exc.strerror or _one_line(exc)}") from None
    except ValueError as exc:  # e.g. a NUL byte in the path
        raise ImageInputError(f"{label}: not a usable file path ({_one_line(exc)}): {_short(repr(str(path)))}") from None
    with handle:
        if path.is_dir():  # Windows opens no folders, but some systems let open() succeed on one
            raise ImageInputError(f"{label}: {path} is a folder, not an image file")
        if os.fstat(handle.fileno()).st_size == 0:
            raise ImageInputError(f"{label} ({path}) is empty (0 bytes)")
        return _decode(handle, label, str(path), max_pixels)


def _decode(data: bytes | BinaryIO, label: str, where: str, max_pixels: int) -> Image.Image:
    """Header → size checks → full decode → ``convert("RGB")``; every failure is one ImageInputError."""
    from PIL import Image, UnidentifiedImageError

    if isinstance(data, bytes):
        if not data:
            raise ImageInputError(f"{label} ({where}) is empty (0 bytes)")
        data = io.BytesIO(data)
    # catch_warnings changes process-wide filters; a concurrent decode in another thread may briefly see
    # the "error" filter too, which only makes that thread stricter.
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        try:
            image = Image.open(data, formats=_available_formats())
        except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
            raise _too_large(label, where, max_pixels, exc) from None
        except UnidentifiedImageError:
            raise ImageInputError(f"{label} ({where}) is not an image edgeslm can read ({_FORMAT_NAMES})") from None
        except _DECODE_ERRORS as exc:
            raise ImageInputError(f"{label} ({where}) is damaged: {_one_line(exc)}") from None
        try:
            width, height = image.size
            if width <= 0 or height <= 0:
                raise ImageInputError(f"{label} ({where}) has zero size ({width}x{height} pixels)")
            if width * height > max_pixels:
                raise _too_large(label, where, max_pixels, None, width, height)
            image.load()
            rgb = image.convert("RGB")
            rgb.load()
        except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
            raise _too_large(label, where, max_pixels, exc) from None
        except MemoryError:
            raise ImageInputError(f"{label} ({where}) does not fit in memory while decoding") from None
        except _DECODE_ERRORS as exc:
            raise ImageInputError(f"{label} ({where}) is damaged or truncated: {_one_line(exc)}") from None
        finally:
            image.close()
    return rgb


def _too_large(label: str, where: str, max_pixels: int, exc: Exception | None, width: int = 0,
               height: int = 0) -> ImageInputError:
    if exc is not None:  # Pillow's own guard fired (its limit is below max_pixels, or the size changed on load)
        detail = f"over Pillow's decompression-bomb limit ({_one_line(exc)})"
    else:
        detail = f"{width}x{height} pixels ({width * height / 1e6:.1f} MP), over the limit of {max_pixels / 1e6:.1f} MP"
    return ImageInputError(f"{label} ({where}) is too large: {detail}",
                           hint="resize it first: Phi-3.5-vision sees at most 16 tiles of 336x336 pixels anyway")


def _data_url_bytes(url: str, label: str) -> bytes:
    header, comma, payload = url[5:].partition(",")
    if not comma:
        raise ImageInputError(f"{label}: malformed data: URL (no comma before the data)",
                              hint="expected data:image/png;base64,<base64 data>")
    params = [p.strip().lower() for p in header.split(";")]
    mime = params[0] or "text/plain"
    if not mime.startswith("image/"):
        raise ImageInputError(f"{label}: the data: URL has type {mime}, not an image type",
                              hint="expected data:image/png;base64,... (or image/jpeg, image/webp, ...)")
    if "base64" not in params[1:]:
        raise ImageInputError(f"{label}: the data: URL is not base64-encoded",
                              hint="expected data:image/...;base64,<base64 data>")
    if "%" in payload:
        payload = urllib.parse.unquote(payload)
    compact = "".join(payload.split())
    compact += "=" * (-len(compact) % 4)  # some clients drop the padding
    try:
        return base64.b64decode(compact, validate=True)
    except (binascii.Error, ValueError):
        raise ImageInputError(f"{label}: the data: URL holds invalid base64 data") from None


def _file_url_path(url: str, label: str) -> Path:
    parts = urllib.parse.urlsplit(url)
    if parts.netloc not in ("", "localhost"):
        raise ImageInputError(f"{label}: file:// URL on another host ({parts.netloc}) cannot be read")
    return Path(urllib.request.url2pathname(parts.path))


def _fetch(url: str, label: str) -> bytes:
    """GET ``url`` with a whole-download deadline and a byte cap; redirects only to http(s)."""
    opener = urllib.request.OpenerDirector()
    for handler in (urllib.request.ProxyHandler(), urllib.request.HTTPHandler(), urllib.request.HTTPSHandler(),
                    urllib.request.HTTPDefaultErrorHandler(), urllib.request.HTTPRedirectHandler(),
                    urllib.request.HTTPErrorProcessor()):
        opener.add_handler(handler)
    request = urllib.request.Request(url, headers={"User-Agent": "edgeslm", "Accept": "image/*"})
    deadline = time.monotonic() + REMOTE_TIMEOUT_S
    chunks, total = [], 0
    try:
        with opener.open(request, timeout=REMOTE_TIMEOUT_S) as response:
            length = response.headers.get("Content-Length", "")
            if length.isdigit() and int(length) > MAX_REMOTE_BYTES:
                raise _too_many_bytes(label, url, int(length))
            while chunk := response.read(65536):
                total += len(chunk)
                if total > MAX_REMOTE_BYTES:
                    raise _too_many_bytes(label, url, total)
                if time.monotonic() > deadline:
                    raise ImageInputError(f"{label}: {_short(url)} took longer than {REMOTE_TIMEOUT_S:g} s to download")
                chunks.append(chunk)
    except urllib.error.HTTPError as exc:
        exc.close()  # an HTTPError holds the response and its socket
        raise ImageInputError(f"{label}: {_short(url)} answered HTTP {exc.code} {_one_line(exc.reason)}") from None
    except urllib.error.URLError as exc:
        raise ImageInputError(f"{label}: could not fetch {_short(url)}: {_one_line(exc.reason)}") from None
    except (OSError, ValueError, http.client.HTTPException) as exc:
        raise ImageInputError(f"{label}: could not fetch {_short(url)}: {_one_line(exc) or type(exc).__name__}") from None
    return b"".join(chunks)


def _too_many_bytes(label: str, url: str, size: int) -> ImageInputError:
    return ImageInputError(f"{label}: {_short(url)} is larger than {MAX_REMOTE_BYTES // (1024 * 1024)} MiB "
                           f"({size} bytes or more)")


def _available_formats() -> tuple[str, ...]:
    from PIL import Image

    Image.init()
    return tuple(name for name in FORMATS if name in Image.OPEN)


def _short(text: str, limit: int = 100) -> str:
    return text if len(text) <= limit else text[:limit - 3] + "..."


def _one_line(value: object) -> str:
    return " ".join(str(value).split())
