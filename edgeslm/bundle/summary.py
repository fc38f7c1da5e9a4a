"""A readable, multi-line summary of a manifest (``edgeslm inspect``)."""

from __future__ import annotations

from collections.abc import Callable

from .manifest import Manifest


def summarize(m: Manifest, human_bytes: Callable[[float], str], signatures: list[dict] | None = None) -> str:
    """``signatures``: ``signatures.describe(folder)`` (who signed, when, and whether it still holds)."""
    lines = [
        f"bundle    {m.bundle_id}  (schema {m.schema} v{m.schema_version})",
        f"model     {m.model.name}: {m.model.architecture}, {m.model.parameter_count / 1e6:,.1f}M parameters, "
        f"{m.model.num_layers} layers, context up to {m.model.max_position_embeddings:,} tokens",
        f"chat      stop tokens {', '.join(f'{t} ({i})' for t, i in zip(m.chat.stop_tokens, m.chat.stop_token_ids))}",
        f"built     {m.provenance.created} with edgeslm {m.provenance.edgeslm_version} "
        f"in {m.provenance.duration_s:.0f} s",
        f"source    {len(m.model.source_files)} checkpoint file(s) by sha256"
        + (f", {m.model.hub_id}" if m.model.hub_id else ""),
    ]
    for sig in signatures or []:
        lines.append(f"signed    by {sig['signer']} ({sig['key_id']}) at {sig['signed_at']}: {sig['state']}")
    if signatures is not None and not signatures:
        lines.append("signed    no (unsigned bundle)")
    lines.append("artifacts")
    for a in m.artifacts:
        size = sum(f.size for f in a.files)
        q = a.quantization
        quant = ", ".join(f"{k}={v}" for k, v in q.items() if k in ("precision", "block_size", "algorithm",
                                                                        "accuracy_level", "bits", "group_size"))
        lines.append(f"  {a.id}: {a.format} for {'/'.join(a.device_kinds)} on {'/'.join(a.cpu_archs)}, "
                     f"needs {a.runtime.package}>={a.runtime.min_version}")
        lines.append(f"      {len(a.files)} files, {human_bytes(size)}; {quant}")
        kv = a.memory.kv_cache_bytes_per_token
        lines.append(f"      memory: weights {human_bytes(a.memory.weight_bytes)} + KV cache {human_bytes(kv)}/token "
                     f"({human_bytes(kv * a.context.default_total_tokens)} at {a.context.default_total_tokens:,} "
                     f"tokens, {a.memory.kv_cache_dtype})")
        lines.append(f"      context: default {a.context.default_total_tokens:,}, max {a.context.max_total_tokens:,} "
                     f"tokens (prompt ≤ {a.context.max_prompt_tokens:,})")
        if a.quality:
            q = a.quality
            kl = f", KL {q.kl_divergence:.4f} nats/token" if q.kl_divergence is not None else ""
            lines.append(f"      quality: {q.metric} {q.artifact:.3f} vs source {q.source:.3f} "
                         f"({q.relative_change:+.2%}){kl} on {q.windows}×{q.window_tokens} tokens of {q.dataset}"
                         + (" — over the limit, kept with --allow-quality-loss" if q.allowed_loss else ""))
        else:
            lines.append("      quality: not measured")
        if a.vision:
            v = a.vision
            lines.append(f"      images: up to {v.num_crops} crops, ≤ {max(v.tokens_by_grid.values()):,} tokens each; "
                         f"vision part {human_bytes(v.vision_weight_bytes)} ({v.precision})")
            if v.accuracy:
                acc = v.accuracy
                lines.append(f"      image questions: {acc.artifact:.1%} vs reference {acc.source:.1%} on {acc.questions} "
                             f"of {acc.dataset}; features cos ≥ {acc.feature_cosine_min}"
                             + ("" if acc.within_limit else " — over the limit, kept with --allow-quality-loss"))
    for warning in m.warnings:
        lines.append(f"warning   {warning}")
    lines.append("targets")
    for name, entry in m.targets.items():
        lines.append(f"  {name}: {' > '.join(entry.artifacts)} (context {entry.context_length:,})")
    return "\n".join(lines)
