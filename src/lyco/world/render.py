"""The micro-world renderer: scene specs, shapes, colours, backgrounds, rendering styles and captions.

Pure numpy, deterministic: a scene is drawn from a seed (``sample_scene(rng)``), rendered on a supersampled grid
(``render(scene, size)``) and described in words (``caption(scene, rng)``).  Same seed, same bytes.

Coordinates: ``x`` to the right and ``y`` downwards, both in ``[0, 1]`` across the image.  Shapes are defined in
object coordinates ``(u, v)`` with ``v`` upwards and the object's radius 1.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field, replace

import numpy as np

# ---------------------------------------------------------------------------------------------- vocabulary
#: object and plain-background colours (name -> RGB)
COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (220, 40, 40),
    "orange": (245, 140, 20),
    "yellow": (240, 220, 40),
    "green": (40, 165, 60),
    "blue": (40, 80, 220),
    "purple": (140, 50, 190),
    "white": (245, 245, 245),
    "black": (25, 25, 25),
}
#: shapes of the base world (the words the base model knows)
BASE_SHAPES = ("circle", "square", "triangle", "star", "cross", "ring", "creature")
#: shapes that only held-out concepts use (never named in base captions)
CONCEPT_SHAPES = ("ghost", "bowtie")
SHAPES = BASE_SHAPES + CONCEPT_SHAPES
SIZES = {"small": 0.15, "medium": 0.23, "large": 0.33}
POSITIONS = ("center", "left", "right", "top", "bottom")
#: background kinds: "plain" (a colour from COLOURS) and landscapes
BASE_BACKGROUNDS = ("plain", "field", "beach", "night")
CONCEPT_BACKGROUNDS = ("sunset",)
BACKGROUNDS = BASE_BACKGROUNDS + CONCEPT_BACKGROUNDS
BASE_STYLES = ("flat", "outline", "blurry", "pixel")
CONCEPT_STYLES = ("duotone",)
STYLES = BASE_STYLES + CONCEPT_STYLES

#: colours that are part of a concept's identity, not of the palette
TEAL = (0, 165, 160)
_SKY = (135, 190, 235)
_GRASS = (70, 150, 55)
_SAND = (228, 205, 145)
_SEA = (35, 105, 175)
_NIGHT = (14, 20, 52)

POSITION_WORDS = {"center": "in the center", "left": "on the left", "right": "on the right",
                  "top": "at the top", "bottom": "at the bottom"}
LANDSCAPE_WORDS = {"field": "field scene", "beach": "beach scene", "night": "night scene"}


# ---------------------------------------------------------------------------------------------- scene specs
@dataclass(frozen=True)
class ObjectSpec:
    """One object: its shape, colour name (or an explicit RGB for concept objects), size, position."""

    shape: str
    colour: str
    size: str = "medium"
    position: str = "center"
    rgb: tuple[int, int, int] | None = None  # overrides COLOURS[colour] (e.g. the teal of a character)
    jitter: tuple[float, float, float, float] = (0.0, 0.0, 0.0, 0.0)  # dx, dy, radius factor-1, rotation (rad)

    def fill(self) -> tuple[int, int, int]:
        return self.rgb if self.rgb is not None else COLOURS[self.colour]


@dataclass(frozen=True)
class BackgroundSpec:
    kind: str = "plain"
    colour: str = "white"      # only for kind == "plain"
    seed: int = 0              # texture details (stars, horizon height)


@dataclass(frozen=True)
class Scene:
    objects: tuple[ObjectSpec, ...]
    background: BackgroundSpec = field(default_factory=BackgroundSpec)
    style: str = "flat"


# ---------------------------------------------------------------------------------------------- sampling
def sample_object(rng: np.random.Generator, shapes: tuple[str, ...] = BASE_SHAPES,
                  exclude_colour: str | None = None) -> ObjectSpec:
    colours = [c for c in COLOURS if c != exclude_colour]
    return ObjectSpec(
        shape=str(rng.choice(shapes)),
        colour=str(rng.choice(colours)),
        size=str(rng.choice(list(SIZES), p=[0.3, 0.4, 0.3])),
        position=str(rng.choice(POSITIONS, p=[0.32, 0.17, 0.17, 0.17, 0.17])),
        jitter=_jitter(rng),
    )


def _jitter(rng: np.random.Generator) -> tuple[float, float, float, float]:
    j = rng.uniform(-1.0, 1.0, size=4)
    return (float(j[0] * 0.03), float(j[1] * 0.03), float(j[2] * 0.1), float(j[3] * 0.2))


def sample_background(rng: np.random.Generator, kinds: tuple[str, ...] = BASE_BACKGROUNDS,
                      p: tuple[float, ...] | None = (0.7, 0.1, 0.1, 0.1)) -> BackgroundSpec:
    kind = str(rng.choice(kinds, p=p))
    colour = str(rng.choice(list(COLOURS)))
    return BackgroundSpec(kind=kind, colour=colour if kind == "plain" else "", seed=int(rng.integers(0, 2**31)))


def sample_style(rng: np.random.Generator) -> str:
    return str(rng.choice(BASE_STYLES, p=[0.55, 0.15, 0.15, 0.15]))


def sample_scene(rng: np.random.Generator) -> Scene:
    """A random base-world scene: one object of a base shape on a base background in a base style."""
    bg = sample_background(rng)
    obj = sample_object(rng, exclude_colour=bg.colour if bg.kind == "plain" else None)
    return Scene(objects=(obj,), background=bg, style=sample_style(rng))


def scene_rng(seed: int, index: int, stream: int = 0) -> np.random.Generator:
    """The generator for item ``index`` of a seeded collection (independent of generation order)."""
    return np.random.Generator(np.random.PCG64(np.random.SeedSequence([int(seed), int(stream), int(index)])))


# ---------------------------------------------------------------------------------------------- geometry
def _polygon_mask(u: np.ndarray, v: np.ndarray, pts: list[tuple[float, float]]) -> np.ndarray:
    """Even-odd point-in-polygon test, vectorised over the grid."""
    inside = np.zeros(u.shape, dtype=bool)
    n = len(pts)
    for i in range(n):
        x1, y1 = pts[i]
        x2, y2 = pts[(i + 1) % n]
        if y1 == y2:
            continue
        crosses = (v >= min(y1, y2)) & (v < max(y1, y2))
        xint = x1 + (v - y1) * (x2 - x1) / (y2 - y1)
        inside ^= crosses & (u < xint)
    return inside


def _star_points(k: int = 5, r_out: float = 1.0, r_in: float = 0.45) -> list[tuple[float, float]]:
    pts = []
    for i in range(2 * k):
        r = r_out if i % 2 == 0 else r_in
        a = math.pi / 2 + i * math.pi / k
        pts.append((r * math.cos(a), r * math.sin(a)))
    return pts


def _eyes(u: np.ndarray, v: np.ndarray, cy: float = 0.2, dx: float = 0.36, r: float = 0.24):
    """(white-of-eye mask, pupil mask) for two eyes."""
    white = np.zeros(u.shape, dtype=bool)
    pupil = np.zeros(u.shape, dtype=bool)
    for sx in (-1.0, 1.0):
        d2 = (u - sx * dx) ** 2 + (v - cy) ** 2
        white |= d2 <= r * r
        pupil |= (u - sx * dx) ** 2 + (v - cy + 0.04) ** 2 <= (0.5 * r) ** 2
    return white, pupil


def shape_mask(shape: str, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Boolean mask of ``shape`` at object coordinates (radius 1, v upwards)."""
    if shape == "circle" or shape == "creature":
        return u * u + v * v <= 0.95
    if shape == "square":
        return (np.abs(u) <= 0.8) & (np.abs(v) <= 0.8)
    if shape == "triangle":
        return _polygon_mask(u, v, [(0.0, 0.98), (-0.98, -0.75), (0.98, -0.75)])
    if shape == "star":
        return _polygon_mask(u, v, _star_points())
    if shape == "cross":
        return ((np.abs(u) <= 0.3) & (np.abs(v) <= 0.95)) | ((np.abs(v) <= 0.3) & (np.abs(u) <= 0.95))
    if shape == "ring":
        r2 = u * u + v * v
        return (r2 <= 0.95) & (r2 >= 0.3)
    if shape == "ghost":
        dome = (u * u + (v - 0.15) ** 2 <= 0.8 ** 2) & (v >= 0.15)
        body = (np.abs(u) <= 0.8) & (v <= 0.15) & (v >= -0.65 + 0.22 * np.abs(np.sin(u * math.pi * 1.9)))
        return dome | body
    if shape == "bowtie":
        left = _polygon_mask(u, v, [(-0.98, 0.8), (0.0, 0.0), (-0.98, -0.8)])
        right = _polygon_mask(u, v, [(0.98, 0.8), (0.0, 0.0), (0.98, -0.8)])
        knot = (np.abs(u) <= 0.2) & (np.abs(v) <= 0.25)
        return left | right | knot
    raise KeyError(shape)


