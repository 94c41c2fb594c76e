"""Rows from a hub id, a local JSONL/JSON/Parquet/CSV file or a folder of them; toy task generators.

Every error names what was wrong and where: the file, the line (JSONL) or row, and the field.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

FILE_SUFFIXES = (".jsonl", ".json", ".parquet", ".csv")


class DataError(ValueError):
    """Bad input data; the message says which file, line/row and field."""


def _read_jsonl(path: Path) -> list[tuple[str, dict]]:
    rows = []
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise DataError(
                    f"{path}:{lineno}: not valid JSON ({e.msg} at column {e.colno})"
                ) from None
            if not isinstance(row, dict):
                raise DataError(
                    f"{path}:{lineno}: expected a JSON object, got {type(row).__name__}"
                )
            rows.append((f"{path}:{lineno}", row))
    return rows


def _read_file(path: Path) -> list[tuple[str, dict]]:
    suffix = path.suffix.lower()
    if suffix == ".jsonl":
        return _read_jsonl(path)
    if suffix == ".json":
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as e:
            raise DataError(
                f"{path}: not valid JSON ({e.msg} at line {e.lineno}, column {e.colno})"
            ) from None
        if isinstance(data, dict) and isinstance(data.get("data"), list):
            data = data["data"]
        if not isinstance(data, list) or not all(isinstance(r, dict) for r in data):
            raise DataError(f"{path}: expected a JSON list of objects (or {{'data': [...]}})")
        return [(f"{path} row {i}", r) for i, r in enumerate(data)]
    if suffix in (".parquet", ".csv"):
        import datasets

        ds = datasets.load_dataset(suffix[1:], data_files=str(path), split="train")
        return [(f"{path} row {i}", dict(r)) for i, r in enumerate(ds)]
    raise DataError(
        f"{path}: unsupported file type {suffix!r}; use one of {', '.join(FILE_SUFFIXES)}"
    )


def load_located_rows(
    source: str, split: str = "train", config_name: str | None = None
) -> list[tuple[str, dict]]:
    """(where, row) pairs from a local file/folder or a hub data set; `where` is "file:line"
    (JSONL), "file row i" or "hub_id[split] row i", for error messages that point at the row."""
    path = Path(source)
    if path.is_dir():
        files = sorted(p for p in path.rglob("*") if p.suffix.lower() in FILE_SUFFIXES)
        if not files:
            raise DataError(f"{path}: folder has no {'/'.join(FILE_SUFFIXES)} files")
        located = [r for f in files for r in _read_file(f)]
    elif path.exists():
        located = _read_file(path)
    elif path.suffix.lower() in FILE_SUFFIXES or source.startswith((".", "/")):
        raise DataError(f"{source}: no such file")
    else:
        import datasets

        try:
            ds = datasets.load_dataset(source, config_name, split=split)
        except Exception as e:  # offline, wrong id, wrong split: say which flag value failed
            raise DataError(f"could not load hub data set {source!r} (split {split!r}): {e}") from e
        located = [(f"{source}[{split}] row {i}", dict(r)) for i, r in enumerate(ds)]
    if not located:
        raise DataError(f"{source}: no rows (empty file?)")
    return located


def load_rows(
    source: str,
    split: str = "train",
    required=(),
    limit: int | None = None,
    config_name: str | None = None,
) -> list[dict]:
    """Load rows as dicts from a local file/folder or a hub data set and check `required` fields up
    front."""
    located = load_located_rows(source, split, config_name)
    for where, row in located:
        for field in required:
            if row.get(field) is None:
                raise DataError(f"{where}: missing field {field!r} (fields present: {sorted(row)})")
    rows = [r for _, r in located]
    return rows[:limit] if limit else rows


def write_jsonl(path, rows, mode: str = "w"):
    """Write complete JSON records, one per line, flushed (appending never leaves half a record).
    Appending to a file whose last line was cut short by a kill first drops that fragment, so the
    new records start on a line of their own instead of gluing onto it."""
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    if mode == "a" and Path(path).exists():
        with open(
            path, "rb+"
        ) as f:  # every append reads the last byte; only a cut-off file is read whole
            size = f.seek(0, 2)
            f.seek(max(0, size - 1))
            if size and f.read(1) != b"\n":
                f.seek(0)
                f.truncate(f.read().rfind(b"\n") + 1)
    with open(path, mode, encoding="utf-8") as f:
        for r in rows:
            f.write(json.dumps(r, ensure_ascii=False) + "\n")
            f.flush()


def read_jsonl_tolerant(path) -> list[dict]:
    """Records of a JSONL file this project appends to; a last line cut short by a kill is
    dropped."""
    path = Path(path)
    if not path.exists():
        return []
    lines = path.read_text(encoding="utf-8").splitlines()
    out = []
    for i, line in enumerate(lines, 1):
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError:
            if i != len(lines):
                raise DataError(
                    f"{path}:{i}: not valid JSON (only a cut-off last line is tolerated)"
                ) from None
    return out


# --------------------------------------------------------------------------------------------------
# toy tasks for the CPU defaults


def make_arithmetic_rows(
    n: int, seed: int = 0, num_terms: int = 2, max_value: int = 99, ops: str = "+-"
) -> list[dict]:
    """'What is 23 + 45 - 7?' with integer answers; `level` = number of digits of the largest
    operand."""
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        terms = [rng.randint(0, max_value) for _ in range(num_terms)]
        signs = [rng.choice(ops) for _ in range(num_terms - 1)]
        expr = str(terms[0]) + "".join(f" {s} {t}" for s, t in zip(signs, terms[1:]))
        value = eval(expr)  # our own generated text: digits and + - * only, never user input
        rows.append(
            {
                "question": f"What is {expr}?",
                "answer": str(value),
                "expression": expr,
                "level": len(str(max(terms))),
            }
        )
    return rows


def make_countdown_rows(n: int, seed: int = 0, num_count: int = 3, max_num: int = 20) -> list[dict]:
    """Countdown (TinyZero): reach `target` with each of `nums` once and + - * /; `answer` is one
    solution."""
    rng = random.Random(seed)
    rows = []
    while len(rows) < n:
        nums = [rng.randint(1, max_num) for _ in range(num_count)]
        order = rng.sample(nums, len(nums))
        expr, value = str(order[0]), order[0]
        for x in order[1:]:
            op = rng.choice("+-*/")
            if op == "/" and (x == 0 or value % x):
                op = "+"
            expr = f"({expr} {op} {x})" if op in "+-" else f"{expr} {op} {x}"
            value = {"+": value + x, "-": value - x, "*": value * x, "/": value // x}[op]
        if 0 < value <= 10 * max_num:
            question = f"Using the numbers {nums}, create an equation that equals {value}."
            rows.append({"question": question, "target": value, "nums": nums, "answer": expr})
    return rows
