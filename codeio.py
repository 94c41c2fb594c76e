"""CodeI/O: Condensing Reasoning Patterns via Code Input-Output Prediction (Li et al., arXiv 2502.07316).

Idea: turn code into natural-language reasoning data. Each function is rewritten into a unified format
(main_solution + I/O description + input generator + problem statement), executed to collect I/O
pairs, and turned into "predict the output" / "predict a feasible input" questions. A model writes a
chain of thought for each; output predictions are checked with a tolerant comparison and input
predictions by re-executing the function. CodeI/O trains on every first answer (right or wrong);
CodeI/O++ gives failed samples one revision turn with execution feedback and joins both turns into a
single response. The result is used for SFT with the loss on the response only.

Stages (each reads and writes JSONL in --output_dir, one complete record per line, reruns skip done
records): rewrite -> io -> prompts -> cot -> verify -> revise -> sft. All code runs in common/sandbox.py.

Departures:
- CPU-sized defaults where a paper value would take hours on the toy: max_new_tokens 32 (repo: 4096),
  batch_size 16 sequences (paper: 1024), max_length 2048 (paper: 4096); a named --model selects the
  paper preset (PAPER below), which has the paper's values.
- The size filter's byte count is a recursive sys.getsizeof (8-byte aligned, shared objects counted
  once) instead of pympler.asizeof (not a dependency); it gives pympler's 824 B for list(range(19)) but
  may differ by a few bytes on other objects.
- "Functions that use randomness are excluded" has no stated criterion, and the release checks
  nothing (hkust-nlp/CodeIO: src/parse_gen_ios.py calls main_solution once per candidate input).
  Each candidate runs once here too; then each KEPT input runs once more and the function is dropped
  if an output changed (at most max_pairs extra calls; --io_recheck false = the release). The
  generator is seeded per function for resumable runs; a candidate that raises is skipped (the
  release's script dies).
- Sandbox infrastructure failures (status sandbox_error: a worker died, the sandbox broke) are not
  written to io/verify/revise: they are counted in the summary and retried by a rerun, never shown
  to the model as its exception or scored (the release has no sandbox, so no such case).
- The connective phrases of CodeI/O++ are not in the released code; `assemble_revision` documents ours.
  A correct first turn is kept as is (no appended check).
- The rewrite/CoT author is any model behind common.sampling (paper: DeepSeek-V2.5; repo: gpt-4o-mini).
- Under torchrun every rank generates its share of each batch (HF or its own vLLM engine) and rank 0
  writes the records; the sandbox stages run on every rank and rank 0's records are the ones kept.

Commands (naming --model selects the paper preset, PAPER below; flags you pass win; --print_config shows
the effective configuration without loading anything):
    python codeio.py                                   # CPU toy: tiny model, data/codeio_corpus, ~2 min
    python codeio.py --model Qwen/Qwen2.5-Coder-7B-Instruct --sampler vllm --corpus my_py_files/ \\
        --sandbox_workers 16 --stages rewrite,io,prompts,cot,verify,revise                # 1 GPU
    torchrun --nproc_per_node=8 codeio.py --model Qwen/Qwen2.5-Coder-7B --stages sft --output_dir runs/codeio \\
        --stage2_data tulu3.jsonl                                                         # 8 GPUs
"""
from __future__ import annotations

import ast
import inspect
import json
import math
import re
import zlib
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import torch
from tqdm import tqdm

from common import data
from common.config import parse_config, per_rank
from common.data import DataError, load_located_rows, load_rows
from common.models import load_model, load_tokenizer, make_tiny_lm, stop_token_ids
from common.rewards import last_json_object
from common.sampling import VLLMArgs, generate_sharded, make_sampler, render_prompt
from common.sandbox import Sandbox
from common.train import (barrier, cleanup_distributed, format_table, init_distributed,
                          is_main_process, load_checkpoint, make_optimizer, MetricsLogger,
                          micro_batches, print0, save_checkpoint, seed_everything, sft_inputs,
                          sft_loss, shard_model)

STAGES = ("rewrite", "io", "prompts", "cot", "verify", "revise", "sft")


