"""Zero RL: GRPO from a base model with a correctness-only reward, plus optional length-aware rewards.

Paper: "SimpleRL-Zoo: Investigating and Taming Zero Reinforcement Learning for Open Base Models in the
Wild" (Zeng et al., arXiv 2503.18892); length rewards from the surveys arXiv 2503.21614 / 2503.16419.

Idea: RL straight from a base model (no SFT). Sample G=8 answers per question, reward 1 for a correct
final answer and 0 otherwise (format not enforced), normalise rewards within each group (GRPO), update
with PPO-clip averaged over all valid tokens of the mini-batch plus a tiny k3 KL to the frozen base.
RL sharpens what the base can already do; the paper tracks accuracy, response length, clip ratio,
pass@k and the share of responses showing reasoning behaviours.

Departures (from the paper and its released verl code):
- CPU default = a toy: a 2-layer tiny Qwen2 "base" (a short, cached SFT on noisy demonstrations of
  sorting four digits, never on the held-out prompts) answers through the paper's qwen-boxed template
  and is graded by the paper's grader. Scale-dependent defaults (batch, lr, lengths, steps) are the
  toy's; the help strings give the paper's values.
- Old log-probs come from the sampler (HF generate records the model's own) on CPU, where they equal
  the trainer's forward; on CUDA (bf16) and with `--sampler vllm` the trainer recomputes them (verl).
- The loss forward computes each prompt once for its G responses (shared KV cache): exact, and the main
  reason a step is several times faster than TRL's on the toy.
- Reasoning behaviours: a keyword detector is the stand-in labeller (the paper rejects keyword counts,
  uses GPT-4o); `--judge_model` labels with any local/hub model through the Sampler.
- FSDP2: every rank samples its own prompts; all rewards are gathered before the group normalisation.
  Weights go to vLLM per tensor (DTensor.full_tensor) so every rank's colocated engine gets them.
  Precision: common.train's policy (fp32 master weights and AdamW state; on CUDA bf16 compute through
  FSDP2 mixed precision, one GPU included; the reference model held in bf16).
- Loss aggregation: the default `--loss_type dapo` is the token mean over the whole mini-batch that
  the paper describes (DAPO's rule); the released verl code averages token means per micro-batch,
  available as `--loss_type verl` (the two agree when a mini-batch is one micro-batch on one rank).
- Length rewards (not in SimpleRL-Zoo; `--length_reward`, off by default) follow their own papers,
  see total_rewards. Kimi's weight and warm-up length are unpublished (`--length_reward_coef` 1,
  `--length_reward_warmup_steps` 0). The cosine paper's repetition penalty is a per-token reward
  under PPO; GRPO has one reward per response, so the per-token penalties are summed.
- Countdown: TinyZero's qwen-instruct prompt (ChatML text with its "<think>" prefill) is the
  default; TinyZero's base prompt is `--prompt_template countdown-base`.

Commands (naming --model selects the paper preset, PAPER below; flags you pass win; --print_config shows
the effective configuration and per-rank sizes without loading anything):
    python zero_rl.py                                  # CPU toy, about 1-2 minutes on 2 cores
    python zero_rl.py --model Qwen/Qwen2.5-0.5B --data simplerl/simplelr_qwen_level1to4/train.parquet \\
        --prompts_per_step 64 --mini_batch_prompts 16 --micro_batch_size 8 --max_new_tokens 2048   # 1 GPU
    torchrun --nproc_per_node=8 zero_rl.py --model Qwen/Qwen2.5-0.5B \\
        --data simplerl/simplelr_qwen_level3to5/train.parquet --sampler vllm --eval_every 10 --save_every 10
    python zero_rl.py --model Qwen/Qwen2.5-0.5B --print_config --world_size 8   # what the 8-GPU run uses
(simplerl/ = `huggingface-cli download hkust-nlp/SimpleRL-Zoo-Data --repo-type dataset --local-dir simplerl`)
"""

import json
import random
import re
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from tqdm import tqdm

from common import rewards as R
from common.benchmarks import load_math_rows
from common.claims import claim, format_claims, write_summary
from common.config import parse_config, per_rank
from common.data import load_rows, make_countdown_rows
from common.evaluation import EvalArgs, evaluate_model
from common.models import load_model, load_tokenizer, make_tiny_lm
from common.sampling import (
    HFSampler,
    VLLMArgs,
    make_sampler,
    old_logprobs_need_recompute,
    render_prompt,
)
from common.toys import toy_model
from common.train import (
    MetricsLogger,
    all_gather_object,
    barrier,
    cleanup_distributed,
    clip_grad_norm,
    export_pretrained,
    format_table,
    forward_hidden,
    gradient_checkpointing_on,
    init_distributed,
    lm_head_weight,
    load_checkpoint,
    logprobs_from_hidden,
    make_optimizer,
    make_scheduler,
    pad_batch,
    plain_lm_head,
    precision_policy,
    print0,
    save_checkpoint,
    seed_everything,
    sft_loss,
    shard_model,
    token_logprobs,
)


def arg(
    default, help: str
):  # a dataclass field with its help string (HfArgumentParser shows it in --help)
    return field(default=default, metadata={"help": help})


