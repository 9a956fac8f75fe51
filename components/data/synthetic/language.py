"""What the synthetic world says about a scene: short captions, CC3M-style captions and paragraphs.

Every sentence is generated from the scene's ground truth, so it is true of the rendered image:
colours, shapes, sizes and grid positions come straight from `SceneObject`, and relations from
`Scene.relations()` (only clear column/row differences). Templates vary the wording so a text
encoder cannot key on one fixed sentence, while the attribute words stay the closed vocabulary of
`components/data/scene.py`, which is what a demo-scale model can learn.
"""

from __future__ import annotations

import random
from collections.abc import Sequence

from components.data.scene import Scene, SceneObject

# How a caption places an object in each grid cell (short form, used everywhere).
WHERE: dict[str, str] = {
    "top left": "at the top left",
    "top": "at the top",
    "top right": "at the top right",
    "left": "on the left",
    "center": "in the center",
    "right": "on the right",
    "bottom left": "at the bottom left",
    "bottom": "at the bottom",
    "bottom right": "at the bottom right",
}

# Longer, more visual forms of the same places, for paragraphs.
WHERE_LONG: dict[str, str] = {
    "top left": "in the top left corner",
    "top": "near the top edge, in the middle",
    "top right": "in the top right corner",
    "left": "on the left side, halfway down",
    "center": "right in the middle of the picture",
    "right": "on the right side, halfway down",
    "bottom left": "in the bottom left corner",
    "bottom": "near the bottom edge, in the middle",
    "bottom right": "in the bottom right corner",
}

