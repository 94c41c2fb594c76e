r"""B-STaR, a self-taught reasoner that balances exploration and exploitation (docs/bstar.md).

Paper: "B-STaR: Monitoring and Balancing Exploration and Exploitation in Self-Taught Reasoners"
(Zeng et al., arXiv 2412.17256, ICLR 2025); released code: github.com/hkust-nlp/B-STaR.

Self-taught reasoners sample k solutions per training query, keep those a reward accepts and
fine-tune on them, iteration after iteration. B-STaR tracks *exploration* (does the policy still
write several distinct correct solutions?) and *exploitation* (does the reward pick the correct
ones?) with one balance score per query, min(n'/n*, 1) * n'/n (n' unique correct among the n
selected, n* wanted per query). Each iteration first picks the sampling temperature and reward
threshold that maximise the mean balance score on a query subset, then runs online RFT with them:
continue from the last weights, inheriting the optimizer and the LR schedule (Algorithm 1).

Departures (paper = arXiv text; code = hkust-nlp/B-STaR `determine_hyper.py`,
`metric_modiacc_auto.py`, `train_bstar.sh`):
- Balance score: the paper's rule by default (mean over all queries, n* = ceil(N/M), no dedup);
  `--balance_rule code` = `cal_modi_acc_soft` (exact-string dedup first, queries with nothing
  selected dropped from the mean, n* = 8). Not implemented from the code: the gold solution added to
  every pool with score 1.0; per-query caps raised until the selection reaches a target size.
- Configuration: argmax over the whole (T, tau) grid, ties to the first in grid order (paper);
  `--rechoose_threshold` re-picks tau on the iteration's full sample set (code). The search subset
  (`--search_queries`) is drawn again each iteration with the seed.
- N (samples selected per iteration, for n*) = sft_steps * batch_size, what one iteration trains on.
- Queries: `--queries_per_iteration` M > 0 takes the next M training queries each iteration,
  wrapping around (paper: all queries every iteration, the paper preset's 0).
- Correctness: the answer is extracted (boxed, "answer is", last number) and compared with
  math-verify (code: exact match of the text after "# Answer").
- PRM: min step probability p -> 2p - 1 in [-1, 1] (the code divides a raw score by 5); a response
  with no step gets -1. A trained PRM (`--prm <path>`) is read Math-Shepherd's way
  (common/prm.py). The CPU toy has none: its stand-in is a rule-based step checker
  (common/addition_steps.py), not a learnt model.
- Pass@K, Pass@K-S, Reward@K-S and diversity are measured on each iteration's training samples
  (policy before the update); greedy accuracy on held-out queries after it. Reward@K-S ranks by the
  PRM score alone (a verifier that does not see the gold answer), by the reward without a PRM.
- LR: transformers' `cosine_with_min_lr` over all iterations (code: 4.12e-6 down to 2e-7).
- `star` = STaR with rationalisation (one sample per failed query with the answer as a hint, kept if
  correct, trained without the hint), restarting from P0 each iteration like ReST-EM.
- CPU toy: P0 is the tiny LM after a short SFT on solutions of multi-digit additions (cached).

Commands (naming --model selects the paper preset, PAPER below: the MATH setting; flags you pass
win; --print_config shows the effective configuration without loading anything):
  CPU toy (tiny model, warm start cached):  python bstar.py
  1 GPU:  python bstar.py --model <SFT checkpoint P0> --data train.jsonl --eval_data math500.jsonl \
      --prm peiyi9979/math-shepherd-mistral-7b-prm --step_separator $'\n\n' --sampler vllm \
      --prompt_template "$MATH_PROMPT"   # the boxed-answer prompt given in docs/bstar.md
  8 GPUs: torchrun --nproc_per_node=8 bstar.py <the same flags>   # FSDP2; each rank samples a share
"""

from __future__ import annotations

import dataclasses
import math
import random
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Literal, get_args, get_origin, get_type_hints

import torch
from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict
from tqdm import tqdm
from transformers import get_scheduler

