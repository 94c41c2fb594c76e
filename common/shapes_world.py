"""Shapes world: a synthetic multimodal reasoning task (pillow images of coloured shapes +
questions).

Used by mstar.py (self-evolving training of a VLM) and reusable by any script that needs images with
known contents (adaptvis.py: objects carry pixel boxes, `draw_scene` renders any object list,
`relation` names the spatial relation between two objects).

A scene is a `grid x grid` board (default 2 x 2 cells on a 64 x 64 image, so with the tiny VLM's 16
x 16 patches every cell is 2 x 2 image tokens) holding 1-3 objects, each a (colour, shape) pair that
is unique in its scene, drawn with a random size and offset inside its cell. Questions (numeric or
one-word answers), by `kind`:

    count_all    How many shapes are there?                              -> 3
    count_color  How many red shapes are there?                          -> 2
    count_shape  How many circles are there?                             -> 1
    color_of     What color is the square?                               -> blue
    shape_of     What shape is the green one?                            -> triangle
    position     Is the red circle left or right of the blue square?     -> left     (or
    above/below) add          How many red and blue shapes are there in total?        -> 3
    subtract     How many more circles than squares are there?           -> 1

Every row also has a chain-of-thought target, one step per line, always starting with a scan of the
cells in reading order (row by row, left to right), which is what makes the answer checkable step by
step:

    Shapes: 1 red circle, 2 empty, 3 blue square, 4 red triangle.
    red: 2.
    blue: 1.
    2 + 1 = 3.
    The answer is 3.

Two simpler scene types exist because the tiny 2-layer VLM of the CPU defaults learns whole-image
reads (one colour, one shape, where it is) within ~100 SFT steps, but naming what sits in one
particular cell, or counting, takes it many hundreds (measured):

`scene="single"`: one large shape in one of the 4 cells.

    color     What color is the shape?                                         -> red
    shape     What shape is it?                                                -> triangle
    position  Is the shape on the left or the right? / at the top or the bottom? -> left
    sides     How many sides does the shape have?                              -> 3
    times     How many sides do 3 of these shapes have in total?               -> 9
    plus      What is the number of sides of the shape plus 2?                 -> 5
    letters   How many letters does the name of its color have?                -> 3   (+
    letters_plus, letters_times)

    I see a red triangle at the top left.
    A triangle has 3 sides.
    3 x 3 = 9.
    The answer is 9.

`scene="group"`: 1-4 identical shapes; kinds count, color, shape, sides (in total), add, subtract
("How many shapes would there be if 2 more were added?"); first step "I see 3 red triangles.".

`grade_steps(row, text)` checks each line of any response against the scene (True / False / None
when a line says nothing checkable); mstar.py's rule-based PRM stand-in is built on it. Everything
is deterministic given the seed. Rows are plain dicts; `row["image"]` is a PIL image and
`row_to_record` / `record_to_row` convert to and from JSON-safe records (the image is re-drawn from
the object list).
"""

from __future__ import annotations

import hashlib
import random
import re

from PIL import Image, ImageDraw

from common.rewards import extract_answer

COLORS = {
    "red": (220, 40, 40),
    "green": (30, 160, 60),
    "blue": (40, 80, 230),
    "yellow": (235, 200, 20),
}
SHAPES = ("circle", "square", "triangle")
KINDS = (
    "count_all",
    "count_color",
    "count_shape",
    "color_of",
    "shape_of",
    "position",
    "add",
    "subtract",
)
GROUP_KINDS = ("count", "color", "shape", "sides", "add", "subtract")
SINGLE_KINDS = (
    "color",
    "shape",
    "position",
    "sides",
    "times",
    "plus",
    "letters",
    "letters_plus",
    "letters_times",
)
SIDES = {"circle": 0, "square": 4, "triangle": 3}
ANSWER_PREFIX = "The answer is"
BACKGROUND = (255, 255, 255)


