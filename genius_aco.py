"""Genius: stepwise foresight re-sampling + Advantage-Calibrated Optimization (ACO).

Paper: "Genius: A Generalizable and Purely Unsupervised Self-Training Framework For Advanced Reasoning",
Xu et al., arXiv 2504.08672 (ACL 2025). Released code: github.com/xufangzhi/Genius.

Idea: a model improves its reasoning from queries alone (no answers, no reward model). It writes the
answer one step (= one line) at a time; at each of K timestamps every one of M beams proposes N candidate
steps, each candidate is rolled out once to the end ("foresight"), and the candidate's value f is the
mean token log-prob of that rollout. Two beams are re-sampled from softmax(f / tau); the best candidate
and a re-sampled other one (whole trajectories) become a preference pair. ACO is DPO with the rejected
term scaled by w = min(1, exp(-(A_l - A_w) / alpha)), where A = f minus the value of the candidate's own
beam: if the "rejected" step improved its beam more than the winner did, the label is probably noisy
and the rejected side is pushed down less.

Departures (from the paper and the released code):
  1. w uses the paper's min(1, .) (default); `--clamp code` gives the released max(1, .)
     (aco-training/open_instruct/aco_utils.py and the README use max).
  2. Rejected step re-sampled from the distribution without the winner (paper); `--rejected uniform` is
     the released rule, `--rejected lowest --beam_selection greedy` the paper's "w/o sampling" ablation.
  3. A candidate step that ends the response (end-of-turn instead of a newline) has nothing to look
     ahead at: its f is the mean log-prob of its own tokens and its beam stops growing (the released code
     never uses `traj_complete` and keeps stepping).
  4. Pairs are written directly by the sampler, one per timestamp (the released pair builder,
     foresight-sampling/construct_foresight_preference_data.py, skips every record because its lists
     have unequal lengths).
  5. Own FSDP2 DPO/ACO loop instead of open-instruct + ZeRO-3; reference log-probs are computed once
     with the initial model before training (the same frozen reference, without a second model).
  6. The sample stage is data-parallel: every rank holds the full model (HF generate or its own vLLM).
  7. Toy: a tiny Qwen2 warm-started on running-sum CoT whose demonstrator, when adding a 5, switches
     to guessing more often than not (so the base guesses there); toy lr/batch/epochs/lengths (Args
     marked 'toy').
  8. `--data` queries are the first --num_queries of a permutation seeded by --seed (the paper: 25K
     random queries; the permutation keeps ids stable when --num_queries grows). `--step_value step`
     is the paper's "w/o foresight" ablation (f from the step's own tokens; pairs hold no rollout).

Commands (naming --model selects the paper preset, PAPER below; flags you pass win; --print_config shows
the effective configuration without loading anything):
  CPU toy:  python genius_aco.py
  1 GPU:    python genius_aco.py --stage sample --sampler vllm --model meta-llama/Llama-3.1-8B-Instruct \
                --data xufangzhi/Magpie_reasoning_150K_train
            python genius_aco.py --stage train --model meta-llama/Llama-3.1-8B-Instruct
  8 GPUs:   torchrun --nproc_per_node=8 genius_aco.py --stage sample --sampler vllm \
                --model meta-llama/Llama-3.1-8B-Instruct --data xufangzhi/Magpie_reasoning_150K_train
            torchrun --nproc_per_node=8 genius_aco.py --stage train --model meta-llama/Llama-3.1-8B-Instruct \
                --pairs_file runs/genius_aco/pairs.jsonl
"""

from __future__ import annotations

import json
import math
import random
import zlib
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Literal

import torch
import torch.nn.functional as F
from tqdm import tqdm

from common.claims import claim, format_claims, write_summary
from common.config import parse_config, per_rank
from common.data import DataError, load_rows, read_jsonl_tolerant, write_jsonl
from common.evaluation import EvalArgs, evaluate_model
from common.models import load_model, load_tokenizer, make_tiny_lm
from common.rewards import extract_answer, math_equal_batch
from common.sampling import HFSampler, VLLMArgs, generate_local, make_sampler, render_prompt
from common.toys import toy_model
from common.train import (
    MetricsLogger,
    all_gather_object,
    barrier,
    cleanup_distributed,
    clip_grad_norm,
    format_table,
    init_distributed,
    load_checkpoint,
    make_optimizer,
    make_scheduler,
    pad_batch,
    print0,
    save_checkpoint,
    seed_everything,
    sequence_logprob,
    sft_loss,
    shard_model,
)

STOP = ["\n", "<end_of_reasoning>"]  # §1.1: a step is one line
PAIR_FIELDS = ("query", "chosen", "rejected", "chosen_advantage", "rejected_advantage")


