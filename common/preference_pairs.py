"""Plumbing of genius_aco.py around its preference pairs: what is not the algorithm.

The queries (a seeded sample of --data, or the toy's), the prompt and pair encoding, the pairs file
(resume, reading, the held-out split), summed log-probs of a pair's two sides and the frozen
reference's, held-out accuracy before/after, the report with summary.json's claims, the toy base
and `--eval_only`. Foresight re-sampling and the ACO loss stay in genius_aco.py.
"""

from __future__ import annotations

import json
import math
import random
import zlib
from functools import partial
from pathlib import Path

import torch

from common.claims import claim, format_claims, write_summary
from common.data import DataError, load_rows, read_jsonl_tolerant, write_jsonl
from common.evaluation import evaluate_model
from common.models import end_of_turn, load_model
from common.rewards import extract_answer, math_equal_batch
from common.running_sums import make_toy_rows, toy_base_model
from common.sampling import HFSampler, generate_local, render_prompt
from common.train import (
    all_gather_object,
    barrier,
    format_table,
    pad_batch,
    print0,
    sequence_logprob,
    shard_model,
)

PAIR_FIELDS = ("query", "chosen", "rejected", "chosen_advantage", "rejected_advantage")


# ------------------------------------------------------------------------------------------------
# queries and prompts


def sample_queries(rows: list, n: int | None, seed: int) -> list:
    """The paper trains on 25K *random* Magpie queries (32K OpenHermes): the first n rows of a
    seeded permutation, so a larger n extends a smaller one (same seed) and query ids stay stable
    on resume."""
    order = list(range(len(rows)))
    random.Random(seed).shuffle(order)
    return [rows[i] for i in order[:n]]


def load_queries(args) -> tuple[list[dict], list[dict]]:
    """(queries to search, rows with answers for accuracy before/after). The toy's queries carry
    no answers (dropped before the search sees them); its eval rows are other held-out queries."""
    if args.data:
        rows = load_rows(args.data, required=(args.query_field,))
        query_rows = sample_queries(rows, args.num_queries, args.seed)
    else:
        toy = make_toy_rows(args.num_queries, seed=2, pool="heldout")
        query_rows = [{"instruction": r["instruction"]} for r in toy]
    if args.eval_data:
        return query_rows, load_rows(args.eval_data, required=(args.query_field, "answer"))
    if args.data:
        return query_rows, []
    searched = {r["instruction"] for r in query_rows}
    candidates = make_toy_rows(args.num_eval_queries + len(searched), seed=3, pool="heldout")
    eval_rows = [r for r in candidates if r["instruction"] not in searched]
    return query_rows, eval_rows[: args.num_eval_queries]


def encode_response(tok, query: str, response: str, max_length: int) -> tuple[list, list]:
    """(prompt ids, response ids) as the chat template renders them: the prompt is the user turn
    plus the generation prompt, the response ends with the template's end-of-turn; the response
    is cut so that both fit in max_length (open-instruct's --max_seq_length)."""
    messages = [{"role": "user", "content": query}]
    prompt = render_prompt(tok, messages)
    full = tok.apply_chat_template(
        messages + [{"role": "assistant", "content": response}], tokenize=False
    )
    if full.startswith(prompt) and response in full:
        tail = full[len(prompt) :]
    else:  # a template that rewrites the turn: the response and the end-of-turn token
        tail = response + end_of_turn(tok)
    p_ids = tok(prompt, add_special_tokens=False).input_ids
    r_ids = tok(tail, add_special_tokens=False).input_ids
    return p_ids, r_ids[: max(1, max_length - len(p_ids))]


def chat_prompt(query: str, tok, prefill: str = "") -> str:
    """The user turn through the chat template, then the assistant pre-fill."""
    return render_prompt(tok, [{"role": "user", "content": query}]) + prefill


# ------------------------------------------------------------------------------------------------
# the pairs file and log-probs


def open_pairs_file(pairs_path: Path, resume: bool, is_main: bool) -> set[str]:
    """The sample stage's start: with --resume, the query ids already in the pairs file (a line cut
    short by a kill is dropped first); else an old pairs file and its completions are removed."""
    if resume:
        if is_main and pairs_path.exists() and not pairs_path.read_text().endswith("\n"):
            text = pairs_path.read_text()  # a line cut short by a kill: drop it before appending
            pairs_path.write_text(text[: text.rfind("\n") + 1])
        barrier()
        return {str(r.get("query_id")) for r in read_jsonl_tolerant(pairs_path)}
    if is_main and pairs_path.exists():
        print0(f"overwriting {pairs_path} (pass --resume to keep its records and continue)")
        pairs_path.unlink()
        (pairs_path.parent / "completions.jsonl").unlink(missing_ok=True)
    return set()


