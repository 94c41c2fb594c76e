r"""B-STaR: Monitoring and Balancing Exploration and Exploitation in Self-Taught Reasoners (arXiv 2412.17256).

Self-taught reasoners sample k solutions per training query, keep those a reward accepts and fine-tune on
them, iteration after iteration. B-STaR tracks *exploration* (does the policy still produce several
distinct correct solutions?) and *exploitation* (does the reward pick the correct ones?) with one balance
score per query, min(n'/n*, 1) * n'/n (n' unique correct among the n selected, n* wanted per query).
Each iteration first picks the sampling temperature and reward threshold that maximise the mean balance
score on a query subset, then runs online RFT with them: continue from the last weights, inheriting the
optimizer and the LR schedule (§2.1, Algorithm 1).

Departures (paper = arXiv text; code = hkust-nlp/B-STaR `determine_hyper.py`, `metric_modiacc_auto.py`):
- Balance score: the paper's rule (mean over all queries, n* = ceil(N/M), no dedup) by default;
  `--balance_rule code` = `cal_modi_acc_soft` (exact-string dedup first, queries with nothing selected
  dropped from the mean, n* = 8). Not implemented from the code: gold solution added to every pool with
  score 1.0, per-query caps raised until the selection reaches a target size.
- Configuration: argmax over the whole (T, tau) grid, ties to the first in grid order (paper);
  `--rechoose_threshold` re-picks tau on the iteration's full sample set (code).
- N (samples selected per iteration, for n*) = sft_steps * batch_size, what one iteration trains on.
- PRM: min step probability p -> 2p - 1 in [-1, 1] (the code divides a raw score by 5). The CPU toy's
  PRM is a stand-in, a rule-based step checker (no model): a "a + b = c" step scores 1 if it is right,
  chains from the previous result and uses a number of the question; the answer line must repeat the
  last result. Real PRMs (any HF path) go through `HFProcessRewardModel`.
- Pass@K, Pass@K-S, Reward@K-S and diversity are measured on each iteration's training samples (policy
  before the update); greedy accuracy on held-out queries after the update. Reward@K-S ranks by the PRM
  score alone (a verifier that does not see the gold answer), by the reward when there is no PRM.
- LR: transformers' `cosine_with_min_lr` over all iterations (code: 4.12e-6 down to 2e-7).
- `star` = STaR with rationalisation (failures re-sampled with the answer as a hint, kept if correct,
  trained without the hint), restarting from P0 each iteration like ReST-EM.

Commands (naming --model selects the paper preset, PAPER below: the MATH setting; flags you pass win;
--print_config shows the effective configuration without loading anything):
  CPU toy (tiny model, warm start cached):  python bstar.py
  1 GPU:  python bstar.py --model <SFT checkpoint P0> --data train.jsonl --eval_data math500.jsonl \
      --prm peiyi9979/math-shepherd-mistral-7b-prm --step_separator $'\n\n' --sampler vllm \
      --prompt_template $'{question}\nPlease reason step by step, and put your final answer within \\boxed{}.'
  8 GPUs: torchrun --nproc_per_node=8 bstar.py <the same flags>   # FSDP2; each rank samples a share
"""

from __future__ import annotations

import math
import random
import re
import shutil
from collections import namedtuple
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Literal

import torch
from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict
from tqdm import tqdm
from transformers import AutoModelForTokenClassification, get_scheduler

from common.benchmarks import load_math_rows
from common.claims import claim, format_claims, write_summary
from common.config import parse_config, per_rank
from common.data import DataError, load_rows, read_jsonl_tolerant, write_jsonl
from common.evaluation import EvalArgs, evaluate_model
from common.models import load_model, load_tokenizer, make_tiny_lm
from common.rewards import extract_answer, math_equal, math_equal_batch
from common.sampling import VLLMArgs, generate_sharded, make_sampler, render_prompt
from common.toys import toy_model
from common.train import (
    MetricsLogger,
    all_gather_object,
    barrier,
    broadcast_object,
    cleanup_distributed,
    clip_grad_norm,
    format_table,
    init_distributed,
    load_checkpoint,
    make_optimizer,
    micro_batches,
    pad_batch,
    precision_policy,
    print0,
    save_checkpoint,
    seed_everything,
    sft_loss,
    shard_model,
)

MODES = ("bstar", "online_rft", "iterative_rft", "rest_em", "star")


