"""The host probe on recorded device trees, and artifact selection on each of those hosts.

No Jetson, Snapdragon, Intel NPU or Mac exists here: the hosts are the recorded trees in tests/hosts
(see its README) plus injected package findings. Selection runs on the real manifest of the bundle
built from the fixture, extended with manifest entries for the other formats (metadata only: selection
reads nothing else).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from edgeslm.bundle.manifest import Runtime, TargetEntry, read_manifest
from edgeslm.runtime.accelerator_probe import Findings
from edgeslm.runtime.host_probe import probe_host
from edgeslm.runtime.selection import NoArtifactError, rank_artifacts

HOSTS = Path(__file__).parent / "hosts"
GIB = 2**30
ORT = {"onnxruntime-genai": "0.18.0"}


def host(name: str, packages: dict | None = None, openvino=None, os_name=None):
    return probe_host(HOSTS / name, os_name=os_name,
                      findings=Findings(packages=dict(ORT if packages is None else packages),
                                        openvino_devices=openvino))


def test_raspberry_pi_5_profile():
    h = host("raspberrypi5")
    assert (h.os, h.cpu_arch, h.cpu_model) == ("linux", "arm64", "Cortex-A76")
    assert h.board == "Raspberry Pi 5 Model B Rev 1.0" and h.soc == "bcm2712"
    assert set(h.cpu_features) == {"neon", "dotprod", "fp16"}  # no i8mm on the A76
    assert (h.logical_cores, h.physical_cores) == (4, 4)
    assert h.ram_total_bytes == 8245896 * 1024 and h.ram_available_bytes == 7712340 * 1024
    assert h.accelerators == ()


def test_jetson_profile_has_a_cuda_gpu():
    h = host("jetson-orin-nano")
    assert h.cpu_model == "Cortex-A78AE" and h.physical_cores == 6 and h.soc == "tegra234"
    assert [(a.kind, a.vendor, a.api) for a in h.accelerators] == [("gpu", "nvidia", "cuda")]


def test_snapdragon_laptop_profile_has_a_hexagon_npu():
    h = host("snapdragon-x-elite")
    assert h.cpu_model == "Qualcomm Oryon" and h.physical_cores == 12 and h.soc == "x1e80100"
    assert {"neon", "dotprod", "i8mm", "bf16"} <= set(h.cpu_features)
    assert [(a.kind, a.vendor, a.api) for a in h.accelerators] == [("npu", "qualcomm", "qnn")]


def test_intel_core_ultra_profile():
    h = host("intel-core-ultra", openvino=("CPU", "GPU", "NPU"))
    assert h.cpu_arch == "x86_64" and h.cpu_model == "Intel(R) Core(TM) Ultra 7 155H"
    assert (h.logical_cores, h.physical_cores) == (22, 16)
    assert {"avx2", "avx_vnni", "fma"} <= set(h.cpu_features) and "avx512f" not in h.cpu_features
    assert {(a.kind, a.api) for a in h.accelerators} == {("npu", "openvino"), ("gpu", "openvino")}
    # Without openvino installed the NPU is still found through its kernel driver.
    assert ("npu", "openvino") in {(a.kind, a.api) for a in host("intel-core-ultra").accelerators}


def test_mac_profile_from_sysctl():
    h = host("macbook-m2")
    assert (h.os, h.cpu_arch, h.cpu_model, h.board) == ("macos", "arm64", "Apple M2", "Mac14,2")
    assert {"neon", "dotprod", "i8mm"} <= set(h.cpu_features)
    assert h.physical_cores == 4 and h.logical_cores == 8  # performance cores drive the thread count
    assert h.ram_total_bytes == 16 * GIB
    assert [(a.kind, a.api) for a in h.accelerators] == [("gpu", "metal")]


def test_probe_of_this_machine_never_fails():
    h = probe_host()
    assert h.cpu_arch in ("x86_64", "arm64") and h.logical_cores >= 1 and h.ram_total_bytes > 0
    assert "onnxruntime-genai" in h.packages


def _entry(base, art_id, fmt, archs, package, version="0.1.0", weight_gib=2.0):
    return dataclasses.replace(base, id=art_id, format=fmt, path=f"artifacts/{art_id}", cpu_archs=archs,
                               runtime=Runtime(package, version),
                               memory=dataclasses.replace(base.memory, weight_bytes=int(weight_gib * GIB)))


@pytest.fixture(scope="module")
def fleet_manifest(built_bundle):
    """The real manifest plus entries for every other format, as a bundle for all targets would have."""
    m = read_manifest(built_bundle)
    cpu = m.artifacts[0]
    arts = (
        dataclasses.replace(_entry(cpu, "qnn-context", "qnn-context", ("arm64",), "onnxruntime-qnn", "2.7.0"),
                            details={"onnxruntime_qnn_version": "2.7.0", "qnn_sdk_version": "2.51.0",
                                     "socs": {"SC8380XP": {"device_ids": ["sc8380xp", "x1e80100"]}}}),
        _entry(cpu, "openvino-int4", "openvino-int4", ("x86_64",), "openvino-genai", "2026.0"),
        _entry(cpu, "mlx", "mlx", ("arm64",), "mlx-lm", "0.20.0"),
        _entry(cpu, "onnx-int4-cuda", "onnx-int4-cuda", ("x86_64", "arm64"), "onnxruntime-genai-cuda", "0.18.0"),
        cpu,
    )
    targets = {"snapdragon-x-elite": TargetEntry(("qnn-context", "onnx-int4-cpu"), 4096),
               "intel-core-ultra": TargetEntry(("openvino-int4", "onnx-int4-cpu"), 4096),
               "apple-silicon": TargetEntry(("mlx", "onnx-int4-cpu"), 4096),
               "jetson-orin": TargetEntry(("onnx-int4-cuda", "onnx-int4-cpu"), 4096),
               "raspberrypi5": TargetEntry(("onnx-int4-cpu",), 4096)}
    return dataclasses.replace(m, artifacts=arts, targets=targets)


def _reasons(selection):
    return {r.artifact_id: r.reason for r in selection.rejected}


def test_snapdragon_laptop_picks_qnn_when_present_else_arm64_cpu(fleet_manifest):
    with_qnn = rank_artifacts(fleet_manifest, host("snapdragon-x-elite", {**ORT, "onnxruntime-qnn": "2.7.0"}))
    assert with_qnn.chosen.artifact.id == "qnn-context" and with_qnn.chosen.device == "npu"
    assert [c.artifact.id for c in with_qnn.ranked] == ["qnn-context", "onnx-int4-cpu"]
    without = rank_artifacts(fleet_manifest, host("snapdragon-x-elite"))
    assert without.chosen.artifact.id == "onnx-int4-cpu" and without.chosen.device == "cpu"
    assert "onnxruntime-qnn is not installed" in _reasons(without)["qnn-context"]
    old = rank_artifacts(fleet_manifest, host("snapdragon-x-elite", {**ORT, "onnxruntime-qnn": "2.6.1"}))
    assert old.chosen.artifact.id == "onnx-int4-cpu"
    assert "2.6.1 is older than the 2.7.0" in _reasons(old)["qnn-context"]


def test_intel_laptop_picks_openvino_on_the_npu(fleet_manifest):
    h = host("intel-core-ultra", {**ORT, "openvino-genai": "2026.4.1"}, openvino=("CPU", "GPU", "NPU"))
    sel = rank_artifacts(fleet_manifest, h)
    assert (sel.chosen.artifact.id, sel.chosen.device) == ("openvino-int4", "npu")
    gpu_only = rank_artifacts(fleet_manifest, host("intel-core-ultra", {**ORT, "openvino-genai": "2026.4.1"},
                                                     openvino=("CPU", "GPU")))
    assert (gpu_only.chosen.artifact.id, gpu_only.chosen.device) == ("openvino-int4", "gpu")
    no_openvino = rank_artifacts(fleet_manifest, host("intel-core-ultra"))
    assert no_openvino.chosen.artifact.id == "onnx-int4-cpu"
    assert "openvino-genai is not installed" in _reasons(no_openvino)["openvino-int4"]


def test_jetson_picks_cuda_then_cpu(fleet_manifest):
    sel = rank_artifacts(fleet_manifest, host("jetson-orin-nano", {"onnxruntime-genai-cuda": "0.18.0"}))
    assert [(c.artifact.id, c.device) for c in sel.ranked] == [("onnx-int4-cuda", "gpu"), ("onnx-int4-cpu", "cpu")]


def test_mac_picks_mlx_and_linux_never_auto_picks_mlx(fleet_manifest):
    mac = rank_artifacts(fleet_manifest, host("macbook-m2", {**ORT, "mlx-lm": "0.28.0"}))
    assert (mac.chosen.artifact.id, mac.chosen.device) == ("mlx", "gpu")
    pi = host("raspberrypi5", {**ORT, "mlx-lm": "0.28.0"})
    auto = rank_artifacts(fleet_manifest, pi)
    assert auto.chosen.artifact.id == "onnx-int4-cpu"
    assert "only on Apple silicon" in _reasons(auto)["mlx"]
    forced = rank_artifacts(fleet_manifest, pi, artifact_id="mlx")
    assert forced.chosen.artifact.id == "mlx" and forced.chosen.device == "cpu"


def test_raspberry_pi_rejections_explain_themselves(fleet_manifest):
    sel = rank_artifacts(fleet_manifest, host("raspberrypi5"))
    assert sel.chosen.artifact.id == "onnx-int4-cpu"
    reasons = _reasons(sel)
    assert "this host is arm64" in reasons["openvino-int4"]
    assert "CUDA GPU" in reasons["onnx-int4-cuda"]


def test_no_match_lists_every_artifact_and_reason(fleet_manifest):
    sel = rank_artifacts(fleet_manifest, host("raspberrypi5", packages={}))
    with pytest.raises(NoArtifactError) as info:
        _ = sel.chosen
    for art in fleet_manifest.artifacts:
        assert f"{art.id}:" in info.value.message


def test_context_follows_ram(fleet_manifest):
    h = host("raspberrypi5")
    plenty = rank_artifacts(fleet_manifest, h).chosen.context
    assert plenty.total_tokens == 4096 and plenty.limited_by == "artifact default"
    art = fleet_manifest.artifact("onnx-int4-cpu")
    kv, base = art.memory.kv_cache_bytes_per_token, art.memory.weight_bytes + art.memory.runtime_overhead_bytes
    tight = dataclasses.replace(h, ram_available_bytes=base + 256 * 2**20 + kv * 1500)
    plan = rank_artifacts(fleet_manifest, tight).chosen.context
    assert plan.limited_by == "RAM" and plan.total_tokens == 1500
    assert plan.max_prompt_tokens == 1499
    tiny = dataclasses.replace(h, ram_available_bytes=base)
    with pytest.raises(NoArtifactError, match="RAM available"):
        _ = rank_artifacts(fleet_manifest, tiny).chosen
    asked = rank_artifacts(fleet_manifest, h, context=200_000)
    assert "exceeds the artifact's maximum" in _reasons(asked)["onnx-int4-cpu"]


def test_device_override(fleet_manifest):
    h = host("jetson-orin-nano", {"onnxruntime-genai-cuda": "0.18.0"})
    sel = rank_artifacts(fleet_manifest, h, device="cpu")
    assert sel.chosen.artifact.id == "onnx-int4-cpu"
    assert "--device cpu" in _reasons(sel)["onnx-int4-cuda"]


def test_target_reserve_ram_leaves_more_free(fleet_manifest):
    # planning.reserve_ram_gb of the targets an artifact was built for is left free (at least 256 MiB always).
    h = host("raspberrypi5")
    art = fleet_manifest.artifact("onnx-int4-cpu")
    kv, base = art.memory.kv_cache_bytes_per_token, art.memory.weight_bytes + art.memory.runtime_overhead_bytes
    tight = dataclasses.replace(h, ram_available_bytes=base + 2**30 + kv * 1500)
    assert rank_artifacts(fleet_manifest, tight).chosen.context.total_tokens == 4096  # only 256 MiB left free
    reserving = dataclasses.replace(fleet_manifest, targets={
        **fleet_manifest.targets, "raspberrypi5": TargetEntry(("onnx-int4-cpu",), 4096, reserve_ram_bytes=2**30)})
    plan = rank_artifacts(reserving, tight).chosen.context
    assert plan.limited_by == "RAM" and plan.total_tokens == 1500


def test_versions_compare_by_release_numbers():
    from edgeslm.package_versions import at_least

    assert at_least("2.7", "2.7.0") and at_least("2.7.0", "2.7") and at_least("0.18.1rc1", "0.18")
    assert not at_least("2.6.9", "2.7")