def draw_scene(objects: list[dict], image_size: int = 64, background=BACKGROUND) -> Image.Image:
    """Render objects ({"color", "shape", "box": [x0, y0, x1, y1]} in pixels) on a plain
    background."""
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
        raise ValueError(
            f"{name(a)} and {name(b)} have the same {axis} centre: no left/right or above/below"
        )
    if axis == "x":
        return "left" if ca < cb else "right"
    return "above" if ca < cb else "below"


def name(obj: dict) -> str:
    return f"{obj['color']} {obj['shape']}"


def random_scene(
    rng: random.Random,
    image_size: int = 64,
    grid: int = 2,
    min_objects: int = 1,
    max_objects: int = 3,
    same_kind: bool = False,
    fill=(0.55, 0.9),
) -> list[dict]:
    """Objects with unique (colour, shape) (or all identical with `same_kind`), one per cell, in
    reading order."""
    cell = image_size // grid
    n = rng.randint(min_objects, max_objects)
    kinds = (
        [rng.choice([(c, s) for c in COLORS for s in SHAPES])] * n
        if same_kind
        else rng.sample([(c, s) for c in COLORS for s in SHAPES], n)
    )
    cells = sorted(rng.sample(range(grid * grid), n))
    objects = []
    for (color, shape), idx in zip(kinds, cells):
        row, col = divmod(idx, grid)
        size = rng.randint(int(cell * fill[0]), int(cell * fill[1]))
        x0 = col * cell + rng.randint(0, cell - size - 1)
        y0 = row * cell + rng.randint(0, cell - size - 1)
        objects.append(
            {
                "color": color,
                "shape": shape,
                "row": row,
                "col": col,
                "box": [x0, y0, x0 + size, y0 + size],
            }
        )
    return objects


def _plural(shape: str) -> str:
    return shape + "s"


def _count(objects, word: str) -> int:
    return sum(word in (o["color"], o["shape"]) for o in objects)


def make_question(
    objects: list[dict], kind: str, rng: random.Random, grid: int = 2, scene: str = "mixed"
) -> dict | None:
    """{"question", "answer", "cot", "meta"} for `kind` on this scene, or None when the scene cannot
    ask it."""
    meta: dict = {"kind": kind, "grid": grid}
    if scene == "single":
        meta["scene"] = "single"
        if kind == "position":
            meta["axis"] = rng.choice("xy")
        elif kind in ("times", "plus", "letters_plus", "letters_times"):
            meta["k"] = (
                rng.randint(2, 3) if kind.endswith("times") else rng.randint(1, 2)
            )  # few facts: a tiny model can learn them
    elif scene == "group":
        meta["scene"] = "group"
        if kind == "add":
            meta["k"] = rng.randint(1, 3)
        elif kind == "subtract":
            meta["k"] = rng.randint(1, len(objects))
    elif kind in ("count_color", "count_shape"):
        meta["words"] = [rng.choice(list(COLORS) if kind == "count_color" else list(SHAPES))]
    elif kind in ("color_of", "shape_of"):
        attr = "shape" if kind == "color_of" else "color"
        unique = [o for o in objects if sum(p[attr] == o[attr] for p in objects) == 1]
        if not unique:
            return None
        meta["target"] = rng.choice(unique)[attr]
    elif kind == "position":
        meta["axis"] = rng.choice("xy")
        key = "col" if meta["axis"] == "x" else "row"
        pairs = [(a, b) for a in objects for b in objects if a[key] != b[key]]
        if not pairs:
            return None
        a, b = rng.choice(pairs)
        meta.update(first=name(a), second=name(b))
    elif kind in ("add", "subtract"):
        w1, w2 = rng.sample(list(COLORS) if kind == "add" else list(SHAPES), 2)
        if kind == "subtract" and _count(objects, w1) < _count(objects, w2):
            w1, w2 = w2, w1  # "how many more" questions have non-negative answers
        meta["words"] = [w1, w2]
    elif kind != "count_all":
        raise ValueError(
            f"unknown question kind {kind!r} (expected one of {KINDS} or {GROUP_KINDS})"
        )
    solved = solve(objects, meta)
    if solved is None:
        return None
    answer, steps = solved
    return {
        "question": question_text(meta),
        "answer": answer,
        "cot": "\n".join(steps),
        "meta": meta,
    }


