"""GUIMid (docs/guimid.md): mid-training mixtures, GUI trajectory fine-tuning, a GUI agent.

Paper: "Breaking the Data Barrier -- Building GUI Agents Through Task Generalization" (Zhang et
al., arXiv 2504.10127, COLM 2025). No training code is released; this follows the paper text.

Idea: GUI trajectories are scarce, so first *mid-train* the VLM on data-rich reasoning domains (11
studied, Table 1; math, even text-only, transfers best), then fine-tune on GUI trajectories. Both
stages run under ONE optimizer and ONE cosine LR schedule, and GUI trajectories are mixed into
mid-training (without them the loss spikes at the switch, Table 4). GUIMid = MathInstruct 50% +
multimodal math 26.7% + olympiad math 16.7% + CodeI/O 6.7% (300K). The agent is a pure-vision
planner: screenshot + URL/app + earlier actions + task in; a thought and a fenced JSON
{"Element Description", "Action", "Value"} out; a grounder (UGround) maps the description to a
point. Metrics: success rate (SR) and AgentBoard's progress rate (PR).

Departures:
- Toy scale (no --model): a tiny LLaVA and toy domains made in code (MathInstruct -> 2-term
  arithmetic with steps, olympiad math -> 4-term arithmetic, multimodal math ->
  common/shapes_world, CodeI/O -> short "predict f(xs)" samples with a JSON answer; codeio.py's
  prompts are ~1K tokens, too long for the CPU budget); the GUI trajectories are the scripted
  expert on the GUI world's training tasks. A named --model selects the paper preset (PAPER).
- Toy observation: screenshot + accessibility text (--observation): the tiny VLM cannot read
  labels off its 64x64 image. The paper's planner is pure vision (the paper preset).
- Toy GUI data is scarce on purpose (12 of 40 training tasks, 10 epochs), the regime where the
  paper says mid-training pays; the toy's budget values (--mixture_size 960, --gui_epochs, --lr
  1e-2, batch 16) are the toy's own. The recipe's toy domains do not transfer to the phone (its
  gain is the GUI data mixed in), so the run also trains Table 3's Non-GUI agents row
  (--compare_mixtures), whose toy domain answers in the planner's JSON; the PR claim is that row's.
- The run also reports the GUI loss at the stage switch without GUI data mixed in (Table 4's
  ablation, stopped after the switch) and a scripted "open the right app, then wait" planner.
- Grounding: the toy reads the accessibility tree (common.gui_formats.StubGrounder, a stand-in for
  UGround-V1-7B); `--grounder <VLM>` asks a model for "(x, y)" in [0, 1000).
- The non-GUI:GUI ratio is not stated: 0.374 = 56,062/150,000 (Table 2's whole set in a 150K
  run, which the 300K run keeps "by duplicating GUI data"), in the toy and the paper preset.
- PR on the GUI world: content subgoals = the task's subgoals + success; the URL subgoal = "on
  the screen where the expert acts last" (no AgentBoard annotations). Weight decay (0.0) and
  gradient clipping (1.0) are not stated.
- `--data hub` reads the MidGUI per-domain release files; their columns are not documented, so
  rows may use LLaVA `conversations`, chat `messages` or prompt/response columns; one image a row.
- `--env miniwob`: the agent on MiniWoB++ pages (common/miniwob_env.py), not WebArena/AndroidWorld.

Commands (--print_config shows the effective configuration without loading anything):
  python guimid.py                    # CPU toy: GUI-only vs GUIMid vs Non-GUI agents, summary.json
  python guimid.py --env miniwob --eval_only  # MiniWoB++ in headless Chromium: SR per task
  python guimid.py --model Qwen/Qwen2-VL-7B-Instruct --gradient_checkpointing   # 1 GPU, toy data
  torchrun --nproc_per_node=8 guimid.py --model Qwen/Qwen2-VL-7B-Instruct --data hub \\
      --image_root /data/guimid_images --compare False                         # FSDP2
"""

from __future__ import annotations

import functools
import hashlib
import json
import math
import random
import re
from collections import Counter, defaultdict
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Literal

import torch
from tqdm import tqdm

