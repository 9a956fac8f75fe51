"""Scenes that change over time: VIST-style 5-step stories and MMDialog-style picture dialogues.

A story starts from a scene of 1-2 objects and applies one edit per step (an object appears,
moves, changes colour, changes size or disappears); each step's narration says what changed and
then what the scene now holds, in VIST's lower-case, space-before-period style. A dialogue
alternates a user asking for (or sharing) a picture and an assistant answering with text and
sometimes an image, then editing it on request and answering a question about it. MiniGPT-5's
loader skips training turns longer than 20 words, so every turn stays within 20.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, replace
from typing import Any

from components.data.scene import BACKGROUNDS, POSITIONS, SIZES, Scene, cell_centre
from components.data.synthetic.language import WHERE, article, join_list, noun_phrase, refer, word_count
from components.data.synthetic.scenes import make_object, visible_colours

MAX_TURN_WORDS = 20
EDITS = ("appear", "move", "recolour", "resize", "disappear")


@dataclass(frozen=True)
class Frame:
    """One step of a story: the scene after the step's edit, the edit, and its narration."""

    scene: Scene
    event: dict[str, Any]
    narration: str


@dataclass(frozen=True)
class Turn:
    """One dialogue turn: who speaks, the text, the scene it is about, and whether it carries that scene's image."""

    speaker: str
    text: str
    scene: Scene
    has_image: bool


def start_scene(rng: random.Random, max_objects: int = 2, jitter: float = 0.02) -> Scene:
    background = rng.choice(sorted(BACKGROUNDS))
    cells = rng.sample(sorted(POSITIONS), rng.randint(1, max_objects))
    return Scene(background, tuple(make_object(rng, background, p, jitter=jitter) for p in cells))


def possible_edits(scene: Scene, max_objects: int = 4) -> list[str]:
    """Edits that can apply to `scene` (appear needs a free cell and room, disappear a second object)."""
    free = len(POSITIONS) - len(scene.objects)
    edits = ["move", "recolour", "resize"] if free else ["recolour", "resize"]
    if free and len(scene.objects) < max_objects:
        edits.append("appear")
    if len(scene.objects) >= 2:
        edits.append("disappear")
    return sorted(edits, key=EDITS.index)


def apply_edit(
    rng: random.Random, scene: Scene, edit: str, jitter: float = 0.02
) -> tuple[Scene, dict[str, Any], str]:
    """Apply `edit` to a random object of `scene`: the new scene, the event's ground truth, and a change clause."""
    objects = list(scene.objects)
    free = sorted(set(POSITIONS) - {o.position for o in objects})
    if edit == "appear":
        new = make_object(rng, scene.background, rng.choice(free), jitter=jitter)
        objects.append(new)
        return (
            replace(scene, objects=tuple(objects)),
            {"type": "appear", "object": len(objects) - 1},
            f"{noun_phrase(new)} appeared {WHERE[new.position]}",
        )
    index = rng.randrange(len(objects))
    obj, who = objects[index], refer(scene, index)
    if edit == "move":
        target = rng.choice(free)
        cx, cy = cell_centre(target)
        objects[index] = replace(
            obj,
            position=target,
            x=round(cx + rng.uniform(-jitter, jitter), 4),
            y=round(cy + rng.uniform(-jitter, jitter), 4),
        )
        event = {"type": "move", "object": index, "from": obj.position, "to": target}
        clause = f"{who} moved from the {obj.position} to the {target}"
    elif edit == "recolour":
        colour = rng.choice([c for c in visible_colours(scene.background) if c != obj.colour])
        objects[index] = replace(obj, colour=colour)
        event = {"type": "recolour", "object": index, "from": obj.colour, "to": colour}
        clause = f"the {obj.shape} {WHERE[obj.position]} turned from {obj.colour} to {colour}"
    elif edit == "resize":
        size = rng.choice([s for s in sorted(SIZES) if s != obj.size])
        objects[index] = replace(obj, size=size, radius=SIZES[size])
        verb = "grew" if SIZES[size] > obj.radius else "shrank"
        event = {"type": "resize", "object": index, "from": obj.size, "to": size}
        clause = f"{who} {verb} from {obj.size} to {size}"
    elif edit == "disappear":
        objects.pop(index)
        event = {"type": "disappear", "object": index, "was": obj.position}
        clause = f"{who} disappeared from the {obj.position}"
    else:
        raise ValueError(f"unknown edit {edit!r}; known edits: {EDITS}")
    return replace(scene, objects=tuple(objects)), event, clause