NUMBERS = ("no", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")

RELATION_TEMPLATES: dict[str, tuple[str, ...]] = {
    "left of": (
        "{a} is to the left of {b}.",
        "{a} sits further left than {b}.",
        "{b} is to the right of {a}.",
    ),
    "right of": (
        "{a} is to the right of {b}.",
        "{a} sits further right than {b}.",
        "{b} is to the left of {a}.",
    ),
    "above": ("{a} is above {b}.", "{a} sits higher in the frame than {b}.", "{b} is below {a}."),
    "below": ("{a} is below {b}.", "{a} sits lower in the frame than {b}.", "{b} is above {a}."),
}

SIZE_DETAILS: dict[str, tuple[str, ...]] = {
    "small": (
        "It is small, covering only a little of the frame.",
        "It is a small shape with plenty of space around it.",
    ),
    "medium": ("It is of medium size.", "It is neither big nor small, a medium-sized shape."),
    "large": (
        "It is large and fills much of its part of the picture.",
        "It is one of the large shapes, big and easy to see.",
    ),
}

SHAPE_DETAILS: dict[str, tuple[str, ...]] = {
    "circle": ("It is perfectly round with smooth edges.", "Its outline is a smooth, round curve."),
    "square": (
        "It has four equal sides and sharp corners.",
        "Its sides are straight and its corners are right angles.",
    ),
    "triangle": (
        "It points upward, with a flat base at the bottom.",
        "Its tip points up and its base lies flat.",
    ),
    "diamond": (
        "It is a square turned on its corner, with points at the top, bottom, left and right.",
        "It stands on one point, like a tilted square.",
    ),
}

COLOUR_DETAILS = (
    "Its colour is a solid, even {colour} without any shading.",
    "It is filled with a flat {colour} tone.",
    "Its {colour} fill is bright and uniform.",
)

OVERVIEWS = (
    "The image shows {count} on a plain {background} background.",
    "This is a flat, minimalist picture of {count} set against a {background} backdrop.",
    "A clean graphic composition places {count} on a uniform {background} field.",
    "In this picture, {count} are arranged on a {background} background.",
)

BACKGROUNDS_SENTENCES = (
    "The background is a flat, uniform {background} with no texture or pattern.",
    "Behind the {shapes}, the {background} background is evenly coloured and empty.",
    "Everything else in the frame is plain {background}.",
)

STYLES = (
    "The overall style is flat and graphic, like a simple vector illustration.",
    "The mood is calm and orderly, with plenty of empty space in the frame.",
    "There are no shadows, outlines or gradients; every colour is a single flat tone.",
    "The composition feels tidy and balanced, like a page from a children's picture book.",
)

FILLERS = (
    "No text, people or other objects appear anywhere in the picture.",
    "The lighting is even, so every shape keeps its exact colour.",
    "The picture has no border or frame around it.",
    "Nothing is blurred; every edge is crisp and clean.",
)


def article(word: str) -> str:
    """'a' or 'an' for the word that follows."""
    return "an" if word[:1].lower() in "aeiou" else "a"


def noun_phrase(obj: SceneObject, size: bool = True) -> str:
    """'a small red circle' (or 'a red circle' without the size), with the right article."""
    words = [obj.size, obj.colour, obj.shape] if size else [obj.colour, obj.shape]
    return f"{article(words[0])} {' '.join(words)}"


def plural(shape: str) -> str:
    return shape + "s"


def count_phrase(scene: Scene) -> str:
    """'three shapes' / 'a single shape'."""
    n = len(scene.objects)
    return "a single shape" if n == 1 else f"{NUMBERS[n]} shapes"


def inventory(scene: Scene) -> str:
    """'two circles, a square and a triangle': how many of each shape, in first-appearance order."""
    counts: dict[str, int] = {}
    for obj in scene.objects:
        counts[obj.shape] = counts.get(obj.shape, 0) + 1
    parts = [f"{article(s)} {s}" if n == 1 else f"{NUMBERS[n]} {plural(s)}" for s, n in counts.items()]
    return join_list(parts)


def join_list(parts: Sequence[str]) -> str:
    """'x', 'x and y', 'x, y and z'."""
    if len(parts) <= 1:
        return "".join(parts)
    return ", ".join(parts[:-1]) + " and " + parts[-1]


def refer(scene: Scene, index: int) -> str:
    """The shortest definite description that picks out object `index` in `scene`: 'the red circle'."""
    obj = scene.objects[index]
    others = [o for i, o in enumerate(scene.objects) if i != index]
    if not any(o.colour == obj.colour and o.shape == obj.shape for o in others):
        return f"the {obj.colour} {obj.shape}"
    if not any(o.size == obj.size and o.colour == obj.colour and o.shape == obj.shape for o in others):
        return f"the {obj.size} {obj.colour} {obj.shape}"
    return f"the {obj.colour} {obj.shape} {WHERE[obj.position]}"


def capitalise(sentence: str) -> str:
    return sentence[:1].upper() + sentence[1:]


def word_count(text: str) -> int:
    return len(text.split())


def short_caption(scene: Scene, rng: random.Random) -> str:
    """A LAION-like short caption of about 8-12 words (ParaDiffusion stage 1, the SD base model).

    One object: 'a small red circle at the top left on a gray background'. Two objects: both
    objects and their places (sizes dropped beyond 14 words, so at most 15), the background only
    when it still fits in 14 words.
    """
    bg = scene.background
    if len(scene.objects) == 1:
        obj = scene.objects[0]
        phrase = noun_phrase(obj, size=rng.random() < 0.8)
        template = rng.choice(
            (
                "{a} {where} on {bg_a} {bg} background",
                "{a} {where}, {bg} background",
                "{a} {where} against a plain {bg} background",
                "{bg_a_cap} {bg} background with {a} {where}",
            )
        )
        return template.format(
            a=phrase, where=WHERE[obj.position], bg=bg, bg_a=article(bg), bg_a_cap=capitalise(article(bg))
        ).lower()
    caption = join_list(
        [f"{noun_phrase(o, size=rng.random() < 0.5)} {WHERE[o.position]}" for o in scene.objects]
    )
    if word_count(caption) > 14:
        caption = join_list([f"{noun_phrase(o, size=False)} {WHERE[o.position]}" for o in scene.objects])
    with_background = f"{caption} on {article(bg)} {bg} background"
    return with_background if word_count(with_background) <= 14 else caption


def cc3m_caption(scene: Scene, rng: random.Random) -> str:
    """A CC3M-style caption (lower case, spaced final period) naming every object, its place and the background."""
    parts = [f"{noun_phrase(o, size=rng.random() < 0.7)} {WHERE[o.position]}" for o in scene.objects]
    lead = rng.choice(("", "a picture of ", "an illustration of ", "simple shapes : "))
    return f"{lead}{join_list(parts)} against {article(scene.background)} {scene.background} background .".lower()


def paragraph(
    scene: Scene, rng: random.Random, precise: bool = False, min_words: int = 50, max_words: int = 300
) -> str:
    """A ParaImage-style paragraph of `min_words`..`max_words` words describing the whole scene.

    Overview, one sentence per object (where it is, what it is), optional details (size, colour,
    shape), relations between objects, the background, and a style/mood sentence. `precise`
    (ParaImage-Small, benchmark prompts) counts the shapes exactly and states every detail and
    relation that fits in `max_words` (relations are cut first, then details); otherwise details
    and relations are sampled, as human paragraphs leave some out. Fillers pad short paragraphs
    up to `min_words`.
    """
    bg = scene.background
    head = [rng.choice(OVERVIEWS).format(count=count_phrase(scene), background=bg)]
    if precise and len(scene.objects) > 1:
        head.append(f"In total there are {NUMBERS[len(scene.objects)]} shapes: {inventory(scene)}.")
    # (sentence, drop rank): rank 0 is always kept; to fit max_words, relations (2) go before details (1).
    body: list[tuple[str, int]] = []
    for i, obj in enumerate(scene.objects):
        place = WHERE_LONG[obj.position] if rng.random() < 0.5 else WHERE[obj.position] + " of the image"
        body.append(
            (
                rng.choice(
                    (
                        f"{capitalise(place)}, there is {noun_phrase(obj)}.",
                        f"{capitalise(noun_phrase(obj))} sits {place}.",
                        f"{capitalise(place)}, we can see {noun_phrase(obj)}.",
                    )
                ),
                0,
            )
        )
        details = [
            rng.choice(SIZE_DETAILS[obj.size]),
            rng.choice(COLOUR_DETAILS).format(colour=obj.colour),
            rng.choice(SHAPE_DETAILS[obj.shape]),
        ]
        keep = details if precise else rng.sample(details, rng.choice((0, 1, 1, 2)))
        body.extend((d, 1) for d in keep)
    relations = scene.relations()
    chosen = relations if precise else rng.sample(relations, min(len(relations), rng.randint(0, 3)))
    for i, relation, j in chosen:
        sentence = rng.choice(RELATION_TEMPLATES[relation]).format(a=refer(scene, i), b=refer(scene, j))
        body.append((capitalise(sentence), 2))
    shapes = "shape" if len(scene.objects) == 1 else "shapes"
    tail = [rng.choice(BACKGROUNDS_SENTENCES).format(background=bg, shapes=shapes), rng.choice(STYLES)]

    def text() -> str:
        return " ".join(head + [s for s, _ in body] + tail)

    fillers = list(FILLERS)
    rng.shuffle(fillers)
    while word_count(text()) < min_words and fillers:
        tail.insert(0, fillers.pop())
    while word_count(text()) > max_words and any(rank for _, rank in body):
        top = max(rank for _, rank in body)
        body.pop(max(i for i, (_, rank) in enumerate(body) if rank == top))
    result = text()
    if not min_words <= word_count(result) <= max_words:
        raise ValueError(
            f"paragraph of {word_count(result)} words for a {len(scene.objects)}-object scene cannot meet "
            f"{min_words}..{max_words} words"
        )
    return result
