"""Device profiles: ``targets/*.toml`` loaded into frozen, strictly validated dataclasses."""

from __future__ import annotations

import difflib
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Literal

from ..errors import ConfigError, UnknownTargetError
from ..registry import formats
from .data_dirs import data_dir
from .strict import parse, read_toml

CpuArch = Literal["x86_64", "arm64"]
OsName = Literal["linux", "windows", "macos", "android"]


@dataclass(frozen=True)
class Accelerator:
    kind: Literal["gpu", "npu"]
    vendor: str
    name: str
    memory: Literal["shared", "dedicated"] = "shared"


@dataclass(frozen=True)
class Planning:
    memory_bandwidth_gbps: float
    default_context_length: int
    reserve_ram_gb: float = 1.0  # what the OS and other processes keep
    num_crops: int = 0  # vision models: most 336-px crops per image on this device (0 = the recipe's)

    def __post_init__(self) -> None:
        if self.default_context_length < 256:
            raise ValueError("planning.default_context_length must be at least 256")
        if not 0 <= self.num_crops <= 16:
            raise ValueError("planning.num_crops must be between 1 and 16 (0: the recipe's)")


@dataclass(frozen=True)
class Target:
    name: str
    description: str
    os: tuple[OsName, ...]
    cpu_arch: CpuArch
    ram_gb: tuple[int, ...]
    formats: tuple[str, ...]
    planning: Planning
    aliases: tuple[str, ...] = ()
    accelerators: tuple[Accelerator, ...] = ()
    soc: str = ""  # the device's SoC part number: NPU formats compiled per SoC are compiled for this one only
    source_file: str = ""


def _targets_dir() -> Path:
    return data_dir("targets")


def load_target_file(path: Path) -> Target:
    where = path.name
    table = read_toml(path)
    target = parse(Target, table, where)
    if target.name != path.stem:
        raise ConfigError(f"{where}: key 'name' is '{target.name}' but the file is named '{path.stem}'",
                          hint="a target's name is its file name")
    known = formats()
    for i, fmt in enumerate(target.formats):
        if fmt not in known:
            raise ConfigError(f"{where}: key 'formats[{i}]' names unknown format '{fmt}'",
                              hint=f"known formats: {', '.join(known)}; a format from a plugin needs that plugin "
                                   "installed")
    if not target.formats:
        raise ConfigError(f"{where}: key 'formats' is empty")
    return replace(target, source_file=str(path))


def all_targets(directory: Path | None = None) -> dict[str, Target]:
    directory = directory or _targets_dir()
    targets = {}
    for path in sorted(directory.glob("*.toml")):
        target = load_target_file(path)
        targets[target.name] = target
    seen: dict[str, str] = {}
    for target in targets.values():
        for alias in (target.name, *target.aliases):
            if alias in seen and seen[alias] != target.name:
                raise ConfigError(f"{target.name}.toml: key 'aliases' repeats '{alias}', already used by {seen[alias]}")
            seen[alias] = target.name
    return targets


def resolve_target(name: str, directory: Path | None = None) -> Target:
    targets = all_targets(directory)
    by_alias = {alias: t for t in targets.values() for alias in (t.name, *t.aliases)}
    if name in by_alias:
        return by_alias[name]
    close = difflib.get_close_matches(name, list(by_alias), n=3, cutoff=0.5)
    hint = f"did you mean {', '.join(close)}?" if close else "run 'edgeslm targets' to list them"
    raise UnknownTargetError(f"unknown target '{name}'", hint=hint)