@dataclass
class Args(VLLMArgs):
    # generic
    seed: int = field(default=0, metadata={"help": "random seed"})
    output_dir: str = field(
        default="runs/bstar", metadata={"help": "metrics, PNG, samples JSONL, checkpoint"}
    )
    model: str = field(
        default="tiny",
        metadata={
            "help": "'tiny' (offline, + cached toy warm start) or the HF id/path of P0 (§2.6: epoch-1 SFT model)"
        },
    )
    data: str = field(
        default="toy",
        metadata={
            "help": "'toy' (multi-digit addition in steps) or a file/folder/hub id with question + answer fields"
        },
    )
    eval_data: str = field(
        default="",
        metadata={
            "help": "held-out queries (MATH500 in §2.6); empty = the last --eval_queries rows of --data"
        },
    )
    question_field: str = field(default="question", metadata={"help": "question column"})
    answer_field: str = field(
        default="answer",
        metadata={
            "help": "gold answer column; with both field "
            "defaults, MATH (boxed solution), GSM8K ('#### N') and SimpleRL-Zoo-Data rows "
            "are read as released"
        },
    )
    prompt_template: str = field(
        default="{question}", metadata={"help": "user message; {question} is replaced"}
    )
    sampler: Literal["hf", "vllm"] = field(default="hf", metadata={"help": "'hf' or 'vllm'"})
    resume: bool = field(
        default=False,
        metadata={
            "help": "continue from output_dir/ckpt (iteration or mid-SFT) and reuse finished sampling"
        },
    )
    track: bool = field(default=False, metadata={"help": "log to W&B"})
    # algorithm (§2)
    mode: Literal["bstar", "online_rft", "iterative_rft", "rest_em", "star"] = field(
        default="bstar",
        metadata={
            "help": f"{MODES} (§2.1): B-STaR; online RFT (fixed T/tau); iterative RFT (fresh optimizer); ReST-EM / STaR (from P0)"
        },
    )
    iterations: int = field(
        default=6,
        metadata={
            "help": "self-improvement iterations; paper: 9 (9 x 500 SFT steps, MATH setting)"
        },
    )
    queries_per_iteration: int = field(
        default=240,
        metadata={
            "help": "M queries sampled per iteration, 0 = all; paper: 0 (all 11.5K MATH queries)"
        },
    )
    samples_per_query: int = field(
        default=8, metadata={"help": "k samples per query; paper: 64 (MATH setting)"}
    )
    temperature_grid: str = field(
        default="0.5:1.2:0.1",
        metadata={"help": "start:stop:step, inclusive (paper §2.5; fine variant 0.5:1.2:0.05)"},
    )
    threshold_grid: str = field(
        default="-1:1:0.1",
        metadata={"help": "start:stop:step, inclusive (paper §2.5; fine variant -1:1:0.01)"},
    )
    search_queries: int = field(
        default=24,
        metadata={
            "help": "query subset for the configuration search; paper: 600 (MATH queries x 64 samples)"
        },
    )
    temperature: float = field(
        default=1.0,
        metadata={"help": "fixed temperature of the non-B-STaR modes (online RFT baseline)"},
    )
    threshold: float = field(
        default=0.0,
        metadata={"help": "fixed reward threshold of the non-B-STaR modes (default tau = 0, §2.2)"},
    )
    reward: Literal["answer", "answer_prm"] = field(
        default="answer_prm",
        metadata={
            "help": "'answer' (1[a = a*]) or 'answer_prm' (+ normalised min step score, §2.2)"
        },
    )
    prm: str = field(
        default="rule",
        metadata={
            "help": "'rule' (toy stand-in step checker) or an HF PRM path (Math-Shepherd style)"
        },
    )
    prm_head: Literal["token", "classifier"] = field(
        default="token",
        metadata={
            "help": "'token' (P('+') vs '-' at the step tag) or 'classifier' (token-classification head)"
        },
    )
    prm_step_tag: str = field(
        default="ки", metadata={"help": "step tag the PRM scores at (Math-Shepherd: 'ки')"}
    )
    prm_good_token: str = field(default="+", metadata={"help": "good-step token"})
    prm_bad_token: str = field(default="-", metadata={"help": "bad-step token"})
    step_separator: str = field(
        default="\n", metadata={"help": "splits a response into steps (PRM) and equations"}
    )
    balance_rule: Literal["paper", "code"] = field(
        default="paper",
        metadata={
            "help": "'paper' (§2.4) or 'code' (cal_modi_acc_soft: dedup, drop empty queries, n* = 8)"
        },
    )
    n_star: int = field(
        default=0, metadata={"help": "n*; 0 = ceil(N/M) (§2.4), N = sft_steps * batch_size"}
    )
    rechoose_threshold: bool = field(
        default=False, metadata={"help": "released code: re-pick tau on the full sample set"}
    )
    pass_s: int = field(
        default=4, metadata={"help": "S of Pass@K-S / Reward@K-S; paper: 4 (Pass@32-4)"}
    )
    hint_template: str = field(
        default="{question} (answer: {answer})", metadata={"help": "star rationalisation prompt"}
    )
    # SFT update (§2.6)
    sft_steps: int = field(
        default=30, metadata={"help": "SFT steps per iteration; paper: 500 (MATH setting)"}
    )
    batch_size: int = field(
        default=32, metadata={"help": "SFT batch, all ranks; paper: 128 (MATH setting)"}
    )
    lr: float = field(
        default=1e-3,
        metadata={
            "help": "peak LR; paper: 4.12e-6 (released code, Mistral-7B; the SFT of P0 used 5e-6)"
        },
    )
    min_lr_ratio: float = field(
        default=2e-7 / 4.12e-6, metadata={"help": "cosine floor / peak (code: 2e-7 / 4.12e-6)"}
    )
    max_grad_norm: float = field(default=1.0, metadata={"help": "gradient clipping"})
    micro_batch_size: int = field(
        default=0,
        metadata={
            "help": "rows per forward/backward on one rank (gradient "
            "accumulation, same token-mean loss); 0 = the rank's whole batch; "
            "paper preset: 4 (not stated in the paper)"
        },
    )
    gradient_checkpointing: bool = field(
        default=False,
        metadata={
            "help": "recompute decoder layers in the backward pass; "
            "paper preset: True (not stated in the paper)"
        },
    )
    save_every: int = field(
        default=10, metadata={"help": "checkpoint every N SFT steps (mid-iteration --resume)"}
    )
    max_new_tokens: int = field(
        default=48,
        metadata={"help": "sampling length; paper preset: 1024 (not stated in the paper)"},
    )
    gen_batch_size: int = field(default=64, metadata={"help": "prompts per generate call"})
    eval_queries: int = field(
        default=200, metadata={"help": "held-out queries for greedy accuracy; paper: 500 (MATH500)"}
    )
    # toy world
    toy_train_queries: int = field(
        default=600, metadata={"help": "training query pool of the toy (at most 529 with 3 digits)"}
    )
    toy_terms: str = field(default="3:3", metadata={"help": "min:max numbers to add per toy query"})
    warm_start_steps: int = field(
        default=400, metadata={"help": "toy SFT steps that make the tiny P0 (cached)"}
    )
    warm_start_lr: float = field(default=5e-3, metadata={"help": "toy warm-start LR"})