@dataclass
class Args(VLLMArgs):
    model: str = field(default="", metadata={"help": "policy/CoT author and SFT base; '' = tiny offline Qwen2 "
                                                      "(the paper's CoTs are DeepSeek-V2.5's)"})
    corpus: str = field(default="data/codeio_corpus", metadata={
        "help": "folder of .py files, or a JSONL/Parquet file/hub set of raw code: CodeI/O's release "
                "(`content`, repo_name, path) or a `code` column"})
    output_dir: str = field(default="runs/codeio", metadata={"help": "stage JSONL files, metrics, checkpoint"})
    stages: str = field(default=",".join(STAGES), metadata={"help": "comma-separated subset of " + ",".join(STAGES)})
    sampler: Literal["hf", "vllm"] = field(default="hf", metadata={"help": "hf | vllm"})
    temperature: float = field(default=0.7, metadata={"help": "rewrite/CoT sampling temperature; paper: 0.7 (released repo's API calls)"})
    max_new_tokens: int = field(default=32, metadata={"help": "generation budget; toy 32; paper: 4096 (released repo's API calls)"})
    generation_batch_size: int = field(default=64, metadata={"help": "prompts per generate call"})
    max_generator_calls: int = field(default=1000, metadata={"help": "input_generator() calls per function (§1.2)"})
    max_pairs: int = field(default=10, metadata={"help": "unique I/O pairs kept per function (§1.2; 'Other' source)"})
    io_recheck: bool = field(default=True, metadata={
        "help": "run each kept input once more and drop functions whose output changes (the paper "
                "excludes functions that use randomness; the release's parse_gen_ios.py does not)"})
    pairs_per_function: int = field(default=3, metadata={"help": "pairs turned into prompts, x2 tasks (§1.3)"})
    io_timeout: float = field(default=60.0, metadata={"help": "seconds for one function's whole I/O run (§1.2)"})
    verify_timeout: float = field(default=5.0, metadata={"help": "seconds to re-execute a predicted input (§1.4)"})
    sandbox_workers: int = field(default=2, metadata={"help": "parallel sandbox processes (repo: 24-64)"})
    sandbox_allow_weaker: bool = field(default=False, metadata={
        "help": "run generated code even where common/sandbox.py cannot isolate it fully (no "
                "bubblewrap, user namespaces or libseccomp); the summary prints what is missing"})
    prompt_values: Literal["python", "json"] = field(default="python", metadata={"help": "how I/O values enter prompts: python (repo's "
                                                                   "f'{x}', §1.3 gotcha) | json"})
    revise: bool = field(default=True, metadata={"help": "CodeI/O++: one revision turn for failed samples (§1.5)"})
    lr: float = field(default=1e-5, metadata={"help": "stage-1 constant LR, no warmup; paper: 1e-5 (Gemma-2-27B: 4e-6)"})
    epochs: int = field(default=1, metadata={"help": "stage-1 epochs; paper: 1"})
    batch_size: int = field(default=16, metadata={"help": "sequences per optimizer step, all ranks; paper: 1024 (both stages)"})
    micro_batch_size: int = field(default=4, metadata={"help": "sequences per forward pass per rank (gradient "
        "accumulation, same token-mean loss); 0 = the rank's whole batch; paper preset: 2 (not stated in the paper)"})
    gradient_checkpointing: bool = field(default=False, metadata={"help": "recompute decoder layers in the backward pass; "
        "paper preset: True (not stated in the paper; needed for long sequences at 7B)"})
    max_length: int = field(default=2048, metadata={"help": "prompt+response tokens; paper: 4096"})
    stage2_data: str = field(default="", metadata={"help": "general instruction JSONL (prompt/response) for stage 2; "
                                                           "'toy' = arithmetic rows; '' = skip (§1.7)"})
    stage2_steps: int = field(default=700, metadata={"help": "stage-2 steps; paper: 700"})
    stage2_lr: float = field(default=3e-5, metadata={"help": "stage-2 peak LR, cosine to 1e-6; paper: 3e-5 (Gemma: 1e-5)"})
    save_every: int = field(default=50, metadata={"help": "optimizer steps between checkpoints"})
    resume: bool = field(default=False, metadata={"help": "continue SFT from output_dir/checkpoint"})
    seed: int = field(default=0, metadata={"help": "random seed"})
    track: bool = field(default=False, metadata={"help": "log to Weights & Biases"})


# The paper's values, used with --preset paper (the default once --model is named); the defaults above are
# the CPU toy's. A flag on the command line wins.
PAPER = dict(
    max_new_tokens=4096,  # the released repo's API calls
    batch_size=1024,  # both SFT stages
    max_length=4096,
    gradient_checkpointing=True,  # not stated in the paper: bounds activation memory at long sequences
    micro_batch_size=2,  # not stated in the paper: bounds activation memory at long sequences
)


