"""Spatial scenes: synthetic two-object images with known boxes, in the WhatsUp and VSR formats.

Used by adaptvis.py so its whole evaluation harness (WhatsUp-style multiple choice, VSR-style yes/no,
attention-to-box alignment) runs offline. Each scene is a 64 x 64 pillow drawing of two coloured shapes
(drawn with `common.shapes_world.draw_scene`, so both worlds look alike): the *subject* (the object the
question asks about) and the *reference* object, on a graded backdrop whose colour changes smoothly from
left to right and from top to bottom (like a wall and a floor): a patch's own colour then says where it is,
the cue a pretrained vision tower has and an untrained tiny one lacks. The two objects always have
different colours, drawn from `subject_colors` / `reference_colors` (default: any), so the colour names
them. Relations, as far as a flat drawing allows:

    left / right    side by side, a gap between them, roughly level
    above / below   one over the other, a gap between them, roughly aligned
    on / under      touching: the subject sits on the reference's top edge / hangs under its bottom edge
    front / behind  overlapping boxes; the one drawn last (whole) is in front, the cut one is behind

WhatsUp subsets mirror the paper's option sets (Kamath et al. 2023, used by AdaptVis arXiv 2503.01773):

    controlled_a   left, right, on, under        (Controlled_Images_A)
    controlled_b   left, right, front, behind    (Controlled_Images_B)
    two_obj        left, right, above, below     (COCO_QA_two_obj)

A WhatsUp row: {"id", "subset", "image" (PIL), "objects", "boxes": {"subject", "reference"} ([x0, y0, x1,
y1] pixels), "subject", "reference", "relation", "question", "options", "answer" (capitalised gold word,
as in AdaptVis' prompt files), "caption_options" (the correct caption first, as in WhatsUp)}.
A VSR row: the same scene fields plus "caption" ("The red circle is left of the blue square."),
"label" (1 true / 0 false: a false caption names the opposite relation) and "question".
Everything is deterministic given the seed.
"""

from __future__ import annotations

import random

from PIL import Image

from common.shapes_world import COLORS, SHAPES, draw_scene

IMAGE_SIZE = 64
SUBSETS = {
    "controlled_a": ("left", "right", "on", "under"),
    "controlled_b": ("left", "right", "front", "behind"),
    "two_obj": ("left", "right", "above", "below"),
}
VSR_RELATIONS = ("left", "right", "above", "below", "front", "behind", "on", "under")
OPPOSITE = {
    "left": "right",
    "right": "left",
    "above": "below",
    "below": "above",
    "on": "under",
    "under": "on",
    "front": "behind",
    "behind": "front",
}
CAPTION = {
    "left": "to the left of",
    "right": "to the right of",
    "above": "above",
    "below": "below",
    "on": "on",
    "under": "under",
    "front": "in front of",
    "behind": "behind",
}
VSR_PHRASE = {
    "left": "left of",
    "right": "right of",
    "above": "above",
    "below": "below",
    "on": "on",
    "under": "under",
    "front": "in front of",
    "behind": "behind",
}
VSR_QUESTION = "Determine whether the description about the spatial relationship is correct or not. Answer with yes or no: "


