"""CodeI/O: Condensing Reasoning Patterns via Code Input-Output Prediction (Li et al., arXiv 2502.07316).

Idea: turn code into natural-language reasoning data. Each function is rewritten into a unified format
(main_solution + I/O description + input generator + problem statement), executed to collect I/O
pairs, and turned into "predict the output" / "predict a feasible input" questions. A model writes a
chain of thought for each; output predictions are checked with a tolerant comparison and input
predictions by re-executing the function. CodeI/O trains on every first answer (right or wrong);
CodeI/O++ gives failed samples one revision turn with execution feedback and joins both turns into a
single response. The result is used for SFT with the loss on the response only.

Stages (each reads and writes JSONL in --output_dir, one complete record per line, reruns skip done
records): rewrite -> io -> prompts -> cot -> verify -> revise -> sft -> eval. All code runs in
common/sandbox.py. eval scores held-out I/O pairs for the base, the SFT student and the base after
the same SFT budget on the raw code (the paper's Python-Edu baseline); summary.json holds claims.

Departures:
- The defaults are the CPU toy's (a tiny student learns from ~150 CoTs): LR 1e-3 for 8 epochs
  (paper: 1e-5, 1 epoch on 3.5M samples), batch_size 8 sequences (paper: 1024), max_new_tokens 160
  (repo: 4096), max_length 2048 (paper: 4096); a named --model selects the paper preset (PAPER
  below), which has the paper's values.
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
- The rewrite/CoT author is any model behind common.sampling (--teacher model; paper: DeepSeek-V2.5;
  repo: gpt-4o-mini). The CPU toy's CoT author is StandInTeacher, a SCRIPT standing in for that LLM: it
  narrates the execution of the toy corpus's digits_* functions step by step and slips one digit per
  step with probability --teacher_slip; it cannot rewrite code or trace any other function.
- The toy (no --model) has a tiny student warm-started on plain-words step narrations; it evaluates
  held-out pairs of the training functions instead of the paper's 14 benchmarks, and skips stage 2.
- Under torchrun only --stages sft runs (generate the data with one process first, e.g. --sampler
  vllm); the generation code is rank-aware all the same: each rank generates its share of a batch
  (HF or its own vLLM engine) and rank 0 writes the records.

Commands (naming --model selects the paper preset, PAPER below; flags you pass win; --print_config shows
the effective configuration without loading anything):
    python codeio.py                                   # CPU toy: stand-in teacher, tiny student
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
import random
import re
import zlib
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import torch
from tqdm import tqdm

from common import data
from common.claims import claim, format_claims, write_summary
from common.config import parse_config, per_rank
from common.data import DataError, load_located_rows, load_rows
from common.models import load_model, load_tokenizer, stop_token_ids
from common.rewards import last_json_object
from common.sampling import Completion, VLLMArgs, generate_sharded, make_sampler, render_prompt
from common.sandbox import Sandbox
from common.toys import toy_model
from common.train import (
    MetricsLogger,
    barrier,
    cleanup_distributed,
    format_table,
    init_distributed,
    is_main_process,
    load_checkpoint,
    make_optimizer,
    micro_batches,
    print0,
    save_checkpoint,
    seed_everything,
    sft_inputs,
    sft_loss,
    shard_model,
)

STAGES = ("rewrite", "io", "prompts", "cot", "verify", "revise", "sft", "eval")


@dataclass
class Args(VLLMArgs):
    model: str = field(
        default="",
        metadata={
            "help": "policy/CoT author and SFT base; '' = tiny offline Qwen2 "
            "(the paper's CoTs are DeepSeek-V2.5's)"
        },
    )
    corpus: str = field(
        default="data/codeio_corpus",
        metadata={
            "help": "folder of .py files, or a JSONL/Parquet file/hub set of raw code: CodeI/O's release "
            "(`content`, repo_name, path) or a `code` column"
        },
    )
    output_dir: str = field(
        default="runs/codeio", metadata={"help": "stage JSONL files, metrics, checkpoint"}
    )
    stages: str = field(
        default=",".join(STAGES), metadata={"help": "comma-separated subset of " + ",".join(STAGES)}
    )
    sampler: Literal["hf", "vllm"] = field(default="hf", metadata={"help": "hf | vllm"})
    temperature: float = field(
        default=0.7,
        metadata={
            "help": "rewrite/CoT sampling temperature; paper: 0.7 (released repo's API calls)"
        },
    )
    max_new_tokens: int = field(
        default=160,
        metadata={
            "help": "generation budget; toy 160 (a whole narrated CoT); paper: 4096 (released repo's "
            "API calls)"
        },
    )
    generation_batch_size: int = field(default=64, metadata={"help": "prompts per generate call"})
    max_generator_calls: int = field(
        default=1000,
        metadata={"help": "input_generator() calls per function (release: src/parse_gen_ios.py)"},
    )
    max_pairs: int = field(
        default=10, metadata={"help": "unique I/O pairs kept per function (src/parse_gen_ios.py)"}
    )
    io_recheck: bool = field(
        default=True,
        metadata={
            "help": "run each kept input once more and drop functions whose output changes (the paper "
            "excludes functions that use randomness; the release's parse_gen_ios.py does not)"
        },
    )
    pairs_per_function: int = field(
        default=3,
        metadata={"help": "pairs turned into prompts, x2 tasks (src/build_codeio_msg.py)"},
    )
    io_timeout: float = field(
        default=60.0,
        metadata={"help": "seconds for one function's whole I/O run (src/parse_gen_ios.py)"},
    )
    verify_timeout: float = field(
        default=5.0,
        metadata={"help": "seconds to re-execute a predicted input (src/check_io_pred_acc_mp.py)"},
    )
    sandbox_workers: int = field(
        default=2, metadata={"help": "parallel sandbox processes (repo: 24-64)"}
    )
    sandbox_allow_weaker: bool = field(
        default=False,
        metadata={
            "help": "run generated code even where common/sandbox.py cannot isolate it fully (no "
            "bubblewrap, user namespaces or libseccomp); the summary prints what is missing"
        },
    )
    prompt_values: Literal["python", "json"] = field(
        default="python",
        metadata={
            "help": "how I/O values enter prompts: python (repo's f'{x}', src/build_codeio_msg.py) | json"
        },
    )
    revise: bool = field(
        default=True,
        metadata={
            "help": "CodeI/O++: one revision turn for failed samples (the paper's CodeI/O++)"
        },
    )
    lr: float = field(
        default=1e-3,
        metadata={
            "help": "stage-1 constant LR, no warmup; toy 1e-3 (a tiny student, ~150 CoTs); paper: 1e-5 "
            "(Gemma-2-27B: 4e-6)"
        },
    )
    epochs: int = field(default=8, metadata={"help": "stage-1 epochs; toy 8; paper: 1"})
    batch_size: int = field(
        default=8,
        metadata={
            "help": "sequences per optimizer step, all ranks; toy 8; paper: 1024 (both stages)"
        },
    )
    micro_batch_size: int = field(
        default=4,
        metadata={
            "help": "sequences per forward pass per rank (gradient "
            "accumulation, same token-mean loss); 0 = the rank's whole batch; paper preset: 2 (not stated in the paper)"
        },
    )
    gradient_checkpointing: bool = field(
        default=False,
        metadata={
            "help": "recompute decoder layers in the backward pass; "
            "paper preset: True (not stated in the paper; needed for long sequences at 7B)"
        },
    )
    max_length: int = field(default=2048, metadata={"help": "prompt+response tokens; paper: 4096"})
    stage2_data: str = field(
        default="",
        metadata={
            "help": "general instruction JSONL (prompt/response) for stage 2; "
            "'toy' = arithmetic rows; '' = skip (the paper's stage 2)"
        },
    )
    stage2_steps: int = field(default=700, metadata={"help": "stage-2 steps; paper: 700"})
    stage2_lr: float = field(
        default=3e-5,
        metadata={"help": "stage-2 peak LR, cosine to 1e-6; paper: 3e-5 (Gemma: 1e-5)"},
    )
    save_every: int = field(default=50, metadata={"help": "optimizer steps between checkpoints"})
    resume: bool = field(
        default=False, metadata={"help": "continue SFT from output_dir/checkpoint"}
    )
    seed: int = field(default=0, metadata={"help": "random seed"})
    track: bool = field(default=False, metadata={"help": "log to Weights & Biases"})
    # teacher, student and the held-out comparison
    teacher: Literal["auto", "model", "stand-in"] = field(
        default="auto",
        metadata={
            "help": "CoT author: model (--model writes rewrites and CoTs) | stand-in (StandInTeacher, "
            "a scripted narrator of the toy corpus's code, NOT a model) | auto (stand-in when "
            "no --model)"
        },
    )
    teacher_slip: float = field(
        default=0.3, metadata={"help": "stand-in: chance of a one-digit slip per step"}
    )
    eval_pairs_per_function: int = field(
        default=2,
        metadata={
            "help": "held-out pairs per function (after the training pairs) x 2 tasks, eval stage"
        },
    )
    compare_raw_code: bool = field(
        default=True,
        metadata={
            "help": "eval stage: also SFT the base on the raw code files for the same steps (the "
            "paper's Python-Edu baseline, LM loss on code) and evaluate it"
        },
    )
    toy_base_rows: int = field(
        default=4000,
        metadata={"help": "toy student base: general step narrations (toy_general_rows)"},
    )
    toy_base_steps: int = field(
        default=600, metadata={"help": "toy student base: warm-start steps of 16 rows"}
    )


# The paper's values, used with --preset paper (the default once --model is named); the defaults above are
# the CPU toy's (a tiny student learns from ~150 CoTs: a larger LR, several epochs, room for a whole
# narrated CoT). A flag on the command line wins.
PAPER = dict(
    lr=1e-5,  # stage 1, constant (Gemma-2-27B: 4e-6)
    epochs=1,  # stage 1
    max_new_tokens=4096,  # the released repo's API calls
    batch_size=1024,  # both SFT stages
    max_length=4096,
    gradient_checkpointing=True,  # not stated in the paper: bounds activation memory at long sequences
    micro_batch_size=2,  # not stated in the paper: bounds activation memory at long sequences
)


# One intra-op thread for the toy (no --model): the same float reductions on every machine, and a
# 64-wide model's tiny matmuls ran ~10x faster per CPU second than on 2 threads on a loaded 2-core
# machine.
TOY_THREADS = 1


def derived(args, world_size: int) -> dict:
    """Checks --stages (only sft runs under torchrun; eval generates, so it needs one process too)
    and splits the SFT batch over the ranks."""
    stages = [s.strip() for s in args.stages.split(",") if s.strip()]
    if unknown := set(stages) - set(STAGES):
        raise ValueError(f"--stages: unknown {sorted(unknown)}; choose from {STAGES}")
    if world_size > 1 and set(stages) != {"sft"}:
        raise ValueError(
            "under torchrun only --stages sft runs; generate the data with one process first"
        )
    rows = per_rank(args.batch_size, world_size, "--batch_size")
    return dict(sft_rows_per_rank=rows, micro_batches_per_step=-(-rows // args.micro_batch_size))


def resolve_teacher(args: Args) -> str:
    """--teacher auto: the named --model writes the CoTs, else the stand-in (the toy)."""
    if args.teacher == "auto":
        return "model" if args.model else "stand-in"
    return args.teacher


# ------------------------------------------------------------------------------------------------ rewrite (src/codeio_utils.py)
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
    outside_code = re.sub(
        r"```.*?```", lambda m: re.sub(r"[^\n]", " ", m.group()), text, flags=re.S
    )
    headings = list(
        re.finditer(r"^##\s*(.+?)[ \t]*$", outside_code, flags=re.M)
    )  # a '## x' comment in code is no heading
    bodies = {}
    for i, heading in enumerate(headings):
        end = headings[i + 1].start() if i + 1 < len(headings) else len(text)
        title = heading.group(1).rstrip(":").strip().lower()
        bodies.setdefault(title, text[heading.end() : end].strip())
    for section in SECTIONS:
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
    return {
        "main_code": code["main_solution"],
        "generator_code": code["input_generator"],
        "io_description": bodies["input output description"],
        "problem": bodies["problem statement"],
    }, "ok"


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
    match = re.match(
        r"\s*Problem Statement:\s*(.+?)\s*Input Output Description:\s*(.+)", doc, flags=re.S
    )
    if not match:
        return None
    lines = source.splitlines(keepends=True)
    generator = names["input_generator"]
    cut = [(tree.body[0].lineno, tree.body[0].end_lineno), (generator.lineno, generator.end_lineno)]
    main_code = "".join(
        line for i, line in enumerate(lines, 1) if not any(a <= i <= b for a, b in cut)
    )
    return {
        "main_code": main_code.strip(),
        "generator_code": ast.get_source_segment(source, generator),
        "io_description": match.group(2).strip(),
        "problem": match.group(1).strip(),
    }


# ------------------------------------------------------------------------------------------------ I/O pairs (src/parse_gen_ios.py)
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
    """The release's size filter (src/codeio_utils.py), applied to every element and dict key:
    < 1024 B in total, containers < 20 items, strings < 100 characters, any other leaf < 128 B."""
    if object_size(obj) >= 1024:
        return False
    if isinstance(obj, dict):
        return len(obj) < 20 and all(
            strict_check_size(k) and strict_check_size(v) for k, v in obj.items()
        )
    if isinstance(obj, (list, tuple, set, frozenset)):
        return len(obj) < 20 and all(strict_check_size(x) for x in obj)
    if isinstance(obj, str):
        return len(obj) < 100
    return object_size(obj) < 128


def collect_io_pairs(max_calls: int, max_pairs: int, seed: int, recheck: bool = True) -> dict:
    """The release's I/O loop, run INSIDE the sandbox after the function's code (shipped with it): call
    input_generator() up to max_calls times, keep unique inputs whose input and output pass the size
    filter and whose output is not None; stop at max_pairs. Each candidate input runs main_solution
    once, as in the release (hkust-nlp/CodeIO: src/parse_gen_ios.py, the generated I/O script); with
    `recheck`, each kept input runs once more and a changed output counts as "nondeterministic"."""
    import json
    import random

    random.seed(seed)
    np.random.seed(seed % 2**32)  # noqa: F821 (np comes from IMPORT_PREFIX in the sandbox)
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
                reason = (
                    "none_output"
                    if output is None
                    else "too_large"
                    if not strict_check_size(output)
                    else None
                )
        except (
            Exception
        ) as error:  # generator or function raised, or a value is not JSON-serialisable
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


IO_HELPERS = "\n\n".join(
    inspect.getsource(f) for f in (object_size, strict_check_size, collect_io_pairs)
)


def io_job(function: dict, args: Args, seed: int) -> tuple[str, dict]:
    code = "\n\n".join(
        [IMPORT_PREFIX, function["main_code"], function["generator_code"], IO_HELPERS]
    )
    return code, {
        "max_calls": args.max_generator_calls,
        "max_pairs": args.max_pairs,
        "seed": seed,
        "recheck": args.io_recheck,
    }


# ------------------------------------------------------------------------------------------------ prompts (src/codeio_utils.py)
IMPORT_PREFIX = """import json, math, random, re, string, heapq, bisect, copy, itertools, functools, operator
import collections, statistics, fractions, decimal, datetime, typing
from collections import Counter, defaultdict, deque, OrderedDict
from functools import lru_cache, reduce
from itertools import permutations, combinations, product, accumulate
from typing import List, Dict, Tuple, Optional, Any
import numpy as np"""
ANSWER_RULES = {
    "output": '{"output": <your output>}, where <your output> should strictly match the output '
    "requirement as specified",
    "input": '{"input": <your input>}, where <your input> should be a dictionary, even if there is only '
    "one input variable, with keys strictly matching the input variables' names as specified",
}


def show_value(value, style: str = "python") -> str:
    """The repo inserts values with f"{x}" (Python literals: 'a', True, None) although answers are JSON."""
    return f"{value}" if style == "python" else json.dumps(value)


def build_prompt(kind: str, function: dict, pair: dict, style: str = "python") -> str:
    """The release's prompt (src/codeio_utils.py: output_pred_template, input_pred_template,
    refcode_template) for kind "output" (given the input) or "input" (given the output)."""
    given = (
        f"Given the following input:\n\n{show_value(pair['input'], style)}"
        if kind == "output"
        else f"Given the following output:\n\n{show_value(pair['output'], style)}"
    )
    ask = "the output" if kind == "output" else "a feasible input"
    return (
        f"You are given a question that requires some input and output variables as follows:\n\n"
        f"{function['problem']}\n\nThe input and output requirements are as follows:\n\n"
        f"{function['io_description']}\n\n{given}\n\n"
        f"Can you predict {ask} without writing any code? Please reason and put your final answer in the "
        f"following json format: {ANSWER_RULES[kind]}.\n\n"
        f"Tip: Here is a reference code snippet for this question. You can refer to this code to guide your "
        f"reasoning but not copy spans of code directly.\n\n{function['main_code']}"
    )


# ------------------------------------------------------------------------------------------------ verification
NO_ANSWER = "no answer"


def _unbox(text: str) -> str:
    while (at := text.find("\\boxed{")) >= 0:
        depth, end = 1, at + 7
        while end < len(text) and depth:
            depth += {"{": 1, "}": -1}.get(text[end], 0)
            end += 1
        text = text[:at] + text[at + 7 : end - 1] + text[end:]
    return text


def extract_json_answer(text):
    """The release's extract_last_complete_json (src/codeio_utils.py): the last ```json block, else
    the last complete top-level {...}; on a parse failure retry with True/False/None ->
    true/false/null, then () -> [], then \\boxed{} removed. Failure: "no answer"."""
    if not isinstance(text, str):
        return NO_ANSWER
    fenced = re.findall(r"```json\s*(.*?)```", text, flags=re.S)
    candidate = fenced[-1].strip() if fenced else last_json_object(text)
    if not candidate:
        return NO_ANSWER
    repairs = [
        lambda s: s,
        lambda s: re.sub(
            r"\bTrue\b", "true", re.sub(r"\bFalse\b", "false", re.sub(r"\bNone\b", "null", s))
        ),
        lambda s: s.replace("(", "[").replace(")", "]"),
        _unbox,
    ]
    for repair in repairs:  # cumulative, in the repo's order
        candidate = repair(candidate)
        try:
            return json.loads(candidate)
        except (ValueError, RecursionError):
            continue
    return NO_ANSWER


def is_close(pred, gold) -> bool:
    """The release's is_close (src/codeio_utils.py, template_check_input): same dict keys / list
    lengths recursively; if either number is a float, |p - t| <= 1e-3 |t| and int(p) == int(t)
    (NaN/inf wrong); ints and everything else use ==."""
    if isinstance(gold, dict) or isinstance(pred, dict):
        return (
            isinstance(pred, dict)
            and isinstance(gold, dict)
            and pred.keys() == gold.keys()
            and all(is_close(pred[k], gold[k]) for k in gold)
        )
    if isinstance(gold, (list, tuple)) or isinstance(pred, (list, tuple)):
        return (
            isinstance(pred, (list, tuple))
            and isinstance(gold, (list, tuple))
            and len(pred) == len(gold)
            and all(is_close(p, g) for p, g in zip(pred, gold))
        )
    numbers = isinstance(pred, (int, float)) and isinstance(gold, (int, float))
    if numbers and (isinstance(pred, float) or isinstance(gold, float)):
        if not (math.isfinite(pred) and math.isfinite(gold)):
            return False
        return abs(pred - gold) <= 1e-3 * abs(gold) and int(pred) == int(gold)
    return pred == gold


def verify_input(
    sandbox: Sandbox, main_code: str, predicted_input, gold_output, timeout: float = 5.0
) -> dict:
    """Input check (src/codeio_utils.py, template_check_input): run main_solution(**predicted_input)
    in the sandbox; status success | AssertionError | exception | timeout, with a message naming
    the target, the input and what it gave."""
    if not isinstance(predicted_input, dict):
        return {
            "status": "exception",
            "message": f"the predicted input {predicted_input!r} is not a dict",
            "actual": None,
        }
    run = sandbox.call(
        IMPORT_PREFIX + "\n\n" + main_code,
        "main_solution",
        json.dumps(predicted_input),
        timeout=timeout,
    )
    if run.infrastructure_failure:  # the sandbox broke, not the input: never scored, never shown
        return {"status": "sandbox_error", "message": run.stderr.strip(), "actual": None}
    if run.status == "timeout":
        return {
            "status": "timeout",
            "message": f"execution did not finish within {timeout:g} s",
            "actual": None,
        }
    if not run.ok:
        last_line = (run.stderr.strip().splitlines() or [run.status])[-1]
        return {"status": "exception", "message": last_line, "actual": None}
    if json.dumps(run.value) == json.dumps(gold_output) or is_close(run.value, gold_output):
        return {"status": "success", "message": "", "actual": run.value}
    return {
        "status": "AssertionError",
        "actual": run.value,
        "message": f"target output {gold_output!r}, predicted input {predicted_input!r} gives {run.value!r}",
    }


# ------------------------------------------------------------------------------------------------ CodeI/O++ (paper: multi-turn revision)
REDO = "Please redo it, and your prediction should no longer be any of the wrong ones you have made before!"
CHECK, OOPS, CORRECT = (
    "Let me check if I did it correctly...",
    "Oops! Something went wrong.",
    "Yes, that's correct!",
)


def feedback_text(kind: str, pair: dict, check: dict) -> str | None:
    """The verifier message (the correct answer is never revealed). Values are serialised with
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
        return (
            f"[Mismatch] Your output is not correct! Given the input {show(pair['input'])}, "
            f"your predicted output is {show(check['predicted'])} which is wrong!"
        )
    if check["status"] == "AssertionError":
        return (
            f"[Mismatch] Your input is not feasible! Given the output {show(pair['output'])}, "
            f"your predicted input is {show(check['predicted'])}, which actually gets a wrong "
            f"output as {show(check['actual'])}"
        )
    if check["status"] == "timeout":
        return (
            f"[Timeout] Running the code on your predicted input {show(check['predicted'])} "
            "did not finish in time."
        )
    return (
        f"[Error] Running the code on your predicted input {show(check['predicted'])} failed: "
        f"{check['message']}"
    )


