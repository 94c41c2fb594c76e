"""Rule-based rewards shared by the reasoning scripts.

What is here (each item cites the paper or the released code it follows):

- Math answers as SimpleRL-Zoo v1 grades them (arXiv 2503.18892; released
  `hf_math_verify.compute_score`): cut at end-of-text markers -> Qwen2.5-Math `extract_answer` order
  -> `strip_string` normalisation -> both sides wrapped in `\\boxed{}` ->
  `math_verify.verify(parse(gold), parse(pred))` under a hard time limit. `extract_answer`,
  `strip_string`, `math_equal`, `correctness_reward` ("mix" / "independent" modes).
- `last_json_object`: the last complete top-level `{...}` of a text (JSON answers and JSON actions).
- TinyZero countdown reward, 0 / 0.1 / 1.0 (TinyZero `countdown.compute_score`): `countdown_reward`.
- Unbiased pass@k (Chen et al. 2021, arXiv 2107.03374 §2.1): `pass_at_k`.
- Length-aware rewards from the efficient-reasoning surveys (arXiv 2503.21614, 2503.16419):
  `kimi_length_reward`, `cosine_length_reward`, `l1_length_reward`, `dapo_overlong_penalty`.
- TRL reward contract wrappers `fn(prompts, completions, **dataset_columns) -> list[float | None]`:
  `math_reward`, `countdown_reward_fn`.

Every public function is total: garbage in (None, "", unicode, 10k-digit numbers, unbalanced braces)
gives a zero reward / False, never an exception and never a hang.

Why a worker process for math-verify: `math_verify.parse/verify` enforce their time limits with
`signal.alarm`, which only works in the main thread of the main interpreter (it raises in any other
thread, e.g. a reward thread pool), and a signal cannot interrupt a long C-level computation such as
a huge integer power. So the sympy work runs in a persistent child process (one per concurrent
caller, reused); the parent waits at most `timeout` seconds for the answer and, if the child is
stuck, kills it and starts a fresh one in the background. Cheap cases (identical normalised strings,
two plain numbers) are decided in-process without any round trip.

Departures from the released code (all small, all on the side of robustness):
- `extract_answer` takes the last *balanced* box (a truncated trailing `\\boxed{12` after a complete
  box is skipped; Qwen returns it half-open) and also accepts `\\fbox{}`; after "the answer is" it
  keeps only the rest of that sentence (Qwen keeps the whole remaining text). It returns None
  instead of "" when nothing is found.
- `strip_string` never glues a LaTeX command to a following letter when it removes spaces
  (`\\pi r` -> `\\pi r`, Qwen gives `\\pir`), removes thousands separators only in a plain number
  (`1,000`; a tuple `1,2` is left alone), strips `x=` only at the start or after `,`/`(`/`[`/a space
  (Qwen's replace-anywhere turns `2x=4` into `24`), and keeps a trailing `\\text{i}` (not a unit).
  All its regexes run in linear time (Qwen's `(,|\\.)+$`-style patterns take minutes on 10k-char
  junk).
- `math_equal` normalises the gold answer too (SimpleRL normalises only the prediction).
- `countdown_reward` takes the response text only (see its docstring) and evaluates the expression
  with a restricted evaluator equal to `eval` without builtins except that it refuses exponents
  whose result would exceed ~1e6 bits (upstream would hang).
"""

from __future__ import annotations

import ast
import atexit
import decimal
import json
import math
import os
import re
import select
import subprocess
import sys
import threading
import time
import warnings
from collections.abc import Sequence
from typing import Any

__all__ = [
    "extract_answer",
    "last_boxed",
    "last_json_object",
    "strip_string",
    "math_equal",
    "math_equal_batch",
    "default_grading_workers",
    "correctness_reward",
    "correctness_reward_batch",
    "math_reward",
    "countdown_reward",
    "countdown_reward_fn",
    "pass_at_k",
    "kimi_length_reward",
    "cosine_length_reward",
    "l1_length_reward",
    "dapo_overlong_penalty",
    "completion_text",
]

# --------------------------------------------------------------------------------------------------
# Answer extraction (Qwen2.5-Math `extract_answer(..., "math")`, simpleRL-reason
# `hf_math_verify.compute_score`: extraction)
# --------------------------------------------------------------------------------------------------

END_MARKERS = ("<|im_end|>", "<|endoftext|>", "</s>")
ASSISTANT_MARKER = "<|im_start|>assistant"


def cut_response(text: str) -> str:
    """simpleRL-reason `hf_math_verify.compute_score`, step 1: keep the text after the first
    `<|im_start|>assistant` (if present), then cut at the first end-of-text marker (`</s>`,
    `<|im_end|>`, `<|endoftext|>`)."""
    if ASSISTANT_MARKER in text:
        text = text.split(ASSISTANT_MARKER, 1)[1]
    for marker in END_MARKERS:
        text = text.split(marker, 1)[0]
    return text


_BOX_RE = re.compile(r"\\?(?:boxed|fbox)")


