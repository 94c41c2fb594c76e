"""Rows from a hub id, a local JSONL/JSON/Parquet/CSV file or a folder of them; toy task generators.

Every error names what was wrong and where: the file, the line (JSONL) or row, and the field.
"""

from __future__ import annotations

import ast
import json
import random
import re
from pathlib import Path

from common.rewards import last_json_object

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


# --------------------------------------------------------------------------------------------------
# code corpora (codeio.py): a folder of .py files or the CodeI/O release's rows; the unified format
# (hkust-nlp/CodeIO) of a corpus file or of a model's rewrite answer

CORPUS_META = ("repo_name", "path", "blob_id", "length_bytes", "score", "int_score", "license")


def load_code_corpus(source: str) -> list[dict]:
    """A folder of .py files, or rows of raw code: the release's (data/rawcode_1k.jsonl: `content`
    + repo_name, path, ...; named repo_name/path, metadata kept as `source`) or a `code` column."""
    if Path(source).is_dir() and any(Path(source).glob("*.py")):
        files = sorted(Path(source).glob("*.py"))
        return [{"name": f.stem, "code": f.read_text(encoding="utf-8")} for f in files]
    corpus = []
    for i, (where, row) in enumerate(load_located_rows(source)):  # a file, folder or hub set
        code = row.get("content", row.get("code"))
        if not isinstance(code, str) or not code.strip():
            raise DataError(
                f"--corpus {where}: field 'content' (CodeI/O release) or 'code' is missing "
                f"or empty (fields present: {sorted(row)})"
            )
        meta = {k: row[k] for k in CORPUS_META if row.get(k) is not None}
        name = row.get("name") or meta.get("blob_id", i)
        if "repo_name" in meta and "path" in meta:
            name = row.get("name") or f"{meta['repo_name']}/{meta['path'].lstrip('/')}"
        corpus.append({"name": str(name), "code": code, **({"source": meta} if meta else {})})
    return corpus


# the four sections codeio.py's REWRITE_PROMPT asks for
REWRITE_SECTIONS = (
    "Main Function",
    "Input Output Description",
    "Input Generator",
    "Problem Statement",
)


def _blank(match) -> str:
    return re.sub(r"[^\n]", " ", match.group())


def parse_rewrite_response(text: str) -> tuple[dict | None, str]:
    """Strict parser of a rewrite answer: (record, "ok") or (None, why it was rejected)."""
    if not isinstance(text, str):
        return None, "not text"
    outside_code = re.sub(r"```.*?```", _blank, text, flags=re.S)  # a '## x' comment is no heading
    headings = list(re.finditer(r"^##\s*(.+?)[ \t]*$", outside_code, flags=re.M))
    bodies = {}
    for i, heading in enumerate(headings):
        end = headings[i + 1].start() if i + 1 < len(headings) else len(text)
        bodies.setdefault(heading.group(1).rstrip(":").strip().lower(), text[heading.end() : end])
    bodies = {k: v.strip() for k, v in bodies.items()}
    for section in REWRITE_SECTIONS:
        if not bodies.get(section.lower()):
            return None, f"missing section: {section}"
    code = {}
    for section, name in (
        ("Main Function", "main_solution"),
        ("Input Generator", "input_generator"),
    ):
        blocks = re.findall(r"```python\s*\n(.*?)```", bodies[section.lower()], flags=re.S)
        if not blocks:
            return None, f"no python block in: {section}"
        try:
            tree = ast.parse(blocks[0])
        except SyntaxError:
            return None, f"syntax error in: {section}"
        if not any(isinstance(n, ast.FunctionDef) and n.name == name for n in tree.body):
            return None, f"no {name}"
        code[name] = blocks[0].strip()
    record = {"main_code": code["main_solution"], "generator_code": code["input_generator"]}
    record["io_description"] = bodies["input output description"]
    record["problem"] = bodies["problem statement"]
    return record, "ok"


def parse_unified_file(source: str) -> dict | None:
    """A corpus file already in the unified format (a module docstring 'Problem Statement: ...
    Input Output Description: ...', main_solution and input_generator); None for raw code."""
    try:
        tree = ast.parse(source)
    except SyntaxError:
        return None
    doc = ast.get_docstring(tree)
    names = {n.name: n for n in tree.body if isinstance(n, ast.FunctionDef)}
    if not doc or "main_solution" not in names or "input_generator" not in names:
        return None
    pattern = r"\s*Problem Statement:\s*(.+?)\s*Input Output Description:\s*(.+)"
    if not (match := re.match(pattern, doc, flags=re.S)):
        return None
    generator = names["input_generator"]
    cut = [(tree.body[0].lineno, tree.body[0].end_lineno), (generator.lineno, generator.end_lineno)]
    lines = enumerate(source.splitlines(keepends=True), 1)
    main_code = "".join(line for i, line in lines if not any(a <= i <= b for a, b in cut))
    return {
        "main_code": main_code.strip(),
        "generator_code": ast.get_source_segment(source, generator),
        "io_description": match.group(2).strip(),
        "problem": match.group(1).strip(),
    }