@dataclass
class Args(VLLMArgs):
    # generic
    seed: int = field(
        default=42,
        metadata={"help": "random seed (the released code seeds its rejected draw with 42)"},
    )
    output_dir: str = field(
        default="runs/genius_aco", metadata={"help": "pairs, checkpoint, metrics.jsonl, curves.png"}
    )
    model: str = field(
        default="",
        metadata={
            "help": "hub id or folder (the paper trains LLaMA3.1-8B-Instruct, Qwen2.5-3B/7B-Instruct); empty = tiny offline model warm-started on the arithmetic toy"
        },
    )
    data: str = field(
        default="",
        metadata={
            "help": "queries: hub id or .jsonl/.json/.parquet (the paper uses xufangzhi/Magpie_reasoning_150K_train or OpenHermes_48K_train); empty = toy arithmetic queries, answers hidden"
        },
    )
    query_field: str = field(
        default="instruction", metadata={"help": "field of --data holding the query"}
    )
    eval_data: str = field(
        default="",
        metadata={
            "help": "rows with the query field and 'answer' for accuracy before/after; empty = the toy's held-out rows when --data is empty, else none"
        },
    )
    num_eval_queries: int = field(
        default=64, metadata={"help": "held-out toy queries for the accuracy before/after"}
    )
    num_queries: int = field(
        default=128,
        metadata={
            "help": "queries to sample from; toy 128; paper: 25000 (25K random Magpie queries; 32K for OpenHermes)"
        },
    )
    stage: Literal["sample", "train", "all"] = field(
        default="all", metadata={"help": "sample | train | all"}
    )
    pairs_file: str = field(
        default="",
        metadata={
            "help": "JSONL of pairs written by --stage sample, read by --stage train; empty = <output_dir>/pairs.jsonl"
        },
    )
    resume: bool = field(
        default=False,
        metadata={
            "help": "sample: keep and skip queries already in the pairs file; train: continue from <output_dir>/checkpoint"
        },
    )
    sampler: Literal["hf", "vllm"] = field(
        default="hf", metadata={"help": "hf | vllm (sample stage)"}
    )
    vllm_gpu_memory_utilization: float = field(
        default=0.9,
        metadata={"help": "vLLM memory share in the sample stage (nothing else on the GPU then)"},
    )
    track: bool = field(default=False, metadata={"help": "log to Weights & Biases"})
    # foresight re-sampling, §1.1
    num_beams: int = field(default=2, metadata={"help": "M beams (§1.1)"})
    num_candidates: int = field(default=4, metadata={"help": "N candidate steps per beam (§1.1)"})
    num_steps: int = field(default=4, metadata={"help": "K timestamps, one pair each (§1.1/§1.2)"})
    step_temperature: float = field(
        default=0.6, metadata={"help": "temperature of the candidate steps (§1.1)"}
    )
    foresight_temperature: float = field(
        default=1.0,
        metadata={
            "help": "temperature of foresight rollouts and completions (not set in the code: vLLM's 1.0, §1.1)"
        },
    )
    tau: float = field(
        default=0.1, metadata={"help": "re-sampling distribution softmax(f / tau) (§1.1)"}
    )
    prefill: str = field(
        default="The reasoning steps are:\n\n", metadata={"help": "assistant pre-fill (§1.1)"}
    )
    max_step_tokens: int = field(
        default=16,
        metadata={"help": "max tokens of a step; toy 16; paper: 1024 (released sampling code)"},
    )
    max_foresight_tokens: int = field(
        default=64,
        metadata={
            "help": "max tokens of a foresight rollout; toy 64; paper: 1024 (released sampling code)"
        },
    )
    max_completion_tokens: int = field(
        default=64,
        metadata={
            "help": "max tokens when completing the beams after K steps; toy 64; paper: 3000 (released sampling code)"
        },
    )
    step_value: Literal["foresight", "step"] = field(
        default="foresight",
        metadata={
            "help": (
                "foresight: f = mean log-prob of a rollout after the step (the paper) | step: the paper's "
                "'w/o foresight' ablation, f = mean log-prob of the step's own tokens, no rollout"
            )
        },
    )
    beam_selection: Literal["sample", "greedy"] = field(
        default="sample",
        metadata={"help": "sample (paper) | greedy (top-M f, the 'w/o sampling' ablation, §1.1)"},
    )
    rejected: Literal["paper", "uniform", "lowest"] = field(
        default="paper",
        metadata={
            "help": "paper = re-sampled from F without the winner | uniform = released code | lowest = greedy 'w/o sampling' ablation"
        },
    )
    queries_per_chunk: int = field(
        default=16,
        metadata={
            "help": "queries searched together per rank (batched generate); records are appended per chunk"
        },
    )
    # ACO loss, §1.3
    loss: Literal["aco", "dpo"] = field(
        default="aco", metadata={"help": "aco | dpo (the paper's main baseline, §1.5)"}
    )
    beta: float = field(default=0.1, metadata={"help": "beta (§1.3: argparse default)"})
    alpha: float = field(default=1.0, metadata={"help": "alpha of w (§1.3)"})
    clamp: Literal["paper", "code"] = field(
        default="paper", metadata={"help": "paper = w = min(1, .) | code = released max(1, .)"}
    )
    # training, §1.4
    lr: float = field(
        default=1e-4,
        metadata={"help": "learning rate, linear schedule; toy 1e-4; paper: 5e-7 (training setup)"},
    )
    batch_size: int = field(
        default=16,
        metadata={
            "help": "pairs per optimizer step, all ranks; toy 16; paper: 128 (training setup, 8 GPUs)"
        },
    )
    micro_batch_size: int = field(
        default=4,
        metadata={
            "help": "pairs per forward per rank (gradient accumulation); toy 4; paper preset: 2 (not stated; an 8B model at 1300 tokens)"
        },
    )
    epochs: int = field(
        default=2, metadata={"help": "passes over the pairs; toy 2; paper: 1 (training setup)"}
    )
    warmup_ratio: float = field(default=0.1, metadata={"help": "linear warmup share (§1.4)"})
    weight_decay: float = field(default=0.0, metadata={"help": "(§1.4: 0)"})
    max_length: int = field(default=1300, metadata={"help": "max prompt + response tokens (§1.4)"})
    max_grad_norm: float = field(
        default=1.0, metadata={"help": "gradient clipping (not stated in the paper)"}
    )
    gradient_checkpointing: bool = field(
        default=False,
        metadata={
            "help": "recompute decoder layers in the backward pass; "
            "paper preset: True (not stated in the paper; needed for long sequences at 7B)"
        },
    )
    eval_fraction: float = field(
        default=0.25,
        metadata={
            "help": "share of queries whose pairs are held out for the eval metrics; toy 0.25; paper preset: 0.01 (not in the paper)"
        },
    )
    eval_every: int = field(
        default=5,
        metadata={
            "help": "optimizer steps between held-out evaluations; toy 5; paper preset: 50 (not in the paper)"
        },
    )
    save_every: int = field(default=50, metadata={"help": "optimizer steps between checkpoints"})
    toy_warmstart_steps: int = field(
        default=800,
        metadata={
            "help": (
                "SFT steps that build the cached toy base model (800: its arithmetic is crisp at T = 1, so "
                "its wrong answers are mostly guesses)"
            )
        },
    )


