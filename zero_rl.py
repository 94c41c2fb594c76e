"""Zero RL (docs/zero_rl.md): GRPO from a base model with a correctness-only reward.

Paper: "SimpleRL-Zoo: Investigating and Taming Zero Reinforcement Learning for Open Base Models
in the Wild" (Zeng et al., arXiv 2503.18892); optional length-aware rewards from the
efficient-reasoning surveys (arXiv 2503.21614, 2503.16419), each as its own paper defines it.

Idea: RL straight from a base model (no SFT). Sample G=8 answers per question, reward 1 for a
correct final answer and 0 otherwise (format not enforced), normalise rewards within each group
(GRPO), update with PPO-clip averaged over the valid tokens of the mini-batch plus a tiny k3 KL to
the frozen base. RL sharpens what the base can already do; the paper tracks accuracy, response
length, clip ratio, pass@k and the share of responses showing reasoning behaviours.

Departures (from the paper and its released verl code, hkust-nlp/simpleRL-reason):
- CPU default = a toy: a 2-layer tiny Qwen2 "base" (a short, cached SFT on noisy demonstrations of
  sorting four digits, never on the held-out prompts; common/sort_digits.py) asked through the
  paper's qwen-boxed template, graded by the paper's grader. Scale-dependent defaults (batch, lr,
  lengths, steps) are the toy's; the help strings and PAPER give the paper's values.
- Old log-probs come from the sampler (HF generate records the model's own) on CPU, where they
  equal the trainer's forward; on CUDA (bf16) and with `--sampler vllm` the trainer recomputes them.
- The loss forward computes each prompt once for its G responses (a shared KV cache): exact.
- Reasoning behaviours: a keyword stand-in (the paper rejects keyword counts and labels with
  GPT-4o); `--judge_model` (any model) labels the first sample of each held-out prompt.
- FSDP2: every rank samples its own prompts; all rewards are gathered before the group
  normalisation (verl gathers on its driver); weights go to vLLM tensor by tensor. Precision:
  fp32 master weights and AdamW state, bf16 compute on CUDA, the reference model in bf16.
- Loss: the default `--loss_type dapo` is the token mean over the whole mini-batch the paper
  describes (DAPO's rule); the released verl code averages token means per micro-batch, `--loss_type
  verl` (the two agree when a mini-batch is one micro-batch on one rank).
- Data: release formats (SimpleRL-Zoo-Data parquet, MATH, GSM8K) need no field flags; prompts
  over `--max_prompt_length` are dropped (as verl). Held-out evaluation during training: greedy
  plus `--eval_samples` samples at T=1.0, top-p 0.95 (the paper's RL setting); the paper's six
  benchmarks are `--eval_only`.
- Length rewards (not in SimpleRL-Zoo; `--length_reward`) combine with correctness as their papers
  do (total_rewards). Kimi's weight and warm-up are unpublished (`--length_reward_coef` 1,
  `--length_reward_warmup_steps` 0). The cosine paper's per-token repetition penalty is summed
  into the one reward per response.
- Countdown: TinyZero's qwen-instruct prompt (ChatML text, "<think>" prefill) by default; its base
  prompt is `--prompt_template countdown-base`.

Commands (naming --model selects the paper preset, PAPER below; flags you pass win; --print_config
shows the effective configuration and per-rank sizes without loading anything):
    python zero_rl.py                                  # CPU toy, about 1-2 minutes on 2 cores
    python zero_rl.py --model Qwen/Qwen2.5-0.5B \\
        --data simplerl/simplelr_qwen_level1to4/train.parquet \\
        --prompts_per_step 64 --mini_batch_prompts 16 --micro_batch_size 8 --max_new_tokens 2048
    torchrun --nproc_per_node=8 zero_rl.py --model Qwen/Qwen2.5-0.5B \\
        --data simplerl/simplelr_qwen_level3to5/train.parquet --sampler vllm --eval_every 10
    python zero_rl.py --model Qwen/Qwen2.5-0.5B --print_config --world_size 8
(simplerl/ = `huggingface-cli download hkust-nlp/SimpleRL-Zoo-Data --repo-type dataset
--local-dir simplerl`)
"""

