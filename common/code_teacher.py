"""The CPU toy world of codeio.py: a scripted CoT author and the tiny student's warm start.

The paper's chains of thought come from a strong LLM (DeepSeek-V2.5). A tiny offline model writes no
parsable answer at all, so the toy uses `StandInTeacher`, a SCRIPT behind the Sampler interface of
`common.sampling`: it reads the reference code in a CodeI/O prompt, recognises the step forms of the
toy corpus (data/codeio_corpus/digits_*.py), narrates the execution step by step in words, and slips
one digit per step with probability `slip`, so verification sees a real mix of right and wrong CoTs.
Any other code (josephus, roman_numeral, ...) it cannot trace: it says so and guesses (wrong).

`toy_general_rows` is the student's "pretraining": the same narrations asked in plain words (never a
CodeI/O prompt, never code); `train_toy_student` builds the tiny student on them and
`toy_student_base` caches it. `load_student` loads codeio.py's student and CoT author: --model, or
the toy's. Nothing here is part of the CodeI/O algorithm, which lives in codeio.py.
"""

from __future__ import annotations

import ast
import json
import random
import re
import zlib

import torch
from tqdm import tqdm

from common.data import load_code_corpus, parse_unified_file
from common.models import TINY_LM_DEFAULTS, end_of_turn, load_model, load_tokenizer, make_tokenizer
from common.sampling import Completion, Sampler, make_sampler, render_prompt
from common.toys import toy_model
from common.train import make_optimizer, sft_inputs, sft_loss

# One intra-op thread: the same float reductions on every machine, and a 64-wide model's tiny
# matmuls ran ~10x faster per CPU second than on 2 threads on a loaded 2-core machine.
TOY_THREADS = 1

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


def _apply(steps: list, index: int, value: list, backward: bool, rng, slip: float) -> list:
    """One (possibly undone) step; with probability `slip` one digit comes out one too high."""
    name, k = steps[index]
    value = TOY_STEPS[name][4 if backward else 3](list(value), k)
    if value and rng.random() < slip:  # the teacher's mistake
        at = rng.randrange(len(value))
        value[at] = (value[at] + 1) % 10
    return value


def narrate(
    kind: str, argument: str, steps: list, given: list, rng, slip: float
) -> tuple[str, dict]:
    """A step-by-step CoT for one toy I/O prediction and its answer; each step slips w.p. `slip`."""
    value = list(given)
    if kind == "output":
        lines = [f"Start: {argument} = {value}."]
        for i, (name, k) in enumerate(steps):
            value = _apply(steps, i, value, False, rng, slip)
            lines.append(f"Step {i + 1}, {TOY_STEPS[name][1].format(k=k)}: {value}.")
        lines.append(f"It returns {value}.")
        answer = {"output": value}
    else:
        lines = [f"Output: {value}. Work backwards."]
        for i in reversed(range(len(steps))):
            value = _apply(steps, i, value, True, rng, slip)
            undo = TOY_STEPS[steps[i][0]][2].format(k=steps[i][1])
            lines.append(f"Undo step {i + 1}, {undo}: {value}.")
        lines.append(f"So {argument} = {value}.")
        answer = {"input": {argument: value}}
    return "\n".join(lines) + f"\n```json\n{json.dumps(answer)}\n```", answer


def _read_value(text: str):
    """A value as a CodeI/O prompt shows it: a Python literal (the release's f"{x}"), JSON
    (--prompt_values json), or a bare string (f"{'MX'}" shows MX)."""
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        pass
    try:
        return json.loads(text)
    except ValueError:
        return text


def _own_answer(text: str):
    """The JSON answer at the end of one of the stand-in's own CoTs (None if there is none)."""
    blocks = re.findall(r"```json\s*(.*?)```", text, flags=re.S)
    try:
        return json.loads(blocks[-1]) if blocks else None
    except ValueError:
        return None


class StandInTeacher(Sampler):
    """A scripted stand-in for the paper's CoT author with the Sampler interface
    (generate(prompts, n, ...) -> list[list[Completion]]). Deterministic: the slips are seeded by
    the conversation, so every rank gives the same answer. It answers only I/O-prediction prompts;
    a rewrite request gets a refusal (which the rewrite parser rejects). A second turn (after
    feedback) is traced again with new slips and never repeats an answer it gave before."""

    def __init__(self, slip: float = 0.3, seed: int = 0):
        self.slip = slip
        self.seed = seed

    def _generate(self, prompts, n, temperature, top_p, max_new_tokens, stop, images, batch_size):
        # a script: temperature and length limits do not apply
        return [[Completion(self.answer(p, i), []) for i in range(n)] for p in prompts]

    def answer(self, messages, sample: int = 0) -> str:
        text = messages if isinstance(messages, str) else messages[0]["content"]
        rng = random.Random(f"{self.seed}:{sample}:{json.dumps(messages)}")
        kind = "output" if "Given the following input:" in text else "input"
        given = re.search(
            r"Given the following (?:input|output):\n\n(.*?)\n\nCan you predict", text, flags=re.S
        )
        if given is None:
            return "I can only trace code on a given input; I cannot rewrite code."
        traced = trace_toy_code(text.split("not copy spans of code directly.\n\n", 1)[-1])
        value = _read_value(given.group(1))
        if traced is None or not isinstance(value, (dict, list)):
            guess = {"output": 0} if kind == "output" else {"input": {}}
            return (
                "I cannot trace this code step by step, so I guess.\n"
                f"```json\n{json.dumps(guess)}\n```"
            )
        argument, steps = traced
        start = value[argument] if kind == "output" else value
        previous = [_own_answer(m["content"]) for m in messages[1:] if m["role"] == "assistant"]
        for _ in range(8):  # a revision must not repeat a wrong answer (the release's redo prompt)
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