def question_text(meta: dict) -> str:
    kind, words = meta["kind"], meta.get("words", [])
    if meta.get("scene") == "single":
        return {
            "color": "What color is the shape?",
            "shape": "What shape is it?",
            "position": "Is the shape on the left or the right?"
            if meta.get("axis") == "x"
            else "Is the shape at the top or the bottom?",
            "sides": "How many sides does the shape have?",
            "times": f"How many sides do {meta.get('k')} of these shapes have in total?",
            "plus": f"What is the number of sides of the shape plus {meta.get('k')}?",
            "letters": "How many letters does the name of its color have?",
            "letters_plus": "What is the number of letters in the name of its color plus "
            f"{meta.get('k')}?",
            "letters_times": "What is the number of letters in the name of its color times "
            f"{meta.get('k')}?",
        }[kind]
    if meta.get("scene") == "group":
        return {
            "count": "How many shapes are there?",
            "color": "What color are the shapes?",
            "shape": "What shape are they?",
            "sides": "How many sides do the shapes have in total?",
            "add": f"How many shapes would there be if {meta.get('k')} more were added?",
            "subtract": f"How many shapes would be left if {meta.get('k')} were taken away?",
        }[kind]
    if kind == "count_all":
        return "How many shapes are there?"
    if kind == "count_color":
        return f"How many {words[0]} shapes are there?"
    if kind == "count_shape":
        return f"How many {_plural(words[0])} are there?"
    if kind == "color_of":
        return f"What color is the {meta['target']}?"
    if kind == "shape_of":
        return f"What shape is the {meta['target']} one?"
    if kind == "position":
        relation = "left or right of" if meta["axis"] == "x" else "above or below"
        return f"Is the {meta['first']} {relation} the {meta['second']}?"
    if kind == "add":
        return f"How many {words[0]} and {words[1]} shapes are there in total?"
    return f"How many more {_plural(words[0])} than {_plural(words[1])} are there?"


def solve(
    objects: list[dict], meta: dict, sides: dict | None = None, letters: dict | None = None
) -> tuple[str, list[str]] | None:
    """(answer, CoT steps) of the question `meta` on the scene `objects`; None if the scene cannot
    answer it.

    Solving a *misperceived* scene (`misperceive`) for the real question, or with a wrong `sides`
    table (a misconception such as "a triangle has 4 sides"), or a wrong `letters` table, gives a
    plausible wrong CoT."""
    kind, words = meta["kind"], meta.get("words", [])
    if meta.get("scene") == "group":
        return _solve_group(objects, meta, sides or SIDES)
    if meta.get("scene") == "single":
        return _solve_single(objects, meta, sides or SIDES, letters or {c: len(c) for c in COLORS})
    steps = [scan(objects, meta.get("grid", 2))]
    if kind == "count_all":
        answer = len(objects)
        steps.append(f"Count: {answer}.")
    elif kind in ("count_color", "count_shape"):
        answer = _count(objects, words[0])
        steps.append(f"{words[0]}: {answer}.")
    elif kind in ("color_of", "shape_of"):
        attr, other = ("shape", "color") if kind == "color_of" else ("color", "shape")
        hits = [o for o in objects if o[attr] == meta["target"]]
        if len(hits) != 1:
            return None
        answer = hits[0][other]
        steps.append(
            f"The {meta['target']} is {answer}."
            if kind == "color_of"
            else f"The {meta['target']} one is a {answer}."
        )
    elif kind == "position":
        by_name = {name(o): o for o in objects}
        a, b = by_name.get(meta["first"]), by_name.get(meta["second"])
        key, unit = ("col", "column") if meta["axis"] == "x" else ("row", "row")
        if a is None or b is None or a[key] == b[key]:
            return None
        answer = relation(a, b, meta["axis"])
        steps += [
            f"The {name(a)} is in {unit} {a[key] + 1}.",
            f"The {name(b)} is in {unit} {b[key] + 1}.",
            f"{a[key] + 1} {'<' if a[key] < b[key] else '>'} {b[key] + 1} so {answer}.",
        ]
    else:  # add / subtract
        c1, c2 = _count(objects, words[0]), _count(objects, words[1])
        answer = c1 + c2 if kind == "add" else c1 - c2
        steps += [
            f"{words[0]}: {c1}.",
            f"{words[1]}: {c2}.",
            f"{c1} {'+' if kind == 'add' else '-'} {c2} = {answer}.",
        ]
    steps.append(f"{ANSWER_PREFIX} {answer}.")
    return str(answer), steps