import random
import time
from dataclasses import asdict, dataclass
from functools import partial
from pathlib import Path
from typing import Literal, get_args

import numpy as np
import torch
from tqdm import tqdm

from common import grpo_plumbing as P
from common import rewards as R
from common.claims import claim
from common.config import arg, parse_config, per_rank
from common.data import parse_range
from common.evaluation import EvalArgs, heldout_eval, load_judge
from common.models import load_tokenizer
from common.sampling import VLLMArgs, old_logprobs_need_recompute, render_prompt
from common.sort_digits import warm_start_base
from common.train import (
    MetricsLogger,
    all_gather_object,
    barrier,
    cleanup_distributed,
    clip_grad_norm,
    init_distributed,
    save_checkpoint,
    seed_everything,
)

Template = Literal["auto", "qwen-boxed", "abel", "countdown", "countdown-base"]
LossType = Literal["dapo", "verl", "bnpo", "grpo", "dr_grpo"]
LengthReward = Literal["none", "kimi", "cosine", "l1_exact", "l1_max", "dapo_overlong"]


@dataclass
class Args(VLLMArgs):
    # --- generic
    seed: int = arg(1, "random seed (each rank samples with seed + rank)")
    output_dir: str = arg("runs/zero_rl", "metrics, curves.png, summary.json, checkpoint/, model/")
    model: str = arg("", "hub id or local folder of the base model; empty = the toy's (cached)")
    data: str = arg("", "hub id or local file/folder (SimpleRL-Zoo-Data); empty = the toy's rows")
    data_split: str = arg("train", "split of --data")
    eval_data: str = arg("", "held-out rows; empty = the last --num_eval_prompts of --data")
    question_field: str = arg("question", "field holding the question")
    answer_field: str = arg("answer", "field holding the gold answer")
    level_field: str = arg("level", "difficulty field for --levels (int or 'Level 3')")
    levels: str = arg("", "keep rows whose level is in range, e.g. 3-5 (the paper's Hard tier)")
    task: Literal["math", "countdown"] = arg("math", "math (SimpleRL) | countdown (TinyZero)")
    prompt_template: Template = arg("auto", "make_prompt; auto: countdown or qwen-boxed by --task")
    sampler: Literal["hf", "vllm"] = arg("hf", "hf (transformers generate) | vllm (colocated)")
    gradient_checkpointing: bool = arg(False, "recompute layers in backward; paper preset: True")
    track: bool = arg(False, "log to Weights & Biases")
    resume: bool = arg(False, "continue from output_dir/checkpoint")
    save_every: int = arg(50, "checkpoint every N steps (and at the end)")
    # --- algorithm (paper App. B.5; "script": simpleRL-reason train_grpo_math_tune_ray.sh)
    total_steps: int = arg(60, "rollout steps; paper: 100 (App. B.5; about 150 for 24B, 32B)")
    prompts_per_step: int = arg(16, "prompts per rollout batch, all ranks; paper: 1024 (App. B.5)")
    group_size: int = arg(8, "samples per prompt G; paper: 8 (App. B.5; App. G: N<=4 unstable)")
    mini_batch_prompts: int = arg(4, "prompts per optimizer update; paper: 256 (App. B.5)")
    micro_batch_size: int = arg(0, "completions per backward per rank (0: all); paper: 2 (script)")
    lr: float = arg(1e-3, "constant learning rate; paper: 5e-7 (script; not in the paper)")
    max_new_tokens: int = arg(16, "max response tokens; paper: 8192 (App. B.5)")
    max_prompt_length: int = arg(1024, "drop longer training prompts; paper: 1024 (script)")
    temperature: float = arg(1.0, "rollout temperature; paper: 1.0 (App. B.5, App. G)")
    top_p: float = arg(1.0, "rollout top-p; paper: 1.0 (App. B.5)")
    clip_eps: float = arg(0.2, "PPO clip epsilon; paper: 0.2 (script)")
    clip_eps_high: float = arg(0.0, "upper clip epsilon (DAPO clip-higher: 0.28); 0 = --clip_eps")
    loss_type: LossType = arg("dapo", "token-loss aggregation, see aggregate_loss")
    beta: float = arg(1e-4, "k3 KL weight; paper: 1e-4 (App. B.5; 1e-3 above 14B); 0 = no ref")
    entropy_coef: float = arg(0.001, "entropy bonus (script: 0.001)")
    max_grad_norm: float = arg(1.0, "gradient clipping (script: 1.0)")
    mask_truncated: bool = arg(False, "no loss on truncated responses (script: remove_clip False)")
    recompute_old_logprobs: bool = arg(False, "recompute old log-probs (always on vLLM or CUDA)")
    reward_mode: Literal["mix", "independent"] = arg(
        "mix", "mix: 1 / 0 (paper) | independent: 1, 0.5, -0.5, --format_penalty (Sec. 3.1)"
    )
    format_penalty: float = arg(-1.0, "reward of a wrong unboxed answer (independent)")
    length_reward: LengthReward = arg("none", "length-aware reward, see total_rewards")
    length_reward_coef: float = arg(1.0, "weight of the kimi / dapo_overlong term")
    l1_budget: str = arg("100-4000", "L1 token budget range n_gold ~ U{a..b} (L1: 100-4000)")
    overlong_buffer: int = arg(4096, "DAPO overlong buffer L_c (DAPO: 4096)")
    length_reward_warmup_steps: int = arg(0, "steps without the length reward (Kimi k1.5)")
    repetition_penalty: float = arg(0.0, "per repeated-n-gram token (Yeo et al.: -0.05); 0 = off")
    repetition_ngram_size: int = arg(40, "n of --repetition_penalty (Yeo et al.'s scripts: 40)")
    scale_rewards_by_std: bool | None = arg(None, "divide advantages by the group std (see code)")
    # --- evaluation and reasoning behaviours
    eval_every: int = arg(20, "evaluate every N steps (and before and after training)")
    num_eval_prompts: int = arg(128, "held-out eval prompts (toy: never in warm start or RL)")
    eval_samples: int = arg(4, "samples per eval prompt for sampled accuracy and pass@k")
    eval_temperature: float = arg(1.0, "eval temperature; paper: 1.0 (Table 1 note)")
    eval_top_p: float = arg(0.95, "eval top-p; paper: 0.95 (Table 1 note)")
    judge_model: str = arg("", "model labelling reasoning behaviours (the paper used GPT-4o)")
    judge_max_new_tokens: int = arg(256, "max tokens of a judge reply")
    # --- toy base model (when --model is empty)
    warm_start_steps: int = arg(400, "toy only: SFT steps that give the tiny model its competence")
    warm_start_noise: float = arg(0.6, "toy only: share of demonstrations with a wrong answer")


