"""SynthDeLiVER: a procedurally rendered miniature of DeLiVER's problem (docs/DATASETS.md, "The synthetic benchmark (SynthDeLiVER)").

A pinhole camera at 1.5 m looks down a street. Objects are placed in 3-D (depth, lateral position,
height) and painted far to near, so every pixel has a class, a depth, a height above the ground, a
surface orientation, a reflectivity and an image-plane motion. The four modalities are rendered
from those buffers the way their sensors would see them:

- `rgb`   colour and texture per class, then the weather/lighting condition and the camera failures.
- `depth` a noisy depth camera: disparity (2 m / depth, 0 for sky) with multiplicative noise and
          missing pixels, one channel repeated to 3 (as DeLiVER's loader does with 1-channel images).
- `event` polarity events from the brightness change along the motion field (ego-motion + moving
          objects): positive, negative, and their sum.
- `lidar` sparse scan lines: disparity, reflectivity and height, zero where there is no return.

Complementary evidence is built in: `vegetation` and `terrain` share one colour and texture
distribution (separable only by geometry: height and reflectivity), and `car` and `dynamic` share
one appearance (separable only by motion, i.e. events). Every other class is easy in RGB, which is
what makes a full-modality model lean on RGB (the modality bias). Every sample is deterministic in
(seed, split, index) and resolution-free (object geometry is in normalized coordinates).
"""

from __future__ import annotations

import numpy as np

VERSION = 2  # bump when rendering changes: cached runs are keyed by it

CLASSES = (
    "road", "sidewalk", "building", "vegetation", "terrain", "sky",
    "pole", "traffic_sign", "car", "pedestrian", "fence", "dynamic",
)
PALETTE = (
    (128, 64, 128), (244, 35, 232), (70, 70, 70), (107, 142, 35), (152, 251, 152), (70, 130, 180),
    (153, 153, 153), (220, 220, 0), (0, 0, 142), (220, 20, 60), (190, 153, 153), (255, 128, 0),
)
CONDITIONS = ("cloud", "fog", "night", "rain", "sun")
CASES = ("motionblur", "overexposure", "underexposure", "lidarjitter", "eventlowres")
MODALITIES = ("rgb", "depth", "event", "lidar")
SPLITS = {"train": 0, "val": 1, "test": 2}

ROAD, SIDEWALK, BUILDING, VEGETATION, TERRAIN, SKY, POLE, SIGN, CAR, PEDESTRIAN, FENCE, DYNAMIC = range(12)

CAM_H = 1.5  # camera height (m)
MAX_DEPTH = 80.0  # beyond this the ground has no LiDAR return
# Per-class reflectivity seen by LiDAR intensity (0..1).
REFLECTIVITY = np.array([0.15, 0.35, 0.55, 0.75, 0.45, 0.0, 0.65, 0.95, 0.85, 0.30, 0.60, 0.85], np.float32)
GREEN = np.array([0.22, 0.42, 0.14], np.float32)  # vegetation and terrain share it on purpose
CAR_COLOURS = np.array([[0.7, 0.1, 0.1], [0.1, 0.2, 0.6], [0.85, 0.85, 0.85], [0.1, 0.1, 0.1],
                        [0.8, 0.7, 0.1], [0.3, 0.5, 0.7]], np.float32)


class _Canvas:
    """Per-pixel scene buffers that objects are painted into (far to near)."""

    def __init__(self, s: int):
        self.s = s
        self.label = np.full((s, s), SKY, np.int64)
        self.depth = np.full((s, s), np.inf, np.float32)
        self.height = np.zeros((s, s), np.float32)
        self.up = np.zeros((s, s), np.float32)  # 1 on horizontal surfaces, 0 on vertical ones
        self.rgb = np.zeros((s, s, 3), np.float32)
        self.motion = np.zeros((s, s, 2), np.float32)  # object motion (px/frame at this resolution)
        self.yy, self.xx = np.mgrid[0:s, 0:s].astype(np.float32) / s  # normalized pixel centres
        self.yy += 0.5 / s
        self.xx += 0.5 / s

    def paint(self, sl, mask, cls, depth, height, up, rgb, motion=(0.0, 0.0)):
        """Paint `mask` (within slice `sl`) where the new surface is nearer than what is there."""
        sub = (sl[0], sl[1])
        mask = mask & (depth < self.depth[sub]) if np.ndim(depth) else mask & (depth < self.depth[sub])
        self.label[sub][mask] = cls
        self.depth[sub][mask] = depth[mask] if np.ndim(depth) else depth
        self.height[sub][mask] = height[mask] if np.ndim(height) else height
        self.up[sub][mask] = up
        self.rgb[sub][mask] = rgb[mask] if np.ndim(rgb) == 3 else rgb
        self.motion[sub][mask] = motion


