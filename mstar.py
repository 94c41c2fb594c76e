"""M-STaR, multimodal continuous self-evolving training (docs/mstar.md).

Paper: "Diving into Self-Evolving Training for Multimodal Reasoning" (Liu et al., arXiv 2412.17451,
ICML 2025). The pipeline code was never released (hkust-nlp/mstar holds a README), so this file
follows the paper's text and tables. Its plumbing (rows and images, prompts, the SFT step, grading,
the PRMs, the toy base, set-up) is in common/image_questions.py.

Idea: a vision-language model improves its chain-of-thought (CoT) by sampling answers to labelled
image questions, keeping the good ones and fine-tuning on them, again and again. The paper's final
recipe (its "Final Recipe" section, built from the "Training Method", "Reward Model", "Prompt
Variation" and "Dynamics of Self-Evolution" studies):
1. warm-up: CoT sampled with the answer given as a hint; the correct ones are the first SFT set;
2. continuous self-evolving: each iteration samples a fraction (interval 25%) of the queries with
   the current model and keeps training the SAME model with the SAME optimizer state and LR
   schedule (iterative RFT restarts the optimizer each iteration, ReST-EM also the weights);
3. reward: answer correctness, then a multimodal process reward model (PRM) reranks the correct
   responses by their minimum step score, and the top 2 are kept;
4. every 2 iterations the sampling temperature is re-chosen in {0.3, ..., 1.6} to maximise
   Reward-Pass@2 on a validation split. Prompt variation (unlabelled queries, weighted-vote
   pseudo-labels) is available but off, as the paper recommends.

Departures:
- Each iteration trains a fixed `--steps_per_iteration` on batches drawn from its kept samples, so
  the LR schedule has a known length (the paper: 10K steps in all at batch 128). The schedule's
  shape is not in the paper: cosine with 5% warmup here.
- PRM: `--prm <HF model>` scores steps Math-Shepherd style (P("+") vs P("-") at a step tag); the
  released hkust-nlp/mstar-prm-8b-v1.0 needs its own remote code and is not tested here. The CPU
  default is a STAND-IN: a rule-based checker comparing every CoT step with the drawn scene (it
  never sees the label).
- alpha of the `threshold` selection is not in the paper (0.5 here).
- On the shapes world the warm-up keeps only the correct hinted responses whose every step checks
  out (`--warmup_selection threshold`): the tiny model copies a hinted answer under unrelated
  reasoning. With --data it keeps all correct ones, as the paper does.
- Pass@K and Reward-Pass@2 are reported on the test split at T = 1; accuracy is greedy.
- Not stated in the paper: max_new_tokens (1024), micro-batch (2), gradient checkpointing, K = 4
  samples per validation query in the temperature search.
- --data rows are shuffled with the seed and cut into test / validation / train / unlabelled; the
  paper uses fixed MathV360K splits (180K labelled, 750 test, 250 validation).
- Toy: the tiny LLaVA is first warm-started (cached) into a weak base: toy vision pre-training,
  then captions and CoT where 60% of the fact demonstrations state a wrong letter / side count (a
  "bad habit" self-training can remove). Sizes, lr, batch and budget are toy values (paper values
  in --help). The no-argument run also reruns the self-evolving phase with the paper's baseline,
  iterative RFT, on the same budget (`--baseline`; on CPU in a second process beside the main run,
  one thread each), and writes both claims to summary.json.

Commands (naming --model selects the paper preset, PAPER below; flags you pass win; --print_config
shows the effective configuration without loading anything):
  python mstar.py                                            # CPU, offline, tiny VLM, shapes world
  python mstar.py --model Qwen/Qwen2-VL-2B-Instruct --data mathv360k.jsonl --image_root images/ \\
      --prm /path/to/prm                                     # 1 GPU
  torchrun --nproc_per_node=8 mstar.py  <same flags>          # FSDP2 over 8 GPUs
"""

from __future__ import annotations

import functools
import math
import random
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from typing import Literal

from tqdm import tqdm

from common.claims import claim, format_claims, write_summary
from common.config import arg, parse_config, per_rank
from common.data import read_jsonl_tolerant, write_jsonl
from common.image_questions import (
    Run,
    chat_prompt,
    grade,
    image_of,
    load_splits,
    new_optimizer,
    resume_point,
    root_forward,
    setup,
    shard,
    train_steps,
)
from common.processes import in_second_process
from common.rewards import extract_answer, pass_at_k, strip_string
from common.sampling import VLLMArgs
from common.train import (
    MetricsLogger,
    all_gather_object,
    barrier,
    cleanup_distributed,
    format_table,
    load_checkpoint,
    save_checkpoint,
    seed_everything,
)