from common.config import arg, parse_config, per_rank
from common.data import DataError, read_jsonl_tolerant, write_jsonl
from common.evaluation import EvalArgs
from common.models import load_model
from common.prm import split_steps
from common.rewards import extract_answer, math_equal_batch
from common.sampling import VLLMArgs, generate_sharded
from common.self_taught import (
    Runtime,
    chat,
    encode_sft,
    eval_only,
    load_policy,
    load_task,
    report,
    sft_step,
)
from common.train import (
    MetricsLogger,
    all_gather_object,
    barrier,
    broadcast_object,
    cleanup_distributed,
    init_distributed,
    load_checkpoint,
    make_optimizer,
    print0,
    save_checkpoint,
    seed_everything,
)

MODES = "B-STaR; online RFT; iterative RFT (fresh optimizer); ReST-EM / STaR (from P0)"


@dataclass
class Args(VLLMArgs):
    # generic
    seed: int = arg(0, "random seed")
    output_dir: str = arg("runs/bstar", "metrics, PNG, samples JSONL, checkpoint")
    model: str = arg("", "'' = the toy's tiny P0 (cached), else P0's HF id/path (epoch-1 SFT)")
    data: str = arg("toy", "'toy' (adding digits in steps) or a file/folder/hub id")
    eval_data: str = arg("", "held-out queries (MATH500); '' = the last --eval_queries of --data")
    question_field: str = arg("question", "question column")
    answer_field: str = arg("answer", "gold answer column (both defaults: MATH, GSM8K as released)")
    prompt_template: str = arg("{question}", "user message; {question} is replaced")
    sampler: Literal["hf", "vllm"] = arg("hf", "HF generate or vLLM")
    resume: bool = arg(False, "continue from output_dir/ckpt, reusing finished sampling")
    track: bool = arg(False, "log to W&B")
    # algorithm (Algorithm 1 and its baselines)
    mode: Literal["bstar", "online_rft", "iterative_rft", "rest_em", "star"] = arg("bstar", MODES)
    iterations: int = arg(6, "self-improvement iterations; paper: 9 (MATH)")
    queries_per_iteration: int = arg(240, "M, 0 = all; paper: 0 (all 11.5K MATH queries)")
    samples_per_query: int = arg(8, "k; paper: 64 (MATH)")
    temperature_grid: str = arg("0.5:1.2:0.1", "start:stop:step, inclusive (fine: 0.05 step)")
    threshold_grid: str = arg("-1:1:0.1", "start:stop:step, inclusive (fine: 0.01 step)")
    search_queries: int = arg(24, "queries of the configuration search; paper: 600 (MATH)")
    temperature: float = arg(1.0, "fixed temperature of the other modes")
    threshold: float = arg(0.0, "fixed reward threshold of the other modes (the paper's default)")
    reward: Literal["answer", "answer_prm"] = arg("answer_prm", "1[a = a*] (+ PRM min step)")
    prm: str = arg("rule", "'rule' (the toy's stand-in) or a trained PRM's HF id/path")
    prm_head: Literal["token", "classifier"] = arg("token", "P(good token) or a classifier head")
    prm_step_tag: str = arg("ки", "step tag the PRM scores at (Math-Shepherd's)")
    prm_good_token: str = arg("+", "good-step token")
    prm_bad_token: str = arg("-", "bad-step token")
    step_separator: str = arg("\n", "splits a response into steps (PRM) and equations")
    balance_rule: Literal["paper", "code"] = arg("paper", "or code: cal_modi_acc_soft")
    n_star: int = arg(0, "n*; 0 = ceil(N/M), N = sft_steps * batch_size")
    rechoose_threshold: bool = arg(False, "released code: re-pick tau on the full sample set")
    pass_s: int = arg(4, "S of Pass@K-S / Reward@K-S; paper: 4 (Pass@32-4)")
    hint_template: str = arg("{question} (answer: {answer})", "STaR rationalisation prompt")
    # SFT update
    sft_steps: int = arg(30, "SFT steps per iteration; paper: 500 (MATH)")
    batch_size: int = arg(32, "SFT batch, all ranks; paper: 128 (MATH)")
    lr: float = arg(1e-3, "peak LR; paper: 4.12e-6 (train_bstar.sh)")
    min_lr_ratio: float = arg(2e-7 / 4.12e-6, "cosine floor / peak (code: 2e-7 / 4.12e-6)")
    max_grad_norm: float = arg(1.0, "gradient clipping")
    micro_batch_size: int = arg(0, "rows per forward, 0 = all; paper preset: 4 (not stated)")
    gradient_checkpointing: bool = arg(False, "paper preset: True (not stated)")
    save_every: int = arg(10, "checkpoint every N SFT steps (mid-iteration --resume)")
    max_new_tokens: int = arg(48, "sampling length; paper preset: 1024 (not stated)")
    gen_batch_size: int = arg(64, "prompts per generate call")
    eval_queries: int = arg(200, "held-out queries for greedy accuracy; paper: 500 (MATH500)")
    # toy world (common/addition_steps.py)
    toy_train_queries: int = arg(600, "training pool of the toy (at most 529 with 3 digits)")
    toy_terms: str = arg("3:3", "min:max numbers to add per toy query")
    warm_start_steps: int = arg(400, "toy SFT steps that make the tiny P0 (cached)")
    warm_start_lr: float = arg(5e-3, "toy warm-start LR")


