"""SynthDeLiVER: a procedurally rendered miniature of DeLiVER's problem (docs/DATASETS.md, "The synthetic
benchmark (SynthDeLiVER)"; the calibration against DeLiVER's published figures is docs/BENCHMARK.md).

A pinhole camera at 1.5 m looks down a street. Objects are placed in 3-D (depth, lateral position,
height) and painted far to near, so every pixel has a class, a depth, a height above the ground, a
surface orientation, a LiDAR reflectivity and an image-plane motion. Each modality is rendered from
those buffers by its own sensor model, with its own resolution, noise, sparsity and edges:

- `rgb`   the dense, easy modality: colour and texture per class, including cues no other sensor
          has (sign colours, lane markings, sidewalk tiles, car paint). The weather/lighting
          condition and the camera failures (motion blur, over/under-exposure) hurt it most.
- `depth` a stereo depth camera: disparity measured at a quarter of the resolution and upsampled
          bilinearly (blurred edges), with constant disparity noise (so the depth error grows
          with the square of the distance), a maximum range, and holes at depth discontinuities,
          on textureless surfaces and in random patches; one channel repeated to 3.
- `event` an event camera: events where the log brightness changes by more than a contrast
          threshold along the motion field (ego-motion + moving objects), so only at moving
          edges and texture; background-activity noise, much stronger at night.
- `lidar` a few scan lines (sparse relative to the encoder's stride-4 cells), returns thinning
          with range and on dark surfaces: inverse range, intensity (reflectivity drawn per
          object, only weakly tied to the class, attenuated by range and incidence, noisy) and
          (noisy) height above the ground.

Complementary evidence is built in: `vegetation` and `terrain` share one colour and texture
distribution (separable by geometry: height), and `car` and `dynamic` share one appearance
(separable by motion, i.e. events). Road, sidewalk and terrain are one flat ground to the
geometric sensors (the 15 cm kerb drowns in their noise): their colours tell them apart. Most
classes are easiest in RGB, which is what makes a full-modality model lean on RGB (the modality
bias); the calibration (docs/BENCHMARK.md) measures how much. Every sample is deterministic in (seed, split,
index) and resolution-free (geometry is in normalized image coordinates; sensor patterns too).
"""

from __future__ import annotations

import numpy as np

VERSION = 3  # bump when rendering changes: cached runs are keyed by it

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

CAM_H = 1.5  # camera (and LiDAR) height above the road (m)
CURB = 0.15  # sidewalk height (m)
# Mean LiDAR reflectivity per class. Each object draws its own value around it (REFL_SPREAD), so
# intensity says little about the class (retro-reflective signs are the one strong prior).
REFLECTIVITY = np.array([0.30, 0.38, 0.45, 0.50, 0.45, 0.0, 0.45, 0.75, 0.50, 0.35, 0.42, 0.50], np.float32)
REFL_SPREAD = 0.18
GREEN = np.array([0.22, 0.42, 0.14], np.float32)  # vegetation and terrain share it on purpose
CAR_COLOURS = np.array([[0.7, 0.1, 0.1], [0.1, 0.2, 0.6], [0.85, 0.85, 0.85], [0.1, 0.1, 0.1],
                        [0.8, 0.7, 0.1], [0.3, 0.5, 0.7]], np.float32)
PEDESTRIAN_COLOURS = np.array([[0.8, 0.15, 0.2], [0.2, 0.25, 0.7], [0.9, 0.6, 0.1], [0.15, 0.6, 0.6]], np.float32)
SIGN_COLOURS = np.array([[0.85, 0.1, 0.1], [0.95, 0.8, 0.05], [0.1, 0.3, 0.85], [0.95, 0.95, 0.95]], np.float32)

