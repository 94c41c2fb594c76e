"""Genius: foresight re-sampling + Advantage-Calibrated Optimization (docs/genius_aco.md).

Paper: "Genius: A Generalizable and Purely Unsupervised Self-Training Framework For Advanced
Reasoning", Xu et al., arXiv 2504.08672 (ACL 2025). Released code: github.com/xufangzhi/Genius.

Idea: a model improves its reasoning from queries alone (no answers, no reward model). It writes
the answer one step (= one line) at a time; at each of K timestamps each of M beams proposes N
candidate steps, each candidate is rolled out once to the end ("foresight"), and its value f is
the mean token log-prob of that rollout. Two beams are re-sampled from softmax(f / tau); the best
candidate and a re-sampled other one (whole trajectories) become a preference pair. ACO is DPO
with the rejected term scaled by w = min(1, exp(-(A_l - A_w) / alpha)), A = f minus the value of
the candidate's own beam: if the "rejected" step improved its beam more than the winner did, the
label is probably noise and the rejected side is pushed down less.

Departures (from the paper and the released code):
  1. w uses the paper's min(1, .); `--clamp code` gives the released max(1, .)
     (aco-training/open_instruct/aco_utils.py and the README use max).
  2. The rejected step is re-sampled from F without the winner (paper); `--rejected uniform` is
     the released rule, `--rejected lowest --beam_selection greedy` the "w/o sampling" ablation.
  3. A candidate step that ends the response has nothing to look ahead at: its f is the mean
     log-prob of its own tokens and its beam stops growing (the released
     foresight_sampling_with_vllm.py never uses `traj_complete` and keeps stepping).
  4. Pairs are written by the sampler, one per timestamp (the released pair builder,
     construct_foresight_preference_data.py, skips every record: its lists differ in length).
  5. Own FSDP2 DPO/ACO loop instead of open-instruct + ZeRO-3; the frozen reference's log-probs
     are computed once with the initial model before training (no second model in memory).
  6. The sample stage is data-parallel: every rank holds the full model (HF generate or vLLM).
  7. `--data` queries: the first --num_queries of a permutation seeded by --seed (the paper: 25K
     random queries; the permutation keeps query ids stable when --num_queries grows).
  8. `--step_value step` is the paper's "w/o foresight" ablation (f from the step's own tokens;
     pairs hold no rollout).
  9. Toy (common/running_sums.py): a tiny Qwen2 warm-started on running-sum CoT whose demonstrator,
     when adding a 5, guesses more often than not; toy sizes and lr (help strings say 'toy');
     held-out accuracy before/after on toy queries with answers the search never sees.
 10. Ours, not the paper's: gradient clipping at 1.0, held-out pairs (--eval_fraction) for the
     eval metrics, and accuracy before/after on rows with answers (--eval_data or the toy's).

Commands (naming --model selects the paper preset, PAPER below; flags you pass win;
--print_config shows the effective configuration without loading anything):
  CPU toy:  python genius_aco.py
  1 GPU:    python genius_aco.py --stage sample --sampler vllm \
                --model meta-llama/Llama-3.1-8B-Instruct \
                --data xufangzhi/Magpie_reasoning_150K_train
            python genius_aco.py --stage train --model meta-llama/Llama-3.1-8B-Instruct
  8 GPUs:   torchrun --nproc_per_node=8 genius_aco.py --stage sample --sampler vllm \
                --model meta-llama/Llama-3.1-8B-Instruct \
                --data xufangzhi/Magpie_reasoning_150K_train
            torchrun --nproc_per_node=8 genius_aco.py --stage train \
                --model meta-llama/Llama-3.1-8B-Instruct --pairs_file runs/genius_aco/pairs.jsonl
"""

from __future__ import annotations

import json
import math
import random
from dataclasses import asdict, dataclass
from functools import partial
from pathlib import Path
from typing import Literal

import torch
import torch.nn.functional as F
from tqdm import tqdm

