"""Load local pretrained encoder weights strictly, converting official SegFormer MiT names to timm's
(docs/METHOD.md, "Architecture": MiT-B0..B5 are timm's `pvt_v2_b0..b5` with `mlp_ratios=(4, 4, 4, 4)`).

Key mapping, official SegFormer -> the timm `features_only` encoder that `build_encoder` creates:

    patch_embed1.*                 -> patch_embed.*
    patch_embed{i}.*   (i = 2..4)  -> stages_{i-1}.downsample.*
    block{i}.{j}.*                 -> stages_{i-1}.blocks.{j}.*   (mlp.dwconv.dwconv.* -> mlp.dwconv.*)
    norm{i}.*                      -> stages_{i-1}.norm.*
    head.*                         -> dropped (ImageNet classifier; the encoder has none)

timm's plain (not `features_only`) models name the stages `stages.{i}.*`; such checkpoints load too.
Nothing is ever downloaded: every function reads a local file.
"""

from __future__ import annotations

import argparse
import re
from collections.abc import Mapping
from pathlib import Path

import torch
from torch import nn

from workbench.checkpoint import atomic_write_bytes, describe_mismatches
from workbench.errors import MissingFile, WeightsError
from workbench.models.encoders import MIT_DEPTHS, MIT_WIDTHS, build_encoder

VARIANTS = tuple(name.removeprefix("mit_") for name in MIT_DEPTHS)  # b0..b5
_WRAPPER_KEYS = ("state_dict", "model")
_PATCH_EMBED = re.compile(r"^patch_embed([1-4])\.(.+)$")
_BLOCK = re.compile(r"^block([1-4])\.(\d+)\.(.+)$")
_NORM = re.compile(r"^norm([1-4])\.(.+)$")
_STAGE_DOT = re.compile(r"^stages\.(\d+)\.")
_STAGE_UNDERSCORE = re.compile(r"^stages_(\d+)\.")
_MAX_LISTED = 12  # keys shown per list in an error message; the count is always given
_ANSI = re.compile(r"\x1b\[[0-9;]*m")  # torch's messages carry terminal escape codes


def _official_key_to_timm(key: str) -> str | None:
    """The timm name of one official key; None for the classifier head; other keys pass unchanged."""
    if key == "head" or key.startswith("head."):
        return None
    if m := _PATCH_EMBED.match(key):
        stage, rest = int(m[1]) - 1, m[2]
        return f"patch_embed.{rest}" if stage == 0 else f"stages_{stage}.downsample.{rest}"
    if m := _BLOCK.match(key):
        stage, j, rest = int(m[1]) - 1, m[2], m[3]
        if rest.startswith("mlp.dwconv.dwconv."):  # official DWConv wraps its conv in a `.dwconv` module
            rest = "mlp.dwconv." + rest.removeprefix("mlp.dwconv.dwconv.")
        return f"stages_{stage}.blocks.{j}.{rest}"
    if m := _NORM.match(key):
        return f"stages_{int(m[1]) - 1}.norm.{m[2]}"
    return key