TRAININGS = ("continuous", "iterative_rft", "rest_em")


@dataclass
class Args(VLLMArgs):
    # generic
    seed: int = arg(0, "random seed")
    output_dir: str = arg("runs/mstar", "metrics, samples, checkpoints, summary.json, PNG")
    model: str = arg("", "HF VLM id/path (AutoModelForImageTextToText); '': the toy tiny LLaVA")
    data: str = arg("", "file/folder/hub id with question, answer, image; '': shapes world")
    image_root: str = arg("", "folder that relative image paths in --data are relative to")
    question_field: str = arg("question", "field of --data holding the question")
    answer_field: str = arg("answer", "field of --data holding the gold answer")
    image_field: str = arg("image", "field of --data holding the image (path or PIL)")
    instruction: str = arg("", "text appended to every question (e.g. the answer format)")
    toy_scene: Literal["single", "group", "mixed"] = arg("single", "shapes-world scenes")
    toy_kinds: str = arg(
        "color,letters,letters_plus,letters_times",
        "comma-separated shapes-world question kinds; empty = all kinds of --toy_scene",
    )
    num_train: int = arg(512, "labelled training queries; paper: 180000 (MathV360K, labelled)")
    num_unlabeled: int = arg(64, "unlabelled queries for prompt variation")
    num_val: int = arg(32, "validation queries for the temperature rule; paper: 250")
    num_test: int = arg(96, "held-out test queries; paper: 750 (in-domain test)")
    sampler: Literal["hf", "vllm"] = arg("hf", "hf | vllm")
    max_new_tokens: int = arg(48, "tokens per sampled response; paper: 1024 (not stated)")
    gen_batch_size: int = arg(64, "prompts per generate call")
    track: bool = arg(False, "log to Weights & Biases")
    resume: bool = arg(False, "continue from the checkpoints in --output_dir")
    # toy base model (only without --model)
    base_steps: int = arg(200, "SFT steps of the cached tiny base (captions + noisy CoT)")
    base_noise: float = arg(0.6, "share of fact demonstrations stating MISCONCEPTION (/4: misread)")
    base_lr: float = arg(3e-3, "lr of the tiny base warm-start")
    base_caption_share: float = arg(0.5, "share of caption examples in the tiny base's SFT")
    base_vision_steps: int = arg(150, "toy vision pre-training steps (stand-in for a ViT)")
    # algorithm (paper: "Training Method", "Reward Model", "Dynamics of Self-Evolution")
    training: Literal["continuous", "iterative_rft", "rest_em"] = arg(
        "continuous",
        "continuous (M-STaR) | iterative_rft (fresh optimizer each iteration) | rest_em (also "
        "restart from the warm-up model), compared in the paper's 'Training Method' table",
    )
    interval: float | None = arg(
        None, "share of queries per iteration; None: 0.25 continuous (paper's best), 1.0 baselines"
    )
    baseline: Literal["iterative_rft", "rest_em", "none"] = arg(
        "iterative_rft",
        "after a continuous run, rerun the self-evolving phase from the warm-up with this "
        "baseline at interval 1.0 on the same budget (SFT steps, sampled queries); paper: none",
    )
    baseline_process: bool = arg(True, "one CPU process: run the baseline in a second process")
    num_iterations: int = arg(8, "self-evolving iterations; paper: 16 (x 625 = 10K steps)")
    steps_per_iteration: int = arg(8, "SFT steps per iteration; paper: 625 (16 x 625 = 10K)")
    samples_per_query: int = arg(16, "responses sampled per query; paper: 16")
    batch_size: int = arg(32, "SFT batch, all ranks; paper: 128")
    lr: float = arg(1e-3, "AdamW lr; paper: 1e-6")
    lr_scheduler: str = arg("cosine", "transformers scheduler; one schedule across iterations")
    warmup_ratio: float = arg(0.05, "LR warmup share of the schedule")
    max_grad_norm: float = arg(1.0, "gradient clipping")
    micro_batch_size: int = arg(0, "rows per forward/backward (0: all); paper: 2 (not stated)")
    gradient_checkpointing: bool = arg(False, "recompute layers; paper: True (not stated)")
    selection: Literal["top2", "top1", "top4", "threshold", "random2", "all"] = arg(
        "top2", "H(.) over correct responses by PRM min step score; 'all' = no PRM"
    )
    prm_threshold: float = arg(0.5, "alpha of the 'threshold' selection (not in the paper)")
    prm: str = arg("rule", "'rule' (stand-in: shapes-world step checker) or an HF PRM path")
    prm_step_tag: str = arg(" ки", "tag appended to each step for a model PRM (Math-Shepherd)")
    prm_good_token: str = arg("+", "token whose probability is the step score")
    prm_bad_token: str = arg("-", "the competing token")
    pseudo_label_share: float = arg(0.0, "share of pseudo-labelled queries; paper: 0.0")
    auto_temperature: bool = arg(True, "re-choose T by Reward-Pass@2 on the validation split")
    temperature_every: int = arg(2, "iterations between temperature choices; paper: 2")
    temperature_grid: str = arg(
        "0.3,0.4,0.5,0.6,0.7,0.8,0.9,1.0,1.1,1.2,1.3,1.4,1.5,1.6", "candidate temperatures"
    )
    temperature: float = arg(1.0, "T without --auto_temperature; paper: 1.0 (static runs)")
    val_samples_per_query: int = arg(4, "responses per validation query when scoring a T")
    warmup_samples: int = arg(4, "hinted CoT samples per training query for the warm-up set")
    warmup_selection: Literal["all", "threshold", "top2", "top1", "top4", "random2"] | None = arg(
        None,
        "correct hinted responses kept: all (paper) ...; None: all with --data, else threshold",
    )
    warmup_steps: int = arg(16, "SFT steps of the warm-up")
    eval_k: int = arg(8, "K for Pass@K and Reward-Pass@2 on the test split")