from common.chat_sft import collate, encode, mean_nll
from common.claims import claim, format_claims, write_summary
from common.config import arg, parse_config, per_rank
from common.data import read_jsonl_tolerant, write_jsonl
from common.gui_env import APPS
from common.gui_eval import Setup, model_generate, play_episodes, report_eval_only, scores, setup
from common.gui_formats import load_release
from common.models import load_model
from common.sampling import HFSampler, get_tokenizer
from common.toy_domains import (
    expert_gui_samples,
    gui_samples,
    named_tasks,
    open_app_then_wait,
    toy_domain_samples,
)
from common.train import (
    MetricsLogger,
    all_gather_object,
    cleanup_distributed,
    clip_grad_norm,
    format_table,
    init_distributed,
    load_checkpoint,
    make_optimizer,
    make_scheduler,
    plot_curves,
    print0,
    save_checkpoint,
    seed_everything,
    shard_model,
    token_logprobs,
)


@dataclass
class Args:
    seed: int = arg(0, "random seed (mixture order, toy data, init)")
    output_dir: str = arg("runs/guimid", "metrics, checkpoints, episodes, PNG")
    model: str = arg("", "VLM hub id/path; '' = tiny LLaVA (the paper trains Qwen2-VL-7B-Instruct)")
    data: Literal["toy", "hub"] = arg("toy", "toy (domains made in code) | hub (DOMAINS' files)")
    domain_data: str = arg("", "overrides: 'domain=path_or_hub,...' (JSON/JSONL/parquet)")
    image_root: str = arg("", "folder that relative image paths in --data hub rows use")
    mixture: str = arg("guimid_300k", "a RECIPES name or 'domain:weight,...' (Table 3 rows)")
    mixture_size: int | None = arg(960, "mid-training draws; paper: None (the recipe total)")
    gui_mix_ratio: float = arg(0.374, "GUI draws mixed in per mixture draw (not stated)")
    compare: bool = arg(True, "also train 'GUI post-training only' (Table 3 row 1) + ablation")
    compare_mixtures: str = arg("non_gui_agents", "--compare: more Table 3 rows a,b; paper: ''")
    base_steps: int = arg(0, "toy base: low-level instruction SFT steps; 0 = tiny LLaVA as built")
    base_tokenizer: Literal["toy", "words"] = arg("toy", "words: screen labels as single tokens")
    lr: float = arg(1e-2, "peak LR; paper: 2e-5 (Table 8)")
    batch_size: int = arg(16, "global batch; paper: 32 (Table 8: 8 GPUs x 2 x accumulation 2)")
    micro_batch_size: int = arg(2, "rows per forward per rank; paper: 2 (Table 8)")
    gui_epochs: int = arg(10, "GUI fine-tuning epochs (toy: a scarce budget); paper: 1 (Table 8)")
    warmup_ratio: float = arg(0.05, "warmup share of the ONE schedule; paper: 0.05 (Table 8)")
    lr_scheduler: str = arg("cosine", "transformers scheduler over both stages (Table 8)")
    weight_decay: float = arg(0.0, "AdamW weight decay (not stated)")
    max_grad_norm: float = arg(1.0, "gradient clipping (not stated)")
    max_length: int = arg(8192, "context length, tokens; paper: 8192 (Table 8)")
    gradient_checkpointing: bool = arg(False, "trade compute for memory; paper preset: True")
    save_every: int = arg(50, "checkpoint every N steps (and at the stage boundary)")
    resume: bool = arg(False, "continue each condition from its checkpoint")
    stop_after_step: int = arg(0, "stop a condition after this step, checkpointed (0 = never)")
    grounder: str = arg("stub", "'stub' (a11y-tree stand-in) | a VLM (the paper's UGround-V1-7B)")
    observation: Literal["screenshot", "screenshot+axtree"] = arg(
        "screenshot+axtree", "the planner's input; paper: screenshot (pure vision)"
    )
    gui_tasks: int = arg(12, "training tasks whose expert runs are the GUI data; paper: 0 (all)")
    tasks: str = arg("", "GUI-world task ids (comma-separated): the GUI data AND the eval tasks")
    switch_loss_steps: int = arg(3, "GUI-stage steps averaged for the loss at the stage switch")
    max_episode_steps: int = arg(15, "agent steps per task; paper: 30 (AgentBoard)")
    max_new_tokens: int = arg(96, "planner output tokens; paper preset: 512 (not stated)")
    eval_split: Literal["test", "train", "all", "val"] = arg("test", "val: train minus GUI data")
    env: Literal["toy", "miniwob"] = arg("toy", "toy (the simulated phone) | miniwob (MiniWoB++)")
    episodes_per_task: int = arg(5, "--env miniwob: seeded episodes per task")
    eval_only: bool = arg(False, "evaluate the model as it is (no training): SR per task")
    env_factory: str = arg("", "'module:function' -> (make_env, tasks), an external env")
    track: bool = arg(False, "log to Weights & Biases")