# Sensor constants, in resolution-free units.
DEPTH_SCALE = 4  # the depth camera measures at 1/DEPTH_SCALE of the image resolution
DEPTH_MAX = 40.0  # stereo range limit (m): farther pixels are holes
DISPARITY_NOISE = 0.008  # std of the measured inverse depth (1/m): depth std = this * d^2
LIDAR_BEAMS = 4  # scan lines between just above the horizon and the bottom of the image
LIDAR_AZIMUTH = 32  # points per scan line across the image width
LIDAR_RANGE = 35.0  # return probability falls as exp(-(d / LIDAR_RANGE)^2)
EVENT_THRESHOLD = 0.18  # contrast threshold on the log-brightness change per frame
EGO_FLOW = 0.03  # forward ego-motion: image flow = EGO_FLOW * (8 m / depth) * distance from the FOE


class _Canvas:
    """Per-pixel scene buffers that objects are painted into (far to near)."""

    def __init__(self, s: int):
        self.s = s
        self.label = np.full((s, s), SKY, np.int64)
        self.depth = np.full((s, s), np.inf, np.float32)
        self.height = np.zeros((s, s), np.float32)
        self.up = np.zeros((s, s), np.float32)  # 1 on horizontal surfaces, 0 on vertical ones
        self.rgb = np.zeros((s, s, 3), np.float32)  # albedo, before lighting
        self.refl = np.zeros((s, s), np.float32)  # LiDAR reflectivity
        self.motion = np.zeros((s, s, 2), np.float32)  # object motion (fraction of the image width per frame)
        self.yy, self.xx = np.mgrid[0:s, 0:s].astype(np.float32) / s  # normalized pixel centres
        self.yy += 0.5 / s
        self.xx += 0.5 / s

    def paint(self, sl, mask, cls, depth, height, up, rgb, refl, motion=(0.0, 0.0)):
        """Paint `mask` (within slice `sl`) where the new surface is nearer than what is there."""
        sub = (sl[0], sl[1])
        mask = mask & (depth < self.depth[sub])
        self.label[sub][mask] = cls
        self.depth[sub][mask] = depth[mask] if np.ndim(depth) else depth
        self.height[sub][mask] = height[mask] if np.ndim(height) else height
        self.up[sub][mask] = up
        self.rgb[sub][mask] = rgb[mask] if np.ndim(rgb) == 3 else rgb
        self.refl[sub][mask] = refl[mask] if np.ndim(refl) else refl
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