def _last_boxed_content(text: str) -> str | None:
    """Content of the last brace-balanced `\\boxed{...}` / `\\fbox{...}`; also the unbraced
    `\\boxed 5` form (content up to the next `$`), as Qwen's extractor accepts it. If no box is
    balanced (a generation cut inside its only box), the unclosed tail of the last box, as Qwen
    does."""
    matches = list(_BOX_RE.finditer(text))
    if not matches:
        return None
    closing: dict[
        int, int
    ] = {}  # position of each "{" -> its matching "}" (one pass, no quadratic rescans)
    open_positions: list[int] = []
    for i, ch in enumerate(text):
        if ch == "{":
            open_positions.append(i)
        elif ch == "}" and open_positions:
            closing[open_positions.pop()] = i
    for match in reversed(matches):
        start = match.end()
        if text.startswith("{", start):
            if start in closing:
                return text[start + 1 : closing[start]]
            continue  # unbalanced (e.g. truncated generation): try the previous box
        if text[start : start + 1].isspace():
            content = text[start:].split("$", 1)[0].strip()
            if content:
                return content
    if matches and text[matches[-1].end() :].startswith("{"):
        return text[matches[-1].end() + 1 :].strip() or None
    return None


def last_boxed(text: Any) -> str | None:
    """Content of the last brace-balanced `\\boxed{...}` / `\\fbox{...}` of `text`, stripped, or
    None. How Qwen2.5-Math's `parse_ground_truth` reads a MATH / Minerva gold from its solution."""
    try:
        if not isinstance(text, str) or not _BOX_RE.search(text):
            return None
        content = _last_boxed_content(text)
        return content.strip() if content and content.strip() else None
    except Exception:
        return None


def last_json_object(text: str) -> str | None:
    """The last complete top-level {...} of `text`, braces inside JSON strings ignored; None if
    there is none."""
    depth, start, in_string, escaped, last = 0, None, False, False, None
    for i, char in enumerate(text):
        if in_string:
            if escaped:
                escaped = False
            elif char == "\\":
                escaped = True
            elif char == '"':
                in_string = False
            continue
        if char == '"' and depth:
            in_string = True
        elif char == "{":
            start = i if depth == 0 else start
            depth += 1
        elif char == "}" and depth:
            depth -= 1
            if depth == 0:
                last = text[start : i + 1]
    return last


_NUMBER_RE = re.compile(r"-?\d*\.?\d+")
_SENTENCE_END_RE = re.compile(r"\n|\.(?=\s|$)")


def _after_phrase(text: str, phrase: str) -> str:
    """Text after the last `phrase`, up to the end of that sentence, without `$` and a leading
    ':'."""
    tail = text.split(phrase)[-1].strip()
    tail = _SENTENCE_END_RE.split(tail, 1)[0].strip()
    tail = tail.lstrip(":").strip().strip("$").strip()
    return tail.rstrip("./").strip()


def extract_answer(text: Any) -> str | None:
    """The final answer in a model response, in the Qwen2.5-Math order SimpleRL-Zoo uses
    (simpleRL-reason `hf_math_verify.compute_score` step 2); the first rule that matches wins:

    1. Minerva phrase "final answer is $...$. I hope";
    2. the last brace-balanced `\\boxed{...}` (or `\\fbox{...}`);
    3. the text after "he answer is" (catches "The answer is" / "the answer is");
    4. the text after "final answer is";
    5. the last number `-?\\d*\\.?\\d+` in the text with commas removed.

    The text is first cut at `<|im_start|>assistant` / end-of-text markers (simpleRL-reason
    `hf_math_verify.compute_score`).
    Returns the raw answer string (normalise with `strip_string`), or None when nothing is found.
    """
    try:
        if not isinstance(text, str) or not text:
            return None
        text = cut_response(text)
        answer: str | None
        if "final answer is $" in text and "$. I hope" in text:
            answer = text.split("final answer is $", 1)[1].split("$. I hope", 1)[0].strip()
        elif _BOX_RE.search(text) and (boxed := _last_boxed_content(text)) is not None:
            answer = boxed.strip()
        elif "he answer is" in text:
            answer = _after_phrase(text, "he answer is")
        elif "final answer is" in text:
            answer = _after_phrase(text, "final answer is")
        else:
            numbers = _NUMBER_RE.findall(text.replace(",", ""))
            answer = numbers[-1] if numbers else None
        return answer if answer else None
    except Exception:  # garbage never raises
        return None


# --------------------------------------------------------------------------------------------------
# Normalisation (Qwen2.5-Math `strip_string`, simpleRL-reason `hf_math_verify.compute_score`:
# normalisation)
# --------------------------------------------------------------------------------------------------

_UNIT_WORDS = (
    "degrees?",
    "cm",
    "mm",
    "km",
    "m",
    "meters?",
    "metres?",
    "centimeters?",
    "kilometers?",
    "inch(?:es)?",
    "feet",
    "foot",
    "ft",
    "yards?",
    "miles?",
    "mph",
    "kg",
    "g",
    "grams?",
    "kilograms?",
    "pounds?",
    "lbs?",
    "ounces?",
    "oz",
    "liters?",
    "litres?",
    "ml",
    "gallons?",
    "seconds?",
    "sec",
    "s",
    "minutes?",
    "min",
    "hours?",
    "hrs?",
    "days?",
    "weeks?",
    "months?",
    "years?",
    "dollars?",
    "cents?",
    "euros?",
    "units?",
    "square units?",
    "sq units?",
    "square (?:feet|meters?|inch(?:es)?|cm|units?)",
    "cubic (?:feet|meters?|cm|units?)",
    "students?",
    "people",
    "apples?",
    "points?",
    "times",
    "ways?",
    "percent",
)
# unit words are dropped only after a plain number or fraction ("5 m" -> 5, but "x^2 + 3m" stays)
_TRAILING_UNIT_RE = re.compile(
    r"^(-?(?:\d+(?:,\d{3})*(?:\.\d+)?|\.\d+)|\\frac\{\d+\}\{\d+\}|\d+/\d+)\s*(?:"
    + "|".join(_UNIT_WORDS)
    + r")\.?(?:\^\{?[23]\}?|²|³)?$",
    re.IGNORECASE,
)
# a trailing \text{ cm} is a unit when it holds a word of 2+ letters (\text{i} is the imaginary
# unit)
_TRAILING_TEXT_RE = re.compile(
    r"\\(?:text|mbox|textrm)\{\s*[A-Za-z][A-Za-z.\s]+\}(?:\^\{?[23]\}?)?$"
)
_TEXT_WRAP_RE = re.compile(r"\\(?:text|mbox|mathrm|textbf|mathbf)\{([^{}]*)\}")
_THOUSANDS_RE = re.compile(r"^-?\d{1,3}(?:,\d{3})+(?:\.\d+)?$")
_WORD_NUMBERS = {
    w: str(i)
    for i, w in enumerate(
        "zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen "
        "fifteen "
        "sixteen seventeen eighteen nineteen twenty".split()
    )
}


