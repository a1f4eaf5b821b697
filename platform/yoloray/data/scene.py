"""Deterministic synthetic "inspection line" scenes, drawn with their YOLO labels.

``render_frame(seed, i)`` draws frame ``i`` of stream ``seed``: a textured conveyor belt (rails, seams,
weave, lighting gradient, vignetting) carrying shaded parts (bolt, nut, washer, gear, bracket) and crack
defects, with occlusion, blur, sensor noise. ``render_video_frame`` draws one continuous clip. Labels come
from the drawn pixels (an owner map), so boxes are tight around what is visible.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from functools import lru_cache

import cv2
import numpy as np

CLASS_NAMES: tuple[str, ...] = ("bolt", "nut", "washer", "gear", "bracket", "crack")
MIN_BOX_PX = 8  # labels narrower or shorter than this are dropped
MIN_VISIBLE = 0.4  # labels of objects with less than this fraction visible are dropped
_SIZES = ((90, 300), (50, 150), (50, 160), (80, 260), (80, 260))  # px at 1080p, per part class
_PALETTES = (  # BGR base colours per part class
    ((185, 182, 178), (160, 162, 168), (140, 140, 145)),  # bolt: steel
    ((60, 150, 200), (75, 165, 210), (95, 170, 190)),  # nut: brass
    ((215, 212, 205), (205, 205, 212)),  # washer: bright zinc
    ((55, 95, 175), (70, 110, 185), (50, 80, 150)),  # gear: copper / bronze
    ((35, 125, 230), (170, 105, 35), (60, 150, 60), (40, 40, 190)),  # bracket: painted
)
_BELTS = (((55, 55, 58), 0.45), ((50, 72, 48), 0.3), ((75, 60, 48), 0.1), ((165, 168, 165), 0.15))
_SUB = 4  # cv2 fixed-point bits for sub-pixel drawing


@dataclass
class _Obj:
    cls: int
    x: float
    y: float
    size: float
    angle: float
    color: tuple
    seed: int
    params: dict = field(default_factory=dict)
    host: int = -1  # cracks: index of the part they lie on, -1 = on the belt


@dataclass
class _Scene:
    belt: np.ndarray
    rails: tuple
    rail_color: float
    seam: tuple  # period, phase, thickness
    weave: tuple  # amplitude, period
    light: tuple  # angle, gradient, vignette, exposure
    shadow: float
    shadow_off: tuple
    blur: tuple  # ("none"|"gauss"|"motion", amount)
    noise: float
    tex_seed: int
    length: int = 0  # extra belt length to the left (video strip)
    speed: int = 0  # belt speed, px per video frame
    parts: list = field(default_factory=list)
    cracks: list = field(default_factory=list)


def _crack_pts(rng: np.random.Generator, length: float) -> list[np.ndarray]:
    """Jagged polyline (plus an optional branch), centred on 0, never axis-aligned."""
    theta = rng.uniform(math.radians(20), math.radians(70)) + rng.integers(4) * math.pi / 2
    n = int(rng.integers(8, 16))
    ang = theta + rng.normal(0, 0.55, n)
    main = np.cumsum(np.stack([np.cos(ang), np.sin(ang)], 1) * (length / n), 0)
    main = np.vstack([[0.0, 0.0], main])
    lines = [main]
    if rng.random() < 0.5:
        k, m = int(rng.integers(2, n - 1)), int(rng.integers(2, 5))
        ba = theta + rng.choice([-0.8, 0.8]) + rng.normal(0, 0.4, m)
        branch = main[k] + np.cumsum(np.stack([np.cos(ba), np.sin(ba)], 1) * (length / n * 0.7), 0)
        lines.append(np.vstack([main[k], branch]))
    centre = (main.min(0) + main.max(0)) / 2
    return [ln - centre for ln in lines]


def _part_params(rng: np.random.Generator, cls: int) -> dict:
    return {"w": rng.uniform(0.16, 0.24), "thread": rng.uniform(0.15, 0.6), "hole": rng.uniform(0.36, 0.5),
            "tilt": rng.uniform(0.85, 1.0), "teeth": int(rng.integers(10, 22)), "depth": rng.uniform(0.1, 0.17),
            "spokes": int(rng.choice([0, 0, 4, 5, 6])), "arm": rng.uniform(0.55, 1.0), "t": rng.uniform(0.2, 0.3)}


def _make_scene(rng: np.random.Generator, width: int, height: int, length: int = 0, speed: int = 0) -> _Scene:
    sc = min(width / 1920, height / 1080)
    belt_i = rng.choice(len(_BELTS), p=[p for _, p in _BELTS])
    belt = np.array(_BELTS[belt_i][0], np.float32) * rng.uniform(0.85, 1.15) + rng.uniform(-6, 6, 3)
    rails = tuple(int(height * rng.uniform(0.04, 0.11)) if rng.random() < 0.8 else 0 for _ in range(2))
    la = rng.uniform(0, 2 * math.pi)
    blur_kind = rng.choice(["none", "gauss", "motion"], p=[0.65, 0.2, 0.15])
    scene = _Scene(
        belt=belt, rails=rails, rail_color=rng.uniform(110, 175),
        seam=(rng.uniform(250, 600) * sc, rng.uniform(0, 600) * sc, max(2, round(rng.uniform(3, 6) * sc))),
        weave=(rng.uniform(0.0, 0.05), rng.uniform(3, 7) * max(sc, 0.5)),
        light=(la, rng.uniform(0.05, 0.25), rng.uniform(0.15, 0.45), rng.uniform(0.85, 1.15)),
        shadow=rng.uniform(0.35, 0.6), shadow_off=(math.cos(la + math.pi), math.sin(la + math.pi)),
        blur=(str(blur_kind), rng.uniform(0.6, 1.3) if blur_kind == "gauss" else int(rng.integers(1, 4)) * 2 + 1),
        noise=rng.uniform(1.5, 5.0), tex_seed=int(rng.integers(2**31)),
        length=length, speed=speed)
    span = (width + length) / width
    y_lo, y_hi = rails[0], height - rails[1]
    for _ in range(int(round(rng.integers(3, 11) * span))):
        cls = int(rng.integers(5))
        s = rng.uniform(*_SIZES[cls]) * sc
        for _try in range(25):
            x = rng.uniform(-length + 0.3 * s, width - 0.3 * s)
            y = rng.uniform(y_lo + 0.25 * s, y_hi - 0.25 * s) if y_hi - y_lo > s else rng.uniform(0.3 * s, height - 0.3 * s)
            if all(math.hypot(x - o.x, y - o.y) > 0.3 * (s + o.size) for o in scene.parts):
                break
        palette = _PALETTES[cls]
        color = np.array(palette[rng.integers(len(palette))], np.float32) * rng.uniform(0.8, 1.12)
        color = tuple(float(c) for c in np.clip(color + rng.uniform(-8, 8, 3), 0, 255))
        scene.parts.append(_Obj(cls, x, y, s, rng.uniform(0, 2 * math.pi), color, int(rng.integers(2**31)),
                                _part_params(rng, cls)))
    hosts = [i for i, o in enumerate(scene.parts) if o.cls in (3, 4) and o.size >= 110 * sc]
    for _ in range(int(round(rng.choice([0, 1, 1, 2, 2, 3]) * span))):
        dark = (float(rng.uniform(5, 28)),) * 3
        thick = max(1.0, rng.uniform(2.5, 5.0) * sc)
        if hosts and rng.random() < 0.6:
            h = hosts.pop(int(rng.integers(len(hosts))))
            length_c = scene.parts[h].size * rng.uniform(0.35, 0.55)
            crack = _Obj(5, 0, 0, length_c, 0, dark, int(rng.integers(2**31)), {"thick": thick}, host=h)
        else:
            length_c = rng.uniform(60, 200) * sc
            x, y = rng.uniform(-length, width), rng.uniform(y_lo + 0.3 * length_c, max(y_hi - 0.3 * length_c, y_lo + 1))
            crack = _Obj(5, x, y, length_c, 0, dark, int(rng.integers(2**31)), {"thick": thick})
        crack.params["pts"] = _crack_pts(rng, length_c)
        scene.cracks.append(crack)
    return scene


def _circle(r: float, ry: float | None = None, c=(0.0, 0.0), n: int = 48) -> np.ndarray:
    t = np.linspace(0, 2 * np.pi, n, endpoint=False)
    return np.stack([c[0] + r * np.cos(t), c[1] + (ry or r) * np.sin(t)], 1)


def _geometry(cls: int, s: float, p: dict) -> tuple[list, list, list]:
    """Local (unrotated) outline polygons, hole polygons and detail lines (pts, shade, rel. thickness)."""
    r = s / 2
    if cls == 0:  # bolt, side view: hex head, threaded shaft, chamfered tip
        w = p["w"] * s
        hw, u0, uh, tip, ch = 1.7 * w, -r, -r + 0.75 * w, r, 0.2 * w
        polys = [np.array([(u0, -hw / 2), (uh, -hw / 2), (uh, hw / 2), (u0, hw / 2)]),
                 np.array([(uh - 1, -w / 2), (tip - ch, -w / 2), (tip, ch - w / 2), (tip, w / 2 - ch),
                           (tip - ch, w / 2), (uh - 1, w / 2)])]
        pitch = max(2.0, 0.22 * w)
        lines = [(np.array([(u, -w / 2), (u + 0.6 * pitch, w / 2)]), 0.55, 0.006)
                 for u in np.arange(uh + (tip - uh) * p["thread"], tip - ch - pitch, pitch)]
        return polys, [], lines + [(np.array([(u0, y), (uh, y)]), 0.7, 0.008) for y in (-hw / 6, hw / 6)]
    if cls == 1:  # hex nut, top view
        hole = p["hole"] * r
        hexagon = _circle(r, n=6)
        return [hexagon], [_circle(hole)], [(_circle(0.84 * r), 1.25, 0.02), (_circle(hole * 1.08), 0.5, 0.03),
                                           (hexagon, 0.6, 0.012)]
    if cls == 2:  # washer, slightly tilted
        hole, t = p["hole"] * r, p["tilt"]
        return [_circle(r, r * t, n=72)], [_circle(hole, hole * t)], [
            (_circle(r, r * t, n=72), 0.6, 0.012), (_circle(hole, hole * t), 0.45, 0.02)]
    if cls == 3:  # spur gear with bore, keyway and optional lightening holes
        n, root = p["teeth"], r * (1 - p["depth"])
        a = np.arange(n)[:, None] * 2 * np.pi / n + np.array([0.0, 0.12, 0.38, 0.5]) * 2 * np.pi / n
        rad = np.array([root, r, r, root])
        gear = np.stack([np.cos(a) * rad, np.sin(a) * rad], -1).reshape(-1, 2)
        bore = 0.17 * r
        holes = [_circle(bore), np.array([(-0.06 * r, bore - 2), (0.06 * r, bore - 2), (0.06 * r, bore + 0.07 * r),
                                          (-0.06 * r, bore + 0.07 * r)])]
        k = p["spokes"]
        holes += [_circle(0.12 * r, c=(0.55 * r * math.cos(2 * math.pi * i / k), 0.55 * r * math.sin(2 * math.pi * i / k)))
                  for i in range(k)]
        return [gear], holes, [(gear, 0.6, 0.01), (_circle(0.33 * r), 1.2, 0.015), (_circle(root * 0.96), 0.8, 0.008)]
    a, b, t = s, s * p["arm"], s * p["t"]  # L bracket with two mounting holes
    ell = np.array([(0, 0), (a, 0), (a, t), (t, t), (t, b), (0, b)]) - (a / 2, b / 2)
    holes = [_circle(0.22 * t, c=(a * 0.75 - a / 2, t / 2 - b / 2)), _circle(0.22 * t, c=(t / 2 - a / 2, b * 0.75 - b / 2))]
    return [ell], holes, [(ell, 0.6, 0.012)] + [(h, 0.4, 0.012) for h in holes]


def _shade(cls: int, s: float, p: dict, u: np.ndarray, v: np.ndarray, la: float) -> np.ndarray:
    """Per-pixel brightness factor in the part's local frame; `la` = light angle in that frame."""
    r, th = s / 2, np.arctan2(v, u)
    if cls == 0:
        w = p["w"] * s
        cyl = 0.55 + 0.6 * np.sqrt(np.clip(1 - (2 * v / w) ** 2, 0, 1))
        facet = np.where(np.abs(v) < 0.28 * w, 1.05, np.where(v * math.sin(la) < 0, 0.9, 0.7))
        f = np.where(u < -r + 0.75 * w, facet, cyl)
    elif cls == 1:
        sector = np.round(th / (np.pi / 3)) * (np.pi / 3)
        f = np.where(np.hypot(u, v) > 0.84 * r, 0.8 + 0.25 * np.cos(sector - la), 1.0)
    elif cls in (2, 3):
        f = 0.82 + 0.2 * np.cos(2 * (th - la))
    else:
        f = np.full_like(u, 0.97)
    lu, lv = math.cos(la), math.sin(la)
    f = f * np.clip(1 + 0.2 * (u * lu + v * lv) / r, 0.7, 1.3)
    if cls < 4:  # specular glint on bare metal
        f = f + 0.3 * np.exp(-((u - 0.25 * s * lu) ** 2 + (v - 0.25 * s * lv) ** 2) / (2 * (0.15 * s) ** 2))
    return f