def place_pair(
    rng: random.Random, relation: str, image_size: int = IMAGE_SIZE
) -> tuple[list[int], list[int]]:
    """Boxes (subject, reference) in pixels such that `subject <relation> reference` holds."""
    if relation not in OPPOSITE:
        raise ValueError(f"unknown relation {relation!r} (expected one of {sorted(OPPOSITE)})")
    for _ in range(10_000):
        sa, sb = rng.randint(11, 17), rng.randint(13, 20)  # subject side, reference side
        bx, by = rng.randint(0, image_size - sb - 1), rng.randint(0, image_size - sb - 1)
        centred = (sb - sa) // 2
        if relation in ("left", "right"):
            gap = rng.randint(3, 16)
            ax = bx - gap - sa if relation == "left" else bx + sb + gap
            ay = by + centred + rng.randint(-4, 4)
        elif relation in ("above", "below"):
            gap = rng.randint(3, 16)
            ay = by - gap - sa if relation == "above" else by + sb + gap
            ax = bx + centred + rng.randint(-4, 4)
        elif relation in ("on", "under"):
            ay = by - sa if relation == "on" else by + sb  # touching edges
            ax = bx + centred + rng.randint(-3, 3)
        else:  # front / behind: overlap by a third to a half of the reference, so both stay visible
            shift = rng.randint(sb // 3, sb // 2 + 2) * rng.choice((-1, 1))
            ax, ay = bx + centred + shift, by + centred + rng.randint(-sb // 4, sb // 4)
        if 0 <= ax and ax + sa < image_size and 0 <= ay and ay + sa < image_size:
            return [ax, ay, ax + sa, ay + sa], [bx, by, bx + sb, by + sb]
    raise RuntimeError(f"could not place a {relation!r} pair on a {image_size}px image")


def render(objects: list[dict], image_size: int = IMAGE_SIZE) -> Image.Image:
    """The shapes (common.shapes_world.draw_scene, on white) over the graded backdrop (white is no shape colour)."""
    shapes = draw_scene(objects, image_size, background=(255, 255, 255))
    ramp = [140 + 115 * i // (image_size - 1) for i in range(image_size)]  # 140 .. 255
    backdrop = Image.new("RGB", (image_size, image_size))
    backdrop.putdata(
        [(ramp[x], ramp[y], 200) for y in range(image_size) for x in range(image_size)]
    )
    is_shape = shapes.convert("L").point(
        lambda v: 255 if v < 255 else 0
    )  # mask of non-white pixels
    return Image.composite(shapes, backdrop, is_shape.convert("1"))


def make_scene(
    rng: random.Random,
    relation: str,
    image_size: int = IMAGE_SIZE,
    subject_colors=None,
    reference_colors=None,
) -> dict:
    """Two objects of different colours in `relation`; objects are listed in drawing order."""
    subject_box, reference_box = place_pair(rng, relation, image_size)
    color_a = rng.choice(list(subject_colors or COLORS))
    color_b = rng.choice([c for c in (reference_colors or COLORS) if c != color_a])
    subject = {"color": color_a, "shape": rng.choice(SHAPES), "box": subject_box}
    reference = {"color": color_b, "shape": rng.choice(SHAPES), "box": reference_box}
    objects = (
        [reference, subject] if relation != "behind" else [subject, reference]
    )  # last drawn = in front
    return {
        "image": render(objects, image_size),
        "objects": objects,
        "relation": relation,
        "subject": f"{color_a} {subject['shape']}",
        "reference": f"{color_b} {reference['shape']}",
        "boxes": {"subject": subject_box, "reference": reference_box},
    }


def _balanced(rng: random.Random, choices, n: int) -> list:
    """n draws that use every choice equally often (up to one), in a seeded random order."""
    picks = [choices[i % len(choices)] for i in range(n)]
    rng.shuffle(picks)
    return picks


def make_whatsup_rows(
    n: int, seed: int = 0, subset: str = "controlled_a", image_size: int = IMAGE_SIZE, **colors
) -> list[dict]:
    """`n` WhatsUp-style rows of one subset, relations balanced (colors: subject_colors=, reference_colors=)."""
    if subset not in SUBSETS:
        raise ValueError(f"unknown WhatsUp subset {subset!r} (expected one of {sorted(SUBSETS)})")
    options = SUBSETS[subset]
    rng = random.Random(f"whatsup-{subset}-{seed}")
    rows = []
    for i, rel in enumerate(_balanced(rng, options, n)):
        scene = make_scene(rng, rel, image_size, **colors)
        subj, ref = scene["subject"], scene["reference"]
        captions = [
            f"A {subj} {CAPTION[r]} a {ref}" for r in (rel, *[o for o in options if o != rel])
        ]
        question = (
            f"Where is the {subj} in relation to the {ref}? "
            f"Answer with {', '.join(options[:-1])} or {options[-1]}."
        )
        rows.append(
            {
                "id": f"{subset}-{seed}-{i}",
                "subset": subset,
                **scene,
                "question": question,
                "options": list(options),
                "answer": rel.capitalize(),
                "caption_options": captions,
            }
        )
    return rows


def make_vsr_rows(
    n: int, seed: int = 0, relations=VSR_RELATIONS, image_size: int = IMAGE_SIZE, **colors
) -> list[dict]:
    """`n` VSR-style rows: a caption about the scene, true (label 1) or naming the opposite relation (0)."""
    rng = random.Random(f"vsr-{seed}")
    pairs = _balanced(rng, [(r, label) for r in relations for label in (1, 0)], n)
    rows = []
    for i, (rel, label) in enumerate(pairs):
        scene = make_scene(rng, rel, image_size, **colors)
        said = rel if label else OPPOSITE[rel]
        caption = f"The {scene['subject']} is {VSR_PHRASE[said]} the {scene['reference']}."
        rows.append(
            {
                "id": f"vsr-{seed}-{i}",
                "subset": "vsr",
                **scene,
                "caption": caption,
                "label": label,
                "question": VSR_QUESTION + caption,
                "answer": "Yes" if label else "No",
            }
        )
    return rows
