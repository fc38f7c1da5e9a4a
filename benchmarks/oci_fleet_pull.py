"""A fleet pulling from an OCI registry (issue #20): N simulated devices, one local registry, one run.

A real registry (Debian's docker-registry = CNCF distribution 2.8, on 127.0.0.1, filesystem storage) gets version 1
of the docs-model bundle (``edgeslm push``) under ``:stable``; N device folders install it at the same time
(``edgeslm pull --install``, the library call ``install_from_oci`` in N threads: each device has its own HTTP
client and folder); then version 2 (the same model with another block size, so the tokenizer files are the
same blobs) is pushed under ``:stable`` and all N devices run ``edgeslm update`` concurrently; then version 3
(version 2 plus an OpenVINO artifact for another target, the Pi's artifact unchanged), and the devices update
again. The devices install ``--target raspberrypi`` (as a Pi fleet would), so version 3 should cost them no
download. Reported per phase: wall time, bytes downloaded in total and per device, bytes the registry stores,
and what a full copy per device would have been. Repeated ``--repeats`` times with fresh devices; medians. The
devices share this host's two cores and loopback, so the times are the registry's and the client's costs, not
a network's.

Usage: .venv/bin/python benchmarks/oci_fleet_pull.py [--devices 50] [--repeats 3] [--work DIR] [--json-out FILE]
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(REPO / "tests"))
from registry_harness import Registry  # noqa: E402

DOCS_MODEL = REPO / "examples" / "models" / "phi3-docs-21m"


def build(out: Path, *extra: str) -> Path:
    if not (out / "manifest.json").is_file():
        subprocess.run([sys.executable, "-m", "edgeslm", "build", "--target", "raspberrypi", "--model", str(DOCS_MODEL),
                        "--out", str(out), "--no-eval", "--force", *extra], check=True, capture_output=True)
    return out


def push(bundle: Path, ref: str) -> dict:
    from edgeslm.oci.push import push_bundle

    return push_bundle(bundle, ref, plain_http=True).to_json()


def phase(devices: list[Path], call) -> dict:
    started = time.monotonic()
    with ThreadPoolExecutor(max_workers=len(devices)) as pool:
        reports = list(pool.map(call, devices))
    wall = time.monotonic() - started
    got = [r.downloaded_bytes for r in reports]
    return {"wall_s": round(wall, 2), "downloaded_bytes_total": sum(got), "downloaded_bytes_per_device": max(got),
            "reused_files_per_device": max(r.reused_files for r in reports),
            "actions": sorted({r.action for r in reports})}


def bundle_bytes(bundle: Path) -> int:
    manifest = json.loads((bundle / "manifest.json").read_text())
    return sum(f["size"] for a in manifest["artifacts"] for f in a["files"])


def main() -> None:
    from edgeslm.oci.install import install_from_oci, update_from_oci

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--devices", type=int, default=50)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) / "edgeslm-bench-oci")
    ap.add_argument("--json-out", type=Path, default=HERE / "results" / "oci_fleet_pull.json")
    args = ap.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    v1 = build(args.work / "v1.bundle")
    v2 = build(args.work / "v2.bundle", "--set", "block_size=64")
    v3 = build(args.work / "v3.bundle", "--set", "onnx-int4-cpu.block_size=64", "--target", "intel-core-ultra")
    runs = []
    for repeat in range(args.repeats):
        with Registry() as registry:
            ref = f"oci://{registry.host}/fleet/docs:stable"
            pushed_v1 = push(v1, ref)
            fleet = args.work / f"fleet-{repeat}"
            shutil.rmtree(fleet, ignore_errors=True)
            devices = [fleet / f"device-{i:03d}" for i in range(args.devices)]
            rollout = phase(devices, lambda d, ref=ref: install_from_oci(ref, d, "raspberrypi", plain_http=True))
            pushed_v2 = push(v2, ref)
            update = phase(devices, lambda d: update_from_oci(d))
            again = phase(devices, lambda d: update_from_oci(d))  # nothing moved: a HEAD per device
            pushed_v3 = push(v3, ref)
            other_target = phase(devices, lambda d: update_from_oci(d))
            stored = sum(p.stat().st_size for p in registry.storage.rglob("*") if p.is_file())
            runs.append({"rollout_v1": rollout, "update_v2": update, "update_unchanged": again,
                         "update_v3_other_target_added": other_target,
                         "pushed_v3": {k: pushed_v3[k] for k in ("uploaded_bytes", "skipped_bytes")},
                         "pushed_v1": {k: pushed_v1[k] for k in ("uploaded_bytes", "skipped_bytes")},
                         "pushed_v2": {k: pushed_v2[k] for k in ("uploaded_bytes", "skipped_bytes")},
                         "registry_stored_bytes": stored})
            shutil.rmtree(fleet, ignore_errors=True)
        print(json.dumps(runs[-1]), flush=True)
    full = bundle_bytes(v2)
    summary = {
        "devices": args.devices, "bundle_bytes_v1": bundle_bytes(v1), "bundle_bytes_v2": full,
        "full_copy_bytes_for_fleet": full * args.devices,
        **{f"{name}_wall_s": statistics.median(r[name]["wall_s"] for r in runs)
           for name in ("rollout_v1", "update_v2", "update_unchanged", "update_v3_other_target_added")},
        "update_v3_bytes_total": statistics.median(r["update_v3_other_target_added"]["downloaded_bytes_total"]
                                                   for r in runs),
        "update_v2_bytes_total": statistics.median(r["update_v2"]["downloaded_bytes_total"] for r in runs),
        "update_v2_bytes_per_device": statistics.median(r["update_v2"]["downloaded_bytes_per_device"] for r in runs),
        "update_v2_fraction_of_full_copy": round(statistics.median(r["update_v2"]["downloaded_bytes_per_device"]
                                                                    for r in runs) / full, 3),
        "registry_stored_bytes": statistics.median(r["registry_stored_bytes"] for r in runs),
    }
    from build_full_size import host_info  # noqa: E402 - the same host record as the other benchmarks

    result = {"host": host_info(), "runs": runs, "summary": summary}
    args.json_out.parent.mkdir(parents=True, exist_ok=True)
    args.json_out.write_text(json.dumps(result, indent=1))
    print(json.dumps(summary, indent=1))


if __name__ == "__main__":
    sys.path.insert(0, str(HERE))
    main()
