"""Scene samplers beyond `scene.sample_scene`, for datasets that need a particular kind of scene.

`clean_scene` makes ParaImage-Small's "high-quality" scenes (few, large, centred objects, no
jitter); `row_scene` puts a few shapes in one grid row, leaving the rest of a text-rich image free
for words; `make_object` places one object in a cell; `category_scene` builds the scenes of the prompt
benchmark's categories. Colours are always drawn from those visible on the scene's background,
with the same contrast rule as `sample_scene`.
"""

from __future__ import annotations

import random
from dataclasses import replace

from components.data.scene import (
    BACKGROUNDS,
    COLOURS,
    POSITIONS,
    SHAPES,
    SIZES,
    Scene,
    SceneObject,
    cell_centre,
)

# Same contrast rule as components.data.scene.sample_scene: an object colour must differ from the
# background by at least this much (sum of absolute RGB differences) to be visible.
MIN_CONTRAST = 90

# Well-centred layouts for ParaImage-Small, by object count: symmetric about the centre.
CLEAN_LAYOUTS: dict[int, tuple[tuple[str, ...], ...]] = {
    1: (("center",),),
    2: (("left", "right"), ("top", "bottom"), ("top left", "bottom right"), ("top right", "bottom left")),
    3: (("left", "center", "right"), ("top", "center", "bottom"), ("top left", "center", "bottom right")),
}


def visible_colours(background: str) -> list[str]:
    """Object colours that stand out on `background`, sorted by name."""
    bg = BACKGROUNDS[background]
    return [
        c
        for c in sorted(COLOURS)
        if sum(abs(x - y) for x, y in zip(COLOURS[c], bg, strict=True)) >= MIN_CONTRAST
    ]


def make_object(
    rng: random.Random,
    background: str,
    position: str,
    sizes: tuple[str, ...] = tuple(SIZES),
    jitter: float = 0.0,
) -> SceneObject:
    """A random shape of a visible colour and one of `sizes`, centred in cell `position` (± jitter)."""
    cx, cy = cell_centre(position)
    size = rng.choice(sorted(sizes))
    return SceneObject(
        shape=rng.choice(SHAPES),
        colour=rng.choice(visible_colours(background)),
        size=size,
        position=position,
        x=round(cx + rng.uniform(-jitter, jitter), 4),
        y=round(cy + rng.uniform(-jitter, jitter), 4),
        radius=SIZES[size],
    )


def clean_scene(rng: random.Random, max_objects: int = 3) -> Scene:
    """A ParaImage-Small scene: 1-`max_objects` medium or large objects in a symmetric layout, no jitter."""
    n = rng.randint(1, min(max_objects, max(CLEAN_LAYOUTS)))
    background = rng.choice(sorted(BACKGROUNDS))
    cells = rng.choice(CLEAN_LAYOUTS[n])
    return Scene(background, tuple(make_object(rng, background, p, sizes=("medium", "large")) for p in cells))


def row_scene(rng: random.Random, background: str, row: int, count: int) -> Scene:
    """`count` small or medium shapes in distinct cells of grid row `row` (0 = top, 2 = bottom), no jitter."""
    cells = sorted(name for name, (_, r) in POSITIONS.items() if r == row)
    chosen = sorted(rng.sample(cells, count), key=lambda name: POSITIONS[name][0])
    return Scene(
        background, tuple(make_object(rng, background, p, sizes=("small", "medium")) for p in chosen)
    )


# ParaPrompts-style benchmark categories, each probing one thing a paragraph-to-image model must get right.
PROMPT_CATEGORIES: tuple[str, ...] = (
    "Single Object",
    "Two Objects",
    "Spatial Relations",
    "Colour Binding",
    "Shape Binding",
    "Size Contrast",
    "Counting",
    "Dense Scenes",
)


def category_scene(rng: random.Random, category: str) -> Scene:
    """A scene that exercises benchmark `category` (one of PROMPT_CATEGORIES)."""
    if category not in PROMPT_CATEGORIES:
        raise ValueError(f"unknown prompt category {category!r}; known: {PROMPT_CATEGORIES}")
    background = rng.choice(sorted(BACKGROUNDS))
    counts = {
        "Single Object": (1, 1),
        "Two Objects": (2, 2),
        "Spatial Relations": (3, 4),
        "Colour Binding": (2, 3),
        "Shape Binding": (2, 3),
        "Size Contrast": (2, 3),
        "Counting": (3, 5),
        "Dense Scenes": (5, 6),
    }[category]
    cells = rng.sample(sorted(POSITIONS), rng.randint(*counts))
    objects = [make_object(rng, background, p, jitter=0.02) for p in cells]
    if category == "Colour Binding":
        # One shape, different colours: the prompt binds each colour to a place.
        shape, colours = objects[0].shape, rng.sample(visible_colours(background), len(objects))
        objects = [replace(o, shape=shape, colour=c) for o, c in zip(objects, colours, strict=True)]
    elif category == "Shape Binding":
        colour, shapes = objects[0].colour, rng.sample(SHAPES, len(objects))
        objects = [replace(o, colour=colour, shape=s) for o, s in zip(objects, shapes, strict=True)]
    elif category == "Size Contrast":
        sizes = rng.sample(sorted(SIZES), len(objects))
        objects = [replace(o, size=s, radius=SIZES[s]) for o, s in zip(objects, sizes, strict=True)]
    elif category == "Counting":
        shape = objects[0].shape
        objects = [replace(o, shape=shape) for o in objects]
    return Scene(background, tuple(objects))