def group_view(objects: list[dict]) -> str:
    """First CoT step of a group scene: "I see 3 red triangles." (objects assumed identical)."""
    n, first = len(objects), objects[0]
    return f"I see {n} {first['color']} {first['shape']}{'s' if n != 1 else ''}."


def single_view(obj: dict, grid: int = 2) -> str:
    """First CoT step of a single-shape scene: "I see a red triangle at the top left." (2 x 2 grid
    words)."""
    row = "top" if obj["row"] < grid / 2 else "bottom"
    col = "left" if obj["col"] < grid / 2 else "right"
    return f"I see a {obj['color']} {obj['shape']} at the {row} {col}."


def _solve_single(
    objects: list[dict], meta: dict, table: dict, letters: dict
) -> tuple[str, list[str]] | None:
    if len(objects) != 1:
        return None
    obj, kind, k = objects[0], meta["kind"], meta.get("k")
    grid = meta.get("grid", 2)
    steps = [single_view(obj, grid)]
    sides = table[obj["shape"]]
    if kind == "color":
        answer = obj["color"]
    elif kind == "shape":
        answer = obj["shape"]
    elif kind == "position":
        answer = (
            single_view(obj, grid)
            .split(" at the ")[1]
            .rstrip(".")
            .split()[1 if meta["axis"] == "x" else 0]
        )
    elif kind.startswith("letters"):
        answer = letters[obj["color"]]
        steps.append(f"The word {obj['color']} has {answer} letters.")
        if kind != "letters":
            op, value = ("+", answer + k) if kind == "letters_plus" else ("x", answer * k)
            steps.append(f"{answer} {op} {k} = {value}.")
            answer = value
    else:
        steps.append(f"A {obj['shape']} has {sides} sides.")
        answer = sides
        if kind == "times":
            answer = k * sides
            steps.append(f"{k} x {sides} = {answer}.")
        elif kind == "plus":
            answer = sides + k
            steps.append(f"{sides} + {k} = {answer}.")
    steps.append(f"{ANSWER_PREFIX} {answer}.")
    return str(answer), steps


def _solve_group(objects: list[dict], meta: dict, table: dict) -> tuple[str, list[str]] | None:
    if not objects or len({(o["color"], o["shape"]) for o in objects}) != 1:
        return None
    n, color, shape = len(objects), objects[0]["color"], objects[0]["shape"]
    steps = [group_view(objects)]
    kind, k = meta["kind"], meta.get("k")
    if kind == "count":
        answer = n
    elif kind == "color":
        answer = color
    elif kind == "shape":
        answer = shape
    elif kind == "sides":
        answer = n * table[shape]
        steps += [f"A {shape} has {table[shape]} sides.", f"{n} x {table[shape]} = {answer}."]
    elif kind == "add":
        answer = n + k
        steps.append(f"{n} + {k} = {answer}.")
    else:
        answer = n - k
        steps.append(f"{n} - {k} = {answer}.")
    steps.append(f"{ANSWER_PREFIX} {answer}.")
    return str(answer), steps


def scan(objects: list[dict], grid: int) -> str:
    """The first CoT step: every cell in reading order, numbered, "empty" where nothing is drawn.

    Numbered fixed slots (rather than a list of the objects only) let a tiny model read each cell
    with one position-keyed look-up instead of having to find "the next object after the last one I
    named"."""
    by_cell = {o["row"] * grid + o["col"]: name(o) for o in objects}
    return (
        "Shapes: "
        + ", ".join(f"{i + 1} {by_cell.get(i, 'empty')}" for i in range(grid * grid))
        + "."
    )


