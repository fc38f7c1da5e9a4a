"""How many tokens of context an artifact may use on this host: the manifest's limits and the RAM.

Never the model's 131072-token default: the KV cache is allocated for the whole context up front
(onnxruntime-genai shares one buffer between past and present), so the context is the largest that
fits in the available RAM after the weights, capped by the artifact's planned default.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..bundle.manifest import Artifact, ContextEnvelope
from ..errors import UsageError

MIN_CONTEXT = 512
SAFETY_BYTES = 256 * 2**20  # left free at least (page cache, the Python process, the tokenizer); a target's
# planning.reserve_ram_gb (recorded in the manifest) raises it


@dataclass(frozen=True)
class ContextPlan:
    total_tokens: int  # prompt + generated, allocated up front
    max_prompt_tokens: int
    memory_bytes: int  # weights + KV cache for total_tokens + overhead
    limited_by: str  # "artifact default", "request", "artifact maximum", "RAM"


def plan_context(artifact: Artifact, available_bytes: int, requested: int | None = None,
                 device: str = "cpu", reserve_bytes: int = 0) -> ContextPlan | str:
    """A plan, or a reason string when the artifact cannot run in this much memory.

    An artifact compiled for static shapes on a device (``details.device_context.<device>``, e.g. the
    NPU pipeline's static prompt and response lengths) uses exactly those limits there.
    """
    mem, ctx = artifact.memory, artifact.context
    fixed = dict(artifact.details.get("device_context", {})).get(device)
    if fixed:
        ctx = ContextEnvelope(int(fixed["max_total_tokens"]), int(fixed["max_prompt_tokens"]),
                              int(fixed["max_total_tokens"]))
    base = mem.weight_bytes + mem.runtime_overhead_bytes
    if artifact.vision is not None:  # the vision encoder's activations while an image is encoded
        base += artifact.vision.vision_runtime_bytes
    usable = available_bytes - max(SAFETY_BYTES, reserve_bytes)
    if base + mem.kv_cache_bytes_per_token * MIN_CONTEXT > usable:
        return (f"needs {_gib(base + mem.kv_cache_bytes_per_token * MIN_CONTEXT)} for weights and a "
                f"{MIN_CONTEXT}-token KV cache, {_gib(max(usable, 0))} RAM available")
    by_ram = (usable - base) // max(mem.kv_cache_bytes_per_token, 1)
    if requested is not None:
        if requested < 16:
            raise UsageError(f"context of {requested} tokens is too small")
        if requested > ctx.max_total_tokens:
            return f"requested context {requested:,} exceeds the artifact's maximum of {ctx.max_total_tokens:,} tokens"
        if requested > by_ram:
            return (f"requested context {requested:,} tokens needs "
                    f"{_gib(base + mem.kv_cache_bytes_per_token * requested)}; this host has room for {by_ram:,}")
        total, limited = requested, "request"
    else:
        total, limited = ctx.default_total_tokens, "artifact default"
        if total > ctx.max_total_tokens:
            total, limited = ctx.max_total_tokens, "artifact maximum"
        if total > by_ram:
            total, limited = int(by_ram), "RAM"
    prompt = min(ctx.max_prompt_tokens, total - 1)
    if fixed and limited == "artifact default":
        limited = f"{device.upper()} static shapes"
    return ContextPlan(total, prompt, base + mem.kv_cache_bytes_per_token * total, limited)


def _gib(n: int) -> str:
    return f"{n / 2**30:.2f} GiB"