# The paper's setting (MiniCPM-V-2.5 on MathV360K), used with --preset paper (the default once
# --model is named); the defaults above are the CPU toy's. A flag on the command line wins.
PAPER = dict(
    num_train=180_000,
    num_val=250,
    num_test=750,
    max_new_tokens=1024,
    baseline="none",
    num_iterations=16,
    steps_per_iteration=625,
    batch_size=128,
    lr=1e-6,
    gradient_checkpointing=True,
    micro_batch_size=2,
)


def derived(args, world_size: int) -> dict:
    """Per-rank SFT rows implied by the global batch; raises naming the flag."""
    return dict(
        sft_rows_per_rank=per_rank(args.batch_size, world_size, "--batch_size"),
        total_sft_steps=args.num_iterations * args.steps_per_iteration,
    )


# --------------------------------------------------------------------------------------------------
# ALGO LOGIC: the paper's rules as small pure functions


def process_reward(step_scores: list[float]) -> float:
    """R_p = min_i s_i, the minimum step score of a response (paper: "Reward Model"); 0 if none."""
    return min(step_scores) if step_scores else 0.0


def by_score(scores: list[float], index: int) -> float:
    """Sort key: the highest score first (sorted() is stable, so ties keep the earlier sample)."""
    return -scores[index]


def select_responses(
    correct: list[bool],
    prm_scores: list[float],
    rule: str = "top2",
    threshold: float = 0.5,
    rng: random.Random | None = None,
) -> list[int]:
    """H(1[a_hat = a*] * R_p) (paper: "Reward Model"): indices of the kept responses of one query.

    Only correct responses compete: top-k keeps the k highest R_p (ties: earlier sample first),
    'threshold' keeps R_p > alpha, 'random2' 2 random correct ones, 'all' every correct one."""
    candidates = [i for i, ok in enumerate(correct) if ok]
    if rule in ("top1", "top2", "top4"):
        return sorted(candidates, key=functools.partial(by_score, prm_scores))[: int(rule[3:])]
    if rule == "threshold":
        return [i for i in candidates if prm_scores[i] > threshold]
    if rule == "random2":
        return sorted((rng or random.Random(0)).sample(candidates, min(2, len(candidates))))
    if rule == "all":
        return candidates
    raise ValueError(f"--selection must be top1|top2|top4|threshold|random2|all, got {rule!r}")


