"""What several commands share: the config they start from, and a quiet switch."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from workbench.config import METHODS, PROFILES, Config, apply_overrides, preset
from workbench.errors import ConfigError, MissingFile


def add_config_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--preset", default="quick",
                   help=f"a profile ({', '.join(PROFILES)}) or a method ({', '.join(METHODS)}); default quick")
    p.add_argument("--profile", default=None, help="the scale for a method preset (default quick)")
    p.add_argument("--config", default=None, metavar="FILE",
                   help="start from this config.json (e.g. a run's) instead of a preset; --set still applies")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config value, e.g. --set train.epochs=5 (repeatable)")


def config_from_args(args: argparse.Namespace) -> Config:
    if args.config:
        path = Path(args.config)
        if not path.is_file():
            raise MissingFile(f"--config {path} does not exist; give a config.json, e.g. runs/cache/<run>/config.json")
        try:
            base = Config.from_dict(json.loads(path.read_text()))
        except json.JSONDecodeError as e:
            raise ConfigError(f"--config {path} is not valid JSON ({e})") from None
    else:
        base = preset(args.preset, args.profile)
    return apply_overrides(base, args.set)


def add_quiet(p: argparse.ArgumentParser) -> None:
    p.add_argument("--quiet", action="store_true", help="no progress bars and no progress messages")