def _fix_fracs(s: str) -> str:
    """`\\frac12` -> `\\frac{1}{2}`, `\\frac1{2}` -> `\\frac{1}{2}`, `\\frac{1}2` ->
    `\\frac{1}{2}`."""
    s = re.sub(r"\\frac\s*([0-9a-zA-Z])\s*([0-9a-zA-Z])", r"\\frac{\1}{\2}", s)
    s = re.sub(r"\\frac\s*([0-9a-zA-Z])\s*\{", r"\\frac{\1}{", s)
    return re.sub(r"\\frac\s*(\{[^{}]*\})\s*([0-9a-zA-Z])", r"\\frac\1{\2}", s)


def strip_string(s: Any) -> str:
    """Normalise an answer string the way Qwen2.5-Math `strip_string` does (simpleRL-reason
    `hf_math_verify.compute_score`: normalisation): `\\dfrac`/`\\tfrac` -> `\\frac`; drop
    `\\left`/`\\right`, `$`, trailing units (`\\text{ cm}`, "5 cm"), `^\\circ`, `\\%`, and unwrap
    `\\text{}`; `a/b` -> `\\frac{a}{b}` for integers; strip `x=`/`y=`/`z=` and
    any prefix of <= 2 characters before a single `=`; `3.0` -> `3`; thousands separators `1,000` ->
    `1000`; `\\frac12` -> `\\frac{1}{2}`, `\\sqrt3` -> `\\sqrt{3}`; bmatrix/array -> pmatrix; spaces
    removed; trailing `.`, `,` and `\\\\` removed; a whole-string number word ("five") -> "5"."""
    try:
        s = str(s).strip().replace("\n", "")
        s = s.rstrip(".")
        # a gold answer that is itself boxed
        if (inner := _last_boxed_content(s)) is not None and re.fullmatch(
            r"\\?(?:boxed|fbox)\{.*\}", s
        ):
            s = inner
        # LaTeX spacing commands and ~ go; a matrix row separator (two backslashes) is matched first
        # and kept
        s = re.sub(r"(\\\\)|\\[!,;: ]|~", lambda m: m.group(1) or "", s)
        s = s.replace("{,}", "")  # 1{,}000
        s = re.sub(r"\\begin\{array\}\{[^{}]*\}", r"\\begin{pmatrix}", s)
        s = s.replace("\\end{array}", "\\end{pmatrix}").replace("bmatrix", "pmatrix")
        s = s.replace("\\dfrac", "\\frac").replace("\\tfrac", "\\frac")
        s = s.replace("\\neq", "\\ne").replace("\\leq", "\\le").replace("\\geq", "\\ge")
        s = re.sub(r"\\(?:left|right)(?![a-zA-Z])", "", s)  # keeps \rightarrow, \leftarrow
        # units: a trailing \text{...} (only if something is left), then "5 cm"-style unit words
        without_text = _TRAILING_TEXT_RE.sub("", s).strip()
        if without_text and without_text != s:
            s = without_text
        s = s.replace("^{\\circ}", "").replace("^\\circ", "").replace("°", "")
        s = s.replace("\\$", "").replace("$", "")
        s = s.replace("\\(", "").replace("\\)", "")
        s = _TEXT_WRAP_RE.sub(r"\1", s).strip()
        if (m := _TRAILING_UNIT_RE.match(s)) is not None:
            s = m.group(1)
        if s.lower() in _WORD_NUMBERS:
            s = _WORD_NUMBERS[s.lower()]
        s = s.replace("\\%", "").replace("%", "")
        s = re.sub(
            r"(^|[,;(\[\s])[xyz]\s*(?:=|\\in(?![a-zA-Z]))", r"\1", s
        )  # x=5, (x=1, y=2), x \in [0,1]
        s = re.sub(r"(^|[\s{])\.(\d)", r"\g<1>0.\2", s)  # .5 -> 0.5
        s = re.sub(r"(\d)\.0+(?!\d)", r"\1", s)  # 3.0 -> 3, 3.00 -> 3, but 3.05 stays
        s = s.strip()
        if _THOUSANDS_RE.match(s):
            s = s.replace(",", "")
        parts = s.split("=")
        if len(parts) == 2 and len(parts[0].strip()) <= 2:  # k=5, AB=3 -> right-hand side
            s = parts[1]
        s = re.sub(r"\\sqrt\s*([0-9a-zA-Z])", r"\\sqrt{\1}", s)
        # remove spaces, but keep one after a command followed by a letter (\pi r must not become
        # \pir)
        s = re.sub(r"(\\[a-zA-Z]+)\s+(?=[a-zA-Z])", "\\1\x00", s)
        s = re.sub(r"\s+", "", s).replace("\x00", " ")
        s = _fix_fracs(s)
        if (m := re.fullmatch(r"(-?\d+)/(\d+)", s)) is not None:  # a/b -> \frac{a}{b}
            s = f"\\frac{{{m.group(1)}}}{{{m.group(2)}}}"
        while s.endswith(
            ("\\\\", ",", ".")
        ):  # a loop, not a regex: `(,|\.)+$` is quadratic on "...x"
            s = s[:-2] if s.endswith("\\\\") else s[:-1]
        return s
    except Exception:
        return ""


