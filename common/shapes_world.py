"""Shapes world: a synthetic multimodal reasoning task (pillow images of coloured shapes + questions).

Used by mstar.py (self-evolving training of a VLM) and reusable by any script that needs images with known
contents (adaptvis.py: objects carry pixel boxes, `draw_scene` renders any object list, `relation` names
the spatial relation between two objects).

A scene is a `grid x grid` board (default 4 x 4 cells on a 64 x 64 image, so with the tiny VLM's 16 x 16
patches every cell is exactly one image token) holding 1-4 objects, each a (colour, shape) pair that is
unique in its scene, drawn with a random size and offset inside its cell. Questions (numeric or one-word
answers), by `kind`:

    count_all    How many shapes are there?                              -> 3
    count_color  How many red shapes are there?                          -> 2
    count_shape  How many circles are there?                             -> 1
    color_of     What color is the square?                               -> blue
    shape_of     What shape is the green one?                            -> triangle
    position     Is the red circle left or right of the blue square?     -> left     (or above/below)
    add          How many red and blue shapes are there in total?        -> 3
    subtract     How many more circles than squares are there?           -> 1

Every row also has a chain-of-thought target, one step per line, always starting with the list of shapes
in reading order (row by row, left to right), which is what makes the answer checkable step by step:

    Shapes: red circle, blue square, red triangle.
    red: 2.
    blue: 1.
    2 + 1 = 3.
    The answer is 3.

`grade_steps(row, text)` checks each line of any response against the scene (True / False / None when a
line says nothing checkable); mstar.py's rule-based PRM stand-in is built on it. Everything is
deterministic given the seed. Rows are plain dicts; `row["image"]` is a PIL image and `row_to_record`
/ `record_to_row` convert to and from JSON-safe records (the image is re-drawn from the object list).
"""

from __future__ import annotations

import random
import re

from PIL import Image, ImageDraw

COLORS = {"red": (220, 40, 40), "green": (30, 160, 60), "blue": (40, 80, 230), "yellow": (235, 200, 20)}
SHAPES = ("circle", "square", "triangle")
KINDS = ("count_all", "count_color", "count_shape", "color_of", "shape_of", "position", "add", "subtract")
ANSWER_PREFIX = "The answer is"
BACKGROUND = (255, 255, 255)


def draw_scene(objects: list[dict], image_size: int = 64, background=BACKGROUND) -> Image.Image:
    """Render objects ({"color", "shape", "box": [x0, y0, x1, y1]} in pixels) on a plain background."""
    img = Image.new("RGB", (image_size, image_size), background)
    draw = ImageDraw.Draw(img)
    for obj in objects:
        x0, y0, x1, y1 = obj["box"]
        fill = COLORS[obj["color"]]
        if obj["shape"] == "circle":
            draw.ellipse([x0, y0, x1, y1], fill=fill)
        elif obj["shape"] == "square":
            draw.rectangle([x0, y0, x1, y1], fill=fill)
        elif obj["shape"] == "triangle":
            draw.polygon([((x0 + x1) / 2, y0), (x1, y1), (x0, y1)], fill=fill)
        else:
            raise ValueError(f"unknown shape {obj['shape']!r} (expected one of {SHAPES})")
    return img


def relation(a: dict, b: dict, axis: str) -> str:
    """Where `a` is relative to `b` by box centres: axis "x" -> left/right, "y" -> above/below."""
    i = 0 if axis == "x" else 1
    ca, cb = (a["box"][i] + a["box"][i + 2]) / 2, (b["box"][i] + b["box"][i + 2]) / 2
    if ca == cb:
        raise ValueError(f"{name(a)} and {name(b)} have the same {axis} centre: no left/right or above/below")
    if axis == "x":
        return "left" if ca < cb else "right"
    return "above" if ca < cb else "below"


def name(obj: dict) -> str:
    return f"{obj['color']} {obj['shape']}"


def random_scene(rng: random.Random, image_size: int = 64, grid: int = 4, min_objects: int = 1, max_objects: int = 4) -> list[dict]:
    """1-4 objects with unique (colour, shape), one per cell, sorted in reading order (row, column)."""
    cell = image_size // grid
    n = rng.randint(min_objects, max_objects)
    kinds = rng.sample([(c, s) for c in COLORS for s in SHAPES], n)
    cells = sorted(rng.sample(range(grid * grid), n))
    objects = []
    for (color, shape), idx in zip(kinds, cells):
        row, col = divmod(idx, grid)
        size = rng.randint(int(cell * 0.55), int(cell * 0.9))
        x0 = col * cell + rng.randint(0, cell - size - 1)
        y0 = row * cell + rng.randint(0, cell - size - 1)
        objects.append({"color": color, "shape": shape, "row": row, "col": col, "box": [x0, y0, x0 + size, y0 + size]})
    return objects