# The paper's MATH setting (Mistral-7B; LR schedule from the released code), used with --preset paper (the
# default once --model is named); the defaults above are the CPU toy's. A flag on the command line wins.
PAPER = dict(
    iterations=9,  # 9 x 500 SFT steps
    queries_per_iteration=0,  # all 11.5K MATH queries every iteration
    samples_per_query=64,
    search_queries=600,  # configuration search on 600 MATH queries
    sft_steps=500,
    batch_size=128,
    lr=4.12e-6,  # released code, cosine down to 2e-7 (--min_lr_ratio)
    max_new_tokens=1024,  # not stated in the paper
    eval_queries=500,  # MATH500
    gradient_checkpointing=True,  # not stated in the paper: bounds activation memory at long sequences
    micro_batch_size=4,  # not stated in the paper: bounds activation memory at long sequences
)


def derived(args, world_size: int) -> dict:
    """Checks the choices and grids (`validate`) and splits the SFT batch over the ranks."""
    validate(args)
    return dict(
        sft_rows_per_rank=per_rank(args.batch_size, world_size, "--batch_size"),
        samples_per_iteration=args.sft_steps * args.batch_size,
    )


# ------------------------------------------------------------------------------------------------------
# paper functions (§2.3-§2.5)


def n_star_from(num_selected_target: int, num_queries: int) -> int:
    """§2.4: n* = ceil(N / M), the number of selected samples wanted per query."""
    return math.ceil(num_selected_target / num_queries)


def balance_score(num_selected, num_unique_correct, n_star: int, rule: str = "paper") -> float:
    """§2.4: bs_i = min(n'_i / n*, 1) * n'_i / n_i, averaged over queries (bs_i = 0 when n_i = 0).
    rule='code' drops queries with nothing selected from the mean (counts must come deduplicated)."""
    if isinstance(num_selected, int):
        num_selected, num_unique_correct = [num_selected], [num_unique_correct]
    if rule not in ("paper", "code"):
        raise ValueError(f"--balance_rule must be 'paper' or 'code', got {rule!r}")
    scores = [
        min(u / n_star, 1.0) * u / n if n else 0.0
        for n, u in zip(num_selected, num_unique_correct)
        if n or rule == "paper"
    ]
    return sum(scores) / len(scores) if scores else 0.0


def selection_counts(responses, correct, keep, dedup: bool = False) -> tuple[int, int]:
    """(n_i, n'_i) of one query: selected responses and unique (exact text) correct ones among them."""
    kept = [(r.strip(), c) for r, c, k in zip(responses, correct, keep) if k]
    if dedup:  # released code: exact-string dedup before counting
        kept = list(dict.fromkeys(kept))
    return len(kept), len({r for r, c in kept if c})


def keep_by_threshold(rewards, threshold: float) -> list[bool]:
    """Algorithm 1 step 3: keep responses whose reward is strictly above the threshold."""
    return [r > threshold for r in rewards]


def prm_to_reward(min_step_prob: float) -> float:
    """§2.2: the PRM's minimum step score, normalised from a probability in [0, 1] to [-1, 1]."""
    return 2.0 * min_step_prob - 1.0


def bstar_reward(correct: bool, prm_reward: float | None) -> float:
    """§2.2: r = 1[a = a*] ('answer') or 1[a = a*] + r_prm ('answer + PRM')."""
    return float(correct) + (prm_reward if prm_reward is not None else 0.0)


def pass_at_k_s(responses, correct, s: int) -> float:
    """§2.3 Pass@K-S: 1 if at least S *unique* correct responses are among the K."""
    return float(len({r.strip() for r, c in zip(responses, correct) if c}) >= s)


def reward_at_k_s(rewards, correct, s: int) -> float:
    """§2.3 Reward@K-S: 1 if the top-S responses by reward are all correct (ties: earlier first)."""
    order = sorted(
        range(len(rewards)), key=lambda i: -rewards[i]
    )  # stable: equal rewards keep sample order
    return float(len(order) >= s and all(correct[i] for i in order[:s]))


def distinct_equation_ratio(correct_responses, separator: str = "\n") -> float | None:
    """§2.3 diversity of one query: unique equations / all equations in its correct responses."""
    equations = [
        line.strip() for r in correct_responses for line in r.split(separator) if "=" in line
    ]
    return len(set(equations)) / len(equations) if equations else None


def choose_configuration(scores: dict):
    """§2.5: the grid point with the highest balance score; ties go to the first in grid order."""
    best = max(scores.values())
    return next(key for key, value in scores.items() if value == best)


def parse_grid(spec: str, flag: str) -> list[float]:
    try:
        start, stop, step = (float(x) for x in spec.split(":"))
        assert step > 0 and stop >= start
    except (ValueError, AssertionError):
        raise ValueError(f"--{flag} must be start:stop:step with step > 0, got {spec!r}") from None
    return [round(start + i * step, 6) for i in range(int(round((stop - start) / step)) + 1)]


# ------------------------------------------------------------------------------------------------------
# process reward models: one interface, step_scores(questions, responses) -> per-step P(step is good)


def split_steps(response: str, separator: str) -> list[str]:
    return [s.strip() for s in response.split(separator) if s.strip()]