from common.config import arg, parse_config, per_rank
from common.evaluation import EvalArgs
from common.models import load_model, load_tokenizer
from common.preference_pairs import (
    append_found,
    base_model_path,
    batch_logps,
    chat_prompt,
    encode_pairs,
    eval_only,
    heldout_accuracy,
    load_pairs,
    load_policy,
    load_queries,
    open_pairs_file,
    reference_logps,
    report,
    sharded_logps,
    split_pairs,
    weight_spread,
)
from common.sampling import VLLMArgs, generate_local, make_sampler
from common.train import (
    MetricsLogger,
    all_gather_object,
    barrier,
    cleanup_distributed,
    clip_grad_norm,
    init_distributed,
    load_checkpoint,
    make_optimizer,
    make_scheduler,
    print0,
    save_checkpoint,
    seed_everything,
)

STOP = ["\n", "<end_of_reasoning>"]  # a step is one line (released foresight_sampling_with_vllm.py)


@dataclass
class Args(VLLMArgs):
    # generic
    seed: int = arg(42, "random seed (the released code seeds its rejected draw with 42)")
    output_dir: str = arg("runs/genius_aco", "pairs, checkpoint, metrics.jsonl, curves.png")
    model: str = arg("", "hub id or folder (the paper trains Llama-3.1-8B-Instruct); '' = toy")
    data: str = arg("", "queries (the paper's: xufangzhi/Magpie_reasoning_150K_train); '' = toy")
    query_field: str = arg("instruction", "field of --data holding the query")
    eval_data: str = arg("", "rows with the query field and 'answer' for accuracy before/after")
    num_eval_queries: int = arg(64, "held-out toy queries for the accuracy before/after")
    num_queries: int = arg(128, "queries to search; toy 128; paper: 25000 (32K for OpenHermes)")
    stage: Literal["sample", "train", "all"] = arg("all", "sample pairs, train on them, or both")
    pairs_file: str = arg("", "pairs JSONL (sample writes, train reads); '' = <output_dir>/")
    resume: bool = arg(False, "sample: skip queries already in the pairs file; train: checkpoint")
    sampler: Literal["hf", "vllm"] = arg("hf", "sampler of the sample stage")
    vllm_gpu_memory_utilization: float = arg(0.9, "vLLM's GPU share (sampling runs alone)")
    track: bool = arg(False, "log to Weights & Biases")
    # foresight re-sampling (paper, "Foresight Re-Sampling"; foresight_sampling_with_vllm.py)
    num_beams: int = arg(2, "M beams (paper: 2)")
    num_candidates: int = arg(4, "N candidate steps per beam (paper: 4)")
    num_steps: int = arg(4, "K timestamps, one pair each (paper: 4)")
    step_temperature: float = arg(0.6, "temperature of the candidate steps (paper: 0.6)")
    foresight_temperature: float = arg(1.0, "temperature of rollouts and completions (vLLM's 1.0)")
    tau: float = arg(0.1, "temperature of the re-sampling softmax(f / tau) (paper: 0.1)")
    prefill: str = arg("The reasoning steps are:\n\n", "assistant pre-fill (released code)")
    max_step_tokens: int = arg(16, "max tokens of a step; toy 16; paper: 1024 (released code)")
    max_foresight_tokens: int = arg(64, "max tokens of a rollout; toy 64; paper: 1024 (code)")
    max_completion_tokens: int = arg(64, "max tokens completing a beam; paper: 3000 (code)")
    step_value: Literal["foresight", "step"] = arg(
        "foresight", "f of a rollout after the step (paper) | of the step ('w/o foresight')"
    )
    beam_selection: Literal["sample", "greedy"] = arg(
        "sample", "beams re-sampled from F (paper) | the top-M f ('w/o sampling' ablation)"
    )
    rejected: Literal["paper", "uniform", "lowest"] = arg(
        "paper", "from F without the winner (paper) | uniform (released code) | the lowest f"
    )
    queries_per_chunk: int = arg(16, "queries searched together per rank (batched generate)")
    # ACO (paper: "Advantage-Calibrated Optimization"; released aco_utils.py)
    loss: Literal["aco", "dpo"] = arg("aco", "aco or dpo (the paper's main loss ablation)")
    beta: float = arg(0.1, "beta (paper: 0.1, the released argparse default)")
    alpha: float = arg(1.0, "alpha of w (paper: 1)")
    clamp: Literal["paper", "code"] = arg("paper", "w = min(1, .) (paper) or max(1, .) (code)")
    # training (paper: experimental setup, open-instruct DPO)
    lr: float = arg(1e-4, "learning rate, linear schedule; toy 1e-4; paper: 5e-7")
    batch_size: int = arg(16, "pairs per optimizer step, all ranks; toy 16; paper: 128")
    micro_batch_size: int = arg(4, "pairs per forward per rank; toy 4; paper preset: 2")
    epochs: int = arg(2, "passes over the pairs; toy 2; paper: 1")
    warmup_ratio: float = arg(0.1, "linear warmup share (paper: 0.1)")
    weight_decay: float = arg(0.0, "AdamW weight decay (paper: 0)")
    max_length: int = arg(1300, "max prompt + response tokens (paper: 1300)")
    max_grad_norm: float = arg(1.0, "gradient clipping (not stated in the paper)")
    gradient_checkpointing: bool = arg(False, "recompute layers in backward; paper preset: True")
    eval_fraction: float = arg(0.25, "share of queries held out; toy 0.25; paper preset: 0.01")
    eval_every: int = arg(5, "optimizer steps between held-out evaluations; paper preset: 50")
    save_every: int = arg(50, "optimizer steps between checkpoints")
    toy_warmstart_steps: int = arg(800, "SFT steps building the cached toy base (crisp at T = 1)")