def misperceive(objects: list[dict], rng: random.Random) -> list[dict]:
    """The scene as a careless viewer sees it: one object's colour or shape changed (kept unique),
    or one object missed. Used to make noisy demonstrations and plausible wrong chains of
    thought."""
    objects = [dict(o) for o in objects]
    if (
        len(objects) > 1 and len({(o["color"], o["shape"]) for o in objects}) == 1
    ):  # a group: miscount or mislabel all
        what = rng.choice(("count", "color", "shape"))
        if what == "count":
            n = len(objects) + rng.choice((-1, 1))
            return [dict(objects[0]) for _ in range(max(1, n))]
        new = rng.choice(
            [v for v in (COLORS if what == "color" else SHAPES) if v != objects[0][what]]
        )
        return [{**o, what: new} for o in objects]
    i = rng.randrange(len(objects))
    if len(objects) > 1 and rng.random() < 0.25:
        return objects[:i] + objects[i + 1 :]
    taken = {(o["color"], o["shape"]) for o in objects}
    attr = rng.choice(("color", "shape"))
    options = [
        v
        for v in (COLORS if attr == "color" else SHAPES)
        if v != objects[i][attr]
        and ((v, objects[i]["shape"]) if attr == "color" else (objects[i]["color"], v)) not in taken
    ]
    if options:
        objects[i][attr] = rng.choice(options)
    return objects


def problem_key(objects: list[dict], question: str) -> str:
    """What makes two rows the same problem (cells and contents + question; sizes and offsets
    ignored)."""
    return question + "|" + ";".join(f"{o['row']},{o['col']},{name(o)}" for o in objects)


def in_eval_split(objects: list[dict], question: str, eval_share: int = 5) -> bool:
    """Stable split of the whole problem space: 1 problem in `eval_share` belongs to evaluation,
    whatever the seed, so training rows (and a cached warm-started model) can never contain an
    evaluation problem."""
    digest = hashlib.sha1(problem_key(objects, question).encode()).digest()
    return digest[0] % eval_share == 0


def make_shapes_rows(
    n: int,
    seed: int = 0,
    kinds=None,
    image_size: int = 64,
    grid: int = 2,
    min_objects: int = 1,
    max_objects: int | None = None,
    split: str | None = None,
    scene: str = "mixed",
) -> list[dict]:
    """n rows {"id", "image" (PIL), "question", "answer", "cot", "kind", "objects", "meta"}; kinds
    cycle.

    scene: "mixed" (distinct shapes, `KINDS`, 1-3 objects), "group" (identical shapes,
    `GROUP_KINDS`, 1-4 objects) or "single" (one large shape, `SINGLE_KINDS`).
    split: None (any problem), "train" or "eval" (disjoint parts of the problem space, see
    `in_eval_split`)."""
    scene_kinds = {"mixed": KINDS, "group": GROUP_KINDS, "single": SINGLE_KINDS}
    if scene not in scene_kinds:
        raise ValueError(f"scene must be one of {sorted(scene_kinds)}, got {scene!r}")
    kinds = kinds or scene_kinds[scene]
    if scene == "single":
        min_objects = max_objects = 1
    max_objects = max_objects or (grid * grid if scene == "group" else 3)
    if split not in (None, "train", "eval"):
        raise ValueError(f"split must be None, 'train' or 'eval', got {split!r}")
    for k in kinds:
        if k not in scene_kinds[scene]:
            raise ValueError(
                f"unknown question kind {k!r} for scene {scene!r} (expected some of "
                f"{scene_kinds[scene]})"
            )
    if not 1 <= min_objects <= max_objects <= min(grid * grid, len(COLORS) * len(SHAPES)):
        raise ValueError(
            f"need 1 <= min_objects <= max_objects <= {min(grid * grid, len(COLORS) * len(SHAPES))}"
        )
    rng = random.Random(seed)
    rows, misses = [], 0
    while len(rows) < n:
        kind = kinds[len(rows) % len(kinds)]
        objects = random_scene(
            rng,
            image_size,
            grid,
            min_objects,
            max_objects,
            same_kind=scene == "group",
            fill=(0.7, 0.97) if scene == "single" else (0.55, 0.9),
        )
        qa = make_question(objects, kind, rng, grid, scene)
        if qa is None or (
            split is not None and in_eval_split(objects, qa["question"]) != (split == "eval")
        ):
            misses += 1  # e.g. "What color is the square?" with two squares: draw another scene
            if misses > 1000 + 100 * n:
                raise ValueError(
                    f"cannot make {kind!r} questions with {min_objects}-{max_objects} objects on a "
                    f"{grid}x{grid} grid"
                )
            continue
        rows.append(
            {
                "id": f"shapes-{seed}-{len(rows)}",
                "kind": kind,
                "objects": objects,
                "image": draw_scene(objects, image_size),
                "image_size": image_size,
                **qa,
            }
        )
    return rows