class RuleStepChecker:
    """Stand-in PRM for the toy (no model): checks each step locally, as a PRM judges a step."""

    equation = re.compile(r"^(-?\d+) \+ (-?\d+) = (-?\d+)$")
    answer_line = re.compile(r"^The answer is (-?\d+)\.?$")

    def __init__(self, separator: str = "\n"):
        self.separator = separator

    def step_scores(self, questions, responses) -> list[list[float]]:
        out = []
        for question, response in zip(questions, responses):
            numbers, previous, scores = {int(x) for x in re.findall(r"-?\d+", question)}, None, []
            for step in split_steps(response, self.separator):
                eq, ans = self.equation.match(step), self.answer_line.match(step)
                if eq:
                    a, b, c = map(int, eq.groups())
                    chained = (
                        {a, b} <= numbers
                        if previous is None
                        else (a == previous and b in numbers) or (b == previous and a in numbers)
                    )
                    scores.append(float(a + b == c and chained))
                    previous = c
                else:
                    scores.append(
                        float(bool(ans) and previous is not None and int(ans.group(1)) == previous)
                    )
            out.append(scores)
        return out


class HFProcessRewardModel:
    """Any HF PRM. head='token': Math-Shepherd, P(good) = softmax over the good/bad token logits at each
    step tag; head='classifier': AutoModelForTokenClassification, P(label 1) at each step tag."""

    def __init__(
        self,
        path,
        head="token",
        step_tag="ки",
        good="+",
        bad="-",
        separator="\n",
        device="cpu",
        dtype="float32",
    ):
        if head not in ("token", "classifier"):
            raise ValueError(f"--prm_head must be 'token' or 'classifier', got {head!r}")
        self.tok, self.head, self.step_tag, self.separator, self.device = (
            load_tokenizer(path),
            head,
            step_tag,
            separator,
            device,
        )
        ids = [self.tok(t, add_special_tokens=False).input_ids for t in (good, bad)]
        if head == "token" and any(len(i) != 1 for i in ids):
            raise ValueError(
                f"--prm_good_token {good!r} / --prm_bad_token {bad!r} must each be one token of {path}"
            )
        self.candidates = [i[0] for i in ids if i]  # used by the token head only
        self.model = (
            load_model(path, dtype=dtype, device=device)
            if head == "token"
            else AutoModelForTokenClassification.from_pretrained(
                path, num_labels=2, dtype=dtype
            ).to(device)
        ).eval()

    @torch.no_grad()
    def step_scores(self, questions, responses, batch_size: int = 16) -> list[list[float]]:
        out = []
        for start in range(0, len(questions), batch_size):
            rows, tag_positions = [], []
            for q, r in zip(
                questions[start : start + batch_size], responses[start : start + batch_size]
            ):
                ids, positions = self.tok(q + " ", add_special_tokens=False).input_ids, []
                for step in split_steps(
                    r, self.separator
                ):  # "step ки\n": the score is read at the tag
                    ids += self.tok(f"{step} {self.step_tag}", add_special_tokens=False).input_ids
                    positions.append(len(ids) - 1)
                    ids += self.tok("\n", add_special_tokens=False).input_ids
                rows.append(ids)
                tag_positions.append(positions)
            input_ids, attention_mask, _ = pad_batch(
                rows, [[] for _ in rows], self.tok.pad_token_id
            )
            logits = self.model(
                input_ids=input_ids.to(self.device), attention_mask=attention_mask.to(self.device)
            ).logits  # (B, L, V|2)
            if self.head == "token":
                logits = logits[..., self.candidates]  # (B, L, 2): good vs bad
            probs = (
                logits.float().softmax(-1)[..., 0 if self.head == "token" else 1].cpu()
            )  # (B, L)
            out += [[float(probs[i, p]) for p in pos] for i, pos in enumerate(tag_positions)]
        return out


def make_step_scorer(args, device):
    if args.reward == "answer":
        return None
    if args.prm == "rule":
        if args.data != "toy":
            raise ValueError(
                "--prm rule is the toy's stand-in step checker; give --prm <HF PRM path> or --reward answer"
            )
        return RuleStepChecker(args.step_separator)
    return HFProcessRewardModel(
        args.prm,
        args.prm_head,
        args.prm_step_tag,
        args.prm_good_token,
        args.prm_bad_token,
        args.step_separator,
        device,
        precision_policy(device.type).frozen_dtype,
    )


# ------------------------------------------------------------------------------------------------------
# toy world: add digits step by step; each step may write its operands either way round, so a query has
# several distinct correct solutions (room for exploration), and a 2-layer model learns it imperfectly


def make_toy_row(rng: random.Random, min_terms: int, max_terms: int) -> dict:
    numbers = [rng.randint(1, 9) for _ in range(rng.randint(min_terms, max_terms))]
    total, lines = numbers[0], []
    for x in numbers[1:]:
        a, b = (total, x) if rng.random() < 0.5 else (x, total)
        lines.append(f"{a} + {b} = {total + x}")
        total += x
    lines.append(f"The answer is {total}.")
    return {
        "question": "Add " + " ".join(map(str, numbers)),
        "answer": str(total),
        "solution": "\n".join(lines),
    }


TOY_HELD_OUT = (
    200  # fixed held-out pool: the cached warm start is the same whatever --eval_queries is
)


def make_toy_split(args) -> tuple[list[dict], list[dict], set]:
    """A held-out pool first, then a disjoint training pool (the warm start never sees held-out queries)."""
    if args.eval_queries > TOY_HELD_OUT:
        raise ValueError(
            f"--eval_queries {args.eval_queries}: the toy holds out {TOY_HELD_OUT} queries"
        )
    lo, hi = (int(x) for x in args.toy_terms.split(":"))
    rng, unique, wanted = random.Random(args.seed + 1), {}, TOY_HELD_OUT + args.toy_train_queries
    for _ in range(30 * wanted):  # bounded: 3 digits give only 729 distinct questions
        row = make_toy_row(rng, lo, hi)
        unique.setdefault(row["question"], row)
        if len(unique) == wanted:
            break
    rows = list(unique.values())  # in draw order: the first TOY_HELD_OUT are held out
    tag = lambda prefix, part: [{**r, "id": f"{prefix}-{i}"} for i, r in enumerate(part)]  # noqa: E731
    return (
        tag("train", rows[TOY_HELD_OUT:]),
        tag("eval", rows[: args.eval_queries]),
        {r["question"] for r in rows[:TOY_HELD_OUT]},
    )