def assemble_revision(record: dict) -> str:
    """One training response from {turn_1, feedback_1, turn_2, feedback_2, correct_2} (issue #1):
    a correct (or never revised) turn 1 stays as is; otherwise the turns are joined by connective phrases."""
    if record.get("turn_2") is None:
        return record["turn_1"]
    ending = CORRECT if record.get("correct_2") else f"{OOPS} {record['feedback_2']}"
    return (
        f"{record['turn_1']}\n\n{CHECK}\n\n{OOPS} {record['feedback_1']}\n\n{record['turn_2']}"
        f"\n\n{CHECK}\n\n{ending}"
    )


# ------------------------------------------------------------------------------------------------ toy: teacher + student
# The paper's CoTs come from a strong LLM (DeepSeek-V2.5). A tiny offline model writes no parsable
# answer at all, so the CPU toy uses a scripted STAND-IN behind the same Sampler interface: it reads
# the reference code of the prompt, recognises the step forms of the toy corpus (data/codeio_corpus/
# digits_*.py), narrates the execution step by step in words, and slips with probability `slip` per
# step (one digit off), so verification sees a real mix of right and wrong CoTs. Any other code
# (josephus, roman_numeral, ...) it cannot trace: it says so and guesses, i.e. answers wrong.
# name: (code line, forward phrase, backward phrase, forward, backward); k = the step's constant
TOY_STEPS = {
    "sort": (
        r"(\w+) = sorted\((\w+)\)",
        "sort ascending",
        "a sorted list, keep it",
        lambda xs, k: sorted(xs),
        lambda ys, k: ys,
    ),
    "reverse": (
        r"(\w+) = (\w+)\[::-1\]",
        "reverse",
        "reverse back",
        lambda xs, k: xs[::-1],
        lambda ys, k: ys[::-1],
    ),
    "rotate": (
        r"(\w+) = (\w+)\[1:\] \+ \2\[:1\]",
        "first digit to the end",
        "last digit to the front",
        lambda xs, k: xs[1:] + xs[:1],
        lambda ys, k: ys[-1:] + ys[:-1],
    ),
    "even": (
        r"(\w+) = \[v for v in (\w+) if v % 2 == 0\]",
        "keep the even digits",
        "all even, keep it",
        lambda xs, k: [v for v in xs if v % 2 == 0],
        lambda ys, k: ys,
    ),
    "nine": (
        r"(\w+) = \[9 - v for v in (\w+)\]",
        "9 minus each digit",
        "9 minus each digit",
        lambda xs, k: [9 - v for v in xs],
        lambda ys, k: [9 - v for v in ys],
    ),
    "add": (
        r"(\w+) = \[\(v \+ (\d)\) % 10 for v in (\w+)\]",
        "add {k} mod 10",
        "subtract {k} mod 10",
        lambda xs, k: [(v + k) % 10 for v in xs],
        lambda ys, k: [(v - k) % 10 for v in ys],
    ),
}