def row_to_record(row: dict) -> dict:
    """JSON-safe copy of a row (no PIL image: `record_to_row` re-draws it from the objects)."""
    return {k: v for k, v in row.items() if k != "image"}


def record_to_row(record: dict) -> dict:
    return {**record, "image": draw_scene(record["objects"], record.get("image_size", 64))}


# --------------------------------------------------------------------------------------------------
# checking answers and steps


def is_correct(text, answer: str) -> bool:
    """Does the text's final answer (common.rewards.extract_answer: after the last 'The answer is')
    equal `answer`?"""
    pred = extract_answer(text)
    return pred is not None and pred.strip().lower() == str(answer).strip().lower()


_SHAPES_RE = re.compile(r"^Shapes: (.*)\.$")
_COUNT_RE = re.compile(r"^(\w+): (-?\d+)\.$")
_COLOR_OF_RE = re.compile(r"^The (\w+) is (\w+)\.$")
_SHAPE_OF_RE = re.compile(r"^The (\w+) one is a (\w+)\.$")
_PLACE_RE = re.compile(r"^The (\w+ \w+) is in (column|row) (\d+)\.$")
_COMPARE_RE = re.compile(r"^(\d+) ([<>=]) (\d+) so (\w+)\.$")
_ARITH_RE = re.compile(r"^(-?\d+) ([+x-]) (-?\d+) = (-?\d+)\.$")
_GROUP_RE = re.compile(r"^I see (\d+) (\w+) (\w+?)s?\.$")
_SINGLE_RE = re.compile(r"^I see an? (\w+) (\w+) at the (\w+) (\w+)\.$")
_LETTERS_RE = re.compile(r"^The word (\w+) has (\d+) letters?\.$")
_SIDES_RE = re.compile(r"^An? (\w+) has (\d+) sides?\.$")


