"""Text-rich images for VLAD and MARIO-Eval: readable words drawn over a plain scene.

A layout holds 1-3 words from a fixed list of common English words (3-8 letters, in lower, title
or upper case), drawn with Pillow's built-in font (`ImageFont.load_default(size=...)`) at a size
OCR reads (rapidocr read such words at 64-512 px, see DESIGN.md), in a colour that contrasts with
the background; half the layouts add one or two shapes in the top or bottom grid row, which the
caption mentions ("a sign that reads 'river' above a blue circle").

Words are drawn one character at a time, so each character's pixels are known exactly: the word's
box is the union of its characters' ink (padded by `BOX_PAD` pixels), and the charseg map marks
each character's ink with its TextDiffuser class (`formats.mario.char_class`) at 256x256.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from components.data.formats.mario import CHARSEG_SIDE, char_class
from components.data.records import WordBox
from components.data.scene import BACKGROUNDS, COLOURS, Scene, render_scene
from components.data.synthetic.language import article, join_list, noun_phrase
from components.data.synthetic.scenes import row_scene

WORDS: tuple[str, ...] = (
    "apple", "bakery", "bridge", "candle", "castle", "cloud", "coffee", "desert", "dragon", "dream",
    "field", "flower", "forest", "garden", "ghost", "guitar", "harbor", "honey", "island", "jungle",
    "kitten", "lemon", "light", "market", "meadow", "mirror", "monkey", "music", "night", "ocean",
    "orange", "paper", "pepper", "pizza", "planet", "pocket", "rabbit", "river", "robot", "rocket",
    "sale", "silver", "smile", "spring", "stone", "summer", "sunset", "tiger", "tower", "train",
    "travel", "valley", "velvet", "water", "window", "winter", "wizard", "yellow", "zebra", "hotel",
    "cinema", "open", "exit", "books",
)  # fmt: skip

CASES = ("lower", "title", "upper")
BOX_PAD = 2
MIN_LUMA_CONTRAST = 100


@dataclass(frozen=True)
class PlacedWord:
    """A word and where its text origin is drawn (Pillow's `draw.text` anchor), in pixels."""

    text: str
    x: float
    y: float


@dataclass(frozen=True)
class TextLayout:
    """Everything needed to render one text-rich image."""

    scene: Scene
    words: tuple[PlacedWord, ...]
    font_size: int
    text_colour: str
    shape_row: int | None
    size: int

    def to_json(self) -> dict:
        return {
            "scene": self.scene.to_json(),
            "font_size": self.font_size,
            "text_colour": self.text_colour,
            "shape_row": self.shape_row,
            "origins": [{"text": w.text, "x": w.x, "y": w.y} for w in self.words],
        }


@dataclass(frozen=True)
class Rendered:
    """A rendered text-rich image with its words' boxes (image pixels) and its 256x256 charseg map."""

    image: Image.Image
    words: tuple[WordBox, ...]
    charseg: np.ndarray


@lru_cache(maxsize=64)
def font(size: int) -> ImageFont.FreeTypeFont:
    return ImageFont.load_default(size=size)


def luma(rgb: tuple[int, int, int]) -> float:
    return 0.299 * rgb[0] + 0.587 * rgb[1] + 0.114 * rgb[2]


def text_colours(background: str) -> list[str]:
    """Colours that read clearly as text on `background` (luma difference of at least MIN_LUMA_CONTRAST)."""
    bg = luma(BACKGROUNDS[background])
    return [c for c in sorted(COLOURS) if abs(luma(COLOURS[c]) - bg) >= MIN_LUMA_CONTRAST]


def sample_layout(rng: random.Random, size: int) -> TextLayout:
    """A random text-rich layout for a `size`-pixel square image."""
    background = rng.choice(sorted(BACKGROUNDS))
    shape_row = rng.choice((None, None, 0, 2))
    scene = (
        Scene(background, ())
        if shape_row is None
        else row_scene(rng, background, shape_row, rng.randint(1, 2))
    )
    top, bottom = {None: (0.08, 0.92), 0: (0.36, 0.96), 2: (0.04, 0.64)}[shape_row]
    top, bottom = top * size, bottom * size

    count = rng.choices((1, 2, 3), weights=(5, 3, 2))[0]
    case = rng.choice(CASES)
    texts = [getattr(str, case)(w) for w in rng.sample(WORDS, count)]

    pitch = (bottom - top) / count
    font_size = min(rng.randint(round(0.11 * size), round(0.17 * size)), int(pitch / 1.25))
    while max(font(font_size).getlength(t) for t in texts) > 0.9 * size:
        font_size -= 1
    if font_size < 8:
        raise ValueError(
            f"textrich image size {size} is too small to draw readable words; use at least 64 px"
        )

    words = []
    for i, text in enumerate(texts):
        left, upper, right, lower = font(font_size).getbbox(text)
        ink_x = rng.uniform(0.05 * size, 0.95 * size - (right - left))
        ink_y = top + i * pitch + rng.uniform(0, max(0.0, pitch - (lower - upper)))
        words.append(PlacedWord(text, round(ink_x - left, 2), round(ink_y - upper, 2)))
    return TextLayout(scene, tuple(words), font_size, rng.choice(text_colours(background)), shape_row, size)


def render_textrich(layout: TextLayout) -> Rendered:
    """Draw `layout`: the scene, then each word character by character; boxes and charseg from the ink."""
    size = layout.size
    # A flat background needs no anti-aliasing, and 2x supersampling keeps shape edges smooth at
    # a quarter of the 4x default's cost (the resize dominates rendering at 256 px and above).
    image = render_scene(layout.scene, size, supersample=2 if layout.scene.objects else 1)
    draw = ImageDraw.Draw(image)
    face = font(layout.font_size)
    fill = COLOURS[layout.text_colour]
    charseg = np.zeros((CHARSEG_SIDE, CHARSEG_SIDE), dtype=np.int64)  # (256, 256) class per pixel
    boxes = []
    for word in layout.words:
        ink: list[int] | None = None
        for i, char in enumerate(word.text):
            origin = (word.x + face.getlength(word.text[:i]), word.y)
            draw.text(origin, char, font=face, fill=fill)
            mask = Image.new("L", (size, size), 0)
            ImageDraw.Draw(mask).text(origin, char, font=face, fill=255)
            bbox = mask.getbbox()
            if bbox is None:
                continue
            ink = (
                list(bbox)
                if ink is None
                else [min(ink[0], bbox[0]), min(ink[1], bbox[1]), max(ink[2], bbox[2]), max(ink[3], bbox[3])]
            )
            if size != CHARSEG_SIDE:
                mask = mask.resize((CHARSEG_SIDE, CHARSEG_SIDE), Image.Resampling.BILINEAR)
            charseg[np.asarray(mask) >= 128] = char_class(char)
        if ink is None:
            raise ValueError(f"word {word.text!r} drew no pixels at font size {layout.font_size}")
        x0, y0 = max(0, ink[0] - BOX_PAD), max(0, ink[1] - BOX_PAD)
        x1, y1 = min(size, ink[2] + BOX_PAD), min(size, ink[3] + BOX_PAD)
        boxes.append(WordBox(text=word.text, quad=(x0, y0, x1, y0, x1, y1, x0, y1), confidence=1.0))
    return Rendered(image, tuple(boxes), charseg)


def textrich_caption(layout: TextLayout, rng: random.Random) -> str:
    """A caption quoting every drawn word in 'single quotes', in drawing order, and naming any shapes."""
    quoted = [f"'{w.text}'" for w in layout.words]
    colour, bg = layout.text_colour, layout.scene.background
    if len(quoted) == 1:
        templates = (
            "a sign that reads {q}",
            "the word {q} written in {colour} on {bg_a} {bg} background",
            "a poster with the text {q}",
            "{q} in large {colour} letters",
        )
    else:
        templates = (
            "a sign that reads {q}",
            "a poster with the words {q}",
            "the words {q} written in {colour} letters",
            "a sign that reads {phrase}",
        )
    caption = rng.choice(templates).format(
        q=join_list(quoted),
        phrase="'" + " ".join(w.text for w in layout.words) + "'",
        colour=colour,
        bg=bg,
        bg_a=article(bg),
    )
    if layout.scene.objects:
        shapes = join_list([noun_phrase(o, size=False) for o in layout.scene.objects])
        caption += f" {'below' if layout.shape_row == 0 else 'above'} {shapes}"
    if "background" not in caption and rng.random() < 0.5:
        caption += f" on {article(bg)} {bg} background"
    return caption