def reward_pass_at_2(
    correct: list[list[bool]], prm_scores: list[list[float]], top: int = 2
) -> float:
    """Reward-Pass@2 (paper: "Dynamics of Self-Evolution"): share of queries where one of the PRM's
    top-2 responses (out of all samples, correct or not) is correct."""
    if not correct:
        return 0.0
    hits = 0
    for ok, scores in zip(correct, prm_scores):
        ranked = sorted(range(len(ok)), key=functools.partial(by_score, scores))[:top]
        hits += any(ok[i] for i in ranked)
    return hits / len(correct)


def weighted_vote(answers: list[str | None], weights: list[float]) -> str | None:
    """Pseudo-label of an unlabelled query (paper: "Prompt Variation"): the answer with the largest
    total PRM weight; unparsable answers (None) do not vote; ties: the first seen; None: no vote."""
    totals: dict[str, float] = {}
    for a, w in zip(answers, weights):
        if a is not None:
            totals[a] = totals.get(a, 0.0) + w
    # max keeps the first of equal keys (insertion order)
    return max(totals, key=totals.__getitem__) if totals else None


def choose_temperature(grid: list[float], scores: list[float]) -> float:
    """The T with the highest Reward-Pass@2 on the validation split (paper: "Dynamics of
    Self-Evolution", automatic temperature); ties go to the first in grid order."""
    if len(grid) != len(scores) or not grid:
        raise ValueError(
            f"need one score per temperature, got {len(grid)} temperatures and {len(scores)} scores"
        )
    best = max(scores)
    return grid[scores.index(best)]


def queries_for_iteration(
    num_queries: int, interval: float, iteration: int, seed: int
) -> list[int]:
    """Continuous self-evolving (paper: "Training Method", interval): iteration i (from 1) covers
    the next `interval` share of a shuffled pass over the queries; each pass is reshuffled."""
    if not 0 < interval <= 1:
        raise ValueError(f"--interval must be in (0, 1], got {interval}")
    per_iter = math.ceil(interval * num_queries)
    chunks = math.ceil(num_queries / per_iter)
    epoch, chunk = divmod(iteration - 1, chunks)
    order = list(range(num_queries))
    random.Random(f"{seed}-pass-{epoch}").shuffle(order)
    return order[chunk * per_iter : (chunk + 1) * per_iter]


def baseline_budget(num_iterations: int, steps: int, interval: float) -> tuple[int, int]:
    """(iterations, steps per iteration) of a baseline at interval 1.0 that samples as many queries
    and takes as many SFT steps as `num_iterations` iterations of `steps` at `interval`."""
    iterations = max(1, round(num_iterations * interval))
    return iterations, round(num_iterations * steps / iterations)


# --------------------------------------------------------------------------------------------------
# sampling, selection and evaluation (rows are sharded over ranks, results gathered)


def sample_and_score(run, rows, n, temperature, hint=False, score=True) -> list[dict]:
    """n responses per row sampled on every rank (its own share), their answers, correctness
    (None if unlabelled) and PRM R_p; one dict per row, for all rows, on every rank."""
    if not rows:  # every rank sees the same rows, so all return here together
        return []
    args = run.args
    mine, real = shard(rows, run.dist_info)
    groups = run.sampler.generate(
        [chat_prompt(r, args, hint) for r in mine],
        n=n,
        temperature=temperature,
        max_new_tokens=args.max_new_tokens,
        images=[image_of(r) for r in mine],
        batch_size=args.gen_batch_size,
    )
    texts = [[c.text for c in g] for g in groups][:real]
    mine = mine[:real]
    step_scores = run.prm.step_scores(mine, texts) if score else [[[]] * len(t) for t in texts]
    preds = [[extract_answer(t) for t in group] for group in texts]  # None: counted, not raised
    golds = [row.get("answer") for row in mine]
    # the rank grades its whole share in one batch; unlabelled rows (gold None) are not graded
    flat = [(p, g) for group, g in zip(preds, golds) if g is not None for p in group]
    verdicts = iter(grade([p for p, _ in flat], [g for _, g in flat]))
    local = [
        {
            "query_id": row["id"],
            "responses": group,
            "preds": p,
            "prm": [process_reward(s) for s in scores],
            "correct": None if g is None else [next(verdicts) for _ in p],
        }
        for row, group, p, scores, g in zip(mine, texts, preds, step_scores, golds)
    ]
    return [rec for part in all_gather_object(local) for rec in part]


