"""Benchmark: our math grader against math-verify called directly and against plain string match.

Command (from the repository root, CPU):

    python bench/grader.py            # 5 timed runs, prints a markdown table, then serial vs pool
    python bench/grader.py --show-errors
    python bench/grader.py --only batch --workers 2   # serial `math_equal` vs `math_equal_batch`
    python bench/grader.py --only batch --responses FILE.jsonl   # your own responses (format below)

Cases: (prediction, gold, label) triples written here from templates (see `make_cases`): for each
gold answer in MATH-style LaTeX, equivalent forms a model writes (decimals for fractions, `\\dfrac`,
`a/b`, units, `^\\circ`, `\\%`, `\\$`, thousands separators, `x=`, `\\left(`, reordered expressions,
bmatrix...) labelled True, and near misses that look alike (reciprocals, 0.333 for 1/3, 12 for 1.2,
lost signs, open vs closed intervals, swapped coordinates...) labelled False. Predictions are
already-extracted answers, as the grader receives them after `extract_answer`.

Graders:
- `common.rewards.math_equal` (strip_string + fast path + math-verify in a worker process with a
  timeout);
- math-verify directly: `verify(parse(gold), parse(pred))` on the raw strings;
- math-verify on boxed raw strings: `verify(parse("\\boxed{gold}"), parse("\\boxed{pred}"))` (what
  SimpleRL does minus the normalisation);
- plain string match after `.strip()`.
Speed is answers per second over all cases, median of `--runs` runs, after one warm-up run (the
warm-up also starts our worker process). No pathological inputs here: they would only measure the
timeouts.

Serial vs pool (`--only batch`): whole model responses in the format of SimpleRL-Zoo's
`examples/simplelr_math_eval/data/eval_rm_maj_example/math_cot_100.jsonl` (one row per problem:
`question`, `gt`, `answer`, `code` = 8 responses, `pred`, `score`), written here by
`make_response_rows` (100 problems x 8 Qwen2.5-style responses ending in `\\boxed{}`: the gold
verbatim, an equivalent form, a wrong answer, no box, a cut-off generation) or read from
`--responses`. The answers are extracted once with `extract_answer`; then `[math_equal(p, g) ...]`
(serial), `math_equal_batch(..., workers=1)` (one worker process: what deduplicating repeated
pairs and pipelining alone give) and `math_equal_batch(..., workers)` are timed on the same pairs
(median of `--runs`, after a warm-up that starts the workers) and must give identical verdicts.
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
import time
from fractions import Fraction
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a plain script from anywhere

from common.rewards import (  # noqa: E402
    default_grading_workers,
    extract_answer,
    math_equal,
    math_equal_batch,
)


def make_cases() -> list[tuple[str, str, bool]]:
    """(prediction, gold, label) triples; label True = mathematically the same answer."""
    cases: list[tuple[str, str, bool]] = []

    def add(gold: str, same: list[str], different: list[str]) -> None:
        cases.extend((p, gold, True) for p in same)
        cases.extend((p, gold, False) for p in different)

    # integers: formatting variants vs digit slips, sign slips and decimal shifts
    for n in [7, 12, 48, 90, 250, 1000, 1234, 20250, -3, -42]:
        s, a = str(n), abs(n)
        same = [f"{s}.0", f"x = {s}", f"${s}$", f" {s} "]
        if a >= 1000:
            same.append(("-" if n < 0 else "") + f"{a:,}")
        if n > 0:
            same += [f"{s}\\text{{ cm}}", f"{s}^\\circ", f"\\${s}"]
        different = [str(n + 1), str(-n), f"{s[:-1]}.{s[-1]}" if a >= 10 else f"0.{a}", s + "0"]
        add(s, same, different)

    # fractions: decimals, \dfrac, a/b, unreduced, negative placement vs reciprocal, rounding, sign
    for p, q in [(1, 2), (3, 4), (1, 3), (2, 3), (5, 8), (7, 12), (9, 5), (1, 6)]:
        gold = f"\\frac{{{p}}}{{{q}}}"
        value = Fraction(p, q)
        same = [
            f"\\dfrac{{{p}}}{{{q}}}",
            f"{p}/{q}",
            f"\\frac{{{2 * p}}}{{{2 * q}}}",
            f"\\tfrac{p}{q}" if p < 10 and q < 10 else f"\\tfrac{{{p}}}{{{q}}}",
        ]
        exact_decimal = Fraction(str(float(value))) == value
        # a terminating decimal is exact; otherwise 6 places is what math-verify's float rounding
        # accepts
        same.append(str(float(value)) if exact_decimal else f"{float(value):.6f}")
        two_places = f"{float(value):.2f}"  # 0.33 for 1/3 (wrong); 0.50 would be right, so shift it
        if Fraction(two_places) == value:
            two_places = f"{float(value) + 0.01:.2f}"
        different = [
            f"\\frac{{{q}}}{{{p}}}",
            f"-\\frac{{{p}}}{{{q}}}",
            two_places,
            f"\\frac{{{p + 1}}}{{{q}}}",
        ]
        add(gold, same, different)
    add(
        "-\\frac{1}{2}",
        ["\\frac{-1}{2}", "-0.5", "-1/2", "\\left(-\\frac{1}{2}\\right)"],
        ["\\frac{1}{2}", "0.5", "-2"],
    )

    # decimals
    add("1.2", ["1.20", "\\frac{6}{5}", "6/5", "\\dfrac{12}{10}"], ["12", "0.12", "1.02", "2.1"])
    add("0.05", [".05", "\\frac{1}{20}", "0.050"], ["0.5", "5", "0.005"])

    # radicals and pi
    add(
        "2\\sqrt{3}",
        ["\\sqrt{12}", "2 \\sqrt 3", "2\\sqrt3", "\\sqrt{3}\\cdot 2"],
        ["\\sqrt{6}", "3\\sqrt{2}", "2\\sqrt{2}"],
    )
    add(
        "\\frac{\\sqrt{2}}{2}",
        ["\\frac{1}{\\sqrt{2}}", "\\dfrac{\\sqrt{2}}{2}", "\\frac{\\sqrt2}{2}"],
        ["\\sqrt{2}", "\\frac{\\sqrt{3}}{2}", "\\frac{1}{2}"],
    )
    add("3\\sqrt{5}", ["\\sqrt{45}", "3 \\sqrt{5}"], ["5\\sqrt{3}", "\\sqrt{15}"])
    add("2\\pi", ["2 \\pi", "\\pi \\cdot 2", "\\frac{4\\pi}{2}"], ["\\pi", "2", "4\\pi"])
    add(
        "\\frac{\\pi}{4}",
        ["\\dfrac{\\pi}{4}", "\\frac{1}{4}\\pi", "0.25\\pi"],
        ["\\frac{\\pi}{2}", "\\frac{4}{\\pi}", "45"],
    )
    add("6\\pi", ["6\\pi\\text{ square units}", "\\pi \\cdot 6"], ["6", "3\\pi"])

    # expressions
    add("x^2+2x+1", ["(x+1)^2", "1+2x+x^2", "x^{2}+2x+1"], ["x^2+1", "(x-1)^2", "x^2+2x"])
    add("2x-3", ["-3+2x", "2 x - 3", "y = 2x-3"], ["3-2x", "2x+3"])
    add(
        "\\frac{x+1}{2}",
        ["\\dfrac{x+1}{2}", "\\frac{x}{2}+\\frac{1}{2}", "0.5x+0.5"],
        ["\\frac{x}{2}+1", "\\frac{2}{x+1}"],
    )
    add("a^2-b^2", ["(a-b)(a+b)", "(a+b)(a-b)"], ["(a-b)^2", "a^2+b^2"])

    # intervals, tuples, sets
    add("(1, 5]", ["(1,5]", "\\left(1, 5\\right]", "( 1 , 5 ]"], ["[1,5]", "(1,5)", "[1,5)"])
    add(
        "(-\\infty, 3)",
        ["(-\\infty,3)", "\\left(-\\infty, 3\\right)"],
        ["(-\\infty,3]", "(3,\\infty)"],
    )
    add("[-2, 2]", ["[-2,2]", "\\left[-2,2\\right]"], ["(-2,2)", "[-2,2)"])
    add(
        "(3, -2)", ["(3,-2)", "\\left(3, -2\\right)", "(3.0, -2.0)"], ["(-2,3)", "(3,2)", "(-3,-2)"]
    )
    add(
        "(\\frac{1}{2}, 4)",
        ["(0.5, 4)", "\\left(\\frac12,4\\right)"],
        ["(2, 4)", "(4, \\frac{1}{2})"],
    )
    add("\\{1, 2, 3\\}", ["\\{3, 2, 1\\}", "\\{1,2,3\\}"], ["\\{1, 2\\}", "\\{1, 2, 4\\}"])

    # matrices and vectors
    add(
        "\\begin{pmatrix}1&2\\\\3&4\\end{pmatrix}",
        [
            "\\begin{bmatrix}1&2\\\\3&4\\end{bmatrix}",
            "\\begin{pmatrix} 1 & 2 \\\\ 3 & 4 \\end{pmatrix}",
        ],
        ["\\begin{pmatrix}1&3\\\\2&4\\end{pmatrix}", "\\begin{pmatrix}1&2\\\\3&5\\end{pmatrix}"],
    )
    add(
        "\\begin{pmatrix}2\\\\-1\\end{pmatrix}",
        ["\\begin{bmatrix}2\\\\-1\\end{bmatrix}", "\\begin{pmatrix} 2 \\\\ -1 \\end{pmatrix}"],
        ["\\begin{pmatrix}-1\\\\2\\end{pmatrix}", "\\begin{pmatrix}2\\\\1\\end{pmatrix}"],
    )

    # percent, degrees, money, units, thousands separators
    add(
        "25",
        ["25\\%", "25^{\\circ}", "\\$25", "25 \\text{ dollars}", "25.00"],
        ["2.5", "250", "0.25"],
    )
    add(
        "1000000",
        ["1,000,000", "1{,}000{,}000", "10^6", "1\\,000\\,000"],
        ["100000", "1,000,001", "10^7"],
    )
    add("3600", ["3,600", "3600\\text{ seconds}", "3.6 \\times 10^3"], ["360", "36"])
    add("40", ["40^\\circ", "40\\text{ km}", "x=40"], ["4", "-40", "400"])

    # multiple-choice letters and words
    add("\\text{(C)}", ["(C)", "\\text{(C)}"], ["(B)", "(D)"])
    add("\\text{Monday}", ["Monday", "\\text{Monday}"], ["Tuesday", "Sunday"])
    add("5", ["five", "\\text{five}"], ["four", "fifteen"])
    return cases


def answer_family(family: int, k: int) -> tuple[str, list[str], list[str]]:
    """(gold, equivalent forms, wrong answers) of a MATH-style problem: 13 answer shapes, each with
    a parameter k so that no two of the 100 problems share a gold answer."""
    g = 100 + 7 * k
    shapes = [
        (str(g), [f"{g}.0", f"{g} \\text{{ units}}"], [str(g + 1), str(10 * g)]),
        (
            f"\\frac{{1}}{{{k + 2}}}",
            [f"\\dfrac{{1}}{{{k + 2}}}", f"1/{k + 2}", f"\\frac{{2}}{{{2 * k + 4}}}"],
            [f"\\frac{{1}}{{{k + 3}}}", str(k + 2)],
        ),
        (str(-k - 3), [f"x = {-k - 3}", f"{-k - 3}.0"], [str(k + 3), str(-k - 4)]),
        (
            f"{k + 1}\\sqrt{{2}}",
            [f"\\sqrt{{{2 * (k + 1) ** 2}}}", f"{k + 1} \\sqrt 2"],
            [f"\\sqrt{{{k + 1}}}", f"{k + 1}\\sqrt{{3}}"],
        ),
        (f"{k + 1}\\pi", [f"\\pi \\cdot {k + 1}"], [f"{k + 2}\\pi", f"\\frac{{\\pi}}{{{k + 1}}}"]),
        (
            f"({k}, \\frac{{\\pi}}{{2}})",
            [f"\\left( {k}, \\frac{{\\pi}}{{2}} \\right)"],
            [f"(\\frac{{\\pi}}{{2}}, {k})", f"({k}, \\pi)"],
        ),
        (
            f"[-{k}, {k + 5}]",
            [f"\\left[-{k},{k + 5}\\right]"],
            [f"(-{k}, {k + 5})", f"[-{k}, {k + 5})"],
        ),
        (f"x^2+{2 * k}x+{k * k}", [f"(x+{k})^2"], [f"x^2+{k * k}", f"(x-{k})^2"]),
        (
            f"\\begin{{pmatrix}} {k} \\\\ -{k + 1} \\end{{pmatrix}}",
            [f"\\begin{{bmatrix}} {k} \\\\ -{k + 1} \\end{{bmatrix}}"],
            [f"\\begin{{pmatrix}} -{k + 1} \\\\ {k} \\end{{pmatrix}}"],
        ),
        (f"{k}.25", [f"\\frac{{{4 * k + 1}}}{{4}}", f"{k}.250"], [f"{k}.2", f"{k}25"]),
        (f"\\${k}.90", [f"{k}.90", f"{k}.9"], [f"{k}.09", f"{k}90"]),
        (f"\\text{{({'ABCDE'[k % 5]})}}", [f"({'ABCDE'[k % 5]})"], [f"({'ABCDE'[(k + 1) % 5]})"]),
        (
            f"\\frac{{{k}}}{{{k + 7}}}",
            [f"\\dfrac{{{2 * k}}}{{{2 * k + 14}}}"],
            [f"\\frac{{{k + 7}}}{{{k}}}", f"\\frac{{{k}}}{{{k + 8}}}"],
        ),
    ]
    return shapes[family]


_OPENINGS = [
    "To solve this problem, we start from the given conditions.",
    "Let's break the problem into steps.",
    "We first rewrite the expression in a simpler form.",
]
_MIDDLES = [
    "\n\n\\[\n{a} = {a}\n\\]\n\nNext, we simplify the result:\n\n\\[\n{a}\n\\]",
    "\n\n1. Compute the first part: \\( 2 \\cdot 3 = 6 \\).\n2. Substitute back: \\( {a} \\).",
]
_ENDINGS = [
    "\n\nTherefore, the final answer is \\(\\boxed{{{a}}}\\).",
    "\n\nThus, the answer is:\n\\[\n\\boxed{{{a}}}\n\\]",
    "\n\nSo the answer is {a}.",
]


def make_response_rows(
    n_problems: int = 100, n_responses: int = 8, seed: int = 0, first: int = 0
) -> list[dict]:
    """Rows in the format of SimpleRL-Zoo's `math_cot_100.jsonl` with our own problems and
    responses: per problem the gold (`gt`, `answer`), `n_responses` Qwen2.5-style responses
    (`code`), the intended answer of each (`pred`) and whether it is right by construction
    (`score`). `first` numbers the problems, so blocks with different `first` share no answer."""
    rng = random.Random(seed)
    rows = []
    for idx in range(first, first + n_problems):
        gold, same, wrong = answer_family(idx % 13, idx // 13 + 1)
        responses, preds, labels = [], [], []
        for _ in range(n_responses):
            kind = rng.choices(["gold", "same", "wrong", "cut"], weights=[5, 2, 3, 0.5])[0]
            choices = {
                "gold": gold,
                "same": rng.choice(same),
                "wrong": rng.choice(wrong),
                "cut": gold,
            }
            answer = choices[kind]
            text = rng.choice(_OPENINGS) + rng.choice(_MIDDLES).format(a=answer) * rng.randint(1, 6)
            text += rng.choice(_ENDINGS).format(a=answer)
            if kind == "cut":  # a generation stopped by the token limit inside its final box
                text = text[: text.rindex("boxed{") + 8] if "boxed{" in text else text[:-12]
            responses.append(text)
            preds.append(extract_answer(text))
            labels.append(kind in ("gold", "same"))
        rows.append(
            {
                "idx": idx,
                "question": f"Problem {idx}",
                "gt": gold,
                "answer": gold,
                "code": responses,
                "pred": preds,
                "score": labels,
            }
        )
    return rows


def _pairs(rows: list[dict]) -> tuple[list, list[str]]:
    """(extracted answers, golds) of every response of `rows`."""
    golds = [str(r.get("gt", r.get("answer"))) for r in rows for _ in r["code"]]
    return [extract_answer(text) for r in rows for text in r["code"]], golds


def bench_batch(blocks: list[list[dict]], runs: int, workers: int) -> None:
    """Serial `math_equal` vs `math_equal_batch` on the extracted answers of every response. Each
    timed pass grades a block of responses no grader has seen (sympy caches what it computed, so
    regrading the same answers would flatter whichever worker saw them before); with one block
    (`--responses`) every pass regrades it."""
    preds, golds = _pairs(blocks[0])
    serial_verdicts = [math_equal(p, g) for p, g in zip(preds, golds)]  # warm-up: starts one worker
    pool_verdicts = math_equal_batch(preds, golds, workers=workers)  # warm-up: starts the workers
    if serial_verdicts != pool_verdicts:
        bad = [i for i, (a, b) in enumerate(zip(serial_verdicts, pool_verdicts)) if a != b]
        raise SystemExit(
            f"math_equal_batch disagrees with math_equal on {len(bad)} responses, "
            f"e.g. pred={preds[bad[0]]!r} gold={golds[bad[0]]!r}"
        )
    graders = {
        "serial `math_equal`": lambda p, g: [math_equal(a, b) for a, b in zip(p, g)],
        "`math_equal_batch(workers=1)` (distinct pairs once, pipelined)": lambda p, g: (
            math_equal_batch(p, g, workers=1)
        ),
        f"`math_equal_batch(workers={workers})`": lambda p, g: math_equal_batch(
            p, g, workers=workers
        ),
    }
    speeds: dict[str, list[float]] = {name: [] for name in graders}
    fresh = iter(blocks[1:])
    for _ in range(runs):
        for name, grade in graders.items():
            p, g = _pairs(next(fresh, blocks[0]))
            start = time.perf_counter()
            grade(p, g)
            speeds[name].append(len(p) / (time.perf_counter() - start))
    accuracy = sum(serial_verdicts) / len(serial_verdicts)
    print(
        f"\n{len(preds)} responses of {len(blocks[0])} problems per pass (graded correct: "
        f"{accuracy:.1%}), median of {runs} runs, verdicts identical\n"
    )
    print("| grading | responses/s | ratio to serial |")
    print("|---|---:|---:|")
    serial = statistics.median(speeds["serial `math_equal`"])
    for name, values in speeds.items():
        speed = statistics.median(values)
        print(f"| {name} | {speed:,.0f} | {speed / serial:.2f} |")


def string_match(pred: str, gold: str) -> bool:
    return pred.strip() == gold.strip()


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument(
        "--runs", type=int, default=5, help="timed runs; the table reports the median speed"
    )
    ap.add_argument(
        "--show-errors", action="store_true", help="list every case each grader gets wrong"
    )
    ap.add_argument(
        "--only", choices=["labels", "batch"], default="", help="run one of the two benchmarks"
    )
    ap.add_argument(
        "--workers",
        type=int,
        default=0,
        help="math_equal_batch workers; 0 = default_grading_workers()",
    )
    ap.add_argument(
        "--responses",
        default="",
        help="JSONL in the math_cot_100.jsonl format (`code`, `gt`); "
        "default: 100 problems x 8 responses made by make_response_rows",
    )
    args = ap.parse_args()
    if args.only != "labels":
        blocks = [make_response_rows(first=100 * b, seed=b) for b in range(1 + 3 * args.runs)]
        if args.responses:
            lines = Path(args.responses).read_text(encoding="utf-8").splitlines()
            blocks = [[json.loads(line) for line in lines if line]]
        bench_batch(blocks, args.runs, args.workers or default_grading_workers())
        if args.only == "batch":
            return

    import logging

    from math_verify import parse, verify

    logging.getLogger("math_verify").setLevel(
        logging.ERROR
    )  # timeouts/parse failures are expected here

    def math_verify_raw(pred: str, gold: str) -> bool:
        return bool(verify(parse(gold), parse(pred)))

    def math_verify_boxed(pred: str, gold: str) -> bool:
        return bool(verify(parse("\\boxed{" + gold + "}"), parse("\\boxed{" + pred + "}")))

    graders = {
        "ours: `common.rewards.math_equal`": math_equal,
        "math-verify direct, raw strings": math_verify_raw,
        "math-verify direct, `\\boxed{}` strings": math_verify_boxed,
        "string match after `.strip()`": string_match,
    }
    cases = make_cases()
    n_true = sum(label for _, _, label in cases)
    print(
        f"{len(cases)} cases ({n_true} equivalent, {len(cases) - n_true} near misses), "
        f"median of {args.runs} runs\n"
    )
    rows = []
    for name, grade in graders.items():
        verdicts = [grade(p, g) for p, g, _ in cases]  # warm-up (starts our worker, fills caches)
        speeds = []
        for _ in range(args.runs):
            start = time.perf_counter()
            for p, g, _ in cases:
                grade(p, g)
            speeds.append(len(cases) / (time.perf_counter() - start))
        correct = sum(v == label for v, (_, _, label) in zip(verdicts, cases))
        false_accept = sum(v and not label for v, (_, _, label) in zip(verdicts, cases))
        false_reject = sum(label and not v for v, (_, _, label) in zip(verdicts, cases))
        rows.append(
            (
                name,
                100.0 * correct / len(cases),
                false_accept,
                false_reject,
                statistics.median(speeds),
            )
        )
        if args.show_errors:
            for v, (p, g, label) in zip(verdicts, cases):
                if v != label:
                    print(f"  [{name}] pred={p!r} gold={g!r} label={label} got={v}")
    print("| grader | agreement with labels | false accepts | false rejects | answers/s |")
    print("|---|---:|---:|---:|---:|")
    for name, agreement, fa, fr, speed in rows:
        print(f"| {name} | {agreement:.1f}% | {fa} | {fr} | {speed:,.0f} |")


if __name__ == "__main__":
    main()