# The paper's MATH setting (Mistral-7B; LR schedule from train_bstar.sh), used with --preset paper
# (the default once --model is named); the defaults above are the CPU toy's. A flag given wins.
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
    gradient_checkpointing=True,  # not stated in the paper: bounds activation memory
    micro_batch_size=4,  # not stated in the paper: bounds activation memory
)


def validate(args) -> tuple[list[float], list[float]]:
    """Choices (also when main is called without the parser), sizes and the two grids."""
    hints = get_type_hints(type(args))
    for f in dataclasses.fields(args):
        allowed = get_args(hints[f.name]) if get_origin(hints[f.name]) is Literal else None
        if allowed and getattr(args, f.name) not in allowed:
            raise ValueError(f"--{f.name} must be one of {allowed}, got {getattr(args, f.name)!r}")
    if min(args.samples_per_query, args.iterations, args.sft_steps, args.batch_size) < 1:
        raise ValueError("--samples_per_query --iterations --sft_steps --batch_size must be >= 1")
    temperatures = parse_grid(args.temperature_grid, "temperature_grid")
    return temperatures, parse_grid(args.threshold_grid, "threshold_grid")


def derived(args, world_size: int) -> dict:
    """Checks the flags (`validate`) and splits the SFT batch over the ranks."""
    validate(args)
    return dict(
        sft_rows_per_rank=per_rank(args.batch_size, world_size, "--batch_size"),
        samples_per_iteration=args.sft_steps * args.batch_size,
    )


# ------------------------------------------------------------------------------------------------
# the paper's functions


def _mean(xs) -> float:
    return sum(xs) / len(xs) if xs else 0.0


def n_star_from(num_selected_target: int, num_queries: int) -> int:
    """Balance score: n* = ceil(N / M), the number of selected samples wanted per query."""
    return math.ceil(num_selected_target / num_queries)


def balance_score(num_selected, num_unique_correct, n_star: int, rule: str = "paper") -> float:
    """The paper's balance score, bs_i = min(n'_i / n*, 1) * n'_i / n_i, averaged over queries
    (bs_i = 0 when n_i = 0). rule='code' (cal_modi_acc_soft) drops queries with nothing selected
    from the mean (counts must come deduplicated)."""
    if isinstance(num_selected, int):
        num_selected, num_unique_correct = [num_selected], [num_unique_correct]
    if rule not in ("paper", "code"):
        raise ValueError(f"--balance_rule must be 'paper' or 'code', got {rule!r}")
    scores = [
        min(u / n_star, 1.0) * u / n if n else 0.0
        for n, u in zip(num_selected, num_unique_correct)
        if n or rule == "paper"
    ]
    return _mean(scores)