def pseudo_label(rec: dict) -> None:
    """Prompt variation: the weighted vote becomes the label of an unlabelled query's responses."""
    votes = [None if p is None else strip_string(p).lower() for p in rec["preds"]]
    rec["label"] = weighted_vote(votes, rec["prm"])
    rec["correct"] = [rec["label"] is not None and v == rec["label"] for v in votes]


def collect(run, path, rows, labeled, n, temperature, iteration, hint=False, rule=None):
    """Sample, score and select for `rows`, one complete JSONL record per query (flushed); a rerun
    reads the finished records back and only samples the rest."""
    args, dist_info = run.args, run.dist_info
    done = {r["query_id"]: r for r in read_jsonl_tolerant(path)}
    todo = [r for r in rows if r["id"] not in done]
    chunk = args.gen_batch_size * dist_info.world_size
    for start in range(0, len(todo), chunk):
        part = todo[start : start + chunk]
        if not labeled:  # prompt variation: hide the label, vote one from the samples
            part = [{**r, "answer": None} for r in part]
        new = sample_and_score(run, part, n, temperature, hint)
        for row, rec in zip(part, new):
            if not labeled:
                pseudo_label(rec)
            rng = random.Random(f"{args.seed}-{iteration}-{row['id']}")
            rule_ = rule or args.selection
            rec["selected"] = select_responses(
                rec["correct"], rec["prm"], rule_, args.prm_threshold, rng
            )
            rec.update(labeled=labeled, temperature=temperature)
        if dist_info.is_main:
            write_jsonl(path, new, mode="a")
        done.update({r["query_id"]: r for r in new})
        barrier()
    return [done[r["id"]] for r in rows]


def evaluate(run, rows) -> dict:
    """Greedy accuracy; over K samples at T = 1: sampled accuracy, Pass@K, Reward-Pass@2, and the
    share of unparsable answers."""
    k = run.args.eval_k
    greedy = sample_and_score(run, rows, 1, 0.0, score=False)
    sampled = sample_and_score(run, rows, k, 1.0)
    return {
        "accuracy": sum(r["correct"][0] for r in greedy) / len(rows),
        "sampled_accuracy": sum(sum(r["correct"]) for r in sampled) / (len(rows) * k),
        f"pass@{k}": sum(pass_at_k(k, sum(r["correct"]), k) for r in sampled) / len(rows),
        "reward_pass@2": reward_pass_at_2(
            [r["correct"] for r in sampled], [r["prm"] for r in sampled]
        ),
        "unparsable": sum(p is None for r in sampled for p in r["preds"]) / (len(rows) * k),
    }


# --------------------------------------------------------------------------------------------------
# the run: warm-up, self-evolving iterations, the baseline, claims


def check_flags(args: Args):
    """Fail before anything loads, naming the flag."""
    if args.training not in TRAININGS:
        raise ValueError(f"--training {args.training!r} is not one of {TRAININGS}")
    if not 0 <= args.pseudo_label_share < 1:
        raise ValueError(f"--pseudo_label_share {args.pseudo_label_share} must be in [0, 1)")
    select_responses([], [], args.selection)  # raises on a bad --selection


def warm_up(run: Run, train: list[dict]) -> dict:
    """Warm-up (paper, setup): CoT sampled with the answer as a hint; the correct responses, asked
    WITHOUT the hint, are the first SFT set, trained with an optimizer of their own."""
    args = run.args
    rule = args.warmup_selection or ("all" if args.data else "threshold")
    path = run.out / "samples" / "warmup.jsonl"
    recs = collect(run, path, train, True, args.warmup_samples, 1.0, 0, hint=True, rule=rule)
    by_id = {r["id"]: r for r in train}
    kept = {(r["query_id"], r["responses"][i]) for r in recs for i in r["selected"]}
    examples = [(by_id[q], text) for q, text in sorted(kept)]  # de-duplicated
    optimizer, scheduler = new_optimizer(run, args.warmup_steps)
    run.sampler.sleep()  # vLLM frees its memory for the update
    loss = train_steps(run, optimizer, scheduler, examples, args.warmup_steps, args.seed)
    run.sync_sampler()
    return {"temperature": 1.0, "samples_kept": len(examples), "loss": loss}