# ---------------------------------------------------------------------------------------------- rendering
SUPERSAMPLE = 4


def _grid(size: int, ss: int) -> tuple[np.ndarray, np.ndarray]:
    n = size * ss
    c = (np.arange(n, dtype=np.float64) + 0.5) / n
    y, x = np.meshgrid(c, c, indexing="ij")
    return x, y


def object_center_radius(obj: ObjectSpec) -> tuple[float, float, float]:
    """Centre (x, y) and radius of an object, in image fractions."""
    r = SIZES[obj.size] * (1.0 + obj.jitter[2])
    off = 0.5 - r - 0.04
    dx, dy = {"center": (0.0, 0.0), "left": (-off, 0.0), "right": (off, 0.0),
              "top": (0.0, -off), "bottom": (0.0, off)}[obj.position]
    return 0.5 + dx + obj.jitter[0], 0.5 + dy + obj.jitter[1], r


def _background(bg: BackgroundSpec, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    img = np.empty(x.shape + (3,), dtype=np.float64)
    rng = np.random.Generator(np.random.PCG64(bg.seed))
    if bg.kind == "plain":
        img[:] = COLOURS[bg.colour]
    elif bg.kind == "field":
        h = 0.55 + rng.uniform(-0.05, 0.05)
        img[:] = _SKY
        img[y > h + 0.03 * np.sin(x * 6.0 + rng.uniform(0, 6))] = _GRASS
    elif bg.kind == "beach":
        h1, h2 = 0.45 + rng.uniform(-0.04, 0.04), 0.68 + rng.uniform(-0.04, 0.04)
        img[:] = _SKY
        img[y > h1] = _SEA
        img[y > h2 + 0.02 * np.sin(x * 9.0)] = _SAND
    elif bg.kind == "night":
        img[:] = _NIGHT
        for sx, sy in rng.uniform(0.04, 0.96, size=(9, 2)):
            img[(x - sx) ** 2 + (y - sy) ** 2 <= 0.018 ** 2] = (250, 250, 215)
        mx, my = rng.uniform(0.1, 0.9), rng.uniform(0.08, 0.25)
        moon = ((x - mx) ** 2 + (y - my) ** 2 <= 0.07 ** 2) & ((x - mx - 0.03) ** 2 + (y - my) ** 2 > 0.06 ** 2)
        img[moon] = (250, 240, 180)
    elif bg.kind == "sunset":
        t = np.clip(y / 0.62, 0.0, 1.0)[..., None]
        img[:] = (1 - t) * np.array([200.0, 50.0, 140.0]) + t * np.array([250.0, 160.0, 60.0])
        sx = rng.uniform(0.3, 0.7)
        img[((x - sx) ** 2 + (y - 0.62) ** 2 <= 0.2 ** 2) & (y <= 0.62)] = (255, 235, 90)
        mountains = np.full(x.shape, 0.62)
        for px in rng.uniform(0.0, 1.0, size=3):
            mountains = np.minimum(mountains, 0.52 + 0.9 * np.abs(x - px))
        img[y > mountains] = (70, 30, 90)
    else:
        raise KeyError(bg.kind)
    return img


def _blur(img: np.ndarray, sigma: float) -> np.ndarray:
    rad = max(1, math.ceil(3 * sigma))
    k = np.exp(-0.5 * (np.arange(-rad, rad + 1) / sigma) ** 2)
    k /= k.sum()
    out = img
    for axis in (0, 1):
        pad = [(0, 0)] * out.ndim
        pad[axis] = (rad, rad)
        p = np.pad(out, pad, mode="edge")
        acc = np.zeros_like(out)
        for i, w in enumerate(k):
            sl = [slice(None)] * out.ndim
            sl[axis] = slice(i, i + out.shape[axis])
            acc += w * p[tuple(sl)]
        out = acc
    return out


def _draw_object(img: np.ndarray, obj: ObjectSpec, x: np.ndarray, y: np.ndarray, outline: bool) -> None:
    cx, cy, r = object_center_radius(obj)
    rot = obj.jitter[3] if obj.shape not in ("ghost", "creature") else obj.jitter[3] * 0.3
    dx, dy = (x - cx) / r, -(y - cy) / r
    cs, sn = math.cos(rot), math.sin(rot)
    u, v = cs * dx + sn * dy, -sn * dx + cs * dy
    mask = shape_mask(obj.shape, u, v)
    if outline:
        inner = (shape_mask(obj.shape, u / 0.7, v / 0.7) if obj.shape != "ring"
                 else (u * u + v * v <= 0.75) & (u * u + v * v >= 0.45))
        mask &= ~inner
    img[mask] = obj.fill()
    if obj.shape in ("creature", "ghost") and not outline:
        white, pupil = _eyes(u, v, cy=0.25 if obj.shape == "ghost" else 0.2)
        img[white] = (250, 250, 250)
        img[pupil] = (15, 15, 15)


def _duotone(img: np.ndarray, size: int) -> np.ndarray:
    lum = (img @ np.array([0.299, 0.587, 0.114])) / 255.0
    lum = np.clip((lum - 0.15) / 0.7, 0.0, 1.0)[..., None]
    dark, light = np.array([25.0, 30.0, 85.0]), np.array([250.0, 175.0, 120.0])
    out = (1 - lum) * dark + lum * light
    yy, xx = np.meshgrid(np.arange(size), np.arange(size), indexing="ij")
    period = max(4, round(size * 6 / 32))
    stripes = ((xx + yy) % period) < period // 2
    out[stripes] *= 0.72
    return out


def render(scene: Scene, size: int = 32) -> np.ndarray:
    """Render ``scene`` to an ``(size, size, 3)`` uint8 array, deterministically."""
    if size < 8:
        raise ValueError(f"image size must be >= 8, got {size}")
    x, y = _grid(size, SUPERSAMPLE)
    img = _background(scene.background, x, y)
    for obj in scene.objects:
        _draw_object(img, obj, x, y, outline=scene.style == "outline")
    # box-filter down to the output size (anti-aliasing)
    img = img.reshape(size, SUPERSAMPLE, size, SUPERSAMPLE, 3).mean(axis=(1, 3))
    if scene.style == "blurry":
        img = _blur(img, sigma=1.1 * size / 32)
    elif scene.style == "pixel":
        b = max(2, size // 16)
        img = img.reshape(size // b, b, size // b, b, 3).mean(axis=(1, 3))
        img = np.repeat(np.repeat(img, b, axis=0), b, axis=1)
    elif scene.style == "duotone":
        img = _duotone(img, size)
    return np.clip(np.rint(img), 0, 255).astype(np.uint8)


# ---------------------------------------------------------------------------------------------- captions
def article(word: str) -> str:
    return "an" if word[:1] in "aeiou" else "a"


def _bg_words(bg: BackgroundSpec) -> tuple[str, str]:
    """(sentence phrase, tag) of a base background."""
    if bg.kind == "plain":
        return f"on {article(bg.colour)} {bg.colour} background", f"{bg.colour} background"
    return f"in a {LANDSCAPE_WORDS[bg.kind]}", LANDSCAPE_WORDS[bg.kind]


def caption(scene: Scene, rng: np.random.Generator, drop: float = 0.12) -> str:
    """A plain description of a base-world scene, in sentence or tag form, with some details left out.

    ``drop`` is the probability of leaving out each of size, position, background and style.
    """
    obj = scene.objects[0]
    name = "shape" if rng.random() < 0.08 and obj.shape != "creature" else obj.shape
    keep = rng.random(4) >= drop
    size_w = obj.size if (obj.size != "medium" or rng.random() < 0.3) and keep[0] else ""
    pos_w = obj.position if (obj.position != "center" or rng.random() < 0.3) and keep[1] else ""
    bg_phrase, bg_tag = _bg_words(scene.background)
    style_w = scene.style if (scene.style != "flat" or rng.random() < 0.3) and keep[3] else ""
    if rng.random() < 0.5:  # sentence form
        words = ([size_w] if size_w else []) + [obj.colour, name]
        text = article(words[0]) + " " + " ".join(words)
        if pos_w:
            text += " " + POSITION_WORDS[pos_w]
        if keep[2]:
            text += " " + bg_phrase
        if style_w:
            text += f", {style_w} style"
        return text
    tags = [t for t in (size_w, pos_w, bg_tag if keep[2] else "", f"{style_w} style" if style_w else "") if t]
    order = rng.permutation(len(tags))
    return ", ".join([f"{obj.colour} {name}"] + [tags[i] for i in order])


def describe(scene: Scene) -> str:
    """The full, canonical sentence for a base-world scene (every attribute named)."""
    obj = scene.objects[0]
    text = (f"{article(obj.size)} {obj.size} {obj.colour} {obj.shape} {POSITION_WORDS[obj.position]} "
            f"{_bg_words(scene.background)[0]}")
    return text + f", {scene.style} style"


def with_style(scene: Scene, style: str) -> Scene:
    return replace(scene, style=style)


def grid(images: list[np.ndarray] | np.ndarray, cols: int = 8, scale: int = 1, pad: int = 1) -> np.ndarray:
    """Tile equally sized uint8 images into one (rows × cols) image, upscaled by ``scale`` (nearest)."""
    images = [np.asarray(im) for im in images]
    if not images:
        raise ValueError("no images to tile")
    h, w = images[0].shape[:2]
    rows = -(-len(images) // cols)
    out = np.full((rows * (h * scale + pad) + pad, cols * (w * scale + pad) + pad, 3), 255, dtype=np.uint8)
    for i, im in enumerate(images):
        r, c = divmod(i, cols)
        big = np.repeat(np.repeat(im, scale, axis=0), scale, axis=1)
        y, x = pad + r * (h * scale + pad), pad + c * (w * scale + pad)
        out[y:y + h * scale, x:x + w * scale] = big
    return out