# The paper's values (App. B.5 and the SimpleRL script), used with --preset paper (the default
# once --model is named); the defaults above are the toy's. A command-line flag wins over both.
PAPER = dict(
    total_steps=100,  # App. B.5
    prompts_per_step=1024,  # App. B.5
    mini_batch_prompts=256,  # App. B.5: 4 updates per rollout batch
    micro_batch_size=2,  # SimpleRL script: 2 per GPU
    lr=5e-7,  # SimpleRL script default, constant
    max_new_tokens=8192,  # App. B.5
    gradient_checkpointing=True,  # not in the paper: bounds activation memory at long sequences
)


def derived(args, world_size: int) -> dict:
    """Per-rank sizes implied by the global ones; raises naming the flags when they do not fit
    (and when --overlong_buffer or --length_reward_coef does not fit --length_reward)."""
    flags = (args.max_new_tokens, [1], args.overlong_buffer, args.length_reward_coef)
    total_rewards(args.length_reward, [0.0], [False], [1], 1, *flags)
    if args.prompts_per_step % args.mini_batch_prompts:
        raise ValueError(
            f"--prompts_per_step {args.prompts_per_step} must be a multiple of "
            f"--mini_batch_prompts {args.mini_batch_prompts}"
        )
    local_mb = per_rank(args.mini_batch_prompts, world_size, "--mini_batch_prompts")
    local_mb *= args.group_size
    return dict(
        prompts_per_rank=per_rank(args.prompts_per_step, world_size, "--prompts_per_step"),
        updates_per_rollout=args.prompts_per_step // args.mini_batch_prompts,
        completions_per_update_per_rank=local_mb,
        micro_batches_per_update=-(-local_mb // (args.micro_batch_size or local_mb)),
    )


# ------------------------------------------------------------------------------------------------
# ALGO LOGIC: the paper's equations as small pure functions


def grpo_advantages(rewards: torch.Tensor, group_size: int, scale_by_std: bool = True):
    """GRPO advantages per group of G consecutive samples (verl `compute_grpo_outcome_advantage`,
    as run by SimpleRL-Zoo): A_i = (r_i - mean_g) / (std_g + 1e-6), unbiased std; a group of one
    gets mean 0 and std 1 (verl). `scale_by_std=False` is Dr. GRPO (Liu et al., arXiv 2503.20783;
    sail-sg/understand-r1-zero `compute_monte_carlo_advantages`): A_i = r_i - mean_g, since the
    std weighs too-easy and too-hard questions up (a question-level difficulty bias)."""
    if rewards.numel() % group_size:
        raise ValueError(f"{rewards.numel()} rewards do not split into groups of {group_size}")
    groups = rewards.double().view(-1, group_size)  # (P, G); float32 would give 0.7 -> 0.056
    if group_size == 1:
        mean, std = torch.zeros_like(groups), torch.ones_like(groups)
    else:
        mean, std = groups.mean(1, keepdim=True), groups.std(1, keepdim=True)  # unbiased std
    if not scale_by_std:
        return (groups - mean).view(-1).float()  # (P*G,)
    return ((groups - mean) / (std + 1e-6)).view(-1).float()  # (P*G,)


def ppo_clip_loss(logps, old_logps, advantages, eps_low=0.2, eps_high=0.2):
    """PPO-clip per token: -min(rho A, clip(rho, 1 - eps_low, 1 + eps_high) A), rho = p / p_old."""
    ratio = torch.exp(logps - old_logps)  # (B, T)
    adv = advantages.unsqueeze(-1)  # (B, 1)
    loss = -torch.min(ratio * adv, torch.clamp(ratio, 1 - eps_low, 1 + eps_high) * adv)  # (B, T)
    return loss, ratio


def k3_kl(logps, ref_logps):
    """k3 KL estimator exp(ref - logp) - (ref - logp) - 1, clamped to [-10, 10] (verl)."""
    delta = ref_logps - logps
    return torch.clamp(torch.exp(delta) - delta - 1, -10.0, 10.0)


def aggregate_loss(
    per_token, mask, loss_type, max_len, num_tokens=None, num_seqs=None, num_micro=1
):
    """Reduce a (B, T) per-token loss to a scalar. `num_tokens` / `num_seqs`: the normalisers of
    the whole mini-batch when it is split into micro-batches (default: this micro-batch's own);
    `num_micro`: the micro-batches of this rank's mini-batch (verl only).
    dapo    token mean over all valid tokens of the mini-batch, every token weighs the same (DAPO,
            arXiv 2503.14476, Sec. 3.3, the rule the SimpleRL-Zoo paper describes). The caller
            passes the global token count / world size; FSDP's gradient mean gives the global mean.
    verl    token mean of each micro-batch / micro-batches (SimpleRL-Zoo's released verl:
            `dp_actor.update_policy` takes `masked_mean` per micro-batch, then divides by the
            gradient accumulation). A micro-batch with few tokens weighs them more.
    bnpo    token mean over this rank's mini-batch (TRL bnpo)
    grpo    per-sequence token mean, then the mean over sequences (GRPO; favours short answers)
    dr_grpo token sum / (sequences * max completion length) (Dr. GRPO: no length bias)"""
    mask = mask.to(per_token.dtype)
    num_seqs = num_seqs or mask.shape[0]
    if loss_type in ("dapo", "bnpo"):
        return (per_token * mask).sum() / max(float(num_tokens or mask.sum()), 1.0)
    if loss_type == "verl":
        return (per_token * mask).sum() / max(float(mask.sum()), 1.0) / num_micro
    if loss_type == "grpo":
        return ((per_token * mask).sum(-1) / mask.sum(-1).clamp(min=1.0)).sum() / num_seqs
    if loss_type == "dr_grpo":
        return (per_token * mask).sum() / (num_seqs * max_len)
    raise ValueError(f"--loss_type must be dapo, verl, bnpo, grpo or dr_grpo, got {loss_type!r}")


WHOLE_REWARD = ("cosine", "l1_exact", "l1_max")  # their formula already pays for correctness


def length_rewards(kind, lengths, correct, group_size, max_len, budgets=None, buffer=4096):
    """Each length reward's own formula (common.rewards), one per completion, groups of G
    consecutive. Kimi k1.5 (arXiv 2501.12599, Sec. 2.3.3), per group: lambda = 0.5 - (L - Lmin) /
    (Lmax - Lmin); lambda if correct, else min(0, lambda). Cosine (Yeo et al., arXiv 2502.03373),
    L1 exact / max (LCPO, arXiv 2503.04697) and DAPO's soft overlong punishment (arXiv 2503.14476,
    Sec. 3.4) as common.rewards writes them."""
    if kind == "none":
        return [0.0] * len(lengths)
    if kind == "kimi":
        spans = [slice(s, s + group_size) for s in range(0, len(lengths), group_size)]
        return [r for g in spans for r in R.kimi_length_reward(lengths[g], correct[g])]
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
    raise ValueError(f"--length_reward must be {'|'.join(get_args(LengthReward))}, got {kind!r}")


def total_rewards(
    kind, task, correct, lengths, G, max_len, budgets=None, buffer=4096, coef=1.0, repetition=None
):
    """The reward GRPO normalises, one per completion. A length reward meets correctness as its
    paper says:
      none           the task reward (SimpleRL-Zoo: 1 correct, 0 wrong)
      kimi           task reward + coef * Kimi's length reward (Kimi k1.5 Sec. 2.3.3: a sum)
      dapo_overlong  task reward + coef * overlong penalty (DAPO Sec. 3.4)
      cosine, l1_*   the length reward alone: its formula already pays for correctness, so the
                     task reward (and its other levels: countdown's 0.1, --reward_mode
                     independent) is not added again.
    `repetition`: one n-gram repetition penalty (<= 0) per completion, added last (Yeo et al.
    pair it with the cosine reward; common.rewards.repetition_penalty)."""
    if not len(task) == len(correct) == len(lengths):
        raise ValueError(
            f"{len(task)} task rewards, {len(correct)} correctness flags and "
            f"{len(lengths)} lengths: need one of each per completion"
        )
    if kind in WHOLE_REWARD and coef != 1.0:
        raise ValueError(
            f"--length_reward_coef {coef} has no effect with --length_reward {kind}: "
            "cosine and L1 are the whole reward (only kimi, dapo_overlong add a term)"
        )
    length = length_rewards(kind, lengths, correct, G, max_len, budgets, buffer)
    if kind in WHOLE_REWARD:
        total = list(length)
    else:
        total = [t + coef * extra for t, extra in zip(task, length)]
    if repetition is not None:
        total = [t + p for t, p in zip(total, repetition)]
    return [float(t) for t in total]


def length_reward_at(args, step):
    """The length reward in force at rollout step `step` (1-based): none for the first
    --length_reward_warmup_steps steps (Kimi k1.5 Sec. 2.3.3: the length penalty slows early
    training, so they first train without it), then --length_reward."""
    return args.length_reward if step > args.length_reward_warmup_steps else "none"


def scales_by_std(args) -> bool:
    """Divide advantages by the group std? Not for --loss_type dr_grpo (Dr. GRPO drops both the
    std and the length normaliser), unless --scale_rewards_by_std says so."""
    if args.scale_rewards_by_std is None:
        return args.loss_type != "dr_grpo"
    return args.scale_rewards_by_std


# ------------------------------------------------------------------------------------------------
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


def resolve_template(args) -> str:
    if args.prompt_template == "auto":
        return "countdown" if args.task == "countdown" else "qwen-boxed"
    return args.prompt_template


def encode_prompt(tok, prompt) -> list[int]:
    return tok(render_prompt(tok, prompt), add_special_tokens=False).input_ids


def score(text: str, row: dict, args) -> tuple[float, bool, bool]:
    """(task reward, correct, an answer was found). Never raises on garbage text."""
    if args.task == "countdown":
        reward = R.countdown_reward(text, row["target"], row["nums"])
        return reward, reward == 1.0, reward > 0.0  # 0.1 = a well-formed but wrong equation
    reward = R.correctness_reward(text, row["answer"], args.reward_mode, args.format_penalty)
    return reward, reward > 0.0, R.extract_answer(text) is not None  # independent: > 0 is correct


def score_all(texts: list[str], rows: list[dict], args) -> list[tuple[float, bool, bool]]:
    """`score` of many responses; math answers graded in parallel (rewards.math_equal_batch)."""
    if args.task == "countdown":
        return [score(t, r, args) for t, r in zip(texts, rows)]
    golds = [r["answer"] for r in rows]
    rewards = R.correctness_reward_batch(texts, golds, args.reward_mode, args.format_penalty)
    return [(rw, rw > 0.0, R.extract_answer(t) is not None) for rw, t in zip(rewards, texts)]


# ------------------------------------------------------------------------------------------------
# evaluation, rollouts, the update, the loop


def correct_flags(texts: list[str], rows: list[dict], args) -> list[bool]:
    return [correct for _, correct, _ in score_all(texts, rows, args)]


@torch.no_grad()
def evaluate(sampler, eval_rows, args, dist_info, template, judge=None):
    """Held-out greedy / sampled accuracy, pass@k, length and reasoning behaviours
    (common.evaluation.heldout_eval), asked with the training prompt, graded as in training."""
    prompt, grade = partial(make_prompt, template=template), partial(correct_flags, args=args)
    sampling = dict(temperature=args.eval_temperature, top_p=args.eval_top_p)
    sampling["max_new_tokens"] = args.max_new_tokens
    k, gather, judge_tokens = args.eval_samples, all_gather_object, args.judge_max_new_tokens
    return heldout_eval(
        sampler, eval_rows, prompt, grade, dist_info, gather, k, sampling, judge, judge_tokens
    )


def step_rows(args, train_rows, first, count, orders) -> list[tuple[dict, int | None]]:
    """(row, L1 budget) of data positions first .. first + count - 1. An epoch's order is a function
    of (seed, epoch) and a budget of (seed, position), so resuming needs only the step."""
    l1 = args.length_reward.startswith("l1")
    lo, hi = parse_range(args.l1_budget, "--l1_budget") if l1 else (0, 0)
    out = []
    for pos in range(first, first + count):
        epoch, i = divmod(pos, len(train_rows))
        if epoch not in orders:
            orders[epoch] = np.random.RandomState(args.seed + epoch).permutation(len(train_rows))
        budget = random.Random(args.seed * 1_000_003 + pos).randint(lo, hi)  # L1's n_gold
        out.append((train_rows[orders[epoch][i]], budget if l1 else None))
    return out


def rollouts(args, train_rows, template, sampler, tok, dist_info, start_step):
    """Yield each step's Rollout (nanochat's get_batch): this rank's prompts, G samples each,
    scored by the task reward, as padded tensors on the training device."""
    G, orders = args.group_size, {}
    local = args.prompts_per_step // dist_info.world_size
    for step in range(start_step + 1, args.total_steps + 1):
        started = time.perf_counter()
        first = (step - 1) * args.prompts_per_step + dist_info.rank * local
        batch = step_rows(args, train_rows, first, local, orders)
        prompts = [make_prompt(r["question"], template, b, args.length_reward) for r, b in batch]
        groups = sampler.generate(prompts, G, args.temperature, args.top_p, args.max_new_tokens)
        sampler.sleep()  # vLLM frees its memory for the update
        comps = [c for g in groups for c in g]
        times = (started, time.perf_counter() - started)  # (step start, seconds sampling)
        per_completion = [x for x in batch for _ in range(G)]  # (row, budget) of each completion
        scored = score_all([c.text for c in comps], [r for r, _ in per_completion], args)
        prompt_ids = [encode_prompt(tok, p) for p in prompts]
        budgets = [b for _, b in per_completion]
        device, mask_truncated = dist_info.device, args.mask_truncated
        yield P.make_rollout(tok, prompt_ids, comps, scored, budgets, mask_truncated, device, times)


def step_rewards(args, rollout: P.Rollout, step: int) -> list[float]:
    """The reward GRPO normalises (total_rewards), with the length reward in force at `step`."""
    repeats = None
    if args.repetition_penalty:
        size, penalty = args.repetition_ngram_size, args.repetition_penalty
        repeats = [R.repetition_penalty(ids, size, penalty) for ids in rollout.token_ids]
    lengths = [len(ids) for ids in rollout.token_ids]
    kind, G, max_len = length_reward_at(args, step), args.group_size, args.max_new_tokens
    task, correct, budgets = rollout.task_rewards, rollout.correct, rollout.budgets
    buffer, coef = args.overlong_buffer, args.length_reward_coef
    return total_rewards(kind, task, correct, lengths, G, max_len, budgets, buffer, coef, repeats)


def ppo_update(model, opt, sched, rollout, advantages, old_logps, ref_logps, args, world):
    """Several mini-batch updates per rollout, gradient accumulation over micro-batches. Returns
    what the metrics need: each micro-batch's (mask, entropy, ratio, kl, advantages), detached,
    each update's (micro-batch losses, gradient norm), and the seconds it took."""
    started = time.perf_counter()
    model.train()  # gradient checkpointing acts in train mode only (the sampler may set eval)
    G, eps_high = args.group_size, args.clip_eps_high or args.clip_eps
    B, local_mb = advantages.shape[0], args.mini_batch_prompts // world * G
    micro, updates = [], []
    for lo in range(0, B, local_mb):
        hi = lo + local_mb
        num_tokens = float(rollout.loss_mask[lo:hi].sum())
        if args.loss_type == "dapo":  # the mini-batch of all ranks; FSDP averages, hence / world
            num_tokens = sum(all_gather_object(num_tokens)) / world
        n_micro = len(range(lo, hi, args.micro_batch_size or hi - lo))  # verl's accumulation
        losses = []
        for s, e, t in P.micro_spans(lo, hi, args.micro_batch_size, rollout.response_mask):
            logps, entropy = P.rollout_logprobs(model, rollout, G, s, e, t, entropy=True)  # (b, t)
            mask, adv = rollout.loss_mask[s:e, :t], advantages[s:e]
            old = old_logps[s:e, :t]
            per_token, ratio = ppo_clip_loss(logps, old, adv, args.clip_eps, eps_high)  # (b, t)
            kl = None
            if ref_logps is not None:
                kl = k3_kl(logps, ref_logps[s:e, :t])  # (b, t)
                per_token = per_token + args.beta * kl
            per_token = per_token - args.entropy_coef * entropy
            loss = aggregate_loss(
                per_token, mask, args.loss_type, args.max_new_tokens, num_tokens, hi - lo, n_micro
            )
            loss.backward()
            losses.append(float(loss))
            kl = None if kl is None else kl.detach()
            micro.append((mask, entropy.detach(), ratio.detach(), kl, adv))
        grad_norm = clip_grad_norm(model, args.max_grad_norm)  # before clipping
        opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)
        updates.append((losses, grad_norm))
    return micro, updates, time.perf_counter() - started


