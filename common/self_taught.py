"""Plumbing of bstar.py, the self-taught reasoner: what is not the algorithm.

Query rows with gold answers (release files or the toy), the chat prompt, one SFT step, the toy's
cached P0, loading the policy with its sampler and PRM, the end-of-run report and `--eval_only`.
The algorithm (balance score, configuration search, selection, the iteration) stays in bstar.py.
"""

from __future__ import annotations

import functools
import random
from collections import namedtuple
from pathlib import Path

import torch
from tqdm import tqdm
from transformers import get_scheduler

from common.addition_steps import HELD_OUT, grade_steps, make_toy_row, make_toy_split
from common.benchmarks import load_math_rows
from common.claims import claim, format_claims, write_summary
from common.config import TOY_MODEL_VALUES
from common.data import DataError, load_rows
from common.evaluation import evaluate_model
from common.models import end_of_turn, load_model, load_tokenizer, make_tiny_lm
from common.prm import ProcessRewardModel, RulePRM
from common.sampling import make_sampler, render_prompt
from common.toys import toy_model
from common.train import (
    barrier,
    clip_grad_norm,
    format_table,
    make_optimizer,
    micro_batches,
    pad_batch,
    precision_policy,
    sft_loss,
    shard_model,
)

Runtime = namedtuple("Runtime", "args dist_info tok sampler prm")  # what the sampling helpers need

# ------------------------------------------------------------------------------------------------
# queries and prompts


def read_queries(args, source: str, tag: str) -> list[dict]:
    """Rows of id, question, gold answer. With both field flags at their defaults the release
    formats are read (common/benchmarks.py); else the two columns ('#### N' answers -> N)."""
    fields = (args.question_field, args.answer_field)
    if fields == ("question", "answer"):
        pairs = [(r["question"], r["answer"]) for r in load_math_rows(source)]
    else:
        rows = load_rows(source, required=fields)
        pairs = [(str(r[fields[0]]), str(r[fields[1]]).split("####")[-1].strip()) for r in rows]
    return [{"id": f"{tag}-{i}", "question": q, "answer": a} for i, (q, a) in enumerate(pairs)]


def load_task(args) -> tuple[list[dict], list[dict]]:
    """(training rows, held-out rows): the toy's split, or --data with --eval_data (else its last
    --eval_queries rows held out)."""
    if args.data == "toy":
        return toy_split(args)[:2]
    rows = read_queries(args, args.data, "train")
    if args.eval_data:
        return rows, read_queries(args, args.eval_data, "eval")[: args.eval_queries]
    if len(rows) <= args.eval_queries:
        raise DataError(
            f"{args.data}: {len(rows)} rows, not enough to hold out --eval_queries "
            f"{args.eval_queries}; give --eval_data"
        )
    return rows[: -args.eval_queries], rows[-args.eval_queries :]


def toy_split(args):
    return make_toy_split(args.seed, args.toy_terms, args.toy_train_queries, args.eval_queries)


def chat(args, question: str) -> list[dict]:
    return [{"role": "user", "content": args.prompt_template.replace("{question}", question)}]


# ------------------------------------------------------------------------------------------------
# the PRM, SFT, the toy's P0


def make_prm(args, device):
    """The reward's PRM: none ('answer'), the toy's rule-based stand-in, or a trained PRM."""
    if args.reward == "answer":
        return None
    if args.prm == "rule" and args.data != "toy":
        raise ValueError("--prm rule is the toy's stand-in; give --prm <HF PRM> or --reward answer")
    if args.prm == "rule":
        return RulePRM(grade_steps)
    dtype = precision_policy(torch.device(device).type).frozen_dtype  # bf16 on CUDA
    tokens = (args.prm_step_tag, args.prm_good_token, args.prm_bad_token)
    return ProcessRewardModel(args.prm, args.prm_head, *tokens, device=device, dtype=dtype)


def encode_sft(tok, prompt, response: str) -> tuple[list[int], list[int]]:
    """Prompt and response tokenised apart; the response ends with the end-of-turn token."""
    end = tok.convert_tokens_to_ids(end_of_turn(tok))
    prompt_ids = tok(render_prompt(tok, prompt), add_special_tokens=False).input_ids
    return prompt_ids, tok(response, add_special_tokens=False).input_ids + [end]


def sft_step(
    model, optimizer, scheduler, tok, pairs, max_grad_norm, device, micro_batch_size: int = 0
) -> float:
    """One SFT step on (prompt ids, response ids) pairs: mean NLL of the response tokens,
    accumulated over micro-batches, each divided by the token count of all the pairs."""
    num_tokens = sum(len(r) for _, r in pairs)  # the unsplit batch's loss-token count
    loss = 0.0
    for sl in micro_batches(len(pairs), micro_batch_size):
        batch = pad_batch([p for p, _ in pairs[sl]], [r for _, r in pairs[sl]], tok.pad_token_id)
        input_ids, attention_mask, loss_mask = (t.to(device) for t in batch)  # (b, L) each
        micro = sft_loss(model, input_ids, attention_mask, loss_mask, normalizer=num_tokens)
        micro.backward()
        loss += micro.item()
    clip_grad_norm(model, max_grad_norm)
    optimizer.step()
    scheduler.step()
    optimizer.zero_grad(set_to_none=True)
    return loss


