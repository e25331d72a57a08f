"""`python -m workbench probe`: what each loss term sends into the student's encoders (gradient shares)."""

from __future__ import annotations

import argparse
import json
from dataclasses import replace

from workbench.commands.common import add_quiet
from workbench.config import PRESETS, apply_overrides, preset
from workbench.errors import ConfigError
from workbench.methods.robustseg import TERMS, configured_weights, rule_weights, shares
from workbench.runs import probe_norms


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.description = ("Measure, at the probe point (one epoch of basic distillation from the teacher), the gradient "
                     "norm each unweighted loss term sends into the student's encoders, and print every term's "
                     "share under the config's weights and under the gradient_share rule (docs/METHOD.md, "
                     "\"Loss weights\"). Last line: one JSON object.")
    p.add_argument("--method", default="robustseg", help="the method preset whose weights are shown")
    p.add_argument("--profile", default="quick", help="the scale")
    p.add_argument("--seed", type=int, default=0, help="training seed")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="config override")
    add_quiet(p)


def run(args: argparse.Namespace) -> int:
    cfg = apply_overrides(preset(args.method, args.profile), [f"train.seed={args.seed}", *args.set])
    if cfg.method != "robustseg":
        valid = [m for m in PRESETS if preset(m, args.profile).method == "robustseg"]
        raise ConfigError(f"probe measures the gradient shares of RobustSeg's distillation terms ("
                          f"{', '.join(t.name for t in TERMS)}); --method {args.method} trains {cfg.method} (no such "
                          f"terms): choose one of {', '.join(valid)}")
    rule_cfg = replace(cfg, distill=replace(cfg.distill, weighting="gradient_share", weights_resolved=False))
    norms = probe_norms(rule_cfg, progress=not args.quiet)
    rule = rule_weights(rule_cfg.distill, norms)
    configured = rule if cfg.distill.weighting == "gradient_share" else configured_weights(cfg.distill)
    paper_shares, rule_shares = shares(norms, configured), shares(norms, rule)
    print(f"probe point: {args.method} at {args.profile}, seed {args.seed}; gradient norms into the student's "
          f"encoders, mean over {cfg.distill.probe_batches} training batches")
    print(f"{'term':<6}{'|grad|':>12}{'weight':>12}{'share':>9}{'rule weight':>14}{'rule share':>12}")
    print(f"{'ce':<6}{norms['ce']:>12.4g}{1.0:>12.4g}{'':>9}{1.0:>14.4g}{'':>12}")
    for t in TERMS:
        s, rs = f"{100 * paper_shares.get(t.name, 0):8.1f}%", f"{100 * rule_shares.get(t.name, 0):11.1f}%"
        print(f"{t.name:<6}{norms[t.name]:>12.4g}{configured.get(t.name, 0.0):>12.4g}{s:>9}{rule[t.name]:>14.4g}{rs:>12}")
    print("shares: kd relative to CE, cp and ifv relative to the weighted KD term")
    print(json.dumps({"bench": "probe", "method": args.method, "profile": args.profile, "seed": args.seed,
                      "norms": norms, "weights": configured, "shares": paper_shares,
                      "rule_weights": rule, "rule_shares": rule_shares}))
    return 0
