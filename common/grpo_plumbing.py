"""The plumbing of zero_rl.py's GRPO loop, none of it the algorithm: one step's samples padded into
a `Rollout`, the log-probs of its responses with each prompt computed once for its group of G, the
step's metrics under TRL's names (computed after the update from what the update kept), the task
rows, the policy and reference models, the held-out log line, resuming from a checkpoint, the
end-of-run report and `--eval_only`."""

import time
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import numpy as np
import torch

from common.claims import format_claims, write_summary
from common.data import read_task_rows
from common.evaluation import evaluate_model
from common.models import load_model
from common.sampling import make_sampler
from common.sort_digits import make_toy_rows, warm_start_base
from common.train import (
    all_gather_object,
    export_pretrained,
    format_table,
    forward_hidden,
    gradient_checkpointing_on,
    lm_head_weight,
    load_checkpoint,
    logprobs_from_hidden,
    make_optimizer,
    make_scheduler,
    plain_lm_head,
    print0,
    shard_model,
    token_logprobs,
)


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


def make_rollout(tok, prompt_ids, completions, scored, budgets, mask_truncated, device, times):
    """A Rollout of P prompts' token ids (left padded, as load_tokenizer sets the tokenizer) and
    B = P * G sampled completions (right padded), on `device`; `scored`: B (task reward, correct,
    answer found); `budgets`: B L1 budgets or None; `times`: (step start, seconds sampling)."""
    started, t_generate = times
    B, T = len(completions), max(len(c.token_ids) for c in completions)
    enc = tok.pad({"input_ids": prompt_ids}, padding=True, return_tensors="pt")
    responses = torch.full((B, T), tok.pad_token_id)
    loss_mask, sampler_logps = torch.zeros(B, T), torch.zeros(B, T)
    for i, c in enumerate(completions):
        responses[i, : len(c.token_ids)] = torch.tensor(c.token_ids)
        masked = mask_truncated and c.finish_reason == "length"
        loss_mask[i, : len(c.token_ids)] = 0.0 if masked else 1.0
        sampler_logps[i, : len(c.logprobs)] = torch.tensor(c.logprobs[:T])
    lengths = torch.tensor([len(c.token_ids) for c in completions])
    response_mask = (torch.arange(T)[None] < lengths[:, None]).long()  # (B, T)
    return Rollout(
        prompt_ids=enc["input_ids"].to(device),
        prompt_mask=enc["attention_mask"].to(device),
        responses=responses.to(device),
        response_mask=response_mask.to(device),
        loss_mask=loss_mask.to(device),
        sampler_logps=sampler_logps.to(device),
        token_ids=[c.token_ids for c in completions],
        budgets=budgets,
        task_rewards=[s[0] for s in scored],
        correct=[s[1] for s in scored],
        found=[s[2] for s in scored],
        truncated=[c.finish_reason == "length" for c in completions],
        started=started,
        t_generate=t_generate,
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
def old_and_ref_logprobs(model, ref_model, rollout: Rollout, recompute, args):
    """(old, reference or None) log-probs (B, T); old = the sampler's unless `recompute`.
    `args`: zero_rl's (--group_size, --micro_batch_size)."""
    G = args.group_size
    old = rollout.sampler_logps.clone()
    ref = None if ref_model is None else torch.zeros_like(old)
    B = old.shape[0]
    for s, e, t in micro_spans(0, B, args.micro_batch_size, rollout.response_mask):
        if recompute:
            old[s:e, :t] = rollout_logprobs(model, rollout, G, s, e, t).float()
        if ref_model is not None:
            ref[s:e, :t] = rollout_logprobs(ref_model, rollout, G, s, e, t).float()
    return old, ref


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


def step_metrics(every, update, rollout, lr, world, G, clip, bonus) -> dict:
    """A step's metrics, TRL's names where TRL has the metric; every rank returns the same dict.
    `every`: gather_stats; `update`: the update's per micro-batch (mask, entropy, ratio, kl or
    None, advantages), per optimizer step (micro-batch losses, grad norm) and seconds; `clip`:
    (low, high) epsilons; `bonus`: log the mean of total - task reward (a length or repetition
    reward is on)."""
    micro, updates, t_train = update
    clip_low, clip_high = clip
    n_updates = len(updates)
    sums = dict.fromkeys(("tokens", "entropy", "kl", "low", "high"), 0.0)
    for mask, entropy, ratio, kl, adv in micro:
        sums["tokens"] += float(mask.sum())
        sums["entropy"] += float((entropy * mask).sum())
        if kl is not None:
            sums["kl"] += float((kl * mask).sum())
        sums["low"] += float((((ratio < 1 - clip_low) & (adv[:, None] < 0)) * mask).sum())
        sums["high"] += float((((ratio > 1 + clip_high) & (adv[:, None] > 0)) * mask).sum())
    sums["loss"] = sum(loss / n_updates for losses, _ in updates for loss in losses)
    sums["grad_norm"] = sum(norm / n_updates for _, norm in updates)
    tot = {k: sum(part[k] for part in all_gather_object(sums)) for k in sums}
    n_tok, step_time = max(tot["tokens"], 1.0), time.perf_counter() - rollout.started
    rewards = torch.tensor(every["reward"])  # (W*B,)
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
        "learning_rate": lr,
        "time/step": step_time,
        "time/generate": rollout.t_generate,
        "time/train": t_train,
        "tokens_per_s": lengths.sum() / step_time,
    }
    if bonus:
        metrics["length_reward"] = np.mean(every["bonus"])
    return metrics