def trace_toy_code(code: str) -> tuple[str, list[tuple[str, int]]] | None:
    """(argument, [(step name, constant)]) of a main_solution made of TOY_STEPS lines, else None."""
    head = re.search(r"def main_solution\((\w+)\):\n((?:    .*\n?)+)", code)
    if not head:
        return None
    variable, steps = head.group(1), []
    for line in head.group(2).strip().splitlines():
        line = line.strip()
        if line == f"return {variable}":
            return head.group(1), steps
        for name, (pattern, *_) in TOY_STEPS.items():
            match = re.fullmatch(pattern, line)
            source = match and (match.group(3) if name == "add" else match.group(2))
            if match and source == variable:
                steps.append((name, int(match.group(2)) if name == "add" else 0))
                variable = match.group(1)
                break
        else:
            return None
    return None


def narrate(
    kind: str, argument: str, steps: list, given: list, rng, slip: float
) -> tuple[str, dict]:
    """A step-by-step CoT for one toy I/O prediction and its answer; each step slips with p=`slip`."""

    def run(step_index, value, backward):
        name, k = steps[step_index]
        value = TOY_STEPS[name][4 if backward else 3](list(value), k)
        if value and rng.random() < slip:  # one digit off by one: the teacher's mistake
            at = rng.randrange(len(value))
            value[at] = (value[at] + 1) % 10
        return value

    value = list(given)
    if kind == "output":
        lines = [f"Start: {argument} = {value}."]
        for i, (name, k) in enumerate(steps):
            value = run(i, value, backward=False)
            lines.append(f"Step {i + 1}, {TOY_STEPS[name][1].format(k=k)}: {value}.")
        lines.append(f"It returns {value}.")
        answer = {"output": value}
    else:
        lines = [f"Output: {value}. Work backwards."]
        for i in reversed(range(len(steps))):
            value = run(i, value, backward=True)
            undo = TOY_STEPS[steps[i][0]][2].format(k=steps[i][1])
            lines.append(f"Undo step {i + 1}, {undo}: {value}.")
        lines.append(f"So {argument} = {value}.")
        answer = {"input": {argument: value}}
    return "\n".join(lines) + f"\n```json\n{json.dumps(answer)}\n```", answer


