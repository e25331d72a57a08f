"""`python -m workbench probe`: what each loss term sends into the student's encoders (gradient shares)."""

from __future__ import annotations

import argparse
import json
from dataclasses import replace

from workbench.commands.common import add_quiet
from workbench.config import METHODS, apply_overrides, preset
from workbench.errors import ConfigError
from workbench.runs import Run
from workbench.weighting import shares


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
        valid = [m for m in METHODS if preset(m, args.profile).method == "robustseg"]
        raise ConfigError(f"probe measures the gradient shares of RobustSeg's distillation terms (kd, cp, ifv); "
                          f"--method {args.method} trains {cfg.method} (no such terms): choose one of {', '.join(valid)}")
    rule = Run.from_config(replace(cfg, distill=replace(cfg.distill, weighting="gradient_share")))
    lw = rule.loss_weights(progress=not args.quiet)
    configured = {"kd": cfg.distill.kd_weight, "cp": cfg.distill.cp_weight, "ifv": cfg.distill.ifv_weight}
    if cfg.distill.weighting == "gradient_share":
        configured = lw.as_dict()
    paper_shares, rule_shares = shares(lw.norms, configured), lw.shares()
    print(f"probe point: {args.method} at {args.profile}, seed {args.seed}; gradient norms into the student's "
          f"encoders, mean over {cfg.distill.probe_batches} training batches")
    print(f"{'term':<6}{'|grad|':>12}{'weight':>12}{'share':>9}{'rule weight':>14}{'rule share':>12}")
    for term, norm in lw.norms.items():
        w, rw = (1.0, 1.0) if term == "ce" else (configured.get(term, 0.0), lw.as_dict()[term])
        s = "" if term == "ce" else f"{100 * paper_shares.get(term, 0):8.1f}%"
        rs = "" if term == "ce" else f"{100 * rule_shares.get(term, 0):11.1f}%"
        print(f"{term:<6}{norm:>12.4g}{w:>12.4g}{s:>9}{rw:>14.4g}{rs:>12}")
    print("shares: kd relative to CE, cp and ifv relative to the weighted KD term")
    print(json.dumps({"bench": "probe", "method": args.method, "profile": args.profile, "seed": args.seed,
                      "norms": lw.norms, "weights": configured, "shares": paper_shares,
                      "rule_weights": lw.as_dict(), "rule_shares": rule_shares}))
    return 0