def training_rows(args, rows, tok, template) -> list[dict]:
    """--data rows whose prompt fits --max_prompt_length (verl drops the others); toy rows fit."""
    if args.data:
        fits = [len(encode_prompt(tok, make_prompt(r["question"], template))) for r in rows]
        rows = [r for r, n in zip(rows, fits) if n <= args.max_prompt_length]
    if len(rows) < args.prompts_per_step:
        raise ValueError(
            f"only {len(rows)} training rows for --prompts_per_step {args.prompts_per_step}"
        )
    return rows


def claims(before: dict, after: dict) -> list[dict]:
    """The paper's claim on the toy: RL raises held-out (greedy, sampled) accuracy over the base."""
    nan, hows = float("nan"), ("greedy", "sampled")
    named = [(f"held-out {h} accuracy rises over the base", f"eval/accuracy_{h}") for h in hows]
    return [claim(name, m, before.get(m, nan), after.get(m, nan)) for name, m in named]


def main(args):
    dist_info = init_distributed()
    G, rank, world = args.group_size, dist_info.rank, dist_info.world_size
    derived(args, world)  # batch sizes or length-reward flags that do not fit fail here
    template = resolve_template(args)
    train_rows, eval_rows = P.load_task_rows(args)
    if not args.model and dist_info.is_main:  # the toy base: rank 0 builds it, the others wait
        warm_start_base(args, train_rows, template, make_prompt)
    barrier()
    model_path = args.model or warm_start_base(args, train_rows, template, make_prompt)
    tok = load_tokenizer(model_path)
    train_rows = training_rows(args, train_rows, tok, template)
    model, ref_model, opt, sched, sampler = P.load_policy(args, model_path, tok, dist_info)
    device = dist_info.device
    recompute = args.recompute_old_logprobs or old_logprobs_need_recompute(sampler, device)
    judge = load_judge(args.judge_model, device) if args.judge_model else None
    seed_everything(args.seed + rank)  # ranks sample differently; a checkpoint's RNG wins
    start_step = P.resume_step(args.output_dir, args.resume, model, opt, sched, sampler)
    out_dir = Path(args.output_dir)
    resumed = start_step if args.resume else None
    logger = MetricsLogger(out_dir, args.track, "zero_rl", asdict(args), resumed)
    inputs = (sampler, eval_rows, args, dist_info, template, judge)
    evaluation = partial(P.log_eval, evaluate, inputs, logger)  # evaluation(step)
    history = [r for r in logger.history if r["step"] == 0 and "eval/mean_length" in r]
    before = after = evaluation(0) if start_step == 0 else (history or [{}])[0]
    batches = rollouts(args, train_rows, template, sampler, tok, dist_info, start_step)
    steps = range(start_step + 1, args.total_steps + 1)
    bar = tqdm(steps, "zero RL", args.total_steps, initial=start_step, disable=rank > 0)
    for step in bar:
        # 1. rollout: G samples for each of this rank's prompts, scored by the task reward
        rollout = next(batches)
        # 2. rewards: the task reward plus any length reward, gathered from all ranks
        rewards = step_rewards(args, rollout, step)
        every = P.gather_stats(rollout, rewards)
        # 3. advantages: normalised within each group of G, then this rank's slice
        advantages = grpo_advantages(torch.tensor(every["reward"]), G, scales_by_std(args))
        advantages = advantages.view(world, -1)[rank].to(device)  # (B,): ranks hold equal B
        # 4. update: PPO-clip + beta k3 KL - entropy bonus, mini-batches of micro-batches
        old, ref = P.old_and_ref_logprobs(model, ref_model, rollout, recompute, args)  # (B, T)
        update = ppo_update(model, opt, sched, rollout, advantages, old, ref, args, world)
        sampler.sync_weights(model)  # vLLM: the next rollout samples the updated policy
        # 5. metrics, after the update
        lr, clip = sched.get_last_lr()[0], (args.clip_eps, args.clip_eps_high or args.clip_eps)
        bonus = args.length_reward != "none" or bool(args.repetition_penalty)
        metrics = P.step_metrics(every, update, rollout, lr, world, G, clip, bonus)
        logger.log(metrics, step)
        bar.set_postfix(reward=f"{metrics['reward']:.2f}", acc=f"{metrics['accuracy']:.2f}")
        # 6. checkpoint (before the eval, whose sampling moves the RNG), evaluate
        if step % args.save_every == 0 or step == args.total_steps:
            position = {"data_position": step * args.prompts_per_step}
            save_checkpoint(out_dir / "checkpoint", model, opt, sched, step, extra=position)
        if step % args.eval_every == 0 or step == args.total_steps:
            after = evaluation(step)
    found = claims(before, after)
    P.write_report(args, model, tok, logger, before, after, found, dist_info.is_main)
    logger.close()
    cleanup_distributed()


if __name__ == "__main__":
    cli_args, suite_args = parse_config(Args, PAPER, derived, extra=(EvalArgs,))
    if suite_args.eval_only:  # common/evaluation.py: SimpleRL-Zoo's six-benchmark evaluation
        P.eval_only(cli_args, suite_args, make_prompt)
    else:
        main(cli_args)