# The paper's values (training setup; sampling sizes from the released code), used with --preset paper (the
# default once --model is named); the defaults above are the CPU toy's. A flag on the command line wins.
PAPER = dict(
    num_queries=25000,  # 25K random Magpie queries (32K for OpenHermes)
    max_step_tokens=1024,  # released sampling code: max_tokens of a step
    max_foresight_tokens=1024,  # released sampling code: max_tokens of a foresight rollout
    max_completion_tokens=3000,  # released sampling code: completing the beams
    lr=5e-7,  # training setup (open-instruct DPO, 8xA100)
    batch_size=128,  # training setup
    epochs=1,  # training setup
    micro_batch_size=2,  # not stated: pairs per forward for an 8B model at 1300 tokens
    eval_fraction=0.01,  # not in the paper: 1% of the queries' pairs held out
    eval_every=50,  # not in the paper
    gradient_checkpointing=True,  # not stated in the paper: bounds activation memory at long sequences
)


def derived(args, world_size: int) -> dict:
    """Per-rank sizes of the train stage implied by the global batch; raises naming the flag."""
    pairs_per_rank = per_rank(args.batch_size, world_size, "--batch_size")
    return dict(
        pairs_per_rank=pairs_per_rank,
        micro_batches_per_step=-(-pairs_per_rank // args.micro_batch_size),
    )


# ---------------------------------------------------------------------------------------------------
# ALGO LOGIC: the paper's equations as small pure functions


def foresight_distribution(f: torch.Tensor, tau: float = 0.1) -> torch.Tensor:
    """§1.1: F = softmax(f / tau) over the candidates of one timestamp (float64: tau = 0.1 underflows fast)."""
    return torch.softmax(f.double() / tau, dim=-1)


def sample_distinct(probs: torch.Tensor, m: int, generator=None) -> torch.Tensor:
    """§1.1: m distinct candidate indices drawn from probs (no replacement); works on (..., C)."""
    return torch.multinomial(probs, m, replacement=False, generator=generator)


def step_value(step_logprobs: list[float], foresight_logprobs: list[float] | None = None) -> float:
    """Foresight step value: f = mean token log-prob of the rollout after the step (its tokens
    only). Without a rollout (a step that ended the response, or `--step_value step`, the paper's
    'w/o foresight' ablation) f is the mean log-prob of the step's own tokens: its uncertainty."""
    lps = foresight_logprobs if foresight_logprobs else step_logprobs
    return sum(lps) / max(1, len(lps))


def step_advantages(f: torch.Tensor, beam_value: torch.Tensor) -> torch.Tensor:
    """§1.1: A = f - Q of the candidate's own beam (Q = 0 at the first timestamp, so A = f there)."""
    return f - beam_value


def choose_pair(
    f: torch.Tensor, probs: torch.Tensor, rule: str = "paper", generator=None
) -> tuple[int, int]:
    """§1.2: chosen = highest f; rejected re-sampled from F without the winner (paper), uniform over the
    others (released code) or the lowest f (the 'w/o sampling' ablation)."""
    chosen = int(torch.argmax(f))
    others = probs.double().clone()
    others[chosen] = 0.0
    if rule == "lowest":
        return chosen, int(torch.argmin(f))
    if (
        rule == "uniform" or others.sum() <= 0
    ):  # (everything but the winner underflowed: uniform is the limit)
        others = torch.ones_like(others)
        others[chosen] = 0.0
    elif rule != "paper":
        raise ValueError(f"--rejected must be paper, uniform or lowest, got {rule!r}")
    return chosen, int(torch.multinomial(others / others.sum(), 1, generator=generator))


def aco_weight(
    adv_chosen: torch.Tensor, adv_rejected: torch.Tensor, alpha: float = 1.0, clamp: str = "paper"
) -> torch.Tensor:
    """§1.3: w = min(1, exp(-(A_l - A_w) / alpha)) (paper) or max(1, .) (released code); no gradient."""
    raw = torch.exp(-(adv_rejected - adv_chosen).detach() / alpha)
    if clamp == "paper":
        return raw.clamp(max=1.0)
    if clamp == "code":
        return raw.clamp(min=1.0)
    raise ValueError(f"--clamp must be 'paper' or 'code', got {clamp!r}")


def aco_loss(
    policy_chosen_logps,
    policy_rejected_logps,
    ref_chosen_logps,
    ref_rejected_logps,
    adv_chosen,
    adv_rejected,
    beta: float = 0.1,
    alpha: float = 1.0,
    clamp: str = "paper",
) -> torch.Tensor:
    """§1.3: per-pair -log sigmoid(beta * Delta_w - beta * w * Delta_l), Delta = log pi_theta - log pi_ref
    summed over response tokens. A_l <= A_w (paper) or alpha -> inf gives w = 1, i.e. DPO."""
    w = aco_weight(adv_chosen, adv_rejected, alpha, clamp)  # (B,) detached
    delta_w = policy_chosen_logps - ref_chosen_logps  # (B,)
    delta_l = policy_rejected_logps - ref_rejected_logps  # (B,)
    return -F.logsigmoid(beta * delta_w - beta * w * delta_l)


def dpo_loss(
    policy_chosen_logps,
    policy_rejected_logps,
    ref_chosen_logps,
    ref_rejected_logps,
    beta: float = 0.1,
) -> torch.Tensor:
    """The DPO baseline (§1.5 loss ablation): per-pair -log sigmoid(beta * (Delta_w - Delta_l))."""
    return -F.logsigmoid(
        beta
        * ((policy_chosen_logps - ref_chosen_logps) - (policy_rejected_logps - ref_rejected_logps))
    )


# ---------------------------------------------------------------------------------------------------
# foresight re-sampling over a chunk of queries (§1.1), batched through the Sampler


@dataclass
class Beam:
    steps: list  # chosen step texts so far
    value: float = 0.0  # Q: the f of the step that last extended it
    done: bool = False  # its last step ended the response


def foresight_search(
    sampler, chat_prompts: list[str], query_ids: list[str], queries: list[str], args, generator
) -> tuple[list[list[dict]], list[dict], dict]:
    """Run §1.1 for several queries at once. Returns the pairs per query (one per timestamp, §1.2), the
    completed beams per query, and counts of odd outputs."""
    head = lambda qi, steps: chat_prompts[qi] + args.prefill + "".join(s + "\n" for s in steps)  # noqa: E731
    beams = [[Beam([]) for _ in range(args.num_beams)] for _ in chat_prompts]
    pairs = [[] for _ in chat_prompts]
    counts = {
        "candidates": 0,
        "ended_response": 0,
        "truncated_steps": 0,
        "queries_short_of_K_pairs": 0,
    }
    for t in range(args.num_steps):
        live = [(qi, b) for qi, bs in enumerate(beams) for b in bs if not b.done]
        step_outs = generate_local(
            sampler,
            [head(qi, b.steps) for qi, b in live],
            n=args.num_candidates,
            temperature=args.step_temperature,
            max_new_tokens=args.max_step_tokens,
            stop=STOP,
        )
        cands = []  # dict per candidate step
        for (qi, beam), outs in zip(live, step_outs):
            for c in outs:
                ended = c.finish_reason == "stop" and not any(c.text.endswith(s) for s in STOP)
                text = next((c.text[: -len(s)] for s in STOP if c.text.endswith(s)), c.text)
                counts["truncated_steps"] += c.finish_reason == "length"
                cands.append(
                    dict(qi=qi, beam=beam, step=text, ended=ended, step_logprobs=c.logprobs)
                )
        looking = [c for c in cands if not c["ended"]] if args.step_value == "foresight" else []
        heads = [head(c["qi"], c["beam"].steps + [c["step"]]) for c in looking]
        rollouts = generate_local(
            sampler,
            heads,
            n=1,
            temperature=args.foresight_temperature,
            max_new_tokens=args.max_foresight_tokens,
        )
        for c, outs in zip(looking, rollouts):
            c["foresight"], c["f"] = outs[0].text, step_value(c["step_logprobs"], outs[0].logprobs)
        for c in cands:
            if "f" not in c:  # no look-ahead: the step ended the response (departure 3), or
                # --step_value step: f from the step's own tokens
                c["foresight"], c["f"] = "", step_value(c["step_logprobs"])
        counts["candidates"] += len(cands)
        counts["ended_response"] += sum(c["ended"] for c in cands)
        for qi in range(len(chat_prompts)):
            mine = [c for c in cands if c["qi"] == qi]
            if len(mine) < 2:
                continue
            f = torch.tensor([c["f"] for c in mine], dtype=torch.float64)  # (C,)
            adv = step_advantages(
                f, torch.tensor([c["beam"].value for c in mine], dtype=torch.float64)
            )  # (C,)
            probs = foresight_distribution(f, args.tau)  # (C,)
            win, lose = choose_pair(f, probs, args.rejected, generator)
            traj = lambda c: (
                args.prefill
                + "".join(s + "\n" for s in c["beam"].steps)
                + c["step"]
                + ("" if c["ended"] else "\n" + c["foresight"])
            )  # noqa: E731
            pairs[qi].append(
                dict(
                    id=f"{query_ids[qi]}-t{t}",
                    query_id=query_ids[qi],
                    query=queries[qi],
                    timestamp=t,
                    chosen=traj(mine[win]),
                    rejected=traj(mine[lose]),
                    chosen_f=float(f[win]),
                    rejected_f=float(f[lose]),
                    chosen_advantage=float(adv[win]),
                    rejected_advantage=float(adv[lose]),
                    candidate_f=f.tolist(),
                )
            )
            done = [b for b in beams[qi] if b.done]
            m = min(args.num_beams - len(done), len(mine))
            keep = (
                torch.topk(f, m).indices
                if args.beam_selection == "greedy"
                else sample_distinct(probs, m, generator)
            )
            beams[qi] = done + [
                Beam(mine[i]["beam"].steps + [mine[i]["step"]], float(f[i]), mine[i]["ended"])
                for i in keep.tolist()
            ]
    live = [(qi, b) for qi, bs in enumerate(beams) for b in bs if not b.done]
    finals = generate_local(
        sampler,
        [head(qi, b.steps) for qi, b in live],
        n=1,
        temperature=args.foresight_temperature,
        max_new_tokens=args.max_completion_tokens,
    )
    completed = [dict(query_id=qid, query=q, responses=[]) for qid, q in zip(query_ids, queries)]
    for (qi, b), outs in zip(live, finals):
        completed[qi]["responses"].append(
            args.prefill + "".join(s + "\n" for s in b.steps) + outs[0].text
        )
    for qi, bs in enumerate(beams):
        completed[qi]["responses"] += [args.prefill + "\n".join(b.steps) for b in bs if b.done]
        counts["queries_short_of_K_pairs"] += len(pairs[qi]) < args.num_steps
    return pairs, completed, counts


# ---------------------------------------------------------------------------------------------------
# the toy: arithmetic with one partial sum per line; a cached warm-started tiny "base" model


def make_toy_rows(
    n: int, seed: int, pool: str, num_terms: int = 5, max_term: int = 5, guess_rate: float = 0.0
) -> list[dict]:
    """'What is 3 + 1 + 4 + 2 + 2?' -> lines '3 + 1 = 4' ... 'The answer is 12.'. pool 'sft' /
    'heldout' split the query space by a hash, so held-out queries never appear in the warm-start.
    With guess_rate, the demonstrator is unsure when it adds the largest term (max_term): there it
    switches, with that probability, to guessing, 'a + b is about c' with c off by up to 2, and
    keeps guessing to the end. With guess_rate > 0.5 a base model learnt from it is more likely to
    guess than to compute at such a line (so greedy decoding mostly guesses there), after which the
    rest of its answer is unpredictable and usually wrong: the situation Genius's foresight is
    built to notice (a computed line leads to a predictable rest, a guess does not)."""
    rng, rows, seen = random.Random(seed), [], set()
    for _ in range(1000 * n):
        if len(rows) == n:
            break
        terms = [rng.randint(1, max_term) for _ in range(num_terms)]
        query = "What is " + " + ".join(map(str, terms)) + "?"
        if (zlib.crc32(query.encode()) % 5 == 0) != (pool == "heldout") or (
            pool == "heldout" and query in seen
        ):
            continue
        seen.add(query)
        lines, carried, guessing = [], terms[0], False
        for x in terms[1:]:
            guessing = guessing or (x == max_term and rng.random() < guess_rate)
            shown = carried + x + (rng.randint(-2, 2) if guessing else 0)
            lines.append(f"{carried} + {x} {'is about' if guessing else '='} {shown}")
            carried = shown
        rows.append(
            {
                "instruction": query,
                "answer": str(sum(terms)),
                "cot": "\n".join(lines) + f"\nThe answer is {carried}.",
            }
        )
    if len(rows) < n:
        raise ValueError(
            f"the toy's {pool} pool has fewer than {n} distinct queries (lower --num_queries)"
        )
    return rows


def encode_response(tok, query: str, response: str, max_length: int) -> tuple[list[int], list[int]]:
    """Prompt ids (chat template + generation prompt) and response ids (the template's end-of-turn included)."""
    messages = [{"role": "user", "content": query}]
    prompt = render_prompt(tok, messages)
    full = tok.apply_chat_template(
        messages + [{"role": "assistant", "content": response}], tokenize=False
    )
    tail = (
        full[len(prompt) :]
        if full.startswith(prompt) and response in full
        else response + tok.eos_token
    )
    p_ids, r_ids = (
        tok(prompt, add_special_tokens=False).input_ids,
        tok(tail, add_special_tokens=False).input_ids,
    )
    return p_ids, r_ids[: max(1, max_length - len(p_ids))]


def toy_base_model(args, prefill: str) -> str:
    """Warm-start the tiny LM by a short SFT on toy CoT (sft pool only), cached like common.models."""
    spec = dict(steps=args.toy_warmstart_steps, lr=5e-3, batch=32, guess_rate=0.6, prefill=prefill)

    def build(folder):
        path = make_tiny_lm()
        tok, model = load_tokenizer(path), load_model(path, dtype="float32")
        rows = make_toy_rows(4000, seed=1, pool="sft", guess_rate=spec["guess_rate"])
        opt = make_optimizer(model, spec["lr"])
        sched = make_scheduler(opt, "linear", spec["steps"] // 20, spec["steps"])
        rng = random.Random(0)
        for _ in tqdm(range(spec["steps"]), desc="toy warm-start (cached)"):
            batch = [
                encode_response(tok, r["instruction"], prefill + r["cot"], 512)
                for r in rng.sample(rows, spec["batch"])
            ]
            sft_loss(model, *pad_batch(*zip(*batch), tok.pad_token_id)).backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step(), sched.step(), opt.zero_grad()
        model.save_pretrained(folder)
        tok.save_pretrained(folder)

    return toy_model("genius_aco-base", spec, build, code=[make_toy_rows, encode_response])


@torch.no_grad()
def heldout_accuracy(model, tok, rows, args, dist_info) -> dict:
    """Share of held-out queries answered right, greedy and at T = 1 (the paper evaluates at T = 1.0)."""
    sampler, mine = HFSampler(model, tok), rows[dist_info.rank :: dist_info.world_size]
    prompts = [
        render_prompt(tok, [{"role": "user", "content": r[args.query_field]}]) + args.prefill
        for r in mine
    ]
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


# ---------------------------------------------------------------------------------------------------
# stages


def sample_queries(rows: list, n: int | None, seed: int) -> list:
    """The paper trains on 25K *random* Magpie queries (32K OpenHermes): the first n rows of a
    seeded permutation, so a larger n extends a smaller one (same seed) and query ids stay stable
    on resume."""
    order = list(range(len(rows)))
    random.Random(seed).shuffle(order)
    return [rows[i] for i in order[:n]]


def load_pairs(path) -> list[dict]:
    """Pairs JSONL -> records; a malformed line or a missing field is an error naming file:line."""
    rows = load_rows(str(path), required=PAIR_FIELDS)
    for i, r in enumerate(rows, 1):
        if not all(
            isinstance(r[k], (int, float)) for k in ("chosen_advantage", "rejected_advantage")
        ):
            raise DataError(
                f"{path}: record {i}: chosen_advantage / rejected_advantage must be numbers"
            )
    return rows


def sample_stage(args, dist_info, model_path, tok, query_rows, pairs_path):
    """§1.1-1.2 over all queries: each rank searches its share, rank 0 appends complete records per chunk."""
    done = set()
    if args.resume:
        if dist_info.is_main and pairs_path.exists() and not pairs_path.read_text().endswith("\n"):
            text = pairs_path.read_text()  # a line cut short by a kill: drop it before appending
            pairs_path.write_text(text[: text.rfind("\n") + 1])
        barrier()
        done = {str(r.get("query_id")) for r in read_jsonl_tolerant(pairs_path)}
    elif dist_info.is_main and pairs_path.exists():
        print0(f"overwriting {pairs_path} (pass --resume to keep its records and continue)")
        pairs_path.unlink()
        (pairs_path.parent / "completions.jsonl").unlink(missing_ok=True)
    todo = [(str(i), r[args.query_field]) for i, r in enumerate(query_rows) if str(i) not in done]
    print0(f"sample stage: {len(todo)} queries to search ({len(done)} already in {pairs_path})")
    mine = todo[dist_info.rank :: dist_info.world_size]
    n_chunks = max(
        1, math.ceil(math.ceil(len(todo) / dist_info.world_size) / args.queries_per_chunk)
    )
    if args.sampler == "vllm":
        sampler = make_sampler("vllm", model_path=model_path, args=args)  # one engine per rank
    else:
        sampler = make_sampler("hf", load_model(model_path, device=dist_info.device), tok)
    totals = {}
    for chunk in tqdm(range(n_chunks), desc="foresight sampling", disable=not dist_info.is_main):
        part = mine[chunk * args.queries_per_chunk : (chunk + 1) * args.queries_per_chunk]
        seed_everything(args.seed + 1000 * chunk + dist_info.rank)
        generator = torch.Generator().manual_seed(args.seed + 1000 * chunk + dist_info.rank)
        prompts = [render_prompt(tok, [{"role": "user", "content": q}]) for _, q in part]
        pairs, completed, counts = foresight_search(
            sampler, prompts, [i for i, _ in part], [q for _, q in part], args, generator
        )
        gathered = all_gather_object((pairs, completed, counts))
        if dist_info.is_main:
            for rank_pairs, rank_completed, rank_counts in gathered:
                write_jsonl(
                    pairs_path, [p for per_query in rank_pairs for p in per_query], mode="a"
                )
                write_jsonl(pairs_path.parent / "completions.jsonl", rank_completed, mode="a")
                totals = {k: totals.get(k, 0) + v for k, v in rank_counts.items()}
    del sampler
    if dist_info.is_main:
        print0("sample stage counts: " + json.dumps(totals))
    barrier()


def batch_logps(model, tok, encoded, idx, device):
    """Summed response log-probs of chosen and rejected for the pairs `idx`: two (b,) tensors."""
    prompts = [encoded[i][0] for i in idx] * 2
    responses = [encoded[i][1] for i in idx] + [encoded[i][2] for i in idx]
    ids, att, mask = (
        x.to(device) for x in pad_batch(prompts, responses, tok.pad_token_id)
    )  # (2b, L)
    logps = sequence_logprob(model, ids, att, mask)  # (2b,)
    return logps[: len(idx)], logps[len(idx) :]


def pair_losses(args, pol_c, pol_r, ref_c, ref_r, adv_c, adv_r):
    """The selected loss per pair, the ACO logit (margin) and w."""
    w = (
        aco_weight(adv_c, adv_r, args.alpha, args.clamp)
        if args.loss == "aco"
        else torch.ones_like(adv_c)
    )
    losses = (
        aco_loss(pol_c, pol_r, ref_c, ref_r, adv_c, adv_r, args.beta, args.alpha, args.clamp)
        if args.loss == "aco"
        else dpo_loss(pol_c, pol_r, ref_c, ref_r, args.beta)
    )
    return losses, args.beta * ((pol_c - ref_c) - w * (pol_r - ref_r)), w


def summarize(stats: list[tuple], prefix: str) -> dict:
    """stats rows (loss, logratio_chosen, logratio_rejected, margin, w) -> the logged metrics."""
    loss, lc, lr_, margin, w = (torch.tensor(col, dtype=torch.float64) for col in zip(*stats))
    q = torch.quantile(w, torch.tensor([0.1, 0.5, 0.9], dtype=torch.float64))
    return {
        f"{prefix}/loss": loss.mean().item(),
        f"{prefix}/logratio_chosen": lc.mean().item(),
        f"{prefix}/logratio_rejected": lr_.mean().item(),
        f"{prefix}/margin": margin.mean().item(),
        f"{prefix}/reward_accuracy": (margin > 0).double().mean().item(),
        f"{prefix}/w_mean": w.mean().item(),
        f"{prefix}/w_p10": q[0].item(),
        f"{prefix}/w_p50": q[1].item(),
        f"{prefix}/w_p90": q[2].item(),
        f"{prefix}/w_frac_below_1": (w < 1).double().mean().item(),
        f"{prefix}/w_frac_above_1": (w > 1).double().mean().item(),
    }


@torch.no_grad()
def sharded_logps(model, tok, encoded, idx, args, dist_info):
    """Chosen/rejected log-probs of pairs `idx`, each rank its slice (equal forward counts), gathered."""
    per_rank = math.ceil(len(idx) / dist_info.world_size)
    mine = idx[dist_info.rank :: dist_info.world_size]
    mine = mine + [idx[0]] * (
        per_rank - len(mine)
    )  # padding rows keep the FSDP2 forwards in lock step
    out = []
    for s in range(0, per_rank, args.micro_batch_size):
        c, r = batch_logps(
            model, tok, encoded, mine[s : s + args.micro_batch_size], dist_info.device
        )
        out += [
            (i, a, b)
            for i, a, b in zip(mine[s : s + args.micro_batch_size], c.tolist(), r.tolist())
        ]
    return {i: (a, b) for part in all_gather_object(out) for i, a, b in part}


def weight_spread(w: torch.Tensor) -> dict:
    """How far ACO departs from DPO on these pairs: the distribution of w (DPO: w = 1)."""
    q = torch.quantile(w.double(), torch.tensor([0.1, 0.5], dtype=torch.float64))
    stats = {
        "mean": w.mean(),
        "min": w.min(),
        "p10": q[0],
        "p50": q[1],
        "frac_below_1": (w < 1).double().mean(),
        "frac_above_1": (w > 1).double().mean(),
    }
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


def train_stage(args, dist_info, model_path, tok, pairs_path, eval_rows):
    """§1.3-1.4: ACO (or DPO) on the pairs against the frozen initial model, FSDP2 under torchrun."""
    pairs = load_pairs(pairs_path)
    held = {
        p["query_id"]
        for p in pairs
        if zlib.crc32(str(p["query_id"]).encode()) % 1000 < 1000 * args.eval_fraction
    }
    train_idx = [i for i, p in enumerate(pairs) if p["query_id"] not in held]
    eval_idx = [i for i, p in enumerate(pairs) if p["query_id"] in held]
    if args.batch_size % dist_info.world_size or len(train_idx) < args.batch_size:
        raise ValueError(
            f"--batch_size {args.batch_size} must be a multiple of the {dist_info.world_size} ranks and at most the {len(train_idx)} training pairs in {pairs_path}"
        )
    encoded = []
    for p in pairs:
        prompt, chosen = encode_response(tok, p["query"], p["chosen"], args.max_length)
        encoded.append(
            (prompt, chosen, encode_response(tok, p["query"], p["rejected"], args.max_length)[1])
        )
    adv = torch.tensor(
        [[p["chosen_advantage"], p["rejected_advantage"]] for p in pairs], dtype=torch.float32
    )  # (P, 2)
    # common.train's precision policy: fp32 masters + AdamW state; bf16 compute on CUDA (§1.4: bf16), one GPU included
    model = shard_model(
        load_model(model_path, dtype="float32"),
        dist_info,
        gradient_checkpointing=args.gradient_checkpointing,
    )
    steps_per_epoch = len(train_idx) // args.batch_size
    total_steps = steps_per_epoch * args.epochs
    optimizer = make_optimizer(model, args.lr, weight_decay=args.weight_decay)
    scheduler = make_scheduler(
        optimizer, "linear", int(args.warmup_ratio * total_steps), total_steps
    )
    ckpt_dir, ref_path = (
        Path(args.output_dir) / "checkpoint",
        Path(args.output_dir) / "ref_logps.json",
    )
    resumed = load_checkpoint(ckpt_dir, model, optimizer, scheduler) if args.resume else None
    start_step, extra = resumed if resumed else (0, {})
    if (
        resumed and ref_path.exists()
    ):  # the model has moved: the reference must come from the first run
        ref = {int(k): tuple(v) for k, v in json.loads(ref_path.read_text()).items()}
    else:  # frozen reference = the initial model (§1.3), computed once before any update
        ref = sharded_logps(model, tok, encoded, list(range(len(pairs))), args, dist_info)
        if dist_info.is_main:
            ref_path.write_text(json.dumps(ref))
    ref_t = torch.tensor([ref[i] for i in range(len(pairs))], dtype=torch.float32)  # (P, 2)
    logger = MetricsLogger(
        args.output_dir,
        track=args.track,
        run_name="genius_aco",
        config=asdict(args),
        resume_step=start_step if resumed else None,
    )
    acc_before = extra.get("acc_before") or (
        heldout_accuracy(model, tok, eval_rows, args, dist_info) if eval_rows else {}
    )

    def evaluate(step):
        if not eval_idx:
            return
        pol = sharded_logps(model, tok, encoded, eval_idx, args, dist_info)
        pc, pr = (torch.tensor([pol[i][k] for i in eval_idx]) for k in (0, 1))
        losses, margin, w = pair_losses(
            args, pc, pr, ref_t[eval_idx, 0], ref_t[eval_idx, 1], adv[eval_idx, 0], adv[eval_idx, 1]
        )
        logger.log(
            summarize(
                list(
                    zip(
                        losses.tolist(),
                        (pc - ref_t[eval_idx, 0]).tolist(),
                        (pr - ref_t[eval_idx, 1]).tolist(),
                        margin.tolist(),
                        w.tolist(),
                    )
                ),
                "eval",
            ),
            step,
        )

    if start_step == 0:
        evaluate(0)
    model.train()
    for step in tqdm(
        range(start_step, total_steps),
        desc="ACO training",
        disable=not dist_info.is_main,
        initial=start_step,
        total=total_steps,
    ):
        epoch, k = divmod(step, steps_per_epoch)
        order = train_idx[:]
        random.Random(args.seed + epoch).shuffle(
            order
        )  # the same order on every rank and after a resume
        mine = order[k * args.batch_size : (k + 1) * args.batch_size][
            dist_info.rank :: dist_info.world_size
        ]
        stats = []
        for s in range(0, len(mine), args.micro_batch_size):
            idx = mine[s : s + args.micro_batch_size]
            pol_c, pol_r = batch_logps(model, tok, encoded, idx, dist_info.device)  # (b,), (b,)
            ref_c, ref_r = ref_t[idx, 0].to(pol_c.device), ref_t[idx, 1].to(pol_c.device)
            losses, margin, w = pair_losses(
                args,
                pol_c,
                pol_r,
                ref_c,
                ref_r,
                adv[idx, 0].to(pol_c.device),
                adv[idx, 1].to(pol_c.device),
            )
            (
                losses.sum() / len(mine)
            ).backward()  # mean over this rank's pairs; FSDP2 averages over ranks
            stats += zip(
                losses.tolist(),
                (pol_c - ref_c).tolist(),
                (pol_r - ref_r).tolist(),
                margin.tolist(),
                w.tolist(),
            )
        grad_norm = clip_grad_norm(model, args.max_grad_norm)
        optimizer.step(), scheduler.step(), optimizer.zero_grad()
        metrics = summarize([row for part in all_gather_object(stats) for row in part], "train")
        logger.log(
            {
                **metrics,
                "train/grad_norm": grad_norm,
                "train/lr": scheduler.get_last_lr()[0],
                "epoch": epoch,
            },
            step + 1,
        )
        if (step + 1) % args.eval_every == 0 or step + 1 == total_steps:
            evaluate(step + 1)
        if (step + 1) % args.save_every == 0 or step + 1 == total_steps:
            save_checkpoint(
                ckpt_dir, model, optimizer, scheduler, step + 1, extra={"acc_before": acc_before}
            )
    acc_after = heldout_accuracy(model, tok, eval_rows, args, dist_info) if eval_rows else {}
    w = aco_weight(adv[train_idx, 0], adv[train_idx, 1], args.alpha, args.clamp)  # (P_train,)
    w_train = weight_spread(w)
    print0(f"w over the training pairs (ACO's scale on the rejected side; DPO: 1): {w_train}")
    logger.plot(
        [
            "eval/loss",
            "eval/margin",
            "eval/reward_accuracy",
            "eval/logratio_chosen",
            "eval/logratio_rejected",
            "train/loss",
            "train/w_mean",
        ]
    )
    evals = [r for r in logger.history if "eval/loss" in r]
    print0(
        f"\nheld-out pairs: {len(eval_idx)}, training pairs: {len(train_idx)}, loss: {args.loss}, clamp: {args.clamp}"
    )
    print0(
        format_table(
            [
                {
                    "step": r["step"],
                    **{
                        k[5:]: r[k]
                        for k in (
                            "eval/loss",
                            "eval/margin",
                            "eval/reward_accuracy",
                            "eval/logratio_chosen",
                            "eval/logratio_rejected",
                            "eval/w_mean",
                            "eval/w_p10",
                            "eval/w_p90",
                        )
                    },
                }
                for r in evals
            ]
        )
    )
    if acc_before:
        print0(format_table([{"model": "before", **acc_before}, {"model": "after", **acc_after}]))
    if dist_info.is_main:
        claims = run_claims(evals, acc_before, acc_after)
        write_summary(
            args.output_dir,
            claims,
            loss=args.loss,
            clamp=args.clamp,
            w_train=w_train,
            eval=evals,
            accuracy_before=acc_before,
            accuracy_after=acc_after,
        )
        print0(format_claims(claims))
    logger.close()


def main(args: Args):
    for key, choices in (
        ("stage", "sample train all"),
        ("sampler", "hf vllm"),
        ("loss", "aco dpo"),
        ("clamp", "paper code"),
        ("rejected", "paper uniform lowest"),
        ("beam_selection", "sample greedy"),
        ("step_value", "foresight step"),
    ):
        if getattr(args, key) not in choices.split():
            raise ValueError(
                f"--{key} must be one of {choices.split()}, got {getattr(args, key)!r}"
            )
    if args.sampler == "vllm" and args.stage == "all":
        raise ValueError(
            "--sampler vllm: run --stage sample and --stage train as two commands (vLLM holds its GPU memory until the process exits)"
        )
    dist_info = init_distributed()
    if (
        not torch.cuda.is_available()
    ):  # tiny-model ops are too small to split, and spinning threads on shared cores cost 10x
        torch.set_num_threads(1)
    seed_everything(args.seed)
    Path(args.output_dir).mkdir(parents=True, exist_ok=True)
    pairs_path = Path(args.pairs_file or Path(args.output_dir) / "pairs.jsonl")
    if not args.model:
        if dist_info.is_main:
            toy_base_model(args, args.prefill)
        barrier()
    model_path = args.model or toy_base_model(args, args.prefill)
    tok = load_tokenizer(model_path)
    if args.data:
        rows = load_rows(args.data, required=(args.query_field,))
        query_rows = sample_queries(rows, args.num_queries, args.seed)
    else:  # toy: queries only, answers dropped before the search ever sees them
        query_rows = [
            {"instruction": r["instruction"]}
            for r in make_toy_rows(args.num_queries, seed=2, pool="heldout")
        ]
    eval_rows = (
        load_rows(args.eval_data, required=(args.query_field, "answer")) if args.eval_data else []
    )
    if not args.data and not args.eval_data:
        rl = {r["instruction"] for r in query_rows}
        eval_rows = [
            r
            for r in make_toy_rows(args.num_eval_queries + len(rl), seed=3, pool="heldout")
            if r["instruction"] not in rl
        ][: args.num_eval_queries]
    if args.stage in ("sample", "all"):
        sample_stage(args, dist_info, model_path, tok, query_rows, pairs_path)
    if args.stage in ("train", "all"):
        if not pairs_path.exists():
            raise FileNotFoundError(
                f"--pairs_file {pairs_path} does not exist: run --stage sample first"
            )
        train_stage(args, dist_info, model_path, tok, pairs_path, eval_rows)
    cleanup_distributed()


def eval_only(args: Args, suite):
    """`--eval_only`: SimpleRL-Zoo's six benchmarks, asked with this script's prompt."""
    model_path = args.model or toy_base_model(args, args.prefill)
    user_turn = lambda q, tok: render_prompt(tok, [{"role": "user", "content": q}])  # noqa: E731
    prompt = lambda q, tok: user_turn(q, tok) + args.prefill  # noqa: E731
    evaluate_model(
        suite, model_path, prompt, args.sampler, args.output_dir, args.seed, is_toy=not args.model
    )


if __name__ == "__main__":
    cli_args, suite_args = parse_config(Args, PAPER, derived, extra=(EvalArgs,))
    if suite_args.eval_only:  # common/evaluation.py: SimpleRL-Zoo's six-benchmark evaluation
        eval_only(cli_args, suite_args)
    else:
        main(cli_args)