# The paper's values (Table 8; AgentBoard's step limit), the defaults once --model is named.
PAPER = dict(
    lr=2e-5,
    batch_size=32,  # 8 GPUs x 2 per device x accumulation 2
    gui_epochs=1,
    mixture_size=None,  # the recipe total: 300K for guimid_300k
    max_episode_steps=30,  # AgentBoard
    max_new_tokens=512,  # not stated
    gradient_checkpointing=True,  # not stated; a 7B VLM at 8192 tokens needs it
    observation="screenshot",  # the planner is pure vision: no DOM or accessibility tree
    gui_tasks=0,  # every GUI trajectory (Table 2)
    compare_mixtures="",  # the toy's agent domain is the toy's own; a real run claims the recipe
)


def derived(args, world_size: int) -> dict:
    """Per-rank rows and gradient-accumulation steps implied by the global batch."""
    rows = per_rank(args.batch_size, world_size, "--batch_size")
    return dict(rows_per_rank=rows, accumulation_steps=-(-rows // args.micro_batch_size))


# ------------------------------------------------------------------------------------------------
# The 11 mid-training domains (Table 1) + the GUI trajectories (Table 2); `hub` = release file.


@dataclass(frozen=True)
class Domain:
    hub: str  # the release file (--data hub)
    size: int  # samples (Table 1; Table 2 for the GUI trajectories)
    toy: str | None = None  # its toy stand-in (common/toy_domains.py)


MIDGUI = "hf://datasets/MidGUI/Mid-Training_data_of_separate_domains/"
DOMAINS = {  # sources as Tables 1 and 2 list them
    # InfographicVQA 2,184 + Ureader-QA 53,794 (MAmmoTH-VL) + MPDocVQA 431 + MathV360K 93,591
    "chart_doc_qa": Domain(MIDGUI + "Chart_Document_QA.json", 150_000),
    # Ureader-OCR 6,146 + DUE 143,854
    "non_gui_perception": Domain(MIDGUI + "Non-GUI_Perception.json", 150_000),
    # MultiUI: 50K action prediction + 50K webpage QA + 50K image QA
    "gui_perception": Domain(MIDGUI + "GUI_Perception.json", 150_000),
    "screenshot2code": Domain(MIDGUI + "Web_Screenshot2Code.json", 150_000),  # Web2Code
    "mm_math": Domain(MIDGUI + "Multi-modal_Math .json", 150_000, "shapes"),  # MAVIS
    "visual_conversation": Domain(MIDGUI + "Multi-round_Visual_Conversation.json", 150_000),  # SVIT
    "non_gui_agents": Domain(MIDGUI + "Non-GUI_Agents.json", 51_780, "agents"),  # AlfWorld
    "mathinstruct": Domain(MIDGUI + "MathInstruct.json", 150_000, "arith2"),  # CoT split
    "olympiad_math": Domain(MIDGUI + "Olympiad_Math.json", 150_000, "arith4"),  # NuminaMath
    "codeio": Domain(MIDGUI + "CodeIO.json", 150_000, "codeio"),  # CodeIO-PyEdu-Reasoning
    # Synatra 99,924 + AgentTrek 50,076
    "web_knowledge": Domain(MIDGUI + "Web_Knowledge_Base.json", 150_000),
    # OS-Genesis web 3,789 + mobile 4,941, MM-Mind2Web 21,542, VisualWebArena 3,264, Aguvis 22,526
    "gui_trajectories": Domain("hf://datasets/hkust-nlp/GUIMid/GUI_trajectory.json", 56_062, "gui"),
}
GUI = "gui_trajectories"
RECIPES = {
    "guimid_300k": {
        "mathinstruct": 150_000,
        "mm_math": 80_000,
        "olympiad_math": 50_000,
        "codeio": 20_000,
    },
    "gui_only": {},
    **{d: {d: DOMAINS[d].size} for d in DOMAINS if d != GUI},
}

# ------------------------------------------------------------------------------------------------
# ALGO LOGIC: the paper's rules as small pure functions


def parse_mixture(spec: str) -> dict[str, float]:
    """A recipe name or 'domain:weight,...' -> {domain: weight}; unknown names are errors."""
    if spec in RECIPES:
        return dict(RECIPES[spec])
    weights = {}
    for part in filter(None, (p.strip() for p in spec.split(","))):
        name, _, w = part.partition(":")
        try:
            weights[name.strip()] = float(w) if w else 1.0
        except ValueError:
            raise ValueError(f"--mixture: weight {w!r} of {name!r} is not a number") from None
    return weights


def allocate_counts(weights: dict[str, float], total: int) -> dict[str, int]:
    """The GUIMid mixture samples each source in proportion (the paper's 300K table): counts
    proportional to the weights, summing to `total` exactly (largest remainder; ties go to the
    earlier domain). 3,000 draws of GUIMid -> 1500/800/500/200."""
    if unknown := [d for d in weights if d not in DOMAINS]:
        raise ValueError(f"--mixture: unknown domain(s) {unknown}; known: {', '.join(DOMAINS)}")
    if any(w < 0 or not math.isfinite(w) for w in weights.values()):
        raise ValueError(f"--mixture: weights must be finite and >= 0, got {weights}")
    weight_sum = sum(weights.values())
    if total > 0 and weight_sum <= 0:
        raise ValueError(f"--mixture: the total weight is zero ({weights}); give one a weight > 0")
    exact = {d: total * w / weight_sum if total > 0 else 0.0 for d, w in weights.items()}
    counts = {d: int(math.floor(x + 1e-9)) for d, x in exact.items()}
    remainders = {d: exact[d] - counts[d] for d in weights}
    by_remainder = sorted(weights, key=remainders.__getitem__, reverse=True)  # stable on ties
    for d in by_remainder[: total - sum(counts.values())]:
        counts[d] += 1
    return counts


def draw_plan(counts: dict[str, int], pool_sizes: dict[str, int], seed: int) -> list[tuple]:
    """(domain, row) draws in a seeded random order. Each domain walks a seeded permutation of its
    rows and starts a new one when it runs out, so a small pool is duplicated evenly (the paper's
    300K run duplicates GUI data)."""
    rng, draws = random.Random(seed), []
    for d, n in counts.items():
        if n and not pool_sizes.get(d):
            raise ValueError(f"domain {d!r} has no rows to draw from")
        rows = []
        while len(rows) < n:
            rows += rng.sample(range(pool_sizes[d]), pool_sizes[d])
        draws += [(d, r) for r in rows[:n]]
    rng.shuffle(draws)
    return draws


def progress_score(url_match: float | None, content_flags: list[bool]) -> float:
    """AgentBoard's WebArena progress at one step (arXiv 2401.13178): 3/(n+3)*url +
    n/(n+3)*(met/n) for n content subgoals; without a URL check just met/n.
    3 subgoals, 2 met, url 1 -> 0.5 + 0.5*2/3 = 0.8333."""
    n = len(content_flags)
    content = sum(map(bool, content_flags)) / n if n else 0.0
    return content if url_match is None else 3 / (n + 3) * url_match + n / (n + 3) * content


def progress_rate(step_scores: list[float], success: bool) -> float:
    """PR = the running max of the per-step progress (AgentBoard); 1 on success (SR = 1)."""
    return 1.0 if success else max(step_scores, default=0.0)


# ------------------------------------------------------------------------------------------------
# Data: samples are {"messages": [...], "image": PIL | path | None}


def toy_samples(domain: str, n: int, seed: int, observation: str, gui_tasks=0) -> list[dict]:
    """n toy rows of a domain (the GUI domain: the expert on `gui_tasks`, a list or a count)."""
    kind = DOMAINS[domain].toy
    if kind is None:
        hint = f"pass --data hub or --domain_data {domain}=<file>"
        raise ValueError(f"domain {domain!r} has no toy generator; {hint}")
    if kind == "gui":
        return gui_samples(gui_tasks, seed, observation)
    return toy_domain_samples(kind, n, seed)


def load_domain(domain: str, args: Args, n_toy: int, overrides: dict) -> list[dict]:
    """A domain's samples: its --domain_data file, its release file (--data hub) or its toy."""
    source = overrides.get(domain) or (DOMAINS[domain].hub if args.data == "hub" else None)
    if source is not None:
        return load_release(source, args.image_root)
    seed = args.seed + sorted(DOMAINS).index(domain)
    gui_tasks = (named_tasks(args.tasks) if args.env == "toy" else []) or args.gui_tasks
    return toy_samples(domain, n_toy, seed, args.observation, gui_tasks)


def mixture_pools(args: Args) -> tuple[dict[str, int], dict[str, list]]:
    """Mid-training draws per domain (the mixture + GUI mixed in) and each domain's rows."""
    pairs = [p.split("=", 1) for p in filter(None, args.domain_data.split(","))]
    if any(len(p) != 2 or p[0] not in DOMAINS for p in pairs):
        raise ValueError(
            f"--domain_data {args.domain_data!r}: write 'domain=path,...', domains: {list(DOMAINS)}"
        )
    recipe = parse_mixture(args.mixture)
    total = 0 if not recipe else args.mixture_size
    total = int(sum(recipe.values())) if total is None else total
    counts = allocate_counts(recipe, total)
    counts[GUI] = round(args.gui_mix_ratio * total)
    pools = {d: load_domain(d, args, n, dict(pairs)) for d, n in counts.items() if n or d == GUI}
    sizes = {d: len(p) for d, p in pools.items()}
    print0(f"mid-training draws per domain: {counts}; pool sizes: {sizes}")
    return counts, pools


# ------------------------------------------------------------------------------------------------
# Batches (common.chat_sft encodes the rows), one training run over both stages


def encode_row(processor, pools: dict, max_length: int, domain: str, row: int) -> dict:
    return encode(processor, pools[domain][row], max_length)


def chunk(draws: list, size: int) -> list[list]:
    return [draws[i : i + size] for i in range(0, len(draws), size)]


def build_batches(counts: dict[str, int], pools: dict, gui_epochs: int, batch_size: int, seed):
    """Stage 1 (mixture + GUI mixed in), stage 2 (GUI epochs): global batches of (domain, row)."""
    sizes = {d: len(p) for d, p in pools.items()}
    stage1 = draw_plan({d: n for d, n in counts.items() if n}, sizes, seed)
    stage2 = draw_plan({GUI: gui_epochs * sizes[GUI]}, {GUI: sizes[GUI]}, seed + 1)
    return chunk(stage1, batch_size), chunk(stage2, batch_size)


def train_condition(model, processor, pools, mid_batches, gui_batches, args, dist_info, out_dir):
    """ONE optimizer and ONE LR schedule over mid-training + GUI fine-tuning (the paper's
    continuous optimizer), resumable at any step: the checkpoint holds the step = the position in
    the deterministic batch plan. Returns (optimizer, scheduler, logger)."""
    batches, n_mid = mid_batches + gui_batches, len(mid_batches)
    optimizer = make_optimizer(model, args.lr, weight_decay=args.weight_decay)
    warmup = math.ceil(args.warmup_ratio * len(batches))
    scheduler = make_scheduler(optimizer, args.lr_scheduler, warmup, len(batches))
    digest = hashlib.sha1(json.dumps([n_mid, batches]).encode()).hexdigest()[:12]
    start, ckpt = 0, out_dir / "checkpoint"
    # Parameters with no gradient yet (the vision tower in text-only mid-training) have no AdamW
    # state: load_checkpoint leaves them without, so they start fresh, as uninterrupted.
    if args.resume and (loaded := load_checkpoint(ckpt, model, optimizer, scheduler)) is not None:
        start, extra = loaded
        if extra.get("plan") != digest:
            raise ValueError(f"{ckpt}: written with other data flags (--mixture/--seed/...)")
    logger = MetricsLogger(
        out_dir,
        track=args.track,
        run_name=f"guimid-{out_dir.name}",
        config=asdict(args),
        resume_step=start if args.resume else None,
    )
    pad_id = get_tokenizer(processor).pad_token_id
    # (domain, row) -> encoded; the GUI stage repeats its rows every epoch
    encoded = functools.lru_cache(maxsize=4096)(
        functools.partial(encode_row, processor, pools, args.max_length)
    )
    stop = min(len(batches), args.stop_after_step or len(batches))
    bar = tqdm(range(start, stop), desc=out_dir.name, disable=not dist_info.is_main)
    for step in bar:
        # this rank's share; a short rank runs zero-weight copies (FSDP2 needs lock-step passes)
        mine = batches[step][dist_info.rank :: dist_info.world_size]
        per_rank_rows = math.ceil(len(batches[step]) / dist_info.world_size)
        padded = math.ceil(per_rank_rows / args.micro_batch_size) * args.micro_batch_size
        rows = [(d, r, 1.0) for d, r in mine] + [(*batches[step][0], 0.0)] * (padded - len(mine))
        todo = [(encoded(d, r), d, w) for d, r, w in rows]
        total_tokens = sum(sum(e["mask"][1:]) * w for e, _, w in todo) or 1.0
        nll, tokens = defaultdict(float), defaultdict(float)
        for k in range(0, len(todo), args.micro_batch_size):
            part = todo[k : k + args.micro_batch_size]
            input_ids, attention_mask, loss_mask, extra = collate(
                [e for e, _, _ in part], pad_id, dist_info.device
            )
            logps = token_logprobs(model, input_ids, attention_mask, **extra)  # (b, L-1)
            weights = torch.tensor([w for _, _, w in part], device=logps.device)  # (b,)
            row_nll = -(logps * loss_mask[:, 1:]).sum(-1) * weights  # (b,)
            (row_nll.sum() / total_tokens).backward()  # token mean over the rank's share
            for (e, d, w), v in zip(part, row_nll.tolist()):
                nll[d], tokens[d] = nll[d] + v, tokens[d] + sum(e["mask"][1:]) * w
        grad_norm = clip_grad_norm(model, args.max_grad_norm)
        lr = scheduler.get_last_lr()[0]
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        logger.log(step_metrics(nll, tokens, lr, grad_norm, int(step >= n_mid)), step + 1)
        if (step + 1) % args.save_every == 0 or step + 1 in (n_mid, stop):
            stage = "mid" if step + 1 <= n_mid else "gui"
            extra = {"stage": stage, "data_position": step + 1, "plan": digest}
            save_checkpoint(ckpt, model, optimizer, scheduler, step + 1, extra=extra)
    return optimizer, scheduler, logger


def step_metrics(nll: dict, tokens: dict, lr: float, grad_norm: float, stage: int) -> dict:
    """The global batch's token-mean loss, overall and per domain (gathered over ranks)."""
    domain_nll, domain_tokens = Counter(), Counter()
    for part_nll, part_tokens in all_gather_object((dict(nll), dict(tokens))):
        domain_nll.update(part_nll)
        domain_tokens.update(part_tokens)
    loss = sum(domain_nll.values()) / max(1e-9, sum(domain_tokens.values()))
    metrics = {"loss": loss, "lr": lr, "grad_norm": grad_norm, "stage": stage}
    for d in sorted(domain_tokens):
        if domain_tokens[d] > 0:
            metrics[f"loss/{d}"] = domain_nll[d] / domain_tokens[d]
    return metrics


# ------------------------------------------------------------------------------------------------
# Evaluation: the planner in the one GUI agent loop (common.gui_env.run_episodes)


def episode_result(record: dict, target_url: str | None) -> dict:
    """One episode's SR and AgentBoard PR from its step records (url, subgoals, success)."""
    scores = [
        progress_score(
            None if target_url is None else float(s["url"] == target_url),
            s["subgoals"] + [s["success"]],
        )
        for s in record["steps"]
    ]
    return dict(
        task_id=record["task_id"],
        success=record["success"],
        pr=progress_rate(scores, record["success"]),
        steps=len(record["steps"]),
        invalid=sum(s["action"] is None for s in record["steps"]),
        history=[s["thought"] for s in record["steps"]],
    )


def play(generate, run: Setup, sampler=None) -> list[dict]:
    """The planner on every task (common.gui_eval), each episode scored by SR and PR."""
    records = play_episodes(generate, run, sampler)
    return [episode_result(r, run.target_urls.get(r["task_id"])) for r in records]


def evaluate_model(model, run: Setup) -> list[dict]:
    """The trained planner, greedy, on the evaluation tasks."""
    model.eval()
    sampler = HFSampler(model, run.processor, batch_size=32)
    generate = functools.partial(model_generate, sampler, run.args.max_new_tokens)
    return play(generate, run, sampler)


# ------------------------------------------------------------------------------------------------
# The toy base, the conditions, the claims


def compared_mixtures(args: Args) -> list[str]:
    names = [m.strip() for m in args.compare_mixtures.split(",") if m.strip()]
    if unknown := [m for m in names if m not in RECIPES]:
        raise ValueError(f"--compare_mixtures: unknown {unknown}; known: {', '.join(RECIPES)}")
    return [m for m in names if m not in (args.mixture, "gui_only")] if args.compare else []


def conditions(args: Args, counts: dict, more: dict) -> list[tuple[str, dict]]:
    """(name, mid-training draws): GUI post-training only (Table 3 row 1), the mixture, without
    GUI mixed in (Table 4's ablation, stopped past the switch), the compared rows (`more`)."""
    out = [("gui_only", {GUI: 0})] if args.compare and args.mixture != "gui_only" else []
    out.append((args.mixture, counts))
    if args.compare and sum(counts.values()) > counts[GUI] > 0:
        out.append((f"{args.mixture} without GUI mixed in", {**counts, GUI: 0}))
    return out + list(more.items())


def guimid_claims(table: list[dict], mixture: str, compared: list[str]) -> list[dict]:
    """The paper's comparisons, computed: mid-training beats GUI post-training only (Table 3: PR,
    and the held-out GUI loss); GUI data mixed into mid-training lowers the GUI loss at the switch
    (Table 4). With compared rows, the PR claim is theirs and the recipe's PR is only reported: the
    toy's arithmetic, shapes and f(xs) cannot carry the paper's math-to-GUI transfer."""
    by = {r["condition"]: r for r in table}
    base, unmixed = by.get("gui_only"), by.get(f"{mixture} without GUI mixed in")
    specs = []  # (claim, metric, baseline row, result row, higher is better, margin)
    for name in [n for n in [mixture, *compared] if base and n in by and n != "gui_only"]:
        mid, row = f"{name} mid-training", by[name]
        if name != mixture or not compared:
            specs.append((f"{mid} > GUI-only: PR", "PR", base, row, True, 0.02))
        specs.append((f"{mid} < GUI-only: held-out loss", "heldout_gui_loss", base, row, False, 0))
    if mixture in by and unmixed:
        switch = "GUI mixed in: lower GUI loss at the switch"
        specs.append((switch, "switch_gui_loss", unmixed, by[mixture], False, 0))
    return [
        claim(name, metric, b[metric], r[metric], higher_is_better=higher, margin=margin)
        for name, metric, b, r, higher, margin in specs
        if metric in r
    ]


def run_condition(name: str, counts: dict, pools: dict, heldout: list, run: Setup) -> dict | None:
    """Train one condition (both stages, one schedule), then evaluate the agent; its table row,
    or None when --stop_after_step stopped it (checkpointed). --resume reuses a finished one."""
    args, dist_info = run.args, run.dist_info
    cond_dir = condition_dir(run.out, name)
    if args.resume and (cond_dir / "eval.json").exists():
        return json.loads((cond_dir / "eval.json").read_text())
    mid, gui = build_batches(counts, pools, args.gui_epochs, args.batch_size, args.seed)
    ablation = name.endswith("without GUI mixed in")  # Table 4: only the loss at the switch
    run_args = (
        replace(args, stop_after_step=len(mid) + args.switch_loss_steps) if ablation else args
    )
    seed_everything(args.seed)  # every condition starts from the same weights
    # fp32 masters, bf16 compute on CUDA (Table 8: bf16): common.train's precision policy
    model = load_model(run.model_path, vlm=True, dtype="float32")
    model = shard_model(model, dist_info, gradient_checkpointing=args.gradient_checkpointing)
    _, _, logger = train_condition(
        model, run.processor, pools, mid, gui, run_args, dist_info, cond_dir
    )
    if args.stop_after_step and args.stop_after_step < len(mid) + len(gui):
        print0(f"{name}: stopped after step {args.stop_after_step}; rerun with --resume")
        return None
    gui_losses = [r["loss/" + GUI] for r in logger.history if "loss/" + GUI in r]
    switch = [r["loss/" + GUI] for r in logger.history if r["step"] > len(mid)]
    switch = switch[: args.switch_loss_steps]
    row = dict(condition=name, mid_steps=len(mid), gui_steps=len(gui))
    row["switch_gui_loss"] = sum(switch) / max(1, len(switch)) if mid else None
    if not ablation:
        results = evaluate_model(model, run)
        if heldout:  # how the GUI stage generalises, on a scale that moves before success does
            sizes = (args.micro_batch_size, args.max_length)
            loss = mean_nll(model, run.processor, heldout, *sizes, dist_info.device)
            row["heldout_gui_loss"] = loss
        row |= scores(results)
        row["final_gui_loss"] = sum(gui_losses[-5:]) / max(1, len(gui_losses[-5:]))
        if dist_info.is_main:
            write_jsonl(cond_dir / "episodes.jsonl", results)
    if dist_info.is_main:
        (cond_dir / "eval.json").write_text(json.dumps(row))
    logger.close()
    return row


def condition_dir(out: Path, name: str) -> Path:
    return out / re.sub(r"[^\w.-]+", "_", name)


def plot_loss_curves(out: Path, names: list[str]) -> str:
    """Each condition's GUI loss and LR (and the last one's total loss) over steps, one PNG."""
    curves = [
        {
            "step": r["step"],
            f"{name}/loss": r["loss"],
            f"{name}/gui_loss": r.get("loss/" + GUI),
            f"{name}/lr": r["lr"],
        }
        for name in names
        for r in read_jsonl_tolerant(condition_dir(out, name) / "metrics.jsonl")
    ]
    keys = [f"{c}/gui_loss" for c in names] + [f"{names[-1]}/loss"] + [f"{c}/lr" for c in names]
    return plot_curves(curves, keys, out / "curves.png", title="GUIMid: one schedule, two stages")


def main(args: Args):
    dist_info = init_distributed()
    seed_everything(args.seed)
    # base model, GUI environment + evaluation tasks (val: training tasks not in the GUI data)
    run = setup(args, dist_info, gui_seed=args.seed + sorted(DOMAINS).index(GUI))
    if args.eval_only:  # the model as it is: SR per task
        model = load_model(run.model_path, vlm=True, dtype="float32")
        return report_eval_only(
            run, evaluate_model(shard_model(model, dist_info, frozen=True), run)
        )

    # 1. the mid-training mixture (+ GUI trajectories mixed in) and the GUI trajectories
    counts, pools = mixture_pools(args)
    compared, more = compared_mixtures(args), {}  # Table 3 rows: their draws; rows join the pools
    for name in compared:
        more[name], extra = mixture_pools(replace(args, mixture=name))
        pools |= extra
    toy_env = args.env == "toy" and not args.env_factory
    heldout = expert_gui_samples(run.tasks, args.observation) if toy_env else []

    # 2. each condition: mid-training, then GUI fine-tuning under one schedule; then the agent
    table = []
    for name, cond_counts in conditions(args, counts, more):
        row = run_condition(name, cond_counts, pools, heldout, run)
        if row is None:
            break
        table.append(row)

    # 3. the floor a GUI agent must beat: open the task's app, then wait (no model)
    if toy_env:
        apps = {t.goal: APPS[t.app].label for t in run.tasks}
        results = play(functools.partial(open_app_then_wait, apps), run)
        row = dict(condition="scripted: open the right app, then wait") | scores(results)
        table.append({k: v for k, v in row.items() if k != "invalid_rate"})

    # 4. the table, the paper's claims (computed), the curves
    title = f"GUI world, {args.eval_split} tasks ({len(run.tasks)}), SR and AgentBoard-style PR"
    print0(f"\n{title}:\n" + format_table(table))
    claims = guimid_claims(table, args.mixture, compared)
    if claims:
        print0(format_claims(claims))
    if dist_info.is_main:
        write_summary(run.out, claims, conditions=table)
    trained = [r["condition"] for r in table if "mid_steps" in r]
    if dist_info.is_main and trained:
        print0("curves:", plot_loss_curves(run.out, trained))
    cleanup_distributed()


if __name__ == "__main__":
    main(parse_config(Args, PAPER, derived))