def _plural(shape: str) -> str:
    return shape + "s"


def _count(objects, word: str) -> int:
    return sum(word in (o["color"], o["shape"]) for o in objects)


def make_question(objects: list[dict], kind: str, rng: random.Random) -> dict | None:
    """(question, answer, cot, meta) for `kind` on this scene, or None when the scene cannot ask it."""
    listing = f"Shapes: {', '.join(name(o) for o in objects)}."
    steps = [listing]
    meta = {"kind": kind}
    if kind == "count_all":
        answer = len(objects)
        question = "How many shapes are there?"
        steps.append(f"Count: {answer}.")
    elif kind in ("count_color", "count_shape"):
        word = rng.choice(list(COLORS) if kind == "count_color" else list(SHAPES))
        answer = _count(objects, word)
        question = f"How many {word} shapes are there?" if kind == "count_color" else f"How many {_plural(word)} are there?"
        steps.append(f"{word}: {answer}.")
        meta["words"] = [word]
    elif kind in ("color_of", "shape_of"):
        attr, other = ("shape", "color") if kind == "color_of" else ("color", "shape")
        unique = [o for o in objects if sum(p[attr] == o[attr] for p in objects) == 1]
        if not unique:
            return None
        target = rng.choice(unique)
        answer = target[other]
        if kind == "color_of":
            question = f"What color is the {target['shape']}?"
            steps.append(f"The {target['shape']} is {answer}.")
        else:
            question = f"What shape is the {target['color']} one?"
            steps.append(f"The {target['color']} one is a {answer}.")
        meta["target"] = name(target)
    elif kind == "position":
        axis = rng.choice("xy")
        key = "col" if axis == "x" else "row"
        pairs = [(a, b) for a in objects for b in objects if a[key] != b[key]]
        if not pairs:
            return None
        a, b = rng.choice(pairs)
        answer = relation(a, b, axis)
        words = "left or right of" if axis == "x" else "above or below"
        question = f"Is the {name(a)} {words} the {name(b)}?"
        unit = "column" if axis == "x" else "row"
        sign = "<" if a[key] < b[key] else ">"
        steps += [f"The {name(a)} is in {unit} {a[key] + 1}.", f"The {name(b)} is in {unit} {b[key] + 1}.",
                  f"{a[key] + 1} {sign} {b[key] + 1} so {answer}."]
        meta.update(axis=axis, first=name(a), second=name(b))
    elif kind in ("add", "subtract"):
        pool = list(COLORS) if kind == "add" else list(SHAPES)
        w1, w2 = rng.sample(pool, 2)
        c1, c2 = _count(objects, w1), _count(objects, w2)
        if kind == "subtract" and c1 < c2:
            (w1, c1), (w2, c2) = (w2, c2), (w1, c1)
        answer = c1 + c2 if kind == "add" else c1 - c2
        question = (f"How many {w1} and {w2} shapes are there in total?" if kind == "add"
                    else f"How many more {_plural(w1)} than {_plural(w2)} are there?")
        op = "+" if kind == "add" else "-"
        steps += [f"{w1}: {c1}.", f"{w2}: {c2}.", f"{c1} {op} {c2} = {answer}."]
        meta["words"] = [w1, w2]
    else:
        raise ValueError(f"unknown question kind {kind!r} (expected one of {KINDS})")
    steps.append(f"{ANSWER_PREFIX} {answer}.")
    return {"question": question, "answer": str(answer), "cot": "\n".join(steps), "meta": meta}


def make_shapes_rows(n: int, seed: int = 0, kinds=KINDS, image_size: int = 64, grid: int = 4,
                     min_objects: int = 1, max_objects: int = 4) -> list[dict]:
    """n rows {"id", "image" (PIL), "question", "answer", "cot", "kind", "objects", "meta"}; kinds cycle."""
    for k in kinds:
        if k not in KINDS:
            raise ValueError(f"unknown question kind {k!r} (expected some of {KINDS})")
    if not 1 <= min_objects <= max_objects <= min(grid * grid, len(COLORS) * len(SHAPES)):
        raise ValueError(f"need 1 <= min_objects <= max_objects <= {min(grid * grid, len(COLORS) * len(SHAPES))}")
    rng = random.Random(seed)
    rows = []
    while len(rows) < n:
        kind = kinds[len(rows) % len(kinds)]
        objects = random_scene(rng, image_size, grid, min_objects, max_objects)
        qa = make_question(objects, kind, rng)
        if qa is None:  # e.g. "What color is the square?" with two squares: draw another scene
            continue
        rows.append({"id": f"shapes-{seed}-{len(rows)}", "kind": kind, "objects": objects,
                     "image": draw_scene(objects, image_size), "image_size": image_size, **qa})
    return rows