# The paper's values (experimental setup; sampling sizes from the released code), used with --preset
# paper (the default once --model is named); the defaults above are the CPU toy's. A flag wins.
PAPER = dict(
    num_queries=25000,  # 25K random Magpie queries (32K for OpenHermes)
    max_step_tokens=1024,  # released sampling code: max_tokens of a step
    max_foresight_tokens=1024,  # released sampling code: max_tokens of a foresight rollout
    max_completion_tokens=3000,  # released sampling code: completing the beams
    lr=5e-7,  # experimental setup (open-instruct DPO, 8xA100)
    batch_size=128,  # experimental setup
    epochs=1,  # experimental setup
    micro_batch_size=2,  # not stated: pairs per forward for an 8B model at 1300 tokens
    eval_fraction=0.01,  # not in the paper: 1% of the queries' pairs held out
    eval_every=50,  # not in the paper
    gradient_checkpointing=True,  # not stated in the paper: bounds activation memory
)


def derived(args, world_size: int) -> dict:
    """Per-rank sizes of the train stage implied by the global batch; raises naming the flag."""
    if args.sampler == "vllm" and args.stage == "all":
        raise ValueError(
            "--sampler vllm: run --stage sample and --stage train as two commands (vLLM holds its "
            "GPU memory until the process exits)"
        )
    pairs_per_rank = per_rank(args.batch_size, world_size, "--batch_size")
    return dict(
        pairs_per_rank=pairs_per_rank,
        micro_batches_per_step=-(-pairs_per_rank // args.micro_batch_size),
    )


# ------------------------------------------------------------------------------------------------
# ALGO LOGIC: the paper's equations as small pure functions


def foresight_distribution(f: torch.Tensor, tau: float = 0.1) -> torch.Tensor:
    """Foresight re-sampling: F = softmax(f / tau) over the candidates of one timestamp
    (float64: tau = 0.1 turns small gaps in f into large ones, float32 underflows fast)."""
    return torch.softmax(f.double() / tau, dim=-1)


def sample_distinct(probs: torch.Tensor, m: int, generator=None) -> torch.Tensor:
    """m distinct candidate indices drawn from probs (no replacement); works on (..., C)."""
    return torch.multinomial(probs, m, replacement=False, generator=generator)


def step_value(step_logprobs: list[float], foresight_logprobs: list[float] | None = None) -> float:
    """Foresight step value: f = mean token log-prob of the rollout after the step (its tokens
    only). Without a rollout (a step that ended the response, or `--step_value step`, the paper's
    'w/o foresight' ablation) f is the mean log-prob of the step's own tokens: its uncertainty."""
    lps = foresight_logprobs if foresight_logprobs else step_logprobs
    return sum(lps) / max(1, len(lps))


def step_advantages(f: torch.Tensor, beam_value: torch.Tensor) -> torch.Tensor:
    """A = f - Q of the candidate's own beam (Q = 0 at the first timestamp, so A = f there)."""
    return f - beam_value


def choose_pair(
    f: torch.Tensor, probs: torch.Tensor, rule: str = "paper", generator=None
) -> tuple[int, int]:
    """Pair of a timestamp: chosen = highest f; rejected re-sampled from F without the winner
    (paper), uniform over the others (released code) or the lowest f ('w/o sampling' ablation)."""
    chosen = int(torch.argmax(f))
    if rule == "lowest":
        return chosen, int(torch.argmin(f))
    others = probs.double().clone()
    others[chosen] = 0.0
    if rule == "uniform" or others.sum() <= 0:  # (all but the winner underflowed: the limit)
        others = torch.ones_like(others)
        others[chosen] = 0.0
    elif rule != "paper":
        raise ValueError(f"--rejected must be paper, uniform or lowest, got {rule!r}")
    return chosen, int(torch.multinomial(others / others.sum(), 1, generator=generator))


def aco_weight(
    adv_chosen: torch.Tensor, adv_rejected: torch.Tensor, alpha: float = 1.0, clamp: str = "paper"
) -> torch.Tensor:
    """ACO's w = min(1, exp(-(A_l - A_w) / alpha)) (paper) or max(1, .) (released aco_utils.py);
    no gradient flows through w."""
    raw = torch.exp(-(adv_rejected - adv_chosen).detach() / alpha)
    if clamp == "paper":
        return raw.clamp(max=1.0)
    if clamp == "code":
        return raw.clamp(min=1.0)
    raise ValueError(f"--clamp must be 'paper' or 'code', got {clamp!r}")


def aco_loss(pol_c, pol_r, ref_c, ref_r, adv_c, adv_r, beta=0.1, alpha=1.0, clamp="paper"):
    """ACO loss per pair: -log sigmoid(beta * Delta_w - beta * w * Delta_l), Delta = log pi_theta -
    log pi_ref summed over response tokens (c = chosen = w, r = rejected = l; all (B,)).
    A_l <= A_w (paper) or alpha -> inf gives w = 1, i.e. DPO."""
    w = aco_weight(adv_c, adv_r, alpha, clamp)  # (B,) detached
    return -F.logsigmoid(beta * (pol_c - ref_c) - beta * w * (pol_r - ref_r))


def dpo_loss(pol_c, pol_r, ref_c, ref_r, beta=0.1):
    """The DPO baseline of the paper's loss ablation: -log sigmoid(beta * (Delta_w - Delta_l))."""
    return -F.logsigmoid(beta * ((pol_c - ref_c) - (pol_r - ref_r)))


# ------------------------------------------------------------------------------------------------
# foresight re-sampling over a chunk of queries, batched through the Sampler


@dataclass
class Beam:
    steps: list  # chosen step texts so far
    value: float = 0.0  # Q: the f of the step that last extended it
    done: bool = False  # its last step ended the response


def prefix(prefill: str, steps: list[str]) -> str:
    """The assistant text so far: pre-fill, then every chosen step plus its newline."""
    return prefill + "".join(s + "\n" for s in steps)


def trajectory(prefill: str, cand: dict) -> str:
    """A pair side: the candidate's beam, its step and the step's foresight rollout."""
    look_ahead = "" if cand["ended"] else "\n" + cand["foresight"]
    return prefix(prefill, cand["beam"].steps) + cand["step"] + look_ahead


def propose_candidates(sampler, chat_prompts, beams, args, counts) -> list[dict]:
    """N candidate steps for every live beam, each valued by f (one batched call for the steps,
    one for all their foresight rollouts)."""
    live = [(qi, b) for qi, bs in enumerate(beams) for b in bs if not b.done]
    step_outs = generate_local(
        sampler,
        [chat_prompts[qi] + prefix(args.prefill, b.steps) for qi, b in live],
        n=args.num_candidates,
        temperature=args.step_temperature,
        max_new_tokens=args.max_step_tokens,
        stop=STOP,
    )
    cands = []
    for (qi, beam), outs in zip(live, step_outs):
        for c in outs:
            ended = c.finish_reason == "stop" and not any(c.text.endswith(s) for s in STOP)
            text = next((c.text[: -len(s)] for s in STOP if c.text.endswith(s)), c.text)
            counts["truncated_steps"] += c.finish_reason == "length"
            cands.append(dict(qi=qi, beam=beam, step=text, ended=ended, step_logprobs=c.logprobs))
    looking = [c for c in cands if not c["ended"]] if args.step_value == "foresight" else []
    heads = [
        chat_prompts[c["qi"]] + prefix(args.prefill, c["beam"].steps + [c["step"]]) for c in looking
    ]
    rollouts = generate_local(
        sampler,
        heads,
        n=1,
        temperature=args.foresight_temperature,
        max_new_tokens=args.max_foresight_tokens,
    )
    for c, outs in zip(looking, rollouts):
        c["foresight"] = outs[0].text
        c["f"] = step_value(c["step_logprobs"], outs[0].logprobs)
    # no look-ahead (the step ended the response, departure 3, or --step_value step): f from the
    # step's own tokens
    for c in cands:
        if "f" not in c:
            c["foresight"] = ""
            c["f"] = step_value(c["step_logprobs"])
    counts["candidates"] += len(cands)
    counts["ended_response"] += sum(c["ended"] for c in cands)
    return cands


def select(mine: list[dict], beams: list[Beam], args, generator) -> tuple[dict, list[Beam]]:
    """One query's timestamp: the pair (best f vs a re-sampled other) and the re-sampled beams."""
    f = torch.tensor([c["f"] for c in mine], dtype=torch.float64)  # (C,)
    q = torch.tensor([c["beam"].value for c in mine], dtype=torch.float64)  # (C,)
    adv = step_advantages(f, q)  # (C,)
    probs = foresight_distribution(f, args.tau)  # (C,)
    win, lose = choose_pair(f, probs, args.rejected, generator)
    pair = dict(
        chosen=trajectory(args.prefill, mine[win]),
        rejected=trajectory(args.prefill, mine[lose]),
        chosen_f=float(f[win]),
        rejected_f=float(f[lose]),
        chosen_advantage=float(adv[win]),
        rejected_advantage=float(adv[lose]),
        candidate_f=f.tolist(),
    )
    done = [b for b in beams if b.done]
    m = min(args.num_beams - len(done), len(mine))
    if args.beam_selection == "greedy":
        keep = torch.topk(f, m).indices
    else:
        keep = sample_distinct(probs, m, generator)
    grown = [
        Beam(mine[i]["beam"].steps + [mine[i]["step"]], float(f[i]), mine[i]["ended"])
        for i in keep.tolist()
    ]
    return pair, done + grown


def foresight_search(
    sampler, chat_prompts: list[str], query_ids: list[str], queries: list[str], args, generator
) -> tuple[list[list[dict]], list[dict], dict]:
    """Foresight re-sampling for several queries at once. Returns the pairs per query (one per
    timestamp), the completed beams per query, and counts of odd outputs."""
    beams = [[Beam([]) for _ in range(args.num_beams)] for _ in chat_prompts]
    pairs = [[] for _ in chat_prompts]
    counts = dict(candidates=0, ended_response=0, truncated_steps=0, queries_short_of_K_pairs=0)
    for t in range(args.num_steps):
        cands = propose_candidates(sampler, chat_prompts, beams, args, counts)
        for qi in range(len(chat_prompts)):
            mine = [c for c in cands if c["qi"] == qi]
            if len(mine) < 2:
                continue
            pair, beams[qi] = select(mine, beams[qi], args, generator)
            ids = dict(id=f"{query_ids[qi]}-t{t}", query_id=query_ids[qi], query=queries[qi])
            pairs[qi].append({**ids, "timestamp": t, **pair})
    # after K steps each live beam is completed; this part makes no pairs
    live = [(qi, b) for qi, bs in enumerate(beams) for b in bs if not b.done]
    finals = generate_local(
        sampler,
        [chat_prompts[qi] + prefix(args.prefill, b.steps) for qi, b in live],
        n=1,
        temperature=args.foresight_temperature,
        max_new_tokens=args.max_completion_tokens,
    )
    completed = [dict(query_id=qid, query=q, responses=[]) for qid, q in zip(query_ids, queries)]
    for (qi, b), outs in zip(live, finals):
        completed[qi]["responses"].append(prefix(args.prefill, b.steps) + outs[0].text)
    for qi, bs in enumerate(beams):
        completed[qi]["responses"] += [args.prefill + "\n".join(b.steps) for b in bs if b.done]
        counts["queries_short_of_K_pairs"] += len(pairs[qi]) < args.num_steps
    return pairs, completed, counts


# ------------------------------------------------------------------------------------------------
# the sample stage, the loss of a micro-batch, its metrics (the rest of the plumbing: queries, the
# pairs file, log-probs, held-out accuracy, the report: common/preference_pairs.py)


def sample_stage(args, dist_info, model_path, tok, query_rows, pairs_path):
    """Foresight re-sampling over all queries: each rank searches its share, rank 0 appends the
    complete records per chunk (so a killed run loses at most one chunk)."""
    done = open_pairs_file(pairs_path, args.resume, dist_info.is_main)  # query ids to skip
    todo = [(str(i), r[args.query_field]) for i, r in enumerate(query_rows) if str(i) not in done]
    print0(f"sample stage: {len(todo)} queries to search ({len(done)} already in {pairs_path})")
    mine = todo[dist_info.rank :: dist_info.world_size]
    per_rank_todo = math.ceil(len(todo) / dist_info.world_size)
    n_chunks = max(1, math.ceil(per_rank_todo / args.queries_per_chunk))
    if args.sampler == "vllm":
        sampler = make_sampler("vllm", model_path=model_path, args=args)  # one engine per rank
    else:
        sampler = make_sampler("hf", load_model(model_path, device=dist_info.device), tok)
    totals = {}
    for chunk in tqdm(range(n_chunks), desc="foresight sampling", disable=not dist_info.is_main):
        part = mine[chunk * args.queries_per_chunk : (chunk + 1) * args.queries_per_chunk]
        chunk_seed = args.seed + 1000 * chunk + dist_info.rank
        seed_everything(chunk_seed)
        generator = torch.Generator().manual_seed(chunk_seed)
        prompts = [chat_prompt(q, tok) for _, q in part]
        ids, queries = [i for i, _ in part], [q for _, q in part]
        found = foresight_search(sampler, prompts, ids, queries, args, generator)
        gathered = all_gather_object(found)  # every rank joins; rank 0 writes
        if dist_info.is_main:
            totals = append_found(pairs_path, gathered, totals)
    del sampler
    print0("sample stage counts: " + json.dumps(totals))
    barrier()


def pair_losses(args, pol_c, pol_r, ref, adv) -> tuple[torch.Tensor, torch.Tensor]:
    """The selected loss per pair (b,) and its detached stats (b, 5): loss, log-ratio chosen,
    log-ratio rejected, margin (the loss's logit), w. pol_c, pol_r: (b,); ref, adv: (b, 2)."""
    ref_c, ref_r = ref[:, 0], ref[:, 1]
    if args.loss == "aco":
        w = aco_weight(adv[:, 0], adv[:, 1], args.alpha, args.clamp)  # (b,)
        losses = aco_loss(
            pol_c, pol_r, ref_c, ref_r, adv[:, 0], adv[:, 1], args.beta, args.alpha, args.clamp
        )
    else:
        w = torch.ones_like(adv[:, 0])
        losses = dpo_loss(pol_c, pol_r, ref_c, ref_r, args.beta)
    margin = args.beta * ((pol_c - ref_c) - w * (pol_r - ref_r))
    cols = (losses, pol_c - ref_c, pol_r - ref_r, margin, w)
    return losses, torch.stack([c.detach().float().cpu() for c in cols], dim=1)


def summarize(stats: torch.Tensor, prefix: str) -> dict:
    """(n, 5) stats rows of pair_losses -> the logged metrics."""
    loss, lc, lr_, margin, w = stats.double().unbind(1)  # (n,) each
    p10, p50, p90 = torch.quantile(w, torch.tensor([0.1, 0.5, 0.9], dtype=torch.float64))
    values = dict(loss=loss, logratio_chosen=lc, logratio_rejected=lr_, margin=margin)
    values.update(reward_accuracy=(margin > 0).double(), w_mean=w, w_p10=p10, w_p50=p50)
    values.update(w_p90=p90, w_frac_below_1=(w < 1).double(), w_frac_above_1=(w > 1).double())
    return {f"{prefix}/{k}": v.mean().item() for k, v in values.items()}


def evaluate_pairs(model, tok, encoded, eval_idx, ref, adv, args, dist_info) -> dict:
    """ACO metrics on the held-out pairs (queries never trained on)."""
    if not eval_idx:
        return {}
    pol = sharded_logps(model, tok, encoded, eval_idx, args, dist_info)
    pol_c, pol_r = (torch.tensor([pol[i][k] for i in eval_idx]) for k in (0, 1))  # (E,), (E,)
    return summarize(pair_losses(args, pol_c, pol_r, ref[eval_idx], adv[eval_idx])[1], "eval")


def rank_batch(train_idx: list[int], args, step: int, steps_per_epoch: int, dist_info):
    """(epoch, this rank's pair indices of the global batch): the order is a function of the seed
    and the epoch, the same on every rank and after a resume."""
    epoch, k = divmod(step, steps_per_epoch)
    order = train_idx[:]
    random.Random(args.seed + epoch).shuffle(order)
    batch = order[k * args.batch_size : (k + 1) * args.batch_size]
    return epoch, batch[dist_info.rank :: dist_info.world_size]


def main(args: Args):
    dist_info = init_distributed()
    if not torch.cuda.is_available():  # tiny-model ops are too small to split, and threads
        torch.set_num_threads(1)  # spinning on shared cores cost 10x
    seed_everything(args.seed)
    out = Path(args.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    pairs_path = Path(args.pairs_file or out / "pairs.jsonl")
    model_path = base_model_path(args, dist_info)
    tok = load_tokenizer(model_path)
    query_rows, eval_rows = load_queries(args)
    # 1. foresight re-sampling: one preference pair per query and timestamp, no answers used
    if args.stage in ("sample", "all"):
        sample_stage(args, dist_info, model_path, tok, query_rows, pairs_path)
    if args.stage == "sample":
        cleanup_distributed()
        return
    if not pairs_path.exists():
        raise FileNotFoundError(f"--pairs_file {pairs_path} does not exist: run --stage sample")
    # 2. the pairs, their step advantages, and the frozen reference (the initial model)
    pairs = load_pairs(pairs_path)
    train_idx, eval_idx = split_pairs(pairs, args, dist_info.world_size, pairs_path)
    encoded = encode_pairs(tok, pairs, args.max_length)
    adv = torch.tensor([[p["chosen_advantage"], p["rejected_advantage"]] for p in pairs])  # (P, 2)
    model = load_policy(model_path, args, dist_info)  # fp32 masters, bf16 compute on CUDA, FSDP2
    steps_per_epoch = len(train_idx) // args.batch_size
    total_steps = steps_per_epoch * args.epochs
    optimizer = make_optimizer(model, args.lr, weight_decay=args.weight_decay)
    warmup = int(args.warmup_ratio * total_steps)
    scheduler = make_scheduler(optimizer, "linear", warmup, total_steps)
    ckpt_dir = out / "checkpoint"
    resumed = load_checkpoint(ckpt_dir, model, optimizer, scheduler) if args.resume else None
    start_step, extra = resumed if resumed else (0, {})
    ref = reference_logps(model, tok, encoded, args, dist_info, bool(resumed))  # (P, 2)
    resume_step = start_step if resumed else None
    logger = MetricsLogger(out, args.track, "genius_aco", asdict(args), resume_step=resume_step)
    evaluate = partial(evaluate_pairs, model, tok, encoded, eval_idx, ref, adv, args, dist_info)
    acc_before = extra.get("acc_before") or (
        heldout_accuracy(model, tok, eval_rows, args, dist_info) if eval_rows else {}
    )
    if start_step == 0 and eval_idx:
        logger.log(evaluate(), 0)
    # 3. ACO (or DPO) updates
    model.train()
    bar = tqdm(range(start_step, total_steps), desc="ACO training", disable=not dist_info.is_main)
    for step in bar:
        epoch, mine = rank_batch(train_idx, args, step, steps_per_epoch, dist_info)
        stats = []
        for s in range(0, len(mine), args.micro_batch_size):
            idx = mine[s : s + args.micro_batch_size]
            pol_c, pol_r = batch_logps(model, tok, encoded, idx, dist_info.device)  # (b,), (b,)
            ref_b, adv_b = ref[idx].to(pol_c.device), adv[idx].to(pol_c.device)  # (b, 2), (b, 2)
            losses, pair_stats = pair_losses(args, pol_c, pol_r, ref_b, adv_b)  # (b,), (b, 5)
            loss = losses.sum() / len(mine)  # mean over the rank's pairs; FSDP2 averages ranks
            loss.backward()
            stats.append(pair_stats)
        grad_norm = clip_grad_norm(model, args.max_grad_norm)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad()
        # 4. metrics of the step, held-out evaluation, checkpoint
        rows = torch.cat([s for part in all_gather_object(stats) for s in part])  # (batch, 5)
        metrics = summarize(rows, "train")
        metrics.update({"train/grad_norm": grad_norm, "train/lr": scheduler.get_last_lr()[0]})
        logger.log({**metrics, "epoch": epoch}, step + 1)
        last = step + 1 == total_steps
        if eval_idx and ((step + 1) % args.eval_every == 0 or last):
            logger.log(evaluate(), step + 1)
        if (step + 1) % args.save_every == 0 or last:
            saved = {"acc_before": acc_before}
            save_checkpoint(ckpt_dir, model, optimizer, scheduler, step + 1, extra=saved)
    acc_after = heldout_accuracy(model, tok, eval_rows, args, dist_info) if eval_rows else {}
    w = aco_weight(adv[train_idx, 0], adv[train_idx, 1], args.alpha, args.clamp)  # (P_train,)
    w_train = weight_spread(w)
    report(args, logger, w_train, (len(eval_idx), len(train_idx)), acc_before, acc_after, dist_info)
    logger.close()
    cleanup_distributed()


if __name__ == "__main__":
    cli_args, suite_args = parse_config(Args, PAPER, derived, extra=(EvalArgs,))
    if suite_args.eval_only:
        eval_only(cli_args, suite_args)
    else:
        main(cli_args)
