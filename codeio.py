"""CodeI/O and CodeI/O++ (docs/codeio.md): code input/output prediction as reasoning data + SFT.

Paper: "CodeI/O: Condensing Reasoning Patterns via Code Input-Output Prediction" (Li et al.,
arXiv 2502.07316); released code: hkust-nlp/CodeIO.

Idea: each code file is rewritten into a unified format (main_solution + I/O description + input
generator + problem statement), executed to collect I/O pairs, and turned into "predict the output"
and "predict a feasible input" questions. A model answers each with a chain of thought; outputs are
checked with a tolerant comparison, inputs by running the function again. CodeI/O trains on every
first answer (right or wrong); CodeI/O++ gives failed samples one revision turn with execution
feedback and joins both turns into one response. SFT uses the loss on the response only.
Stages (resumable JSONL): rewrite -> io -> prompts -> cot -> verify -> revise -> sft -> eval.

Departures (details in docs/codeio.md):
- Toy defaults: LR 1e-3, 8 epochs (paper: 1e-5, 1), batch 8 (paper: 1024), max_new_tokens 160
  (release: 4096), max_length 2048 (paper: 4096); a named --model selects PAPER.
- Size filter: a recursive sys.getsizeof stands in for pympler.asizeof.
- "Uses randomness" (no criterion in the paper, no check in the release): each kept input runs once
  more, a changed output drops the function (--io_recheck false = the release); generators are
  seeded per function; a candidate that raises is skipped (the release's script dies).
- Sandbox infrastructure failures are neither written, scored nor shown to the model (a rerun
  retries them); verification makes one pass (the release re-runs timeouts).
- CodeI/O++: our connective phrases (`assemble_revision`); a correct first turn is kept as is;
  extra feedback for "no parsable answer" and "timeout"; the code tip in both prompt kinds.
- The rewrite/CoT author is any model behind common.sampling (paper: DeepSeek-V2.5; release:
  gpt-4o-mini), with --model also the student; the toy's is a SCRIPT,
  common.code_teacher.StandInTeacher (slips one digit per step w.p. --teacher_slip).
- Toy eval: held-out pairs of the training functions, not the 14 benchmarks (Table 1); no stage 2.
  The raw-code (Python-Edu) baseline: the base, same steps, on the corpus files as responses.
- Under torchrun ranks share generation and sandbox jobs; eval runs in one process.

Commands (a named --model selects PAPER; flags you pass win; more in docs/codeio.md):
    python codeio.py                                   # CPU toy: stand-in teacher, tiny student
    torchrun --nproc_per_node=8 codeio.py --model Qwen/Qwen2.5-Coder-7B --stages sft \\
        --output_dir runs/codeio --stage2_data tulu3.jsonl                        # 8 GPUs
"""

from __future__ import annotations

import json
import math
import zlib
from collections import Counter
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Literal

import torch

from common import code_teacher
from common.claims import claim
from common.config import arg, parse_config, per_rank
from common.data import (
    extract_json_answer,
    load_code_corpus,
    parse_rewrite_response,
    parse_unified_file,
)
from common.io_pairs import IMPORT_PREFIX, IO_HELPERS
from common.sampling import VLLMArgs
from common.sandbox import Sandbox
from common.sft import compare_with_baselines, instruction_rows, loss_note, make_logger, run_sft
from common.stages import (
    StageRun,
    finish_run,
    generate,
    greedy_accuracy,
    parse_stages,
    read_jsonl,
    user,
)
from common.train import (
    cleanup_distributed,
    init_distributed,
    load_checkpoint,
    seed_everything,
    shard_model,
)

STAGES = ("rewrite", "io", "prompts", "cot", "verify", "revise", "sft", "eval")