# --------------------------------------------------------------------------------------------------
# Equivalence: fast path in-process, math-verify in a killable worker process (simpleRL-reason
# `hf_math_verify.compute_score`: equivalence)
# --------------------------------------------------------------------------------------------------

_PLAIN_NUMBER_RE = re.compile(r"-?(?:\d+(?:\.\d*)?|\.\d+)")  # no nested quantifiers: linear time


def _plain_numbers_equal(a: str, b: str) -> bool:
    """Same rule math-verify applies to two numbers: integers compare exactly; if either has a
    decimal point both are rounded to 6 decimal places (`float_rounding=6`), so 0.333 != 1/3 but 0.5
    == 0.50."""
    with decimal.localcontext() as ctx:
        ctx.prec = max(len(a), len(b)) + 16  # exact for any length (10k-digit numbers included)
        x, y = decimal.Decimal(a), decimal.Decimal(b)
        if "." not in a and "." not in b:
            return x == y
        q = decimal.Decimal("1e-6")
        return x.quantize(q, rounding=decimal.ROUND_HALF_EVEN) == y.quantize(
            q, rounding=decimal.ROUND_HALF_EVEN
        )


# The child: reads one JSON request per line [gold, pred, timeout], answers "1"/"0" per line.
# math-verify's own signal-based limits work here (main thread of the child) and cut pure-Python
# stalls without a restart; the parent's deadline is the hard limit.
_WORKER_SOURCE = r"""
import inspect, json, math, os, signal, sys
signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C goes to the parent; we exit on stdin EOF
reply = os.fdopen(os.dup(1), "w", buffering=1)
sys.stdout = sys.stderr  # library prints must not corrupt the protocol
from math_verify import parse, verify
parse_kw = "parsing_timeout" if "parsing_timeout" in inspect.signature(parse).parameters else None
verify_kw = "timeout_seconds" if "timeout_seconds" in inspect.signature(verify).parameters else None
try:  # warm up: the first parse loads the LaTeX grammar lazily, which must not count in a timeout
    verify(parse("\\boxed{\\frac{1}{2}}"), parse("\\boxed{0.5}"))
except BaseException:
    pass
reply.write("ready\n")
for line in sys.stdin:
    try:
        gold, pred, budget = json.loads(line)
        seconds = max(1, math.ceil(budget))
        pkw = {parse_kw: seconds} if parse_kw else {}
        vkw = {verify_kw: seconds} if verify_kw else {}
        ok = bool(verify(parse(gold, **pkw), parse(pred, **pkw), **vkw))
    except BaseException:
        ok = False
    reply.write("1\n" if ok else "0\n")
"""

_WORKER_START_TIMEOUT_S = 180.0  # importing sympy on a busy 2-core machine can take a while


class _Worker:
    """One child process running math-verify; used by one caller at a time."""

    def __init__(self) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-c", _WORKER_SOURCE],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            close_fds=True,
        )
        self.ready = False
        self._buffer = b""

    def _read_line(self, deadline: float) -> str | None:
        fd = self.proc.stdout.fileno()
        while b"\n" not in self._buffer:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return None
            readable, _, _ = select.select([fd], [], [], remaining)
            if not readable:
                return None
            chunk = os.read(fd, 4096)
            if not chunk:  # child died
                return None
            self._buffer += chunk
        line, self._buffer = self._buffer.split(b"\n", 1)
        return line.decode()

    def wait_ready(self) -> bool:
        if not self.ready:
            self.ready = self._read_line(time.monotonic() + _WORKER_START_TIMEOUT_S) == "ready"
        return self.ready

    def ask(self, pairs: list[tuple[str, str]], timeout: float) -> list[bool]:
        """math-verify's verdicts on (gold, pred) pairs, sent at once (pipelined: one wake-up per
        batch, not per pair). Each answer must come within `timeout` s of the previous one; the
        list stops short at the first pair the child did not answer in time (or if it died)."""
        payload = "".join(json.dumps([gold, pred, timeout]) + "\n" for gold, pred in pairs)
        self.proc.stdin.write(payload.encode())
        self.proc.stdin.flush()
        verdicts = []
        for _ in pairs:
            answer = self._read_line(time.monotonic() + timeout)
            if answer is None:
                break
            verdicts.append(answer == "1")
        return verdicts

    def kill(self) -> None:
        try:
            self.proc.kill()
            self.proc.wait(timeout=5)
        except Exception:
            pass


