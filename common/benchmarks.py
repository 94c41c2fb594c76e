"""Math benchmarks and training files in their release formats, as rows with `question` + `answer`.

`load_benchmark(name, source)` reads the six benchmarks SimpleRL-Zoo evaluates on (arXiv 2503.18892,
Table 1): gsm8k, math500, minerva_math, olympiadbench, aime24, amc23. `source` is a file, a folder
laid out like SimpleRL-Zoo's eval data (`examples/simplelr_math_eval/data/<name>/test.jsonl` in
hkust-nlp/simpleRL-reason), a folder holding the files, or a hub id; empty = the hub copy in
`HUB_SOURCES`. `load_math_rows(source)` reads training files: SimpleRL-Zoo-Data parquet tiers (verl
rows: `prompt` + `reward_model.ground_truth`), MATH (`problem` + `solution`), GSM8K ("#### N").

Each benchmark stores its gold answer differently; the rules follow Qwen2.5-Math's
`parse_ground_truth` (simpleRL-reason: examples/simplelr_math_eval/parser.py), which SimpleRL-Zoo's
harness uses:
- gsm8k: `answer` is the worked solution; the gold is the text after "####" ("1,000" -> "1000").
- math500: the `answer` field (equal to the last `\\boxed{}` of `solution`; MATH train rows have
  only the solution, so the box is the fallback).
- minerva_math: only inside the `solution`'s last `\\boxed{}`.
- olympiadbench: `final_answer`, a list (or its Python-list string) of `$...$` strings; several
  answers sit in one string as `$a$,$b$`. Qwen takes element 0 and strips `$`; we also join any
  further elements, so a list of several answers gives "a, b" instead of its first item only.
- aime24: `answer` (an integer string).
- amc23: `answer` is a float (36.0): an integral value becomes "36" (graded equal to 36.0 anyway).
The question is `question`, else `problem` (Qwen's `parse_question` order; OlympiadBench's `context`
is not prepended there either). Every row keeps its source fields (GSM8K's worked solution moves to
`solution`) plus `benchmark`. A row without a gold answer raises DataError naming file, line, field.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path
from typing import Any

from common.data import FILE_SUFFIXES, DataError, load_located_rows
from common.rewards import last_boxed

SIMPLERL_SUITE = ("gsm8k", "math500", "minerva_math", "olympiadbench", "aime24", "amc23")

# Hub copies used when no source is given: (hub id, config, split). openai/gsm8k,
# HuggingFaceH4/MATH-500, Hothan/OlympiadBench (the benchmark's own release; OE_TO_maths_en_COMP =
# the 675 English text-only open-ended maths problems SimpleRL-Zoo uses) and HuggingFaceH4/aime_2024
# hold the same problems as SimpleRL-Zoo's files; minerva_math and amc23 have no official hub
# release, these are community copies (read by the same rules). For the exact files SimpleRL-Zoo
# used, clone hkust-nlp/simpleRL-reason and pass examples/simplelr_math_eval/data as the folder.
HUB_SOURCES = {
    "gsm8k": ("openai/gsm8k", "main", "test"),
    "math500": ("HuggingFaceH4/MATH-500", None, "test"),
    "minerva_math": ("math-ai/minervamath", None, "test"),
    "olympiadbench": ("Hothan/OlympiadBench", "OE_TO_maths_en_COMP", "train"),
    "aime24": ("HuggingFaceH4/aime_2024", None, "train"),
    "amc23": ("math-ai/amc23", None, "test"),
}

_PLAIN_NUMBER_WITH_COMMAS = re.compile(r"-?\d{1,3}(?:,\d{3})+(?:\.\d+)?")


# ------------------------------------------------------------------------------------------------
# gold answers, one small pure function per release format (None = not found)


def gsm8k_gold(worked_solution: Any) -> str | None:
    """'... 550 / 110 = <<550/110=5>>5 bags\\n#### 5' -> '5'; thousands separators dropped."""
    if not isinstance(worked_solution, str) or "####" not in worked_solution:
        return None
    gold = worked_solution.rsplit("####", 1)[1].strip()
    if _PLAIN_NUMBER_WITH_COMMAS.fullmatch(gold):
        gold = gold.replace(",", "")
    return gold or None


def number_gold(value: Any) -> str | None:
    """A gold stored as a number or string: 36.0 / '36.0' -> '36', 2.5 -> '2.5', '\\\\pi' kept."""
    if value is None or isinstance(value, bool):
        return None
    if isinstance(value, float):
        return str(int(value)) if value.is_integer() else repr(value)
    if isinstance(value, int):
        return str(value)
    text = str(value).strip()
    if re.fullmatch(r"-?\d+\.0+", text):
        text = text.split(".")[0]
    return text or None


def olympiad_gold(final_answer: Any) -> str | None:
    """["$(3,0),(-3,1)$"] -> '(3,0),(-3,1)'; ['$69$,$84$'] -> '69, 84'; "['$\\\\frac{7}{15}$']" (a
    Python-list string) -> '\\\\frac{7}{15}'; several list elements are joined with ', '."""
    if isinstance(final_answer, str):
        text = final_answer.strip()
        if text.startswith("["):
            try:
                final_answer = ast.literal_eval(text)
            except (ValueError, SyntaxError):
                return None
        else:
            final_answer = [text]
    if not isinstance(final_answer, (list, tuple)):
        return None
    parts = []
    for element in final_answer:
        if element is None:
            continue
        for piece in re.split(r"\$\s*,\s*\$", str(element)):  # '$a$,$b$': answers inside one string
            piece = piece.strip().strip("$").strip()
            if piece:
                parts.append(piece)
    return ", ".join(parts) or None


def simplerl_question(prompt: Any) -> str | None:
    """The question inside a SimpleRL-Zoo-Data `prompt` (verl: [{'role': 'user', 'content': text}],
    the text already templated): qwen-boxed and abel templates are undone, other text kept whole."""
    if hasattr(prompt, "tolist"):  # a numpy array of dicts, as parquet hands it over
        prompt = prompt.tolist()
    if isinstance(prompt, (list, tuple)) and prompt and isinstance(prompt[-1], dict):
        prompt = prompt[-1].get("content")
    if not isinstance(prompt, str) or not prompt.strip():
        return None
    text = prompt
    if "<|im_start|>user\n" in text:
        text = text.split("<|im_start|>user\n", 1)[1].split("<|im_end|>", 1)[0]
        text = text.split("\nPlease reason step by step", 1)[0]
    elif text.startswith("Question:\n") and "\nAnswer:" in text:
        text = text[len("Question:\n") :].rsplit("\nAnswer:", 1)[0]
    return text.strip() or None


# (rule, field it reads, what it needs) in the order each format tries them; the error lists them
_RULES = {
    "ground_truth": ("reward_model", "a dict with 'ground_truth'"),
    "final_answer": ("final_answer", "a non-empty list of answers"),
    "hashes": ("answer", "a worked solution ending in '#### N'"),
    "answer": ("answer", "a gold answer"),
    "gt_answer": ("gt_answer", "a gold answer"),
    "boxed": ("solution", "a \\boxed{...} answer"),
}
GOLD_RULES = {
    "gsm8k": ("hashes",),
    "math500": ("answer", "boxed"),
    "minerva_math": ("boxed", "answer"),
    "olympiadbench": ("final_answer",),
    "aime24": ("answer",),
    "amc23": ("answer",),
    "auto": ("ground_truth", "final_answer", "hashes", "answer", "gt_answer", "boxed"),
}


def find_gold(row: dict, rules) -> str | None:
    """The first gold answer the rules find in a row, or None."""
    for rule in rules:
        if rule == "ground_truth":
            reward_model = row.get("reward_model")
            gold = (
                number_gold(reward_model.get("ground_truth"))
                if isinstance(reward_model, dict)
                else None
            )
        elif rule == "final_answer":
            gold = olympiad_gold(row.get("final_answer"))
        elif rule == "hashes":
            gold = gsm8k_gold(row.get("answer"))
        elif rule == "answer":
            value = row.get("answer")
            gold = None if isinstance(value, str) and "####" in value else number_gold(value)
        elif rule == "gt_answer":
            gold = number_gold(row.get("gt_answer"))
        else:  # boxed: MATH / Minerva solutions; a list of solutions (OlympiadBench): the last
            solution = row.get("solution")
            if isinstance(solution, (list, tuple)):
                solution = solution[-1] if solution else None
            gold = last_boxed(solution)
        if gold is not None:
            return gold
    return None


def math_row(where: str, row: dict, fmt: str) -> dict:
    """A release row -> {source fields..., 'question', 'answer'}; DataError names row and field."""
    question = next(
        (
            str(row[f])
            for f in ("question", "problem")
            if isinstance(row.get(f), str) and row[f].strip()
        ),
        None,
    )
    if question is None and fmt == "auto":
        question = simplerl_question(row.get("prompt"))
    if question is None:
        raise DataError(
            f"{where}: no question: field 'question' or 'problem' is missing or empty "
            f"(fields present: {sorted(row)})"
        )
    rules = GOLD_RULES[fmt]
    gold = find_gold(row, rules)
    if gold is None:
        wanted = "; ".join(f"field {_RULES[r][0]!r} with {_RULES[r][1]}" for r in rules)
        missing = "missing field 'answer' and no other gold" if "answer" not in row else "no gold"
        raise DataError(
            f"{where}: {missing} answer ({fmt}): expected {wanted} (fields present: {sorted(row)})"
        )
    out = dict(row)
    if "hashes" in rules and gsm8k_gold(row.get("answer")) is not None:
        out.setdefault(
            "solution", row["answer"]
        )  # GSM8K: keep the worked solution under its own name
    out["question"], out["answer"] = question, gold
    return out


# ------------------------------------------------------------------------------------------------
# loaders


def _resolve(name: str, source: str) -> tuple[str, str, str | None]:
    """(source, split, config) to read benchmark `name` from `source` (empty = its hub copy)."""
    if not source:
        return HUB_SOURCES[name][0], HUB_SOURCES[name][2], HUB_SOURCES[name][1]
    path = Path(source)
    if path.is_dir():
        for candidate in (path / name / "test.jsonl", path / "test.jsonl"):  # SimpleRL-Zoo's first
            if candidate.is_file():
                return str(candidate), "test", None
        if (path / name).is_dir():
            return str(path / name), "test", None
        if not any(f.is_file() and f.suffix.lower() in FILE_SUFFIXES for f in path.iterdir()):
            raise DataError(
                f"{source}: no {name}/test.jsonl (SimpleRL-Zoo's layout) and no data files"
            )
        return str(path), "test", None
    if source == HUB_SOURCES[name][0]:
        return source, HUB_SOURCES[name][2], HUB_SOURCES[name][1]
    return source, "test", None


def load_benchmark(name: str, source: str = "", limit: int | None = None) -> list[dict]:
    """Rows of benchmark `name` (one of SIMPLERL_SUITE) with `question`, `answer` (the gold as the
    grader compares it), `benchmark` and the source fields. `source`: a .jsonl/.json/.parquet file,
    a folder (`<folder>/<name>/test.jsonl` as in SimpleRL-Zoo, or the files) or a hub id; empty =
    the hub copy in HUB_SOURCES. `limit` keeps the first rows."""
    if name not in GOLD_RULES or name == "auto":
        raise DataError(f"unknown benchmark {name!r}; choose from {', '.join(SIMPLERL_SUITE)}")
    path, split, config = _resolve(name, source)
    rows = [
        {**math_row(where, row, name), "benchmark": name}
        for where, row in load_located_rows(path, split, config)
    ]
    return rows[:limit] if limit else rows


def load_math_rows(source: str, split: str = "train", limit: int | None = None) -> list[dict]:
    """Math training/eval rows in any release format (per row): SimpleRL-Zoo-Data / verl parquet
    (`reward_model.ground_truth`; the question from `question`/`problem`, else from `prompt`),
    OlympiadBench (`final_answer`), GSM8K ('#### N'), rows with `answer` or `gt_answer`, MATH (the
    `solution`'s last box). Returns rows with `question` and `answer` plus the source fields."""
    rows = [math_row(where, row, "auto") for where, row in load_located_rows(source, split)]
    return rows[:limit] if limit else rows
