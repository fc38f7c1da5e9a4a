"""``edgeslm build``."""

from __future__ import annotations

from pathlib import Path

import click

from .output import echo_json, human_bytes


@click.command()
@click.option("--target", "-t", "targets", multiple=True, required=True,
              help="Device target (repeat for several), e.g. raspberrypi, jetson-orin. See 'edgeslm targets'.")
@click.option("--model", "-m", default=None, metavar="ID_OR_DIR",
              help="Hugging Face hub id or local checkpoint folder [default: microsoft/Phi-3.5-mini-instruct].")
@click.option("--out", "-o", type=click.Path(path_type=Path), default=None,
              help="Bundle folder to create [default: ./<model>.bundle].")
@click.option("--force", is_flag=True, help="Replace an existing output folder (only once the new build succeeded).")
@click.option("--pack", is_flag=True, help="Also write the bundle as one .tar file beside the folder.")
@click.option("--recipe", default=None, help="Recipe name [default: chosen from the model's architecture].")
@click.option("--set", "overrides", multiple=True, metavar="[FORMAT.]KEY=VALUE",
              help="Override a recipe setting, typed and validated, e.g. --set onnx-int4-cpu.block_size=64.")
@click.option("--eval-text", type=click.Path(path_type=Path, dir_okay=False), default=None,
              help="Measure perplexity of every artifact against the source on this text; recorded in the manifest.")
@click.option("--eval-windows", type=click.IntRange(1, 1024), default=16, show_default=True)
@click.option("--eval-window-tokens", type=click.IntRange(16, 8192), default=512, show_default=True)
@click.option("--calibration-text", type=click.Path(path_type=Path, dir_okay=False), default=None,
              help="Text for data-aware quantization (AWQ, scale estimation, GPTQ) where the recipe asks for it.")
@click.option("--qnn-compiler", type=click.Choice(["onnxruntime-qnn", "qai-hub"]), default=None,
              help="Who compiles Snapdragon NPU context binaries: onnxruntime-qnn offline (default) or Qualcomm "
                   "AI Hub (needs an API token).")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
def build(targets, model, out, force, pack, recipe, overrides, eval_text, eval_windows, eval_window_tokens,
          calibration_text, qnn_compiler, as_json) -> None:
    """Quantize and export a checkpoint into one bundle for the given targets."""
    from ..build.pipeline import BuildRequest, build_bundle
    from ..build.quality import QualityRequest
    from .rich_progress import RichProgress

    quality = QualityRequest(eval_text, eval_windows, eval_window_tokens) if eval_text else None
    if qnn_compiler:
        overrides = (*overrides, f"qnn-context.compiler={qnn_compiler}")
    request = BuildRequest(tuple(targets), model, out, force, pack, recipe, tuple(overrides), quality,
                           calibration_text)
    with RichProgress(quiet=as_json) as progress:
        result = build_bundle(request, progress)
    if as_json:
        echo_json({"bundle": str(result.bundle), "archive": str(result.archive) if result.archive else None,
                   "seconds": round(result.seconds, 2), "bundle_id": result.manifest.bundle_id,
                   "artifacts": [a.id for a in result.manifest.artifacts]})
        return
    click.echo(f"built {result.bundle} in {result.seconds:.1f} s")
    for art in result.manifest.artifacts:
        size = sum(f.size for f in art.files)
        line = f"  {art.id}: {human_bytes(size)}"
        if art.quality:
            q = art.quality
            line += f", perplexity {q.artifact:.3f} vs source {q.source:.3f} ({q.relative_change:+.2%})"
        click.echo(line)
    if result.archive:
        click.echo(f"packed {result.archive}")
