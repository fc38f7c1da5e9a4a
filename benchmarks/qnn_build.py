"""QNN (snapdragon-x-elite / 8 Gen 3) build: wall time, peak RSS and artifact size of the qnn-context export.

Each run is ``edgeslm build --target snapdragon-x-elite`` in a fresh child process with the target reduced
to its qnn-context artifact (EDGESLM_DATA_DIR, no ONNX CPU build), measured like build_full_size.py (wall,
peak RSS of the process tree sampled every 0.2 s, ru_maxrss). Calibration text: the held-out docs text
(--eval-text, 4 x 128 windows, so the quality measurement is part of the run).

Models:
  docs21m           the 21.5M fixture (recipe defaults: context 1024, chunk 64, a16w8, both SoCs)
  full-width-N      the full-size random Phi-3.5-mini cut to its first N decoder layers (hidden 3072,
                    vocab 32064, the real embedding and LM head): with ``--part-layers K`` every part has K
                    layers, so peak memory must not grow with N (the decoder is built part by part)
  full              (``--whole``) the whole 32-layer checkpoint with the recipe's defaults (parts by the
                    weight budget, w4a16, context 4096, chunk 128)

``--full`` may be the full-size random Phi-3.5-vision (``/tmp/phi35v-random``): its slices keep the whole CLIP
tower, so the vision encoder's build is measured at full size; pass ``--no-eval`` with it.
``--two-socs`` builds for snapdragon-x-elite and snapdragon-8-gen-3 (two SoCs' binaries) instead of one.
Per run: wall, peak RSS (sampled tree sum, the largest process, ru_maxrss), artifact and per-SoC sizes, the
manifest's per-part stage times (export, calibration + QDQ, compile) and quality.

Usage: python benchmarks/qnn_build.py --full /tmp/phi35-random [--layers 2,4] [--part-layers 2] [--whole]
           [--two-socs] [--repeats 3] [--full-repeats 1] [--no-docs] [--out FILE]
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))
import build_full_size  # noqa: E402
from build_full_size import failure_reason, host_info, medians_by, tree_size  # noqa: E402
from openvino_low_memory import measured  # noqa: E402 - measure() plus each process's peak RSS

build_full_size.PACKAGES = ("edgeslm", "onnxruntime", "onnxruntime-qnn", "onnx", "torch")


def truncated_checkpoint(full: Path, layers: int, dest: Path) -> Path:
    from safetensors import safe_open
    from safetensors.torch import save_file

    if (dest / "model.safetensors").exists():
        return dest
    dest.mkdir(parents=True, exist_ok=True)
    keep = {}
    for shard in sorted(full.glob("*.safetensors")):
        with safe_open(str(shard), "pt") as f:
            for name in f.keys():  # noqa: SIM118 - safe_open is not iterable
                if not name.startswith("model.layers.") or int(name.split(".")[2]) < layers:
                    keep[name] = f.get_tensor(name)
    save_file(keep, str(dest / "model.safetensors"), metadata={"format": "pt"})
    config = json.loads((full / "config.json").read_text())
    config["num_hidden_layers"] = layers
    (dest / "config.json").write_text(json.dumps(config, indent=2))
    for name in ("tokenizer.json", "tokenizer_config.json", "generation_config.json", "special_tokens_map.json",
                 "preprocessor_config.json"):
        if (full / name).exists():
            shutil.copy2(full / name, dest / name)
    return dest


def data_dir(work: Path) -> Path:
    data = work / "data"
    (data / "targets").mkdir(parents=True, exist_ok=True)
    for target in ("snapdragon-x-elite", "snapdragon-8-gen-3"):
        text = (ROOT / "targets" / f"{target}.toml").read_text()
        reduced = text.replace('formats = ["qnn-context", "onnx-int4-cpu"]', 'formats = ["qnn-context"]')
        assert reduced != text, f"targets/{target}.toml changed: update data_dir()"
        (data / "targets" / f"{target}.toml").write_text(reduced)
    shutil.copytree(ROOT / "recipes", data / "recipes", dirs_exist_ok=True)
    return data


def one_build(label: str, model: Path, work: Path, data: Path, extra: tuple[str, ...] = (), evaluate: bool = True) -> dict:
    out = work / f"{label}.bundle"
    quality = ("--eval-text", str(ROOT / "examples" / "eval" / "docs-heldout.txt"), "--eval-windows", "4",
               "--eval-window-tokens", "128") if evaluate else ("--no-eval",)
    cmd = [sys.executable, "-m", "edgeslm", "build", "--target", "snapdragon-x-elite", "--model", str(model),
           "--out", str(out), "--force", *quality, "--json", *extra]
    print(f"{label}: {' '.join(cmd)}", flush=True)
    os.environ["EDGESLM_DATA_DIR"] = str(data)
    try:
        run = {"label": label, "command": cmd, **measured(cmd)}
    finally:
        os.environ.pop("EDGESLM_DATA_DIR", None)
    run.pop("stdout")
    stderr = run.pop("stderr")
    if run["rc"]:
        run.update(failed=failure_reason(run["rc"]), stderr_tail=stderr[-3000:])
        print(f"{label}: FAILED {run['failed']}", flush=True)
        return run
    folder = out / "artifacts" / "qnn-context"
    run["artifact_bytes"], run["files"] = tree_size(folder)
    run["per_soc_bytes"] = {soc.name: tree_size(soc)[0] for soc in folder.iterdir() if soc.is_dir() and soc.name != "qdq"}
    manifest = json.loads((out / "manifest.json").read_text())
    art = next(a for a in manifest["artifacts"] if a["id"] == "qnn-context")
    run["quality"] = art.get("quality")
    run["parts"], run["stage_seconds"] = art["details"].get("parts"), art["details"].get("stage_seconds")
    run["largest_process_bytes"] = max((p["peak_rss_bytes"] for p in run.get("processes", [])), default=None)
    print(f"{label}: {run['wall_s']:.1f} s, peak RSS {run['peak_rss_sampled_bytes'] / 1e9:.2f} GB, artifact "
          f"{run['artifact_bytes'] / 1e6:.1f} MB", flush=True)
    shutil.rmtree(out, ignore_errors=True)
    return run


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--full", default=None, help="full-size checkpoint to cut into full-width layer slices")
    ap.add_argument("--layers", default="2,4")
    ap.add_argument("--part-layers", type=int, default=0, help="layers per part for the full-width slices")
    ap.add_argument("--whole", action="store_true", help="also build the whole checkpoint (recipe defaults)")
    ap.add_argument("--two-socs", action="store_true", help="compile for two SoCs instead of one")
    ap.add_argument("--no-docs", action="store_true", help="skip the docs-model runs")
    ap.add_argument("--repeats", type=int, default=3, help="runs of the docs model")
    ap.add_argument("--full-repeats", type=int, default=1, help="runs of each full-width slice (minutes each)")
    ap.add_argument("--no-eval", action="store_true", help="build with --no-eval (a full-size Phi-3.5-vision: its "
                    "fp32 torch reference would need 17 GB)")
    ap.add_argument("--work", default=None)
    ap.add_argument("--out", default=str(HERE / "results" / "qnn_build.json"))
    args = ap.parse_args()
    work = Path(args.work or tempfile.mkdtemp(prefix="qnn-bench-"))
    data = data_dir(work)
    models = [] if args.no_docs else [("docs21m", ROOT / "examples" / "models" / "phi3-docs-21m", ())]
    socs = ("--target", "snapdragon-8-gen-3") if args.two_socs else ()
    parts = ("--set", f"qnn-context.part_layers={args.part_layers}") if args.part_layers else ()
    if args.full:
        models += [(f"full-width-{n}", truncated_checkpoint(Path(args.full), int(n), work / f"full-width-{n}"),
                    (*socs, *parts)) for n in filter(None, args.layers.split(","))]
        if args.whole:
            models.append(("full", Path(args.full), socs))
    runs = [one_build(label, model, work, data, extra, not args.no_eval) for label, model, extra in models
            for _ in range(args.repeats if label == "docs21m" else args.full_repeats)]
    summary = medians_by(runs, "label", ("wall_s", "peak_rss_sampled_bytes", "ru_maxrss_bytes", "artifact_bytes"))
    print(f"\n{'model':<16}{'wall s':>9}{'peak RSS GB':>13}{'artifact MB':>13}{'runs':>6}")
    for label, s in summary.items():
        print(f"{label:<16}{s['wall_s']:>9.1f}{s['peak_rss_sampled_bytes'] / 1e9:>13.2f}"
              f"{s['artifact_bytes'] / 1e6:>13.1f}{s['runs']:>6}")
    widths = sorted((int(k.rsplit("-", 1)[1]), v) for k, v in summary.items() if k.startswith("full-width-"))
    if len(widths) >= 2:
        (n1, a), (n2, b) = widths[0], widths[-1]
        per_layer = {k: (b[k] - a[k]) / (n2 - n1) for k in ("wall_s", "peak_rss_sampled_bytes", "artifact_bytes")}
        extrapolated = {k: a[k] + per_layer[k] * (32 - n1) for k in per_layer}
        summary["per_full_size_layer"], summary["extrapolated_32_layers"] = per_layer, extrapolated
        print(f"per layer: {per_layer['wall_s']:.1f} s, {per_layer['peak_rss_sampled_bytes'] / 1e9:.2f} GB RSS, "
              f"{per_layer['artifact_bytes'] / 1e6:.0f} MB; 32 layers (linear extrapolation): "
              f"{extrapolated['wall_s'] / 60:.0f} min, {extrapolated['peak_rss_sampled_bytes'] / 1e9:.0f} GB RSS, "
              f"{extrapolated['artifact_bytes'] / 1e9:.1f} GB")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps({"host": host_info(), "runs": runs, "summary": summary}, indent=2))


if __name__ == "__main__":
    main()