class StandInTeacher:
    """A scripted stand-in for the paper's CoT author, with the Sampler interface of common.sampling
    (generate(prompts, n, ...) -> list[list[Completion]]). Deterministic: the slips are seeded by
    the conversation. It answers only I/O-prediction prompts; a rewrite request gets a refusal (so
    the parser rejects it). A second turn (after feedback) is traced again with new slips and
    never repeats the answer the feedback called wrong."""

    def __init__(self, slip: float = 0.3, seed: int = 0):
        self.slip = slip
        self.seed = seed

    def generate(
        self, prompts, n=1, temperature=1.0, top_p=1.0, max_new_tokens=128, stop=None, **unused
    ):  # a script: temperature and length limits do not apply
        return [[Completion(self.answer(p, i), []) for i in range(n)] for p in prompts]

    def answer(self, messages, sample: int = 0) -> str:
        text = messages if isinstance(messages, str) else messages[0]["content"]
        rng = random.Random(f"{self.seed}:{sample}:{json.dumps(messages)}")
        kind = "output" if "Given the following input:" in text else "input"
        given = re.search(
            r"Given the following (?:input|output):\n\n(.*?)\n\nCan you predict", text, flags=re.S
        )
        code = text.split("not copy spans of code directly.\n\n", 1)[-1]
        traced = trace_toy_code(code) if given else None
        if given is None:
            return "I can only trace code on a given input; I cannot rewrite code."
        try:  # the prompt shows a Python literal (f"{x}"), or JSON with --prompt_values json
            value = ast.literal_eval(given.group(1))
        except (ValueError, SyntaxError):
            value = extract_json_answer('{"v": ' + given.group(1) + "}")
            value = value["v"] if isinstance(value, dict) else given.group(1)  # a bare f"{'MX'}"
        if traced is None or not isinstance(value, (dict, list)):
            guess = {"output": 0} if kind == "output" else {"input": {}}
            return (
                "I cannot trace this code step by step, so I guess.\n"
                f"```json\n{json.dumps(guess)}\n```"
            )
        argument, steps = traced
        start = value[argument] if kind == "output" else value
        previous = [
            extract_json_answer(m["content"]) for m in messages[1:] if m["role"] == "assistant"
        ]
        for _ in range(8):  # a revision must not repeat a wrong answer (the REDO instruction)
            cot, answer = narrate(kind, argument, steps, start, rng, self.slip)
            if answer not in previous:
                break
        return cot