def selection_counts(responses, correct, keep, dedup: bool = False) -> tuple[int, int]:
    """(n_i, n'_i) of one query: selected responses and unique (exact text) correct ones."""
    kept = [(r.strip(), c) for r, c, k in zip(responses, correct, keep) if k]
    if dedup:  # released code: exact-string dedup before counting
        kept = list(dict.fromkeys(kept))
    return len(kept), len({r for r, c in kept if c})


def keep_by_threshold(rewards, threshold: float) -> list[bool]:
    """Algorithm 1: keep responses whose reward is strictly above the threshold."""
    return [r > threshold for r in rewards]


def prm_to_reward(min_step_prob: float) -> float:
    """The PRM's minimum step score, a probability in [0, 1], normalised to [-1, 1]."""
    return 2.0 * min_step_prob - 1.0


def bstar_reward(correct: bool, prm_reward: float | None) -> float:
    """r = 1[a = a*] ('answer') or 1[a = a*] + r_prm ('answer + PRM')."""
    return float(correct) + (prm_reward if prm_reward is not None else 0.0)


def pass_at_k_s(responses, correct, s: int) -> float:
    """Pass@K-S (exploration): 1 if at least S *unique* correct responses are among the K."""
    return float(len({r.strip() for r, c in zip(responses, correct) if c}) >= s)


def reward_at_k_s(rewards, correct, s: int) -> float:
    """Reward@K-S (exploitation): 1 if the top-S responses by reward are all correct."""
    order = sorted(range(len(rewards)), key=lambda i: -rewards[i])  # stable: ties keep sample order
    return float(len(order) >= s and all(correct[i] for i in order[:s]))


def distinct_equation_ratio(correct_responses, separator: str = "\n") -> float | None:
    """Distinct Equations (diversity) of one query: unique / all equations of its correct ones."""
    equations = [
        line.strip() for r in correct_responses for line in r.split(separator) if "=" in line
    ]
    return len(set(equations)) / len(equations) if equations else None


def choose_configuration(scores: dict):
    """Algorithm 1: the grid point with the highest balance score; ties go to the first in order."""
    best = max(scores.values())
    return next(key for key, value in scores.items() if value == best)


def parse_grid(spec: str, flag: str) -> list[float]:
    try:
        start, stop, step = (float(x) for x in spec.split(":"))
        assert step > 0 and stop >= start
    except (ValueError, AssertionError):
        raise ValueError(f"--{flag} must be start:stop:step with step > 0, got {spec!r}") from None
    return [round(start + i * step, 6) for i in range(int(round((stop - start) / step)) + 1)]


# ------------------------------------------------------------------------------------------------
# sampling + scoring, resumable: one complete JSONL record per query, appended as soon as it exists
# (queries, prompts, the PRM, the SFT step and the toy's P0 are in common/self_taught.py)


def hinted_chat(args, row: dict) -> list[dict]:
    """STaR's rationalisation prompt: the question with its gold answer as a hint."""
    text = args.hint_template.replace("{question}", row["question"])
    return chat(args, text.replace("{answer}", row["answer"]))


def generate_all(rt: Runtime, prompts, n: int, temperature: float) -> list[list[tuple[str, bool]]]:
    """(text, truncated) of n samples per prompt, on every rank: each rank samples a share with its
    own sampler (HF on the FSDP2 model, or its own vLLM engine), then the groups are gathered."""
    sizes = dict(max_new_tokens=rt.args.max_new_tokens, batch_size=rt.args.gen_batch_size)
    groups = generate_sharded(rt.sampler, prompts, n=n, temperature=temperature, **sizes)
    return [[(c.text, c.finish_reason == "length") for c in g] for g in groups]