def load_task(args):
    if args.data == "toy":
        return make_toy_split(args)[:2]
    need = (args.question_field, args.answer_field)
    read = lambda src, tag: [
        {
            "id": f"{tag}-{i}",
            "question": str(r[args.question_field]),  # noqa: E731
            "answer": str(r[args.answer_field]).split("####")[-1].strip(),
        }
        for i, r in enumerate(load_rows(src, required=need))
    ]
    if need == ("question", "answer"):  # no field flags: release formats (common/benchmarks.py)
        read = lambda src, tag: [
            {
                "id": f"{tag}-{i}",
                "question": r["question"],  # noqa: E731
                "answer": r["answer"],
            }
            for i, r in enumerate(load_math_rows(src))
        ]
    rows = read(args.data, "train")
    if args.eval_data:
        return rows, read(args.eval_data, "eval")[: args.eval_queries]
    if len(rows) <= args.eval_queries:
        raise DataError(
            f"{args.data}: {len(rows)} rows, not enough to hold out --eval_queries {args.eval_queries}; give --eval_data"
        )
    return rows[: -args.eval_queries], rows[-args.eval_queries :]


def chat(args, question: str) -> list[dict]:
    return [{"role": "user", "content": args.prompt_template.replace("{question}", question)}]


def encode_sft(tok, prompt, response: str) -> tuple[list[int], list[int]]:
    """Prompt and response tokenised separately; the response ends with the end-of-turn token."""
    end = tok.convert_tokens_to_ids("<|im_end|>")
    end = end if isinstance(end, int) and end != tok.unk_token_id else tok.eos_token_id
    prompt_ids = tok(render_prompt(tok, prompt), add_special_tokens=False).input_ids
    return prompt_ids, tok(response, add_special_tokens=False).input_ids + [end]


def sft_step(
    model, optimizer, scheduler, tok, pairs, max_grad_norm, device, micro_batch_size: int = 0
) -> float:
    """One SFT step on (prompt ids, response ids) pairs: mean NLL of the response tokens, accumulated over
    micro-batches of `micro_batch_size` rows, each divided by the token count of all the pairs."""
    num_tokens = sum(len(r) for _, r in pairs)  # the unsplit batch's loss-token count
    loss = 0.0
    for sl in micro_batches(len(pairs), micro_batch_size):
        part = pairs[sl]
        input_ids, attention_mask, loss_mask = pad_batch(
            [p for p, _ in part], [r for _, r in part], tok.pad_token_id
        )  # (b, L)
        micro = sft_loss(
            model,
            input_ids.to(device),
            attention_mask.to(device),
            loss_mask.to(device),
            normalizer=num_tokens,
        )
        micro.backward()
        loss += micro.item()
    clip_grad_norm(model, max_grad_norm)
    optimizer.step()
    scheduler.step()
    optimizer.zero_grad(set_to_none=True)
    return loss


def build_warm_start(args) -> str:
    """The toy's P0: the tiny LM after a short SFT on toy solutions (never eval queries), cached on disk."""
    lo, hi = (int(x) for x in args.toy_terms.split(":"))
    spec = {
        "steps": args.warm_start_steps,
        "lr": args.warm_start_lr,
        "terms": args.toy_terms,
        "seed": args.seed,
        "held_out": TOY_HELD_OUT,
        "batch": 32,
    }

    def build(folder):
        tok, model = load_tokenizer(make_tiny_lm()), load_model(make_tiny_lm())
        held_out, rng = make_toy_split(args)[2], random.Random(args.seed + 2)
        optimizer = make_optimizer(model, args.warm_start_lr)
        scheduler = get_scheduler(
            "constant", optimizer
        )  # P0 is a mid-training SFT checkpoint, as in §2.6
        for _ in tqdm(range(args.warm_start_steps), desc="warm start (cached)"):
            rows = [
                r
                for r in (make_toy_row(rng, lo, hi) for _ in range(40))
                if r["question"] not in held_out
            ][:32]
            sft_step(
                model,
                optimizer,
                scheduler,
                tok,
                [encode_sft(tok, chat(args, r["question"]), r["solution"]) for r in rows],
                1.0,
                "cpu",
            )
        model.save_pretrained(folder)
        tok.save_pretrained(folder)

    return toy_model("bstar-base", spec, build, code=TOY_BASE_CODE)


# ------------------------------------------------------------------------------------------------------
# sampling + scoring, resumable: one complete JSONL record per query, appended as soon as it exists


Runtime = namedtuple("Runtime", "args dist tok sampler scorer")  # what the sampling helpers need


def generate_all(rt: Runtime, prompts, n: int, temperature: float) -> list[list[tuple[str, bool]]]:
    """(text, truncated) of n samples per prompt, on every rank: each rank samples its share with its
    own sampler (HF on the FSDP2 model, or the rank's own vLLM engine), then the groups are gathered."""
    kw = dict(
        n=n,
        temperature=temperature,
        max_new_tokens=rt.args.max_new_tokens,
        batch_size=rt.args.gen_batch_size,
    )
    groups = generate_sharded(rt.sampler, prompts, **kw)
    return [[(c.text, c.finish_reason == "length") for c in g] for g in groups]


def is_correct(text: str, gold: str) -> bool:
    return math_equal(extract_answer(text), gold)


