"""Response-only SFT of a chat model on (prompt, response) rows: micro-batches, checkpoints, resume.

The prompt is the user turn rendered with the chat template; the loss covers the response and the
end-of-turn token (`common.train.sft_loss`), as a token mean over each optimizer step's rows however
they are split into micro-batches. Used by codeio.py (the paper's two SFT stages and the raw-code
baseline; `compare_with_baselines` scores the student against them); `args` is any config with the
fields named in `run_sft`'s docstring.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import torch
from tqdm import tqdm

from common.claims import claim
from common.data import load_rows, make_arithmetic_rows
from common.models import end_of_turn, load_model
from common.sampling import render_prompt
from common.train import (
    MetricsLogger,
    load_checkpoint,
    make_optimizer,
    make_scheduler,
    micro_batches,
    save_checkpoint,
    sft_inputs,
    sft_loss,
    shard_model,
)


def encode_sft(tokenizer, examples: list[dict], max_length: int) -> list[tuple[list, list]]:
    """(prompt ids, response ids + end of turn); the prompt keeps at most half of max_length."""
    end_ids = [tokenizer.convert_tokens_to_ids(end_of_turn(tokenizer))]
    encoded = []
    for ex in examples:
        chat = render_prompt(tokenizer, [{"role": "user", "content": ex["prompt"]}])
        prompt = tokenizer(chat, add_special_tokens=False).input_ids[: max_length // 2]
        response = tokenizer(ex["response"], add_special_tokens=False).input_ids + end_ids
        encoded.append((prompt, response[: max_length - len(prompt)]))
    return encoded


def sft_backward(model, tokenizer, rows: list[tuple], micro_batch_size: int, device) -> float:
    """Gradients of the response-token mean loss over this rank's rows, in micro-batches (the
    same token mean as one pass); returns the loss."""
    num_tokens = sum(len(response) for _, response in rows)
    total = 0.0
    for part in micro_batches(len(rows), micro_batch_size):
        prompts, responses = zip(*rows[part])
        batch = sft_inputs(tokenizer, list(prompts), list(responses), device)  # 3 x (b, L)
        loss = sft_loss(model, *batch, normalizer=num_tokens)
        loss.backward()
        total += loss.item()
    return total


def run_sft(
    model,
    tokenizer,
    examples,
    args,
    dist_info,
    logger,
    ckpt: Path,
    stage: str,
    lr: float,
    steps=None,
    schedule="constant",
    offset=0,
):
    """Response-only SFT of `model` on `examples` ({prompt, response}); checkpoints in `ckpt`.
    `args`: max_length, batch_size (all ranks), micro_batch_size, epochs (when `steps` is None),
    seed (the data order), save_every, resume. Metrics are `<stage>/loss` and `<stage>/lr` at
    global steps (`offset` + step). Returns (last loss, global step at the end)."""
    encoded = encode_sft(tokenizer, examples, args.max_length)
    steps_per_epoch = max(1, len(encoded) // args.batch_size)
    total = steps or steps_per_epoch * args.epochs
    optimizer = make_optimizer(model, lr)
    floor = {"min_lr": 1e-6} if schedule == "cosine_with_min_lr" else {}
    scheduler = make_scheduler(optimizer, schedule, 0, total, **floor)
    state = load_checkpoint(ckpt, model, optimizer, scheduler) if args.resume else None
    start = state[0] if state and state[1].get("stage") == stage else 0
    generator = torch.Generator().manual_seed(args.seed)
    epochs = total // steps_per_epoch + 1
    order = torch.cat([torch.randperm(len(encoded), generator=generator) for _ in range(epochs)])
    share, rank = args.batch_size // dist_info.world_size, dist_info.rank
    loss = float("nan")
    for step in tqdm(range(start, total), desc=f"sft {stage}", disable=not dist_info.is_main):
        batch = order[step * args.batch_size : (step + 1) * args.batch_size].tolist()
        rows = [encoded[i] for i in batch[rank * share : (rank + 1) * share] or batch[:1]]
        loss = sft_backward(model, tokenizer, rows, args.micro_batch_size, dist_info.device)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        lr_now = scheduler.get_last_lr()[0]
        logger.log({f"{stage}/loss": loss, f"{stage}/lr": lr_now}, step=offset + step + 1)
        if (step + 1) % args.save_every == 0 or step + 1 == total:
            extra = {"stage": stage, "global_step": offset + step + 1}
            save_checkpoint(ckpt, model, optimizer, scheduler, step + 1, extra=extra)
    return loss, offset + total


def make_logger(out: Path, args, run_name: str, checkpoints: list[Path]) -> MetricsLogger:
    """The metrics log; with args.resume it continues at the last of `checkpoints`' global steps."""
    metas = [folder / "meta.json" for folder in checkpoints]
    done = [json.loads(m.read_text())["extra"]["global_step"] for m in metas if m.exists()]
    resume_step = max(done) if args.resume and done else None
    kwargs = dict(track=args.track, run_name=run_name, config=vars(args))
    return MetricsLogger(out, resume_step=resume_step, **kwargs)


def instruction_rows(source: str, seed: int) -> list[dict]:
    """Instruction rows ({prompt, response}) from a file or hub set; 'toy': arithmetic questions."""
    if source != "toy":
        return load_rows(source, required=("prompt", "response"))
    rows = make_arithmetic_rows(64, seed=seed)
    return [{"prompt": r["question"], "response": f"The answer is {r['answer']}."} for r in rows]


def loss_note(loss: float, what: str) -> str:
    """A summary-table note on a run_sft loss (NaN: every step was done by an earlier run)."""
    return "already trained (resumed)" if math.isnan(loss) else f"{what} {loss:.3f}"


def compare_with_baselines(run, name: str, metric: str, score, raw_code, logger):
    """`score(model)` (-> {accuracy, n, accuracy_<kind>...}) of the SFT student run.model (`name`),
    its base (reloaded from run.model_path) and, if `raw_code` = (rows, steps, checkpoint folder),
    the base after that many run_sft steps on those rows (metrics raw_code/*). One summary row per
    model; returns (results, the claims that the student beats each baseline)."""
    args, dist_info = run.args, run.dist_info
    results = {name: score(run.model)}
    base = load_model(run.model_path, dtype=run.dtype, device=dist_info.device)
    results["base"] = score(base)
    baselines = {"base": f"SFT on {name} data beats the base"}
    if raw_code is not None:  # the same SFT budget on the raw code itself
        rows, steps, ckpt = raw_code
        base = shard_model(base, dist_info, gradient_checkpointing=args.gradient_checkpointing)
        run_sft(
            base, run.tokenizer, rows, args, dist_info, logger, ckpt, "raw_code", args.lr, steps
        )
        results["raw_code"] = score(base)
        baselines["raw_code"] = f"SFT on {name} data beats SFT on raw code"
    for who, r in results.items():
        kinds = [
            f"{k[len('accuracy_') :]} {v:.3f}" for k, v in r.items() if k.startswith("accuracy_")
        ]
        notes = f"held-out accuracy {r['accuracy']:.3f} ({', '.join(kinds)})"
        run.report(f"eval {who}", r["n"], round(r["accuracy"] * r["n"]), notes)
    accuracy = {who: r["accuracy"] for who, r in results.items()}
    claims = [claim(text, metric, accuracy[who], accuracy[name]) for who, text in baselines.items()]
    return results, claims