class _WorkerPool:
    """Idle workers, one checked out per concurrent call (threads never share a pipe). Reset after a
    fork: a child process must not talk to its parent's workers."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.idle: list[_Worker] = []
        self.owner_pid = os.getpid()
        self.warned = False

    def _check_fork(self) -> None:
        if os.getpid() != self.owner_pid:
            self.idle, self.owner_pid = [], os.getpid()

    def acquire(self) -> _Worker:
        with self.lock:
            self._check_fork()
            if self.idle:
                return self.idle.pop()
        return _Worker()

    def release(self, worker: _Worker) -> None:
        with self.lock:
            self._check_fork()
            self.idle.append(worker)

    def replace(self, broken: _Worker) -> None:
        """Kill a stuck worker and start its successor now, so that its imports overlap other
        work."""
        broken.kill()
        with self.lock:
            self._check_fork()
            self.idle.append(_Worker())

    def close(self) -> None:
        with self.lock:
            if os.getpid() == self.owner_pid:
                for worker in self.idle:
                    worker.kill()
            self.idle = []


_POOL = _WorkerPool()
atexit.register(_POOL.close)


_PIPELINE_PAIRS = 32  # pairs per write: keeps a request well inside the 64 KiB pipe buffer


def _verify_in_workers(pairs: list[tuple[str, str]], timeout: float) -> list[bool]:
    """Verdicts on (gold_latex, pred_latex) pairs from one pooled worker at a time, in pipelined
    batches. A pair the worker does not answer within `timeout` is False; that worker is killed and
    replaced, and the pairs after it go to the next worker (each keeps its own full `timeout`)."""
    verdicts: list[bool] = []
    while len(verdicts) < len(pairs):
        batch = pairs[len(verdicts) : len(verdicts) + _PIPELINE_PAIRS]
        worker = _POOL.acquire()
        try:
            if not worker.wait_ready():
                if not _POOL.warned:
                    _POOL.warned = True
                    warnings.warn(
                        "common.rewards: the math-verify worker did not start (is math-verify "
                        "installed?); non-trivial answers are graded as wrong.",
                        stacklevel=2,
                    )
                worker.kill()
                return verdicts + [False] * (len(pairs) - len(verdicts))
            answered = worker.ask(batch, timeout)
        except Exception:
            answered = []
        verdicts += answered
        if len(answered) < len(batch):  # stuck on a pathological expression, or died: replace it
            _POOL.replace(worker)
            verdicts.append(False)
        else:
            _POOL.release(worker)
    return verdicts


def _verify_in_worker(gold_latex: str, pred_latex: str, timeout: float) -> bool:
    return _verify_in_workers([(gold_latex, pred_latex)], timeout)[0]


def _fast_verdict(pred: Any, gold: Any) -> bool | tuple[str, str]:
    """math_equal's in-process part: a verdict, or the normalised (pred, gold) for math-verify."""
    if pred is None or gold is None:
        return False
    pred_norm, gold_norm = strip_string(pred), strip_string(gold)
    if not pred_norm or not gold_norm:
        return False
    if pred_norm == gold_norm:
        return True
    if _PLAIN_NUMBER_RE.fullmatch(pred_norm) and _PLAIN_NUMBER_RE.fullmatch(gold_norm):
        return _plain_numbers_equal(pred_norm, gold_norm)
    return pred_norm, gold_norm


def _slow_verdict(pred_norm: str, gold_norm: str, timeout: float) -> bool:
    gold_latex, pred_latex = "\\boxed{" + gold_norm + "}", "\\boxed{" + pred_norm + "}"
    return _verify_in_worker(gold_latex, pred_latex, float(timeout))


def math_equal(pred: Any, gold: Any, timeout: float = 5.0) -> bool:
    """Is `pred` mathematically equal to `gold`? (SimpleRL-Zoo v1 grader, simpleRL-reason
    `hf_math_verify.compute_score`.)

    Both sides are normalised with `strip_string`. Fast path, no subprocess: identical normalised
    strings -> True; two plain numbers -> compared as math-verify would (exact integers, 6 decimal
    places otherwise). Otherwise `math_verify.verify(parse("\\boxed{gold}"),
    parse("\\boxed{pred}"))` runs in a worker process and the call returns False if it takes more
    than `timeout` seconds (SimpleRL: 10 s pool timeout; a timeout or exception counts as wrong).
    Works in any thread and in worker processes; never raises. Not counted in `timeout`: the first
    call of a process (and the first after a timeout) also waits for a fresh worker to import
    math-verify (~0.5 s idle).
    Many pairs at once: `math_equal_batch`.
    """
    try:
        verdict = _fast_verdict(pred, gold)
        return verdict if isinstance(verdict, bool) else _slow_verdict(*verdict, timeout)
    except Exception:
        return False