def score_record(rt: Runtime, row: dict, group, temperature: float) -> dict:
    """Correctness, PRM reward and B-STaR reward of every sample of one query."""
    texts = [t for t, _ in group]
    correct = math_equal_batch([extract_answer(t) for t in texts], [row["answer"]] * len(texts))
    prm = [None] * len(texts)
    if rt.prm is not None:
        steps = [split_steps(t, rt.args.step_separator) for t in texts]
        scores = rt.prm.step_scores([row["question"]] * len(texts), steps)
        prm = [prm_to_reward(min(s) if s else 0.0) for s in scores]  # no step at all: worst score
    reward = [bstar_reward(c, p) for c, p in zip(correct, prm)]
    record = {k: row[k] for k in ("id", "question", "answer")}
    record.update(temperature=temperature, responses=texts, truncated=[t for _, t in group])
    return {**record, "correct": correct, "prm": prm, "reward": reward}


def sample_and_score(
    rt: Runtime, rows, n: int, temperature: float, path: Path, hint: bool = False, chunk: int = 64
) -> list[dict]:
    """n responses per row, scored, each query's record appended to `path`; queries already in the
    file are reused (a rerun skips finished sampling). Ranks score a share each, then gather."""
    barrier()
    done = {r["id"]: r for r in read_jsonl_tolerant(path)}
    for rec in done.values():
        if len(rec["responses"]) != n or rec["temperature"] != temperature:
            found = f"{len(rec['responses'])} samples at T={rec['temperature']}"
            wanted = f"this run wants {n} at T={temperature}; use a new --output_dir"
            raise DataError(f"{path}: record {rec['id']} has {found}, {wanted}")
    if rt.dist_info.is_main:  # rewrite without a half-written last line before appending
        write_jsonl(path, done.values())
    barrier()
    todo = [r for r in rows if r["id"] not in done]
    rank, world = rt.dist_info.rank, rt.dist_info.world_size
    for start in range(0, len(todo), chunk):
        part = todo[start : start + chunk]
        prompts = [hinted_chat(rt.args, r) if hint else chat(rt.args, r["question"]) for r in part]
        groups = generate_all(rt, prompts, n, temperature)
        mine = [
            (i, score_record(rt, part[i], groups[i], temperature))
            for i in range(rank, len(part), world)
        ]
        records = [rec for _, rec in sorted(x for p in all_gather_object(mine) for x in p)]
        if rt.dist_info.is_main:
            write_jsonl(path, records, mode="a")
        done.update((r["id"], r) for r in records)
    return [done[r["id"]] for r in rows]


def evaluate_greedy(rt: Runtime, eval_rows) -> float:
    groups = generate_all(rt, [chat(rt.args, r["question"]) for r in eval_rows], 1, 0.0)
    preds = [extract_answer(g[0][0]) for g in groups]
    return _mean(math_equal_batch(preds, [r["answer"] for r in eval_rows]))


# ------------------------------------------------------------------------------------------------
# one iteration: configuration search and samples (a generator), selection, SFT, metrics


def balance_for(records, threshold: float, n_star: int, rule: str) -> float:
    """The mean balance score of the responses a threshold selects (`rule`: paper or code)."""
    counts = []
    for r in records:
        keep = keep_by_threshold(r["reward"], threshold)
        counts.append(selection_counts(r["responses"], r["correct"], keep, dedup=rule == "code"))
    return balance_score([n for n, _ in counts], [u for _, u in counts], n_star, rule)


def search_configuration(rt: Runtime, train_rows, it: int, grids, n_star: int, sample_dir: Path):
    """Algorithm 1 step 1: the (T, tau) with the best mean balance score on a query subset."""
    args = rt.args
    size = min(args.search_queries, len(train_rows))
    subset = random.Random(args.seed * 1000 + it).sample(train_rows, size)
    grid = {}
    for T in grids[0]:
        torch.manual_seed(args.seed + 1000 * it + int(100 * T) + 7919 * rt.dist_info.rank)
        path = sample_dir / f"search_T{T:.2f}.jsonl"
        records = sample_and_score(rt, subset, args.samples_per_query, T, path)
        for tau in grids[1]:
            grid[(T, tau)] = balance_for(records, tau, n_star, args.balance_rule)
    temperature, threshold = choose_configuration(grid)
    return {"temperature": temperature, "threshold": threshold, "search_bs": max(grid.values())}


