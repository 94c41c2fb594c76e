"""The toy world of bstar.py: add a few digits step by step, and a rule-based step checker.

A solution writes one "a + b = c" line per addition, then "The answer is N." Each step may write
its operands either way round, so a query has several distinct correct solutions (room for
exploration), and a 2-layer model learns the task imperfectly (room for improvement).
`grade_steps` is the toy's stand-in for a process reward model (wrap it in common.prm.RulePRM).
"""

from __future__ import annotations

import random
import re

HELD_OUT = 200  # a fixed held-out pool: the cached warm start is the same whatever is evaluated
EQUATION = re.compile(r"^(-?\d+) \+ (-?\d+) = (-?\d+)$")
ANSWER = re.compile(r"^The answer is (-?\d+)\.?$")


def make_toy_row(rng: random.Random, min_terms: int, max_terms: int) -> dict:
    numbers = [rng.randint(1, 9) for _ in range(rng.randint(min_terms, max_terms))]
    total, lines = numbers[0], []
    for x in numbers[1:]:
        a, b = (total, x) if rng.random() < 0.5 else (x, total)
        lines.append(f"{a} + {b} = {total + x}")
        total += x
    lines.append(f"The answer is {total}.")
    question = "Add " + " ".join(map(str, numbers))
    return {"question": question, "answer": str(total), "solution": "\n".join(lines)}


def make_toy_split(seed: int, terms: str, num_train: int, num_eval: int):
    """A held-out pool of HELD_OUT distinct questions first, then a disjoint training pool (a warm
    start trained on fresh rows can skip the held-out ones). `terms` = "min:max" numbers to add.
    Returns (training rows, the first `num_eval` held-out rows, the held-out questions)."""
    if num_eval > HELD_OUT:
        raise ValueError(f"--eval_queries {num_eval}: the toy holds out {HELD_OUT} queries")
    lo, hi = (int(x) for x in terms.split(":"))
    rng, unique, wanted = random.Random(seed + 1), {}, HELD_OUT + num_train
    for _ in range(30 * wanted):  # bounded: 3 digits give only 729 distinct questions
        row = make_toy_row(rng, lo, hi)
        unique.setdefault(row["question"], row)
        if len(unique) == wanted:
            break
    rows = list(unique.values())  # in draw order: the first HELD_OUT are held out
    train = [{**r, "id": f"train-{i}"} for i, r in enumerate(rows[HELD_OUT:])]
    evals = [{**r, "id": f"eval-{i}"} for i, r in enumerate(rows[:num_eval])]
    return train, evals, {r["question"] for r in rows[:HELD_OUT]}


def grade_steps(question: str, steps: list[str]) -> list[float]:
    """One score per step, judged locally as a PRM judges a step (the gold answer is never seen):
    "a + b = c" scores 1 if it is right and chains (the first step adds two numbers of the question,
    a later one adds a number of the question to the previous result); "The answer is N." scores 1
    if N repeats the last result; anything else scores 0."""
    numbers, previous, scores = {int(x) for x in re.findall(r"-?\d+", question)}, None, []
    for step in steps:
        equation, answer = EQUATION.match(step), ANSWER.match(step)
        if equation:
            a, b, c = map(int, equation.groups())
            if previous is None:
                chained = {a, b} <= numbers
            else:
                chained = (a == previous and b in numbers) or (b == previous and a in numbers)
            scores.append(float(a + b == c and chained))
            previous = c
        else:
            repeats = previous is not None and bool(answer) and int(answer.group(1)) == previous
            scores.append(float(repeats))
    return scores