def derived(args, world_size: int) -> dict:
    """Checks --stages (only sft runs under torchrun) and splits the SFT batch over the ranks."""
    stages = [s.strip() for s in args.stages.split(",") if s.strip()]
    if unknown := set(stages) - set(STAGES):
        raise ValueError(f"--stages: unknown {sorted(unknown)}; choose from {STAGES}")
    if world_size > 1 and set(stages) != {"sft"}:
        raise ValueError("under torchrun only --stages sft runs; generate the data with one process first")
    rows = per_rank(args.batch_size, world_size, "--batch_size")
    return dict(sft_rows_per_rank=rows, micro_batches_per_step=-(-rows // args.micro_batch_size))


# ------------------------------------------------------------------------------------------------ §1.1 rewrite
SECTIONS = ("Main Function", "Input Output Description", "Input Generator", "Problem Statement")
REWRITE_PROMPT = """Turn this raw Python code into a self-contained reasoning task.
```python
{code}
```
Answer with exactly these four sections, each starting with a level-2 markdown heading:
## Main Function
One python code block with the imports it needs and an entry function `main_solution` whose arguments and
return value are JSON serialisable (convert sets, tuples, numpy arrays and custom objects at the boundaries).
Under about 1KB. No printing, plotting or file access: return the result.
## Input Output Description
Every argument of `main_solution` and its return value, each with its type and meaning.
## Input Generator
One python code block defining `input_generator()`: no arguments, returns a dict of random keyword arguments
for `main_solution`.
## Problem Statement
A question that names the inputs and asks for the result, as a problem to think about, not a programming
task (never "write a function").
"""


def parse_rewrite_response(text: str) -> tuple[dict | None, str]:
    """Strict parser of a rewrite answer: (record, "ok") or (None, why it was rejected)."""
    if not isinstance(text, str):
        return None, "not text"
    outside_code = re.sub(r"```.*?```", lambda m: re.sub(r"[^\n]", " ", m.group()), text, flags=re.S)
    headings = list(re.finditer(r"^##\s*(.+?)[ \t]*$", outside_code, flags=re.M))  # a '## x' comment in code is no heading
    bodies = {}
    for i, heading in enumerate(headings):
        end = headings[i + 1].start() if i + 1 < len(headings) else len(text)
        title = heading.group(1).rstrip(":").strip().lower()
        bodies.setdefault(title, text[heading.end():end].strip())
    for section in SECTIONS:
        if not bodies.get(section.lower()):
            return None, f"missing section: {section}"
    code = {}
    for section, name in (("Main Function", "main_solution"), ("Input Generator", "input_generator")):
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
    return {"main_code": code["main_solution"], "generator_code": code["input_generator"],
            "io_description": bodies["input output description"], "problem": bodies["problem statement"]}, "ok"


def parse_unified_file(source: str) -> dict | None:
    """A corpus .py file already in the unified format: a module docstring with 'Problem Statement:' and
    'Input Output Description:' parts, plus main_solution and input_generator. None if it is raw code."""
    try:
        tree = ast.parse(source)
    except SyntaxError:
        return None
    doc = ast.get_docstring(tree)
    names = {n.name: n for n in tree.body if isinstance(n, ast.FunctionDef)}
    if not doc or "main_solution" not in names or "input_generator" not in names:
        return None
    match = re.match(r"\s*Problem Statement:\s*(.+?)\s*Input Output Description:\s*(.+)", doc, flags=re.S)
    if not match:
        return None
    lines = source.splitlines(keepends=True)
    generator = names["input_generator"]
    cut = [(tree.body[0].lineno, tree.body[0].end_lineno), (generator.lineno, generator.end_lineno)]
    main_code = "".join(line for i, line in enumerate(lines, 1) if not any(a <= i <= b for a, b in cut))
    return {"main_code": main_code.strip(), "generator_code": ast.get_source_segment(source, generator),
            "io_description": match.group(2).strip(), "problem": match.group(1).strip()}


# ------------------------------------------------------------------------------------------------ §1.2 I/O pairs
def object_size(obj, _seen: set | None = None) -> int:
    """Bytes of obj and everything it holds (pympler.asizeof stand-in: 8-byte aligned, shared objects once)."""
    import sys

    seen = set() if _seen is None else _seen
    if id(obj) in seen:
        return 0
    seen.add(id(obj))
    size = (sys.getsizeof(obj) + 7) // 8 * 8
    if isinstance(obj, dict):
        size += sum(object_size(k, seen) + object_size(v, seen) for k, v in obj.items())
    elif isinstance(obj, (list, tuple, set, frozenset)):
        size += sum(object_size(x, seen) for x in obj)
    return size


def strict_check_size(obj) -> bool:
    """§1.2 size filter, applied to every element and dict key: < 1024 B in total, containers < 20
    items, strings < 100 characters, any other leaf < 128 B."""
    if object_size(obj) >= 1024:
        return False
    if isinstance(obj, dict):
        return len(obj) < 20 and all(strict_check_size(k) and strict_check_size(v) for k, v in obj.items())
    if isinstance(obj, (list, tuple, set, frozenset)):
        return len(obj) < 20 and all(strict_check_size(x) for x in obj)
    if isinstance(obj, str):
        return len(obj) < 100
    return object_size(obj) < 128


def collect_io_pairs(max_calls: int, max_pairs: int, seed: int, recheck: bool = True) -> dict:
    """§1.2, executed INSIDE the sandbox after the function's code (its source is shipped with it): call
    input_generator() up to max_calls times, keep unique inputs whose input and output pass the size
    filter and whose output is not None; stop at max_pairs. Each candidate input runs main_solution
    once, as in the release (hkust-nlp/CodeIO: src/parse_gen_ios.py, the generated I/O script); with
    `recheck`, each kept input runs once more and a changed output counts as "nondeterministic"."""
    import json
    import random

    random.seed(seed)
    np.random.seed(seed % 2 ** 32)  # noqa: F821 (np comes from IMPORT_PREFIX in the sandbox)
    pairs, seen, stats = [], set(), {}
    for _ in range(max_calls):
        if len(pairs) >= max_pairs:
            break
        try:
            kwargs = input_generator()  # noqa: F821 (defined by the function's code)
            key = json.dumps(kwargs, sort_keys=True)
            reason = "duplicate" if key in seen else None
            seen.add(key)
            if reason is None and not (isinstance(kwargs, dict) and strict_check_size(kwargs)):
                reason = "too_large"
            if reason is None:  # a fresh copy: a function mutating its arguments keeps the input
                output = json.loads(json.dumps(main_solution(**json.loads(key))))  # noqa: F821
                reason = ("none_output" if output is None else
                          "too_large" if not strict_check_size(output) else None)
        except Exception as error:  # generator or function raised, or a value is not JSON-serialisable
            reason = type(error).__name__
        stats[reason or "kept"] = stats.get(reason or "kept", 0) + 1
        if reason is None:
            pairs.append({"input": json.loads(key), "output": output})
    for pair in pairs if recheck else []:  # the paper's randomness exclusion, <= max_pairs calls
        try:
            again = json.dumps(main_solution(**json.loads(json.dumps(pair["input"]))))  # noqa: F821
        except Exception:
            again = None
        if again != json.dumps(pair["output"]):
            stats["nondeterministic"] = stats.get("nondeterministic", 0) + 1
    return {"pairs": pairs, "stats": stats}


IO_HELPERS = "\n\n".join(inspect.getsource(f) for f in (object_size, strict_check_size, collect_io_pairs))


def io_job(function: dict, args: Args, seed: int) -> tuple[str, dict]:
    code = "\n\n".join([IMPORT_PREFIX, function["main_code"], function["generator_code"], IO_HELPERS])
    return code, {"max_calls": args.max_generator_calls, "max_pairs": args.max_pairs, "seed": seed,
                  "recheck": args.io_recheck}


# ------------------------------------------------------------------------------------------------ §1.3 prompts
IMPORT_PREFIX = """import json, math, random, re, string, heapq, bisect, copy, itertools, functools, operator
import collections, statistics, fractions, decimal, datetime, typing
from collections import Counter, defaultdict, deque, OrderedDict
from functools import lru_cache, reduce
from itertools import permutations, combinations, product, accumulate
from typing import List, Dict, Tuple, Optional, Any
import numpy as np"""
ANSWER_RULES = {"output": '{"output": <your output>}, where <your output> should strictly match the output '
                          'requirement as specified',
                "input": '{"input": <your input>}, where <your input> should be a dictionary, even if there is only '
                         'one input variable, with keys strictly matching the input variables\' names as specified'}


def show_value(value, style: str = "python") -> str:
    """The repo inserts values with f"{x}" (Python literals: 'a', True, None) although answers are JSON."""
    return f"{value}" if style == "python" else json.dumps(value)


def build_prompt(kind: str, function: dict, pair: dict, style: str = "python") -> str:
    """§1.3 prompt for kind "output" (given the input) or "input" (given the output)."""
    given = (f"Given the following input:\n\n{show_value(pair['input'], style)}" if kind == "output" else
             f"Given the following output:\n\n{show_value(pair['output'], style)}")
    ask = "the output" if kind == "output" else "a feasible input"
    return (f"You are given a question that requires some input and output variables as follows:\n\n"
            f"{function['problem']}\n\nThe input and output requirements are as follows:\n\n"
            f"{function['io_description']}\n\n{given}\n\n"
            f"Can you predict {ask} without writing any code? Please reason and put your final answer in the "
            f"following json format: {ANSWER_RULES[kind]}.\n\n"
            f"Tip: Here is a reference code snippet for this question. You can refer to this code to guide your "
            f"reasoning but not copy spans of code directly.\n\n{function['main_code']}")


# ------------------------------------------------------------------------------------------------ §1.4 verification
NO_ANSWER = "no answer"


def _unbox(text: str) -> str:
    while (at := text.find("\\boxed{")) >= 0:
        depth, end = 1, at + 7
        while end < len(text) and depth:
            depth += {"{": 1, "}": -1}.get(text[end], 0)
            end += 1
        text = text[:at] + text[at + 7:end - 1] + text[end:]
    return text


def extract_json_answer(text):
    """§1.4: the last ```json block, else the last complete top-level {...}; on a parse failure retry with
    True/False/None -> true/false/null, then () -> [], then \\boxed{} removed. Failure: "no answer"."""
    if not isinstance(text, str):
        return NO_ANSWER
    fenced = re.findall(r"```json\s*(.*?)```", text, flags=re.S)
    candidate = fenced[-1].strip() if fenced else last_json_object(text)
    if not candidate:
        return NO_ANSWER
    repairs = [lambda s: s, lambda s: re.sub(r"\bTrue\b", "true", re.sub(r"\bFalse\b", "false",
                                                                          re.sub(r"\bNone\b", "null", s))),
               lambda s: s.replace("(", "[").replace(")", "]"), _unbox]
    for repair in repairs:  # cumulative, in the repo's order
        candidate = repair(candidate)
        try:
            return json.loads(candidate)
        except (ValueError, RecursionError):
            continue
    return NO_ANSWER


def is_close(pred, gold) -> bool:
    """§1.4 tolerant comparison: same dict keys / list lengths recursively; if either number is a float,
    |p - t| <= 1e-3 |t| and int(p) == int(t) (NaN/inf wrong); ints and everything else use ==."""
    if isinstance(gold, dict) or isinstance(pred, dict):
        return (isinstance(pred, dict) and isinstance(gold, dict) and pred.keys() == gold.keys()
                and all(is_close(pred[k], gold[k]) for k in gold))
    if isinstance(gold, (list, tuple)) or isinstance(pred, (list, tuple)):
        return (isinstance(pred, (list, tuple)) and isinstance(gold, (list, tuple)) and len(pred) == len(gold)
                and all(is_close(p, g) for p, g in zip(pred, gold)))
    numbers = isinstance(pred, (int, float)) and isinstance(gold, (int, float))
    if numbers and (isinstance(pred, float) or isinstance(gold, float)):
        if not (math.isfinite(pred) and math.isfinite(gold)):
            return False
        return abs(pred - gold) <= 1e-3 * abs(gold) and int(pred) == int(gold)
    return pred == gold


def verify_input(sandbox: Sandbox, main_code: str, predicted_input, gold_output, timeout: float = 5.0) -> dict:
    """§1.4 input check: run main_solution(**predicted_input) in the sandbox; status success |
    AssertionError | exception | timeout, with a message naming the target, the input and what it gave."""
    if not isinstance(predicted_input, dict):
        return {"status": "exception", "message": f"the predicted input {predicted_input!r} is not a dict", "actual": None}
    run = sandbox.call(IMPORT_PREFIX + "\n\n" + main_code, "main_solution", json.dumps(predicted_input), timeout=timeout)
    if run.infrastructure_failure:  # the sandbox broke, not the input: never scored, never shown
        return {"status": "sandbox_error", "message": run.stderr.strip(), "actual": None}
    if run.status == "timeout":
        return {"status": "timeout", "message": f"execution did not finish within {timeout:g} s", "actual": None}
    if not run.ok:
        last_line = (run.stderr.strip().splitlines() or [run.status])[-1]
        return {"status": "exception", "message": last_line, "actual": None}
    if json.dumps(run.value) == json.dumps(gold_output) or is_close(run.value, gold_output):
        return {"status": "success", "message": "", "actual": run.value}
    return {"status": "AssertionError", "actual": run.value,
            "message": f"target output {gold_output!r}, predicted input {predicted_input!r} gives {run.value!r}"}


# ------------------------------------------------------------------------------------------------ §1.5 CodeI/O++
REDO = "Please redo it, and your prediction should no longer be any of the wrong ones you have made before!"
CHECK, OOPS, CORRECT = "Let me check if I did it correctly...", "Oops! Something went wrong.", "Yes, that's correct!"


def feedback_text(kind: str, pair: dict, check: dict) -> str | None:
    """§1.5 verifier message (the correct answer is never revealed). Values are serialised with
    json.dumps as in the release (hkust-nlp/CodeIO: src/check_io_pred_acc_mp.py, check_io_pred_acc;
    src/codeio_utils.py, template_check_input), so the model sees JSON (true, null, "a"), not Python
    literals. None for a sandbox failure: there is nothing to tell the model."""
    show = json.dumps
    if check["status"] == "sandbox_error":
        return None
    if check["status"] == "success":
        return CORRECT
    if check["status"] == "no answer":
        return "[Format Error] No answer in the required JSON format was found in your response."
    if kind == "output":
        return (f"[Mismatch] Your output is not correct! Given the input {show(pair['input'])}, "
                f"your predicted output is {show(check['predicted'])} which is wrong!")
    if check["status"] == "AssertionError":
        return (f"[Mismatch] Your input is not feasible! Given the output {show(pair['output'])}, "
                f"your predicted input is {show(check['predicted'])}, which actually gets a wrong "
                f"output as {show(check['actual'])}")
    if check["status"] == "timeout":
        return (f"[Timeout] Running the code on your predicted input {show(check['predicted'])} "
                "did not finish in time.")
    return (f"[Error] Running the code on your predicted input {show(check['predicted'])} failed: "
            f"{check['message']}")


def assemble_revision(record: dict) -> str:
    """One training response from {turn_1, feedback_1, turn_2, feedback_2, correct_2} (issue #1):
    a correct (or never revised) turn 1 stays as is; otherwise the turns are joined by connective phrases."""
    if record.get("turn_2") is None:
        return record["turn_1"]
    ending = CORRECT if record.get("correct_2") else f"{OOPS} {record['feedback_2']}"
    return (f"{record['turn_1']}\n\n{CHECK}\n\n{OOPS} {record['feedback_1']}\n\n{record['turn_2']}"
            f"\n\n{CHECK}\n\n{ending}")


# ------------------------------------------------------------------------------------------------ stage helpers
def open_stage(path: Path, key: str) -> tuple[list[dict], set]:
    """Records already written by an earlier run (a line cut by a kill is dropped and the file repaired)."""
    records = read_jsonl_tolerant(path)
    if path.exists() and path.read_text(encoding="utf-8")[-1:] not in ("", "\n"):
        write_jsonl(path, records)
    return records, {r[key] for r in records}


CORPUS_META = ("repo_name", "path", "blob_id", "length_bytes", "score", "int_score", "license")


def load_corpus(source: str) -> list[dict]:
    """A folder of .py files, or rows of raw code: CodeI/O's release (hkust-nlp/CodeIO
    data/rawcode_1k.jsonl: `content` + repo_name, path, blob_id, ...) or any rows with `code`. A
    release row is named "repo_name/path" and keeps its metadata under `source` (in rewrite.jsonl)."""
    if Path(source).is_dir() and any(Path(source).glob("*.py")):
        files = sorted(Path(source).glob("*.py"))
        return [{"name": f.stem, "code": f.read_text(encoding="utf-8")} for f in files]
    corpus = []
    for i, (where, row) in enumerate(load_located_rows(source)):  # a file, folder or hub set
        code = row.get("content", row.get("code"))
        if not isinstance(code, str) or not code.strip():
            raise DataError(f"--corpus {where}: field 'content' (CodeI/O release) or 'code' is missing "
                            f"or empty (fields present: {sorted(row)})")
        meta = {k: row[k] for k in CORPUS_META if row.get(k) is not None}
        name = row.get("name") or meta.get("blob_id", i)
        if "repo_name" in meta and "path" in meta:
            name = row.get("name") or f"{meta['repo_name']}/{meta['path'].lstrip('/')}"
        corpus.append({"name": str(name), "code": code, **({"source": meta} if meta else {})})
    return corpus


def check_answer(sandbox: Sandbox, sample: dict, function: dict, response: str, args: Args) -> dict:
    extracted = extract_json_answer(response)
    kind, pair = sample["kind"], sample["pair"]
    answered = isinstance(extracted, dict) and kind in extracted
    predicted = extracted[kind] if answered else None
    if not answered:
        check = {"status": "no answer", "message": "", "actual": None}
    elif kind == "output":
        check = {"status": "success" if is_close(predicted, pair["output"]) else "mismatch", "message": "", "actual": None}
    else:
        check = verify_input(sandbox, function["main_code"], predicted, pair["output"], args.verify_timeout)
    check["predicted"] = predicted
    check["correct"] = None if check["status"] == "sandbox_error" else check["status"] == "success"
    check["feedback"] = feedback_text(kind, pair, check)
    return check


def infra_note(count: int) -> str:
    return f"; {count} sandbox errors (not written: a rerun retries them)" if count else ""


def write_jsonl(path, rows, mode="w"):
    """Under torchrun every rank holds the same records (gathered generations): rank 0 writes."""
    if is_main_process():
        data.write_jsonl(path, rows, mode)


def read_jsonl_tolerant(path) -> list[dict]:
    """Every rank reads rank 0's file after its writes and before rank 0 repairs a cut line."""
    barrier()
    rows = data.read_jsonl_tolerant(path)
    barrier()
    return rows


def generate(sampler, messages: list, args: Args, desc: str) -> list[str]:
    """One completion per message; under torchrun each rank generates its share of every batch."""
    texts = []
    for start in tqdm(range(0, len(messages), args.generation_batch_size), desc=desc, leave=False):
        batch = messages[start:start + args.generation_batch_size]
        groups = generate_sharded(sampler, batch, n=1, temperature=args.temperature,
                                  max_new_tokens=args.max_new_tokens)
        texts += [group[0].text for group in groups]
    return texts


# ------------------------------------------------------------------------------------------------ SFT (§1.7)
def run_sft(model, tokenizer, examples: list[dict], args: Args, dist_info, logger, stage: str, lr: float,
            total_steps: int | None, ckpt: Path, scheduler_kind: str, step_offset: int = 0) -> tuple[float, int]:
    """Response-only SFT; returns (last loss, global step at the end). Metrics use global steps."""
    from transformers import get_scheduler

    end_ids = stop_token_ids(tokenizer)[-1:]  # <|im_end|> closes the assistant turn of the ChatML template
    encoded = []
    for ex in examples:
        prompt = tokenizer(render_prompt(tokenizer, [{"role": "user", "content": ex["prompt"]}]),
                           add_special_tokens=False).input_ids
        response = tokenizer(ex["response"], add_special_tokens=False).input_ids + end_ids
        encoded.append((prompt[:args.max_length // 2], response[:args.max_length - min(len(prompt), args.max_length // 2)]))
    steps_per_epoch = max(1, len(encoded) // args.batch_size)
    total = total_steps or steps_per_epoch * args.epochs
    optimizer = make_optimizer(model, lr)
    extra_kwargs = {"min_lr": 1e-6} if scheduler_kind == "cosine_with_min_lr" else {}
    scheduler = get_scheduler(scheduler_kind, optimizer, num_warmup_steps=0, num_training_steps=total,
                              scheduler_specific_kwargs=extra_kwargs)
    start = 0
    if args.resume and (state := load_checkpoint(ckpt, model, optimizer, scheduler)) and state[1].get("stage") == stage:
        start = state[0]
    generator = torch.Generator().manual_seed(args.seed)
    order = torch.cat([torch.randperm(len(encoded), generator=generator) for _ in range(total // steps_per_epoch + 1)])
    per_rank = args.batch_size // dist_info.world_size
    total_loss = float("nan")
    for step in tqdm(range(start, total), desc=f"sft {stage}", disable=not dist_info.is_main):
        batch = order[step * args.batch_size:(step + 1) * args.batch_size].tolist()
        mine = batch[dist_info.rank * per_rank:(dist_info.rank + 1) * per_rank] or batch[:1]
        total_loss = 0.0
        num_tokens = sum(len(encoded[i][1]) for i in mine)  # token mean over the rank's whole batch (§1.7)
        for sl in micro_batches(len(mine), args.micro_batch_size):
            chunk = [encoded[i] for i in mine[sl]]
            input_ids, attention_mask, loss_mask = sft_inputs(tokenizer, [c[0] for c in chunk], [c[1] for c in chunk],
                                                              dist_info.device)  # (b, L) each
            loss = sft_loss(model, input_ids, attention_mask, loss_mask, normalizer=num_tokens)
            loss.backward()
            total_loss += loss.item()
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        logger.log({f"{stage}/loss": total_loss, f"{stage}/lr": scheduler.get_last_lr()[0]}, step=step_offset + step + 1)
        if (step + 1) % args.save_every == 0 or step + 1 == total:
            save_checkpoint(ckpt, model, optimizer, scheduler, step + 1,
                            extra={"stage": stage, "global_step": step_offset + step + 1})
    return total_loss, step_offset + total


# ------------------------------------------------------------------------------------------------ main
def main(args: Args):
    stages = [s.strip() for s in args.stages.split(",") if s.strip()]
    if unknown := set(stages) - set(STAGES):
        raise ValueError(f"--stages: unknown {sorted(unknown)}; choose from {STAGES}")
    dist_info = init_distributed()
    seed_everything(args.seed)
    out = Path(args.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    model_path = args.model or make_tiny_lm()
    tokenizer = load_tokenizer(model_path)
    generating = bool(set(stages) & {"rewrite", "cot", "revise"})
    # SFT trains fp32 master weights (common.train's precision policy); SFT alone (torchrun) stays on the CPU
    # until shard_model puts each rank's shard on its GPU; generation alone runs the checkpoint's own dtype
    model = (load_model(model_path, dtype="float32" if "sft" in stages or not args.model else "auto",
                        device="cpu" if stages == ["sft"] else dist_info.device)
             if "sft" in stages or (generating and args.sampler == "hf") else None)  # vLLM loads its own copy
    sampler = (make_sampler(args.sampler, model, tokenizer, model_path=model_path, args=args)
               if generating else None)
    executes = set(stages) & {"io", "verify", "revise"}
    sandbox = (Sandbox(workers=args.sandbox_workers, timeout=args.verify_timeout,
                       allow_weaker=args.sandbox_allow_weaker) if executes else None)
    counts = []  # per-stage summary rows
    if sandbox is not None:  # how isolated the generated code is (SandboxUnavailable if not fully)
        iso = sandbox.isolation
        missing = f", missing {', '.join(iso['missing'])}" if iso["missing"] else ""
        counts.append({"stage": "sandbox", "in": args.sandbox_workers, "out": args.sandbox_workers,
                       "notes": f"isolation {iso['level']}{missing}"})
    infra = Counter()  # sandbox_error per stage: not written, so a rerun retries them

    # 1. rewrite raw files into the unified format (§1.1); unified files pass through
    path = out / "rewrite.jsonl"
    records, done = open_stage(path, "name")
    if "rewrite" in stages:
        corpus = [c for c in load_corpus(args.corpus) if c["name"] not in done]
        unified = [{"name": c["name"], "origin": "unified", "status": "ok", "reason": "ok", **fn,
                    **({"source": c["source"]} if "source" in c else {})}  # repo/path of release rows
                   for c in corpus if (fn := parse_unified_file(c["code"]))]
        write_jsonl(path, unified, mode="a")
        raw = [c for c in corpus if c["name"] not in {u["name"] for u in unified}]
        answers = generate(sampler, [[{"role": "user", "content": REWRITE_PROMPT.format(code=c["code"])}] for c in raw],
                           args, "rewrite")
        for item, answer in zip(raw, answers):
            fn, reason = parse_rewrite_response(answer)
            write_jsonl(path, [{"name": item["name"], "origin": "rewrite", "status": "ok" if fn else "rejected",
                                "reason": reason, "response": answer, **(fn or {}),
                                **({"source": item["source"]} if "source" in item else {})}], mode="a")
        records = read_jsonl_tolerant(path)
    rejected = dict(Counter(r["reason"] for r in records if r["status"] != "ok"))
    counts.append({"stage": "rewrite", "in": len(records), "out": sum(r["status"] == "ok" for r in records),
                   "notes": f"{sum(r['origin'] == 'unified' for r in records)} already unified; rejects {rejected}"})
    functions = {r["name"]: r for r in records if r["status"] == "ok"}

    # 2. I/O pairs by execution (§1.2)
    path = out / "io.jsonl"
    records, done = open_stage(path, "name")
    if "io" in stages:
        todo = [fn for name, fn in functions.items() if name not in done]
        jobs = [io_job(fn, args, seed=args.seed * 100003 + zlib.crc32(fn["name"].encode())) for fn in todo]
        results = sandbox.call_many([(code, "collect_io_pairs", kw) for code, kw in jobs], timeout=args.io_timeout)
        for fn, res in zip(todo, results):
            if res.infrastructure_failure:  # the sandbox broke, not the function: a rerun retries
                infra["io"] += 1
                continue
            pairs, stats = (res.value["pairs"], res.value["stats"]) if res.ok else ([], {})
            reason = ("ok" if len(pairs) > 1 and not stats.get("nondeterministic") else
                      f"sandbox {res.status}" if not res.ok else
                      "uses randomness" if stats.get("nondeterministic") else "<= 1 pair")
            write_jsonl(path, [{"name": fn["name"], "status": "ok" if reason == "ok" else "dropped", "reason": reason,
                                "pairs": pairs if reason == "ok" else [], "stats": stats}], mode="a")
        records = read_jsonl_tolerant(path)
    io_ok = {r["name"]: r for r in records if r["status"] == "ok" and r["name"] in functions}
    counts.append({"stage": "io", "in": len(records), "out": len(io_ok),
                   "notes": f"{sum(len(r['pairs']) for r in io_ok.values())} pairs; drops "
                            f"{sorted(r['reason'] for r in records if r['status'] != 'ok')}"
                            + infra_note(infra["io"])})

    # 3. prompts (§1.3): first pairs_per_function pairs -> one input- and one output-prediction prompt each
    path = out / "prompts.jsonl"
    records, done = open_stage(path, "id")
    if "prompts" in stages:
        new = [{"id": f"{name}:{kind}:{k}", "name": name, "kind": kind, "pair": pair,
                "prompt": build_prompt(kind, functions[name], pair, args.prompt_values)}
               for name, io in io_ok.items() for k, pair in enumerate(io["pairs"][:args.pairs_per_function])
               for kind in ("input", "output")]
        write_jsonl(path, [p for p in new if p["id"] not in done], mode="a")
        records = read_jsonl_tolerant(path)
    prompts = {r["id"]: r for r in records}
    counts.append({"stage": "prompts", "in": len(io_ok), "out": len(prompts),
                   "notes": f"{sum(p['kind'] == 'input' for p in prompts.values())} input / "
                            f"{sum(p['kind'] == 'output' for p in prompts.values())} output"})

    # 4. chain-of-thought answers (§1.4)
    path = out / "cot.jsonl"
    records, done = open_stage(path, "id")
    if "cot" in stages:
        todo = [p for p in prompts.values() if p["id"] not in done]
        for start in range(0, len(todo), args.generation_batch_size):  # append per batch: a kill loses one batch
            batch = todo[start:start + args.generation_batch_size]
            texts = generate(sampler, [[{"role": "user", "content": p["prompt"]}] for p in batch], args, "cot")
            write_jsonl(path, [{"id": p["id"], "prompt": p["prompt"], "response": t} for p, t in zip(batch, texts)], "a")
        records = read_jsonl_tolerant(path)
    cots = {r["id"]: r for r in records if r["id"] in prompts}
    counts.append({"stage": "cot", "in": len(prompts), "out": len(cots),
                   "notes": f"{sum(not r['response'].strip() for r in cots.values())} empty"})

    # 5. verification (§1.4)
    path = out / "verify.jsonl"
    records, done = open_stage(path, "id")
    if "verify" in stages:
        for cot in tqdm([c for c in cots.values() if c["id"] not in done], desc="verify", leave=False):
            sample = prompts[cot["id"]]
            check = check_answer(sandbox, sample, functions[sample["name"]], cot["response"], args)
            if check["status"] == "sandbox_error":  # neither scored nor fed back; a rerun retries
                infra["verify"] += 1
                continue
            write_jsonl(path, [{"id": cot["id"], "kind": sample["kind"], **check}], mode="a")
        records = read_jsonl_tolerant(path)
    verified = {r["id"]: r for r in records if r["id"] in cots}
    statuses = dict(Counter(r["status"] for r in verified.values()))
    accuracy = {kind: f"{sum(r['correct'] for r in verified.values() if r['kind'] == kind)}/"
                      f"{sum(r['kind'] == kind for r in verified.values())}" for kind in ("input", "output")}
    counts.append({"stage": "verify", "in": len(cots), "out": len(verified),
                   "notes": f"correct {accuracy}; statuses {statuses} (wrong CoTs are kept too)"
                            + infra_note(infra["verify"])})

    # 6. CodeI/O++ revision turn (§1.5)
    path = out / "revise.jsonl"
    records, done = open_stage(path, "id")
    if "revise" in stages and args.revise:
        todo = [v for v in verified.values() if v["id"] not in done]
        failed = [v for v in todo if not v["correct"]]  # only failed samples get a second turn
        conversations = [[{"role": "user", "content": cots[v["id"]]["prompt"]},
                          {"role": "assistant", "content": cots[v["id"]]["response"]},
                          {"role": "user", "content": f"{v['feedback']}\n\n{REDO}"}] for v in failed]
        second = dict(zip([v["id"] for v in failed], generate(sampler, conversations, args, "revise")))
        for v in todo:
            sample, turn_2 = prompts[v["id"]], second.get(v["id"])
            check = (check_answer(sandbox, sample, functions[sample["name"]], turn_2, args) if turn_2 is not None
                     else {"feedback": None, "correct": None})
            if check.get("status") == "sandbox_error":  # turn 2 unverifiable now: a rerun redoes it
                infra["revise"] += 1
                continue
            write_jsonl(path, [{"id": v["id"], "prompt": cots[v["id"]]["prompt"], "turn_1": cots[v["id"]]["response"],
                                "feedback_1": v["feedback"], "turn_2": turn_2, "feedback_2": check["feedback"],
                                "correct_2": check["correct"]}], mode="a")
        records = read_jsonl_tolerant(path)
    revised = [r for r in records if r["turn_2"] is not None]
    counts.append({"stage": "revise", "in": len(records), "out": len(records),
                   "notes": f"{len(revised)} second turns, {sum(bool(r['correct_2']) for r in revised)} correct; "
                            "all kept (§1.5)" + infra_note(infra["revise"])})
    if sandbox is not None:
        sandbox.close()

    # 7. SFT, response-only loss (§1.7), optional stage 2
    if "sft" in stages:
        # CodeI/O: every first-turn CoT, right or wrong (§1.4); CodeI/O++: the assembled revision (§1.5)
        examples = [{"prompt": r["prompt"], "response": assemble_revision(r) if args.revise else r["response"]}
                    for r in read_jsonl_tolerant(out / ("revise.jsonl" if args.revise else "cot.jsonl"))]
        if not examples:
            raise ValueError(f"no training examples in {out} (run the earlier --stages first)")
        model = shard_model(model, dist_info, gradient_checkpointing=args.gradient_checkpointing)
        metas = [out / d / "meta.json" for d in ("checkpoint", "checkpoint_stage2")]
        done_steps = [json.loads(m.read_text())["extra"]["global_step"] for m in metas if args.resume and m.exists()]
        logger = MetricsLogger(out, track=args.track, run_name="codeio", config=vars(args),
                               resume_step=max(done_steps) if done_steps else None)
        loss, global_step = run_sft(model, tokenizer, examples, args, dist_info, logger, "stage1", args.lr, None,
                       out / "checkpoint", "constant")
        counts.append({"stage": "sft", "in": len(examples), "out": len(examples), "notes": f"stage-1 final loss {loss:.3f}" if loss == loss else "already trained (resumed)"})
        if args.stage2_data:
            from common.data import make_arithmetic_rows

            rows = ([{"prompt": r["question"], "response": f"The answer is {r['answer']}."}
                     for r in make_arithmetic_rows(64, seed=args.seed)] if args.stage2_data == "toy"
                    else load_rows(args.stage2_data, required=("prompt", "response")))
            loss2, _ = run_sft(model, tokenizer, rows, args, dist_info, logger, "stage2", args.stage2_lr,
                               args.stage2_steps, out / "checkpoint_stage2", "cosine_with_min_lr", global_step)
            counts.append({"stage": "sft stage 2", "in": len(rows), "out": len(rows), "notes": f"final loss {loss2:.3f}" if loss2 == loss2 else "already trained (resumed)"})
        if dist_info.is_main:
            keys = ["stage1/loss"] + (["stage2/loss"] if args.stage2_data else [])
            print0(f"loss curve: {logger.plot(keys, out / 'sft_loss.png', title='CodeI/O SFT')}")
        logger.close()

    if dist_info.is_main:
        (out / "summary.json").write_text(json.dumps(counts, indent=1))
        print0("\n" + format_table(counts))
    cleanup_distributed()
    return counts


if __name__ == "__main__":
    main(parse_config(Args, PAPER, derived))