def score_groups(rt: Runtime, rows, groups, temperature: float) -> list[dict]:
    """Correctness, PRM reward and B-STaR reward of every sample; ranks split the queries, then gather."""
    mine = []
    for i in range(rt.dist.rank, len(rows), rt.dist.world_size):
        texts = [t for t, _ in groups[i]]
        preds = [extract_answer(t) for t in texts]
        correct = math_equal_batch(preds, [rows[i]["answer"]] * len(texts))
        steps = (
            rt.scorer.step_scores([rows[i]["question"]] * len(texts), texts)
            if rt.scorer
            else [None] * len(texts)
        )
        prm = [
            None if s is None else prm_to_reward(min(s) if s else 0.0) for s in steps
        ]  # no steps at all: worst score
        mine.append(
            (
                i,
                {
                    "id": rows[i]["id"],
                    "question": rows[i]["question"],
                    "answer": rows[i]["answer"],
                    "temperature": temperature,
                    "responses": texts,
                    "truncated": [t for _, t in groups[i]],
                    "correct": correct,
                    "prm": prm,
                    "reward": [bstar_reward(c, p) for c, p in zip(correct, prm)],
                },
            )
        )
    return [rec for _, rec in sorted(x for part in all_gather_object(mine) for x in part)]


def sample_and_score(
    rt: Runtime, rows, n: int, temperature: float, path: Path, prompt_fn=None, chunk: int = 64
) -> list[dict]:
    """Sample n responses per row, score them and append each query's record to `path`; queries already
    in the file are reused (a rerun skips finished sampling)."""
    barrier()
    done = {r["id"]: r for r in read_jsonl_tolerant(path)}
    for rec in done.values():
        if len(rec["responses"]) != n or rec["temperature"] != temperature:
            raise DataError(
                f"{path}: record {rec['id']} has {len(rec['responses'])} samples at T={rec['temperature']}, "
                f"this run wants {n} at T={temperature}; use a new --output_dir"
            )
    if rt.dist.is_main:
        write_jsonl(
            path, done.values()
        )  # rewrite without a half-written last line before appending
    barrier()
    todo = [r for r in rows if r["id"] not in done]
    for start in range(0, len(todo), chunk):
        part = todo[start : start + chunk]
        prompts = [(prompt_fn or (lambda r: chat(rt.args, r["question"])))(r) for r in part]
        records = score_groups(rt, part, generate_all(rt, prompts, n, temperature), temperature)
        if rt.dist.is_main:
            write_jsonl(path, records, mode="a")
        done.update((r["id"], r) for r in records)
    return [done[r["id"]] for r in rows]


def evaluate_greedy(rt: Runtime, eval_rows) -> float:
    groups = generate_all(rt, [chat(rt.args, r["question"]) for r in eval_rows], 1, 0.0)
    preds = [extract_answer(g[0][0]) for g in groups]
    hits = math_equal_batch(preds, [r["answer"] for r in eval_rows])
    return sum(hits) / len(eval_rows)


# ------------------------------------------------------------------------------------------------------
# selection, metrics, and how each mode starts an iteration's SFT


def balance_for(records, threshold: float, n_star: int, rule: str) -> float:
    counts = [
        selection_counts(
            r["responses"],
            r["correct"],
            keep_by_threshold(r["reward"], threshold),
            dedup=rule == "code",
        )
        for r in records
    ]
    return balance_score([n for n, _ in counts], [u for _, u in counts], n_star, rule)


def iteration_stats(records, threshold: float, n_star: int, args) -> dict:
    mean = lambda xs: sum(xs) / len(xs) if xs else 0.0  # noqa: E731
    use_prm = bool(records) and records[0]["prm"][0] is not None
    diversity = [
        distinct_equation_ratio(
            [t for t, c in zip(r["responses"], r["correct"]) if c], args.step_separator
        )
        for r in records
    ]
    return {
        "balance_score": balance_for(records, threshold, n_star, args.balance_rule),
        "pass@K": mean([float(any(r["correct"])) for r in records]),
        "pass@K-S": mean([pass_at_k_s(r["responses"], r["correct"], args.pass_s) for r in records]),
        "reward@K-S": mean(
            [
                reward_at_k_s(r["prm"] if use_prm else r["reward"], r["correct"], args.pass_s)
                for r in records
            ]
        ),
        "diversity": mean([d for d in diversity if d is not None]),
        "sample_acc": mean([mean([float(c) for c in r["correct"]]) for r in records]),
        "num_selected": sum(sum(keep_by_threshold(r["reward"], threshold)) for r in records),
        "truncated": mean([mean([float(t) for t in r["truncated"]]) for r in records]),
    }


def make_optimizer_and_schedule(model, args, total_steps: int):
    optimizer = make_optimizer(model, args.lr)
    scheduler = get_scheduler(
        "cosine_with_min_lr",
        optimizer,
        num_warmup_steps=0,
        num_training_steps=max(1, total_steps),
        scheduler_specific_kwargs={"min_lr_rate": args.min_lr_ratio},
    )
    return optimizer, scheduler


def reset_to_initial_weights(model, model_path: str):
    """ReST-EM / STaR: every iteration fine-tunes the initial model P0 (works on FSDP2-sharded models)."""
    initial = load_model(model_path, dtype="float32").state_dict()  # fp32 master weights
    set_model_state_dict(model, initial, options=StateDictOptions(full_state_dict=True))


def start_iteration(mode: str, model, optimizer, scheduler, args, model_path: str):
    """Algorithm 1 step 4 and the §2.1 baselines: what an iteration's SFT starts from.
    bstar / online_rft: last weights, same optimizer and LR schedule (one schedule over all iterations);
    iterative_rft: last weights, fresh optimizer + schedule; rest_em / star: P0 weights, fresh optimizer."""
    if mode in ("bstar", "online_rft"):
        return optimizer, scheduler
    if mode in ("rest_em", "star"):
        reset_to_initial_weights(model, model_path)
    return make_optimizer_and_schedule(model, args, args.sft_steps)