def iteration_queries(train_rows, num_queries: int, it: int) -> list[dict]:
    """The M queries of iteration `it`: the next M in order, wrapping around the training set."""
    count = min(num_queries, len(train_rows))
    return [train_rows[(j + (it - 1) * num_queries) % len(train_rows)] for j in range(count)]


def iteration_count(args, num_train: int) -> tuple[int, int]:
    """M (queries per iteration) and n* (selected samples wanted per query)."""
    M = args.queries_per_iteration or num_train
    if args.n_star:
        return M, args.n_star
    return M, 8 if args.balance_rule == "code" else n_star_from(args.sft_steps * args.batch_size, M)


def rollouts(rt: Runtime, train_rows, grids, n_star: int, out: Path, first: int):
    """Algorithm 1 steps 1-2, one iteration per item: choose (T, tau) by the mean balance score on
    a query subset (bstar; the other modes keep --temperature / --threshold), then sample k
    responses for each of the iteration's M queries at T and score them. Yields (iteration,
    config, records, folder); the caller updates the policy before the next item is sampled."""
    args = rt.args
    M = iteration_count(args, len(train_rows))[0]
    for it in range(first, args.iterations + 1):
        folder = out / "samples" / f"iter_{it:02d}"
        config = {"temperature": args.temperature, "threshold": args.threshold, "search_bs": None}
        if args.mode == "bstar":
            config = search_configuration(rt, train_rows, it, grids, n_star, folder)
        torch.manual_seed(args.seed + 1000 * it + 7919 * rt.dist_info.rank + 1)
        queries = iteration_queries(train_rows, M, it)
        k, T = args.samples_per_query, config["temperature"]
        records = sample_and_score(rt, queries, k, T, folder / "samples.jsonl")
        if args.rechoose_threshold and args.mode == "bstar":  # released code: tau on all samples
            scores = {tau: balance_for(records, tau, n_star, args.balance_rule) for tau in grids[1]}
            config["threshold"] = choose_configuration(scores)
        yield it, config, records, folder


def selected_pairs(records, threshold: float) -> list[tuple[str, str]]:
    """Algorithm 1 step 3: (question, response) of every response with reward above tau."""
    keep = [keep_by_threshold(r["reward"], threshold) for r in records]
    return [
        (r["question"], t) for r, k in zip(records, keep) for t, ok in zip(r["responses"], k) if ok
    ]


def rationalize(rt: Runtime, records, temperature: float, path: Path) -> list[tuple[str, str]]:
    """STaR: each failed query asked once more with its answer as a hint; a correct response is
    trained on the question *without* the hint."""
    failed = [r for r in records if not any(r["correct"])]
    hinted = sample_and_score(rt, failed, 1, temperature, path, hint=True)
    return [(r["question"], t) for r in hinted for t, c in zip(r["responses"], r["correct"]) if c]


def make_optimizer_and_schedule(model, args, total_steps: int):
    """AdamW and the released code's cosine schedule down to min_lr_ratio * lr."""
    optimizer = make_optimizer(model, args.lr)
    kwargs = dict(num_warmup_steps=0, num_training_steps=max(1, total_steps))
    kwargs["scheduler_specific_kwargs"] = {"min_lr_rate": args.min_lr_ratio}
    scheduler = get_scheduler("cosine_with_min_lr", optimizer, **kwargs)
    return optimizer, scheduler


def reset_to_initial_weights(model, model_path: str):
    """ReST-EM / STaR: every iteration fine-tunes P0 again (works on FSDP2-sharded models)."""
    initial = load_model(model_path, dtype="float32").state_dict()  # fp32 master weights
    set_model_state_dict(model, initial, options=StateDictOptions(full_state_dict=True))