@dataclass
class Args(VLLMArgs):
    # --- generic
    seed: int = arg(1, "random seed (each rank samples with seed + rank)")
    output_dir: str = arg(
        "runs/zero_rl",
        "metrics.jsonl, curves.png, summary.json, checkpoint/ and the final model go here",
    )
    model: str = arg(
        "",
        "hub id or local folder of the base model; empty = the toy's tiny warm-started Qwen2 (cached)",
    )
    data: str = arg(
        "",
        "hub id or local .jsonl/.json/.parquet file/folder (SimpleRL-Zoo-Data: one tier's train.parquet, "
        "simpleRL-reason README); empty = toy prompts made in code",
    )
    data_split: str = arg("train", "split of --data")
    eval_data: str = arg(
        "",
        "held-out rows, same fields (hub id: its 'test' split); empty = last --num_eval_prompts of --data",
    )
    question_field: str = arg("question", "field holding the question")
    answer_field: str = arg("answer", "field holding the gold answer")
    level_field: str = arg(
        "level", "difficulty field used by --levels (ints or strings like 'Level 3')"
    )
    levels: str = arg(
        "",
        "keep rows whose level is in this range, e.g. 3-5 (the paper's Hard tier: MATH levels 3-5)",
    )
    task: Literal["math", "countdown"] = arg(
        "math",
        "math (SimpleRL grader, toy: sort digits) or countdown (TinyZero reward, toy: countdown)",
    )
    prompt_template: Literal["auto", "qwen-boxed", "abel", "countdown", "countdown-base"] = arg(
        "auto",
        "qwen-boxed (chat, answer in \\boxed{}) | abel (SimpleRL) | countdown | "
        "countdown-base (TinyZero qwen-instruct / base, see make_prompt); auto = countdown for "
        "countdown, else qwen-boxed",
    )
    sampler: Literal["hf", "vllm"] = arg(
        "hf", "hf (transformers generate, default) or vllm (colocated, GPU)"
    )
    gradient_checkpointing: bool = arg(
        False,
        "recompute each decoder layer in the backward pass (HF, non-reentrant); the "
        "policy forward then concatenates prompt and response (no shared KV cache); "
        "paper preset: True (not stated in the paper)",
    )
    track: bool = arg(False, "log to Weights & Biases")
    resume: bool = arg(
        False,
        "continue from output_dir/checkpoint (model, optimizer, scheduler, RNG, data position)",
    )
    save_every: int = arg(50, "checkpoint every N steps (and at the end)")
    # --- algorithm (paper App. B.5 / simpleRL-reason train_grpo_math_tune_ray.sh unless stated)
    total_steps: int = arg(
        60, "rollout steps; paper: 100 (App. B.5: about 100, about 150 for 24B and 32B)"
    )
    prompts_per_step: int = arg(16, "prompts per rollout batch, all ranks; paper: 1024 (App. B.5)")
    group_size: int = arg(
        8, "samples per prompt G; paper: 8 (App. B.5; App. G: N=32 better, N<=4 unstable)"
    )
    mini_batch_prompts: int = arg(
        4,
        "prompts per optimizer update, all ranks; paper: 256 (App. B.5), i.e. 4 updates per rollout batch",
    )
    micro_batch_size: int = arg(
        0,
        "completions per forward/backward per rank (gradient accumulation); 0 = whole mini-batch; "
        "paper: 2 (SimpleRL script: micro-batch 2 per GPU)",
    )
    lr: float = arg(
        1e-3,
        "learning rate, constant; toy 1e-3; paper: 5e-7 (SimpleRL-Zoo "
        "train_grpo_math_tune_ray.sh default; the paper does not state it)",
    )
    max_new_tokens: int = arg(16, "max response tokens; paper: 8192 (App. B.5)")
    max_prompt_length: int = arg(
        1024, "drop training prompts longer than this; paper: 1024 (SimpleRL script)"
    )
    temperature: float = arg(
        1.0, "rollout temperature; paper: 1.0 (App. B.5; App. G: 1.0 beats 0.6/0.8)"
    )
    top_p: float = arg(1.0, "rollout top-p; paper: 1.0 (App. B.5)")
    clip_eps: float = arg(0.2, "PPO clip epsilon; paper: 0.2 (SimpleRL script)")
    clip_eps_high: float = arg(
        0.0, "upper clip epsilon (DAPO clip-higher uses 0.28); 0 = same as --clip_eps"
    )
    loss_type: Literal["dapo", "verl", "bnpo", "grpo", "dr_grpo"] = arg(
        "dapo",
        "dapo (token mean over the mini-batch, as DAPO and the paper describe) | verl "
        "(SimpleRL-Zoo code: mean of micro-batch token means) | bnpo | grpo | dr_grpo, see "
        "aggregate_loss",
    )
    beta: float = arg(
        1e-4,
        "k3 KL coefficient to the frozen base; paper: 1e-4 for 0.5B-14B, 1e-3 larger; 0 = no reference model",
    )
    entropy_coef: float = arg(0.001, "entropy bonus; SimpleRL: 0.001 (train_grpo_math_tune_ray.sh)")
    max_grad_norm: float = arg(1.0, "gradient clipping; SimpleRL script: 1.0")
    mask_truncated: bool = arg(
        False, "drop truncated responses from the loss (SimpleRL remove_clip, default off)"
    )
    recompute_old_logprobs: bool = arg(
        False,
        "recompute old log-probs with a trainer forward (always on with --sampler vllm or on CUDA)",
    )
    reward_mode: Literal["mix", "independent"] = arg(
        "mix",
        "mix: 1 correct / 0 wrong (paper); independent: 1 / 0.5 / -0.5 / --format_penalty "
        "(paper §3.1)",
    )
    format_penalty: float = arg(
        -1.0, "reward of a wrong, unboxed answer in --reward_mode independent"
    )
    length_reward: Literal["none", "kimi", "cosine", "l1_exact", "l1_max", "dapo_overlong"] = arg(
        "none",
        "none|kimi|cosine|l1_exact|l1_max|dapo_overlong, combined with the task reward as "
        "its paper does (see total_rewards)",
    )
    length_reward_coef: float = arg(
        1.0,
        "weight of the kimi / dapo_overlong term added to the "
        "task reward (cosine and L1 are the whole reward)",
    )
    l1_budget: str = arg(
        "100-4000",
        "token budget range n_gold ~ U{a..b} for l1_*, told to the "
        "model in the prompt (L1: 100-4000)",
    )
    overlong_buffer: int = arg(
        4096, "DAPO soft overlong buffer L_c (DAPO: 4096); L_max = --max_new_tokens"
    )
    length_reward_warmup_steps: int = arg(
        0,
        "rollout steps on the task reward alone before "
        "--length_reward turns on (Kimi k1.5 §2.3.3); 0 = none",
    )
    repetition_penalty: float = arg(
        0.0,
        "per-token penalty on tokens of a repeated n-gram, "
        "summed into the reward (Yeo et al. §4.2, with cosine: -0.05); "
        "0 = off",
    )
    repetition_ngram_size: int = arg(40, "n of --repetition_penalty (Yeo et al.'s scripts: 40)")
    scale_rewards_by_std: bool | None = arg(
        None, "divide GRPO advantages by the group std; default true, false for --loss_type dr_grpo"
    )
    # --- evaluation and reasoning behaviours
    eval_every: int = arg(20, "evaluate every N steps (and before/after training)")
    num_eval_prompts: int = arg(128, "held-out eval prompts (toy: never seen in warm start or RL)")
    eval_samples: int = arg(4, "samples per eval prompt for sampled accuracy and pass@k")
    eval_temperature: float = arg(
        1.0, "eval sampling temperature; paper: 1.0 for RL models (Table 1 note)"
    )
    eval_top_p: float = arg(0.95, "eval top-p; paper: 0.95 (Table 1 note)")
    judge_model: str = arg(
        "",
        "model that labels reasoning behaviours (the paper uses GPT-4o); empty = keyword stand-in only",
    )
    judge_max_new_tokens: int = arg(256, "max tokens of a judge reply")
    # --- toy base model (used when --model is empty)
    warm_start_steps: int = arg(
        400, "toy only: SFT steps that give the tiny model its 'base' competence"
    )
    warm_start_noise: float = arg(
        0.6, "toy only: share of warm-start demonstrations with a wrong answer"
    )


# The paper's values (App. B.5 and the SimpleRL script), used with --preset paper (the default once --model is
# named); the defaults above are the CPU toy's. A flag given on the command line wins over both.
PAPER = dict(
    total_steps=100,  # App. B.5
    prompts_per_step=1024,  # App. B.5
    mini_batch_prompts=256,  # App. B.5: 4 updates per rollout batch
    micro_batch_size=2,  # SimpleRL script: 2 per GPU
    lr=5e-7,  # SimpleRL script default, constant
    max_new_tokens=8192,  # App. B.5
    gradient_checkpointing=True,  # not stated in the paper: bounds activation memory at long sequences
)


