"""Model-family recipes: ``recipes/*.toml`` → frozen dataclasses with typed per-format settings.

A recipe names the architectures it applies to and, per artifact format, the quantization settings.
Settings are typed by the format's backend (``FormatSpec.settings``); command-line overrides
(``--set FORMAT.KEY=VALUE`` or ``--set KEY=VALUE`` for every format that has KEY) are converted to
the field's type and validated the same way as the file.
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import typing
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import Any

from ..errors import ConfigError, ModelSourceError, UsageError
from ..registry import formats as registered_formats
from .data_dirs import data_dir
from .strict import convert, parse, read_toml, to_plain


@dataclass(frozen=True)
class QualitySettings:
    """The recipe's ``[quality]`` table: how every build measures its artifacts against the source.

    max_perplexity_increase: relative perplexity increase over the source that fails the build.
    windows / window_tokens: the evaluation windows (the source reference costs about
        2 x parameters x windows x window_tokens FLOPs in float32).
    max_accuracy_drop / vision_questions: models that take images also answer an image-question set
        (``--vision-eval``, else the built-in ``edgeslm:vision-dev``); the build fails when the artifact is
        more than ``max_accuracy_drop`` below the fp32 torch reference.
    """

    max_perplexity_increase: float = 0.05
    windows: int = 4
    window_tokens: int = 512
    max_accuracy_drop: float = 0.05  # vision models: image-question accuracy below the fp32 reference (0.05 = 5 points)
    vision_questions: int = 0  # vision models: how many questions of the set to ask (0 = all)

    def __post_init__(self) -> None:
        if not 0 <= self.max_accuracy_drop <= 1 or self.vision_questions < 0:
            raise ValueError("max_accuracy_drop must be in [0, 1] and vision_questions >= 0")
        if self.max_perplexity_increase < 0:
            raise ValueError("max_perplexity_increase must be >= 0")
        if self.windows < 1 or self.window_tokens < 16:
            raise ValueError("windows must be >= 1 and window_tokens >= 16")


@dataclass(frozen=True)
class Recipe:
    name: str
    description: str
    default_model: str
    architectures: tuple[str, ...]
    model_types: tuple[str, ...]
    stop_tokens: tuple[str, ...]
    formats: Mapping[str, Any]  # format name -> settings dataclass instance
    quality: QualitySettings = QualitySettings()
    source_file: str = ""

    def settings_for(self, fmt: str) -> Any:
        if fmt not in self.formats:
            raise ConfigError(f"recipe '{self.name}' has no settings for format '{fmt}'",
                              hint=f"add a [formats.{fmt}] table to {Path(self.source_file).name}")
        return self.formats[fmt]

    def with_defaults_for(self, names: list[str]) -> Recipe:
        """The recipe with the backend's default settings for formats it has no table for (a format from
        a plugin works with the shipped recipes); a settings class without defaults needs the table."""
        known = registered_formats()
        missing = {name: known[name] for name in names if name not in self.formats}
        if not missing:
            return self
        added = {}
        for name, spec in missing.items():
            try:
                added[name] = spec.settings_class()()
            except TypeError:
                raise ConfigError(f"recipe '{self.name}' has no settings for format '{name}' and its backend has "
                                  "no defaults", hint=f"add a [formats.{name}] table to "
                                                      f"{Path(self.source_file).name}") from None
        return dataclasses.replace(self, formats=MappingProxyType({**self.formats, **added}))

    def to_json(self) -> dict[str, Any]:
        data = to_plain(self)
        data.pop("source_file", None)
        return data


@dataclass(frozen=True)
class _RecipeFile:
    name: str
    description: str
    default_model: str
    architectures: tuple[str, ...]
    model_types: tuple[str, ...]
    stop_tokens: tuple[str, ...]
    formats: Mapping[str, Mapping[str, Any]]
    quality: QualitySettings = QualitySettings()


def load_recipe_file(path: Path) -> Recipe:
    where = path.name
    raw = parse(_RecipeFile, read_toml(path), where)
    if raw.name != path.stem:
        raise ConfigError(f"{where}: key 'name' is '{raw.name}' but the file is named '{path.stem}'")
    formats = {}
    known = registered_formats()
    for fmt, table in raw.formats.items():
        if fmt not in known:
            raise ConfigError(f"{where}: key 'formats.{fmt}' names unknown format '{fmt}'",
                              hint=f"known formats: {', '.join(known)}")
        formats[fmt] = parse(known[fmt].settings_class(), dict(table), where, f"formats.{fmt}")
    return Recipe(raw.name, raw.description, raw.default_model, raw.architectures, raw.model_types,
                  raw.stop_tokens, MappingProxyType(formats), raw.quality, str(path))


def all_recipes(directory: Path | None = None) -> dict[str, Recipe]:
    directory = directory or data_dir("recipes")
    return {r.name: r for r in (load_recipe_file(p) for p in sorted(directory.glob("*.toml")))}


def recipe_for_config(config: Mapping[str, Any], name: str | None = None,
                      directory: Path | None = None) -> Recipe:
    """The recipe named ``name``, or the one whose architectures match the model's config.json."""
    recipes = all_recipes(directory)
    if name:
        if name not in recipes:
            close = difflib.get_close_matches(name, list(recipes), n=2)
            raise UsageError(f"unknown recipe '{name}'",
                             hint=f"did you mean {', '.join(close)}?" if close else f"known: {', '.join(recipes)}")
        return recipes[name]
    archs = list(config.get("architectures") or [])
    for recipe in recipes.values():
        if any(a in recipe.architectures for a in archs):
            return recipe
    supported = sorted({a for r in recipes.values() for a in r.architectures})
    shown = ", ".join(archs) or f"model_type {config.get('model_type')!r}"
    raise ModelSourceError(f"unsupported architecture: {shown}",
                           hint=f"edgeslm has recipes for {', '.join(supported)}")