def start_iteration(mode: str, model, optimizer, scheduler, args, model_path: str):
    """What an iteration's SFT starts from. bstar / online_rft (Algorithm 1): the last weights,
    the same optimizer and LR schedule (one schedule over all iterations); iterative_rft: the last
    weights, a fresh optimizer and schedule; rest_em / star: P0's weights, a fresh optimizer."""
    if mode in ("bstar", "online_rft"):
        return optimizer, scheduler
    if mode in ("rest_em", "star"):
        reset_to_initial_weights(model, model_path)
    return make_optimizer_and_schedule(model, args, args.sft_steps)


def sft_iteration(rt: Runtime, model, opt, pairs, it: int, first_step: int, global_step: int, ckpt):
    """Algorithm 1 step 4: SFT steps first_step..sft_steps on the selected pairs, epochs over them
    in a seeded order (the same on resume). `opt` = (optimizer, scheduler). Returns the losses and
    the global step count."""
    args, dist_info = rt.args, rt.dist_info
    order, rng, losses = [], random.Random(args.seed * 7 + it), []
    while pairs and len(order) < args.sft_steps * args.batch_size:
        order += rng.sample(range(len(pairs)), len(pairs))
    last = args.sft_steps if pairs else first_step
    bar = tqdm(
        range(first_step, last), desc=f"SFT iter {it}", leave=False, disable=not dist_info.is_main
    )
    for step in bar:
        rows = order[step * args.batch_size : (step + 1) * args.batch_size]
        rows = rows[dist_info.rank :: dist_info.world_size]  # this rank's slice
        batch = [encode_sft(rt.tok, chat(args, pairs[i][0]), pairs[i][1]) for i in rows]
        loss = sft_step(
            model, *opt, rt.tok, batch, args.max_grad_norm, dist_info.device, args.micro_batch_size
        )
        losses.append(loss)
        global_step += 1
        bar.set_postfix(loss=f"{loss:.3f}")
        if (step + 1) % args.save_every == 0 and step + 1 < args.sft_steps:
            save_checkpoint(ckpt, model, *opt, global_step, {"iteration": it, "sft_step": step + 1})
    return losses, global_step


def iteration_stats(records, threshold: float, n_star: int, args) -> dict:
    """The paper's exploration / exploitation metrics of one iteration's samples."""
    ranked_by = "prm" if records and records[0]["prm"][0] is not None else "reward"
    s, sep = args.pass_s, args.step_separator
    right = [[t for t, c in zip(r["responses"], r["correct"]) if c] for r in records]
    diversity = [distinct_equation_ratio(texts, sep) for texts in right]
    return {
        "balance_score": balance_for(records, threshold, n_star, args.balance_rule),
        "pass@K": _mean([float(any(r["correct"])) for r in records]),
        "pass@K-S": _mean([pass_at_k_s(r["responses"], r["correct"], s) for r in records]),
        "reward@K-S": _mean([reward_at_k_s(r[ranked_by], r["correct"], s) for r in records]),
        "diversity": _mean([d for d in diversity if d is not None]),
        "sample_acc": _mean([_mean([float(c) for c in r["correct"]]) for r in records]),
        "num_selected": sum(sum(keep_by_threshold(r["reward"], threshold)) for r in records),
        "truncated": _mean([_mean([float(t) for t in r["truncated"]]) for r in records]),
    }


# ------------------------------------------------------------------------------------------------