def iteration_rows(run: Run, splits, interval: float, it: int) -> tuple[list, list]:
    """This iteration's queries: `interval` of the labelled pool (and unlabelled ones at the
    pseudo-label share)."""
    train, unlabeled, _, _ = splits
    args = run.args
    qids = queries_for_iteration(len(train), interval, it, args.seed)
    share = args.pseudo_label_share
    n_unl = min(len(unlabeled), round(len(qids) * share / (1 - share)))
    uids = []
    if n_unl:
        uids = queries_for_iteration(len(unlabeled), n_unl / len(unlabeled), it, args.seed + 1)
    return [train[i] for i in qids], [unlabeled[i] for i in uids]


def validation_scores(run: Run, val: list[dict], grid: list[float]) -> list[float]:
    """Reward-Pass@2 on the validation split at each temperature of the grid."""
    scores = []
    for t in grid:
        recs = sample_and_score(run, val, run.args.val_samples_per_query, t)
        scores.append(reward_pass_at_2([r["correct"] for r in recs], [r["prm"] for r in recs]))
    return scores


def self_evolve(run, training, interval, iterations, steps, splits, optim, start, temperature):
    """The self-evolving iterations (paper: "Training Method"): sample `interval` of the queries
    with the current model, keep the PRM's top-2 correct responses, SFT; `training` says what
    restarts each iteration (continuous: nothing; the optimizer `optim` lives through the run)."""
    args = run.args
    train, unlabeled, val, test = splits
    by_id = {r["id"]: r for r in train + unlabeled}
    grid = [float(t) for t in args.temperature_grid.split(",")]
    optimizer, scheduler = optim
    val_scores = None
    main = run.dist_info.is_main
    for it in tqdm(range(start, iterations + 1), desc="self-evolving", disable=not main):
        if training == "rest_em":  # ReST-EM: every iteration restarts from the warm-up model
            load_checkpoint(run.warm_ckpt, run.model, restore_rng=False)
            run.sync_sampler()
        if training != "continuous":  # iterative RFT / ReST-EM: fresh optimizer and schedule
            optimizer, scheduler = new_optimizer(run, steps)
        if args.auto_temperature and (it - 1) % args.temperature_every == 0:
            val_scores = validation_scores(run, val, grid)
            temperature = choose_temperature(grid, val_scores)
        rows, urows = iteration_rows(run, splits, interval, it)
        path = run.out / "samples" / f"iter{it:03d}.jsonl"
        n = args.samples_per_query
        recs = collect(run, path, rows, True, n, temperature, it)
        urecs = collect(run, path.with_suffix(".unlabeled.jsonl"), urows, False, n, temperature, it)
        examples = [
            (by_id[r["query_id"]], r["responses"][i]) for r in recs + urecs for i in r["selected"]
        ]
        run.sampler.sleep()  # vLLM frees its memory for the update
        loss = train_steps(run, optimizer, scheduler, examples, steps, args.seed + it)
        run.sync_sampler()
        sampled = [ok for r in recs for ok in r["correct"]]
        metrics = {
            "temperature": temperature,
            "samples_kept": len(examples),
            "loss": loss,
            "lr": scheduler.get_last_lr()[0],
            "train/correct_rate": sum(sampled) / max(1, len(sampled)),
            **evaluate(run, test),
        }
        if urecs:  # the shapes world knows the hidden answers: how good are the pseudo-labels?
            hits = grade(
                [r["label"] for r in urecs], [by_id[r["query_id"]]["answer"] for r in urecs]
            )
            metrics["pseudo_label_accuracy"] = sum(hits) / len(urecs)
        if val_scores is not None:
            metrics["val/reward_pass@2"] = max(val_scores)
        run.report(f"iter {it}" if training == args.training else f"{training} {it}", it, metrics)
        # an AdamW that has not stepped has no state to save (and torch segfaults initialising one
        # on FSDP2/gloo)
        extra = {"iteration": it, "temperature": temperature, "table": run.table}
        state = optimizer if optimizer.state else None
        save_checkpoint(run.out / "ckpt", run.model, state, scheduler, step=it, extra=extra)