def scene_list(scene: Scene) -> str:
    """'a small red circle at the top left and a large blue square on the right'."""
    return join_list([f"{noun_phrase(o)} {WHERE[o.position]}" for o in scene.objects])


def sample_story(rng: random.Random, steps: int = 5) -> list[Frame]:
    """A story of `steps` frames: a start scene, then one edit per step, each with its narration."""
    scene = start_scene(rng)
    bg = scene.background
    frames = [
        Frame(
            scene,
            {"type": "start"},
            f"our story begins with {scene_list(scene)} on {article(bg)} {bg} background .",
        )
    ]
    for _ in range(steps - 1):
        edit = rng.choice(possible_edits(scene))
        scene, event, clause = apply_edit(rng, scene, edit)
        lead = rng.choice(("then", "next ,", "after a while", "suddenly", "later"))
        frames.append(Frame(scene, event, f"{lead} {clause} . now the picture shows {scene_list(scene)} ."))
    return frames


def sample_dialogue(rng: random.Random) -> list[Turn]:
    """A 4- or 6-turn conversation about one picture that the user has the assistant draw or edit."""
    scene = start_scene(rng, max_objects=1)
    obj, bg = scene.objects[0], scene.background
    described = f"{noun_phrase(obj)} {WHERE[obj.position]} on {article(bg)} {bg} background"
    if rng.random() < 0.5:
        turns = [
            Turn(
                "user",
                rng.choice(("can you draw {}?", "please draw {}.", "show me a picture of {}.")).format(
                    described
                ),
                scene,
                False,
            ),
            Turn(
                "assistant",
                rng.choice(("sure, here is", "here you go:", "of course! this is")) + f" {described}.",
                scene,
                True,
            ),
        ]
    else:
        turns = [
            Turn(
                "user",
                rng.choice(("look at this picture i made.", "here is my drawing.", "what do you see here?")),
                scene,
                True,
            ),
            Turn("assistant", f"i see {described}.", scene, False),
        ]
    edit = rng.choice([e for e in possible_edits(scene) if e in ("appear", "move", "recolour")])
    edited, event, clause = apply_edit(rng, scene, edit)
    request = {
        "appear": f"nice! can you add {noun_phrase(edited.objects[-1])} {WHERE[edited.objects[-1].position]}?",
        "move": f"please move it to the {event.get('to')}.",
        "recolour": f"can you make it {event.get('to')} instead?",
    }[edit]
    turns.append(Turn("user", request, scene, False))
    turns.append(
        Turn("assistant", rng.choice(("done!", "here it is:", "okay,")) + f" {clause}.", edited, True)
    )
    if rng.random() < 0.6:
        target = edited.objects[-1] if edit == "appear" else edited.objects[0]
        question, answer = rng.choice(
            (
                (f"what colour is the {target.shape}?", f"the {target.shape} is {target.colour}."),
                (f"where is the {target.colour} {target.shape}?", f"it is {WHERE[target.position]}."),
                (
                    "how many shapes are there now?",
                    f"there {'is one shape' if len(edited.objects) == 1 else f'are {len(edited.objects)} shapes'}.",
                ),
            )
        )
        turns += [Turn("user", question, edited, False), Turn("assistant", answer, edited, False)]
    for turn in turns:
        if word_count(turn.text) > MAX_TURN_WORDS:
            raise AssertionError(f"dialogue turn longer than {MAX_TURN_WORDS} words: {turn.text!r}")
    return turns