def official_to_timm(state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Rename official SegFormer MiT keys to the `features_only` timm encoder's names; drop `head.*`.

    Keys that are neither official nor head keys pass unchanged (so a timm-named dict maps to itself,
    and a stray key is reported by the strict load rather than hidden here)."""
    out: dict[str, torch.Tensor] = {}
    sources: dict[str, str] = {}
    for key, value in state_dict.items():
        new = _official_key_to_timm(key)
        if new is None:
            continue
        if new in out:
            raise WeightsError(f"checkpoint keys {sources[new]!r} and {key!r} both map to {new!r}: the file mixes "
                             f"official SegFormer and timm names; re-save it with one naming")
        out[new], sources[new] = value, key
    return out


def _read_checkpoint(path: str | Path) -> dict[str, torch.Tensor]:
    """A flat name -> tensor dict from a local .pt/.pth/.bin or .safetensors file (wrapper dicts unwrapped)."""
    path = Path(path)
    if path.is_dir():
        raise WeightsError(f"weights {path} is a folder, not a weights file; give the .pth/.pt/.safetensors file "
                           f"itself (e.g. one written by `python -m workbench weights import-mit`)")
    if not path.is_file():
        raise MissingFile(f"checkpoint {path} does not exist (weights are never downloaded: give a local "
                                f"file, e.g. one written by `python -m workbench weights import-mit`)")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            obj = load_file(str(path), device="cpu")
        else:
            obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch/zip/pickle/safetensors raise many types for the same bad file
        text = _ANSI.sub("", str(e)).strip()
        if "weights only load failed" in text.lower():
            m = re.search(r"Unsupported global: GLOBAL (\S+)", text)
            raise WeightsError(
                f"checkpoint {path} was refused: it holds a pickled Python object{f' ({m[1]})' if m else ''} that "
                f"would run code when loaded; re-save only its state dict (names -> tensors) and give that file") from None
        reason = text.splitlines()[0].rstrip(".") if text else "unexpected end of file"
        raise WeightsError(
            f"cannot read checkpoint {path} ({path.stat().st_size} bytes): {type(e).__name__}: {reason}. The file "
            f"is truncated or corrupt: compare its size with the source and copy it again") from e
    if isinstance(obj, Mapping) and {"model", "config", "modalities"} <= set(obj):
        name = obj["config"].get("name", "?") if isinstance(obj["config"], Mapping) else "?"
        raise WeightsError(
            f"{path} is a workbench checkpoint (a trained {name!r} segmentor for {', '.join(map(str, obj['modalities']))}), "
            f"not pretrained MiT encoder weights. Use it as it is: evaluate it (python -m workbench evaluate {path}), "
            f"distil from it (--set distill.teacher={path}) or open it with workbench.runs.Run.at; model.weights and "
            f"weights import-mit take an official SegFormer MiT checkpoint (mit_b0.pth ...)")
    for _ in range(3):  # e.g. {"state_dict": ...}, {"model": ...}, {"model": {"state_dict": ...}}
        if isinstance(obj, Mapping):
            inner = next((obj[k] for k in _WRAPPER_KEYS if isinstance(obj.get(k), Mapping)), None)
            if inner is not None:
                obj = inner
                continue
        break
    if not isinstance(obj, Mapping):
        raise WeightsError(f"checkpoint {path} holds a {type(obj).__name__}, not a state dict (name -> tensor)")
    bad = [k for k, v in obj.items() if not isinstance(v, torch.Tensor)]
    if bad:
        raise WeightsError(f"checkpoint {path} is not a flat state dict: entries {_listing(bad)} are not tensors; "
                         f"expected names -> tensors, optionally wrapped as {{'state_dict': ...}} or {{'model': ...}}")
    return dict(obj)


def _listing(keys: list[str]) -> str:
    keys = sorted(keys)
    shown = ", ".join(keys[:_MAX_LISTED])
    more = f", ... ({len(keys) - _MAX_LISTED} more)" if len(keys) > _MAX_LISTED else ""
    return f"[{shown}{more}] ({len(keys)} key{'s' if len(keys) != 1 else ''})"


def _match_stage_naming(state_dict: dict[str, torch.Tensor], target_keys: set[str]) -> dict[str, torch.Tensor]:
    """Rename `stages.{i}.` <-> `stages_{i}.` to whichever form the target encoder uses."""
    if any(_STAGE_UNDERSCORE.match(k) for k in target_keys):
        pattern, repl = _STAGE_DOT, r"stages_\1."
    elif any(_STAGE_DOT.match(k) for k in target_keys):
        pattern, repl = _STAGE_UNDERSCORE, r"stages.\1."
    else:
        return state_dict
    return {pattern.sub(repl, k, count=1): v for k, v in state_dict.items()}


def adapt_first_conv(weight: torch.Tensor, in_chans: int) -> torch.Tensor:
    """RGB filters (O, 3, kh, kw) -> (O, in_chans, kh, kw): every new input channel gets the mean of the
    three RGB filters scaled by 3 / in_chans, i.e. sum(RGB filters) / in_chans. A grey image repeated over
    the in_chans channels then gives the same first-layer response as that grey image in RGB."""
    if weight.ndim != 4 or weight.shape[1] != 3:
        raise WeightsError(f"first-layer adaptation needs RGB conv weights (O, 3, kh, kw), got {tuple(weight.shape)}")
    mean = weight.float().mean(dim=1, keepdim=True)  # (O, 1, kh, kw)
    return (mean.repeat(1, in_chans, 1, 1) * (3.0 / in_chans)).to(weight.dtype)


def _adapt_input_layer(state_dict: dict[str, torch.Tensor], target: Mapping[str, torch.Tensor],
                       in_chans: int) -> dict[str, torch.Tensor]:
    """Adapt the one conv weight whose checkpoint input dim is 3 where the encoder's is in_chans."""
    if in_chans == 3:
        return state_dict
    candidates = [k for k, v in state_dict.items()
                  if k in target and v.ndim == 4 and v.shape[1] == 3 and target[k].ndim == 4
                  and target[k].shape[1] == in_chans and v.shape[0] == target[k].shape[0]
                  and v.shape[2:] == target[k].shape[2:]]
    if len(candidates) > 1:
        raise WeightsError(f"cannot tell which layer is the input conv to adapt from 3 to {in_chans} channels: "
                         f"{candidates}; convert the checkpoint's first layer yourself")
    if candidates:
        key = candidates[0]
        state_dict = {**state_dict, key: adapt_first_conv(state_dict[key], in_chans)}
    return state_dict


def guess_variant(state_dict: Mapping[str, torch.Tensor]) -> str | None:
    """The MiT variant (`b0`..`b5`) whose depths and widths a (timm- or official-named) dict has, else None."""
    sd = _match_stage_naming(official_to_timm(state_dict), {"stages_0.norm.weight"})
    depths, widths = [], []
    for i in range(4):
        blocks = {int(m[1]) for k in sd if (m := re.match(rf"stages_{i}\.blocks\.(\d+)\.", k))}
        norm = sd.get(f"stages_{i}.norm.weight")
        if not blocks or norm is None or blocks != set(range(len(blocks))):
            return None
        depths.append(len(blocks))
        widths.append(norm.shape[0])
    for name, d in MIT_DEPTHS.items():
        if tuple(depths) == d and tuple(widths) == MIT_WIDTHS[name]:
            return name.removeprefix("mit_")
    return None


def _variant_hint(state_dict: Mapping[str, torch.Tensor], target: Mapping[str, torch.Tensor]) -> str:
    """Which MiT variant the checkpoint looks like, when that differs from the encoder's."""
    guess = guess_variant(state_dict)
    if guess is None or guess == guess_variant(target):
        return ""
    return f" The checkpoint looks like MiT-{guess.upper()} (mit_{guess})."


def _check_fits(state_dict: Mapping[str, torch.Tensor], target: Mapping[str, torch.Tensor], what: str) -> None:
    """WeightsError unless the key sets are equal and every shape matches."""
    problems = describe_mismatches(target, state_dict, "encoder", _MAX_LISTED)
    if not problems:
        return
    raise WeightsError(f"{what} does not fit the encoder: " + problems + "." + _variant_hint(state_dict, target)
                     + " Use the checkpoint of the same encoder and variant; convert official SegFormer files with "
                       "`python -m workbench weights import-mit SRC --variant bN --out DST`.")


def load_encoder_weights(enc: nn.Module, path: str | Path, in_chans: int = 3) -> nn.Module:
    """Load a local checkpoint into `enc` strictly and return `enc`.

    The file may use official SegFormer MiT names or timm names (`stages_{i}.` or `stages.{i}.`), bare or
    wrapped as {'state_dict': ...} / {'model': ...}; `head.*` (ImageNet classifier) is dropped. Every
    encoder key must be filled and every remaining checkpoint key used, with equal shapes, else WeightsError
    listing the missing/unexpected/mismatched keys. An unreadable (truncated, corrupt) file is a WeightsError
    naming it.

    `in_chans != 3` with an RGB checkpoint: the input conv (the only 4-D weight whose input dim is 3 in the
    checkpoint and in_chans in the encoder) becomes, for every input channel, mean(RGB filters) * 3/in_chans
    (see `adapt_first_conv`), so a grey image repeated over the channels gives the RGB response."""
    target = enc.state_dict()
    sd = _match_stage_naming(official_to_timm(_read_checkpoint(path)), set(target))
    sd = _adapt_input_layer(sd, target, in_chans)
    _check_fits(sd, target, f"checkpoint {path}")
    enc.load_state_dict(sd, strict=True)
    return enc


def import_mit(src: str | Path, variant: str, out: str | Path) -> Path:
    """Convert an official SegFormer MiT checkpoint `src` to a timm-named state dict at `out` (atomic write).

    `variant` is `b0`..`b5` (or `mit_b0`..); the converted keys and shapes must equal those of
    `build_encoder(f"mit_{variant}")`, else WeightsError saying which variant the checkpoint looks like."""
    variant = variant.lower().removeprefix("mit_")
    if variant not in VARIANTS:
        raise WeightsError(f"unknown MiT variant {variant!r}; valid: {', '.join(VARIANTS)}")
    sd = official_to_timm(_read_checkpoint(src))
    with torch.device("meta"):  # shapes only: no memory, no init time even for B5
        target = build_encoder(f"mit_{variant}").state_dict()
    sd = _match_stage_naming(sd, set(target))
    guess = guess_variant(sd)
    if guess is not None and guess != variant:
        raise WeightsError(f"checkpoint {src} is MiT-{guess.upper()}, not MiT-{variant.upper()}: "
                         f"use --variant {guess}")
    _check_fits(sd, target, f"checkpoint {src} (as mit_{variant})")
    out = Path(out)
    converted = {k: v.clone(memory_format=torch.contiguous_format) for k, v in sd.items()}
    atomic_write_bytes(out, lambda f: torch.save(converted, f))
    return out


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """`python -m workbench weights import-mit SRC --variant b0 --out DST`."""
    parser.description = ("Convert an official SegFormer MiT-B0..B5 checkpoint (e.g. mit_b0.pth) to a timm-named "
                          "encoder state dict that `model.weights=DST` loads.")
    parser.add_argument("src", metavar="SRC", help="official checkpoint (local file)")
    parser.add_argument("--variant", required=True, choices=VARIANTS, help="MiT variant of SRC")
    parser.add_argument("--out", required=True, metavar="DST", help="output file (written atomically)")


def run(args: argparse.Namespace) -> int:
    out = import_mit(args.src, args.variant, args.out)
    print(f"wrote {out} (mit_{args.variant}, timm names)")
    return 0