def append_found(pairs_path: Path, gathered: list, totals: dict) -> dict:
    """Rank 0: append every rank's (pairs per query, completed beams, counts) of one chunk to the
    pairs file and completions.jsonl; returns the running counts."""
    for rank_pairs, rank_completed, rank_counts in gathered:
        write_jsonl(pairs_path, [p for per_query in rank_pairs for p in per_query], mode="a")
        write_jsonl(pairs_path.parent / "completions.jsonl", rank_completed, mode="a")
        totals = {k: totals.get(k, 0) + v for k, v in rank_counts.items()}
    return totals


def load_pairs(path) -> list[dict]:
    """Pairs JSONL -> records; a malformed line or a missing field is an error naming file:line."""
    rows = load_rows(str(path), required=PAIR_FIELDS)
    for i, r in enumerate(rows, 1):
        if not all(isinstance(r[k], (int, float)) for k in PAIR_FIELDS[3:]):
            raise DataError(
                f"{path}: record {i}: chosen_advantage / rejected_advantage must be numbers"
            )
    return rows


def split_pairs(pairs: list[dict], args, world_size: int, where) -> tuple[list[int], list[int]]:
    """(train, eval) pair indices: the pairs of a hashed --eval_fraction of the queries are held
    out, so the eval metrics measure queries never trained on."""
    held = {
        p["query_id"]
        for p in pairs
        if zlib.crc32(str(p["query_id"]).encode()) % 1000 < 1000 * args.eval_fraction
    }
    train_idx = [i for i, p in enumerate(pairs) if p["query_id"] not in held]
    eval_idx = [i for i, p in enumerate(pairs) if p["query_id"] in held]
    if args.batch_size % world_size or len(train_idx) < args.batch_size:
        raise ValueError(
            f"--batch_size {args.batch_size} must be a multiple of the {world_size} ranks and at "
            f"most the {len(train_idx)} training pairs in {where}"
        )
    return train_idx, eval_idx


def encode_pairs(tok, pairs: list[dict], max_length: int) -> list[tuple]:
    """(prompt ids, chosen ids, rejected ids) per pair."""
    encoded = []
    for p in pairs:
        prompt, chosen = encode_response(tok, p["query"], p["chosen"], max_length)
        rejected = encode_response(tok, p["query"], p["rejected"], max_length)[1]
        encoded.append((prompt, chosen, rejected))
    return encoded


def batch_logps(model, tok, encoded, idx, device):
    """Summed response log-probs of chosen and rejected for the pairs `idx`: two (b,) tensors."""
    prompts = [encoded[i][0] for i in idx] * 2
    responses = [encoded[i][1] for i in idx] + [encoded[i][2] for i in idx]
    ids, att, mask = (x.to(device) for x in pad_batch(prompts, responses, tok.pad_token_id))
    logps = sequence_logprob(model, ids, att, mask)  # (2b,)
    return logps[: len(idx)], logps[len(idx) :]


@torch.no_grad()
def sharded_logps(model, tok, encoded, idx, args, dist_info) -> dict:
    """Chosen/rejected log-probs of pairs `idx`, each rank its slice, gathered: {i: (c, r)}."""
    count = math.ceil(len(idx) / dist_info.world_size)
    mine = idx[dist_info.rank :: dist_info.world_size]
    mine = mine + [idx[0]] * (count - len(mine))  # padding keeps the FSDP2 forwards in lock step
    out = []
    for s in range(0, count, args.micro_batch_size):
        part = mine[s : s + args.micro_batch_size]
        c, r = batch_logps(model, tok, encoded, part, dist_info.device)
        out += list(zip(part, c.tolist(), r.tolist()))
    return {i: (a, b) for rank_out in all_gather_object(out) for i, a, b in rank_out}


def reference_logps(model, tok, encoded, args, dist_info, resumed: bool) -> torch.Tensor:
    """The frozen reference = the initial model: its log-probs of every pair, computed once before
    any update and saved, so a resumed run keeps the first run's reference. (P, 2)."""
    path = Path(args.output_dir) / "ref_logps.json"
    if resumed and path.exists():
        ref = {int(k): tuple(v) for k, v in json.loads(path.read_text()).items()}
    else:
        ref = sharded_logps(model, tok, encoded, list(range(len(encoded))), args, dist_info)
        if dist_info.is_main:
            path.write_text(json.dumps(ref))
    return torch.tensor([ref[i] for i in range(len(encoded))], dtype=torch.float32)


# ------------------------------------------------------------------------------------------------
# held-out accuracy, the report, the toy base, --eval_only


def load_policy(model_path: str, args, dist_info):
    """The model to train: common.train's precision policy (fp32 masters and AdamW state, bf16
    compute on CUDA), FSDP2-sharded."""
    model = load_model(model_path, dtype="float32")
    return shard_model(model, dist_info, gradient_checkpointing=args.gradient_checkpointing)