def _fixed(pts: np.ndarray, cx: float, cy: float, ang: float) -> np.ndarray:
    c, s = math.cos(ang), math.sin(ang)
    xy = np.stack([pts[:, 0] * c - pts[:, 1] * s + cx, pts[:, 0] * s + pts[:, 1] * c + cy], 1)
    return np.round(xy * (1 << _SUB)).astype(np.int32)


def _part_layer(o: _Obj, cx: float, cy: float, scene: _Scene):
    """Patch (x0, y0, colour uint8, alpha uint8, shadow uint8) of one part centred at (cx, cy)."""
    polys, holes, lines = _geometry(o.cls, o.size, o.params)
    rad = max(float(np.hypot(*p.T).max()) for p in polys)
    off = np.array(scene.shadow_off) * 0.07 * o.size
    half = int(rad + 0.25 * o.size + 3)
    x0, y0 = math.floor(cx) - half, math.floor(cy) - half
    pcx, pcy, n = cx - x0, cy - y0, 2 * half + 1
    alpha, shadow = np.zeros((n, n), np.uint8), np.zeros((n, n), np.uint8)
    cv2.fillPoly(alpha, [_fixed(p, pcx, pcy, o.angle) for p in polys], 255, cv2.LINE_AA, _SUB)
    cv2.fillPoly(alpha, [_fixed(p, pcx, pcy, o.angle) for p in holes], 0, cv2.LINE_AA, _SUB)
    cv2.fillPoly(shadow, [_fixed(p, pcx + off[0], pcy + off[1], o.angle) for p in polys], 255, cv2.LINE_8, _SUB)
    cv2.fillPoly(shadow, [_fixed(p, pcx + off[0], pcy + off[1], o.angle) for p in holes], 0, cv2.LINE_8, _SUB)
    shadow = cv2.GaussianBlur(shadow, (0, 0), max(0.5, 0.05 * o.size))
    xs, ys = np.arange(n, dtype=np.float32) - pcx, (np.arange(n, dtype=np.float32) - pcy)[:, None]
    c, s = math.cos(o.angle), math.sin(o.angle)
    u, v = xs * c + ys * s, ys * c - xs * s
    f = _shade(o.cls, o.size, o.params, u, v, scene.light[0] - o.angle)
    rng = np.random.default_rng(o.seed)  # surface texture: fixed per object, so video frames agree
    grain = rng.standard_normal((n // 6 + 2, n // 6 + 2), dtype=np.float32)
    f = f * (1 + 0.05 * cv2.resize(grain, (n, n), interpolation=cv2.INTER_LINEAR))
    base = np.array(o.color, np.float32)
    col = np.clip(f[..., None] * base, 0, 255).astype(np.uint8)
    for pts, k, t in lines:
        cv2.polylines(col, [_fixed(pts, pcx, pcy, o.angle)], len(pts) > 2, tuple(float(x) for x in np.clip(base * k, 0, 255)),
                      max(1, round(t * o.size)), cv2.LINE_AA, _SUB)
    return x0, y0, col, alpha, shadow


def _crack_layer(o: _Obj, cx: float, cy: float, host=None):
    """Crack patch; on a part it is placed on solid material and clipped to the part's outline."""
    if host is not None:
        x0, y0, _, halpha, _ = host
        solid = cv2.erode((halpha > 127).astype(np.uint8), np.ones((3, 3), np.uint8))
        dist = cv2.distanceTransform(solid, cv2.DIST_L2, 3)
        yy, xx = np.nonzero(dist >= 0.6 * dist.max()) if dist.max() > 0 else ([0], [0])
        j = int(np.random.default_rng(o.seed).integers(len(xx)))
        pcx, pcy, n = float(xx[j]), float(yy[j]), halpha.shape[0]
    else:
        half = int(max(np.abs(p).max() for p in o.params["pts"]) + o.params["thick"] + 3)
        x0, y0, n = math.floor(cx) - half, math.floor(cy) - half, 2 * half + 1
        pcx, pcy = cx - x0, cy - y0
    alpha = np.zeros((n, n), np.uint8)
    th = o.params["thick"]
    for i, pts in enumerate(o.params["pts"]):
        cv2.polylines(alpha, [_fixed(pts, pcx, pcy, 0.0)], False, 255, max(1, round(th * (0.6 if i else 1))), cv2.LINE_AA, _SUB)
    if host is not None:
        alpha = np.minimum(alpha, solid * 255)
    col = np.full((n, n, 3), o.color[0], np.uint8)
    return x0, y0, col, (alpha.astype(np.float32) * 0.92).astype(np.uint8), None


def _composite(img, owner, layer, oid: int, shadow_k: float):
    """Blend a patch into the float image, record its pixels in `owner`; returns (area, clipped bounds)."""
    x0, y0, col, alpha, shadow = layer
    h, w = owner.shape
    n = alpha.shape[0]
    xa, ya, xb, yb = max(x0, 0), max(y0, 0), min(x0 + n, w), min(y0 + n, h)
    area = int(np.count_nonzero(alpha > 127))
    if xa >= xb or ya >= yb or area == 0:
        return area, None
    sl = np.s_[ya - y0:yb - y0, xa - x0:xb - x0]
    sub = img[ya:yb, xa:xb]
    if shadow is not None:
        sub *= (1 - shadow_k / 255 * shadow[sl].astype(np.float32))[..., None]
    a = alpha[sl].astype(np.float32)[..., None] / 255
    sub += a * (col[sl].astype(np.float32) - sub)
    owner[ya:yb, xa:xb][alpha[sl] > 127] = oid
    return area, (xa, ya, xb, yb)


def _moving_noise(rng, f: int, height: int, width: int, length: int, shift: int) -> np.ndarray:
    """Low-res noise over the whole belt strip, upscaled, cropped to what the camera sees at `shift`."""
    grid = rng.standard_normal((height // f + 2, (width + length) // f + 4), dtype=np.float32)
    c0 = length - shift
    win = grid[:, c0 // f:c0 // f + width // f + 3]
    up = cv2.resize(win, (win.shape[1] * f, win.shape[0] * f), interpolation=cv2.INTER_LINEAR)
    return up[:height, c0 % f:c0 % f + width]


def _background(scene: _Scene, width: int, height: int, shift: int) -> np.ndarray:
    rng = np.random.default_rng(scene.tex_seed)
    f = 1 + 0.05 * _moving_noise(rng, 32, height, width, scene.length, shift)
    f += 0.04 * _moving_noise(rng, 4, height, width, scene.length, shift)
    amp, period = scene.weave
    f += amp * np.sin(np.arange(height, dtype=np.float32) * (2 * np.pi / period))[:, None]
    img = f[..., None] * scene.belt
    period, phase, th = scene.seam
    for x in np.arange((phase + shift - scene.length) % period - period, width + period, period):
        xi = int(round(x))
        cv2.line(img, (xi, 0), (xi, height), tuple(float(c) for c in scene.belt * 0.5), th)
        cv2.line(img, (xi + th, 0), (xi + th, height), tuple(float(c) for c in scene.belt * 1.25), max(1, th // 2))
    for top, rh in zip((True, False), scene.rails, strict=True):
        if rh:
            streak = rng.standard_normal((rh, width // 64 + 2), dtype=np.float32)
            metal = scene.rail_color * (1 + 0.06 * cv2.resize(streak, (width, rh), interpolation=cv2.INTER_LINEAR))
            rows = slice(0, rh) if top else slice(height - rh, height)
            img[rows] = metal[..., None] * np.array([1.0, 1.0, 1.03], np.float32)
            edge = rh if top else height - rh
            cv2.line(img, (0, edge), (width, edge), (scene.rail_color * 1.3,) * 3, max(1, th // 2))
    return img


def _lighting(scene: _Scene, width: int, height: int) -> np.ndarray:
    angle, grad, vig, exposure = scene.light
    ys, xs = np.meshgrid(np.linspace(-1, 1, height // 16 + 2), np.linspace(-1, 1, width // 16 + 2), indexing="ij")
    gain = exposure * (1 + grad * (xs * math.cos(angle) + ys * math.sin(angle))) * (1 - vig * (xs**2 + ys**2) / 2)
    return cv2.resize(gain.astype(np.float32), (width, height), interpolation=cv2.INTER_LINEAR)


def _draw(scene: _Scene, width: int, height: int, shift: int, noise_rng) -> tuple[np.ndarray, np.ndarray]:
    """Render the scene with the belt advanced by `shift` px; returns BGR uint8 and (N, 5) labels."""
    img = _background(scene, width, height, shift)
    owner = np.zeros((height, width), np.uint16)
    drawn: list[tuple[int, int, tuple]] = []  # (class, area, bounds), owner id = position + 1

    def put(o, layer, k):
        area, bounds = _composite(img, owner, layer, len(drawn) + 1, k)
        drawn.append((o.cls, area, bounds))

    for c in (c for c in scene.cracks if c.host < 0):
        put(c, _crack_layer(c, c.x + shift, c.y), 0)
    for i, o in enumerate(scene.parts):
        cx = o.x + shift
        if cx + o.size < 0 or cx - o.size > width:
            continue
        layer = _part_layer(o, cx, o.y, scene)
        put(o, layer, scene.shadow)
        for c in (c for c in scene.cracks if c.host == i):
            put(c, _crack_layer(c, 0, 0, host=layer), 0)
    img *= _lighting(scene, width, height)[..., None]
    kind, amount = scene.blur
    if kind == "gauss":
        img = cv2.GaussianBlur(img, (0, 0), amount)
    elif kind == "motion":
        img = cv2.blur(img, (int(amount), 1))
    img += scene.noise * noise_rng.standard_normal((height, width, 1), dtype=np.float32)
    labels = []
    for oid, (cls, area, bounds) in enumerate(drawn, 1):
        if bounds is None:
            continue
        xa, ya, xb, yb = bounds
        mine = owner[ya:yb, xa:xb] == oid
        visible = int(np.count_nonzero(mine))
        if visible == 0 or visible < MIN_VISIBLE * area:
            continue
        cols, rows = np.nonzero(mine.any(0))[0], np.nonzero(mine.any(1))[0]
        x1, x2, y1, y2 = xa + cols[0], xa + cols[-1] + 1, ya + rows[0], ya + rows[-1] + 1
        if x2 - x1 >= MIN_BOX_PX and y2 - y1 >= MIN_BOX_PX:
            labels.append((cls, (x1 + x2) / 2 / width, (y1 + y2) / 2 / height, (x2 - x1) / width, (y2 - y1) / height))
    out = np.clip(img, 0, 255, out=img).astype(np.uint8)
    return out, np.array(labels, np.float32).reshape(-1, 5)


def render_frame(seed: int, index: int, width: int = 1920, height: int = 1080) -> tuple[np.ndarray, np.ndarray]:
    """BGR uint8 image (H, W, 3) and labels float32 array (N, 5): class, cx, cy, w, h normalized."""
    scene = _make_scene(np.random.default_rng([seed, 0, index]), width, height)
    return _draw(scene, width, height, 0, np.random.default_rng([seed, 1, index]))


@lru_cache(maxsize=4)  # one scene per clip, drawn at every frame (_draw only reads it)
def _video_scene(seed: int, width: int, height: int, frames: int) -> _Scene:
    rng = np.random.default_rng([seed, 2])
    speed = max(1, round(rng.uniform(6, 16) * min(width / 1920, height / 1080)))
    scene = _make_scene(rng, width, height, length=speed * max(frames - 1, 0), speed=speed)
    scene.blur = ("none", 0)
    return scene


def render_video_frame(seed: int, t: int, width: int = 1920, height: int = 1080, frames: int = 60):
    """Frame `t` (0 <= t < frames) of the continuous clip of `seed`: objects ride the belt left to right."""
    if not 0 <= t < frames:
        raise ValueError(f"frame {t} outside the clip's {frames} frames")
    scene = _video_scene(seed, width, height, frames)
    return _draw(scene, width, height, scene.speed * t, np.random.default_rng([seed, 3, t]))
