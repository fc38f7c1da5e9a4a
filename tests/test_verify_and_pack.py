"""verify catches every kind of tampering; .tar bundles round-trip and hostile archives are refused."""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path

import pytest
from conftest import assert_clean_error, run_cli

from edgeslm.bundle.pack import pack_bundle, unpack_bundle
from edgeslm.bundle.verify import verify_bundle
from edgeslm.errors import BundleError

WEIGHTS = "artifacts/onnx-int4-cpu/model.onnx.data"
CONFIG = "artifacts/onnx-int4-cpu/genai_config.json"


def test_verify_passes_on_a_fresh_bundle(built_bundle: Path):
    result = run_cli("verify", str(built_bundle))
    assert result.returncode == 0, result
    assert "ok:" in result.stdout


def _flip_byte(path: Path, offset: int) -> None:
    data = bytearray(path.read_bytes())
    data[offset] ^= 0xFF
    path.write_bytes(bytes(data))


@pytest.mark.parametrize("damage, name, kind", [
    (lambda b: _flip_byte(b / WEIGHTS, 1000), WEIGHTS, "altered"),
    (lambda b: (b / WEIGHTS).write_bytes((b / WEIGHTS).read_bytes()[:-10]), WEIGHTS, "truncated"),
    (lambda b: (b / CONFIG).unlink(), CONFIG, "missing"),
    (lambda b: (b / "artifacts/onnx-int4-cpu/notes.txt").write_text("hi"), "artifacts/onnx-int4-cpu/notes.txt",
     "extra"),
])
def test_verify_names_the_damaged_file(bundle_copy: Path, damage, name, kind):
    damage(bundle_copy)
    report = verify_bundle(bundle_copy)
    assert [(p.path, p.kind) for p in report.problems] == [(name, kind)]
    result = run_cli("verify", str(bundle_copy))
    assert_clean_error(result, name, kind)
    as_json = run_cli("verify", str(bundle_copy), "--json")
    assert as_json.returncode != 0 and as_json.json()["problems"][0]["path"] == name


def test_manifest_of_unknown_schema_version_is_refused(bundle_copy: Path):
    path = bundle_copy / "manifest.json"
    data = json.loads(path.read_text())
    data["schema_version"] = 99
    path.write_text(json.dumps(data))
    assert_clean_error(run_cli("verify", str(bundle_copy)), "schema_version 99")


def test_not_a_bundle(tmp_path: Path):
    assert_clean_error(run_cli("verify", str(tmp_path)), "not a bundle")
    assert_clean_error(run_cli("inspect", str(tmp_path / "nope")), "does not exist")


def test_pack_and_unpack_round_trip(built_bundle: Path, tmp_path: Path):
    archive = pack_bundle(built_bundle, tmp_path / "b.tar")
    folder = unpack_bundle(archive, tmp_path / "unpacked")
    assert verify_bundle(folder).ok
    result = run_cli("verify", str(archive))
    assert result.returncode == 0, result
    assert (built_bundle.parent / (built_bundle.name + ".tar")).is_file()  # made by build --pack


def _tar_with(tmp_path: Path, add) -> Path:
    path = tmp_path / "evil.tar"
    with tarfile.open(path, "w") as tar:
        manifest = tarfile.TarInfo("b/manifest.json")
        body = b"{}"
        manifest.size = len(body)
        tar.addfile(manifest, io.BytesIO(body))
        add(tar)
    return path


def _file(name: str):
    def add(tar: tarfile.TarFile) -> None:
        info = tarfile.TarInfo(name)
        info.size = 4
        tar.addfile(info, io.BytesIO(b"evil"))
    return add


def _link(name: str, target: str, hard: bool = False):
    def add(tar: tarfile.TarFile) -> None:
        info = tarfile.TarInfo(name)
        info.type = tarfile.LNKTYPE if hard else tarfile.SYMTYPE
        info.linkname = target
        tar.addfile(info)
    return add


@pytest.mark.parametrize("add, words", [
    (_file("/tmp/edgeslm-evil-absolute"), "absolute path"),
    (_file("b/../../edgeslm-evil-dotdot"), "'..'"),
    (_link("b/escape", "../../etc/passwd"), "points outside"),
    (_link("b/escape", "/etc/passwd"), "points outside"),
    (_link("b/hard", "../outside", hard=True), "points outside"),
])
def test_hostile_archives_are_refused_before_anything_is_written(tmp_path: Path, add, words):
    archive = _tar_with(tmp_path, add)
    dest = tmp_path / "dest"
    with pytest.raises(BundleError) as info:
        unpack_bundle(archive, dest)
    assert words in info.value.message
    assert not dest.exists()
    assert not Path("/tmp/edgeslm-evil-absolute").exists()
    assert not (tmp_path / "edgeslm-evil-dotdot").exists()
    assert_clean_error(run_cli("verify", str(archive)), "refusing to unpack")


def test_link_inside_the_bundle_is_allowed(tmp_path: Path):
    archive = _tar_with(tmp_path, _link("b/alias.json", "manifest.json"))
    folder = unpack_bundle(archive, tmp_path / "dest")
    assert (folder / "alias.json").is_symlink()


def test_version_1_manifests_still_read(bundle_copy: Path):
    from edgeslm.bundle.manifest import read_manifest

    path = bundle_copy / "manifest.json"
    data = json.loads(path.read_text())
    data["schema_version"] = 1
    data.pop("warnings")
    for art in data["artifacts"]:
        for key in ("dataset_sha256", "kl_divergence", "max_relative_change", "within_limit", "allowed_loss",
                    "scored_on"):
            art["quality"].pop(key)
    path.write_text(json.dumps(data))
    manifest = read_manifest(bundle_copy)
    assert manifest.schema_version == 1 and manifest.artifacts[0].quality.kl_divergence is None
    assert run_cli("verify", str(bundle_copy)).returncode == 0