def apply_overrides(recipe: Recipe, overrides: list[str], formats: list[str]) -> Recipe:
    """Apply ``FORMAT.KEY=VALUE`` / ``KEY=VALUE`` overrides, typed by the settings dataclass."""
    new = dict(recipe.formats)
    for item in overrides:
        key, sep, text = item.partition("=")
        if not sep or not key.strip():
            raise UsageError(f"[[overrides]] '{item}' is not KEY=VALUE", hint="e.g. onnx-int4-cpu.block_size=64")
        key = key.strip()
        fmt, dot, field = key.rpartition(".")
        targets = [fmt] if dot else [f for f in formats if f in new]
        if dot and fmt not in new:
            raise UsageError(f"[[overrides]] '{item}': recipe '{recipe.name}' has no format '{fmt}'",
                             hint=f"formats in this recipe: {', '.join(new)}")
        if dot and fmt not in formats:
            from .targets import all_targets

            takers = [t.name for t in all_targets().values() if fmt in t.formats]
            raise UsageError(f"[[overrides]] '{item}': format '{fmt}' is not built for the targets given "
                             f"(they need {', '.join(formats) or 'nothing'})",
                             hint=f"targets that take {fmt}: {', '.join(takers) or 'none'}")
        applied = False
        for f in targets:
            settings = new[f]
            names = {x.name: x for x in dataclasses.fields(settings)}
            if field not in names:
                if dot:
                    close = difflib.get_close_matches(field, list(names), n=1)
                    raise UsageError(f"[[overrides]] '{item}': '{f}' has no setting '{field}'",
                                     hint=f"did you mean '{close[0]}'?" if close else f"settings: {', '.join(names)}")
                continue
            hint_type = typing.get_type_hints(type(settings))[field]
            value = parse_value(text.strip(), hint_type, f"[[overrides]] {key}")
            try:
                new[f] = dataclasses.replace(settings, **{field: value})
            except ValueError as exc:  # the settings' own range checks (__post_init__)
                raise UsageError(f"[[overrides]] '{item}': {f}: {exc}") from None
            applied = True
        if not applied:
            raise UsageError(f"[[overrides]] '{item}': no format being built has a setting '{field}'")
    return dataclasses.replace(recipe, formats=MappingProxyType(new))


def parse_value(text: str, tp: Any, where: str) -> Any:
    """Convert command-line text to ``tp`` (JSON syntax accepted), then validate strictly."""
    try:
        value = json.loads(text)
    except json.JSONDecodeError:
        value = text
    if tp is str or (typing.get_origin(tp) is typing.Literal and all(isinstance(a, str) for a in typing.get_args(tp))):
        value = text
    try:
        return convert(tp, value, where)
    except ConfigError as exc:
        raise UsageError(exc.message, hint=exc.hint) from None