def validate(args):
    for flag, value, allowed in [
        ("mode", args.mode, MODES),
        ("reward", args.reward, ("answer", "answer_prm")),
        ("sampler", args.sampler, ("hf", "vllm")),
        ("balance_rule", args.balance_rule, ("paper", "code")),
    ]:
        if value not in allowed:
            raise ValueError(f"--{flag} must be one of {allowed}, got {value!r}")
    if min(args.samples_per_query, args.iterations, args.sft_steps, args.batch_size) < 1:
        raise ValueError(
            "--samples_per_query, --iterations, --sft_steps and --batch_size must be >= 1"
        )
    return parse_grid(args.temperature_grid, "temperature_grid"), parse_grid(
        args.threshold_grid, "threshold_grid"
    )


# ------------------------------------------------------------------------------------------------------


def main(args: Args):
    temps, thresholds = validate(args)
    d = init_distributed()
    seed_everything(args.seed)
    out = Path(args.output_dir)
    ckpt_dir, sample_root = out / "ckpt", out / "samples"
    if (
        not args.resume and d.is_main
    ):  # a fresh run: old checkpoint and samples belong to another run
        shutil.rmtree(ckpt_dir, ignore_errors=True), shutil.rmtree(sample_root, ignore_errors=True)
    if args.batch_size % d.world_size:
        raise ValueError(
            f"--batch_size {args.batch_size} must be divisible by the {d.world_size} processes"
        )
    train_rows, eval_rows = load_task(args)
    if args.model == "tiny" and d.is_main:
        build_warm_start(args)  # rank 0 builds the cached P0, the other ranks then find it
    barrier()
    model_path = build_warm_start(args) if args.model == "tiny" else args.model
    tok = load_tokenizer(model_path)
    model = shard_model(
        load_model(model_path), d, gradient_checkpointing=args.gradient_checkpointing
    )  # fp32 masters
    sampler = make_sampler(
        args.sampler, model, tok, model_path=model_path, args=args
    )  # vllm: one engine per rank
    rt = Runtime(args, d, tok, sampler, make_step_scorer(args, d.device))
    inherit = args.mode in ("bstar", "online_rft")
    optimizer, scheduler = make_optimizer_and_schedule(
        model, args, args.sft_steps * (args.iterations if inherit else 1)
    )
    state = load_checkpoint(ckpt_dir, model, optimizer, scheduler) if args.resume else None
    if state:
        sampler.sync_weights(model)  # vLLM loaded the base weights from disk
    global_step, extra = state or (0, {"iteration": 1, "sft_step": 0})
    start_iter, resume_step = extra["iteration"], extra["sft_step"]
    logger = MetricsLogger(
        out,
        track=args.track,
        run_name="bstar",
        config=asdict(args),
        resume_step=start_iter - 1 if state else None,
    )
    M = args.queries_per_iteration or len(train_rows)
    n_star = args.n_star or (
        8 if args.balance_rule == "code" else n_star_from(args.sft_steps * args.batch_size, M)
    )
    print0(
        f"mode={args.mode} model={model_path} train={len(train_rows)} eval={len(eval_rows)} M={M} k={args.samples_per_query} n*={n_star}"
        + (f"; resumed at iteration {start_iter}, SFT step {resume_step}" if state else "")
    )
    if broadcast_object(
        not any(r["step"] == 0 for r in logger.history)
    ):  # rank 0 holds the history
        logger.log({"greedy_acc": evaluate_greedy(rt, eval_rows)}, step=0)
    for it in tqdm(
        range(start_iter, args.iterations + 1), desc="iterations", disable=not d.is_main
    ):
        sample_dir = sample_root / f"iter_{it:02d}"
        # ALGO LOGIC (1): choose (T, tau) maximising the average balance score on a query subset (§2.5)
        temperature, threshold, search_bs = (
            args.temperature,
            args.threshold,
            None,
        )  # fixed unless bstar
        if args.mode == "bstar":
            subset = random.Random(args.seed * 1000 + it).sample(
                train_rows, min(args.search_queries, len(train_rows))
            )
            grid = {}
            for T in temps:
                torch.manual_seed(args.seed + 1000 * it + int(100 * T) + 7919 * d.rank)
                records = sample_and_score(
                    rt, subset, args.samples_per_query, T, sample_dir / f"search_T{T:.2f}.jsonl"
                )
                grid.update(
                    {
                        (T, tau): balance_for(records, tau, n_star, args.balance_rule)
                        for tau in thresholds
                    }
                )
            (temperature, threshold), search_bs = choose_configuration(grid), max(grid.values())
        # ALGO LOGIC (2)-(3): k samples per query at T, scored (answer match [+ PRM min step])
        queries = [
            train_rows[(j + (it - 1) * M) % len(train_rows)] for j in range(min(M, len(train_rows)))
        ]
        torch.manual_seed(args.seed + 1000 * it + 7919 * d.rank + 1)
        records = sample_and_score(
            rt, queries, args.samples_per_query, temperature, sample_dir / "samples.jsonl"
        )
        if (
            args.rechoose_threshold and args.mode == "bstar"
        ):  # released code: tau re-picked on all samples
            threshold = choose_configuration(
                {tau: balance_for(records, tau, n_star, args.balance_rule) for tau in thresholds}
            )
        # ALGO LOGIC (4): keep reward > threshold (strict); STaR adds rationalised failures
        pairs = [
            (r["question"], t)
            for r in records
            for t, k in zip(r["responses"], keep_by_threshold(r["reward"], threshold))
            if k
        ]
        num_rationalized = 0
        if args.mode == "star":
            failed = [r for r in records if not any(r["correct"])]
            hint = lambda r: chat(
                args,
                args.hint_template.replace("{question}", r["question"]).replace(
                    "{answer}", r["answer"]
                ),
            )  # noqa: E731
            for r in sample_and_score(
                rt, failed, 1, temperature, sample_dir / "rationales.jsonl", prompt_fn=hint
            ):
                good = [t for t, c in zip(r["responses"], r["correct"]) if c]
                pairs += [
                    (r["question"], t) for t in good
                ]  # trained on the question without the hint
                num_rationalized += len(good)
        stats = iteration_stats(records, threshold, n_star, args)
        # ALGO LOGIC (5): SFT update; the mode decides weights / optimizer / schedule it starts from
        if resume_step == 0:
            optimizer, scheduler = start_iteration(
                args.mode, model, optimizer, scheduler, args, model_path
            )
        order, shuffle_rng, encoded, losses = [], random.Random(args.seed * 7 + it), {}, []
        while (
            pairs and len(order) < args.sft_steps * args.batch_size
        ):  # epochs over the selected set, same order on resume
            order += shuffle_rng.sample(range(len(pairs)), len(pairs))
        sampler.sleep()  # vLLM frees its memory for the update
        bar = tqdm(
            range(resume_step, args.sft_steps if pairs else resume_step),
            desc=f"SFT iter {it}",
            leave=False,
            disable=not d.is_main,
        )
        for step in bar:
            rows = order[step * args.batch_size : (step + 1) * args.batch_size][
                d.rank :: d.world_size
            ]  # this rank's slice
            batch = [
                encoded.setdefault(i, encode_sft(tok, chat(args, pairs[i][0]), pairs[i][1]))
                for i in rows
            ]
            losses.append(
                sft_step(
                    model,
                    optimizer,
                    scheduler,
                    tok,
                    batch,
                    args.max_grad_norm,
                    d.device,
                    args.micro_batch_size,
                )
            )
            global_step += 1
            bar.set_postfix(loss=f"{losses[-1]:.3f}")
            if (step + 1) % args.save_every == 0 and step + 1 < args.sft_steps:
                save_checkpoint(
                    ckpt_dir,
                    model,
                    optimizer,
                    scheduler,
                    global_step,
                    {"iteration": it, "sft_step": step + 1},
                )
        resume_step = 0
        sampler.sync_weights(model)  # vLLM, on every rank: push the update (HF: a no-op)
        stats.update(
            greedy_acc=evaluate_greedy(rt, eval_rows),
            temperature=temperature,
            threshold=threshold,
            search_bs=search_bs,
            sft_loss=sum(losses) / len(losses) if losses else None,
            lr=scheduler.get_last_lr()[0],
            num_pairs=len(pairs),
            num_rationalized=num_rationalized,
            sft_steps_total=global_step,
        )
        logger.log(stats, step=it)
        print0(
            f"iter {it}: T={temperature:.2f} tau={threshold:+.2f} BS={stats['balance_score']:.3f} selected={stats['num_selected']} "
            f"greedy_acc={stats['greedy_acc']:.3f}"
        )
        save_checkpoint(
            ckpt_dir, model, optimizer, scheduler, global_step, {"iteration": it + 1, "sft_step": 0}
        )

    if d.is_main:
        columns = [
            "temperature",
            "threshold",
            "balance_score",
            "num_selected",
            "pass@K",
            "pass@K-S",
            "reward@K-S",
            "diversity",
            "greedy_acc",
        ]
        print(
            f"\nB-STaR ({args.mode}), K={args.samples_per_query}, S={args.pass_s}, n*={n_star}; greedy_acc: {len(eval_rows)} held-out queries"
        )
        print(
            format_table(
                [
                    {"iter": r["step"], **{c: r.get(c) for c in columns if r.get(c) is not None}}
                    for r in logger.history
                ]
            )
        )
        png = logger.plot(
            [
                "greedy_acc",
                "pass@K",
                "pass@K-S",
                "reward@K-S",
                "diversity",
                "balance_score",
                "temperature",
                "threshold",
                "num_selected",
            ],
            out / "curves.png",
            title=f"B-STaR toy ({args.mode})",
        )
        print(f"metrics: {logger.path}  curves: {png}")
        first, last = logger.history[0], logger.history[-1]
        claims = [
            claim(
                "self-improvement raises held-out greedy accuracy over P0",
                "greedy_acc",
                first["greedy_acc"],
                last["greedy_acc"],
            )
        ]
        write_summary(out, claims, mode=args.mode, iterations=args.iterations)
        print(format_claims(claims))
    logger.close()
    cleanup_distributed()
    return logger.history


# The code the cached P0 depends on, bound at import: a test that patches sft_step to simulate a
# kill must still find the cached P0 instead of rebuilding it with the patched function.
TOY_BASE_CODE = (make_toy_row, make_toy_split, sft_step, encode_sft, chat)


def eval_only(args: Args, suite):
    """`--eval_only`: SimpleRL-Zoo's six benchmarks, asked with this script's --prompt_template."""
    model_path = build_warm_start(args) if args.model == "tiny" else args.model
    prompt = lambda q, tok: chat(args, q)  # noqa: E731
    evaluate_model(
        suite,
        model_path,
        prompt,
        args.sampler,
        args.output_dir,
        args.seed,
        is_toy=args.model == "tiny",
    )


if __name__ == "__main__":
    cli_args, suite_args = parse_config(Args, PAPER, derived, extra=(EvalArgs,))
    if suite_args.eval_only:  # common/evaluation.py: SimpleRL-Zoo's six-benchmark evaluation
        eval_only(cli_args, suite_args)
    else:
        main(cli_args)