def default_grading_workers() -> int:
    """CPUs this process may use, shared by the node's torchrun ranks (LOCAL_WORLD_SIZE); >= 1."""
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:  # macOS
        cpus = os.cpu_count() or 1
    return max(1, cpus // max(1, int(os.environ.get("LOCAL_WORLD_SIZE", "1"))))


def math_equal_batch(
    preds: Sequence[Any], golds: Sequence[Any], workers: int | None = None, timeout: float = 5.0
) -> list[bool]:
    """`[math_equal(p, g, timeout) for p, g in zip(preds, golds)]`, graded in parallel.

    Same verdicts as `math_equal` on every pair (same normalisation, fast path, math-verify call),
    with the same hard per-item `timeout`. The cheap cases (identical normalised strings, two plain
    numbers) are decided here; each distinct remaining (pred, gold) pair is verified once (the
    verdict is a function of the normalised pair), by `workers` threads (default:
    `default_grading_workers()`), each driving its own math-verify worker *process* from the shared
    pool above, so the sympy work runs on `workers` CPUs. Each worker gets its pairs in pipelined
    batches (one wake-up per 32 pairs instead of per pair), and a pair it does not answer within
    `timeout` of the previous answer is False, the worker replaced, as in `math_equal`.
    Why threads driving processes rather than a `multiprocessing` pool: forking a trainer that holds
    CUDA state is unsafe, a spawn pool pays the sympy import per call, and the persistent workers
    already give every item a hard, killable deadline. Workers stay alive for the next call.
    """
    if len(preds) != len(golds):
        raise ValueError(
            f"math_equal_batch: {len(preds)} predictions but {len(golds)} gold answers"
        )
    workers = default_grading_workers() if workers is None else int(workers)
    if workers < 1:
        raise ValueError(f"math_equal_batch: workers must be >= 1, got {workers}")
    results: list[bool] = [False] * len(preds)
    slow: dict[tuple[str, str], list[int]] = {}  # normalised (pred, gold) -> its indices
    for i, (pred, gold) in enumerate(zip(preds, golds)):
        try:
            verdict = _fast_verdict(pred, gold)
        except Exception:  # math_equal's contract: never raises, garbage is wrong
            verdict = False
        if isinstance(verdict, bool):
            results[i] = verdict
        else:
            slow.setdefault(verdict, []).append(i)

    pairs = list(slow)  # each distinct pair once: a group's samples often repeat one wrong answer
    latex = [("\\boxed{" + gold + "}", "\\boxed{" + pred + "}") for pred, gold in pairs]
    shares = [latex[w::workers] for w in range(min(workers, len(latex)))]  # one worker process each

    def verify(share: list[tuple[str, str]]) -> list[bool]:
        try:
            return _verify_in_workers(share, float(timeout))
        except Exception:
            return [False] * len(share)

    if len(shares) <= 1:
        verdicts_per_share = [verify(share) for share in shares]
    else:
        from concurrent.futures import ThreadPoolExecutor

        with ThreadPoolExecutor(max_workers=len(shares)) as pool:
            verdicts_per_share = list(pool.map(verify, shares))
    for w, verdicts in enumerate(verdicts_per_share):
        for pair, ok in zip(pairs[w::workers], verdicts):
            for i in slow[pair]:
                results[i] = ok
    return results


def has_box(text: Any) -> bool:
    """SimpleRL's format flag: the response contains "boxed" (simpleRL-reason
    `hf_math_verify.compute_score`)."""
    return isinstance(text, str) and "boxed" in cut_response(text)


def correctness_reward(
    completion: Any,
    answer: Any,
    mode: str = "mix",
    format_penalty: float = -1.0,
    timeout: float = 5.0,
) -> float:
    """SimpleRL-Zoo v1 reward for one response (simpleRL-reason `hf_math_verify.compute_score`; env
    `REWORD_FUNCTION_TYPE`).

    - "mix" (default, the paper's reward): 1.0 if correct else 0.0 (no format term).
    - "independent": correct+boxed 1.0, correct+unboxed 0.5, wrong+boxed -0.5, wrong+unboxed
      `format_penalty` (-1.0, `FORMAT_PENALTY_VALUE`).
    A response with no extractable answer is wrong.
    """
    if mode not in ("mix", "independent"):
        raise ValueError(f"correctness_reward: mode must be 'mix' or 'independent', got {mode!r}")
    try:
        predicted = extract_answer(completion)
        correct = predicted is not None and math_equal(predicted, answer, timeout=timeout)
        if mode == "mix":
            return 1.0 if correct else 0.0
        boxed = has_box(completion)
        if correct:
            return 1.0 if boxed else 0.5
        return -0.5 if boxed else float(format_penalty)
    except Exception:
        return 0.0 if mode == "mix" else float(format_penalty)


def correctness_reward_batch(
    completions: Sequence[Any],
    answers: Sequence[Any],
    mode: str = "mix",
    format_penalty: float = -1.0,
    timeout: float = 5.0,
    workers: int | None = None,
) -> list[float]:
    """`correctness_reward` of many responses, answers graded in parallel by `math_equal_batch`."""
    if mode not in ("mix", "independent"):
        raise ValueError(
            f"correctness_reward_batch: mode must be 'mix' or 'independent', got {mode!r}"
        )
    preds = [extract_answer(c) for c in completions]
    correct = math_equal_batch(preds, list(answers), workers, timeout)
    if mode == "mix":
        return [1.0 if ok else 0.0 for ok in correct]
    rewards = []
    for ok, completion in zip(correct, completions):
        boxed = has_box(completion)
        if ok:
            rewards.append(1.0 if boxed else 0.5)
        else:
            rewards.append(-0.5 if boxed else float(format_penalty))
    return rewards


# --------------------------------------------------------------------------------------------------
# TinyZero countdown (TinyZero `verl/utils/reward_score/countdown.py`)
# --------------------------------------------------------------------------------------------------

_ANSWER_TAG_RE = re.compile(r"<answer>(.*?)</answer>")
_EQUATION_CHARS_RE = re.compile(r"^[\d+\-*/().\s]+$")
_MAX_POWER_BITS = 1_000_000


def _safe_arithmetic(node: ast.AST) -> Any:
    """Evaluate the AST of a whitelisted expression exactly as `eval(expr, {"__builtins__": None},
    {})` would, except that a power whose result would exceed ~1e6 bits raises instead of
    hanging."""
    if isinstance(node, ast.Expression):
        return _safe_arithmetic(node.body)
    if isinstance(node, ast.Constant) and type(node.value) in (int, float):
        return node.value
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, (ast.UAdd, ast.USub)):
        value = _safe_arithmetic(node.operand)
        return +value if isinstance(node.op, ast.UAdd) else -value
    if isinstance(node, ast.BinOp):
        left, right = _safe_arithmetic(node.left), _safe_arithmetic(node.right)
        op = node.op
        if isinstance(op, ast.Add):
            return left + right
        if isinstance(op, ast.Sub):
            return left - right
        if isinstance(op, ast.Mult):
            return left * right
        if isinstance(op, ast.Div):
            return left / right
        if isinstance(op, ast.FloorDiv):
            return left // right
        if isinstance(op, ast.Pow):
            if isinstance(left, int) and isinstance(right, int) and right > 0:
                if abs(left) > 1 and right * abs(left).bit_length() > _MAX_POWER_BITS:
                    raise OverflowError("exponent too large")
            return left**right
    raise ValueError(f"unsupported expression node {type(node).__name__}")


