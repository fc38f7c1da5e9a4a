"""The data behind ``edgeslm doctor``: host profile + selection explained, as plain JSON-ready dicts."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from ..bundle.manifest import read_manifest
from ..bundle.pack import OpenedBundle
from .host_probe import HostProfile, probe_host
from .remote_fallback import remote_lines, remote_report
from .selection import rank_artifacts


def doctor_report(bundle: Path | None, artifact: str | None = None, device: str | None = None,
                  context: int | None = None, host: HostProfile | None = None, allow_remote: bool = False,
                  remote_config: str | Path | None = None) -> dict[str, Any]:
    """``report["remote"]``: the cloud fallback a remote.toml names, if any, and whether it would answer."""
    host = host or probe_host()
    from ..registry import backends, load_problems

    report: dict[str, Any] = {"host": host.to_json(), "bundle": None, "chosen": None, "artifacts": [],
                              "backends": {name: b.distribution for name, b in backends().items()},
                              "backend_problems": list(load_problems())}
    if bundle is None:
        report["remote"] = remote_report(None, None, allow_remote, remote_config)
        return report
    with OpenedBundle(Path(bundle)) as opened:
        manifest = read_manifest(opened.folder)
    selection = rank_artifacts(manifest, host, artifact_id=artifact, device=device, context=context)
    report["bundle"] = {"path": str(bundle), "bundle_id": manifest.bundle_id, "model": manifest.model.name}
    for rank, cand in enumerate(selection.ranked):
        report["artifacts"].append({
            "id": cand.artifact.id, "status": "chosen" if rank == 0 else "fallback", "rank": rank + 1,
            "device": cand.device, "accelerator": cand.accelerator.name if cand.accelerator else "CPU",
            "context_tokens": cand.context.total_tokens, "max_prompt_tokens": cand.context.max_prompt_tokens,
            "context_limited_by": cand.context.limited_by, "memory_bytes": cand.context.memory_bytes,
            "reason": cand.summary})
    for rej in selection.rejected:
        report["artifacts"].append({"id": rej.artifact_id, "status": "rejected", "reason": rej.reason})
    if selection.ranked:
        report["chosen"] = selection.ranked[0].artifact.id
    report["remote"] = remote_report(Path(bundle), selection, allow_remote, remote_config)
    return report


def format_report(report: dict[str, Any], human_bytes: Callable[[float], str]) -> str:
    h = report["host"]
    accel = ", ".join(f"{a['kind']}: {a['name']} ({a['api']})" for a in h["accelerators"]) or "none"
    pkgs = ", ".join(f"{k} {v}" for k, v in sorted(h["packages"].items())) or "none"
    lines = [
        f"host      {h['os']} {h['cpu_arch']}, {h['cpu_model'] or 'unknown CPU'}"
        + (f", {h['board']}" if h["board"] else ""),
        f"cpu       {h['physical_cores']} cores ({h['logical_cores']} threads), features: "
        f"{', '.join(h['cpu_features']) or 'none found'}",
        f"memory    {human_bytes(h['ram_available_bytes'])} available of {human_bytes(h['ram_total_bytes'])}",
        f"accel     {accel}",
        f"runtimes  {pkgs}",
        f"backends  {', '.join(f'{n} ({d})' if d != 'edgeslm' else n for n, d in report['backends'].items())}",
    ]
    lines += [f"  ! {problem}" for problem in report["backend_problems"]]
    if report["bundle"]:
        lines.append(f"bundle    {report['bundle']['path']} ({report['bundle']['bundle_id']})")
        for art in report["artifacts"]:
            if art["status"] == "rejected":
                lines.append(f"  ✗ {art['id']}: rejected: {art['reason']}")
            else:
                mark = "✓" if art["status"] == "chosen" else "·"
                lines.append(f"  {mark} {art['id']}: {art['status']}: {art['reason']}; prompts up to "
                             f"{art['max_prompt_tokens']:,} tokens")
        if report["chosen"] is None:
            lines.append("  no artifact of this bundle can run on this host")
    lines += remote_lines(report.get("remote"))
    return "\n".join(lines)