def derived(args, world_size: int) -> dict:
    """Per-rank sizes implied by the global ones; raises naming the flags when they do not fit."""
    if args.prompts_per_step % args.mini_batch_prompts:
        raise ValueError(
            f"--prompts_per_step {args.prompts_per_step} must be a multiple of --mini_batch_prompts "
            f"{args.mini_batch_prompts}"
        )
    local_mb = (
        per_rank(args.mini_batch_prompts, world_size, "--mini_batch_prompts") * args.group_size
    )
    return dict(
        prompts_per_rank=per_rank(args.prompts_per_step, world_size, "--prompts_per_step"),
        updates_per_rollout=args.prompts_per_step // args.mini_batch_prompts,
        completions_per_update_per_rank=local_mb,
        micro_batches_per_update=-(-local_mb // args.micro_batch_size)
        if args.micro_batch_size
        else 1,
    )


# ----------------------------------------------------------------------------------------------------
# ALGO LOGIC: the paper's equations as small pure functions


def grpo_advantages(rewards: torch.Tensor, group_size: int, scale_by_std: bool = True):
    """GRPO advantages per group of G samples (verl `compute_grpo_outcome_advantage`, as run by
    SimpleRL-Zoo): A_i = (r_i - mean_g) / (std_g + 1e-6), unbiased std. A group of one gets mean 0
    and std 1 (verl). `scale_by_std=False` is Dr. GRPO (Liu et al., arXiv 2503.20783;
    sail-sg/understand-r1-zero `compute_monte_carlo_advantages`): A_i = r_i - mean_g, since the
    std division weighs too-easy and too-hard questions up (a question-level difficulty bias)."""
    if rewards.numel() % group_size:
        raise ValueError(f"{rewards.numel()} rewards do not split into groups of {group_size}")
    groups = rewards.double().view(
        -1, group_size
    )  # (P, G); float64: equal rewards must give ~0, not 0.7 -> 0.056
    if group_size == 1:
        mean, std = torch.zeros_like(groups), torch.ones_like(groups)
    else:
        mean, std = (
            groups.mean(1, keepdim=True),
            groups.std(1, keepdim=True),
        )  # torch.std is unbiased
    if not scale_by_std:
        return (groups - mean).view(-1).float()  # (P*G,)
    return ((groups - mean) / (std + 1e-6)).view(-1).float()  # (P*G,)


def ppo_clip_loss(logps, old_logps, advantages, eps_low=0.2, eps_high=0.2):
    """PPO-clip per token: -min(rho A, clip(rho, 1-eps_low, 1+eps_high) A), rho = exp(logp - old)."""
    ratio = torch.exp(logps - old_logps)  # (B, T)
    adv = advantages.unsqueeze(-1)  # (B, 1)
    loss = -torch.min(ratio * adv, torch.clamp(ratio, 1 - eps_low, 1 + eps_high) * adv)  # (B, T)
    return loss, ratio


def k3_kl(logps, ref_logps):
    """k3 KL estimator to the reference, exp(ref - logp) - (ref - logp) - 1, clamped to [-10, 10] (verl)."""
    delta = ref_logps - logps
    return torch.clamp(torch.exp(delta) - delta - 1, -10.0, 10.0)


def aggregate_loss(
    per_token_loss,
    mask,
    loss_type,
    max_completion_length,
    num_tokens=None,
    num_seqs=None,
    num_micro=1,
):
    """Reduce a (B, T) per-token loss to a scalar. `num_tokens` / `num_seqs` are the normalisers of the
    whole mini-batch when it is split into micro-batches (default: this micro-batch's own);
    `num_micro` is the number of micro-batches this rank's mini-batch is split into (verl only).

    dapo    token mean over all valid tokens of the mini-batch, every token weighs the same
            (DAPO, arXiv 2503.14476, §3.3 "token-level policy gradient loss"; the rule the
            SimpleRL-Zoo paper describes). The caller passes the global token count / world size,
            so FSDP's gradient averaging gives the global mean.
    verl    token mean of each micro-batch / the number of micro-batches (what SimpleRL-Zoo's
            released verl computes: `dp_actor.update_policy` takes `masked_mean` per micro-batch,
            then `/ gradient_accumulation`; FSDP averages the ranks). Tokens of a micro-batch with
            few tokens weigh more; equals dapo when a mini-batch is one micro-batch on one rank.
    bnpo    token mean over this rank's mini-batch tokens (TRL bnpo)
    grpo    per-sequence token mean, then mean over sequences (GRPO paper; favours short answers)
    dr_grpo token sum / (sequences * max completion length) (Dr. GRPO: no length bias)
    """
    mask = mask.to(per_token_loss.dtype)
    num_seqs = num_seqs or mask.shape[0]
    if loss_type in ("dapo", "bnpo"):
        return (per_token_loss * mask).sum() / max(float(num_tokens or mask.sum()), 1.0)
    if loss_type == "verl":
        return (per_token_loss * mask).sum() / max(float(mask.sum()), 1.0) / num_micro
    if loss_type == "grpo":
        return ((per_token_loss * mask).sum(-1) / mask.sum(-1).clamp(min=1.0)).sum() / num_seqs
    if loss_type == "dr_grpo":
        return (per_token_loss * mask).sum() / (num_seqs * max_completion_length)
    raise ValueError(f"--loss_type must be dapo, verl, bnpo, grpo or dr_grpo, got {loss_type!r}")


LENGTH_REWARDS = ("none", "kimi", "cosine", "l1_exact", "l1_max", "dapo_overlong")
WHOLE_REWARD = ("cosine", "l1_exact", "l1_max")  # their formula already pays for correctness


def length_rewards(kind, lengths, correct, group_size, max_len, budgets=None, buffer=4096):
    """Each length reward's own formula (common.rewards), one per completion; groups of G are
    consecutive. Kimi k1.5 (arXiv 2501.12599, §2.3.3): per group, lambda = 0.5 - (L - Lmin) /
    (Lmax - Lmin), lambda if correct else min(0, lambda). Cosine (Yeo et al., arXiv 2502.03373,
    §4.2): 2 -> 1 over L for a correct answer, -10 -> 0 for a wrong one, -10 past the limit.
    L1 (Aggarwal & Welleck, arXiv 2503.04697, LCPO): exact c - alpha |n_gold - L|, max
    c * clip(alpha (n_gold - L) + delta, 0, 1). DAPO (arXiv 2503.14476, §3.4): soft overlong
    punishment in [-1, 0]."""
    if kind == "none":
        return [0.0] * len(lengths)
    if kind == "kimi":  # per group: lambda = 0.5 - (L - Lmin) / (Lmax - Lmin)
        return [
            r
            for s in range(0, len(lengths), group_size)
            for r in R.kimi_length_reward(lengths[s : s + group_size], correct[s : s + group_size])
        ]
    if kind == "cosine":
        return [R.cosine_length_reward(n, c, max_len) for n, c in zip(lengths, correct)]
    if kind in ("l1_exact", "l1_max"):
        if budgets is None or len(budgets) != len(lengths):
            raise ValueError(f"--length_reward {kind} needs one token budget per completion")
        return [R.l1_length_reward(n, c, b, kind[3:]) for n, c, b in zip(lengths, correct, budgets)]
    if kind == "dapo_overlong":
        if buffer > max_len:
            raise ValueError(f"--overlong_buffer {buffer} must be <= --max_new_tokens {max_len}")
        return [R.dapo_overlong_penalty(n, max_len, buffer) for n in lengths]
    raise ValueError(f"--length_reward must be {'|'.join(LENGTH_REWARDS)}, got {kind!r}")


def total_rewards(
    kind,
    task_rewards,
    correct,
    lengths,
    group_size,
    max_len,
    budgets=None,
    buffer=4096,
    coef=1.0,
    repetition=None,
):
    """The reward GRPO normalises, one per completion. How a length reward meets correctness follows
    its paper:
      none           task reward (SimpleRL-Zoo: 1 correct, 0 wrong)
      kimi           task reward + coef * Kimi length reward (Kimi k1.5 §2.3.3: a weighted sum)
      dapo_overlong  task reward + coef * overlong penalty (DAPO §3.4 adds it to correctness)
      cosine, l1_*   the length reward alone: its formula already pays for correctness (cosine:
                     2 -> 1 correct, -10 -> 0 wrong; L1-Max: a correct answer over budget gets
                     < 0.5), so the task reward is not added again, and other task-reward levels
                     (countdown's 0.1 for a well-formed wrong equation, --reward_mode independent)
                     play no part.
    `repetition`: one n-gram repetition penalty (<= 0) per completion, added last (Yeo et al. §4.2
    pair it with the cosine reward; see repetition_penalty)."""
    if not len(task_rewards) == len(correct) == len(lengths):
        raise ValueError(
            f"{len(task_rewards)} task rewards, {len(correct)} correctness flags and "
            f"{len(lengths)} lengths: need one of each per completion"
        )
    if kind in WHOLE_REWARD and coef != 1.0:
        raise ValueError(
            f"--length_reward_coef {coef} has no effect with --length_reward {kind}: "
            "cosine and L1 are the whole reward (only kimi, dapo_overlong add a term)"
        )
    length = length_rewards(kind, lengths, correct, group_size, max_len, budgets, buffer)
    if kind in WHOLE_REWARD:
        total = list(length)
    else:
        total = [task + coef * extra for task, extra in zip(task_rewards, length)]
    if repetition is not None:
        total = [t + p for t, p in zip(total, repetition)]
    return [float(t) for t in total]


def length_reward_at(args, step):
    """The length reward in force at rollout step `step` (1-based): the task reward alone for the
    first --length_reward_warmup_steps steps (Kimi k1.5 §2.3.3: the length penalty slows early
    training, so they first optimise without it, then keep a constant one), then --length_reward."""
    return args.length_reward if step > args.length_reward_warmup_steps else "none"


def scales_by_std(args) -> bool:
    """Whether advantages are divided by the group std: not for --loss_type dr_grpo (Dr. GRPO
    removes both the std and the length normaliser), unless --scale_rewards_by_std says so."""
    if args.scale_rewards_by_std is None:
        return args.loss_type != "dr_grpo"
    return args.scale_rewards_by_std


def repetition_penalty(token_ids, ngram_size=40, penalty=-0.05):
    """N-gram repetition penalty of Yeo et al. (arXiv 2502.03373, §4.2; eddycmu/demystify-long-cot
    `openrlhf/reward/repetition.py`, `RepetitionDensePenalty`): every token inside a repeated
    token n-gram (the second and later occurrences) is penalised once. Their PPO puts `penalty`
    on each such token; GRPO has one scalar per response, so this returns the sum (the
    undiscounted return at the first token). Released runs: n = 40, penalty = -0.05."""
    if penalty > 0:
        raise ValueError(f"--repetition_penalty must be <= 0 (a penalty), got {penalty}")
    seen, hit = set(), set()
    for start in range(len(token_ids) - ngram_size + 1):
        gram = tuple(token_ids[start : start + ngram_size])
        if gram in seen:
            hit.update(range(start, start + ngram_size))
        seen.add(gram)
    return penalty * len(hit)


# ----------------------------------------------------------------------------------------------------
# prompts, data, rewards


COUNTDOWN_RULES = (
    " You can use basic arithmetic operations (+, -, *, /) and each number can"
    " only be used once. Show your work in <think> </think> tags. And return the"
    " final answer in <answer> </answer> tags, for example <answer> (1 + 2) / 3"
    " </answer>."
)
THINKER = (
    "first thinks about the reasoning process in the mind and then provides the user with"
    " the answer."
)


def make_prompt(question: str, template: str, budget: int | None = None, l1_kind: str = ""):
    """qwen-boxed (chat, system turn) and abel (plain text): simpleRL-reason
    `examples/simplelr_math_eval/utils.py` PROMPT_TEMPLATES. countdown / countdown-base: TinyZero
    `examples/data_preprocess/countdown.py` `make_prefix` templates qwen-instruct / base, raw
    strings that end inside the assistant turn with the prefill "Let me solve this step by
    step.\n<think>" (qwen-instruct is ChatML text, for Qwen-family tokenizers like the toy's). The
    countdown question is "Using the numbers [..], create an equation that equals N." (TinyZero)."""
    if budget is not None:  # L1 (arXiv 2503.04697) tells the model its budget in the prompt
        question += f" Think for {'maximum ' if l1_kind == 'l1_max' else ''}{budget} tokens."
    if template == "qwen-boxed":
        return [
            {"role": "system", "content": "You are a helpful assistant."},
            {
                "role": "user",
                "content": question
                + "\nPlease reason step by step, and put your final answer within \\boxed{}.",
            },
        ]
    if template == "abel":
        return f"Question:\n{question}\nAnswer:\nLet's think step by step.\n"
    if template == "countdown":  # TinyZero qwen-instruct (with its space before the question)
        return (
            f"<|im_start|>system\nYou are a helpful assistant. You {THINKER}<|im_end|>\n"
            f"<|im_start|>user\n {question}{COUNTDOWN_RULES}<|im_end|>\n"
            "<|im_start|>assistant\nLet me solve this step by step.\n<think>"
        )
    if template == "countdown-base":  # TinyZero base
        return (
            f"A conversation between User and Assistant. The user asks a question, and the "
            f"Assistant solves it. The assistant {THINKER}\nUser: {question}{COUNTDOWN_RULES}\n"
            "Assistant: Let me solve this step by step.\n<think>"
        )
    raise ValueError(
        f"--prompt_template must be qwen-boxed, abel, countdown or countdown-base, got {template!r}"
    )


TOY_HELD_OUT = 512  # toy questions reserved for evaluation (never in warm start or RL), whatever --num_eval_prompts


def make_toy_rows(task: str, seed: int):
    """Toy prompts: sorting four digits 1-9 (answer '1347', graded by the math grader) or small countdowns.
    Returns (train_rows, held_out_rows); no held-out question appears in the train rows."""
    if task == "countdown":
        rows = list({r["question"]: r for r in make_countdown_rows(4000, seed=seed)}.values())
    else:
        tuples = [
            (a, b, c, d)
            for a in range(1, 10)
            for b in range(1, 10)
            for c in range(1, 10)
            for d in range(1, 10)
        ]
        rows = [
            {
                "question": f"Sort the digits {' '.join(map(str, t))} from smallest to largest.",
                "answer": "".join(map(str, sorted(t))),
                "digits": list(t),
            }
            for t in tuples
        ]
    random.Random(seed).shuffle(rows)
    return rows[TOY_HELD_OUT:], rows[:TOY_HELD_OUT]


def parse_range(spec: str, flag: str) -> tuple[int, int]:
    """'3-5' -> (3, 5), '2' -> (2, 2); the error names the flag."""
    if not (m := re.fullmatch(r"\s*(\d+)\s*(?:-\s*(\d+)\s*)?", spec)):
        raise ValueError(f"{flag} must look like 3-5 or 2, got {spec!r}")
    return int(m[1]), int(m[2] or m[1])


def load_task_rows(args):
    """(train_rows, eval_rows) with `question` and `answer` keys (plus `target`/`nums` for countdown)."""
    if not args.data:
        train_rows, held_out = make_toy_rows(args.task, args.seed)
        return train_rows, held_out[: args.num_eval_prompts]
    countdown = args.task == "countdown"
    need = ("target", "nums") if countdown else (args.question_field, args.answer_field)

    def question(r):  # TinyZero's countdown rows (Countdown-Tasks-3to4) hold only target and nums
        if args.question_field in r or not countdown:
            return str(r[args.question_field])
        nums = [int(n) for n in r["nums"]]
        return f"Using the numbers {nums}, create an equation that equals {r['target']}."

    def read(source, split):
        release_format = args.task == "math" and need == ("question", "answer")  # no field flags
        if release_format:  # SimpleRL-Zoo-Data parquet, MATH, GSM8K "#### N" (common/benchmarks.py)
            rows = load_math_rows(source, split)
        else:
            rows = load_rows(source, split=split, required=need)
        if args.levels:
            lo, hi = parse_range(args.levels, "--levels")
            for i, r in enumerate(rows):
                if args.level_field not in r:
                    raise ValueError(
                        f"{source} row {i}: no field {args.level_field!r} for --levels (see --level_field)"
                    )
            rows = [
                r
                for r in rows
                if lo <= int(re.sub(r"\D", "", str(r[args.level_field])) or -1) <= hi
            ]
        if release_format:
            return rows
        return [
            {**r, "question": question(r), "answer": str(r.get(args.answer_field))} for r in rows
        ]

    rows = read(args.data, args.data_split)
    if args.eval_data:
        return rows, read(args.eval_data, "test")[: args.num_eval_prompts]
    return rows[: -args.num_eval_prompts], rows[-args.num_eval_prompts :]


def score(text: str, row: dict, args) -> tuple[float, bool, bool]:
    """(task reward, correct, an answer was found). Never raises on garbage text."""
    if args.task == "countdown":
        reward = R.countdown_reward(text, row["target"], row["nums"])
        return reward, reward == 1.0, reward > 0.0  # 0.1 = a well-formed but wrong equation
    reward = R.correctness_reward(
        text, row["answer"], mode=args.reward_mode, format_penalty=args.format_penalty
    )
    return (
        reward,
        reward > 0.0,
        R.extract_answer(text) is not None,
    )  # "mix": 1/0; "independent": correct iff > 0


def score_all(texts: list[str], rows: list[dict], args) -> list[tuple[float, bool, bool]]:
    """`score` of many responses; math answers graded in parallel (rewards.math_equal_batch)."""
    if args.task == "countdown":
        return [score(t, r, args) for t, r in zip(texts, rows)]
    golds = [r["answer"] for r in rows]
    rewards = R.correctness_reward_batch(texts, golds, args.reward_mode, args.format_penalty)
    return [(rw, rw > 0.0, R.extract_answer(t) is not None) for rw, t in zip(rewards, texts)]


# ----------------------------------------------------------------------------------------------------
# reasoning behaviours (the paper's Reasoning Behavior Ratio, four behaviours after Gandhi et al.):
# keyword stand-in and an LLM judge through the Sampler

BEHAVIOUR_KEYWORDS = {
    "verification": ("verify", "check", "confirm", "substitut", "plug"),
    "backtracking": ("wait", "mistake", "actually", "try again", "rethink", "retry", "instead"),
    "subgoal setting": ("first", "step 1", "next,", "then", "we need to", "break down"),
    "enumeration": ("case", "possibilit", "list all", "for each", "enumerat", "all options"),
}
BEHAVIOURS = tuple(BEHAVIOUR_KEYWORDS)
JUDGE_PROMPT = (
    "Read the response to the problem below and say which reasoning behaviours it shows.\n"
    "- Verification: the response checks an intermediate result.\n- Backtracking: it notices an error and revises.\n"
    "- Subgoal Setting: it splits the problem into smaller steps.\n- Enumeration: it goes through cases exhaustively.\n"
    'Reply with a JSON list only, one object per behaviour found, e.g. [{{"behavior": "Verification", "example": '
    '"a short quote"}}], or [] if there is none.\n\nProblem: {question}\n\nResponse: {response}'
)


def keyword_behaviours(text: str) -> set[str]:
    low = text.lower()
    return {b for b, words in BEHAVIOUR_KEYWORDS.items() if any(w in low for w in words)}


def parse_judge_reply(reply: str) -> set[str] | None:
    """Behaviours named in the judge's JSON list; None if the reply is not such a list (counted)."""
    start, end = reply.find("["), reply.rfind("]")
    try:
        items = json.loads(reply[start : end + 1]) if 0 <= start < end else None
    except (json.JSONDecodeError, RecursionError):
        return None
    if not isinstance(items, list) or not all(isinstance(i, dict) for i in items):
        return None
    names = {str(i.get("behavior", i.get("behaviour", ""))).strip().lower() for i in items}
    return {b for b in BEHAVIOURS if b in names}


def judge_behaviours(judge, questions, responses, max_new_tokens=256) -> list[set[str] | None]:
    """Label each response with the judge model (any Sampler, greedy); None where the reply was not parseable."""
    prompts = [
        [{"role": "user", "content": JUDGE_PROMPT.format(question=q, response=r)}]
        for q, r in zip(questions, responses)
    ]
    return [
        parse_judge_reply(g[0].text)
        for g in judge.generate(prompts, n=1, temperature=0, max_new_tokens=max_new_tokens)
    ]


# ----------------------------------------------------------------------------------------------------
# toy base model: a short SFT on noisy demonstrations, cached


def toy_demo(row: dict, task: str, rng: random.Random, noise: float) -> str:
    """The response a noisy 'base' model imitates; with probability `noise` the answer is wrong."""
    wrong = rng.random() < noise
    if task == "countdown":  # wrong: the same numbers, shuffled, joined by one random operator
        expr = (
            f" {rng.choice('+-*')} ".join(map(str, rng.sample(row["nums"], len(row["nums"]))))
            if wrong
            else row["answer"]
        )
        return f" </think>\n<answer> {expr} </answer>"  # after the prompt's "\n<think>" prefill
    answer = (
        "".join(map(str, rng.sample(row["digits"], 4))) if wrong else row["answer"]
    )  # wrong: a random order
    return f"\\boxed{{{answer}}}"


def warm_start_base(args, train_rows, template) -> str:
    spec = {
        "task": args.task,
        "template": template,
        "steps": args.warm_start_steps,
        "noise": args.warm_start_noise,
        "seed": args.seed,
        "held_out": TOY_HELD_OUT,
    }

    def build(folder):
        tiny = make_tiny_lm()
        tok, model = load_tokenizer(tiny), load_model(tiny, dtype="float32")
        rng = random.Random(args.seed)
        torch.manual_seed(args.seed)
        opt = make_optimizer(model, lr=3e-3)
        end_id = tok.convert_tokens_to_ids("<|im_end|>")
        encoded = {}  # question -> prompt ids (each question is rendered and tokenised once)
        for _ in tqdm(
            range(args.warm_start_steps), desc="warm start (toy base, cached)", leave=False
        ):
            batch = rng.sample(train_rows, 32)
            prompts = [
                encoded.get(r["question"])
                or encoded.setdefault(
                    r["question"],
                    tok(
                        render_prompt(tok, make_prompt(r["question"], template)),
                        add_special_tokens=False,
                    ).input_ids,
                )
                for r in batch
            ]
            answers = [
                tok(
                    toy_demo(r, args.task, rng, args.warm_start_noise), add_special_tokens=False
                ).input_ids
                + [end_id]
                for r in batch
            ]
            sft_loss(model, *pad_batch(prompts, answers, tok.pad_token_id)).backward()
            opt.step()
            opt.zero_grad()
        model.save_pretrained(folder)
        tok.save_pretrained(folder)

    return toy_model("zero_rl-base", spec, build, code=[toy_demo, make_toy_rows, make_prompt])


# ----------------------------------------------------------------------------------------------------
# evaluation and the training loop


@torch.no_grad()
def evaluate(sampler, eval_rows, args, dist, template, judge=None):
    """Greedy accuracy, sampled accuracy (T=eval_temperature), pass@k, length and behaviour ratios.
    Each rank evaluates its slice; the results are gathered so every rank returns the same dict."""
    rows = eval_rows[dist.rank :: dist.world_size][
        : len(eval_rows) // dist.world_size
    ]  # equal count per rank
    prompts = [make_prompt(r["question"], template) for r in rows]
    greedy = sampler.generate(prompts, n=1, temperature=0, max_new_tokens=args.max_new_tokens)
    sampled = sampler.generate(
        prompts,
        n=args.eval_samples,
        temperature=args.eval_temperature,
        top_p=args.eval_top_p,
        max_new_tokens=args.max_new_tokens,
    )
    k = args.eval_samples
    texts = [c.text for g in sampled for c in g]
    flat = score_all(texts, [r for r in rows for _ in range(k)], args)
    local = {
        "greedy": [s[1] for s in score_all([g[0].text for g in greedy], rows, args)],
        "sampled": [[s[1] for s in flat[i * k : (i + 1) * k]] for i in range(len(rows))],
        "lengths": [len(c.token_ids) for g in sampled for c in g],
        "keywords": [sorted(keyword_behaviours(c.text)) for g in sampled for c in g],
    }
    if judge is not None:  # label the first sample of each prompt
        labels = judge_behaviours(
            judge,
            [r["question"] for r in rows],
            [g[0].text for g in sampled],
            args.judge_max_new_tokens,
        )
        local["judge"], local["judge_fail"] = (
            [sorted(lab or ()) for lab in labels],
            [lab is None for lab in labels],
        )
    merged = {k: [x for part in all_gather_object(local) for x in part[k]] for k in local}
    k = args.eval_samples
    out = {
        "eval/accuracy_greedy": float(np.mean(merged["greedy"])),
        "eval/accuracy_sampled": float(np.mean([np.mean(s) for s in merged["sampled"]])),
        f"eval/pass@{k}": float(np.mean([R.pass_at_k(k, sum(s), k) for s in merged["sampled"]])),
        "eval/mean_length": float(np.mean(merged["lengths"])),
    }
    for b in BEHAVIOURS:
        out[f"eval/behaviour_keyword/{b}"] = float(np.mean([b in s for s in merged["keywords"]]))
        if judge is not None:
            out[f"eval/behaviour_judge/{b}"] = float(np.mean([b in s for s in merged["judge"]]))
    if judge is not None:
        out["eval/judge_parse_failures"] = float(
            sum(merged["judge_fail"])
        )  # replies that were not a JSON list
    return out, sampled[0][0].text if sampled else ""


def response_logprobs(
    model, prompt_ids, prompt_mask, response_ids, response_mask, prompt_index, return_entropy=False
):
    """Log-probs (B, T) of the response tokens (and entropies), each prompt computed once for its group: the P
    prompts (left padded) go through the model once, their KV cache is indexed out to the B responses
    (`prompt_index` (B,): each row's prompt) and the responses (right padded) attend to it; gradients flow
    through the shared prompt too. Only response positions are projected onto the vocabulary, chunk by chunk
    (common.train.logprobs_from_hidden: no (B, T, V) logits). Equals common.train.token_logprobs on the
    concatenated sequences (tested), which is the path taken under gradient checkpointing: a checkpointed
    layer cannot fill a KV cache (HF drops it in train mode), so each row's prompt is concatenated instead."""
    checkpointed = model.training and torch.is_grad_enabled() and gradient_checkpointing_on(model)
    if checkpointed or not plain_lm_head(model):
        ids = torch.cat([prompt_ids[prompt_index], response_ids], dim=1)  # (B, Lp + T)
        att = torch.cat([prompt_mask[prompt_index], response_mask], dim=1)  # (B, Lp + T)
        out = token_logprobs(model, ids, att, return_entropy=return_entropy)  # (B, Lp + T - 1) [x2]
        first = (
            prompt_ids.shape[1] - 1
        )  # the last prompt position predicts the first response token
        return tuple(x[:, first:] for x in out) if return_entropy else out[:, first:]
    hidden, out = forward_hidden(
        model, input_ids=prompt_ids, attention_mask=prompt_mask, use_cache=True
    )  # (P, Lp, H)
    cache_kw = (
        "cache" if "cache" in out else "past_key_values"
    )  # transformers 5.2x renamed past_key_values
    cache = out[cache_kw]
    cache.batch_select_indices(prompt_index)  # (P, ...) -> (B, ...)
    hidden = hidden[
        prompt_index, -1:
    ]  # (B, 1, H) the last prompt position predicts the first response token
    if response_ids.shape[1] > 1:
        mask = torch.cat(
            [prompt_mask[prompt_index], response_mask[:, :-1]], dim=1
        )  # (B, Lp + T - 1)
        rest, _ = forward_hidden(
            model, input_ids=response_ids[:, :-1], attention_mask=mask, **{cache_kw: cache}
        )
        hidden = torch.cat([hidden, rest], dim=1)  # (B, T, H)
    return logprobs_from_hidden(
        hidden, lm_head_weight(model), response_ids, return_entropy=return_entropy
    )  # (B, T)


def main(args):
    dist = init_distributed()
    G, world, out_dir, ckpt_dir = (
        args.group_size,
        dist.world_size,
        Path(args.output_dir),
        Path(args.output_dir) / "checkpoint",
    )
    template = {"auto": "countdown" if args.task == "countdown" else "qwen-boxed"}.get(
        args.prompt_template, args.prompt_template
    )
    if args.prompts_per_step % args.mini_batch_prompts or args.mini_batch_prompts % world:
        raise ValueError(
            f"--prompts_per_step {args.prompts_per_step} must be a multiple of --mini_batch_prompts "
            f"{args.mini_batch_prompts}, itself a multiple of the {world} processes"
        )
    local_prompts, local_mb = (
        args.prompts_per_step // world,
        args.mini_batch_prompts // world * G,
    )  # local_mb: completions
    num_updates, eps_high = (
        args.prompts_per_step // args.mini_batch_prompts,
        args.clip_eps_high or args.clip_eps,
    )
    train_rows, eval_rows = load_task_rows(args)
    if not args.model and dist.is_main:
        warm_start_base(
            args, train_rows, template
        )  # the toy base: rank 0 builds it once (cached), the others wait
    barrier()
    model_path = args.model or warm_start_base(args, train_rows, template)
    tok = load_tokenizer(model_path)
    encode = lambda prompt: tok(render_prompt(tok, prompt), add_special_tokens=False).input_ids  # noqa: E731
    if args.data:
        train_rows = [
            r
            for r in train_rows
            if len(encode(make_prompt(r["question"], template))) <= args.max_prompt_length
        ]
    if len(train_rows) < args.prompts_per_step:
        raise ValueError(
            f"only {len(train_rows)} training rows for --prompts_per_step {args.prompts_per_step}"
        )
    model = shard_model(
        load_model(model_path), dist, gradient_checkpointing=args.gradient_checkpointing
    )  # fp32 masters
    ref_model = (
        shard_model(load_model(model_path), dist, frozen=True) if args.beta else None
    )  # bf16 on CUDA
    opt = make_optimizer(model, args.lr)
    sched = make_scheduler(opt, "constant", 0, args.total_steps)
    # vllm: one engine per rank; vLLM's and CUDA's sampler log-probs are not the trainer's
    sampler = make_sampler(args.sampler, model, tok, model_path=model_path, args=args)
    recompute = args.recompute_old_logprobs or old_logprobs_need_recompute(sampler, dist.device)
    judge_dtype = precision_policy(dist.device.type).frozen_dtype  # a frozen model: bf16 on CUDA
    judge = (
        None
        if not args.judge_model
        else HFSampler(
            load_model(args.judge_model, dtype=judge_dtype, device=dist.device).eval(),
            load_tokenizer(args.judge_model),
        )
    )
    seed_everything(args.seed + dist.rank)  # ranks sample different completions
    start_step = 0
    if (
        args.resume and (state := load_checkpoint(ckpt_dir, model, opt, sched)) is not None
    ):  # last: it restores the RNG
        start_step = state[0]  # the data position is a function of the step
        print0(
            f"resumed from {ckpt_dir} at step {start_step} (data position {state[1]['data_position']})"
        )
        sampler.sync_weights(model)  # vLLM: its engine loaded the base weights; HF: a no-op
    logger = MetricsLogger(
        out_dir,
        args.track,
        "zero_rl",
        asdict(args),
        resume_step=start_step if args.resume else None,
    )
    l1_lo, l1_hi = (
        parse_range(args.l1_budget, "--l1_budget")
        if args.length_reward.startswith("l1")
        else (0, 0)
    )
    # a bad --length_reward, --overlong_buffer or --length_reward_coef fails now, not later
    total_rewards(
        args.length_reward,
        [0.0],
        [False],
        [1],
        1,
        args.max_new_tokens,
        [1],
        args.overlong_buffer,
        args.length_reward_coef,
    )
    scale_by_std = scales_by_std(args)
    orders = {}  # epoch -> permutation of the training rows: a function of (seed, epoch), so resuming needs no state

    def rows_for_step(step):
        """This rank's (row, L1 budget) pairs of rollout step `step` (1-based)."""
        out, first = [], (step - 1) * args.prompts_per_step + dist.rank * local_prompts
        for pos in range(first, first + local_prompts):
            epoch, i = divmod(pos, len(train_rows))
            order = orders.setdefault(
                epoch, np.random.RandomState(args.seed + epoch).permutation(len(train_rows))
            )
            budget = random.Random(args.seed * 1_000_003 + pos).randint(
                l1_lo, l1_hi
            )  # L1's n_gold, fixed per position
            out.append(
                (train_rows[order[i]], budget if args.length_reward.startswith("l1") else None)
            )
        return out

    def run_eval(step):
        metrics, example = evaluate(sampler, eval_rows, args, dist, template, judge)
        logger.log(metrics, step)
        shown = "  ".join(f"{k[5:]} {v:.3f}" for k, v in metrics.items() if "behaviour" not in k)
        print0(f"\n[eval step {step}] {shown}\n  sample: {example!r}")
        return metrics

    history = [
        r for r in logger.history if r["step"] == 0 and "eval/mean_length" in r
    ]  # a resumed run's "before"
    after = before = run_eval(0) if start_step == 0 else (history or [{}])[0]
    pbar = tqdm(
        range(start_step + 1, args.total_steps + 1),
        "zero RL",
        args.total_steps,
        initial=start_step,
        disable=not dist.is_main,
    )
    for step in pbar:
        t0 = time.perf_counter()
        # 1. rollout: G samples per prompt on every rank; the G samples of a prompt are consecutive
        batch = rows_for_step(step)
        prompts = [make_prompt(r["question"], template, b, args.length_reward) for r, b in batch]
        groups = sampler.generate(prompts, G, args.temperature, args.top_p, args.max_new_tokens)
        sampler.sleep()  # vLLM frees its memory for the update
        comps, t_gen = [c for g in groups for c in g], time.perf_counter() - t0
        B, T = (
            len(comps),
            max(len(c.token_ids) for c in comps),
        )  # local completions, longest response
        # 2. rewards: task reward and length reward (total_rewards); all ranks' rewards are gathered
        # before the group normalisation
        per_completion = [x for x in batch for _ in range(G)]  # (row, budget) of each completion
        scored = score_all([c.text for c in comps], [r for r, _ in per_completion], args)
        lengths, correct = [len(c.token_ids) for c in comps], [s[1] for s in scored]
        kind = length_reward_at(args, step)  # "none" during the warm-up
        repeats = None
        if args.repetition_penalty:
            repeats = [
                repetition_penalty(c.token_ids, args.repetition_ngram_size, args.repetition_penalty)
                for c in comps
            ]
        task = [s[0] for s in scored]
        budgets = [b for _, b in per_completion]
        reward = total_rewards(
            kind,
            task,
            correct,
            lengths,
            G,
            args.max_new_tokens,
            budgets,
            args.overlong_buffer,
            args.length_reward_coef,
            repeats,
        )
        bonus = [r - t for r, t in zip(reward, task)]
        local = {
            "reward": reward,
            "correct": correct,
            "bonus": bonus,
            "length": lengths,
            "found": [s[2] for s in scored],
            "truncated": [c.finish_reason == "length" for c in comps],
        }
        every = {k: [x for part in all_gather_object(local) for x in part[k]] for k in local}
        all_rewards = torch.tensor(every["reward"])  # (W*B,)
        advantages = grpo_advantages(all_rewards, G, scale_by_std)  # (W*B,)
        advantages = advantages[dist.rank * B : (dist.rank + 1) * B]  # (B,) this rank's slice
        # 3. tensors: prompts (P, Lp) left padded; responses, loss mask and the sampler's old log-probs (B, T) right padded
        enc = tok.pad(
            {"input_ids": [encode(p) for p in prompts]}, padding=True, return_tensors="pt"
        )  # left (load_tokenizer)
        responses, loss_mask, old_logps = (
            torch.full((B, T), tok.pad_token_id),
            torch.zeros(B, T),
            torch.zeros(B, T),
        )
        for i, c in enumerate(comps):
            responses[i, : len(c.token_ids)] = torch.tensor(c.token_ids)
            loss_mask[i, : len(c.token_ids)] = (
                0.0 if args.mask_truncated and c.finish_reason == "length" else 1.0
            )
            old_logps[i, : len(c.logprobs)] = torch.tensor(c.logprobs[:T])
        response_mask = (torch.arange(T)[None] < torch.tensor(lengths)[:, None]).long()  # (B, T)
        prompt_ids, prompt_mask, responses, response_mask, loss_mask, old_logps, advantages = (
            t.to(dist.device)
            for t in (
                enc["input_ids"],
                enc["attention_mask"],
                responses,
                response_mask,
                loss_mask,
                old_logps,
                advantages,
            )
        )

        def chunks(lo, hi):  # micro-batches of rows [lo, hi), each trimmed to its longest response
            for s in range(lo, hi, args.micro_batch_size or hi - lo):
                e = min(s + (args.micro_batch_size or hi - lo), hi)
                yield s, e, int(response_mask[s:e].sum(1).max())

        def logprobs_of(
            m, s, e, t, entropy=False
        ):  # rows s..e-1 belong to prompts s//G .. (e-1)//G
            p_lo, p_hi = s // G, (e - 1) // G + 1
            pad = int(
                (prompt_mask[p_lo:p_hi].sum(0) == 0).sum()
            )  # left-padding columns all these prompts share
            index = torch.arange(s, e, device=dist.device) // G - p_lo  # (b,) each row's prompt
            return response_logprobs(
                m,
                prompt_ids[p_lo:p_hi, pad:],
                prompt_mask[p_lo:p_hi, pad:],
                responses[s:e, :t],
                response_mask[s:e, :t],
                index,
                return_entropy=entropy,
            )  # (b, t)

        ref_logps = torch.zeros_like(old_logps)
        with torch.no_grad():
            for s, e, t in chunks(0, B):
                if recompute:
                    old_logps[s:e, :t] = logprobs_of(model, s, e, t).float()
                if ref_model is not None:
                    ref_logps[s:e, :t] = logprobs_of(ref_model, s, e, t).float()
        # 4. policy updates: several mini-batches per rollout batch, gradient accumulation over micro-batches
        model.train()  # gradient checkpointing only acts in train mode (the sampler may have set eval)
        t_train, sums = (
            time.perf_counter(),
            dict.fromkeys(("tokens", "entropy", "kl", "low", "high", "loss", "grad_norm"), 0.0),
        )
        for lo in range(0, B, local_mb):
            hi = lo + local_mb
            mb_tokens = float(loss_mask[lo:hi].sum())
            # dapo: token mean over the whole mini-batch of all ranks (FSDP averages the ranks' gradients, hence / world)
            num_tokens = (
                sum(all_gather_object(mb_tokens)) / world if args.loss_type == "dapo" else mb_tokens
            )
            for s, e, t in chunks(lo, hi):
                logps, entropy = logprobs_of(model, s, e, t, entropy=True)  # (b, t)
                mask, adv = loss_mask[s:e, :t], advantages[s:e]
                per_token, ratio = ppo_clip_loss(
                    logps, old_logps[s:e, :t], adv, args.clip_eps, eps_high
                )  # (b, t)
                if ref_model is not None:
                    kl = k3_kl(logps, ref_logps[s:e, :t])
                    per_token = per_token + args.beta * kl
                    sums["kl"] += float((kl.detach() * mask).sum())
                per_token = per_token - args.entropy_coef * entropy
                n_micro = len(range(lo, hi, args.micro_batch_size or hi - lo))  # verl: grad. accum.
                loss = aggregate_loss(
                    per_token,
                    mask,
                    args.loss_type,
                    args.max_new_tokens,
                    num_tokens,
                    hi - lo,
                    n_micro,
                )
                loss.backward()
                with torch.no_grad():
                    sums["tokens"] += float(mask.sum())
                    sums["entropy"] += float((entropy * mask).sum())
                    sums["low"] += float(
                        (((ratio < 1 - args.clip_eps) & (adv[:, None] < 0)) * mask).sum()
                    )
                    sums["high"] += float(
                        (((ratio > 1 + eps_high) & (adv[:, None] > 0)) * mask).sum()
                    )
                    sums["loss"] += float(loss) / num_updates
            sums["grad_norm"] += clip_grad_norm(model, args.max_grad_norm) / num_updates
            opt.step()
            sched.step()
            opt.zero_grad(set_to_none=True)
        sampler.sync_weights(model)  # vLLM: the next rollout samples the updated policy; HF: no-op
        # 5. metrics (TRL's names where TRL has the metric)
        tot = {k: sum(part[k] for part in all_gather_object(sums)) for k in sums}
        n_tok, step_time = max(tot["tokens"], 1.0), time.perf_counter() - t0
        lengths, truncated = np.array(every["length"]), np.array(every["truncated"])
        metrics = {
            "reward": float(all_rewards.mean()),
            "reward_std": float(all_rewards.std()),
            "accuracy": np.mean(every["correct"]),
            "frac_reward_zero_std": float((all_rewards.view(-1, G).std(1) == 0).float().mean()),
            "completions/mean_length": lengths.mean(),
            "completions/min_length": float(lengths.min()),
            "completions/max_length": float(lengths.max()),
            "completions/clipped_ratio": truncated.mean(),
            "completions/mean_terminated_length": lengths[~truncated].mean()
            if (~truncated).any()
            else 0.0,
            "completions/no_answer_ratio": 1 - np.mean(every["found"]),
            "entropy": tot["entropy"] / n_tok,
            "kl": tot["kl"] / n_tok,
            "clip_ratio/low_mean": tot["low"] / n_tok,
            "clip_ratio/high_mean": tot["high"] / n_tok,
            "clip_ratio/region_mean": (tot["low"] + tot["high"]) / n_tok,
            "loss": tot["loss"] / world,
            "grad_norm": tot["grad_norm"] / world,
            "learning_rate": sched.get_last_lr()[0],
            "time/step": step_time,
            "time/generate": t_gen,
            "time/train": time.perf_counter() - t_train,
            "tokens_per_s": lengths.sum() / step_time,
            # mean of (total reward - task reward)
            **(
                {"length_reward": np.mean(every["bonus"])}
                if args.length_reward != "none" or args.repetition_penalty
                else {}
            ),
        }
        logger.log(metrics, step)
        pbar.set_postfix(
            reward=f"{metrics['reward']:.2f}",
            acc=f"{metrics['accuracy']:.2f}",
            len=f"{lengths.mean():.1f}",
        )
        # 6. checkpoint (before eval, so a resumed run's RNG continues exactly like an uninterrupted one's), eval
        if step % args.save_every == 0 or step == args.total_steps:
            save_checkpoint(
                ckpt_dir,
                model,
                opt,
                sched,
                step,
                extra={"data_position": step * args.prompts_per_step},
            )
        if step % args.eval_every == 0 or step == args.total_steps:
            after = run_eval(step)
    export_pretrained(model, tok, out_dir / "model")
    if dist.is_main:
        logger.plot(
            ["reward", "accuracy", "completions/mean_length", "eval/accuracy_sampled"],
            out_dir / "curves.png",
        )
        keys = [
            "eval/accuracy_greedy",
            "eval/accuracy_sampled",
            f"eval/pass@{args.eval_samples}",
            "eval/mean_length",
        ]
        table = [
            {"": name, **{k[5:]: d.get(k, float("nan")) for k in keys}}
            for name, d in (("before RL", before), (f"after {args.total_steps} steps", after))
        ]
        print0("\n" + format_table(table))
        # the paper's claim on the toy: RL raises held-out accuracy over the base
        claims = [
            claim(
                f"held-out {how} accuracy rises over the base",
                f"eval/accuracy_{how}",
                before.get(f"eval/accuracy_{how}", float("nan")),
                after.get(f"eval/accuracy_{how}", float("nan")),
            )
            for how in ("greedy", "sampled")
        ]
        print0("\n" + format_claims(claims))
        write_summary(out_dir, claims, before=before, after=after, steps=args.total_steps)
        print0(
            f"metrics: {logger.path}  curves: {out_dir / 'curves.png'}  model: {out_dir / 'model'}"
        )
    logger.close()
    cleanup_distributed()


def eval_only(args, suite):
    """`--eval_only`: SimpleRL-Zoo's six benchmarks, asked with the training template."""
    template = "abel" if args.prompt_template == "abel" else "qwen-boxed"
    model_path = args.model or warm_start_base(args, load_task_rows(args)[0], template)
    prompt = lambda q, tok: make_prompt(q, template)  # noqa: E731
    evaluate_model(
        suite, model_path, prompt, args.sampler, args.output_dir, args.seed, is_toy=not args.model
    )


if __name__ == "__main__":
    cli_args, suite_args = parse_config(Args, PAPER, derived, extra=(EvalArgs,))
    if suite_args.eval_only:  # common/evaluation.py: SimpleRL-Zoo's six-benchmark evaluation
        eval_only(cli_args, suite_args)
    else:
        main(cli_args)
