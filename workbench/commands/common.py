"""What several commands share: the config they start from, and a quiet switch."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from workbench.config import PRESETS, PROFILES, Config, apply_overrides, preset
from workbench.errors import ConfigError, MissingFile


def add_config_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--preset", default="quick",
                   help=f"a profile ({', '.join(PROFILES)}) or a method ({', '.join(PRESETS)}); default quick")
    p.add_argument("--profile", default=None, help="the scale for a method preset (default quick)")
    p.add_argument("--config", default=None, metavar="FILE",
                   help="start from this config.json (e.g. a run's) instead of a preset; --set still applies")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config value, e.g. --set train.epochs=5 (repeatable)")


def config_from_args(args: argparse.Namespace) -> Config:
    if args.config:
        path = Path(args.config)
        if path.is_dir():
            hint = f"give {path / 'config.json'}" if (path / "config.json").is_file() else "give a config.json file"
            raise ConfigError(f"--config {path} is a folder, not a config file; {hint}")
        if not path.is_file():
            raise MissingFile(f"--config {path} does not exist; give a config.json, e.g. runs/cache/<run>/config.json")
        try:
            raw = json.loads(path.read_text())
        except json.JSONDecodeError as e:
            raise ConfigError(f"--config {path} is not valid JSON ({e})") from None
        if not isinstance(raw, dict):
            raise ConfigError(f"--config {path} holds a JSON {type(raw).__name__}, not a config object "
                              f"({{\"name\": ..., \"data\": {{...}}, ...}}); give a run's config.json or the output "
                              f"of `python -m workbench presets --show NAME`")
        try:
            base = Config.from_dict(raw)
        except ConfigError as e:
            raise ConfigError(f"--config {path}: {e}") from None
    else:
        base = preset(args.preset, args.profile)
    return apply_overrides(base, args.set)


def add_quiet(p: argparse.ArgumentParser) -> None:
    p.add_argument("--quiet", action="store_true", help="no progress bars and no progress messages")


def add_jobs(p: argparse.ArgumentParser) -> None:
    p.add_argument("--jobs", type=int, default=1,
                   help="runs trained side by side, each in a process of its own at one thread (bitwise the runs "
                        "trained one after another at one thread); default 1: one after another here, at the "
                        "thread count (see workbench.runs.train_side_by_side)")


def parse_list(text: str, option: str, kind: type = str, distinct: bool = True) -> list:
    """A comma-separated option value as a list of `kind`, or a ConfigError naming the option: an empty
    list, an item that is not a `kind` and (`distinct`) a repeated item are refused."""
    items = [t.strip() for t in text.split(",") if t.strip()]
    try:
        values = [kind(t) for t in items]
    except ValueError:
        raise ConfigError(f"{option} {text!r} must be a comma-separated list of "
                          f"{'integers' if kind is int else 'numbers' if kind is float else 'names'}, e.g. "
                          f"{'0,1,2' if kind is int else '0.25,0.5' if kind is float else 'a,b'}") from None
    if not values:
        raise ConfigError(f"{option} is empty; give at least one value")
    repeated = sorted({v for v in values if values.count(v) > 1}, key=values.index)
    if distinct and repeated:
        raise ConfigError(f"{option} {text!r} repeats {', '.join(map(str, repeated))}: each value counts once (a "
                          f"repeated seed would count one run twice); give distinct values")
    return values


def parse_seeds(text: str) -> list[int]:
    """`--seeds`: distinct integers, e.g. 0,1,2."""
    return parse_list(text, "--seeds", int)
