"""The synthetic world's scenes: a closed vocabulary of objects, their ground truth, and a renderer.

A scene is a background plus 1-6 objects, each a coloured shape of some size in one cell of a 3x3
grid. Everything a caption can say about a scene (object, attribute, location, relation) is a
field here, so evaluation can check generated images against the exact truth. The JSON form of
`Scene` (`Scene.to_json` / `Scene.from_json`) is the ground truth written beside every synthetic
sample.

The vocabulary is designed for what a small model on 2 CPU cores can learn in minutes: few,
well-separated colours and shapes, and coarse positions (see DESIGN.md "Demo-scale learning").
"""

from __future__ import annotations

import random
from dataclasses import asdict, dataclass, field
from typing import Any

from PIL import Image, ImageDraw

COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (220, 40, 40),
    "green": (40, 170, 60),
    "blue": (40, 80, 220),
    "yellow": (240, 210, 40),
    "purple": (140, 60, 190),
    "orange": (245, 140, 30),
    "white": (245, 245, 245),
    "black": (25, 25, 25),
}

BACKGROUNDS: dict[str, tuple[int, int, int]] = {
    "gray": (128, 128, 128),
    "light blue": (170, 200, 235),
    "beige": (225, 210, 180),
    "dark green": (40, 80, 50),
}

SHAPES: tuple[str, ...] = ("circle", "square", "triangle", "diamond")

# Radius of an object as a fraction of the image side.
SIZES: dict[str, float] = {"small": 0.08, "medium": 0.12, "large": 0.16}

# 3x3 grid: name -> (column, row); cell centres at 1/6, 3/6, 5/6 of the side.
POSITIONS: dict[str, tuple[int, int]] = {
    "top left": (0, 0),
    "top": (1, 0),
    "top right": (2, 0),
    "left": (0, 1),
    "center": (1, 1),
    "right": (2, 1),
    "bottom left": (0, 2),
    "bottom": (1, 2),
    "bottom right": (2, 2),
}


def cell_centre(position: str) -> tuple[float, float]:
    """Centre of a named grid cell as fractions (x, y) of the image side, y pointing down."""
    col, row = POSITIONS[position]
    return (2 * col + 1) / 6, (2 * row + 1) / 6


def position_of(x: float, y: float) -> str:
    """Name of the grid cell that holds the point (x, y) given as fractions of the side."""
    col = min(int(x * 3), 2)
    row = min(int(y * 3), 2)
    for name, cell in POSITIONS.items():
        if cell == (col, row):
            return name
    raise AssertionError("unreachable: every (col, row) in 0..2 names a cell")


@dataclass(frozen=True)
class SceneObject:
    """One shape in a scene. `x`, `y` are the centre as fractions of the side; `radius` too."""

    shape: str
    colour: str
    size: str
    position: str
    x: float
    y: float
    radius: float

    def phrase(self) -> str:
        """The noun phrase a caption uses for this object: 'a small red circle'."""
        return f"a {self.size} {self.colour} {self.shape}"


@dataclass(frozen=True)
class Scene:
    """Ground truth for one synthetic image."""

    background: str
    objects: tuple[SceneObject, ...]
    extra: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {
            "background": self.background,
            "objects": [asdict(o) for o in self.objects],
            **({"extra": self.extra} if self.extra else {}),
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Scene:
        return cls(
            background=data["background"],
            objects=tuple(SceneObject(**o) for o in data["objects"]),
            extra=dict(data.get("extra", {})),
        )

    def relations(self) -> list[tuple[int, str, int]]:
        """Pairwise spatial relations (i, 'left of' | 'right of' | 'above' | 'below', j) between objects.

        Only clear relations are listed: objects in different grid columns (or rows).
        """
        out = []
        for i, a in enumerate(self.objects):
            for j, b in enumerate(self.objects):
                if i >= j:
                    continue
                ca, ra = POSITIONS[a.position]
                cb, rb = POSITIONS[b.position]
                if ca < cb:
                    out.append((i, "left of", j))
                elif ca > cb:
                    out.append((i, "right of", j))
                if ra < rb:
                    out.append((i, "above", j))
                elif ra > rb:
                    out.append((i, "below", j))
        return out


def sample_scene(rng: random.Random, min_objects: int = 1, max_objects: int = 6, jitter: float = 0.04) -> Scene:
    """Draw a random scene: distinct grid cells, so objects never hide each other."""
    if not 1 <= min_objects <= max_objects <= len(POSITIONS):
        raise ValueError(f"need 1 <= min_objects <= max_objects <= {len(POSITIONS)}, got {min_objects}, {max_objects}")
    n = rng.randint(min_objects, max_objects)
    background = rng.choice(sorted(BACKGROUNDS))
    cells = rng.sample(sorted(POSITIONS), n)
    objects = []
    for position in cells:
        cx, cy = cell_centre(position)
        size = rng.choice(sorted(SIZES))
        colour = rng.choice([c for c in sorted(COLOURS) if not _too_close(COLOURS[c], BACKGROUNDS[background])])
        objects.append(
            SceneObject(
                shape=rng.choice(SHAPES),
                colour=colour,
                size=size,
                position=position,
                x=round(cx + rng.uniform(-jitter, jitter), 4),
                y=round(cy + rng.uniform(-jitter, jitter), 4),
                radius=SIZES[size],
            )
        )
    return Scene(background=background, objects=tuple(objects))


def render_scene(scene: Scene, size: int, supersample: int = 4) -> Image.Image:
    """Draw the scene as an RGB image `size` pixels square (anti-aliased by supersampling)."""
    big = size * supersample
    image = Image.new("RGB", (big, big), BACKGROUNDS[scene.background])
    draw = ImageDraw.Draw(image)
    for obj in scene.objects:
        draw_shape(draw, obj.shape, obj.x * big, obj.y * big, obj.radius * big, COLOURS[obj.colour])
    return image.resize((size, size), Image.Resampling.LANCZOS)


def draw_shape(draw: ImageDraw.ImageDraw, shape: str, cx: float, cy: float, r: float, fill: tuple[int, int, int]) -> None:
    """Draw one shape centred at (cx, cy) with 'radius' r (half the bounding-box side), in pixels."""
    if shape == "circle":
        draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=fill)
    elif shape == "square":
        s = r * 0.88  # same area feel as the circle
        draw.rectangle([cx - s, cy - s, cx + s, cy + s], fill=fill)
    elif shape == "triangle":
        draw.polygon([(cx, cy - r), (cx + r, cy + r * 0.8), (cx - r, cy + r * 0.8)], fill=fill)
    elif shape == "diamond":
        draw.polygon([(cx, cy - r), (cx + r, cy), (cx, cy + r), (cx - r, cy)], fill=fill)
    else:
        raise ValueError(f"unknown shape {shape!r}; known shapes: {SHAPES}")


def _too_close(a: tuple[int, int, int], b: tuple[int, int, int], threshold: int = 90) -> bool:
    return sum(abs(x - y) for x, y in zip(a, b)) < threshold
