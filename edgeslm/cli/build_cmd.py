"""``edgeslm build``."""

from __future__ import annotations

from pathlib import Path

import click

from .output import echo_json, human_bytes


def backend_build_options(command):
    """Add each registered backend's build flags (``Backend.build_options``): shortcuts for ``--set``."""
    from ..registry import backends

    for backend in reversed(list(backends().values())):
        for option in reversed(backend.build_options):
            command = click.option(option.flag, type=click.Choice(list(option.choices)), default=None,
                                   help=f"{option.help} (--set {option.setting}=...)")(command)
    return command


def _backend_overrides(values: dict) -> tuple[str, ...]:
    from ..registry import backends

    chosen = []
    for backend in backends().values():
        for option in backend.build_options:
            value = values.get(option.flag.lstrip("-").replace("-", "_"))
            if value is not None:
                chosen.append(f"{option.setting}={value}")
    return tuple(chosen)


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
              help="Text every artifact's perplexity and KL are measured on against the source "
                   "[default: edgeslm's built-in WikiText-2 slice].")
@click.option("--eval-windows", type=click.IntRange(1, 1024), default=None,
              help="Evaluation windows [default: the recipe's, 4].")
@click.option("--eval-window-tokens", type=click.IntRange(16, 8192), default=None,
              help="Tokens per evaluation window [default: the recipe's, 512].")
@click.option("--vision-eval", type=click.Path(path_type=Path), default=None,
              help="Image-question folder (questions.jsonl + images) for vision models [default: edgeslm:vision-dev].")
@click.option("--no-eval", is_flag=True, help="Skip the quality measurement (the manifest says so).")
@click.option("--allow-quality-loss", is_flag=True,
              help="Keep artifacts whose perplexity is over the recipe's limit (the manifest records it).")
@click.option("--calibration-text", type=click.Path(path_type=Path, dir_okay=False), default=None,
              help="Text for data-aware quantization (activation ranges, AWQ, scale estimation, GPTQ) "
                   "[default: the --eval-text after its windows, else edgeslm's built-in calibration text].")
@click.option("--sign", "sign_key", type=click.Path(path_type=Path, dir_okay=False), default=None,
              help="Sign the bundle's manifest with this private key (edgeslm keygen) before it is moved into place.")
@click.option("--signer", default=None, help="Name recorded with the signature [default: the key's name].")
@click.option("--passphrase-env", metavar="NAME", default=None,
              help="Environment variable holding the signing key's passphrase (else asked in a terminal).")
@backend_build_options
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
def build(targets, model, out, force, pack, recipe, overrides, eval_text, eval_windows, eval_window_tokens,
          vision_eval, no_eval, allow_quality_loss, calibration_text, sign_key, signer, passphrase_env, as_json,
          **backend_options) -> None:
    """Quantize and export a checkpoint into one bundle for the given targets."""
    from ..builder.measured_quality import QualityRequest
    from ..builder.pipeline import BuildRequest, build_bundle
    from .rich_progress import RichProgress
    from .termination import terminate_as_interrupt

    if no_eval and (eval_text or eval_windows or eval_window_tokens):
        raise click.UsageError("--no-eval cannot be combined with --eval-text/--eval-windows/--eval-window-tokens")
    terminate_as_interrupt()
    if no_eval and vision_eval:
        raise click.UsageError("--no-eval cannot be combined with --vision-eval")
    quality = QualityRequest(eval_text, eval_windows, eval_window_tokens, allow_quality_loss, no_eval, vision_eval)
    overrides = (*overrides, *_backend_overrides(backend_options))
    key = None
    if sign_key is not None:  # read (and unlock) the key now: a wrong passphrase must not fail a long build
        from .signing_cmds import load_key

        key = load_key(sign_key, passphrase_env)
    request = BuildRequest(tuple(targets), model, out, force, pack, recipe, tuple(overrides), quality,
                           calibration_text, key, signer)
    with RichProgress(quiet=as_json) as progress:
        result = build_bundle(request, progress)
    for warning in result.manifest.warnings:
        click.echo(f"edgeslm: warning: {warning}", err=True)
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
            if q.kl_divergence is not None:
                line += f", KL {q.kl_divergence:.4f} nats/token"
        click.echo(line)
    if result.archive:
        click.echo(f"packed {result.archive}")