def _texture(rng: np.random.Generator, shape: tuple[int, int], scale: float) -> np.ndarray:
    """Cheap smooth-ish noise: white noise plus a coarse upsampled grid (shape-independent look)."""
    h, w = shape
    cy, cx = max(1, h // 4), max(1, w // 4)
    coarse = rng.standard_normal((cy, cx)).astype(np.float32)
    coarse = np.repeat(np.repeat(coarse, -(-h // cy), 0), -(-w // cx), 1)[:h, :w]
    return scale * (0.6 * coarse + 0.4 * rng.standard_normal((h, w)).astype(np.float32))


def _bbox(s: int, x0: float, x1: float, y0: float, y1: float):
    """Integer pixel slice for a normalized box, or None when it is off-screen."""
    a, b = max(0, int(np.floor(y0 * s))), min(s, int(np.ceil(y1 * s)))
    c, d = max(0, int(np.floor(x0 * s))), min(s, int(np.ceil(x1 * s)))
    if a >= b or c >= d:
        return None
    return slice(a, b), slice(c, d)


class SceneRenderer:
    """Renders one sample's modalities, label and metadata from a numpy Generator."""

    def __init__(self, size: int):
        self.s = size

    # -- geometry helpers (normalized image coordinates, focal length f = 1 image width) --------
    def _ground_row(self, horizon: float, d: float) -> float:
        return horizon + CAM_H / d

    def _billboard(self, c: _Canvas, rng, cls, x_world, d, width, height, horizon, cx, rgb_fn, motion=(0, 0),
                   shape="rect", elevation=0.0):
        """An upright object of `width` x `height` metres standing at depth d, lateral x_world."""
        xc = cx + x_world / d
        y_bottom = self._ground_row(horizon, d) - elevation / d
        y_top = y_bottom - height / d
        half = width / d / 2
        sl = _bbox(c.s, xc - half, xc + half, y_top, y_bottom)
        if sl is None:
            return
        yy, xx = c.yy[sl], c.xx[sl]
        if shape == "ellipse":
            ry, rx = (y_bottom - y_top) / 2, half
            mask = ((yy - (y_top + ry)) / ry) ** 2 + ((xx - xc) / rx) ** 2 <= 1
        elif shape == "blob":
            ry, rx = (y_bottom - y_top) / 2, half
            r = ((yy - (y_top + ry)) / ry) ** 2 + ((xx - xc) / rx) ** 2
            mask = r <= 1 + 0.35 * _texture(rng, r.shape, 1.0)
        else:
            mask = np.ones(yy.shape, bool)
        if not mask.any():
            return
        depth = np.full(yy.shape, d, np.float32)
        if cls == VEGETATION:  # leafy, bumpy surface
            depth = depth + np.abs(_texture(rng, yy.shape, 0.6))
        height_map = CAM_H - (yy - horizon) * d
        c.paint(sl, mask, cls, depth, height_map, 0.0, rgb_fn(yy.shape), motion)

    def render(self, rng: np.random.Generator, condition: str, case: str | None) -> dict:
        s = self.s
        c = _Canvas(s)
        horizon = rng.uniform(0.38, 0.48)
        cx = 0.5 + rng.uniform(-0.05, 0.05)

        def solid(colour, tex=0.05):
            colour = np.asarray(colour, np.float32)
            return lambda shape: colour + _texture(rng, shape, tex)[..., None]

        # --- sky (already the default label) with a vertical gradient
        sky_rgb = np.array([0.45, 0.62, 0.85], np.float32) + rng.uniform(-0.05, 0.05, 3).astype(np.float32)
        c.rgb[:] = sky_rgb * (0.8 + 0.3 * c.yy[..., None])

        # --- ground: road in the middle, sidewalks, terrain beyond
        below = c.yy > horizon + 1e-3
        d_ground = np.where(below, CAM_H / np.maximum(c.yy - horizon, 1e-3), np.inf).astype(np.float32)
        x_world = (c.xx - cx) * d_ground
        road_half = rng.uniform(3.0, 5.0)
        walk = rng.uniform(2.0, 3.5)
        lat = np.abs(x_world - rng.uniform(-1.0, 1.0))
        g_cls = np.where(lat < road_half, ROAD, np.where(lat < road_half + walk, SIDEWALK, TERRAIN))
        g_cls = np.where(below, g_cls, SKY)
        ground_colour = {ROAD: (0.33, 0.33, 0.35), SIDEWALK: (0.62, 0.58, 0.56), TERRAIN: GREEN}
        tex = _texture(rng, (s, s), 1.0)
        for cls, col in ground_colour.items():
            m = (g_cls == cls) & below
            amp = 0.09 if cls == TERRAIN else 0.04
            c.paint((slice(None), slice(None)), m, cls, d_ground, 0.15 if cls == SIDEWALK else 0.0, 1.0,
                    np.asarray(col, np.float32) + amp * tex[..., None])
        # lane markings are part of the road (white dashes: RGB texture, not a class)
        dash = (g_cls == ROAD) & (np.abs(x_world) < 0.12) & (np.sin(np.where(below, d_ground, 0.0) * 0.8) > 0.3)
        c.rgb[dash] = 0.9

        # --- objects, sampled then painted far to near
        objs = []
        for side in (-1, 1):
            d = rng.uniform(20, 45)
            while d < MAX_DEPTH:  # buildings or vegetation rows along each side
                cls = BUILDING if rng.random() < 0.6 else VEGETATION
                objs.append(("row", cls, side * (road_half + walk + rng.uniform(1, 6)), d, rng.uniform(6, 14),
                             rng.uniform(6, 18) if cls == BUILDING else rng.uniform(3, 7)))
                d += rng.uniform(8, 20)
        for _ in range(rng.integers(1, 4)):  # roadside trees and bushes
            side = rng.choice((-1, 1))
            objs.append(("veg", VEGETATION, side * (road_half + walk + rng.uniform(0.5, 3)), rng.uniform(6, 35),
                         rng.uniform(1.5, 4), rng.uniform(1.5, 5)))
        for _ in range(rng.integers(1, 4)):  # poles, most with a sign
            side = rng.choice((-1, 1))
            objs.append(("pole", POLE, side * (road_half + rng.uniform(0.3, 1.0)), rng.uniform(5, 30), 0.25,
                         rng.uniform(3.5, 6)))
        for _ in range(rng.integers(0, 3)):  # fences along the sidewalk's outer edge
            side = rng.choice((-1, 1))
            objs.append(("fence", FENCE, side * (road_half + walk), rng.uniform(5, 25), rng.uniform(3, 8), 1.1))
        for _ in range(rng.integers(1, 5)):  # vehicles: parked (car) or moving (dynamic), same look
            moving = rng.random() < 0.5
            lane = rng.uniform(-road_half + 1.2, road_half - 1.2) if moving else rng.choice((-1, 1)) * (road_half - 1.0)
            objs.append(("vehicle", DYNAMIC if moving else CAR, lane, rng.uniform(5, 40), rng.uniform(1.7, 2.2),
                         rng.uniform(1.4, 1.9)))
        for _ in range(rng.integers(0, 4)):  # pedestrians walk on the sidewalk
            side = rng.choice((-1, 1))
            objs.append(("ped", PEDESTRIAN, side * (road_half + rng.uniform(0.3, walk - 0.3)), rng.uniform(4, 30),
                         0.6, rng.uniform(1.6, 1.9)))
        objs.sort(key=lambda o: -o[3])

        for kind, cls, xw, d, w, h in objs:
            if kind == "row" and cls == BUILDING:
                base = np.array(rng.choice([[0.55, 0.45, 0.38], [0.7, 0.62, 0.5], [0.5, 0.3, 0.25], [0.6, 0.6, 0.62]]),
                                np.float32)

                def building_rgb(shape, base=base):
                    out = base + _texture(rng, shape, 0.03)[..., None]
                    yy, xx = np.mgrid[0:shape[0], 0:shape[1]]
                    period = max(3, shape[1] // 5)
                    windows = ((yy % period) < period // 2) & ((xx % period) < period // 2)
                    out[windows] = out[windows] * 0.45 + np.array([0.1, 0.15, 0.25], np.float32)
                    return out

                self._billboard(c, rng, cls, xw, d, w, h, horizon, cx, building_rgb)
            elif cls == VEGETATION:
                self._billboard(c, rng, cls, xw, d, w, h, horizon, cx,
                                lambda shape: GREEN + _texture(rng, shape, 0.09)[..., None],
                                shape="blob" if kind == "veg" else "rect")
            elif cls == POLE:
                self._billboard(c, rng, cls, xw, d, w, h, horizon, cx, solid((0.25, 0.25, 0.27), 0.02))
                if rng.random() < 0.7:
                    sign_col = rng.choice([[0.85, 0.1, 0.1], [0.9, 0.8, 0.1], [0.1, 0.3, 0.8]])
                    self._billboard(c, rng, SIGN, xw, d - 0.05, 0.8, 0.7, horizon, cx, solid(sign_col, 0.02),
                                    elevation=h - 0.8)
            elif cls == FENCE:
                def fence_rgb(shape):
                    xx = np.arange(shape[1])[None, :].repeat(shape[0], 0)
                    stripe = (xx % 3 == 0)[..., None]
                    return np.where(stripe, np.float32([0.35, 0.25, 0.15]), np.float32([0.6, 0.45, 0.3])) \
                        + _texture(rng, shape, 0.02)[..., None]

                self._billboard(c, rng, cls, xw, d, w, h, horizon, cx, fence_rgb)
            elif cls in (CAR, DYNAMIC):
                body = CAR_COLOURS[rng.integers(len(CAR_COLOURS))]

                def car_rgb(shape, body=body):
                    out = body + _texture(rng, shape, 0.03)[..., None]
                    hh = shape[0]
                    out[: max(1, hh // 3)] = out[: max(1, hh // 3)] * 0.3 + 0.15  # windows
                    out[-max(1, hh // 6):] = 0.05  # wheels / shadow
                    return out

                speed = rng.uniform(1.5, 3.0) * rng.choice((-1, 1)) if cls == DYNAMIC else 0.0
                self._billboard(c, rng, cls, xw, d, w * 1.1, h, horizon, cx, car_rgb, motion=(speed, 0.0))
            elif cls == PEDESTRIAN:
                shirt = rng.uniform(0.1, 0.9, 3).astype(np.float32)
                self._billboard(c, rng, cls, xw, d, w, h, horizon, cx, solid(shirt, 0.04), shape="ellipse",
                                motion=(rng.uniform(0.8, 1.5) * rng.choice((-1, 1)), 0.0))

        return self._sensors(rng, c, horizon, cx, condition, case)

    # -- sensors -------------------------------------------------------------------------------
    def _sensors(self, rng, c: _Canvas, horizon, cx, condition, case) -> dict:
        s = c.s
        finite = np.isfinite(c.depth)
        disparity = np.where(finite, np.minimum(1.0, 2.0 / np.where(finite, c.depth, 1.0)), 0.0).astype(np.float32)
        height = np.clip(c.height / 8.0, 0, 1).astype(np.float32)
        clean = np.clip(c.rgb, 0, 1)

        # events: brightness change along the motion field (ego forward motion + object motion)
        gray = clean.mean(-1)
        gy, gx = np.gradient(gray)
        ego = 0.6 * disparity  # forward ego-motion: flow grows with nearness and distance from centre
        u = ego * (c.xx - cx) * 4 + c.motion[..., 0]
        v = ego * (c.yy - horizon) * 4 + c.motion[..., 1]
        dI = -(gx * u + gy * v) * 6.0
        noise_events = {"night": 0.08, "rain": 0.04}.get(condition, 0.01)
        dI = dI + rng.standard_normal(dI.shape).astype(np.float32) * noise_events
        pos, neg = np.clip(dI, 0, 1), np.clip(-dI, 0, 1)
        event = np.stack([pos, neg, np.clip(pos + neg, 0, 1)], -1)

        # lidar: scan lines every ~s/16 rows, with dropouts; no return from sky or far away
        beams = np.zeros((s, s), bool)
        step = max(2, s // 16)
        rows = np.arange(rng.integers(0, step), s, step)
        beams[rows] = True
        hit = beams & finite & (c.depth < MAX_DEPTH) & (rng.random((s, s)) > 0.1)
        refl = REFLECTIVITY[c.label]
        lidar_disp, lidar_h = disparity.copy(), height.copy()

        rgb = clean.copy()
        # weather / lighting condition
        if condition == "cloud":
            rgb = 0.8 * (0.7 * rgb + 0.3 * rgb.mean(-1, keepdims=True))
        elif condition == "fog":
            vis = rng.uniform(12, 25)
            t = np.exp(-np.where(finite, c.depth, 1e3) / vis)[..., None]
            rgb = rgb * t + (1 - t) * 0.7
            hit &= c.depth < 1.5 * vis
            spurious = beams & (rng.random((s, s)) < 0.05)
            lidar_disp = np.where(spurious, rng.uniform(0.5, 1.0, (s, s)), lidar_disp)
            hit |= spurious
        elif condition == "night":
            lamp = 0.3 + 0.3 * np.exp(-((c.xx - cx) ** 2) / 0.02)[..., None] * (c.yy > horizon)[..., None]
            rgb = rgb * lamp + rng.standard_normal(rgb.shape).astype(np.float32) * 0.03
        elif condition == "rain":
            rgb = rgb * 0.75
            streak = ((c.xx * s * 3 + c.yy * s) % 9 < 0.8) & (rng.random((s, s)) < 0.35)
            rgb[streak] = rgb[streak] * 0.4 + 0.45
            hit &= rng.random((s, s)) > 0.3
            lidar_disp = lidar_disp + rng.standard_normal((s, s)).astype(np.float32) * 0.03
        elif condition == "sun":
            rgb = np.clip((rgb - 0.5) * 1.15 + 0.55, 0, 1)

        # sensor-failure cases, each degrading the modality it degrades in DeLiVER
        if case == "motionblur":
            k = max(3, s // 12)
            pad = np.pad(rgb, ((0, 0), (k // 2, k // 2), (0, 0)), mode="edge")
            csum = np.cumsum(pad, axis=1)
            csum = np.concatenate([np.zeros_like(csum[:, :1]), csum], 1)
            rgb = (csum[:, k:k + s] - csum[:, :s]) / k
        elif case == "overexposure":
            rgb = rgb * 2.5 + 0.35
        elif case == "underexposure":
            rgb = rgb * 0.12
        elif case == "lidarjitter":
            shift = rng.integers(-2, 3, (2,)) * max(1, s // 64)
            lidar_disp = np.roll(lidar_disp, tuple(shift), (0, 1)) + rng.standard_normal((s, s)).astype(np.float32) * 0.05
            refl = np.roll(refl, tuple(shift), (0, 1))
            lidar_h = np.roll(lidar_h, tuple(shift), (0, 1))
        elif case == "eventlowres":
            f = 4
            hs = s // f * f
            lo = event[:hs, :hs].reshape(hs // f, f, hs // f, f, 3).mean((1, 3))
            event = event.copy()
            event[:hs, :hs] = np.repeat(np.repeat(lo, f, 0), f, 1)

        lidar = np.stack([lidar_disp, refl, lidar_h], -1) * hit[..., None]
        noisy = disparity * (1 + 0.08 * rng.standard_normal((s, s)).astype(np.float32))
        noisy = noisy * (rng.random((s, s)) > 0.05)  # missing measurements
        depth = np.repeat(noisy[..., None], 3, -1)
        out = {
            "rgb": np.clip(rgb, 0, 1),
            "depth": np.clip(depth, 0, 1),
            "event": np.clip(event, 0, 1),
            "lidar": np.clip(lidar, 0, 1),
        }
        return {k: np.ascontiguousarray(v.transpose(2, 0, 1), dtype=np.float32) for k, v in out.items()} | {
            "label": c.label
        }


def sample_rng(seed: int, split: str, index: int) -> np.random.Generator:
    """The generator for one sample: a pure function of (seed, split, index)."""
    return np.random.default_rng(np.random.SeedSequence([seed, SPLITS[split], index]))


def render_sample(seed: int, split: str, index: int, size: int, condition: str | None = None,
                  case: str | None = "auto") -> dict:
    """Render sample `index` of `split`. Condition and case are drawn from the sample's generator
    (uniform condition; a failure case with probability 0.3) unless given explicitly."""
    rng = sample_rng(seed, split, index)
    drawn_condition = CONDITIONS[rng.integers(len(CONDITIONS))]
    drawn_case = CASES[rng.integers(len(CASES))] if rng.random() < 0.3 else None
    condition = condition or drawn_condition
    case = drawn_case if case == "auto" else case
    out = SceneRenderer(size).render(rng, condition, case)
    out["meta"] = {"condition": condition, "case": case or "none", "file": f"{split}/{index:06d}", "index": index}
    return out