def countdown_reward(
    completion: Any,
    target: Any,
    nums: Sequence[Any],
    format_score: float = 0.1,
    score: float = 1.0,
    full_text: bool = False,
) -> float:
    """TinyZero `countdown.compute_score` (verl/utils/reward_score/countdown.py): 0 / `format_score`
    / `score`.

    `completion` is the model's response only (our Sampler returns the generated text, the prompt is
    chat-templated), so upstream step 1 ("text after the first 'Assistant:' or
    '<|im_start|>assistant', else None") is skipped; pass `full_text=True` for a prompt+response
    string to apply it. End-of-text markers are cut first. Then:

    1. keep the last line and the last `<answer>...</answer>` on it; none -> 0;
    2. the integers matched by `\\d+` must be exactly the available numbers (each once) -> else
       `format_score`;
    3. the answer must match `^[\\d+\\-*/().\\s]+$` and evaluate (no builtins; division by zero, a
       syntax error or a runaway `**` count as failure) -> else `format_score`;
    4. |result - target| < 1e-5 -> `score`, else `format_score`.
    """
    try:
        if not isinstance(completion, str):
            return 0.0
        text = completion
        if full_text:
            if "Assistant:" in text:
                text = text.split("Assistant:", 1)[1]
            elif ASSISTANT_MARKER in text:
                text = text.split(ASSISTANT_MARKER, 1)[1]
            else:
                return 0.0
        for marker in END_MARKERS:
            text = text.split(marker, 1)[0]
        last_line = text.split("\n")[-1]
        # nothing after the last </answer> can be part of a match; cutting there keeps findall
        # linear
        close = last_line.rfind("</answer>")
        matches = (
            _ANSWER_TAG_RE.findall(last_line[: close + len("</answer>")]) if close >= 0 else []
        )
        if not matches:
            return 0.0
        equation = matches[-1].strip()
        try:
            used = sorted(int(n) for n in re.findall(r"\d+", equation))
            if used != sorted(int(n) for n in nums):
                return float(format_score)
            if not _EQUATION_CHARS_RE.match(equation):
                return float(format_score)
            result = _safe_arithmetic(ast.parse(equation, mode="eval"))
            if abs(result - float(target)) < 1e-5:
                return float(score)
            return float(format_score)
        except Exception:
            return float(format_score)
    except Exception:
        return 0.0


# --------------------------------------------------------------------------------------------------
# TRL-contract wrappers: fn(prompts, completions, **dataset_columns) -> list[float | None]
# --------------------------------------------------------------------------------------------------


def completion_text(completion: Any) -> str:
    """A completion as TRL passes it: a string, or a list of chat messages (the last assistant
    message's content is used). Anything else gives ""."""
    if isinstance(completion, str):
        return completion
    if isinstance(completion, dict):
        completion = [completion]
    if isinstance(completion, (list, tuple)):
        for message in reversed(completion):
            if isinstance(message, dict) and message.get("role", "assistant") == "assistant":
                content = message.get("content", "")
                if isinstance(content, list):  # multimodal content parts
                    content = "".join(p.get("text", "") for p in content if isinstance(p, dict))
                return content if isinstance(content, str) else ""
    return ""


def math_reward(
    prompts: Sequence[Any],
    completions: Sequence[Any],
    answer: Sequence[Any],
    mode: str = "mix",
    format_penalty: float = -1.0,
    timeout: float = 5.0,
    **unused_columns: Any,
) -> list[float | None]:
    """TRL reward function for math (simpleRL-reason `hf_math_verify.compute_score`):
    `correctness_reward` per completion against the dataset column `answer`. A row whose answer is
    None gets None (the reward does not apply)."""
    return [
        None
        if gold is None
        else correctness_reward(completion_text(c), gold, mode, format_penalty, timeout)
        for c, gold in zip(completions, answer)
    ]


def countdown_reward_fn(
    prompts: Sequence[Any],
    completions: Sequence[Any],
    target: Sequence[Any],
    nums: Sequence[Any],
    format_score: float = 0.1,
    score: float = 1.0,
    **unused_columns: Any,
) -> list[float | None]:
    """TRL reward function for countdown (TinyZero), columns `target` and `nums`."""
    return [
        None
        if t is None or n is None
        else countdown_reward(completion_text(c), t, n, format_score, score)
        for c, t, n in zip(completions, target, nums)
    ]