def _box_blur(img: np.ndarray, k: int, axis: int) -> np.ndarray:
    """Mean over a window of k pixels along `axis` (edge-padded), any trailing channels."""
    if k <= 1:
        return img
    pad = [(0, 0)] * img.ndim
    pad[axis] = (k // 2, k - 1 - k // 2)
    csum = np.cumsum(np.pad(img, pad, mode="edge"), axis=axis, dtype=np.float32)
    zero = np.zeros_like(np.take(csum, [0], axis=axis))
    csum = np.concatenate([zero, csum], axis=axis)
    n = img.shape[axis]
    return (np.take(csum, np.arange(k, k + n), axis=axis) - np.take(csum, np.arange(n), axis=axis)) / k


def _upsample(img: np.ndarray, s: int) -> np.ndarray:
    """Bilinear upsampling of a (h, w, C) map to (s, s, C) (pixel centres aligned, edges clamped)."""
    def weights(n):
        pos = np.clip((np.arange(s) + 0.5) * n / s - 0.5, 0, n - 1)
        i0 = np.floor(pos).astype(int)
        return i0, np.minimum(i0 + 1, n - 1), (pos - i0).astype(np.float32)

    y0, y1, fy = weights(img.shape[0])
    x0, x1, fx = weights(img.shape[1])
    rows = img[y0] * (1 - fy)[:, None, None] + img[y1] * fy[:, None, None]  # (s, w, C)
    return rows[:, x0] * (1 - fx)[None, :, None] + rows[:, x1] * fx[None, :, None]


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
        refl = np.clip(REFLECTIVITY[cls] + REFL_SPREAD * rng.standard_normal(), 0.02, 1.0)
        c.paint(sl, mask, cls, depth, height_map, 0.0, rgb_fn(yy.shape), refl, motion)

    def render(self, rng: np.random.Generator, condition: str, case: str | None) -> dict:
        s = self.s
        c = _Canvas(s)
        horizon = rng.uniform(0.36, 0.46)
        cx = 0.5 + rng.uniform(-0.05, 0.05)

        def solid(colour, tex=0.05):
            colour = np.asarray(colour, np.float32)
            return lambda shape: colour + _texture(rng, shape, tex)[..., None]

        # --- sky (already the default label) with a vertical gradient
        sky_rgb = np.array([0.45, 0.62, 0.85], np.float32) + rng.uniform(-0.05, 0.05, 3).astype(np.float32)
        c.rgb[:] = sky_rgb * (0.8 + 0.3 * c.yy[..., None])

        # --- ground: road in the middle, a sidewalk on each side (sometimes missing), terrain beyond
        below = c.yy > horizon + 1e-3
        d_ground = np.where(below, CAM_H / np.maximum(c.yy - horizon, 1e-3), np.inf).astype(np.float32)
        x_world = np.where(below, (c.xx - cx) * np.where(below, d_ground, 0.0), 0.0)
        road_half = rng.uniform(2.0, 3.5)
        offset = rng.uniform(-2.0, 2.0)  # the car drives off the road centre (in a lane)
        lat = x_world - offset
        walk = np.where(lat < 0, rng.uniform(2.0, 5.0), rng.uniform(2.0, 5.0)).astype(np.float32)
        walk = walk * np.where(lat < 0, rng.random() < 0.75, rng.random() < 0.75)  # some sides have none
        a = np.abs(lat)
        g_cls = np.where(a < road_half, ROAD, np.where(a < road_half + walk, SIDEWALK, TERRAIN))
        g_cls = np.where(below, g_cls, SKY)
        # albedo: asphalt, paving slabs (a grid of joints), grass (the vegetation colour)
        asphalt = rng.uniform(0.28, 0.4)
        slab = np.array([0.62, 0.58, 0.56], np.float32) * rng.uniform(0.9, 1.1)
        tex = _texture(rng, (s, s), 1.0)
        depth_along = np.where(below, d_ground, 0.0)
        joints = ((np.abs(lat) % 1.0) < 0.08) | ((depth_along % 1.0) < 0.08)  # paving-slab joints
        colours = np.stack([np.full(3, asphalt, np.float32) + np.float32([0, 0, 0.02]), slab, GREEN])
        ground = np.select([g_cls == ROAD, g_cls == SIDEWALK], [0, 1], 2)  # index into `colours`
        amp = np.float32([0.035, 0.035, 0.09])[ground]
        albedo = colours[ground] + (amp * tex)[..., None]
        albedo = np.where((joints & (g_cls == SIDEWALK))[..., None], albedo * 0.7, albedo)
        refl = np.float32([REFLECTIVITY[ROAD], REFLECTIVITY[SIDEWALK], REFLECTIVITY[TERRAIN]])
        refl = np.clip(refl + REFL_SPREAD * rng.standard_normal(3).astype(np.float32), 0.02, 1.0)[ground] + 0.04 * tex
        # the ground is the first surface: write it straight into the empty canvas
        c.label[below] = g_cls[below]
        c.depth[below] = d_ground[below]
        c.height[below] = np.where(g_cls == SIDEWALK, CURB, 0.0)[below]
        c.up[below] = 1.0
        c.rgb[below] = albedo[below]
        c.refl[below] = np.clip(refl, 0.02, 1.0)[below]
        # lane markings are part of the road: a dashed centre line and solid edge lines (paint:
        # seen by the camera; only slightly brighter to LiDAR)
        line_w = rng.uniform(0.12, 0.2)
        paint_col = np.float32([0.92, 0.92, 0.9]) if rng.random() < 0.7 else np.float32([0.95, 0.8, 0.2])
        centre = (np.abs(lat) < line_w) & (np.sin(depth_along * 0.9) > 0.0)
        edges = np.abs(np.abs(lat) - (road_half - 0.3)) < line_w * 0.7
        lines = (g_cls == ROAD) & below & (centre | edges)
        c.rgb[lines] = paint_col
        c.refl[lines] = np.minimum(1.0, c.refl[lines] + 0.1)

        # --- objects, sampled then painted far to near
        objs = []
        for side in (-1, 1):
            d = rng.uniform(15, 40)
            while d < 80.0:  # buildings or vegetation rows along each side
                cls = BUILDING if rng.random() < 0.6 else VEGETATION
                objs.append(("row", cls, offset + side * (road_half + 4.0 + rng.uniform(1, 6)), d, rng.uniform(6, 14),
                             rng.uniform(5, 18) if cls == BUILDING else rng.uniform(4, 12)))
                d += rng.uniform(8, 20)
        for _ in range(rng.integers(1, 4)):  # roadside trees and bushes
            side = rng.choice((-1, 1))
            objs.append(("veg", VEGETATION, offset + side * (road_half + 4.0 + rng.uniform(0, 3)), rng.uniform(6, 30),
                         rng.uniform(1.5, 4), rng.uniform(1.5, 5)))
        for _ in range(rng.integers(1, 4)):  # poles near the kerb, most carrying a sign
            side = rng.choice((-1, 1))
            objs.append(("pole", POLE, offset + side * (road_half + rng.uniform(0.3, 1.0)), rng.uniform(4, 16),
                         rng.uniform(0.45, 0.6), rng.uniform(4, 6.5)))
        for _ in range(rng.integers(0, 3)):  # fences along the sidewalk's outer edge
            side = rng.choice((-1, 1))
            objs.append(("fence", FENCE, offset + side * (road_half + 3.0), rng.uniform(5, 25), rng.uniform(3, 8), 1.1))
        for _ in range(rng.integers(1, 5)):  # vehicles: parked (car) or moving (dynamic), same look
            moving = rng.random() < 0.5
            lane = rng.uniform(-road_half + 1.2, road_half - 1.2) if moving else rng.choice((-1, 1)) * (road_half - 1.0)
            objs.append(("vehicle", DYNAMIC if moving else CAR, lane + offset, rng.uniform(5, 40), rng.uniform(1.7, 2.2),
                         rng.uniform(1.4, 1.9)))
        for _ in range(rng.integers(1, 5)):  # pedestrians walk on the sidewalk (or at the kerb)
            side = rng.choice((-1, 1))
            objs.append(("ped", PEDESTRIAN, offset + side * (road_half + rng.uniform(0.3, 2.5)), rng.uniform(3, 12),
                         rng.uniform(0.7, 0.9), rng.uniform(1.7, 1.9)))
        objs.sort(key=lambda o: -o[3])

        for kind, cls, xw, d, w, h in objs:
            if kind == "row" and cls == BUILDING:
                base = np.array(rng.choice([[0.62, 0.3, 0.25], [0.78, 0.7, 0.52], [0.55, 0.6, 0.72], [0.5, 0.48, 0.45]]),
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
                self._billboard(c, rng, cls, xw, d, w, h, horizon, cx, solid((0.3, 0.3, 0.32), 0.02))
                if rng.random() < 0.75:  # the sign's colour is a cue only the camera has
                    sign_col = SIGN_COLOURS[rng.integers(len(SIGN_COLOURS))]
                    sw, sh = rng.uniform(1.2, 1.6), rng.uniform(0.9, 1.2)
                    self._billboard(c, rng, SIGN, xw, d - 0.05, sw, sh, horizon, cx, solid(sign_col, 0.02),
                                    elevation=h - sh)
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

                speed = rng.uniform(0.02, 0.04) * rng.choice((-1, 1)) if cls == DYNAMIC else 0.0
                self._billboard(c, rng, cls, xw, d, w * 1.1, h, horizon, cx, car_rgb, motion=(speed, 0.0))
            elif cls == PEDESTRIAN:
                clothes = PEDESTRIAN_COLOURS[rng.integers(len(PEDESTRIAN_COLOURS))]

                def person_rgb(shape, clothes=clothes):
                    out = clothes + _texture(rng, shape, 0.04)[..., None]
                    out[: max(1, shape[0] // 6)] = np.float32([0.8, 0.6, 0.5])  # head
                    out[-max(1, shape[0] // 3):] *= 0.5  # trousers
                    return out

                self._billboard(c, rng, cls, xw, d, w, h, horizon, cx, person_rgb, shape="ellipse",
                                motion=(rng.uniform(0.01, 0.02) * rng.choice((-1, 1)), 0.0))

        return self._sensors(rng, c, horizon, cx, condition, case)

    # -- sensors -------------------------------------------------------------------------------
    def _sensors(self, rng, c: _Canvas, horizon, cx, condition, case) -> dict:
        vis = rng.uniform(20, 50) if condition == "fog" else None
        radiance = self._lighting(rng, c, horizon, cx, condition, vis)  # scene brightness, before the camera
        out = {
            "rgb": self._camera(rng, c, radiance, condition, case),
            "depth": self._depth_camera(rng, c, horizon, condition),
            "event": self._event_camera(rng, c, radiance, horizon, cx, condition, case),
            "lidar": self._lidar(rng, c, horizon, condition, case, vis),
        }
        return {k: np.ascontiguousarray(np.clip(v, 0, 1).transpose(2, 0, 1), dtype=np.float32)
                for k, v in out.items()} | {"label": c.label}

    def _lighting(self, rng, c: _Canvas, horizon, cx, condition, vis) -> np.ndarray:
        """Scene radiance (H, W, 3) under the condition: what both the RGB and event cameras see."""
        s = c.s
        finite = np.isfinite(c.depth)
        rgb = np.clip(c.rgb, 0, 1)
        if condition == "cloud":
            rgb = 0.8 * (0.7 * rgb + 0.3 * rgb.mean(-1, keepdims=True))
        elif condition == "fog":
            t = np.exp(-np.where(finite, c.depth, 1e3) / vis)[..., None]
            rgb = rgb * t + (1 - t) * 0.72
        elif condition == "night":
            # dark ambient light; headlights light the road ahead (falling with distance), a few lamps
            d = np.where(finite, c.depth, 1e3)
            beam = np.exp(-((c.xx - cx) ** 2) / 0.05) * np.exp(-d / 20.0) * (c.yy > horizon - 0.05)
            lamps = np.zeros((s, s), np.float32)
            for _ in range(rng.integers(1, 4)):
                lx, ly = rng.uniform(0.1, 0.9), rng.uniform(horizon - 0.1, horizon + 0.1)
                lamps += 0.5 * np.exp(-((c.xx - lx) ** 2 + (c.yy - ly) ** 2) / 0.006)
            light = 0.1 + 0.8 * beam + lamps
            rgb = rgb * light[..., None]
            rgb[c.label == SKY] = np.float32([0.02, 0.03, 0.06])
        elif condition == "rain":
            rgb = rgb * 0.7
            wet = (c.up > 0.5)[..., None]  # wet ground reflects the sky: less contrast
            rgb = np.where(wet, 0.75 * rgb + 0.25 * rgb.mean((0, 1), keepdims=True), rgb)
        elif condition == "sun":
            rgb = np.clip((rgb - 0.5) * 1.2 + 0.56, 0, 1)
            # hard shadows of off-screen buildings across the ground
            edge = rng.uniform(0.2, 0.8) + rng.uniform(-0.6, 0.6) * (c.yy - horizon)
            side = rng.choice((-1, 1))
            shadow = (side * (c.xx - edge) > 0) & (c.up > 0.5)
            rgb = np.where(shadow[..., None], rgb * 0.55, rgb)
        return rgb.astype(np.float32)

    def _camera(self, rng, c: _Canvas, radiance, condition, case) -> np.ndarray:
        s = c.s
        rgb = radiance.copy()
        if condition == "rain":
            streak = ((c.xx * s * 3 + c.yy * s) % 9 < 0.8) & (rng.random((s, s)) < 0.35)
            rgb[streak] = rgb[streak] * 0.4 + 0.45
        noise = {"night": 0.03, "rain": 0.02}.get(condition, 0.01)  # sensor noise (gain at night)
        if case == "motionblur":
            rgb = _box_blur(rgb, max(3, s // 10), axis=1)
        elif case == "overexposure":
            rgb = rgb * 2.2 + 0.25
        elif case == "underexposure":
            rgb = rgb * 0.2
            noise = noise * 0.5
        rgb = rgb + noise * rng.standard_normal(rgb.shape).astype(np.float32)
        return np.clip(rgb, 0, 1)

    def _depth_camera(self, rng, c: _Canvas, horizon, condition) -> np.ndarray:
        """A stereo depth camera: disparity (2 m / depth) measured at 1/DEPTH_SCALE of the resolution,
        upsampled bilinearly, one channel repeated to 3 (as DeLiVER's loader does with 1-channel images)."""
        s = c.s
        n = max(4, s // DEPTH_SCALE)
        f = max(1, s // n)
        finite = np.isfinite(c.depth) & (c.depth < DEPTH_MAX)
        inv = np.where(finite, 1.0 / np.where(finite, c.depth, 1.0), 0.0).astype(np.float32)
        # each sensor pixel averages inverse depth over f x f image pixels (mixed pixels at edges)
        blocks = (n, f, n, f)
        lo_valid = finite[:n * f, :n * f].reshape(blocks).mean((1, 3))
        lo_inv = inv[:n * f, :n * f].reshape(blocks).mean((1, 3)) / np.maximum(lo_valid, 1e-6)
        # stereo matching: constant disparity noise (so the depth error grows as d^2), and no match
        # where the image has no texture, at occlusion edges, beyond the range, and in random patches
        noise = DISPARITY_NOISE * (2.0 if condition == "rain" else 1.0)
        meas = lo_inv + noise * rng.standard_normal((n, n)).astype(np.float32)
        gray = c.rgb.mean(-1)
        texture = np.abs(np.diff(gray, axis=1, append=gray[:, -1:]))[:n * f, :n * f].reshape(blocks).mean((1, 3))
        # discontinuities: a horizontal jump, or a kink down the image (the ground plane is linear in y)
        jump = np.abs(np.gradient(lo_inv, axis=1)) + np.abs(np.gradient(np.gradient(lo_inv, axis=0), axis=0))
        hole = (lo_valid < 0.5) | (meas <= 1.0 / DEPTH_MAX)
        hole |= (jump > 0.02) & (rng.random((n, n)) < 0.5)
        hole |= (texture < 0.006) & (rng.random((n, n)) < 0.3)
        hole |= _texture(rng, (n, n), 1.0) > 1.5
        if condition == "rain":
            hole |= rng.random((n, n)) < 0.08
        disparity = np.where(hole, 0.0, np.clip(2.0 * meas, 0, 1)).astype(np.float32)
        up = _upsample(np.stack([disparity, hole.astype(np.float32)], -1), s)
        depth = np.where(up[..., 1] > 0.5, 0.0, up[..., 0])
        return np.repeat(depth[..., None], 3, -1)

    def _event_camera(self, rng, c: _Canvas, radiance, horizon, cx, condition, case) -> np.ndarray:
        """Events where the log brightness changes by more than the threshold within one frame."""
        s = c.s
        finite = np.isfinite(c.depth)
        gray = radiance.mean(-1)
        log_i = np.log(gray + 0.03)
        gy, gx = np.gradient(log_i)  # per pixel
        # image-plane flow in pixels per frame: forward ego-motion expands the image from the focus
        # of expansion (cx, horizon) in proportion to nearness; moving objects add their own motion
        near = np.where(finite, 1.0 / np.where(finite, c.depth, 1.0), 0.0) * 8.0
        u = EGO_FLOW * near * (c.xx - cx) * s + c.motion[..., 0] * s
        v = EGO_FLOW * near * (c.yy - horizon) * s + c.motion[..., 1] * s
        dlog = -(gx * u + gy * v)
        pos = np.floor(np.clip(dlog, 0, None) / EVENT_THRESHOLD)
        neg = np.floor(np.clip(-dlog, 0, None) / EVENT_THRESHOLD)
        # background activity (leak and shot-noise events): rare by day, frequent at night
        rate = {"night": 0.04, "rain": 0.012, "fog": 0.006}.get(condition, 0.003)
        pos = pos + (rng.random((s, s)) < rate / 2)
        neg = neg + (rng.random((s, s)) < rate / 2)
        pos, neg = np.minimum(pos, 3) / 3, np.minimum(neg, 3) / 3
        event = np.stack([pos, neg, np.minimum(1.0, pos + neg)], -1).astype(np.float32)
        if case == "eventlowres":
            f = 4
            hs = s // f * f
            lo = event[:hs, :hs].reshape(hs // f, f, hs // f, f, 3).mean((1, 3))
            event[:hs, :hs] = np.repeat(np.repeat(lo, f, 0), f, 1)
        return event

    def _lidar(self, rng, c: _Canvas, horizon, condition, case, vis) -> np.ndarray:
        """Sparse scan lines: (inverse range, intensity, height above ground), zero where no return."""
        s = c.s
        rows = horizon - 0.04 + (np.arange(LIDAR_BEAMS) + rng.uniform(0, 1)) * (1.04 - horizon) / LIDAR_BEAMS
        rows = np.unique(np.clip((rows * s).astype(int), 0, s - 1))
        cols = (np.arange(LIDAR_AZIMUTH) + rng.uniform(0, 1)) / LIDAR_AZIMUTH * s
        cols = np.unique(np.clip(cols.astype(int), 0, s - 1))
        grid = np.ix_(rows, cols)  # the scan pattern: every computation below is on it only
        shape = (len(rows), len(cols))
        d, refl, up, height = c.depth[grid], c.refl[grid], c.up[grid], c.height[grid]
        finite = np.isfinite(d)
        d = np.where(finite, d, 1e3).astype(np.float32)
        # returns thin out with range and on dark surfaces
        p_return = 0.95 * np.exp(-(d / LIDAR_RANGE) ** 2) * (0.6 + 0.4 * refl)
        hit = finite & (rng.random(shape) < p_return)
        range_noise = 0.03
        if condition == "fog":  # attenuation beyond the visibility, spurious returns from droplets
            hit &= d < 1.5 * vis
            spurious = rng.random(shape) < 0.05
            d = np.where(spurious, rng.uniform(2.0, 6.0, shape), d).astype(np.float32)
            hit |= spurious
        elif condition == "rain":
            hit &= rng.random(shape) > 0.25
            range_noise = 0.1
        d_meas = d + range_noise * rng.standard_normal(shape).astype(np.float32)
        inv = np.clip(2.0 / np.maximum(d_meas, 0.5), 0, 1)
        # intensity: reflectivity x incidence (grazing on the ground) x range falloff, plus noise
        incidence = np.where(up > 0.5, np.minimum(1.0, 3.0 * CAM_H / d), 0.9)
        intensity = refl * incidence / (1.0 + (d / 40.0) ** 2) + 0.08 * rng.standard_normal(shape)
        h = height / 8.0 + 0.1 + 0.06 * rng.standard_normal(shape)
        points = np.stack([inv, intensity, h], -1) * hit[..., None]
        lidar = np.zeros((s, s, 3), np.float32)
        lidar[grid] = np.clip(points, 0, 1)
        if case == "lidarjitter":  # the scan is misregistered and noisier
            shift = tuple(int(v) for v in rng.integers(-2, 3, (2,)) * max(1, s // 64))
            lidar = np.roll(lidar, shift, (0, 1))
            hit_img = lidar[..., 0] > 0
            lidar[..., 0] += 0.05 * rng.standard_normal((s, s)).astype(np.float32) * hit_img
        return lidar


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