def load_task_rows(args):
    """(train_rows, eval_rows): the toy's (common/sort_digits.py; disjoint), or from --data
    (common.data.read_task_rows) and --eval_data (else the last --num_eval_prompts rows)."""
    if not args.data:
        train_rows, held_out = make_toy_rows(args.task, args.seed)
        return train_rows, held_out[: args.num_eval_prompts]
    fields = (args.question_field, args.answer_field)
    read = partial(read_task_rows, task=args.task, fields=fields, level_field=args.level_field)
    rows = read(args.data, args.data_split, levels=args.levels)
    if args.eval_data:
        return rows, read(args.eval_data, "test", levels=args.levels)[: args.num_eval_prompts]
    return rows[: -args.num_eval_prompts], rows[-args.num_eval_prompts :]


def load_policy(args, model_path, tok, dist_info):
    """(policy, reference, optimizer, scheduler, sampler): the policy sharded with FSDP2 (fp32
    master weights and AdamW state, bf16 compute on CUDA), the frozen reference (bf16 on CUDA;
    None with --beta 0), a constant learning rate, the sampler (--sampler)."""
    checkpointing = args.gradient_checkpointing
    model = shard_model(load_model(model_path), dist_info, gradient_checkpointing=checkpointing)
    ref_model = None  # --beta 0: no reference model at all
    if args.beta:
        ref_model = shard_model(load_model(model_path), dist_info, frozen=True)
    opt = make_optimizer(model, args.lr)
    sched = make_scheduler(opt, "constant", 0, args.total_steps)
    sampler = make_sampler(args.sampler, model, tok, model_path=model_path, args=args)
    return model, ref_model, opt, sched, sampler


def log_eval(evaluate, inputs, logger, step) -> dict:
    """`evaluate(*inputs)` -> (metrics, a sample text), logged at `step` and printed."""
    metrics, example = evaluate(*inputs)
    logger.log(metrics, step)
    shown = "  ".join(f"{k[5:]} {v:.3f}" for k, v in metrics.items() if "behaviour" not in k)
    print0(f"\n[eval step {step}] {shown}\n  sample: {example!r}")
    return metrics


def resume_step(output_dir, resume, model, opt, sched, sampler) -> int:
    """The last finished step: 0, or the checkpoint's with `resume` (it restores the RNG too)."""
    ckpt_dir = Path(output_dir) / "checkpoint"
    if not resume or (state := load_checkpoint(ckpt_dir, model, opt, sched)) is None:
        return 0
    where = f"at step {state[0]} (data position {state[1]['data_position']})"
    print0(f"resumed from {ckpt_dir} {where}")
    sampler.sync_weights(model)  # vLLM: its engine loaded the base weights; HF: a no-op
    return state[0]


def write_report(args, model, tok, logger, before, after, claims, is_main):
    """The final model (model/), curves.png, the before/after table of the held-out evaluation,
    the claims and summary.json. Every rank exports the model; rank 0 writes the rest."""
    out_dir = Path(args.output_dir)
    export_pretrained(model, tok, out_dir / "model")
    if not is_main:
        return
    curves = ["reward", "accuracy", "completions/mean_length", "eval/accuracy_sampled"]
    logger.plot(curves, out_dir / "curves.png")
    keys = ["accuracy_greedy", "accuracy_sampled", f"pass@{args.eval_samples}", "mean_length"]
    named = (("before RL", before), (f"after {args.total_steps} steps", after))
    table = [{"": name, **{k: d.get(f"eval/{k}", float("nan")) for k in keys}} for name, d in named]
    print0("\n" + format_table(table))
    print0("\n" + format_claims(claims))
    write_summary(out_dir, claims, before=before, after=after, steps=args.total_steps)
    print0(f"metrics: {logger.path}  curves: {out_dir / 'curves.png'}  model: {out_dir / 'model'}")


def eval_only(args, suite, make_prompt):
    """--eval_only: SimpleRL-Zoo's six benchmarks (common.evaluation), asked with the training
    template (`make_prompt`: qwen-boxed, or abel); the toy's base model when --model is empty."""
    template = "abel" if args.prompt_template == "abel" else "qwen-boxed"
    model_path = args.model or warm_start_base(args, load_task_rows(args)[0], template, make_prompt)

    def prompt(question, tok):
        return make_prompt(question, template)

    is_toy = not args.model
    evaluate_model(
        suite, model_path, prompt, args.sampler, args.output_dir, args.seed, is_toy=is_toy
    )