def train_toy_student(
    folder, code_texts: list[str], fixed_texts: list[str], n_rows: int, steps: int, seed: int
):
    """The toy student, saved to `folder`: a tiny Qwen2 (common.models sizes) with a tokenizer
    trained on the toy's text (CodeI/O prompts and code, then narrations, then `fixed_texts`),
    warm-started for `steps` steps of 16 toy_general_rows."""
    from transformers import Qwen2Config, Qwen2ForCausalLM

    torch.set_num_threads(TOY_THREADS)  # common.toys.toy_model restores the caller's count
    rows = toy_general_rows(n_rows, seed)
    narrations = [r["prompt"] + "\n" + r["response"] for r in rows[:500]]
    # the shared tokenizer recipe trained on the toy's own text: the shared tiny tokenizer splits a
    # CodeI/O prompt into ~500 tokens, this one into ~200, which halves every SFT step of the toy
    tokenizer = make_tokenizer(1024, texts=code_texts + narrations + fixed_texts)
    torch.manual_seed(seed)
    config = Qwen2Config(
        vocab_size=len(tokenizer),
        bos_token_id=None,
        **TINY_LM_DEFAULTS,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    model = Qwen2ForCausalLM(config)
    order = random.Random(seed)
    optimizer = make_optimizer(model, 3e-3)
    end_ids = [tokenizer.convert_tokens_to_ids(end_of_turn(tokenizer))]
    encoded = []  # (prompt ids, response ids + end of turn) per row
    for row in rows:
        chat = render_prompt(tokenizer, [{"role": "user", "content": row["prompt"]}])
        prompt_ids = tokenizer(chat, add_special_tokens=False).input_ids
        response_ids = tokenizer(row["response"], add_special_tokens=False).input_ids + end_ids
        encoded.append((prompt_ids, response_ids))
    for _ in tqdm(range(steps), desc="toy student base (cached)", leave=False):
        batch = order.sample(encoded, 16)
        input_ids, attention_mask, loss_mask = sft_inputs(
            tokenizer, [b[0] for b in batch], [b[1] for b in batch]
        )  # (16, L) each
        sft_loss(model, input_ids, attention_mask, loss_mask).backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)


def toy_student_base(args, build_prompt, fixed_texts) -> str:
    """The toy student (train_toy_student) with a tokenizer that has seen this corpus's CodeI/O
    prompts (codeio.build_prompt), its code and codeio.py's fixed texts (`fixed_texts`: the rewrite
    prompt and the revision turn's phrases); built once, cached by common.toys.toy_model."""
    corpus = load_code_corpus(args.corpus)
    crc = zlib.crc32(json.dumps(corpus, sort_keys=True).encode())
    fixed = [*fixed_texts, "[Mismatch] Your output is wrong!"]
    spec = dict(
        rows=args.toy_base_rows, steps=args.toy_base_steps, seed=args.seed, corpus=crc, fixed=fixed
    )

    def build(folder):
        functions = [fn for c in corpus if (fn := parse_unified_file(c["code"]))]
        pair = {"input": {"xs": [1, 2, 3]}, "output": [1, 2, 3]}
        prompts = [build_prompt(kind, fn, pair) for fn in functions for kind in ("input", "output")]
        texts = prompts + [c["code"] for c in corpus]
        train_toy_student(folder, texts, fixed, spec["rows"], spec["steps"], spec["seed"])

    toy_world = [train_toy_student, toy_general_rows, narrate, _apply]
    code = [*toy_world, build_prompt, parse_unified_file]  # what the base depends on
    return toy_model("codeio-student", spec, build, code=code)


def resolve_teacher(args) -> str:
    """--teacher auto: the named --model writes the CoTs (model), else the stand-in: the scripted
    narrator StandInTeacher, NOT a model (the toy)."""
    if args.teacher == "auto":
        return "model" if args.model else "stand-in"
    return args.teacher


def load_student(p, toy_base):
    """codeio.py's SFT student (--model, or `toy_base()`: the toy's, built and cached) and CoT
    author (--model, or StandInTeacher) into p (common.stages.StageRun). SFT trains fp32 masters
    (common.train); generation alone runs the checkpoint's dtype; SFT alone (torchrun) stays on the
    CPU until shard_model puts each rank's shard on its GPU."""
    generating = bool(set(p.stages) & {"rewrite", "cot", "revise"})
    by_model = generating and resolve_teacher(p.args) == "model"
    trains = bool(set(p.stages) & {"sft", "eval"})
    if trains or by_model:
        p.model_path = p.args.model or toy_base()
        p.tokenizer = load_tokenizer(p.model_path)
        p.dtype = "float32" if trains or not p.args.model else "auto"
    if trains or (by_model and p.args.sampler == "hf"):  # vLLM loads its own copy
        device = "cpu" if p.stages == ["sft"] else p.dist_info.device
        p.model = load_model(p.model_path, dtype=p.dtype, device=device)
    if by_model:
        kwargs = dict(model_path=p.model_path, args=p.args)
        p.sampler = make_sampler(p.args.sampler, p.model, p.tokenizer, **kwargs)
    elif generating:
        p.sampler = StandInTeacher(p.args.teacher_slip, p.args.seed)