def build_warm_start(args) -> str:
    """The toy's P0: the tiny LM after a short SFT on toy solutions (never eval queries), cached."""
    lo, hi = (int(x) for x in args.toy_terms.split(":"))
    spec = dict(steps=args.warm_start_steps, lr=args.warm_start_lr, terms=args.toy_terms)
    spec.update(seed=args.seed, held_out=HELD_OUT, batch=32, prompt=args.prompt_template)

    def build(folder):
        tok, model = load_tokenizer(make_tiny_lm()), load_model(make_tiny_lm())
        held_out, rng = toy_split(args)[2], random.Random(args.seed + 2)
        optimizer = make_optimizer(model, args.warm_start_lr)
        scheduler = get_scheduler("constant", optimizer)  # P0 is a mid-training SFT checkpoint
        for _ in tqdm(range(args.warm_start_steps), desc="warm start (cached)"):
            rows = [make_toy_row(rng, lo, hi) for _ in range(40)]
            rows = [r for r in rows if r["question"] not in held_out][:32]
            pairs = [encode_sft(tok, chat(args, r["question"]), r["solution"]) for r in rows]
            sft_step(model, optimizer, scheduler, tok, pairs, 1.0, "cpu")
        model.save_pretrained(folder)
        tok.save_pretrained(folder)

    return toy_model("bstar-base", spec, build, code=TOY_BASE_CODE)


# What the cached P0 depends on besides `build`: common.toys hashes its source into the cache key.
TOY_BASE_CODE = (make_toy_row, make_toy_split, toy_split, sft_step, encode_sft, chat)


# ------------------------------------------------------------------------------------------------
# the policy, the report, --eval_only


TABLE = "temperature threshold balance_score num_selected pass@K pass@K-S reward@K-S diversity"
CURVES = "greedy_acc pass@K pass@K-S reward@K-S diversity balance_score temperature threshold"
CLAIM = "self-improvement raises held-out greedy accuracy over P0"


def report(args, history: list[dict], out: Path, n_star: int, num_eval: int, logger):
    """Rank 0: the table, the PNG curves and summary.json's claim."""
    head = f"B-STaR ({args.mode}), K={args.samples_per_query}, S={args.pass_s}, n*={n_star}"
    print(f"\n{head}; greedy_acc: {num_eval} held-out queries")
    columns = [*TABLE.split(), "greedy_acc"]
    rows = [
        {"iter": r["step"], **{c: r[c] for c in columns if r.get(c) is not None}} for r in history
    ]
    print(format_table(rows))
    curves = [*CURVES.split(), "num_selected"]
    png = logger.plot(curves, out / "curves.png", title=f"B-STaR toy ({args.mode})")
    print(f"metrics: {logger.path}  curves: {png}")
    claims = [claim(CLAIM, "greedy_acc", history[0]["greedy_acc"], history[-1]["greedy_acc"])]
    write_summary(out, claims, mode=args.mode, iterations=args.iterations)
    print(format_claims(claims))


def load_policy(args, dist_info) -> tuple[Runtime, torch.nn.Module, str]:
    """P0 (FSDP2-sharded, fp32 master weights), its tokenizer, sampler and the PRM. The toy's P0
    is built by rank 0 (cached), the other ranks then find it."""
    if args.model in TOY_MODEL_VALUES and dist_info.is_main:
        build_warm_start(args)
    barrier()
    model_path = build_warm_start(args) if args.model in TOY_MODEL_VALUES else args.model
    tok = load_tokenizer(model_path)
    model = shard_model(
        load_model(model_path), dist_info, gradient_checkpointing=args.gradient_checkpointing
    )
    sampler = make_sampler(args.sampler, model, tok, model_path=model_path, args=args)
    rt = Runtime(args, dist_info, tok, sampler, make_prm(args, dist_info.device))
    return rt, model, model_path


def suite_prompt(args, question: str, tok) -> list[dict]:
    return chat(args, question)


def eval_only(args, suite):
    """`--eval_only`: SimpleRL-Zoo's six benchmarks, asked with this script's --prompt_template."""
    is_toy = args.model in TOY_MODEL_VALUES
    path = build_warm_start(args) if is_toy else args.model
    prompt = functools.partial(suite_prompt, args)
    evaluate_model(suite, path, prompt, args.sampler, args.output_dir, args.seed, is_toy=is_toy)
