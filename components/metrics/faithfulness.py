"""Text faithfulness on the synthetic scenes: ParaDiffusion's sentence-level precision, made automatic.

ParaDiffusion (4.1, Table 3) splits each prompt into sentences, grounds each sentence's content in
the generated image with an open-domain grounding model, and has people judge whether the objects,
their attributes and their locations are present. In the synthetic world the vocabulary is closed
(`components/data/scene.py`), so both halves can be done by program:

- the prompt side: `parse_prompt_objects` finds every '<size>? <colour> <shape>' a prompt names
  and the grid position ('at the top left', 'in the center') its sentence gives it;
- the image side: `detect_scene` recovers the scene from pixels with no learned weights: pixels are
  explained as mixtures of the background and one palette colour (anti-aliased edges included),
  connected regions of one colour are objects, and each region's shape is the one whose rendering
  (with `scene.draw_shape`, at the region's area and centroid) best reproduces the region's
  coverage map (analysis by synthesis).

For each named object: *object* = an object of that shape is present; *attribute* = an object of
that shape has that colour; *location* = an object of that shape lies in the named grid cell (only
for objects whose sentence gives a position); *all* = one object satisfies all three. Precisions
are the fractions of named objects judged present, as the rows of ParaDiffusion's Table 3.
Beside them, *colour placement* = an object of the named colour lies at the named position, shape
not judged: whether the dominant colours and the layout follow the prompt, which stays measurable
on images too soft for the shape fit (a small latent model's samples, or its autoencoder's
reconstructions).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw
from scipy import ndimage

from components.data.scene import (
    BACKGROUNDS,
    COLOURS,
    POSITIONS,
    SHAPES,
    SIZES,
    Scene,
    SceneObject,
    draw_shape,
    position_of,
)
from components.metrics.loading import ImageLike, load_rgb

# Area of each shape as a multiple of r^2, r being draw_shape's "radius" (half the box side).
_AREA_PER_R2: dict[str, float] = {
    "circle": float(np.pi),
    "square": (2 * 0.88) ** 2,
    "triangle": 2 * 1.8 / 2,  # base 2r, height 1.8r
    "diamond": 2.0,
}
# Offset of the area centroid below draw_shape's centre, in units of r (the triangle's apex is at
# cy - r, its base at cy + 0.8 r, so its centroid sits at cy + 0.2 r).
_CENTROID_DROP: dict[str, float] = {"circle": 0.0, "square": 0.0, "triangle": 0.2, "diamond": 0.0}
# Smallest object the vocabulary can draw, as a fraction of the image area (a small triangle).
_SMALLEST_AREA = _AREA_PER_R2["triangle"] * min(SIZES.values()) ** 2


@dataclass(frozen=True)
class DetectorConfig:
    """Knobs of the analytic scene detector."""

    max_colour_distance: float = 80.0
    """A pixel farther than this (RGB Euclidean) from every background-to-colour mixture is ignored."""
    min_area_fraction: float = 0.4
    """Regions smaller than this fraction of the smallest drawable object are noise."""
    supersample: int = 8
    """Supersampling of the shape templates rendered for analysis by synthesis."""


def _mixture_labels(
    rgb: np.ndarray, background: np.ndarray, max_distance: float
) -> tuple[np.ndarray, np.ndarray]:
    """Label each pixel as background (-1), unexplained (-2) or palette colour i; also its coverage alpha.

    A pixel p is modelled as alpha c + (1 - alpha) b on the segment from the background b to a
    palette colour c: alpha = <p - b, c - b> / |c - b|^2 clipped to [0, 1], and the residual is the
    distance from p to that point. The colour with the smallest residual explains the pixel; it is
    background when alpha <= 1/2.
    """
    colours = np.array(list(COLOURS.values()), dtype=np.float32)  # (K, 3)
    d = colours - background  # (K, 3)
    rel = rgb[:, :, None, :] - background  # (H, W, 1, 3)
    alpha = np.clip((rel * d).sum(-1) / (d * d).sum(-1), 0.0, 1.0)  # (H, W, K)
    residual = np.linalg.norm(rel - alpha[..., None] * d, axis=-1)  # (H, W, K)
    best = residual.argmin(-1)  # (H, W)
    best_alpha = np.take_along_axis(alpha, best[..., None], -1)[..., 0]  # (H, W)
    best_residual = np.take_along_axis(residual, best[..., None], -1)[..., 0]  # (H, W)
    labels = np.where(best_alpha > 0.5, best, -1)
    labels = np.where(best_residual > max_distance, -2, labels)
    return labels, alpha


def estimate_background(rgb: np.ndarray) -> str:
    """The background palette entry that most pixels are nearest to."""
    palette = np.array(list(COLOURS.values()) + list(BACKGROUNDS.values()), dtype=np.float32)  # (K + B, 3)
    nearest = np.linalg.norm(rgb[:, :, None, :] - palette, axis=-1).argmin(-1)  # (H, W)
    counts = np.bincount(nearest.ravel(), minlength=len(palette))[len(COLOURS) :]
    return list(BACKGROUNDS)[int(counts.argmax())]


def _render_alpha(
    shape: str, cx: float, cy: float, r: float, height: int, width: int, supersample: int
) -> np.ndarray:
    """Coverage (0..1) of one shape drawn in a height x width pixel patch; centre and r in pixels."""
    big = Image.new("L", (width * supersample, height * supersample), 0)
    draw_shape(ImageDraw.Draw(big), shape, cx * supersample, cy * supersample, r * supersample, 255)
    arr = np.asarray(big, dtype=np.float32).reshape(height, supersample, width, supersample)
    return arr.mean(axis=(1, 3)) / 255.0  # (h, w)


def _fit_shape(coverage: np.ndarray, supersample: int) -> tuple[str, float, float, float, float]:
    """Best (shape, cx, cy, r, error) for a coverage patch; error = L1 misfit / area."""
    area = float(coverage.sum())
    h, w = coverage.shape
    ys, xs = np.mgrid[0:h, 0:w] + 0.5
    mx, my = float((coverage * xs).sum() / area), float((coverage * ys).sum() / area)
    best = ("", 0.0, 0.0, 0.0, np.inf)
    for shape in SHAPES:
        r = float(np.sqrt(area / _AREA_PER_R2[shape]))
        cy = my - _CENTROID_DROP[shape] * r
        template = _render_alpha(shape, mx, cy, r, h, w, supersample)
        error = float(np.abs(template - coverage).sum() / area)
        if error < best[4]:
            best = (shape, mx, cy, r, error)
    return best


def detect_scene(image: ImageLike, config: DetectorConfig = DetectorConfig()) -> Scene:
    """Recover background and objects (shape, colour, size, grid position, centre) from an image.

    Each object's `extra`-free `SceneObject` has `x`, `y`, `radius` as fractions of the side, like
    the ground truth; `size` is the vocabulary size nearest the fitted radius.
    """
    rgb = np.asarray(load_rgb(image), dtype=np.float32)  # (H, W, 3)
    height, width = rgb.shape[:2]
    side = float(max(height, width))
    background = estimate_background(rgb)
    labels, alpha = _mixture_labels(
        rgb, np.array(BACKGROUNDS[background], dtype=np.float32), config.max_colour_distance
    )
    min_area = config.min_area_fraction * _SMALLEST_AREA * height * width
    colour_names = list(COLOURS)
    objects = []
    for k, colour in enumerate(colour_names):
        regions, _ = ndimage.label(labels == k, structure=np.ones((3, 3), dtype=bool))
        for index, box in enumerate(ndimage.find_objects(regions), start=1):
            region = regions[box] == index
            if region.sum() < min_area:
                continue
            # The patch reaches 2 px past the region so its anti-aliased rim (alpha < 1/2, labelled
            # background) counts towards coverage; other objects' pixels are masked out.
            y0, y1 = max(box[0].start - 2, 0), min(box[0].stop + 2, height)
            x0, x1 = max(box[1].start - 2, 0), min(box[1].stop + 2, width)
            own = np.zeros((y1 - y0, x1 - x0), dtype=bool)
            own[box[0].start - y0 : box[0].stop - y0, box[1].start - x0 : box[1].stop - x0] = region
            near = ndimage.binary_dilation(own, iterations=2) & (labels[y0:y1, x0:x1] == -1) | own
            coverage = np.where(near, alpha[y0:y1, x0:x1, k], 0.0)
            shape, cx, cy, r, _error = _fit_shape(coverage, config.supersample)
            x, y = (x0 + cx) / width, (y0 + cy) / height
            radius = r / side
            size = min(SIZES, key=lambda s: abs(SIZES[s] - radius))
            objects.append(
                SceneObject(
                    shape=shape,
                    colour=colour,
                    size=size,
                    position=position_of(min(max(x, 0.0), 1.0), min(max(y, 0.0), 1.0)),
                    x=round(x, 4),
                    y=round(y, 4),
                    radius=round(radius, 4),
                )
            )
    objects.sort(key=lambda o: (POSITIONS[o.position][1], POSITIONS[o.position][0], o.x))
    return Scene(background=background, objects=tuple(objects))


@dataclass(frozen=True)
class NamedObject:
    """An object as a prompt names it: shape and colour, optionally size and grid position."""

    shape: str
    colour: str
    size: str | None = None
    position: str | None = None

    @classmethod
    def from_scene_object(cls, obj: SceneObject) -> NamedObject:
        return cls(shape=obj.shape, colour=obj.colour, size=obj.size, position=obj.position)


def _alternation(words: Iterable[str]) -> str:
    return "|".join(re.escape(w) for w in sorted(words, key=len, reverse=True))


_OBJECT_RE = re.compile(
    rf"\b(?:({_alternation(SIZES)})\s+)?({_alternation(COLOURS)})\s+({_alternation(SHAPES)})s?\b"
)
_CUE_RE = re.compile(r"\b(top|bottom|left|right|center|centre|middle)\b")
# "left of the square", "further right than": relations between objects, not grid cells (but "the
# top right of the image" is a cell).
_RELATION_AFTER = re.compile(
    r"\s+(?:than\b|of\s+(?!(?:the\s+)?(?:image|picture|frame|canvas|scene|photo)\b))"
)
# "right in the middle", "right at the top": the adverb (but "the right", "bottom right on a ...").
_ADVERB_AFTER = re.compile(r"\s+(?:in|at|on|next|by|there|here|away)\b")
_DIRECTION_BEFORE = re.compile(r"\b(?:the|top|bottom)\s+$")
_SENTENCE_RE = re.compile(r"[.;!?\n]+")


def position_in(text: str) -> str | None:
    """The grid cell a stretch of text places something in, or None.

    Vertical (top / bottom) and horizontal (left / right) cues combine ('at the bottom left');
    a centre cue (center, centre, middle) fills the missing axis, so 'near the top edge, in the
    middle' is the top cell and 'right in the middle of the picture' the center.
    """
    row = col = None
    centre = False
    for m in _CUE_RE.finditer(text):
        word, after = m.group(1), text[m.end() :]
        directional = word in ("top", "bottom", "left", "right")
        if directional and _RELATION_AFTER.match(after):
            continue
        if word == "right" and _ADVERB_AFTER.match(after) and not _DIRECTION_BEFORE.search(text[: m.start()]):
            continue
        if word in ("top", "bottom"):
            row = 0 if word == "top" else 2
        elif word in ("left", "right"):
            col = 0 if word == "left" else 2
        else:
            centre = True
    if row is None and col is None and not centre:
        return None
    cell = (1 if col is None else col, 1 if row is None else row)
    return next(name for name, c in POSITIONS.items() if c == cell)


def parse_prompt_objects(prompt: str) -> list[NamedObject]:
    """The objects a prompt names ('<size>? <colour> <shape>'), each with the position its words give.

    Each object's position comes from the words after it up to the next object in its sentence
    ('a red circle at the top left and a blue square in the center'), or, for a sentence's first
    object, from the words before it ('In the top left corner, there is a red circle'). A mention
    without a position (say in 'the red circle is left of the blue square') is dropped when the
    prompt places the same colour and shape elsewhere; exact repeats are kept once.
    """
    mentions: list[NamedObject] = []
    for sentence in _SENTENCE_RE.split(prompt.lower().replace("-", " ")):
        matches = list(_OBJECT_RE.finditer(sentence))
        for i, m in enumerate(matches):
            tail_end = matches[i + 1].start() if i + 1 < len(matches) else len(sentence)
            position = position_in(sentence[m.end() : tail_end])
            if position is None and i == 0:
                position = position_in(sentence[: m.start()])
            mentions.append(
                NamedObject(shape=m.group(3), colour=m.group(2), size=m.group(1), position=position)
            )
    placed = {(n.shape, n.colour) for n in mentions if n.position is not None}
    named: list[NamedObject] = []
    for n in mentions:
        if n.position is None and (n.shape, n.colour) in placed:
            continue
        if n.size is None and any(
            o.size and (o.shape, o.colour, o.position) == (n.shape, n.colour, n.position) for o in mentions
        ):
            continue
        if n not in named:
            named.append(n)
    return named


@dataclass(frozen=True)
class ObjectJudgement:
    """Whether one named object is present: by shape, with its colour, at its position, all at once."""

    named: NamedObject
    object: bool
    attribute: bool
    location: bool | None
    all: bool
    colour_placement: bool


def _in_cell(obj: SceneObject, position: str, margin: float) -> bool:
    col, row = POSITIONS[position]
    return (
        col / 3 - margin <= obj.x <= (col + 1) / 3 + margin
        and row / 3 - margin <= obj.y <= (row + 1) / 3 + margin
    )


def judge(
    named: Iterable[NamedObject], detected: Scene, location_margin: float = 0.05
) -> list[ObjectJudgement]:
    """Judge each named object against a detected (or ground-truth) scene.

    `location_margin` widens the named grid cell by that fraction of the side on every edge, so an
    object straddling a cell border still counts as near the stated position.
    """
    out = []
    for n in named:
        same_shape = [o for o in detected.objects if o.shape == n.shape]
        coloured = [o for o in same_shape if o.colour == n.colour]
        any_shape = [o for o in detected.objects if o.colour == n.colour]
        if n.position is None:
            location, everything, placed = None, bool(coloured), bool(any_shape)
        else:
            location = any(_in_cell(o, n.position, location_margin) for o in same_shape)
            everything = any(_in_cell(o, n.position, location_margin) for o in coloured)
            placed = any(_in_cell(o, n.position, location_margin) for o in any_shape)
        out.append(ObjectJudgement(n, bool(same_shape), bool(coloured), location, everything, placed))
    return out


@dataclass(frozen=True)
class FaithfulnessMetrics:
    """Object / attribute / location precision (ParaDiffusion Table 3 rows), all-three precision, and
    colour-placement precision (named colour at the named position, any shape)."""

    object_precision: float
    attribute_precision: float
    location_precision: float | None
    all_precision: float
    colour_placement_precision: float
    objects: int
    located_objects: int
    images: int

    def to_json(self) -> dict:
        return {
            "object_precision": self.object_precision,
            "attribute_precision": self.attribute_precision,
            "location_precision": self.location_precision,
            "all_precision": self.all_precision,
            "colour_placement_precision": self.colour_placement_precision,
            "objects": self.objects,
            "located_objects": self.located_objects,
            "images": self.images,
        }


def aggregate(judgements: Sequence[Sequence[ObjectJudgement]]) -> FaithfulnessMetrics:
    """Pool per-image judgements into precisions over all named objects."""
    flat = [j for per_image in judgements for j in per_image]
    if not flat:
        raise ValueError(
            "no named objects to judge: the prompts name no '<colour> <shape>' of the scene vocabulary"
        )
    located = [j.location for j in flat if j.location is not None]
    return FaithfulnessMetrics(
        object_precision=float(np.mean([j.object for j in flat])),
        attribute_precision=float(np.mean([j.attribute for j in flat])),
        location_precision=float(np.mean(located)) if located else None,
        all_precision=float(np.mean([j.all for j in flat])),
        colour_placement_precision=float(np.mean([j.colour_placement for j in flat])),
        objects=len(flat),
        located_objects=len(located),
        images=len(judgements),
    )


def text_faithfulness(
    images: Sequence[ImageLike],
    named_objects: Sequence[Sequence[NamedObject]],
    config: DetectorConfig = DetectorConfig(),
    location_margin: float = 0.05,
    progress: Callable[[int], None] | None = None,
) -> FaithfulnessMetrics:
    """Detect each image's scene and judge the objects its prompt names (`parse_prompt_objects`,
    or `NamedObject.from_scene_object` over a ground-truth scene)."""
    if len(images) != len(named_objects):
        raise ValueError(f"{len(images)} images but {len(named_objects)} lists of named objects")
    judgements = []
    for image, named in zip(images, named_objects):
        judgements.append(judge(named, detect_scene(image, config), location_margin))
        if progress is not None:
            progress(1)
    return aggregate(judgements)
