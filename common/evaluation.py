"""SimpleRL-Zoo's evaluation suite for a trained model: `--eval_only` in zero_rl, genius_aco, bstar.

SimpleRL-Zoo (arXiv 2503.18892, Sec. 2.3 and Table 1) evaluates on GSM8K, MATH500, Minerva Math,
OlympiadBench, AIME24 and AMC23 with the Qwen2.5-Math harness (simpleRL-reason:
examples/simplelr_math_eval, code execution off), the training prompt template and up to 16K new
tokens; base models greedy, RL models at temperature 1.0 / top-p 0.95; AIME24 also as avg@32. Its
"Avg" column is the mean of the six pass@1 columns. Here:

- `greedy` row: greedy pass@1 on every benchmark (the paper's protocol for base models);
- `avg@k` row: mean accuracy of k samples per question at `--eval_suite_temperature` /
  `--eval_suite_top_p` (default 1.0 / 0.95), on the benchmarks in `--eval_avg_on` (default aime24
  and amc23; "all" for every one). avg@k estimates the expected accuracy of the paper's one sample.
- Grading: `extract_answer` + `math_equal_batch` (math-verify, as SimpleRL-Zoo's training reward;
  the paper's harness grades with Qwen's latex2sympy `math_equal`: borderline answers can differ).

Every rank generates its share of each benchmark through the project's Sampler (`make_sampler`: HF
generate, or vLLM with `--sampler vllm`); rank 0 writes `eval.json`, `eval_outputs/<name>.jsonl` and
prints one table (benchmark x metric, plus the average column).
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from common.benchmarks import SIMPLERL_SUITE, load_benchmark
from common.config import arg
from common.rewards import extract_answer, math_equal_batch, pass_at_k

# The paper's Table 1 column names, in its order
COLUMN_NAMES = {
    "gsm8k": "GSM8K",
    "math500": "MATH500",
    "minerva_math": "Minerva",
    "olympiadbench": "Olympiad",
    "aime24": "AIME24",
    "amc23": "AMC23",
}
PAPER_MAX_TOKENS = 16384  # SimpleRL-Zoo evaluates with up to 16K new tokens
TOY_MAX_TOKENS = 32  # the toy models answer in a few tokens


@dataclass
class EvalArgs:
    eval_only: bool = arg(
        False,
        "evaluate --model on --eval_suite and exit (no training); writes "
        "eval.json and eval_outputs/ under --output_dir",
    )
    eval_suite: str = arg(
        "simplerl",
        "simplerl = GSM8K, MATH500, Minerva Math, OlympiadBench, AIME24, "
        "AMC23 (SimpleRL-Zoo Table 1), or a comma list of those names",
    )
    eval_data_dir: str = arg(
        "",
        "folder laid out <name>/test.jsonl like SimpleRL-Zoo's "
        "examples/simplelr_math_eval/data; empty = the hub copies "
        "(common.benchmarks.HUB_SOURCES)",
    )
    eval_avg_k: int = arg(
        32, "samples per question for avg@k; paper: AIME24 avg@32 (Table 1); 0 = none"
    )
    eval_avg_on: str = arg("aime24,amc23", "benchmarks that get avg@k (comma list, or 'all')")
    eval_suite_temperature: float = arg(
        1.0, "sampling temperature of avg@k; paper: 1.0 for RL models"
    )
    eval_suite_top_p: float = arg(0.95, "top-p of avg@k; paper: 0.95")
    eval_max_tokens: int = arg(
        0,
        f"max new tokens; 0 = {PAPER_MAX_TOKENS} (paper) when --model names a "
        f"model, {TOY_MAX_TOKENS} on the toy",
    )
    eval_limit: int = arg(0, "first N questions of each benchmark (a smoke test); 0 = all")


# ------------------------------------------------------------------------------------------------
# metrics: small pure functions


def avg_at_k(correct: list[list[bool]]) -> float:
    """avg@k: mean over questions of the share of their k samples that are correct (Table 1)."""
    if not correct:
        return float("nan")
    return sum(sum(c) / len(c) for c in correct) / len(correct)


def suite_average(scores: dict[str, float]) -> float:
    """The table's Avg column: the plain mean of the benchmarks' scores (SimpleRL-Zoo Table 1)."""
    values = [v for v in scores.values() if not math.isnan(v)]
    return sum(values) / len(values) if values else float("nan")


def suite_names(spec: str, flag: str = "--eval_suite") -> list[str]:
    """'simplerl' -> the six benchmarks; else a comma list, each checked (errors name the flag)."""
    if spec == "simplerl":
        return list(SIMPLERL_SUITE)
    names = [n.strip() for n in spec.split(",") if n.strip()]
    bad = [n for n in names if n not in SIMPLERL_SUITE]
    if bad or (not names and flag == "--eval_suite"):
        raise ValueError(
            f"{flag}: unknown benchmark(s) {bad or spec!r}; use 'simplerl' or a comma "
            f"list of {', '.join(SIMPLERL_SUITE)}"
        )
    return names


def format_suite_table(results: dict[str, dict], k: int) -> str:
    """Markdown table: one row per metric, one column per benchmark plus Avg; scores in percent."""
    names = list(results)
    header = "| metric | " + " | ".join(COLUMN_NAMES.get(n, n) for n in names) + " | Avg |"
    lines = [header, "|---|" + "---:|" * (len(names) + 1)]
    for metric in ("greedy", f"avg@{k}"):
        scores = {n: results[n][metric] for n in names if metric in results[n]}
        if not scores:
            continue
        cells = [f"{100 * scores[n]:.1f}" if n in scores else "-" for n in names]
        label = "greedy pass@1" if metric == "greedy" else metric
        lines.append(
            f"| {label} | " + " | ".join(cells) + f" | {100 * suite_average(scores):.1f} |"
        )
    return "\n".join(lines)


# ------------------------------------------------------------------------------------------------
# reasoning behaviours (SimpleRL-Zoo's Reasoning Behavior Ratio: the share of responses showing
# each of four behaviours after Gandhi et al., with Enumeration for Backward Chaining, labelled by
# GPT-4o): a keyword stand-in and a model-backed judge

BEHAVIOUR_KEYWORDS = {
    "verification": ("verify", "check", "confirm", "substitut", "plug"),
    "backtracking": ("wait", "mistake", "actually", "try again", "rethink", "retry", "instead"),
    "subgoal setting": ("first", "step 1", "next,", "then", "we need to", "break down"),
    "enumeration": ("case", "possibilit", "list all", "for each", "enumerat", "all options"),
}
BEHAVIOURS = tuple(BEHAVIOUR_KEYWORDS)
JUDGE_PROMPT = (
    "Read the response to the problem below and say which reasoning behaviours it shows.\n"
    "- Verification: the response checks an intermediate result.\n"
    "- Backtracking: it notices an error and revises.\n"
    "- Subgoal Setting: it splits the problem into smaller steps.\n"
    "- Enumeration: it goes through cases exhaustively.\n"
    "Reply with a JSON list only, one object per behaviour found, e.g. "
    '[{{"behavior": "Verification", "example": "a short quote"}}], or [] if there is none.'
    "\n\nProblem: {question}\n\nResponse: {response}"
)


def keyword_behaviours(text: str) -> set[str]:
    """The keyword stand-in: a behaviour is shown when one of its keywords occurs (the paper argues
    against keyword counts: they stayed flat while the labelled behaviours rose)."""
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
    """Label each response with the judge model (any Sampler, greedy); None where the reply was
    not parseable."""
    prompts = [
        [{"role": "user", "content": JUDGE_PROMPT.format(question=q, response=r)}]
        for q, r in zip(questions, responses)
    ]
    replies = judge.generate(prompts, n=1, temperature=0, max_new_tokens=max_new_tokens)
    return [parse_judge_reply(group[0].text) for group in replies]


def load_judge(model_id: str, device):
    """A behaviour labeller (--judge_model) as an HF Sampler; frozen, so bf16 on CUDA."""
    from common.models import load_model, load_tokenizer
    from common.sampling import HFSampler
    from common.train import precision_policy

    dtype = precision_policy(device.type).frozen_dtype
    model = load_model(model_id, dtype=dtype, device=device).eval()
    return HFSampler(model, load_tokenizer(model_id))


def heldout_eval(
    sampler, rows, prompt_fn, grade_fn, dist, gather, k, sampling, judge=None, judge_tokens=256
) -> tuple[dict, str]:
    """Held-out metrics during training: greedy accuracy, sampled accuracy and unbiased pass@k of
    `k` samples (`sampling`: temperature, top_p, max_new_tokens), mean length and the behaviour
    ratios (keyword stand-in; `judge`, a Sampler, labels each prompt's first sample in at most
    `judge_tokens` tokens). Each rank takes an equal slice of `rows`; every rank returns the
    gathered dict and one sample text. `grade_fn(texts, rows) -> list[bool]`: correct or not."""
    rows = rows[dist.rank :: dist.world_size][: len(rows) // dist.world_size]
    prompts = [prompt_fn(r["question"]) for r in rows]
    max_new = sampling["max_new_tokens"]
    greedy = sampler.generate(prompts, n=1, temperature=0, max_new_tokens=max_new)
    sampled = sampler.generate(prompts, n=k, **sampling)
    flat = grade_fn([c.text for g in sampled for c in g], [r for r in rows for _ in range(k)])
    local = {
        "greedy": grade_fn([g[0].text for g in greedy], rows),
        "sampled": [flat[i * k : (i + 1) * k] for i in range(len(rows))],
        "lengths": [len(c.token_ids) for g in sampled for c in g],
        "keywords": [sorted(keyword_behaviours(c.text)) for g in sampled for c in g],
    }
    if judge is not None:
        questions, firsts = [r["question"] for r in rows], [g[0].text for g in sampled]
        labels = judge_behaviours(judge, questions, firsts, judge_tokens)
        local["judge"] = [sorted(label or ()) for label in labels]
        local["judge_fail"] = [label is None for label in labels]
    merged = {key: [x for part in gather(local) for x in part[key]] for key in local}
    out = {
        "eval/accuracy_greedy": float(np.mean(merged["greedy"])),
        "eval/accuracy_sampled": float(np.mean([np.mean(s) for s in merged["sampled"]])),
        f"eval/pass@{k}": float(np.mean([pass_at_k(k, sum(s), k) for s in merged["sampled"]])),
        "eval/mean_length": float(np.mean(merged["lengths"])),
    }
    for b in BEHAVIOURS:
        out[f"eval/behaviour_keyword/{b}"] = float(np.mean([b in s for s in merged["keywords"]]))
        if judge is not None:
            out[f"eval/behaviour_judge/{b}"] = float(np.mean([b in s for s in merged["judge"]]))
    if judge is not None:  # replies that were not a JSON list
        out["eval/judge_parse_failures"] = float(sum(merged["judge_fail"]))
    return out, sampled[0][0].text if sampled else ""


# ------------------------------------------------------------------------------------------------
# generation on every rank


def _rank_share(items: list, rank: int, world: int) -> tuple[list, int]:
    """This rank's contiguous share, padded with copies of item 0 to the same length on every
    rank (the HF sampler under torchrun keeps the ranks' forwards in step): (share, real count)."""
    per_rank = math.ceil(len(items) / world)
    mine = items[rank * per_rank : (rank + 1) * per_rank]
    real = len(mine)
    return mine + [items[0]] * (per_rank - real), real


def generate_everywhere(sampler, prompts: list, dist, gather, **kw) -> list[list[str]]:
    """Each rank generates its share of `prompts`; every rank gets all texts, in prompt order."""
    if not prompts:
        return []
    mine, real = _rank_share(prompts, dist.rank, dist.world_size)
    groups = sampler.generate(mine, **kw)
    texts = [[c.text for c in g] for g in groups[:real]]
    return [g for part in gather(texts) for g in part]


def run_suite(
    sampler,
    prompt_fn: Callable[[str], Any],
    eval_args: EvalArgs,
    dist,
    gather,
    max_new_tokens: int,
    out_dir: Path | None = None,
    model_name: str = "",
) -> dict:
    """Evaluate every benchmark of the suite; returns (rank 0 also writes) the eval.json dict."""
    names = suite_names(eval_args.eval_suite)
    avg_on = (
        names
        if eval_args.eval_avg_on == "all"
        else suite_names(eval_args.eval_avg_on, "--eval_avg_on")
    )
    k = eval_args.eval_avg_k
    results, started = {}, time.perf_counter()
    for name in names:
        rows = load_benchmark(name, eval_args.eval_data_dir, limit=eval_args.eval_limit or None)
        prompts = [prompt_fn(r["question"]) for r in rows]
        golds = [r["answer"] for r in rows]
        greedy = generate_everywhere(
            sampler, prompts, dist, gather, n=1, temperature=0.0, max_new_tokens=max_new_tokens
        )
        greedy_texts = [g[0] for g in greedy]
        greedy_preds = [extract_answer(t) for t in greedy_texts]
        greedy_ok = math_equal_batch(greedy_preds, golds)
        result = {"n": len(rows), "greedy": sum(greedy_ok) / len(rows)}
        sampled_ok: list[list[bool]] = [[] for _ in rows]
        if k > 0 and name in avg_on:
            sampled = generate_everywhere(
                sampler,
                prompts,
                dist,
                gather,
                n=k,
                temperature=eval_args.eval_suite_temperature,
                top_p=eval_args.eval_suite_top_p,
                max_new_tokens=max_new_tokens,
            )
            flat_ok = math_equal_batch(
                [extract_answer(t) for g in sampled for t in g],
                [gold for gold, g in zip(golds, sampled) for _ in g],
            )
            sampled_ok = [flat_ok[i * k : (i + 1) * k] for i in range(len(rows))]
            result[f"avg@{k}"] = avg_at_k(sampled_ok)
        results[name] = result
        if dist.rank == 0:
            shown = ", ".join(f"{key} {100 * v:.1f}" for key, v in result.items() if key != "n")
            print(f"[eval] {name}: {len(rows)} questions, {shown}", flush=True)
        if dist.rank == 0 and out_dir is not None:
            path = out_dir / "eval_outputs" / f"{name}.jsonl"
            path.parent.mkdir(parents=True, exist_ok=True)
            with open(path, "w", encoding="utf-8") as f:
                for row, text, pred, ok, s_ok in zip(
                    rows, greedy_texts, greedy_preds, greedy_ok, sampled_ok
                ):
                    record = {
                        "question": row["question"],
                        "gold": row["answer"],
                        "greedy_response": text,
                        "greedy_pred": pred,
                        "greedy_correct": ok,
                        "sampled_correct": s_ok,
                    }
                    f.write(json.dumps(record, ensure_ascii=False) + "\n")
    summary = {
        "model": model_name,
        "suite": names,
        "settings": {**asdict(eval_args), "max_new_tokens": max_new_tokens},
        "benchmarks": results,
        "average": {
            metric: suite_average({n: r[metric] for n, r in results.items() if metric in r})
            for metric in ("greedy", f"avg@{k}")
            if any(metric in r for r in results.values())
        },
        "seconds": time.perf_counter() - started,
        "table": format_suite_table(results, k),
    }
    if dist.rank == 0:
        if out_dir is not None:
            out_dir.mkdir(parents=True, exist_ok=True)
            (out_dir / "eval.json").write_text(
                json.dumps(summary, indent=2) + "\n", encoding="utf-8"
            )
        print("\n" + summary["table"], flush=True)
    return summary


def evaluate_model(
    eval_args: EvalArgs,
    model_path: str,
    prompt_fn: Callable[[str, Any], Any],
    sampler_kind: str,
    output_dir: str,
    seed: int = 0,
    dtype: str = "auto",
    is_toy: bool = False,
    **sampler_kwargs,
) -> dict:
    """Load `model_path` on every rank (no sharding: generation only), make the Sampler, run the
    suite. `prompt_fn(question, tokenizer)` is the script's own training prompt (as the paper)."""
    from common.models import load_model, load_tokenizer
    from common.sampling import make_sampler
    from common.train import (
        all_gather_object,
        cleanup_distributed,
        init_distributed,
        seed_everything,
    )

    dist = init_distributed()
    seed_everything(seed + dist.rank)
    tok = load_tokenizer(model_path)
    if sampler_kind == "vllm":
        sampler = make_sampler(
            "vllm", model_path=model_path, seed=seed + dist.rank, **sampler_kwargs
        )
    else:
        model = load_model(model_path, dtype=dtype, device=dist.device).eval()
        sampler = make_sampler(sampler_kind, model, tok, **sampler_kwargs)
    max_new_tokens = eval_args.eval_max_tokens or (TOY_MAX_TOKENS if is_toy else PAPER_MAX_TOKENS)
    try:
        result = run_suite(
            sampler,
            lambda q: prompt_fn(q, tok),
            eval_args,
            dist,
            all_gather_object,
            max_new_tokens,
            Path(output_dir),
            model_path,
        )
    except BaseException:
        cleanup_distributed(barrier=False)
        raise
    cleanup_distributed()
    return result
