"""``edgeslm bench``."""

from __future__ import annotations

import statistics
from pathlib import Path

import click

from .device_options import apply, selection_options
from .output import echo_json


@click.command()
@click.argument("bundle", type=click.Path(path_type=Path))
@apply(selection_options)
@click.option("--prompt-tokens", type=click.IntRange(8, 32768), default=128, show_default=True)
@click.option("--new-tokens", type=click.IntRange(2, 4096), default=64, show_default=True)
@click.option("--repeats", type=click.IntRange(1, 100), default=3, show_default=True)
@click.option("--threads", type=int, default=None, help="CPU threads [default: the host's physical cores].")
@click.option("--json", "as_json", is_flag=True)
def bench(bundle, artifact, device, context, prompt_tokens, new_tokens, repeats, threads, as_json) -> None:
    """Measure time to first token and decode tokens/s of the chosen artifact here (medians)."""
    from ..runtime.loaded_model import load
    from ..runtime.quick_bench import run_bench

    with load(bundle, artifact=artifact, device=device, context=context, threads=threads) as llm:
        result = run_bench(llm, prompt_tokens, new_tokens, repeats,
                           threads or llm.selection.host.physical_cores)
    if as_json:
        echo_json(result.to_json())
        return
    click.echo(f"{result.artifact_id} on {result.device}, {result.threads} threads, "
               f"{result.prompt_tokens}-token prompt, {result.new_tokens} new tokens, {repeats} runs")
    click.echo(f"  time to first token  {statistics.median(result.ttft_s) * 1000:8.1f} ms (median)")
    click.echo(f"  decode               {statistics.median(result.decode_tokens_per_s):8.2f} tokens/s (median)")
