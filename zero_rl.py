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
  sorting four digits, never on the held-out prompts; common/sort_digits.py) answers through the
  paper's qwen-boxed template and is graded by the paper's grader. Scale-dependent defaults (batch,
  lr, lengths, steps) are the toy's; the help strings and PAPER give the paper's values.
- Old log-probs come from the sampler (HF generate records the model's own) on CPU, where they
  equal the trainer's forward; on CUDA (bf16) and with `--sampler vllm` the trainer recomputes them.
- The loss forward computes each prompt once for its G responses (a shared KV cache): exact.
- Reasoning behaviours: a keyword detector is the stand-in labeller (the paper rejects keyword
  counts and labels with GPT-4o); `--judge_model` labels the first sample of each held-out prompt
  with any local/hub model.
- FSDP2: every rank samples its own prompts; all rewards are gathered before the group
  normalisation (verl gathers on its driver). Weights go to vLLM tensor by tensor
  (DTensor.full_tensor). Precision: common.train's policy (fp32 master weights and AdamW state; bf16
  compute on CUDA, the reference model held in bf16).
- Loss aggregation: the default `--loss_type dapo` is the token mean over the whole mini-batch that
  the paper describes (DAPO's rule); the released verl code averages token means per micro-batch,
  `--loss_type verl` (the two agree when a mini-batch is one micro-batch on one rank).
- Held-out evaluation during training: `--eval_samples` samples per prompt at T=1.0, top-p 0.95
  (the paper's RL-model setting) plus greedy; the six-benchmark suite is `--eval_only`.
- Length rewards (not in SimpleRL-Zoo; `--length_reward`, off by default) combine with correctness
  as their papers do (total_rewards). Kimi's weight and warm-up length are unpublished
  (`--length_reward_coef` 1, `--length_reward_warmup_steps` 0). The cosine paper's repetition
  penalty is per token under PPO; GRPO has one reward per response, so the penalties are summed.
- Countdown: TinyZero's qwen-instruct prompt (ChatML text with its "<think>" prefill) is the
  default; TinyZero's base prompt is `--prompt_template countdown-base`.

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
import re
import time
from dataclasses import asdict, dataclass
from functools import partial
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from tqdm import tqdm

from common import rewards as R
from common.benchmarks import load_math_rows
from common.claims import claim, format_claims, write_summary
from common.config import arg, parse_config, per_rank
from common.data import load_rows
from common.evaluation import EvalArgs, evaluate_model, heldout_eval
from common.models import load_model, load_tokenizer
from common.sampling import (
    HFSampler,
    VLLMArgs,
    make_sampler,
    old_logprobs_need_recompute,
    render_prompt,
)
from common.sort_digits import TOY_HELD_OUT, make_toy_rows, toy_demo, train_noisy_base
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
    plain_lm_head,
    precision_policy,
    print0,
    save_checkpoint,
    seed_everything,
    shard_model,
    token_logprobs,
)


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
    prompt_template: Literal["auto", "qwen-boxed", "abel", "countdown", "countdown-base"] = arg(
        "auto", "see make_prompt; auto = countdown for --task countdown, else qwen-boxed"
    )
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
    loss_type: Literal["dapo", "verl", "bnpo", "grpo", "dr_grpo"] = arg(
        "dapo", "token-loss aggregation, see aggregate_loss"
    )
    beta: float = arg(1e-4, "k3 KL weight; paper: 1e-4 (App. B.5; 1e-3 above 14B); 0 = no ref")
    entropy_coef: float = arg(0.001, "entropy bonus (script: 0.001)")
    max_grad_norm: float = arg(1.0, "gradient clipping (script: 1.0)")
    mask_truncated: bool = arg(False, "no loss on truncated responses (script: remove_clip False)")
    recompute_old_logprobs: bool = arg(False, "recompute old log-probs (always on vLLM or CUDA)")
    reward_mode: Literal["mix", "independent"] = arg(
        "mix", "mix: 1 / 0 (paper) | independent: 1, 0.5, -0.5, --format_penalty (Sec. 3.1)"
    )
    format_penalty: float = arg(-1.0, "reward of a wrong unboxed answer (independent)")
    length_reward: Literal["none", "kimi", "cosine", "l1_exact", "l1_max", "dapo_overlong"] = arg(
        "none", "length-aware reward, combined with correctness as its paper does: total_rewards"
    )
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
    per_token_loss, mask, loss_type, max_len, num_tokens=None, num_seqs=None, num_micro=1
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
        return (per_token_loss * mask).sum() / (num_seqs * max_len)
    raise ValueError(f"--loss_type must be dapo, verl, bnpo, grpo or dr_grpo, got {loss_type!r}")


LENGTH_REWARDS = ("none", "kimi", "cosine", "l1_exact", "l1_max", "dapo_overlong")
WHOLE_REWARD = ("cosine", "l1_exact", "l1_max")  # their formula already pays for correctness


def length_rewards(kind, lengths, correct, group_size, max_len, budgets=None, buffer=4096):
    """Each length reward's own formula (common.rewards), one per completion, groups consecutive.
    Kimi k1.5 (arXiv 2501.12599, Sec. 2.3.3): per group, lambda = 0.5 - (L - Lmin) / (Lmax -
    Lmin); lambda if correct, else min(0, lambda). Cosine (Yeo et al., arXiv 2502.03373, their
    cosine length-scaling reward): 2 -> 1 over L if correct, -10 -> 0 if wrong, -10 past the
    limit. L1 (arXiv 2503.04697, LCPO): exact c - alpha |n_gold - L|, max c * clip(alpha (n_gold
    - L) + delta, 0, 1). DAPO (arXiv 2503.14476, Sec. 3.4): the soft overlong punishment."""
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
    """The reward GRPO normalises, one per completion. A length reward meets correctness as its
    paper says:
      none           the task reward (SimpleRL-Zoo: 1 correct, 0 wrong)
      kimi           task reward + coef * Kimi's length reward (Kimi k1.5 Sec. 2.3.3: a sum)
      dapo_overlong  task reward + coef * overlong penalty (DAPO Sec. 3.4)
      cosine, l1_*   the length reward alone: its formula already pays for correctness, so the
                     task reward (and its other levels: countdown's 0.1, --reward_mode
                     independent) is not added again.
    `repetition`: one n-gram repetition penalty (<= 0) per completion, added last (Yeo et al.
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


def repetition_penalty(token_ids, ngram_size=40, penalty=-0.05):
    """N-gram repetition penalty of Yeo et al. (arXiv 2502.03373; eddycmu/demystify-
    long-cot `openrlhf/reward/repetition.py`, `RepetitionDensePenalty`): every token inside a
    repeated token n-gram (the second and later occurrences) is penalised once. Their PPO puts
    `penalty` on each such token; GRPO has one scalar per response, so this returns the sum."""
    if penalty > 0:
        raise ValueError(f"--repetition_penalty must be <= 0 (a penalty), got {penalty}")
    seen, hit = set(), set()
    for start in range(len(token_ids) - ngram_size + 1):
        gram = tuple(token_ids[start : start + ngram_size])
        if gram in seen:
            hit.update(range(start, start + ngram_size))
        seen.add(gram)
    return penalty * len(hit)


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


def parse_range(spec: str, flag: str) -> tuple[int, int]:
    """'3-5' -> (3, 5), '2' -> (2, 2); the error names the flag."""
    if not (m := re.fullmatch(r"\s*(\d+)\s*(?:-\s*(\d+)\s*)?", spec)):
        raise ValueError(f"{flag} must look like 3-5 or 2, got {spec!r}")
    return int(m[1]), int(m[2] or m[1])


def question_text(row: dict, args) -> str:
    """The question field; TinyZero's countdown rows (Countdown-Tasks-3to4) hold only target and
    nums, so their question is TinyZero's."""
    if args.question_field in row or args.task != "countdown":
        return str(row[args.question_field])
    nums = [int(n) for n in row["nums"]]
    return f"Using the numbers {nums}, create an equation that equals {row['target']}."


def read_rows(args, source: str, split: str) -> list[dict]:
    """Rows of `source` with `question` and `answer` (countdown: also `target`, `nums`), kept to
    --levels. Release formats (SimpleRL-Zoo-Data parquet, MATH, GSM8K "#### N") need no field
    flags (common/benchmarks.py)."""
    countdown = args.task == "countdown"
    fields = (args.question_field, args.answer_field)
    release_format = not countdown and fields == ("question", "answer")
    if release_format:
        rows = load_math_rows(source, split)
    else:
        need = ("target", "nums") if countdown else fields
        rows = load_rows(source, split=split, required=need)
    if args.levels:
        lo, hi = parse_range(args.levels, "--levels")
        for i, r in enumerate(rows):
            if args.level_field not in r:
                raise ValueError(
                    f"{source} row {i}: no field {args.level_field!r} for --levels "
                    "(see --level_field)"
                )
        level = [int(re.sub(r"\D", "", str(r[args.level_field])) or -1) for r in rows]
        rows = [r for r, n in zip(rows, level) if lo <= n <= hi]
    if release_format:
        return rows
    answer = args.answer_field
    return [{**r, "question": question_text(r, args), "answer": str(r.get(answer))} for r in rows]


def load_task_rows(args):
    """(train_rows, eval_rows): the toy's (disjoint), or from --data (and --eval_data)."""
    if not args.data:
        train_rows, held_out = make_toy_rows(args.task, args.seed)
        return train_rows, held_out[: args.num_eval_prompts]
    rows = read_rows(args, args.data, args.data_split)
    if args.eval_data:
        return rows, read_rows(args, args.eval_data, "test")[: args.num_eval_prompts]
    return rows[: -args.num_eval_prompts], rows[-args.num_eval_prompts :]


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
# the toy base model: a short SFT on noisy demonstrations (common/sort_digits.py), cached


def warm_start_base(args, train_rows, template) -> str:
    """The toy's base model, built once and cached (common.toys.toy_model)."""
    spec = {
        "task": args.task,
        "template": template,
        "steps": args.warm_start_steps,
        "noise": args.warm_start_noise,
        "seed": args.seed,
        "held_out": TOY_HELD_OUT,
    }

    def build(folder):
        prompt = partial(make_prompt, template=template)
        steps, noise = args.warm_start_steps, args.warm_start_noise
        train_noisy_base(folder, train_rows, args.task, prompt, steps, noise, args.seed)

    code = [train_noisy_base, toy_demo, make_toy_rows, make_prompt]
    return toy_model("zero_rl-base", spec, build, code=code)


# ------------------------------------------------------------------------------------------------
# evaluation, rollouts, log-probs, the update


def correct_flags(texts: list[str], rows: list[dict], args) -> list[bool]:
    return [correct for _, correct, _ in score_all(texts, rows, args)]


@torch.no_grad()
def evaluate(sampler, eval_rows, args, dist_info, template, judge=None):
    """Held-out greedy / sampled accuracy, pass@k, length and reasoning behaviours
    (common.evaluation.heldout_eval), asked with the training prompt, graded as in training."""
    prompt, grade = partial(make_prompt, template=template), partial(correct_flags, args=args)
    sampling = dict(
        temperature=args.eval_temperature, top_p=args.eval_top_p, max_new_tokens=args.max_new_tokens
    )
    k, gather, judge_tokens = args.eval_samples, all_gather_object, args.judge_max_new_tokens
    return heldout_eval(
        sampler, eval_rows, prompt, grade, dist_info, gather, k, sampling, judge, judge_tokens
    )


def log_eval(sampler, eval_rows, args, dist_info, template, judge, logger, step) -> dict:
    metrics, example = evaluate(sampler, eval_rows, args, dist_info, template, judge)
    logger.log(metrics, step)
    shown = "  ".join(f"{k[5:]} {v:.3f}" for k, v in metrics.items() if "behaviour" not in k)
    print0(f"\n[eval step {step}] {shown}\n  sample: {example!r}")
    return metrics


@dataclass
class Rollout:
    """One step's samples on this rank: B = P * G completions, the G of a prompt consecutive."""

    prompt_ids: torch.Tensor  # (P, Lp) left padded
    prompt_mask: torch.Tensor  # (P, Lp)
    responses: torch.Tensor  # (B, T) right padded
    response_mask: torch.Tensor  # (B, T)
    loss_mask: torch.Tensor  # (B, T) float; 0 on truncated responses with --mask_truncated
    sampler_logps: torch.Tensor  # (B, T) the sampler's log-probs of the response tokens
    token_ids: list  # B lists of response token ids
    budgets: list  # B L1 token budgets (None without an L1 reward)
    task_rewards: list  # B task rewards (score)
    correct: list  # B bools
    found: list  # B bools: an answer could be extracted
    truncated: list  # B bools: cut at --max_new_tokens
    started: float  # time.perf_counter() when the step began
    t_generate: float  # seconds spent sampling


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
        t_generate = time.perf_counter() - started
        per_completion = [x for x in batch for _ in range(G)]  # (row, budget) of each completion
        scored = score_all([c.text for c in comps], [r for r, _ in per_completion], args)
        B, T = len(comps), max(len(c.token_ids) for c in comps)
        ids = {"input_ids": [encode_prompt(tok, p) for p in prompts]}
        enc = tok.pad(ids, padding=True, return_tensors="pt")  # left padded (load_tokenizer)
        responses = torch.full((B, T), tok.pad_token_id)
        loss_mask, sampler_logps = torch.zeros(B, T), torch.zeros(B, T)
        for i, c in enumerate(comps):
            responses[i, : len(c.token_ids)] = torch.tensor(c.token_ids)
            masked = args.mask_truncated and c.finish_reason == "length"
            loss_mask[i, : len(c.token_ids)] = 0.0 if masked else 1.0
            sampler_logps[i, : len(c.logprobs)] = torch.tensor(c.logprobs[:T])
        lengths = torch.tensor([len(c.token_ids) for c in comps])
        response_mask = (torch.arange(T)[None] < lengths[:, None]).long()  # (B, T)
        device = dist_info.device
        yield Rollout(
            prompt_ids=enc["input_ids"].to(device),
            prompt_mask=enc["attention_mask"].to(device),
            responses=responses.to(device),
            response_mask=response_mask.to(device),
            loss_mask=loss_mask.to(device),
            sampler_logps=sampler_logps.to(device),
            token_ids=[c.token_ids for c in comps],
            budgets=[b for _, b in per_completion],
            task_rewards=[s[0] for s in scored],
            correct=[s[1] for s in scored],
            found=[s[2] for s in scored],
            truncated=[c.finish_reason == "length" for c in comps],
            started=started,
            t_generate=t_generate,
        )


def step_rewards(args, rollout: Rollout, step: int) -> list[float]:
    """The reward GRPO normalises (total_rewards), with the length reward in force at `step`."""
    repeats = None
    if args.repetition_penalty:
        size, penalty = args.repetition_ngram_size, args.repetition_penalty
        repeats = [repetition_penalty(ids, size, penalty) for ids in rollout.token_ids]
    lengths = [len(ids) for ids in rollout.token_ids]
    return total_rewards(
        length_reward_at(args, step),
        rollout.task_rewards,
        rollout.correct,
        lengths,
        args.group_size,
        args.max_new_tokens,
        rollout.budgets,
        args.overlong_buffer,
        args.length_reward_coef,
        repeats,
    )


def response_logprobs(
    model, prompt_ids, prompt_mask, response_ids, response_mask, prompt_index, return_entropy=False
):
    """Log-probs (B, T) of the response tokens (and entropies), each prompt computed once for its
    group: the P prompts (left padded) go through the model once, their KV cache is indexed out to
    the B responses (`prompt_index` (B,): each row's prompt) and the responses (right padded)
    attend to it; gradients flow through the shared prompt too. Only response positions reach the
    vocabulary (common.train.logprobs_from_hidden: no (B, T, V) logits). Equals
    common.train.token_logprobs on the concatenated sequences (tested), the path taken under
    gradient checkpointing: a checkpointed layer cannot fill a KV cache (HF drops it)."""
    checkpointed = model.training and torch.is_grad_enabled() and gradient_checkpointing_on(model)
    if checkpointed or not plain_lm_head(model):
        ids = torch.cat([prompt_ids[prompt_index], response_ids], dim=1)  # (B, Lp + T)
        att = torch.cat([prompt_mask[prompt_index], response_mask], dim=1)  # (B, Lp + T)
        out = token_logprobs(model, ids, att, return_entropy=return_entropy)  # (B, Lp + T - 1)
        # the last prompt position predicts the first response token
        first = prompt_ids.shape[1] - 1
        return tuple(x[:, first:] for x in out) if return_entropy else out[:, first:]
    inputs = dict(input_ids=prompt_ids, attention_mask=prompt_mask, use_cache=True)
    hidden, out = forward_hidden(model, **inputs)  # (P, Lp, H)
    cache_kw = "cache" if "cache" in out else "past_key_values"  # renamed in transformers 5.2x
    cache = out[cache_kw]
    cache.batch_select_indices(prompt_index)  # (P, ...) -> (B, ...)
    hidden = hidden[prompt_index, -1:]  # (B, 1, H): the last prompt position predicts token 1
    if response_ids.shape[1] > 1:
        mask = torch.cat([prompt_mask[prompt_index], response_mask[:, :-1]], dim=1)  # (B, Lp+T-1)
        inputs = dict(input_ids=response_ids[:, :-1], attention_mask=mask, **{cache_kw: cache})
        rest, _ = forward_hidden(model, **inputs)  # (B, T - 1, H)
        hidden = torch.cat([hidden, rest], dim=1)  # (B, T, H)
    weight = lm_head_weight(model)
    return logprobs_from_hidden(hidden, weight, response_ids, return_entropy=return_entropy)


def micro_spans(lo, hi, size, response_mask):
    """(start, end, longest response) of the micro-batches of rows lo .. hi - 1; 0 = one."""
    for s in range(lo, hi, size or hi - lo):
        e = min(s + (size or hi - lo), hi)
        yield s, e, int(response_mask[s:e].sum(1).max())


def rollout_logprobs(model, rollout: Rollout, G, s, e, t, entropy=False):
    """response_logprobs of rows s .. e-1 (prompts s // G .. (e-1) // G), trimmed to t tokens."""
    p_lo, p_hi = s // G, (e - 1) // G + 1
    pad = int((rollout.prompt_mask[p_lo:p_hi].sum(0) == 0).sum())  # left padding they all share
    index = torch.arange(s, e, device=rollout.prompt_ids.device) // G - p_lo  # (b,) row -> prompt
    return response_logprobs(
        model,
        rollout.prompt_ids[p_lo:p_hi, pad:],
        rollout.prompt_mask[p_lo:p_hi, pad:],
        rollout.responses[s:e, :t],
        rollout.response_mask[s:e, :t],
        index,
        return_entropy=entropy,
    )  # (b, t)


@torch.no_grad()
def old_and_ref_logprobs(model, ref_model, rollout, recompute, args):
    """(old, reference or None) log-probs (B, T); old = the sampler's unless `recompute`."""
    old = rollout.sampler_logps.clone()
    ref = None if ref_model is None else torch.zeros_like(old)
    B = old.shape[0]
    for s, e, t in micro_spans(0, B, args.micro_batch_size, rollout.response_mask):
        if recompute:
            old[s:e, :t] = rollout_logprobs(model, rollout, args.group_size, s, e, t).float()
        if ref_model is not None:
            ref[s:e, :t] = rollout_logprobs(ref_model, rollout, args.group_size, s, e, t).float()
    return old, ref


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
        for s, e, t in micro_spans(lo, hi, args.micro_batch_size, rollout.response_mask):
            logps, entropy = rollout_logprobs(model, rollout, G, s, e, t, entropy=True)  # (b, t)
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


def step_metrics(args, every, update, sched, rollout, world) -> dict:
    """TRL's metric names where TRL has the metric; every rank returns the same dict."""
    micro, updates, t_train = update  # ppo_update's
    eps_high, n_updates = args.clip_eps_high or args.clip_eps, len(updates)
    sums = dict.fromkeys(("tokens", "entropy", "kl", "low", "high"), 0.0)
    for mask, entropy, ratio, kl, adv in micro:
        sums["tokens"] += float(mask.sum())
        sums["entropy"] += float((entropy * mask).sum())
        if kl is not None:
            sums["kl"] += float((kl * mask).sum())
        sums["low"] += float((((ratio < 1 - args.clip_eps) & (adv[:, None] < 0)) * mask).sum())
        sums["high"] += float((((ratio > 1 + eps_high) & (adv[:, None] > 0)) * mask).sum())
    sums["loss"] = sum(loss / n_updates for losses, _ in updates for loss in losses)
    sums["grad_norm"] = sum(norm / n_updates for _, norm in updates)
    tot = {k: sum(part[k] for part in all_gather_object(sums)) for k in sums}
    n_tok, step_time = max(tot["tokens"], 1.0), time.perf_counter() - rollout.started
    rewards, G = torch.tensor(every["reward"]), args.group_size  # (W*B,)
    lengths, truncated = np.array(every["length"]), np.array(every["truncated"])
    stopped = lengths[~truncated]
    metrics = {
        "reward": float(rewards.mean()),
        "reward_std": float(rewards.std()),
        "accuracy": np.mean(every["correct"]),
        "frac_reward_zero_std": float((rewards.view(-1, G).std(1) == 0).float().mean()),
        "completions/mean_length": lengths.mean(),
        "completions/min_length": float(lengths.min()),
        "completions/max_length": float(lengths.max()),
        "completions/clipped_ratio": truncated.mean(),
        "completions/mean_terminated_length": stopped.mean() if len(stopped) else 0.0,
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
        "time/generate": rollout.t_generate,
        "time/train": t_train,
        "tokens_per_s": lengths.sum() / step_time,
    }
    if args.length_reward != "none" or args.repetition_penalty:  # total - task reward
        metrics["length_reward"] = np.mean(every["bonus"])
    return metrics


def gather_stats(rollout: Rollout, rewards: list[float]) -> dict:
    """All ranks' per-completion values, rank after rank (so the groups of G stay together)."""
    local = {
        "reward": rewards,
        "correct": rollout.correct,
        "bonus": [r - t for r, t in zip(rewards, rollout.task_rewards)],
        "length": [len(ids) for ids in rollout.token_ids],
        "found": rollout.found,
        "truncated": rollout.truncated,
    }
    return {k: [x for part in all_gather_object(local) for x in part[k]] for k in local}


# ------------------------------------------------------------------------------------------------
# setup and results


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


def load_judge(args, dist_info):
    """The behaviour labeller (--judge_model) as an HF Sampler; frozen, so bf16 on CUDA."""
    if not args.judge_model:
        return None
    dtype = precision_policy(dist_info.device.type).frozen_dtype
    model = load_model(args.judge_model, dtype=dtype, device=dist_info.device).eval()
    return HFSampler(model, load_tokenizer(args.judge_model))


def resume(args, model, opt, sched, sampler) -> int:
    """The last finished step: 0, or the checkpoint's with --resume (it restores the RNG too)."""
    ckpt_dir = Path(args.output_dir) / "checkpoint"
    if not args.resume or (state := load_checkpoint(ckpt_dir, model, opt, sched)) is None:
        return 0
    where = f"at step {state[0]} (data position {state[1]['data_position']})"
    print0(f"resumed from {ckpt_dir} {where}")
    sampler.sync_weights(model)  # vLLM: its engine loaded the base weights; HF: a no-op
    return state[0]


def report(args, model, tok, logger, before, after, dist_info):
    """The final model, curves.png, the before/after table and summary.json with the claims."""
    out_dir = Path(args.output_dir)
    export_pretrained(model, tok, out_dir / "model")
    if not dist_info.is_main:
        return
    curves = ["reward", "accuracy", "completions/mean_length", "eval/accuracy_sampled"]
    logger.plot(curves, out_dir / "curves.png")
    keys = ["accuracy_greedy", "accuracy_sampled", f"pass@{args.eval_samples}", "mean_length"]
    named = (("before RL", before), (f"after {args.total_steps} steps", after))
    table = [{"": name, **{k: d.get(f"eval/{k}", float("nan")) for k in keys}} for name, d in named]
    print0("\n" + format_table(table))
    claims = [  # the paper's claim on the toy: RL raises held-out accuracy over the base
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
    print0(f"metrics: {logger.path}  curves: {out_dir / 'curves.png'}  model: {out_dir / 'model'}")


def main(args):
    dist_info = init_distributed()
    G, rank, world = args.group_size, dist_info.rank, dist_info.world_size
    derived(args, world)  # batch sizes or length-reward flags that do not fit fail here
    template = resolve_template(args)
    train_rows, eval_rows = load_task_rows(args)
    if not args.model and dist_info.is_main:  # the toy base: rank 0 builds it, the others wait
        warm_start_base(args, train_rows, template)
    barrier()
    model_path = args.model or warm_start_base(args, train_rows, template)
    tok = load_tokenizer(model_path)
    train_rows = training_rows(args, train_rows, tok, template)
    checkpointing = args.gradient_checkpointing
    model = shard_model(load_model(model_path), dist_info, gradient_checkpointing=checkpointing)
    ref_model = None  # --beta 0: no reference model at all
    if args.beta:
        ref_model = shard_model(load_model(model_path), dist_info, frozen=True)  # bf16 on CUDA
    opt = make_optimizer(model, args.lr)  # fp32 master weights and state (common.train)
    sched = make_scheduler(opt, "constant", 0, args.total_steps)
    sampler = make_sampler(args.sampler, model, tok, model_path=model_path, args=args)
    recompute = args.recompute_old_logprobs or old_logprobs_need_recompute(
        sampler, dist_info.device
    )
    judge = load_judge(args, dist_info)
    seed_everything(args.seed + rank)  # ranks sample different completions
    start_step = resume(args, model, opt, sched, sampler)  # after seeding: it restores the RNG
    out_dir = Path(args.output_dir)
    config = asdict(args)
    logger = MetricsLogger(
        out_dir, args.track, "zero_rl", config, start_step if args.resume else None
    )
    evaluation = partial(log_eval, sampler, eval_rows, args, dist_info, template, judge, logger)
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
        every = gather_stats(rollout, rewards)
        # 3. advantages: normalised within each group of G, then this rank's slice
        advantages = grpo_advantages(torch.tensor(every["reward"]), G, scales_by_std(args))
        B = len(rewards)
        advantages = advantages[rank * B : (rank + 1) * B].to(dist_info.device)  # (B,)
        # 4. update: PPO-clip + beta k3 KL - entropy bonus, mini-batches of micro-batches
        old_logps, ref_logps = old_and_ref_logprobs(model, ref_model, rollout, recompute, args)
        update = ppo_update(
            model, opt, sched, rollout, advantages, old_logps, ref_logps, args, world
        )
        sampler.sync_weights(model)  # vLLM: the next rollout samples the updated policy
        # 5. metrics, after the update
        metrics = step_metrics(args, every, update, sched, rollout, world)
        logger.log(metrics, step)
        bar.set_postfix(reward=f"{metrics['reward']:.2f}", acc=f"{metrics['accuracy']:.2f}")
        # 6. checkpoint (before the eval, whose sampling moves the RNG), evaluate
        if step % args.save_every == 0 or step == args.total_steps:
            position = {"data_position": step * args.prompts_per_step}
            save_checkpoint(out_dir / "checkpoint", model, opt, sched, step, extra=position)
        if step % args.eval_every == 0 or step == args.total_steps:
            after = evaluation(step)
    report(args, model, tok, logger, before, after, dist_info)
    logger.close()
    cleanup_distributed()


def eval_only(args, suite):
    """--eval_only: SimpleRL-Zoo's six benchmarks, asked with the training template."""
    template = "abel" if args.prompt_template == "abel" else "qwen-boxed"
    model_path = args.model or warm_start_base(args, load_task_rows(args)[0], template)

    def prompt(question, tok):
        return make_prompt(question, template)

    is_toy = not args.model
    evaluate_model(
        suite, model_path, prompt, args.sampler, args.output_dir, args.seed, is_toy=is_toy
    )


if __name__ == "__main__":
    cli_args, suite_args = parse_config(Args, PAPER, derived, extra=(EvalArgs,))
    if suite_args.eval_only:  # common/evaluation.py: SimpleRL-Zoo's six-benchmark evaluation
        eval_only(cli_args, suite_args)
    else:
        main(cli_args)