@dataclass
class Args(VLLMArgs):
    model: str = arg("", "CoT author and SFT base; '' = the tiny offline toy student")
    corpus: str = arg("data/codeio_corpus", ".py folder, or JSONL/Parquet/hub: `content`|`code`")
    output_dir: str = arg("runs/codeio", "stage JSONL files, metrics, checkpoint")
    stages: str = arg(",".join(STAGES), "comma-separated subset of " + ",".join(STAGES))
    sampler: Literal["hf", "vllm"] = arg("hf", "generation backend")
    temperature: float = arg(0.7, "rewrite/CoT temperature; paper: 0.7 (release API calls)")
    max_new_tokens: int = arg(160, "toy: a whole narrated CoT; paper: 4096 (release API calls)")
    generation_batch_size: int = arg(64, "prompts per generate call and per sandbox chunk")
    max_generator_calls: int = arg(1000, "input_generator() calls per function (parse_gen_ios.py)")
    max_pairs: int = arg(10, "unique I/O pairs kept per function (src/parse_gen_ios.py)")
    io_recheck: bool = arg(True, "run kept inputs once more, drop functions whose output changes")
    pairs_per_function: int = arg(3, "pairs turned into prompts, x2 tasks (build_codeio_msg.py)")
    io_timeout: float = arg(60.0, "seconds for one function's whole I/O run (parse_gen_ios.py)")
    verify_timeout: float = arg(5.0, "seconds per predicted input (check_io_pred_acc_mp.py)")
    sandbox_workers: int = arg(2, "parallel sandbox processes per rank (release: 24-64)")
    sandbox_allow_weaker: bool = arg(False, "run code even where the sandbox cannot fully isolate")
    prompt_values: Literal["python", "json"] = arg(
        "python", "values in prompts: f'{x}' (release) | json"
    )
    revise: bool = arg(True, "CodeI/O++: one revision turn for failed samples")
    lr: float = arg(1e-3, "stage-1 constant LR; paper: 1e-5 (Gemma-2-27B: 4e-6)")
    epochs: int = arg(8, "stage-1 epochs; paper: 1")
    batch_size: int = arg(8, "sequences per optimizer step, all ranks; paper: 1024 (both stages)")
    micro_batch_size: int = arg(4, "sequences per forward per rank; paper preset: 2 (not stated)")
    gradient_checkpointing: bool = arg(False, "recompute layers; paper preset: True (not stated)")
    max_length: int = arg(2048, "prompt+response tokens; paper: 4096")
    stage2_data: str = arg("", "stage-2 prompt/response JSONL; 'toy' = arithmetic; '' = skip")
    stage2_steps: int = arg(700, "stage-2 steps; paper: 700")
    stage2_lr: float = arg(3e-5, "stage-2 peak LR, cosine to 1e-6; paper: 3e-5 (Gemma: 1e-5)")
    save_every: int = arg(50, "optimizer steps between checkpoints")
    resume: bool = arg(False, "continue SFT from output_dir/checkpoint")
    seed: int = arg(0, "random seed")
    track: bool = arg(False, "log to Weights & Biases")
    teacher: Literal["auto", "model", "stand-in"] = arg("auto", "CoT author; stand-in: a script")
    teacher_slip: float = arg(0.3, "stand-in: chance of a one-digit slip per step")
    eval_pairs_per_function: int = arg(2, "held-out pairs per function (after training's) x2")
    compare_raw_code: bool = arg(True, "eval: also SFT the base on the raw code (Python-Edu)")
    toy_base_rows: int = arg(4000, "toy student base: plain-words step narrations")
    toy_base_steps: int = arg(600, "toy student base: warm-start steps of 16 rows")


# The paper's values (--preset paper, the default once --model is named); a flag given wins.
PAPER = dict(
    lr=1e-5,  # stage 1, constant (paper's training setup; Gemma-2-27B: 4e-6)
    epochs=1,
    max_new_tokens=4096,  # the release's API calls
    batch_size=1024,  # both SFT stages
    max_length=4096,
    gradient_checkpointing=True,  # not stated: bounds activation memory at long sequences
    micro_batch_size=2,  # not stated: bounds activation memory at long sequences
)


