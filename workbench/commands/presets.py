"""`python -m workbench presets`: the profiles, methods and tuned weights; `--show NAME` prints a config."""

from __future__ import annotations

import argparse
import sys
from dataclasses import replace

from workbench.config import PRESETS, PROFILES, TUNED, Config, preset


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--show", default=None, metavar="NAME",
                   help="print this preset's full config as JSON on stdout (usable as `train --config FILE`), and "
                        "its model's parameter count and FLOPs per forward on stderr")
    p.add_argument("--profile", default=None, help="the scale for a method preset (default quick)")


def profile_settings() -> list[tuple[str, str, object]]:
    """(profile, key, value) for every loss setting (`distill.*`, `magic.*`) a profile sets to something other
    than the paper's default, e.g. quick's distill.asm_stage=all."""
    default = Config().to_dict()
    out = []
    for name, make in PROFILES.items():
        cfg = make().to_dict()
        for section in ("distill", "magic"):
            for key, value in cfg[section].items():
                if value != default[section][key]:
                    out.append((name, f"{section}.{key}", value))
    return out


def profile_table() -> str:
    lines = ["loss settings the profiles change (the paper's defaults otherwise; `presets --show NAME` for all):"]
    lines += [f"  {profile:<7} {key} = {value}" for profile, key, value in profile_settings()]
    return "\n".join(lines)


def tuned_table() -> str:
    lines = ["tuned weights (applied on top of the paper's defaults; tuned on val):"]
    for profile, entries in TUNED.items():
        for key, (value, source) in entries.items():
            lines.append(f"  {profile:<7} {key} = {value}   ({source})")
    return "\n".join(lines)


def model_size(cfg: Config, device: str = "meta") -> dict:
    """The parameters of the model `cfg` trains and the FLOPs of one forward of one image with every modality
    present at the profile's input size (`data.size`), counted by torch's FlopCounterMode (a multiply-add
    counts 2). On the meta device (default) nothing is computed, so the paper's 1024x1024 costs no time: the
    forward runs as `Segmentor.forward` does with every modality present, without its input checks (they
    read values); on "cpu" it is the real forward on zeros (the test compares the two). Attention is counted
    as its two matrix products."""
    import torch
    import torch.nn.functional as F
    from torch.nn.attention import SDPBackend, sdpa_kernel
    from torch.utils.flop_counter import FlopCounterMode

    from workbench.data import DATASETS
    from workbench.models import build_model

    dataset = DATASETS[cfg.data.dataset]
    modalities = tuple(cfg.data.modalities or dataset.all_modalities)
    size = cfg.data.size
    with torch.device(device):
        model = build_model(replace(cfg.model, weights=None, init="scratch"), modalities, len(dataset.classes)).eval()
        inputs = {m: torch.zeros(1, 3, size, size) for m in modalities}
        everything = torch.ones(1, len(modalities), dtype=torch.bool)
        # attention as plain matmuls: the fused CPU attention kernel is invisible to the counter
        with torch.no_grad(), sdpa_kernel(SDPBackend.MATH), FlopCounterMode(display=False) as counter:
            if device == "meta":
                fused = model.fuse(model.encode(inputs, everything, "zero"), everything.float())
                F.interpolate(model.head(fused), size=(size, size), mode="bilinear", align_corners=False)
            else:
                model(inputs)
    return {"parameters": sum(p.numel() for p in model.parameters()), "flops": counter.get_total_flops(),
            "size": size, "modalities": modalities}


def size_line(cfg: Config, size: dict) -> str:
    teacher = " (a distillation run also runs its teacher, the same model, each step)" if cfg.distill.enabled else ""
    return (f"# model: {size['parameters']:,} parameters; {size['flops'] / 1e9:.3g} GFLOPs per forward of one "
            f"{size['size']}x{size['size']} image with {len(size['modalities'])} modalities "
            f"({', '.join(size['modalities'])}){teacher}")


def run(args: argparse.Namespace) -> int:
    if args.show:
        cfg = preset(args.show, args.profile)
        print(cfg.to_json())  # stdout holds only the JSON, so it can be piped or saved as --config FILE
        sys.stdout.flush()
        print(size_line(cfg, model_size(cfg)), file=sys.stderr)
        changed = [f"{k}={v}" for p, k, v in profile_settings() if p == cfg.profile]
        if changed:
            print(f"# the {cfg.profile} profile sets " + ", ".join(changed), file=sys.stderr)
        tuned = TUNED.get(cfg.profile, {})
        if tuned:
            print("# tuned for " + cfg.profile + ": " + ", ".join(f"{k}={v}" for k, (v, _) in tuned.items()),
                  file=sys.stderr)
        return 0
    print("profiles:", ", ".join(PROFILES))
    print("methods: ", ", ".join(PRESETS))
    print(profile_table())
    print(tuned_table())
    return 0