def run_baseline(run: Run, splits, interval: float) -> list[dict]:
    """The paper's baseline (`--baseline`) from the same warm-up model, at interval 1.0 on the same
    budget: as many sampled queries and SFT steps as the continuous run; in <output_dir>/<name>."""
    args = run.args
    out = run.out / args.baseline
    (out / "samples").mkdir(parents=True, exist_ok=True)
    base = replace(run, out=out, table=[])
    state = load_checkpoint(out / "ckpt", base.model) if args.resume else None
    if state is not None:
        start, temperature = state[1]["iteration"] + 1, state[1]["temperature"]
        base.table = state[1]["table"]
    else:  # a fresh baseline starts from the warm-up weights and the run's seed
        load_checkpoint(run.warm_ckpt, base.model, restore_rng=False)
        seed_everything(args.seed)
        start, temperature = 1, args.temperature
    base.sync_sampler()
    base.logger = MetricsLogger(out, False, "mstar", asdict(args), resume_step=start)
    iterations, steps = baseline_budget(args.num_iterations, args.steps_per_iteration, interval)
    optim = new_optimizer(base, steps)
    self_evolve(base, args.baseline, 1.0, iterations, steps, splits, optim, start, temperature)
    base.logger.close()
    return base.table


def baseline_process(args: Args, interval: float) -> list[dict]:
    return run_baseline(setup(args), load_splits(args), interval)  # the same setup and seed


def start_baseline(run: Run, splits, interval: float) -> Callable[[], list[dict]]:
    """A call that gives the baseline's table. It needs only the warm-up checkpoint and the seed:
    with --baseline_process on one CPU process it starts now in a second process (the toy runs on
    one thread, the machine has two cores); otherwise it runs here when called, after the run."""
    args, dist_info = run.args, run.dist_info
    if args.baseline_process and dist_info.world_size == 1 and dist_info.device.type == "cpu":
        log = run.out / args.baseline / "log.txt"
        return in_second_process(log, baseline_process, args, interval)
    return functools.partial(run_baseline, run, splits, interval)


def demo_claims(table: list[dict], baseline: list[dict], name: str) -> list[dict]:
    """The paper's two claims on the toy, computed from this run's greedy test accuracy."""
    warm = next(r for r in table if r["stage"] == "warm-up")["accuracy"]
    final, before = table[-1]["accuracy"], baseline[-1]["accuracy"]
    metric = "greedy test accuracy"
    # a claim holds by more than 5 of 100 test queries: less is within one iteration's noise
    return [
        claim("continuous self-evolving improves on the warm-up", metric, warm, final, margin=0.05),
        claim(f"continuous beats {name}, same budget", metric, before, final, margin=0.05),
    ]


def main(args: Args):
    check_flags(args)
    run = setup(args)
    splits = load_splits(args)
    train, _, _, test = splits
    continuous = args.training == "continuous"
    interval = args.interval if args.interval is not None else (0.25 if continuous else 1.0)
    # continuous self-evolving: ONE optimizer and LR schedule for the whole run. Made before the
    # first forward: under FSDP2 an optimizer first created after a forward cannot be saved
    steps = args.steps_per_iteration
    total = args.num_iterations * steps if continuous else steps
    optim = new_optimizer(run, total)
    root_forward(run, train[0])
    start, temperature = resume_point(run, run.out / "ckpt", *optim)
    run.logger = MetricsLogger(
        run.out, args.track, "mstar", asdict(args), resume_step=start if start else None
    )
    if start == 0:
        run.report("base", -1, evaluate(run, test))
        run.report("warm-up", 0, {**warm_up(run, train), **evaluate(run, test)})
        extra = {"iteration": 0, "temperature": temperature, "table": run.table}
        save_checkpoint(run.warm_ckpt, run.model, step=0, extra=extra)
        start = 1
    finish_baseline = None
    if continuous and args.baseline != "none":
        finish_baseline = start_baseline(run, splits, interval)
    self_evolve(
        run, args.training, interval, args.num_iterations, steps, splits, optim, start, temperature
    )
    claims = []
    if finish_baseline:
        baseline = finish_baseline()
        claims = demo_claims(run.table, baseline, args.baseline)
        run.table += baseline
    if run.dist_info.is_main:
        print(format_table(run.table))
        shown = ["accuracy", f"pass@{args.eval_k}", "reward_pass@2", "temperature", "samples_kept"]
        png = run.logger.plot(shown, run.out / "curves.png", x="iteration")
        print(f"metrics: {run.logger.path} | curves: {png}")
        if claims:
            print(format_claims(claims))
        write_summary(run.out, claims, table=run.table)
    run.logger.close()
    cleanup_distributed()
    return run.table


if __name__ == "__main__":
    main(parse_config(Args, PAPER, derived))