def row_to_record(row: dict) -> dict:
    """JSON-safe copy of a row (no PIL image: `record_to_row` re-draws it from the objects)."""
    return {k: v for k, v in row.items() if k != "image"}


def record_to_row(record: dict) -> dict:
    return {**record, "image": draw_scene(record["objects"], record.get("image_size", 64))}


# ----------------------------------------------------------------------------------------------------
# checking answers and steps


def extract_answer(text) -> str | None:
    """The text after the last 'The answer is' up to the end of that line/sentence, lower-cased."""
    if not isinstance(text, str) or ANSWER_PREFIX not in text:
        return None
    tail = text.rsplit(ANSWER_PREFIX, 1)[1].strip().split("\n")[0]
    tail = tail.strip().rstrip(".").strip().lower()
    return tail or None


def is_correct(text, answer: str) -> bool:
    pred = extract_answer(text)
    return pred is not None and pred == str(answer).strip().lower()


_SHAPES_RE = re.compile(r"^Shapes: (.*)\.$")
_COUNT_RE = re.compile(r"^(\w+): (-?\d+)\.$")
_COLOR_OF_RE = re.compile(r"^The (\w+) is (\w+)\.$")
_SHAPE_OF_RE = re.compile(r"^The (\w+) one is a (\w+)\.$")
_PLACE_RE = re.compile(r"^The (\w+ \w+) is in (column|row) (\d+)\.$")
_COMPARE_RE = re.compile(r"^(\d+) ([<>=]) (\d+) so (\w+)\.$")
_ARITH_RE = re.compile(r"^(-?\d+) ([+-]) (-?\d+) = (-?\d+)\.$")


def grade_steps(row: dict, text: str) -> list[bool | None]:
    """One verdict per non-empty line of `text`: True (agrees with the scene), False, None (nothing to check)."""
    objects = row["objects"]
    by_name = {name(o): o for o in objects}
    verdicts: list[bool | None] = []
    for line in (text or "").split("\n"):
        line = line.strip()
        if not line:
            continue
        verdict: bool | None = None
        if line.startswith(ANSWER_PREFIX):
            verdict = is_correct(line, row["answer"])
        elif m := _SHAPES_RE.match(line):
            verdict = [s.strip() for s in m.group(1).split(",")] == [name(o) for o in objects]
        elif m := _COUNT_RE.match(line):
            word, value = m.group(1).lower(), int(m.group(2))
            truth = len(objects) if word == "count" else _count(objects, word) if word in COLORS or word in SHAPES else None
            verdict = None if truth is None else value == truth
        elif m := _SHAPE_OF_RE.match(line):
            hits = [o for o in objects if o["color"] == m.group(1)]
            verdict = len(hits) == 1 and hits[0]["shape"] == m.group(2)
        elif m := _COLOR_OF_RE.match(line):
            hits = [o for o in objects if o["shape"] == m.group(1)]
            verdict = len(hits) == 1 and hits[0]["color"] == m.group(2)
        elif m := _PLACE_RE.match(line):
            obj = by_name.get(m.group(1))
            verdict = obj is not None and obj["col" if m.group(2) == "column" else "row"] + 1 == int(m.group(3))
        elif m := _COMPARE_RE.match(line):
            a, sign, b, word = int(m.group(1)), m.group(2), int(m.group(3)), m.group(4)
            axis = row.get("meta", {}).get("axis", "x")
            expected = {"<": "left" if axis == "x" else "above", ">": "right" if axis == "x" else "below"}.get(sign)
            verdict = {"<": a < b, ">": a > b, "=": a == b}[sign] and word == expected
        elif m := _ARITH_RE.match(line):
            a, op, b, c = int(m.group(1)), m.group(2), int(m.group(3)), int(m.group(4))
            verdict = (a + b if op == "+" else a - b) == c
        verdicts.append(verdict)
    return verdicts