def grade_steps(row: dict, text: str) -> list[bool | None]:
    """One verdict per non-empty line of `text`: True (agrees with the scene), False, None (nothing
    to check)."""
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
        elif m := _GROUP_RE.match(line):
            verdict = len({name(o) for o in objects}) == 1 and line == group_view(objects)
        elif m := _SINGLE_RE.match(line):
            verdict = len(objects) == 1 and line == single_view(
                objects[0], row.get("meta", {}).get("grid", 2)
            )
        elif m := _LETTERS_RE.match(line):
            verdict = len(m.group(1)) == int(m.group(2))
        elif m := _SIDES_RE.match(line):
            verdict = SIDES.get(m.group(1)) == int(m.group(2))
        elif m := _SHAPES_RE.match(line):
            verdict = line == scan(objects, row.get("meta", {}).get("grid", 2))
        elif m := _COUNT_RE.match(line):
            word, value = m.group(1).lower(), int(m.group(2))
            truth = (
                len(objects)
                if word == "count"
                else _count(objects, word)
                if word in COLORS or word in SHAPES
                else None
            )
            verdict = None if truth is None else value == truth
        elif m := _SHAPE_OF_RE.match(line):
            hits = [o for o in objects if o["color"] == m.group(1)]
            verdict = len(hits) == 1 and hits[0]["shape"] == m.group(2)
        elif m := _COLOR_OF_RE.match(line):
            hits = [o for o in objects if o["shape"] == m.group(1)]
            verdict = len(hits) == 1 and hits[0]["color"] == m.group(2)
        elif m := _PLACE_RE.match(line):
            obj = by_name.get(m.group(1))
            verdict = obj is not None and obj[
                "col" if m.group(2) == "column" else "row"
            ] + 1 == int(m.group(3))
        elif m := _COMPARE_RE.match(line):
            a, sign, b, word = int(m.group(1)), m.group(2), int(m.group(3)), m.group(4)
            axis = row.get("meta", {}).get("axis", "x")
            expected = {
                "<": "left" if axis == "x" else "above",
                ">": "right" if axis == "x" else "below",
            }.get(sign)
            verdict = {"<": a < b, ">": a > b, "=": a == b}[sign] and word == expected
        elif m := _ARITH_RE.match(line):
            a, op, b, c = int(m.group(1)), m.group(2), int(m.group(3)), int(m.group(4))
            verdict = {"+": a + b, "-": a - b, "x": a * b}[op] == c
        verdicts.append(verdict)
    return verdicts


# --------------------------------------------------------------------------------------------------
# a toy "pretrained vision encoder" for the tiny LLaVA of common/models.py


def pretrain_tiny_vision(
    model, processor, steps: int, seed: int, grid: int = 2, batch_size: int = 64
):
    """Stand-in for a pretrained vision encoder (real VLMs start from CLIP/SigLIP): the randomly
    initialised vision tower + projector of a LLaVA-style model learn, through a throw-away linear
    probe, the colour and shape drawn in each patch's cell and the cell's index. Without it the tiny
    LLaVA ignored its image for hundreds of SFT steps (measured: the colour of a single shape stayed
    at chance after 80 steps; 40 with it). Uses training-split scenes only."""
    import torch
    from tqdm import tqdm

    colors, shapes = list(COLORS), list(SHAPES)
    sizes = [
        len(colors) + 1,
        len(shapes) + 1,
        grid * grid,
    ]  # colour or empty, shape or empty, cell index
    probe = torch.nn.Linear(model.config.text_config.hidden_size, sum(sizes))
    params = [
        *model.model.vision_tower.parameters(),
        *model.model.multi_modal_projector.parameters(),
        *probe.parameters(),
    ]
    optimizer = torch.optim.AdamW(params, lr=2e-3)
    rows = make_shapes_rows(steps * batch_size, seed=seed, grid=grid, split="train")
    for step in tqdm(range(steps), desc="toy vision pre-training (cached)"):
        batch = rows[step * batch_size : (step + 1) * batch_size]
        pixel_values = processor.image_processor([r["image"] for r in batch], return_tensors="pt")[
            "pixel_values"
        ]
        feats = torch.stack(
            list(model.model.get_image_features(pixel_values=pixel_values).pooler_output)
        )  # (B, P, D)
        side = int(feats.shape[1] ** 0.5)  # patches per image side
        labels = torch.zeros(len(batch), side * side, 3, dtype=torch.long)  # (B, P, 3)
        for b, r in enumerate(batch):
            cells = {(o["row"], o["col"]): o for o in r["objects"]}
            for p in range(side * side):
                cell = (p // side) * grid // side, (p % side) * grid // side
                o = cells.get(cell)
                labels[b, p] = torch.tensor(
                    [
                        colors.index(o["color"]) if o else len(colors),
                        shapes.index(o["shape"]) if o else len(shapes),
                        cell[0] * grid + cell[1],
                    ]
                )
        logits = probe(feats).split(sizes, dim=-1)  # 3 x (B, P, C_i)
        loss = sum(
            torch.nn.functional.cross_entropy(lg.flatten(0, 1), labels[..., i].flatten())
            for i, lg in enumerate(logits)
        )
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
