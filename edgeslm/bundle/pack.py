"""One-file bundles: pack a bundle folder into a ``.tar`` and unpack it safely.

Unpacking checks every member first and refuses the whole archive if any member would land
outside the destination: absolute paths, ``..`` components, links whose target leaves the
destination, device files. Extraction then also runs with tarfile's ``data`` filter.
"""

from __future__ import annotations

import os
import shutil
import tarfile
import tempfile
from pathlib import Path, PurePosixPath

from ..errors import BundleError, OutputExistsError
from .manifest import MANIFEST_NAME


def pack_bundle(folder: Path, tar_path: Path | None = None, force: bool = False) -> Path:
    folder = Path(folder).resolve()
    if not (folder / MANIFEST_NAME).is_file():
        raise BundleError(f"{folder} is not a bundle: it has no {MANIFEST_NAME}")
    tar_path = Path(tar_path) if tar_path else folder.with_name(folder.name + ".tar")
    if tar_path.exists() and not force:
        raise OutputExistsError(f"{tar_path} exists", hint="pass [[force]] to replace it")
    fd, tmp = tempfile.mkstemp(prefix=f".{tar_path.name}.", suffix=".partial", dir=tar_path.parent)
    os.close(fd)
    try:
        with tarfile.open(tmp, "w", format=tarfile.PAX_FORMAT) as tar:
            tar.add(folder / MANIFEST_NAME, arcname=f"{folder.name}/{MANIFEST_NAME}")
            for path in sorted(folder.rglob("*")):
                if path.is_file() and path != folder / MANIFEST_NAME:
                    tar.add(path, arcname=f"{folder.name}/{path.relative_to(folder).as_posix()}")
        os.replace(tmp, tar_path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return tar_path


def check_members(tar: tarfile.TarFile, label: str) -> list[tarfile.TarInfo]:
    """Refuse any member that would escape the destination folder."""
    members = tar.getmembers()
    for m in members:
        name = m.name
        pure = PurePosixPath(name)
        if name.startswith(("/", "\\")) or pure.is_absolute() or (len(name) > 1 and name[1] == ":"):
            raise BundleError(f"{label}: member '{name}' has an absolute path; refusing to unpack")
        if ".." in pure.parts:
            raise BundleError(f"{label}: member '{name}' contains '..'; refusing to unpack")
        if m.issym() or m.islnk():
            target = PurePosixPath(m.linkname)
            base = pure.parent if m.issym() else PurePosixPath()
            resolved = _normalize(base / target)
            if target.is_absolute() or resolved is None:
                raise BundleError(f"{label}: link '{name}' points outside the destination ('{m.linkname}'); "
                                  "refusing to unpack")
        elif not (m.isfile() or m.isdir()):
            raise BundleError(f"{label}: member '{name}' is a device or special file; refusing to unpack")
    return members


def _normalize(path: PurePosixPath) -> PurePosixPath | None:
    parts: list[str] = []
    for part in path.parts:
        if part == "..":
            if not parts:
                return None
            parts.pop()
        elif part not in (".", ""):
            parts.append(part)
    return PurePosixPath(*parts) if parts else PurePosixPath(".")


def unpack_bundle(tar_path: Path, dest: Path) -> Path:
    """Unpack into ``dest`` (created); return the bundle folder inside it."""
    tar_path = Path(tar_path)
    if not tar_path.is_file():
        raise BundleError(f"bundle archive {tar_path} does not exist")
    try:
        tar = tarfile.open(tar_path, "r:*")
    except (tarfile.TarError, OSError) as exc:
        raise BundleError(f"{tar_path} is not a readable tar archive: {exc}") from None
    with tar:
        members = check_members(tar, str(tar_path))
        dest.mkdir(parents=True, exist_ok=True)
        try:
            tar.extractall(dest, members=members, filter="data")
        except (tarfile.TarError, OSError) as exc:
            raise BundleError(f"{tar_path}: cannot unpack: {exc}") from None
    manifests = sorted(dest.glob(f"*/{MANIFEST_NAME}")) or sorted(dest.glob(MANIFEST_NAME))
    if not manifests:
        raise BundleError(f"{tar_path} holds no {MANIFEST_NAME}: not a bundle archive")
    return manifests[0].parent


def _flashed_current(folder: Path) -> Path:
    """A folder written by 'edgeslm flash' stands for its active version (DEST/CURRENT names it)."""
    pointer = folder / "CURRENT"
    if not (folder / MANIFEST_NAME).exists() and pointer.is_file():
        version = pointer.read_text(encoding="utf-8").strip()
        if version and "/" not in version and ".." not in version:
            return folder / "versions" / version
    return folder


class OpenedBundle:
    """A bundle folder, or a .tar unpacked into a temporary folder for as long as it is open."""

    def __init__(self, path: Path):
        self.source = Path(path)
        self._tmp: str | None = None
        if self.source.is_file() and tarfile.is_tarfile(self.source):
            self._tmp = tempfile.mkdtemp(prefix="edgeslm-bundle-")
            try:
                self.folder = unpack_bundle(self.source, Path(self._tmp))
            except BaseException:
                self.close()
                raise
        else:
            self.folder = _flashed_current(self.source)

    def close(self) -> None:
        if self._tmp:
            shutil.rmtree(self._tmp, ignore_errors=True)
            self._tmp = None

    def __enter__(self) -> OpenedBundle:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