# The CodeI/O release's answer extraction (src/codeio_utils.py), used by codeio.py
NO_ANSWER = "no answer"


def _repairs(text: str):
    """The release's retries, cumulative and in its order: as is; True/False/None -> JSON; () ->
    []; \\boxed{} removed."""
    yield text
    for word, json_word in (("None", "null"), ("False", "false"), ("True", "true")):
        text = re.sub(rf"\b{word}\b", json_word, text)
    yield text
    text = text.replace("(", "[").replace(")", "]")
    yield text
    while (at := text.find("\\boxed{")) >= 0:
        depth, end = 1, at + 7
        while end < len(text) and depth:
            depth += {"{": 1, "}": -1}.get(text[end], 0)
            end += 1
        text = text[:at] + text[at + 7 : end - 1] + text[end:]
    yield text


def extract_json_answer(text):
    """The release's extract_last_complete_json: the last ```json block, else the last complete
    top-level {...}, parsed after each repair in turn. Failure: "no answer"."""
    if not isinstance(text, str):
        return NO_ANSWER
    fenced = re.findall(r"```json\s*(.*?)```", text, flags=re.S)
    candidate = fenced[-1].strip() if fenced else last_json_object(text)
    for repaired in _repairs(candidate) if candidate else ():
        try:
            return json.loads(repaired)
        except (ValueError, RecursionError):
            continue
    return NO_ANSWER


# question/answer rows for the RL trainers (zero_rl.py)


def parse_range(spec: str, flag: str) -> tuple[int, int]:
    """'3-5' -> (3, 5), '2' -> (2, 2); the error names the flag."""
    if not (m := re.fullmatch(r"\s*(\d+)\s*(?:-\s*(\d+)\s*)?", spec)):
        raise ValueError(f"{flag} must look like 3-5 or 2, got {spec!r}")
    return int(m[1]), int(m[2] or m[1])


def keep_levels(rows: list[dict], source: str, level_field: str, levels: str) -> list[dict]:
    """Rows whose `level_field` (an int or 'Level 3') lies in `levels` (--levels: '3-5')."""
    lo, hi = parse_range(levels, "--levels")
    for i, r in enumerate(rows):
        if level_field not in r:
            raise DataError(
                f"{source} row {i}: no field {level_field!r} for --levels (see --level_field)"
            )
    level = [int(re.sub(r"\D", "", str(r[level_field])) or -1) for r in rows]
    return [r for r, n in zip(rows, level) if lo <= n <= hi]


def read_task_rows(
    source: str, split: str, task: str, fields=("question", "answer"), level_field="", levels=""
) -> list[dict]:
    """Rows of `source` with `question` and `answer` (countdown: also `target`, `nums`), kept to
    `levels`. `fields`: the (question, answer) columns. Release formats (SimpleRL-Zoo-Data
    parquet, MATH, GSM8K "#### N") need no field names (common/benchmarks.py). TinyZero's
    countdown rows (Countdown-Tasks-3to4) hold only target and nums: their question is TinyZero's.
    """
    from common.benchmarks import load_math_rows  # benchmarks imports this module

    countdown = task == "countdown"
    release_format = not countdown and tuple(fields) == ("question", "answer")
    if release_format:
        rows = load_math_rows(source, split)
    else:
        rows = load_rows(source, split=split, required=("target", "nums") if countdown else fields)
    if levels:
        rows = keep_levels(rows, source, level_field, levels)
    if release_format:
        return rows
    question, answer = fields
    out = []
    for r in rows:
        if question in r or not countdown:
            text = str(r[question])
        else:
            text = countdown_question([int(n) for n in r["nums"]], r["target"])
        out.append({**r, "question": text, "answer": str(r.get(answer))})
    return out


def countdown_question(nums: list[int], target) -> str:
    """TinyZero's countdown question (examples/data_preprocess/countdown.py)."""
    return f"Using the numbers {nums}, create an equation that equals {target}."