def toy_general_rows(n: int, seed: int) -> list[dict]:
    """The toy student's 'pretraining': the same step narrations on random digit lists, asked in
    plain words (never a CodeI/O prompt, never code). It has seen the operations; CodeI/O has to
    teach it to use them on a question about code, in the JSON answer format."""
    rng = random.Random(seed)
    names = sorted(TOY_STEPS)
    rows = []
    for _ in range(n):
        chosen = rng.sample(names, rng.randint(1, 3))
        steps = [(name, rng.randint(1, 5) if name == "add" else 0) for name in chosen]
        given = [rng.randint(0, 9) for _ in range(rng.randint(3, 5))]
        kind = rng.choice(["output", "input"])
        words = "; then ".join(TOY_STEPS[s][1].format(k=k) for s, k in steps)
        question = (
            f"Apply these steps to xs = {given}: {words}. What comes out?"
            if kind == "output"
            else f"These steps turn xs into {given}: {words}. What could xs be?"
        )
        response = narrate(kind, "xs", steps, given, rng, 0.0)[0]
        rows.append({"prompt": question, "response": response})
    return rows


def toy_tokenizer(texts: list[str], vocab_size: int = 1024):
    """common.models.make_tokenizer's recipe (byte-level BPE, digits one per token, ChatML) trained
    on the toy's own text: the shared tiny tokenizer splits a CodeI/O prompt into ~500 tokens, this one
    into ~200, which halves every SFT step of the toy."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    from common.models import CHATML_TEMPLATE, SPECIAL_TOKENS

    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Digits(individual_digits=True),
            pre_tokenizers.ByteLevel(add_prefix_space=False),
        ]
    )
    bpe.decoder = decoders.ByteLevel()
    bpe.train_from_iterator(
        texts,
        trainer=trainers.BpeTrainer(
            vocab_size=vocab_size,
            special_tokens=SPECIAL_TOKENS,
            show_progress=False,
            initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        ),
    )
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=bpe,
        eos_token="<|endoftext|>",
        pad_token="<|endoftext|>",
        padding_side="left",
        additional_special_tokens=SPECIAL_TOKENS[1:],
    )
    tokenizer.chat_template = CHATML_TEMPLATE
    return tokenizer


def toy_student_base(args: Args) -> str:
    """The toy student: a tiny Qwen2 (common.models sizes) with a tokenizer trained on the toy's
    text, warm-started on toy_general_rows; built once and cached by common.toys.toy_model."""
    corpus = load_corpus(args.corpus)
    spec = {
        "rows": args.toy_base_rows,
        "steps": args.toy_base_steps,
        "seed": args.seed,
        "corpus": zlib.crc32(json.dumps(corpus, sort_keys=True).encode()),
    }

    def build(folder):
        from transformers import Qwen2Config, Qwen2ForCausalLM

        from common.models import TINY_LM_DEFAULTS

        torch.set_num_threads(TOY_THREADS)  # toy_model restores the caller's count afterwards
        rows = toy_general_rows(spec["rows"], spec["seed"])
        functions = [fn for c in corpus if (fn := parse_unified_file(c["code"]))]
        pair = {"input": {"xs": [1, 2, 3]}, "output": [1, 2, 3]}
        texts = (
            [build_prompt(kind, fn, pair) for fn in functions for kind in ("input", "output")]
            + [c["code"] for c in corpus]
            + [r["prompt"] + "\n" + r["response"] for r in rows[:500]]
            + [REWRITE_PROMPT, REDO, CHECK, OOPS, CORRECT, "[Mismatch] Your output is wrong!"]
        )
        tokenizer = toy_tokenizer(texts)
        torch.manual_seed(spec["seed"])
        config = Qwen2Config(
            vocab_size=len(tokenizer),
            bos_token_id=None,
            **TINY_LM_DEFAULTS,
            eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
        )
        model = Qwen2ForCausalLM(config)
        order = random.Random(spec["seed"])
        optimizer = make_optimizer(model, 3e-3)
        end_ids = stop_token_ids(tokenizer)[-1:]
        encoded = []  # (prompt ids, response ids + <|im_end|>) per row
        for row in rows:
            chat = render_prompt(tokenizer, [{"role": "user", "content": row["prompt"]}])
            encoded.append(
                (
                    tokenizer(chat, add_special_tokens=False).input_ids,
                    tokenizer(row["response"], add_special_tokens=False).input_ids + end_ids,
                )
            )
        for _ in tqdm(range(spec["steps"]), desc="toy student base (cached)", leave=False):
            batch = order.sample(encoded, 16)
            input_ids, attention_mask, loss_mask = sft_inputs(
                tokenizer, [b[0] for b in batch], [b[1] for b in batch]
            )  # (16, L) each
            sft_loss(model, input_ids, attention_mask, loss_mask).backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
        model.save_pretrained(folder)
        tokenizer.save_pretrained(folder)

    return toy_model(
        "codeio-student", spec, build, code=[toy_general_rows, narrate, toy_tokenizer, build_prompt]
    )


def heldout_samples(io_ok: dict, functions: dict, args: Args) -> list[dict]:
    """Held-out I/O prediction: the pairs after the first pairs_per_function (never trained on),
    as both kinds."""
    first, count = args.pairs_per_function, args.eval_pairs_per_function
    return [
        {
            "id": f"{name}:{kind}:{k}",
            "name": name,
            "kind": kind,
            "pair": pair,
            "prompt": build_prompt(kind, functions[name], pair, args.prompt_values),
        }
        for name, io in io_ok.items()
        for k, pair in enumerate(io["pairs"][first : first + count])
        for kind in ("input", "output")
    ]


def evaluate_io(model, tokenizer, samples: list[dict], functions: dict, sandbox, args) -> dict:
    """Greedy held-out I/O-prediction accuracy of a student (overall and per kind), scored by
    check_answer like the verify stage."""
    sampler = make_sampler("hf", model, tokenizer)
    messages = [[{"role": "user", "content": s["prompt"]}] for s in samples]
    groups = sampler.generate(messages, n=1, temperature=0, max_new_tokens=args.max_new_tokens)
    texts = [g[0].text for g in groups]
    scores = {"input": [], "output": []}
    for sample, text in zip(samples, texts):
        check = check_answer(sandbox, sample, functions[sample["name"]], text, args)
        if check["status"] != "sandbox_error":  # the sandbox failed, not the model: not scored
            scores[sample["kind"]].append(bool(check["correct"]))
    every = scores["input"] + scores["output"]
    return {
        "accuracy": sum(every) / max(1, len(every)),
        "n": len(every),
        "example": texts[0] if texts else "",
        **{f"accuracy_{kind}": sum(v) / max(1, len(v)) for kind, v in scores.items()},
    }


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


def check_answer(sandbox: Sandbox, sample: dict, function: dict, response: str, args: Args) -> dict:
    extracted = extract_json_answer(response)
    kind, pair = sample["kind"], sample["pair"]
    answered = isinstance(extracted, dict) and kind in extracted
    predicted = extracted[kind] if answered else None
    if not answered:
        check = {"status": "no answer", "message": "", "actual": None}
    elif kind == "output":
        check = {
            "status": "success" if is_close(predicted, pair["output"]) else "mismatch",
            "message": "",
            "actual": None,
        }
    else:
        check = verify_input(
            sandbox, function["main_code"], predicted, pair["output"], args.verify_timeout
        )
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
        batch = messages[start : start + args.generation_batch_size]
        groups = generate_sharded(
            sampler, batch, n=1, temperature=args.temperature, max_new_tokens=args.max_new_tokens
        )
        texts += [group[0].text for group in groups]
    return texts


# ------------------------------------------------------------------------------------------------ SFT (paper: training setup)
def sft_examples(out: Path, args: Args) -> list[dict]:
    """CodeI/O: every first-turn CoT, right or wrong; CodeI/O++: the assembled revision (paper)."""
    records = read_jsonl_tolerant(out / ("revise.jsonl" if args.revise else "cot.jsonl"))
    return [
        {"prompt": r["prompt"], "response": assemble_revision(r) if args.revise else r["response"]}
        for r in records
    ]


def run_sft(
    model,
    tokenizer,
    examples: list[dict],
    args: Args,
    dist_info,
    logger,
    stage: str,
    lr: float,
    total_steps: int | None,
    ckpt: Path,
    scheduler_kind: str,
    step_offset: int = 0,
) -> tuple[float, int]:
    """Response-only SFT; returns (last loss, global step at the end). Metrics use global steps."""
    from transformers import get_scheduler

    end_ids = stop_token_ids(tokenizer)[
        -1:
    ]  # <|im_end|> closes the assistant turn of the ChatML template
    encoded = []
    for ex in examples:
        prompt = tokenizer(
            render_prompt(tokenizer, [{"role": "user", "content": ex["prompt"]}]),
            add_special_tokens=False,
        ).input_ids
        response = tokenizer(ex["response"], add_special_tokens=False).input_ids + end_ids
        encoded.append(
            (
                prompt[: args.max_length // 2],
                response[: args.max_length - min(len(prompt), args.max_length // 2)],
            )
        )
    steps_per_epoch = max(1, len(encoded) // args.batch_size)
    total = total_steps or steps_per_epoch * args.epochs
    optimizer = make_optimizer(model, lr)
    extra_kwargs = {"min_lr": 1e-6} if scheduler_kind == "cosine_with_min_lr" else {}
    scheduler = get_scheduler(
        scheduler_kind,
        optimizer,
        num_warmup_steps=0,
        num_training_steps=total,
        scheduler_specific_kwargs=extra_kwargs,
    )
    start = 0
    if (
        args.resume
        and (state := load_checkpoint(ckpt, model, optimizer, scheduler))
        and state[1].get("stage") == stage
    ):
        start = state[0]
    generator = torch.Generator().manual_seed(args.seed)
    order = torch.cat(
        [
            torch.randperm(len(encoded), generator=generator)
            for _ in range(total // steps_per_epoch + 1)
        ]
    )
    per_rank = args.batch_size // dist_info.world_size
    total_loss = float("nan")
    for step in tqdm(range(start, total), desc=f"sft {stage}", disable=not dist_info.is_main):
        batch = order[step * args.batch_size : (step + 1) * args.batch_size].tolist()
        mine = batch[dist_info.rank * per_rank : (dist_info.rank + 1) * per_rank] or batch[:1]
        total_loss = 0.0
        num_tokens = sum(
            len(encoded[i][1]) for i in mine
        )  # token mean over the rank's whole batch (paper: training setup)
        for sl in micro_batches(len(mine), args.micro_batch_size):
            chunk = [encoded[i] for i in mine[sl]]
            input_ids, attention_mask, loss_mask = sft_inputs(
                tokenizer, [c[0] for c in chunk], [c[1] for c in chunk], dist_info.device
            )  # (b, L) each
            loss = sft_loss(model, input_ids, attention_mask, loss_mask, normalizer=num_tokens)
            loss.backward()
            total_loss += loss.item()
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        logger.log(
            {f"{stage}/loss": total_loss, f"{stage}/lr": scheduler.get_last_lr()[0]},
            step=step_offset + step + 1,
        )
        if (step + 1) % args.save_every == 0 or step + 1 == total:
            save_checkpoint(
                ckpt,
                model,
                optimizer,
                scheduler,
                step + 1,
                extra={"stage": stage, "global_step": step_offset + step + 1},
            )
    return total_loss, step_offset + total


# ------------------------------------------------------------------------------------------------ main
def main(args: Args):
    if not args.model:
        torch.set_num_threads(TOY_THREADS)
    stages = [s.strip() for s in args.stages.split(",") if s.strip()]
    if unknown := set(stages) - set(STAGES):
        raise ValueError(f"--stages: unknown {sorted(unknown)}; choose from {STAGES}")
    dist_info = init_distributed()
    seed_everything(args.seed)
    out = Path(args.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    generating = bool(set(stages) & {"rewrite", "cot", "revise"})
    teacher = resolve_teacher(args)
    by_model = generating and teacher == "model"
    trains = bool(set(stages) & {"sft", "eval"})
    # the student (and the CoT author with --teacher model); the toy's is built and cached here
    model_path = (args.model or toy_student_base(args)) if trains or by_model else None
    tokenizer = load_tokenizer(model_path) if model_path else None
    # SFT trains fp32 master weights (common.train's precision policy); SFT alone (torchrun) stays on the CPU
    # until shard_model puts each rank's shard on its GPU; generation alone runs the checkpoint's own dtype
    dtype = "float32" if trains or not args.model else "auto"
    needs_model = trains or (by_model and args.sampler == "hf")  # vLLM loads its own copy
    model = (
        load_model(model_path, dtype=dtype, device="cpu" if stages == ["sft"] else dist_info.device)
        if needs_model
        else None
    )
    sampler = (
        make_sampler(args.sampler, model, tokenizer, model_path=model_path, args=args)
        if by_model
        else StandInTeacher(args.teacher_slip, args.seed)
        if generating
        else None
    )
    executes = set(stages) & {"io", "verify", "revise", "eval"}
    sandbox = (
        Sandbox(
            workers=args.sandbox_workers,
            timeout=args.verify_timeout,
            allow_weaker=args.sandbox_allow_weaker,
        )
        if executes
        else None
    )
    counts = []  # per-stage summary rows
    if sandbox is not None:  # how isolated the generated code is (SandboxUnavailable if not fully)
        iso = sandbox.isolation
        missing = f", missing {', '.join(iso['missing'])}" if iso["missing"] else ""
        counts.append(
            {
                "stage": "sandbox",
                "in": args.sandbox_workers,
                "out": args.sandbox_workers,
                "notes": f"isolation {iso['level']}{missing}",
            }
        )
    infra = Counter()  # sandbox_error per stage: not written, so a rerun retries them

    # 1. rewrite raw files into the unified format (release prompt); unified files pass through
    path = out / "rewrite.jsonl"
    records, done = open_stage(path, "name")
    if "rewrite" in stages:
        corpus = [c for c in load_corpus(args.corpus) if c["name"] not in done]
        unified = [
            {
                "name": c["name"],
                "origin": "unified",
                "status": "ok",
                "reason": "ok",
                **fn,
                **({"source": c["source"]} if "source" in c else {}),
            }  # repo/path of release rows
            for c in corpus
            if (fn := parse_unified_file(c["code"]))
        ]
        write_jsonl(path, unified, mode="a")
        raw = [c for c in corpus if c["name"] not in {u["name"] for u in unified}]
        answers = generate(
            sampler,
            [[{"role": "user", "content": REWRITE_PROMPT.format(code=c["code"])}] for c in raw],
            args,
            "rewrite",
        )
        for item, answer in zip(raw, answers):
            fn, reason = parse_rewrite_response(answer)
            write_jsonl(
                path,
                [
                    {
                        "name": item["name"],
                        "origin": "rewrite",
                        "status": "ok" if fn else "rejected",
                        "reason": reason,
                        "response": answer,
                        **(fn or {}),
                        **({"source": item["source"]} if "source" in item else {}),
                    }
                ],
                mode="a",
            )
        records = read_jsonl_tolerant(path)
    rejected = dict(Counter(r["reason"] for r in records if r["status"] != "ok"))
    counts.append(
        {
            "stage": "rewrite",
            "in": len(records),
            "out": sum(r["status"] == "ok" for r in records),
            "notes": f"{sum(r['origin'] == 'unified' for r in records)} already unified; rejects {rejected}",
        }
    )
    functions = {r["name"]: r for r in records if r["status"] == "ok"}

    # 2. I/O pairs by execution (src/parse_gen_ios.py)
    path = out / "io.jsonl"
    records, done = open_stage(path, "name")
    if "io" in stages:
        todo = [fn for name, fn in functions.items() if name not in done]
        jobs = [
            io_job(fn, args, seed=args.seed * 100003 + zlib.crc32(fn["name"].encode()))
            for fn in todo
        ]
        results = sandbox.call_many(
            [(code, "collect_io_pairs", kw) for code, kw in jobs], timeout=args.io_timeout
        )
        for fn, res in zip(todo, results):
            if res.infrastructure_failure:  # the sandbox broke, not the function: a rerun retries
                infra["io"] += 1
                continue
            pairs, stats = (res.value["pairs"], res.value["stats"]) if res.ok else ([], {})
            reason = (
                "ok"
                if len(pairs) > 1 and not stats.get("nondeterministic")
                else f"sandbox {res.status}"
                if not res.ok
                else "uses randomness"
                if stats.get("nondeterministic")
                else "<= 1 pair"
            )
            write_jsonl(
                path,
                [
                    {
                        "name": fn["name"],
                        "status": "ok" if reason == "ok" else "dropped",
                        "reason": reason,
                        "pairs": pairs if reason == "ok" else [],
                        "stats": stats,
                    }
                ],
                mode="a",
            )
        records = read_jsonl_tolerant(path)
    io_ok = {r["name"]: r for r in records if r["status"] == "ok" and r["name"] in functions}
    counts.append(
        {
            "stage": "io",
            "in": len(records),
            "out": len(io_ok),
            "notes": f"{sum(len(r['pairs']) for r in io_ok.values())} pairs; drops "
            f"{sorted(r['reason'] for r in records if r['status'] != 'ok')}"
            + infra_note(infra["io"]),
        }
    )

    # 3. prompts (src/build_codeio_msg.py): first pairs_per_function pairs -> input + output prompts
    path = out / "prompts.jsonl"
    records, done = open_stage(path, "id")
    if "prompts" in stages:
        new = [
            {
                "id": f"{name}:{kind}:{k}",
                "name": name,
                "kind": kind,
                "pair": pair,
                "prompt": build_prompt(kind, functions[name], pair, args.prompt_values),
            }
            for name, io in io_ok.items()
            for k, pair in enumerate(io["pairs"][: args.pairs_per_function])
            for kind in ("input", "output")
        ]
        write_jsonl(path, [p for p in new if p["id"] not in done], mode="a")
        records = read_jsonl_tolerant(path)
    prompts = {r["id"]: r for r in records}
    counts.append(
        {
            "stage": "prompts",
            "in": len(io_ok),
            "out": len(prompts),
            "notes": f"{sum(p['kind'] == 'input' for p in prompts.values())} input / "
            f"{sum(p['kind'] == 'output' for p in prompts.values())} output",
        }
    )

    # 4. chain-of-thought answers (paper: a strong LLM; toy: StandInTeacher)
    path = out / "cot.jsonl"
    records, done = open_stage(path, "id")
    if "cot" in stages:
        todo = [p for p in prompts.values() if p["id"] not in done]
        for start in range(
            0, len(todo), args.generation_batch_size
        ):  # append per batch: a kill loses one batch
            batch = todo[start : start + args.generation_batch_size]
            texts = generate(
                sampler, [[{"role": "user", "content": p["prompt"]}] for p in batch], args, "cot"
            )
            write_jsonl(
                path,
                [
                    {"id": p["id"], "prompt": p["prompt"], "response": t}
                    for p, t in zip(batch, texts)
                ],
                "a",
            )
        records = read_jsonl_tolerant(path)
    cots = {r["id"]: r for r in records if r["id"] in prompts}
    counts.append(
        {
            "stage": "cot",
            "in": len(prompts),
            "out": len(cots),
            "notes": f"{sum(not r['response'].strip() for r in cots.values())} empty",
        }
    )

    # 5. verification (src/check_io_pred_acc_mp.py)
    path = out / "verify.jsonl"
    records, done = open_stage(path, "id")
    if "verify" in stages:
        for cot in tqdm(
            [c for c in cots.values() if c["id"] not in done], desc="verify", leave=False
        ):
            sample = prompts[cot["id"]]
            check = check_answer(sandbox, sample, functions[sample["name"]], cot["response"], args)
            if check["status"] == "sandbox_error":  # neither scored nor fed back; a rerun retries
                infra["verify"] += 1
                continue
            write_jsonl(path, [{"id": cot["id"], "kind": sample["kind"], **check}], mode="a")
        records = read_jsonl_tolerant(path)
    verified = {r["id"]: r for r in records if r["id"] in cots}
    statuses = dict(Counter(r["status"] for r in verified.values()))
    accuracy = {
        kind: f"{sum(r['correct'] for r in verified.values() if r['kind'] == kind)}/"
        f"{sum(r['kind'] == kind for r in verified.values())}"
        for kind in ("input", "output")
    }
    counts.append(
        {
            "stage": "verify",
            "in": len(cots),
            "out": len(verified),
            "notes": f"correct {accuracy}; statuses {statuses} (wrong CoTs are kept too)"
            + infra_note(infra["verify"]),
        }
    )

    # 6. CodeI/O++ revision turn (paper)
    path = out / "revise.jsonl"
    records, done = open_stage(path, "id")
    if "revise" in stages and args.revise:
        todo = [v for v in verified.values() if v["id"] not in done]
        failed = [v for v in todo if not v["correct"]]  # only failed samples get a second turn
        conversations = [
            [
                {"role": "user", "content": cots[v["id"]]["prompt"]},
                {"role": "assistant", "content": cots[v["id"]]["response"]},
                {"role": "user", "content": f"{v['feedback']}\n\n{REDO}"},
            ]
            for v in failed
        ]
        second = dict(
            zip([v["id"] for v in failed], generate(sampler, conversations, args, "revise"))
        )
        for v in todo:
            sample, turn_2 = prompts[v["id"]], second.get(v["id"])
            check = (
                check_answer(sandbox, sample, functions[sample["name"]], turn_2, args)
                if turn_2 is not None
                else {"feedback": None, "correct": None}
            )
            if check.get("status") == "sandbox_error":  # turn 2 unverifiable now: a rerun redoes it
                infra["revise"] += 1
                continue
            write_jsonl(
                path,
                [
                    {
                        "id": v["id"],
                        "prompt": cots[v["id"]]["prompt"],
                        "turn_1": cots[v["id"]]["response"],
                        "feedback_1": v["feedback"],
                        "turn_2": turn_2,
                        "feedback_2": check["feedback"],
                        "correct_2": check["correct"],
                    }
                ],
                mode="a",
            )
        records = read_jsonl_tolerant(path)
    revised = [r for r in records if r["turn_2"] is not None]
    first_turn = None  # (data accuracy of turn 1, after the revision turn)
    if records:
        right_1 = sum(r["turn_2"] is None for r in records)
        fixed = sum(bool(r["correct_2"]) for r in revised)
        first_turn = (right_1 / len(records), (right_1 + fixed) / len(records))
    counts.append(
        {
            "stage": "revise",
            "in": len(records),
            "out": len(records),
            "notes": f"{len(revised)} second turns, {sum(bool(r['correct_2']) for r in revised)} correct; "
            "all kept (paper)" + infra_note(infra["revise"]),
        }
    )

    # 7. SFT, response-only loss (paper: training setup), optional stage 2
    if set(stages) & {"sft", "eval"}:
        metas = [out / d / "meta.json" for d in ("checkpoint", "checkpoint_stage2")]
        done_steps = [
            json.loads(m.read_text())["extra"]["global_step"]
            for m in metas
            if args.resume and m.exists()
        ]
        logger = MetricsLogger(
            out,
            track=args.track,
            run_name="codeio",
            config=vars(args),
            resume_step=max(done_steps) if done_steps else None,
        )
    if "sft" in stages:
        examples = sft_examples(out, args)
        if not examples:
            raise ValueError(f"no training examples in {out} (run the earlier --stages first)")
        model = shard_model(model, dist_info, gradient_checkpointing=args.gradient_checkpointing)
        loss, global_step = run_sft(
            model,
            tokenizer,
            examples,
            args,
            dist_info,
            logger,
            "stage1",
            args.lr,
            None,
            out / "checkpoint",
            "constant",
        )
        counts.append(
            {
                "stage": "sft",
                "in": len(examples),
                "out": len(examples),
                "notes": f"stage-1 final loss {loss:.3f}"
                if loss == loss
                else "already trained (resumed)",
            }
        )
        if args.stage2_data:
            from common.data import make_arithmetic_rows

            rows = (
                [
                    {"prompt": r["question"], "response": f"The answer is {r['answer']}."}
                    for r in make_arithmetic_rows(64, seed=args.seed)
                ]
                if args.stage2_data == "toy"
                else load_rows(args.stage2_data, required=("prompt", "response"))
            )
            loss2, _ = run_sft(
                model,
                tokenizer,
                rows,
                args,
                dist_info,
                logger,
                "stage2",
                args.stage2_lr,
                args.stage2_steps,
                out / "checkpoint_stage2",
                "cosine_with_min_lr",
                global_step,
            )
            counts.append(
                {
                    "stage": "sft stage 2",
                    "in": len(rows),
                    "out": len(rows),
                    "notes": f"final loss {loss2:.3f}"
                    if loss2 == loss2
                    else "already trained (resumed)",
                }
            )

    # 8. held-out I/O prediction: the base, the CodeI/O(++) student, the base after SFT on raw code
    claims, results = [], {}
    if "eval" in stages:
        samples = heldout_samples(io_ok, functions, args)
        if not samples:
            raise ValueError(
                "eval: no held-out pairs (raise --max_pairs or lower --pairs_per_function)"
            )
        if "sft" not in stages and not load_checkpoint(
            out / "checkpoint", model, restore_rng=False
        ):
            raise ValueError(f"eval: no {out / 'checkpoint'} (run --stages sft first)")
        name = "codeio++" if args.revise else "codeio"
        results[name] = evaluate_io(model, tokenizer, samples, functions, sandbox, args)
        base = load_model(model_path, dtype=dtype, device=dist_info.device)
        results["base"] = evaluate_io(base, tokenizer, samples, functions, sandbox, args)
        claims.append(
            claim(
                f"SFT on {name} data beats the base",
                "held-out I/O accuracy",
                results["base"]["accuracy"],
                results[name]["accuracy"],
            )
        )
        if args.compare_raw_code:  # the paper's baseline: the same SFT budget on the code itself
            code = {c["name"]: c["code"] for c in load_corpus(args.corpus)}
            raw = [{"prompt": "", "response": code[n]} for n in io_ok if n in code]
            steps = max(1, len(sft_examples(out, args)) // args.batch_size) * args.epochs
            base = shard_model(base, dist_info, gradient_checkpointing=args.gradient_checkpointing)
            run_sft(
                base,
                tokenizer,
                raw,
                args,
                dist_info,
                logger,
                "raw_code",
                args.lr,
                steps,
                out / "checkpoint_raw_code",
                "constant",
            )
            results["raw_code"] = evaluate_io(base, tokenizer, samples, functions, sandbox, args)
            claims.append(
                claim(
                    f"SFT on {name} data beats SFT on raw code",
                    "held-out I/O accuracy",
                    results["raw_code"]["accuracy"],
                    results[name]["accuracy"],
                )
            )
        for who, r in results.items():
            counts.append(
                {
                    "stage": f"eval {who}",
                    "in": r["n"],
                    "out": round(r["accuracy"] * r["n"]),
                    "notes": f"held-out accuracy {r['accuracy']:.3f} (input "
                    f"{r['accuracy_input']:.3f}, output "
                    f"{r['accuracy_output']:.3f})",
                }
            )
    if sandbox is not None:
        sandbox.close()
    if set(stages) & {"sft", "eval"}:
        if dist_info.is_main:
            keys = [
                k
                for k in ("stage1/loss", "stage2/loss", "raw_code/loss")
                if any(k in r for r in logger.history)
            ]
            print0(f"loss curve: {logger.plot(keys, out / 'sft_loss.png', title='CodeI/O SFT')}")
        logger.close()

    if dist_info.is_main:
        if first_turn is not None:  # CodeI/O++ : accuracy of the data before and after revision
            claims.insert(
                0,
                claim(
                    "CodeI/O++ revision turns wrong CoTs right",
                    "verified CoT accuracy",
                    *first_turn,
                ),
            )
        write_summary(out, claims, stages=counts, eval=results)
        print0("\n" + format_table(counts))
        print0("\n" + format_claims(claims))
    cleanup_distributed()
    return counts


if __name__ == "__main__":
    main(parse_config(Args, PAPER, derived))