# --------------------------------------------------------------------------------------------------
# pass@k (Chen et al. 2021, arXiv 2107.03374 §2.1)
# --------------------------------------------------------------------------------------------------


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k from n samples with c correct (Chen et al. 2021): 1 - C(n-c, k) / C(n, k),
    computed as 1 - prod_{i=n-c+1..n} (1 - k/i) to stay stable for large n."""
    if not (0 <= c <= n and 1 <= k <= n):
        raise ValueError(f"pass_at_k needs 0 <= c <= n and 1 <= k <= n, got n={n}, c={c}, k={k}")
    if n - c < k:
        return 1.0
    prod = 1.0
    for i in range(n - c + 1, n + 1):
        prod *= 1.0 - k / i
    return 1.0 - prod


# --------------------------------------------------------------------------------------------------
# Length-aware rewards (efficient-reasoning surveys; L = response tokens, c = correct)
# --------------------------------------------------------------------------------------------------


def kimi_length_reward(lengths: Sequence[float], correct: Sequence[bool]) -> list[float]:
    """Kimi k1.5 length reward over the k samples of one prompt (Kimi k1.5, arXiv 2501.12599 §2.3.3,
    "length penalty"): lambda = 0.5 - (L - L_min) / (L_max - L_min); reward lambda if correct else
    min(0, lambda); all 0 when L_max == L_min."""
    if len(lengths) != len(correct):
        raise ValueError(
            f"kimi_length_reward: {len(lengths)} lengths but {len(correct)} correctness flags"
        )
    if not lengths:
        return []
    shortest, longest = min(lengths), max(lengths)
    if longest == shortest:
        return [0.0] * len(lengths)
    rewards = []
    for length, ok in zip(lengths, correct):
        lam = 0.5 - (length - shortest) / (longest - shortest)
        rewards.append(float(lam) if ok else float(min(0.0, lam)))
    return rewards


def cosine_length_reward(
    length: float,
    correct: bool,
    max_len: int,
    r_correct: tuple[float, float] = (2.0, 1.0),
    r_wrong: tuple[float, float] = (-10.0, 0.0),
    exceed_penalty: float = -10.0,
    exceed_margin: int = 16,
) -> float:
    """Cosine length reward, Demystifying Long CoT (Yeo et al., arXiv 2502.03373):
    r = r_L + 1/2 (r_0 - r_L)(1 + cos(pi L / L_max)) with (r_0, r_L) = r_correct or r_wrong;
    `exceed_penalty` when L + 16 >= L_max. Defaults are the paper's (correct 2 -> 1, wrong -10 ->
    0)."""
    if length + exceed_margin >= max_len:
        return float(exceed_penalty)
    r_0, r_L = r_correct if correct else r_wrong
    return float(r_L + 0.5 * (r_0 - r_L) * (1.0 + math.cos(math.pi * length / max_len)))


def l1_length_reward(
    length: float,
    correct: bool,
    target: float,
    mode: str = "exact",
    alpha: float = 3e-4,
    delta: float = 0.5,
) -> float:
    """L1 / LCPO (Aggarwal & Welleck, arXiv 2503.04697). Exact: r = c - alpha |n_gold - L|.
    Max: r = c * clip(alpha (n_gold - L) + delta, 0, 1). alpha = 3e-4, delta = 0.5."""
    c = 1.0 if correct else 0.0
    if mode == "exact":
        return c - alpha * abs(target - length)
    if mode == "max":
        return c * min(1.0, max(0.0, alpha * (target - length) + delta))
    raise ValueError(f"l1_length_reward: mode must be 'exact' or 'max', got {mode!r}")


def dapo_overlong_penalty(length: float, max_len: int, buffer: int) -> float:
    """DAPO soft overlong punishment (arXiv 2503.14476, overlong reward shaping): 0 if L <= L_max -
    L_c; ((L_max - L_c) - L) / L_c up to L_max; -1 beyond. DAPO used L_max = 16384 + 4096 with L_c =
    4096."""
    if buffer <= 0 or buffer > max_len:
        raise ValueError(
            f"dapo_overlong_penalty: need 0 < buffer <= max_len, got buffer={buffer}, "
            f"max_len={max_len}"
        )
    expected = max_len - buffer
    if length <= expected:
        return 0.0
    if length <= max_len:
        return (expected - length) / buffer
    return -1.0


def repetition_penalty(token_ids, ngram_size=40, penalty=-0.05):
    """N-gram repetition penalty of Yeo et al. (arXiv 2502.03373; eddycmu/demystify-
    long-cot `openrlhf/reward/repetition.py`, `RepetitionDensePenalty`): every token inside a
    repeated token n-gram (the second and later occurrences) is penalised once. Their PPO puts
    `penalty` on each such token; GRPO has one scalar per response, so this returns the sum."""
    if penalty > 0:
        raise ValueError(f"--repetition_penalty must be <= 0 (a penalty), got {penalty}")
    seen, hit = set(), set()
    for start in range(len(token_ids) - ngram_size + 1):
        gram = tuple(token_ids[start : start + ngram_size])
        if gram in seen:
            hit.update(range(start, start + ngram_size))
        seen.add(gram)
    return penalty * len(hit)