def derived(args, world_size: int) -> dict:
    """Checks --stages (eval compares three models in one process) and splits the SFT batch."""
    if world_size > 1 and "eval" in parse_stages(args.stages, STAGES):
        raise ValueError(
            "--stages: eval compares three models in one process; under torchrun pass "
            "--stages rewrite,io,prompts,cot,verify,revise,sft, then run --stages eval alone"
        )
    rows = per_rank(args.batch_size, world_size, "--batch_size")
    return dict(sft_rows_per_rank=rows, micro_batches_per_step=-(-rows // args.micro_batch_size))


# ---------------------------------------------- 1. rewrite (release: src/codeio_utils.py)
REWRITE_PROMPT = """\
Turn this raw Python code into a self-contained reasoning task.
```python
{code}
```
Answer with exactly these four sections, each starting with a level-2 markdown heading:
## Main Function
One python code block with the imports it needs and an entry function `main_solution` \
whose arguments and
return value are JSON serialisable (convert sets, tuples, numpy arrays and custom objects \
at the boundaries).
Under about 1KB. No printing, plotting or file access: return the result.
## Input Output Description
Every argument of `main_solution` and its return value, each with its type and meaning.
## Input Generator
One python code block defining `input_generator()`: no arguments, returns a dict of random \
keyword arguments
for `main_solution`.
## Problem Statement
A question that names the inputs and asks for the result, as a problem to think about, not a \
programming
task (never "write a function").
"""


# ---------------------------------------------- 2. I/O pairs (release: src/parse_gen_ios.py)
# The collection loop and size filter run inside the sandbox: common/io_pairs.py (collect_io_pairs,
# strict_check_size); io_record below decides which functions are kept.
def io_job(function: dict, args: Args, seed: int) -> tuple[str, dict]:
    """(code, kwargs) of one function's sandboxed I/O run: imports, its code, the collector."""
    parts = [IMPORT_PREFIX, function["main_code"], function["generator_code"], IO_HELPERS]
    kwargs = {"max_calls": args.max_generator_calls, "max_pairs": args.max_pairs}
    return "\n\n".join(parts), {**kwargs, "seed": seed, "recheck": args.io_recheck}


# ---------------------------------------------- 3. prompts (release: src/codeio_utils.py)
ANSWER_RULES = {
    "output": '{"output": <your output>}, where <your output> should strictly match the output '
    "requirement as specified",
    "input": '{"input": <your input>}, where <your input> should be a dictionary, even if there is '
    "only one input variable, with keys strictly matching the input variables' names as specified",
}


def show_value(value, style: str = "python") -> str:
    """The release shows values with f"{x}" (Python literals: 'a', True); answers are JSON."""
    return f"{value}" if style == "python" else json.dumps(value)


def build_prompt(kind: str, function: dict, pair: dict, style: str = "python") -> str:
    """The release's output_pred_template / input_pred_template + refcode_template, for kind
    "output" (given the input) or "input" (given the output)."""
    given = "input" if kind == "output" else "output"
    ask = "the output" if kind == "output" else "a feasible input"
    return (
        "You are given a question that requires some input and output variables as follows:\n\n"
        f"{function['problem']}\n\nThe input and output requirements are as follows:\n\n"
        f"{function['io_description']}\n\n"
        f"Given the following {given}:\n\n{show_value(pair[given], style)}\n\n"
        f"Can you predict {ask} without writing any code? Please reason and put your final answer "
        f"in the following json format: {ANSWER_RULES[kind]}.\n\n"
        "Tip: Here is a reference code snippet for this question. You can refer to this code to "
        f"guide your reasoning but not copy spans of code directly.\n\n{function['main_code']}"
    )


# ---------------------------------------------- 4. verification (release: src/codeio_utils.py)
def is_close(pred, gold) -> bool:
    """The release's is_close (template_check_input): same dict keys / list lengths recursively; if
    either number is a float, |p - t| <= 1e-3 |t| and int(p) == int(t) (NaN/inf wrong); else ==."""
    if isinstance(gold, dict) or isinstance(pred, dict):
        same_keys = isinstance(pred, dict) and isinstance(gold, dict) and pred.keys() == gold.keys()
        return same_keys and all(is_close(pred[k], gold[k]) for k in gold)
    sequence = (list, tuple)
    if isinstance(gold, sequence) or isinstance(pred, sequence):
        same_length = isinstance(pred, sequence) and isinstance(gold, sequence)
        same_length = same_length and len(pred) == len(gold)
        return same_length and all(is_close(p, g) for p, g in zip(pred, gold))
    numbers = isinstance(pred, (int, float)) and isinstance(gold, (int, float))
    if numbers and (isinstance(pred, float) or isinstance(gold, float)):
        if not (math.isfinite(pred) and math.isfinite(gold)):
            return False
        return abs(pred - gold) <= 1e-3 * abs(gold) and int(pred) == int(gold)
    return pred == gold


def verify_input(sandbox, main_code: str, predicted, gold_output, timeout: float = 5.0) -> dict:
    """The release's template_check_input: run main_solution(**predicted) in the sandbox; status
    success | AssertionError | exception | timeout (| sandbox_error: never scored, never shown)."""
    if not isinstance(predicted, dict):
        message = f"the predicted input {predicted!r} is not a dict"
        return {"status": "exception", "message": message, "actual": None}
    code = IMPORT_PREFIX + "\n\n" + main_code
    run = sandbox.call(code, "main_solution", json.dumps(predicted), timeout=timeout)
    if run.infrastructure_failure:
        return {"status": "sandbox_error", "message": run.stderr.strip(), "actual": None}
    if run.status == "timeout":
        message = f"execution did not finish within {timeout:g} s"
        return {"status": "timeout", "message": message, "actual": None}
    if not run.ok:
        last_line = (run.stderr.strip().splitlines() or [run.status])[-1]
        return {"status": "exception", "message": last_line, "actual": None}
    if json.dumps(run.value) == json.dumps(gold_output) or is_close(run.value, gold_output):
        return {"status": "success", "message": "", "actual": run.value}
    message = f"target output {gold_output!r}, predicted input {predicted!r} gives {run.value!r}"
    return {"status": "AssertionError", "actual": run.value, "message": message}


def check_answer(sandbox, sample: dict, function: dict, response: str, args: Args) -> dict:
    """Score one response: extract the answer, compare an output, re-execute an input; add the
    verifier's feedback (None for a sandbox failure)."""
    extracted = extract_json_answer(response)
    kind, pair = sample["kind"], sample["pair"]
    answered = isinstance(extracted, dict) and kind in extracted
    predicted = extracted[kind] if answered else None
    if not answered:
        check = {"status": "no answer", "message": "", "actual": None}
    elif kind == "output":
        status = "success" if is_close(predicted, pair["output"]) else "mismatch"
        check = {"status": status, "message": "", "actual": None}
    else:
        timeout = args.verify_timeout
        check = verify_input(sandbox, function["main_code"], predicted, pair["output"], timeout)
    check["predicted"] = predicted
    check["correct"] = None if check["status"] == "sandbox_error" else check["status"] == "success"
    check["feedback"] = feedback_text(kind, pair, check)
    return check


# ---------------------------------------------- 5. CodeI/O++ (the paper's multi-turn revision)
REDO = (
    "Please redo it, and your prediction should no longer be any of the wrong ones you have made "
    "before!"
)
CHECK = "Let me check if I did it correctly..."
OOPS = "Oops! Something went wrong."
CORRECT = "Yes, that's correct!"


def feedback_text(kind: str, pair: dict, check: dict) -> str | None:
    """The verifier's message (never the correct answer), values as json.dumps like the release
    (src/check_io_pred_acc_mp.py, check_io_pred_acc; template_check_input). None for a sandbox
    failure: there is nothing to tell the model."""
    status, show = check["status"], json.dumps
    if status == "sandbox_error":
        return None
    if status == "success":
        return CORRECT
    if status == "no answer":
        return "[Format Error] No answer in the required JSON format was found in your response."
    if kind == "output":
        return (
            f"[Mismatch] Your output is not correct! Given the input {show(pair['input'])}, "
            f"your predicted output is {show(check['predicted'])} which is wrong!"
        )
    if status == "AssertionError":
        return (
            f"[Mismatch] Your input is not feasible! Given the output {show(pair['output'])}, "
            f"your predicted input is {show(check['predicted'])}, which actually gets a wrong "
            f"output as {show(check['actual'])}"
        )
    running = f"Running the code on your predicted input {show(check['predicted'])}"
    if status == "timeout":
        return f"[Timeout] {running} did not finish in time."
    return f"[Error] {running} failed: {check['message']}"


def assemble_revision(record: dict) -> str:
    """One training response from {turn_1, feedback_1, turn_2, feedback_2, correct_2}: the turns
    joined by connective phrases (hkust-nlp/CodeIO issue #1); a correct turn 1 stays as is."""
    if record.get("turn_2") is None:
        return record["turn_1"]
    ending = CORRECT if record.get("correct_2") else f"{OOPS} {record['feedback_2']}"
    return (
        f"{record['turn_1']}\n\n{CHECK}\n\n{OOPS} {record['feedback_1']}\n\n{record['turn_2']}"
        f"\n\n{CHECK}\n\n{ending}"
    )


# ---------------------------------------------- samples and their checks
def check_all(sandbox, functions: dict, args: Args, items: list) -> list[dict]:
    """check_answer on (sample, response) items."""
    return [check_answer(sandbox, s, functions[s["name"]], text, args) for s, text in items]


def io_samples(io_ok: dict, functions: dict, args: Args, start: int, count: int) -> list[dict]:
    """Pairs start..start+count of each function, each as an input- and an output-prediction."""
    samples = []
    for name, io in io_ok.items():
        for k, pair in enumerate(io["pairs"][start : start + count]):
            for kind in ("input", "output"):
                prompt = build_prompt(kind, functions[name], pair, args.prompt_values)
                head = {"id": f"{name}:{kind}:{k}", "name": name, "kind": kind}
                samples.append({**head, "pair": pair, "prompt": prompt})
    return samples


# ---------------------------------------------- the data stages (each resumes from its JSONL file)
def rewrite_stage(p: StageRun) -> dict:
    """Unified corpus files pass through; raw code goes to the teacher with the rewrite prompt."""

    def rewrite(corpus: list[dict]) -> list[dict]:
        new, raw = [], []  # unified files first, then the rewrites
        for item in corpus:
            head = {"name": item["name"], "origin": "unified", "status": "ok", "reason": "ok"}
            source = {"source": item["source"]} if "source" in item else {}  # release rows
            if fn := parse_unified_file(item["code"]):
                new.append({**head, **fn, **source})
            else:
                raw.append((item, source))
        asks = [user(REWRITE_PROMPT.format(code=item["code"])) for item, _ in raw]
        for (item, source), answer in zip(raw, generate(p.sampler, asks, p.args, "rewrite")):
            fn, reason = parse_rewrite_response(answer)
            head = {"name": item["name"], "origin": "rewrite", "status": "ok" if fn else "rejected"}
            new.append({**head, "reason": reason, "response": answer, **(fn or {}), **source})
        return new

    records = p.run("rewrite", "name", partial(load_code_corpus, p.args.corpus), rewrite)
    rejects = dict(Counter(r["reason"] for r in records if r["status"] != "ok"))
    unified = sum(r["origin"] == "unified" for r in records)
    functions = {r["name"]: r for r in records if r["status"] == "ok"}
    notes = f"{unified} already unified; rejects {rejects}"
    p.report("rewrite", len(records), len(functions), notes)
    return functions


def io_record(name: str, run) -> dict:
    """A function's io.jsonl record from its sandboxed collect_io_pairs run."""
    pairs, stats = (run.value["pairs"], run.value["stats"]) if run.ok else ([], {})
    if not run.ok:
        reason = f"sandbox {run.status}"
    elif stats.get("nondeterministic"):
        reason = "uses randomness"
    else:
        reason = "ok" if len(pairs) > 1 else "<= 1 pair"
    status = "ok" if reason == "ok" else "dropped"
    pairs = pairs if status == "ok" else []
    return {"name": name, "status": status, "reason": reason, "pairs": pairs, "stats": stats}


def io_stage(p: StageRun, functions: dict) -> dict:
    """Each function's collect_io_pairs in the sandbox; ranks run their share."""

    def collect(todo: list[dict]) -> list[dict]:
        seeds = [p.args.seed * 100003 + zlib.crc32(fn["name"].encode()) for fn in todo]
        jobs = [io_job(fn, p.args, seed) for fn, seed in zip(todo, seeds)]
        calls = [(code, "collect_io_pairs", kwargs) for code, kwargs in jobs]
        runs = p.shared_work("io", partial(p.sandbox.call_many, timeout=p.args.io_timeout), calls)
        p.infra["io"] += sum(run.infrastructure_failure for run in runs)  # a rerun retries them
        runs = [(fn, run) for fn, run in zip(todo, runs) if not run.infrastructure_failure]
        return [io_record(fn["name"], run) for fn, run in runs]

    records = p.run("io", "name", functions.values, collect)
    io_ok = {r["name"]: r for r in records if r["status"] == "ok" and r["name"] in functions}
    drops = sorted(r["reason"] for r in records if r["status"] != "ok")
    n_pairs = sum(len(r["pairs"]) for r in io_ok.values())
    p.report("io", len(records), len(io_ok), f"{n_pairs} pairs; drops {drops}")
    return io_ok


def prompts_stage(p: StageRun, functions: dict, io_ok: dict) -> dict:
    """The first pairs_per_function pairs -> input and output prompts (build_codeio_msg.py)."""
    samples = partial(io_samples, io_ok, functions, p.args, 0, p.args.pairs_per_function)
    prompts = {r["id"]: r for r in p.run("prompts", "id", samples, list)}
    kinds = Counter(r["kind"] for r in prompts.values())
    notes = f"{kinds['input']} input / {kinds['output']} output"
    p.report("prompts", len(io_ok), len(prompts), notes)
    return prompts


def cot_stage(p: StageRun, prompts: dict) -> dict:
    """One chain of thought per prompt from the teacher."""

    def write_cots(batch: list[dict]) -> list[dict]:
        texts = generate(p.sampler, [user(r["prompt"]) for r in batch], p.args, "cot")
        return [{"id": r["id"], "prompt": r["prompt"], "response": t} for r, t in zip(batch, texts)]

    records = p.run("cot", "id", prompts.values, write_cots, p.args.generation_batch_size)
    cots = {r["id"]: r for r in records if r["id"] in prompts}
    empty = sum(not r["response"].strip() for r in cots.values())
    p.report("cot", len(prompts), len(cots), f"{empty} empty")
    return cots


def verify_stage(p: StageRun, functions: dict, prompts: dict, cots: dict) -> dict:
    """Every CoT checked (check_io_pred_acc_mp.py), in chunks; ranks check their share."""
    check = partial(check_all, p.sandbox, functions, p.args)

    def verify(chunk: list[dict]) -> list[dict]:
        checks = p.shared_work("verify", check, [(prompts[c["id"]], c["response"]) for c in chunk])
        kept = [(c, k) for c, k in zip(chunk, checks) if k["status"] != "sandbox_error"]
        p.infra["verify"] += len(chunk) - len(kept)  # neither scored nor fed back
        return [{"id": c["id"], "kind": prompts[c["id"]]["kind"], **k} for c, k in kept]

    records = p.run("verify", "id", cots.values, verify, p.args.generation_batch_size)
    verified = {r["id"]: r for r in records if r["id"] in cots}
    statuses = dict(Counter(r["status"] for r in verified.values()))
    correct = Counter(r["kind"] for r in verified.values() if r["correct"])
    kinds = Counter(r["kind"] for r in verified.values())
    accuracy = {kind: f"{correct[kind]}/{kinds[kind]}" for kind in ("input", "output")}
    notes = f"correct {accuracy}; statuses {statuses} (wrong CoTs are kept too)"
    p.report("verify", len(cots), len(verified), notes)
    return verified


def revision_chat(cot: dict, feedback: str) -> list[dict]:
    """The second turn's conversation: the question, the first CoT, the feedback + redo request."""
    first = [{"role": "assistant", "content": cot["response"]}]
    return user(cot["prompt"]) + first + user(f"{feedback}\n\n{REDO}")


def revise_stage(p: StageRun, functions: dict, prompts: dict, cots: dict, verified: dict):
    """CodeI/O++: a failed sample gets a second turn (its CoT, then the feedback and the redo
    request), verified again; every record is kept. Returns the data's accuracy (before, after)."""
    check = partial(check_all, p.sandbox, functions, p.args)

    def revise(todo: list[dict]) -> list[dict]:
        failed = [v for v in todo if not v["correct"]]  # only failed samples get a second turn
        chats = [revision_chat(cots[v["id"]], v["feedback"]) for v in failed]
        turns = generate(p.sampler, chats, p.args, "revise")
        items = [(prompts[v["id"]], t) for v, t in zip(failed, turns)]
        checks = p.shared_work("revise", check, items)
        second = {v["id"]: pair for v, pair in zip(failed, zip(turns, checks))}
        new = []
        for v in todo:
            turn_2, check_2 = second.get(v["id"], (None, {"feedback": None, "correct": None}))
            if check_2.get("status") == "sandbox_error":  # turn 2 unverifiable: a rerun redoes it
                p.infra["revise"] += 1
                continue
            turn_1 = {"prompt": cots[v["id"]]["prompt"], "turn_1": cots[v["id"]]["response"]}
            turn_1["feedback_1"] = v["feedback"]
            turn_2 = {"turn_2": turn_2, "feedback_2": check_2["feedback"]}
            new.append({"id": v["id"], **turn_1, **turn_2, "correct_2": check_2["correct"]})
        return new

    todo = verified.values if p.args.revise else list  # plain CodeI/O: no second turns
    records = p.run("revise", "id", todo, revise)
    revised = [r for r in records if r["turn_2"] is not None]
    fixed = sum(bool(r["correct_2"]) for r in revised)
    notes = f"{len(revised)} second turns, {fixed} correct; all kept (paper)"
    p.report("revise", len(records), len(records), notes)
    right_1 = sum(r["turn_2"] is None for r in records)
    return (right_1 / len(records), (right_1 + fixed) / len(records)) if records else None


# ---------------------------------------------- SFT (the paper's training setup: loss on responses)
CHECKPOINTS = dict(stage1="checkpoint", stage2="checkpoint_stage2", raw_code="checkpoint_raw_code")


def sft_examples(out: Path, args: Args) -> list[dict]:
    """CodeI/O: every first-turn CoT, right or wrong; CodeI/O++: the assembled revision."""
    if not args.revise:
        records = read_jsonl(out / "cot.jsonl")
        return [{"prompt": r["prompt"], "response": r["response"]} for r in records]
    records = read_jsonl(out / "revise.jsonl")
    return [{"prompt": r["prompt"], "response": assemble_revision(r)} for r in records]


def sft_stage(p: StageRun, logger):
    """Stage 1 on the CodeI/O(++) data (constant LR), then stage 2 on general instructions if
    given (cosine to 1e-6); metrics continue at stage 1's last global step."""
    args, ckpt = p.args, {stage: p.out / folder for stage, folder in CHECKPOINTS.items()}
    examples = sft_examples(p.out, args)
    if not examples:
        raise ValueError(f"no training examples in {p.out} (run the earlier --stages first)")
    p.model = shard_model(p.model, p.dist_info, gradient_checkpointing=args.gradient_checkpointing)
    train = partial(run_sft, p.model, p.tokenizer, args=args, dist_info=p.dist_info, logger=logger)
    loss, step = train(examples, ckpt=ckpt["stage1"], stage="stage1", lr=args.lr)
    p.report("sft", len(examples), len(examples), loss_note(loss, "stage-1 final loss"))
    if args.stage2_data:
        rows = instruction_rows(args.stage2_data, args.seed)
        kwargs = dict(steps=args.stage2_steps, schedule="cosine_with_min_lr", offset=step)
        loss, _ = train(rows, ckpt=ckpt["stage2"], stage="stage2", lr=args.stage2_lr, **kwargs)
        p.report("sft stage 2", len(rows), len(rows), loss_note(loss, "final loss"))


# ---------------------------------------------- evaluation: held-out I/O prediction
def evaluate_stage(p: StageRun, functions: dict, io_ok: dict, logger) -> tuple[dict, list]:
    """Greedy accuracy on the pairs after the training ones: the CodeI/O(++) student against the
    base and the base after the same SFT steps on the raw code (the paper's Python-Edu baseline)."""
    args, ckpt = p.args, p.out / CHECKPOINTS["stage1"]
    held_out = (args.pairs_per_function, args.eval_pairs_per_function)
    if not (samples := io_samples(io_ok, functions, args, *held_out)):
        raise ValueError("eval: no held-out pairs (raise --max_pairs, lower --pairs_per_function)")
    if "sft" not in p.stages and not load_checkpoint(ckpt, p.model, restore_rng=False):
        raise ValueError(f"eval: no {ckpt} (run --stages sft first)")
    check = partial(check_all, p.sandbox, functions, args)
    kwargs = dict(samples=samples, check=check, max_new_tokens=args.max_new_tokens)
    code = {c["name"]: c["code"] for c in load_code_corpus(args.corpus)}
    raw = [{"prompt": "", "response": code[n]} for n in io_ok if n in code]  # as responses
    steps = max(1, len(sft_examples(p.out, args)) // args.batch_size) * args.epochs
    raw_code = (raw, steps, p.out / CHECKPOINTS["raw_code"]) if args.compare_raw_code else None
    name = "codeio++" if args.revise else "codeio"
    score = partial(greedy_accuracy, tokenizer=p.tokenizer, **kwargs)
    return compare_with_baselines(p, name, "held-out I/O accuracy", score, raw_code, logger)


# ---------------------------------------------- main
def main(args: Args):
    stages = parse_stages(args.stages, STAGES)
    if not args.model:
        torch.set_num_threads(code_teacher.TOY_THREADS)
    dist_info = init_distributed()
    seed_everything(args.seed)
    p = StageRun(args, stages, Path(args.output_dir), dist_info)
    p.out.mkdir(parents=True, exist_ok=True)
    # the student model, and the teacher: --model or the scripted stand-in
    texts = (REWRITE_PROMPT, REDO, CHECK, OOPS, CORRECT)  # what the toy's tokenizer has seen
    code_teacher.load_student(p, partial(code_teacher.toy_student_base, args, build_prompt, texts))
    if set(stages) & {"io", "verify", "revise", "eval"}:  # every run of generated code goes here
        kwargs = dict(timeout=args.verify_timeout, allow_weaker=args.sandbox_allow_weaker)
        p.use_sandbox(Sandbox(workers=args.sandbox_workers, **kwargs), args.sandbox_workers)

    # 1. collect code: raw files rewritten into the unified format; unified files pass through
    functions = rewrite_stage(p)
    # 2. inputs -> execute: input_generator() and main_solution in the sandbox give I/O pairs
    io_ok = io_stage(p, functions)
    prompts = prompts_stage(p, functions, io_ok)  # output- and input-prediction questions
    # 3. predict: one chain of thought per question from the teacher
    cots = cot_stage(p, prompts)
    # 4. verify: outputs compared with is_close, predicted inputs executed again
    verified = verify_stage(p, functions, prompts, cots)
    # 5. revise (CodeI/O++): failed samples get one more turn with the verifier's feedback
    first_turn = revise_stage(p, functions, prompts, cots, verified)

    # 6. SFT on the responses (stage 1), then general instructions (stage 2)
    folders = [p.out / CHECKPOINTS[stage] for stage in ("stage1", "stage2")]  # resume: last step
    logger = make_logger(p.out, args, "codeio", folders) if {"sft", "eval"} & set(stages) else None
    if "sft" in stages:
        sft_stage(p, logger)
    # 7. evaluate: held-out I/O prediction of the student against the base and raw-code SFT
    results, claims = evaluate_stage(p, functions, io_ok, logger) if "eval" in stages else ({}, [])
    if first_turn is not None:  # the data's accuracy before and after the revision turn
        name = "CodeI/O++ revision turns wrong CoTs right"
        claims.insert(0, claim(name, "verified CoT accuracy", *first_turn))
    loss_keys = ("stage1/loss", "stage2/loss", "raw_code/loss")
    finish_run(p, logger, claims, loss_keys, "CodeI/O SFT", eval=results)
    cleanup_distributed()
    return p.rows


if __name__ == "__main__":
    main(parse_config(Args, PAPER, derived))