@torch.no_grad()
def heldout_accuracy(model, tok, rows, args, dist_info) -> dict:
    """Share of held-out queries answered right, greedy and at T = 1 (4 samples; the paper
    evaluates at T = 1.0)."""
    sampler = HFSampler(model, tok)
    mine = rows[dist_info.rank :: dist_info.world_size]
    prompts = [chat_prompt(r[args.query_field], tok, args.prefill) for r in mine]
    out = {}
    for name, temp in (("greedy", 0.0), ("sampled_T1", 1.0)):
        comps = generate_local(
            sampler,
            prompts,
            n=4 if temp else 1,
            temperature=temp,
            max_new_tokens=args.max_completion_tokens,
        )
        golds = [r["answer"] for cs, r in zip(comps, mine) for _ in cs]
        hits = math_equal_batch([extract_answer(c.text) for cs in comps for c in cs], golds)
        gathered = [h for part in all_gather_object(hits) for h in part]
        out[f"accuracy_{name}"] = sum(gathered) / max(1, len(gathered))
    return out


def weight_spread(w: torch.Tensor) -> dict:
    """How far ACO departs from DPO on these pairs: the distribution of w (DPO: w = 1)."""
    p10, p50 = torch.quantile(w.double(), torch.tensor([0.1, 0.5], dtype=torch.float64))
    below, above = (w < 1).double().mean(), (w > 1).double().mean()
    stats = dict(
        mean=w.mean(), min=w.min(), p10=p10, p50=p50, frac_below_1=below, frac_above_1=above
    )
    return {k: round(v.item(), 4) for k, v in stats.items()}


def run_claims(evals: list[dict], acc_before: dict, acc_after: dict) -> list[dict]:
    """summary.json's claims, from this run: the held-out pairs' loss falls (the self-made
    preferences generalise to queries never trained on) and, where rows have answers (the toy's
    held-out queries or --eval_data), held-out accuracy rises though no answer was ever used."""
    claims = []
    if len(evals) >= 2:
        first, last = evals[0]["eval/loss"], evals[-1]["eval/loss"]
        name = "held-out pair loss falls"
        claims.append(claim(name, "eval/loss", first, last, higher_is_better=False))
    for key, name in (("accuracy_greedy", "greedy"), ("accuracy_sampled_T1", "sampled (T=1)")):
        if key in acc_before and key in acc_after:
            name = f"held-out {name} accuracy rises, no labels"
            claims.append(claim(name, key, acc_before[key], acc_after[key]))
    return claims


EVAL_COLUMNS = ("loss", "margin", "reward_accuracy", "logratio_chosen", "logratio_rejected")


def report(args, logger, w_train, n_pairs, acc_before, acc_after, dist_info):
    """Curves, the held-out table, accuracy before/after and summary.json's claims."""
    print0(f"w over the training pairs (ACO's scale on the rejected side; DPO: 1): {w_train}")
    curves = [f"eval/{c}" for c in EVAL_COLUMNS] + ["train/loss", "train/w_mean"]
    logger.plot(curves)
    evals = [r for r in logger.history if "eval/loss" in r]
    n_eval, n_train = n_pairs
    print0(
        f"\nheld-out pairs: {n_eval}, training pairs: {n_train}, loss: {args.loss}, "
        f"clamp: {args.clamp}"
    )
    columns = [*EVAL_COLUMNS, "w_mean", "w_p10", "w_p90"]
    print0(
        format_table([{"step": r["step"], **{c: r[f"eval/{c}"] for c in columns}} for r in evals])
    )
    if acc_before:
        print0(format_table([{"model": "before", **acc_before}, {"model": "after", **acc_after}]))
    if dist_info.is_main:
        claims = run_claims(evals, acc_before, acc_after)
        extra = dict(loss=args.loss, clamp=args.clamp, w_train=w_train, eval=evals)
        write_summary(
            args.output_dir, claims, **extra, accuracy_before=acc_before, accuracy_after=acc_after
        )
        print0(format_claims(claims))


def base_model_path(args, dist_info) -> str:
    """--model, or the toy base (rank 0 builds it once; the others wait, then read the cache)."""
    if args.model:
        return args.model
    build = partial(toy_base_model, args.toy_warmstart_steps, args.prefill, encode_response)
    if dist_info.is_main:
        build()
    barrier()
    return build()


def eval_only(args, suite):
    """`--eval_only`: SimpleRL-Zoo's six benchmarks (common/evaluation.py), asked with this
    script's prompt (chat template + pre-fill)."""
    model_path = args.model or toy_base_model(
        args.toy_warmstart_steps, args.prefill, encode_response
    )
    prompt = partial(chat_prompt, prefill=args.prefill)
    evaluate_model(
        suite, model_path, prompt, args.sampler, args.output_dir, args.seed, is_toy=not args.model
    )