def main(args: Args):
    grids = validate(args)  # (temperatures, thresholds)
    dist_info = init_distributed()
    seed_everything(args.seed)
    out, ckpt = Path(args.output_dir), Path(args.output_dir) / "ckpt"
    if not args.resume and dist_info.is_main:  # a fresh run: old files belong to another run
        shutil.rmtree(ckpt, ignore_errors=True)
        shutil.rmtree(out / "samples", ignore_errors=True)
    per_rank(args.batch_size, dist_info.world_size, "--batch_size")
    train_rows, eval_rows = load_task(args)
    rt, model, model_path = load_policy(args, dist_info)
    inherit = args.mode in ("bstar", "online_rft")  # one LR schedule over all iterations
    total_steps = args.sft_steps * (args.iterations if inherit else 1)
    optimizer, scheduler = make_optimizer_and_schedule(model, args, total_steps)
    state = load_checkpoint(ckpt, model, optimizer, scheduler) if args.resume else None
    if state:
        rt.sampler.sync_weights(model)  # vLLM loaded the base weights from disk
    global_step, extra = state or (0, {"iteration": 1, "sft_step": 0})
    start_iter, resume_step = extra["iteration"], extra["sft_step"]
    logged = start_iter - 1 if state else None
    logger = MetricsLogger(out, args.track, "bstar", asdict(args), resume_step=logged)
    M, n_star = iteration_count(args, len(train_rows))
    print0(
        f"mode={args.mode} model={model_path} train={len(train_rows)} eval={len(eval_rows)} "
        f"M={M} k={args.samples_per_query} n*={n_star} start={start_iter}:{resume_step}"
    )
    if broadcast_object(not any(r["step"] == 0 for r in logger.history)):  # rank 0 has the history
        logger.log({"greedy_acc": evaluate_greedy(rt, eval_rows)}, step=0)
    batches = rollouts(rt, train_rows, grids, n_star, out, start_iter)
    total = args.iterations - start_iter + 1
    bar = tqdm(batches, "iterations", total=total, disable=not dist_info.is_main)
    # ALGO LOGIC (1)-(2): each iteration's (T, tau) and its k scored samples per query
    for it, config, records, folder in bar:
        T, threshold = config["temperature"], config["threshold"]
        # ALGO LOGIC (3): keep reward > tau (strict); STaR adds its rationalised failures
        pairs = selected_pairs(records, threshold)
        hinted = []
        if args.mode == "star":
            hinted = rationalize(rt, records, T, folder / "rationales.jsonl")
        # ALGO LOGIC (4): SFT; the mode decides the weights / optimizer / schedule it starts from
        if resume_step == 0:
            opt = start_iteration(args.mode, model, optimizer, scheduler, args, model_path)
            optimizer, scheduler = opt
        rt.sampler.sleep()  # vLLM frees its memory for the update
        losses, global_step = sft_iteration(
            rt, model, (optimizer, scheduler), pairs + hinted, it, resume_step, global_step, ckpt
        )
        resume_step = 0
        rt.sampler.sync_weights(model)  # vLLM, on every rank: push the update (HF: a no-op)
        # log: the samples' exploration / exploitation, then greedy accuracy after the update
        stats = iteration_stats(records, threshold, n_star, args)
        stats.update(greedy_acc=evaluate_greedy(rt, eval_rows), **config)
        stats.update(sft_loss=_mean(losses) if losses else None, lr=scheduler.get_last_lr()[0])
        stats.update(num_pairs=len(pairs) + len(hinted), num_rationalized=len(hinted))
        logger.log({**stats, "sft_steps_total": global_step}, step=it)
        print0(
            f"iter {it}: T={T:.2f} tau={threshold:+.2f} BS={stats['balance_score']:.3f}"
            f" selected={stats['num_selected']} greedy_acc={stats['greedy_acc']:.3f}"
        )
        position = {"iteration": it + 1, "sft_step": 0}
        save_checkpoint(ckpt, model, optimizer, scheduler, global_step, position)
    if dist_info.is_main:
        report(args, logger.history, out, n_star, len(eval_rows), logger)
    logger.close()
    cleanup_distributed()
    return logger.history


if __name__ == "__main__":
    cli_args, suite_args = parse_config(Args, PAPER, derived, extra=(EvalArgs,))
    if suite_args.eval_only:  # common/evaluation.py: SimpleRL-Zoo's six-benchmark evaluation
        eval_only(cli_args, suite_args)
    else:
        main(cli_args)
