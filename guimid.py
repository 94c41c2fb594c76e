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
  1e-2, batch 16) are the toy's own. Its mixture domains do not transfer to the phone: the toy's
  gain comes from the GUI data mixed into mid-training (docs/guimid.md, Results).
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
- `--env miniwob` runs the agent on MiniWoB++ pages (common/miniwob_env.py), not WebArena or
  AndroidWorld.

Commands (--print_config shows the effective configuration without loading anything):
  python guimid.py                            # CPU toy: GUI-only vs GUIMid, claims in summary.json
  python guimid.py --env miniwob --eval_only  # MiniWoB++ in headless Chromium: SR per task
  python guimid.py --model Qwen/Qwen2-VL-7B-Instruct --gradient_checkpointing   # 1 GPU, toy data
  torchrun --nproc_per_node=8 guimid.py --model Qwen/Qwen2-VL-7B-Instruct --data hub \\
      --image_root /data/guimid_images --compare False                         # FSDP2
"""

from __future__ import annotations

import functools
import hashlib
import importlib
import json
import math
import random
import re
from collections import Counter, defaultdict
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Literal

import torch
from PIL import Image
from tqdm import tqdm

from common.claims import claim, format_claims, write_summary
from common.config import arg, parse_config, per_rank
from common.data import load_rows, read_jsonl_tolerant, write_jsonl
from common.gui_env import (
    APPS,
    TASKS,
    ActionError,
    ScriptedExpert,
    ToyGUIEnv,
    format_axtree,
    list_tasks,
    rollout,
    run_episodes,
)
from common.gui_formats import (
    ModelGrounder,
    StubGrounder,
    action_to_guimid,
    format_guimid,
    guimid_to_action,
    parse_guimid,
)
from common.models import end_of_turn, load_model, load_processor, make_tiny_vlm
from common.sampling import HFSampler, finish_local, generate_local, get_tokenizer, render_prompt
from common.toy_domains import toy_domain_samples, user_msg
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
    precision_policy,
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
    mixture_size: int | None = arg(
        960, "mid-training draws; None = the recipe total; paper: None (300K for guimid_300k)"
    )
    gui_mix_ratio: float = arg(
        0.374,
        "GUI draws mixed into mid-training per mixture draw (not stated; 0.374 = "
        "56,062/150,000: Table 2's set in a 150K run, kept by the 300K run)",
    )
    compare: bool = arg(True, "also train 'GUI post-training only' (Table 3 row 1) + ablation")
    lr: float = arg(1e-2, "peak LR; paper: 2e-5 (Table 8)")
    batch_size: int = arg(16, "global batch; paper: 32 (Table 8: 8 GPUs x 2 x accumulation 2)")
    micro_batch_size: int = arg(2, "rows per forward per rank; paper: 2 (Table 8)")
    gui_epochs: int = arg(
        10, "GUI fine-tuning epochs; toy 10 (a scarce budget); paper: 1 (Table 8)"
    )
    warmup_ratio: float = arg(0.05, "warmup share of the ONE schedule; paper: 0.05 (Table 8)")
    lr_scheduler: str = arg("cosine", "transformers scheduler over both stages (Table 8)")
    weight_decay: float = arg(0.0, "AdamW weight decay (not stated)")
    max_grad_norm: float = arg(1.0, "gradient clipping (not stated)")
    max_length: int = arg(8192, "context length, tokens; paper: 8192 (Table 8)")
    gradient_checkpointing: bool = arg(
        False, "trade compute for memory; paper preset: True (not stated; a 7B VLM needs it)"
    )
    save_every: int = arg(50, "checkpoint every N steps (and at the stage boundary)")
    resume: bool = arg(False, "continue each condition from its checkpoint")
    stop_after_step: int = arg(0, "stop a condition after this step, checkpointed (0 = never)")
    grounder: str = arg(
        "stub", "'stub' (a11y-tree stand-in) | a VLM path (the paper's: UGround-V1-7B)"
    )
    observation: Literal["screenshot", "screenshot+axtree"] = arg(
        "screenshot+axtree", "the planner's input; paper: screenshot (pure vision)"
    )
    gui_tasks: int = arg(12, "training tasks whose expert runs are the GUI data; paper: 0 (all)")
    tasks: str = arg("", "GUI-world task ids (comma-separated): the GUI data AND the eval tasks")
    switch_loss_steps: int = arg(3, "GUI-stage steps averaged for the loss at the stage switch")
    max_episode_steps: int = arg(15, "agent steps per task; paper: 30 (AgentBoard)")
    max_new_tokens: int = arg(96, "planner output tokens; paper preset: 512 (not stated)")
    eval_split: Literal["test", "train", "all"] = arg("test", "GUI-world tasks to evaluate on")
    env: Literal["toy", "miniwob"] = arg(
        "toy", "toy (the simulated phone) | miniwob (MiniWoB++ in headless Chromium; --tasks)"
    )
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
    "non_gui_agents": Domain(MIDGUI + "Non-GUI_Agents.json", 51_780),  # AlfWorld (MAmmoTH-VL)
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
    """PR = the running max of the per-step progress (AgentBoard); 1 on success (SR = 1 iff
    PR = 1)."""
    return 1.0 if success else max(step_scores, default=0.0)


def history_entry(description: str, action: str, value: str) -> str:
    """One line of the planner's memory of earlier high-level actions ("click 'Sound'")."""
    if action in ("click", "long_press", "hover"):
        return f"{action} '{description}'"
    if action == "type":
        return f"type '{value}' into '{description}'"
    if action == "scroll":
        return f"{action} {value}".strip()
    return f"{action} '{value}'" if value else action


# ------------------------------------------------------------------------------------------------
# Planner format and grounding


def planner_messages(goal: str, obs: dict, history: list[str], observation="screenshot") -> list:
    """Screenshot + URL/app + earlier actions + task in (the paper trains and evaluates on the
    same prompt)."""
    past = "\n".join(f"step {i + 1}: {h}" for i, h in enumerate(history)) or "none"
    text = f"Task: {goal}\nApp: {obs.get('app', '')} URL: {obs.get('url', '')}\n"
    text += f"Previous actions:\n{past}\n"
    if observation == "screenshot+axtree":
        text += format_axtree(obs["ui_elements"]) + "\n"
    return [user_msg(text + "Next action?", True)]


def planner_target(description: str, action: str, value: str) -> str:
    """A thought, then the fenced JSON action."""
    thought = f"I will {history_entry(description, action, value)}."
    return format_guimid(thought, description, action, value)


class Planner:
    """The GUIMid agent as a `common.gui_env.run_episodes` policy: prompt -> text (`generate`,
    greedy as the paper decodes) -> parsed JSON -> grounded action. Garbage never crashes: the
    step becomes an invalid action (None) and the history says so."""

    def __init__(self, generate, grounder, observation: str):
        self.generate, self.grounder, self.observation = generate, grounder, observation

    def __call__(self, items: list[tuple]) -> list[tuple]:
        messages = [
            planner_messages(obs["goal"], obs, [s["thought"] for s in steps], self.observation)
            for _, obs, steps in items
        ]
        texts = self.generate(messages, [obs["screenshot"] for _, obs, _ in items])
        decisions = []
        for (_, obs, _), text in zip(items, texts):
            try:
                out = parse_guimid(text)
                action = guimid_to_action(out, obs, self.grounder)
                decisions.append((history_entry(out.description, out.action, out.value), action))
            except (ActionError, ValueError) as exc:
                decisions.append((f"invalid action ({type(exc).__name__})", None))
        return decisions


def model_generate(sampler, max_new_tokens: int, messages: list, images: list) -> list[str]:
    """Greedy planner outputs (T=0, as the paper evaluates); each rank its own prompts."""
    outs = generate_local(
        sampler, messages, images=images, temperature=0, max_new_tokens=max_new_tokens
    )
    return [c[0].text for c in outs]


def open_app_then_wait(apps: dict[str, str], messages: list, images: list) -> list[str]:
    """A scripted planner: open the task's app, then wait (how much PR needs no skill)."""
    texts = [m[0]["content"][-1]["text"] for m in messages]
    return [
        format_guimid("", "", "open_app", apps[re.search(r"Task: (.*)\n", t).group(1)])
        if "Previous actions:\nnone" in t
        else format_guimid("", "", "wait")
        for t in texts
    ]


# ------------------------------------------------------------------------------------------------
# Data: samples are {"messages": [...], "image": PIL | path | None}


def expert_gui_samples(tasks, observation: str = "screenshot") -> list[dict]:
    """The scripted expert on each task, one planner sample a step (Table 2's stand-in)."""
    samples = []
    for task in tasks:
        history = []
        for step in rollout(ToyGUIEnv(), ScriptedExpert(task).act, task)[0]:
            obs = step["obs"]
            triple = action_to_guimid(step["action"], obs["ui_elements"])
            answer = {"role": "assistant", "content": planner_target(*triple)}
            messages = planner_messages(task.goal, obs, history, observation) + [answer]
            samples.append({"messages": messages, "image": obs["screenshot"]})
            history.append(history_entry(*triple))
    return samples


def toy_samples(domain: str, n: int, seed: int, observation: str, gui_tasks=0) -> list[dict]:
    """n toy rows of a domain (the GUI domain: the expert on `gui_tasks`, a list or a count)."""
    kind = DOMAINS[domain].toy
    if kind is None:
        hint = f"pass --data hub or --domain_data {domain}=<file>"
        raise ValueError(f"domain {domain!r} has no toy generator; {hint}")
    if kind == "gui":
        if isinstance(gui_tasks, list):  # named tasks
            return expert_gui_samples(gui_tasks, observation)
        tasks = list_tasks("train")
        if 0 < gui_tasks < len(tasks):
            tasks = random.Random(seed).sample(tasks, gui_tasks)
        return expert_gui_samples(tasks, observation)
    return toy_domain_samples(kind, n, seed)


ROLES = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant"}
ROLES["system"] = "system"
PAIRS = (("instruction", "output"), ("problem", "solution"), ("prompt", "response"))
PAIRS += (("question", "answer"),)


def rows_to_samples(rows: list[dict], source: str, image_root: str) -> list[dict]:
    """Release rows -> samples: LLaVA conversations, chat messages or prompt/response columns."""
    samples = []
    for i, r in enumerate(rows):
        conv = r.get("conversations") or r.get("messages")
        if conv is None:
            pair = next(((p, q) for p, q in PAIRS if p in r and q in r), None)
            if pair is None:
                raise ValueError(
                    f"{source} row {i}: no conversations/messages or prompt/response-like "
                    f"columns ({sorted(r)})"
                )
            conv = [{"role": "user", "content": r[pair[0]]}]
            conv += [{"role": "assistant", "content": r[pair[1]]}]
        image = r.get("image") or r.get("images")
        image = image[0] if isinstance(image, list) and len(image) == 1 else image
        if isinstance(image, list):
            raise ValueError(f"{source} row {i}: {len(image)} images; one per sample is supported")
        if isinstance(image, str) and image_root:
            image = str(Path(image_root) / image)
        messages = []
        for m in conv:
            speaker = m.get("from", m.get("role"))
            role, text = ROLES.get(speaker), str(m.get("value", m.get("content", "")))
            if role is None:
                raise ValueError(f"{source} row {i}: unknown speaker {speaker!r}")
            first_user = role == "user" and not any(x["role"] == "user" for x in messages)
            if image is not None and first_user:  # the image goes with the first user turn
                messages.append(user_msg(text.replace("<image>", "").strip(), True))
            else:
                messages.append({"role": role, "content": text})
        samples.append({"messages": messages, "image": image})
    return samples


def named_tasks(spec: str) -> list:
    """GUI-world tasks named by --tasks (comma-separated ids); an unknown id is an error."""
    ids = [i.strip() for i in spec.split(",") if i.strip()]
    if unknown := [i for i in ids if i not in TASKS]:
        raise ValueError(f"--tasks: unknown task id(s) {unknown}; see common/gui_apps.py")
    return [TASKS[i] for i in ids]


def load_domain(domain: str, args: Args, n_toy: int, overrides: dict) -> list[dict]:
    source = overrides.get(domain) or (DOMAINS[domain].hub if args.data == "hub" else None)
    if source is None:
        seed = args.seed + sorted(DOMAINS).index(domain)
        gui_tasks = (named_tasks(args.tasks) if args.env == "toy" else []) or args.gui_tasks
        return toy_samples(domain, n_toy, seed, args.observation, gui_tasks)
    if source.startswith("hf://"):
        import datasets

        rows = [dict(r) for r in datasets.load_dataset("json", data_files=source, split="train")]
    else:
        rows = load_rows(source)
    return rows_to_samples(rows, source, args.image_root)


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
# Encoding, batches, one training run over both stages


def encode(processor, sample: dict, max_length: int) -> dict:
    """Token ids with the loss on every assistant turn. The first prompt segment goes through the
    processor (it expands the image placeholder, returns pixel_values etc.), the rest through the
    tokenizer; each response ends with the end-of-turn token."""
    tok = get_tokenizer(processor)
    eot = end_of_turn(tok)
    end_id = tok.convert_tokens_to_ids(eot)
    messages, image = sample["messages"], sample.get("image")
    ids, mask, extra, done = [], [], {}, ""
    for i, m in enumerate(messages):
        if m["role"] != "assistant":
            continue
        text = render_prompt(processor, messages[:i])
        if not text.startswith(done):
            raise ValueError("the chat template is not prefix-stable; cannot mask the prompts")
        if not ids and image is not None:
            img = Image.open(image).convert("RGB") if isinstance(image, str) else image
            enc = processor(text=[text], images=[img], return_tensors="pt")
            segment = enc["input_ids"][0].tolist()
            extra = {k: v for k, v in enc.items() if k not in ("input_ids", "attention_mask")}
        else:
            segment = tok(text[len(done) :], add_special_tokens=False)["input_ids"]
        response = tok(m["content"], add_special_tokens=False)["input_ids"] + [end_id]
        ids += segment + response
        mask += [0] * len(segment) + [1] * len(response)
        done = text + m["content"] + eot
    return {"ids": ids[:max_length], "mask": mask[:max_length], "extra": extra}


def encode_row(processor, pools: dict, max_length: int, domain: str, row: int) -> dict:
    return encode(processor, pools[domain][row], max_length)


def collate(rows: list[dict], pad_id: int, device) -> tuple:
    """Right-padded (B, L) ids, attention and loss masks, and the rows' image tensors."""
    L = max(len(r["ids"]) for r in rows)
    input_ids = torch.full((len(rows), L), pad_id, dtype=torch.long)  # (B, L)
    attention_mask, loss_mask = torch.zeros_like(input_ids), torch.zeros_like(input_ids)  # (B, L)
    for i, r in enumerate(rows):
        input_ids[i, : len(r["ids"])] = torch.tensor(r["ids"])
        attention_mask[i, : len(r["ids"])] = 1
        loss_mask[i, : len(r["mask"])] = torch.tensor(r["mask"])
    keys = {k for r in rows for k in r["extra"]}  # image tensors of the rows that have one
    extra = {k: torch.cat([r["extra"][k] for r in rows if k in r["extra"]]) for k in keys}
    extra = {k: v.to(device) for k, v in extra.items()}
    return input_ids.to(device), attention_mask.to(device), loss_mask.to(device), extra


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


@torch.no_grad()
def heldout_loss(model, processor, samples: list[dict], args: Args, dist_info) -> float:
    """Token-mean NLL of the expert's planner outputs on the evaluation tasks: how well the GUI
    stage generalises, on a scale that moves before success does."""
    pad_id, nll, tokens = get_tokenizer(processor).pad_token_id, 0.0, 0.0
    for k in range(0, len(samples), args.micro_batch_size):
        part = samples[k : k + args.micro_batch_size]
        rows = [encode(processor, x, args.max_length) for x in part]
        input_ids, attention_mask, loss_mask, extra = collate(rows, pad_id, dist_info.device)
        logps = token_logprobs(model, input_ids, attention_mask, **extra)  # (b, L-1)
        nll -= float((logps * loss_mask[:, 1:]).sum())
        tokens += float(loss_mask[:, 1:].sum())
    return nll / max(1.0, tokens)


# ------------------------------------------------------------------------------------------------
# Evaluation: the planner in the one GUI agent loop (common.gui_env.run_episodes)


def expert_target_url(task) -> str:
    """The URL where the expert acts last: the toy's stand-in for AgentBoard's URL subgoal."""
    return rollout(ToyGUIEnv(), ScriptedExpert(task).act, task)[0][-1]["obs"]["url"]


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


@dataclass
class Setup:
    """What every condition shares: the flags, ranks, base model, GUI tasks and grounder."""

    args: Args
    dist_info: object
    model_path: str
    processor: object
    make_env: object  # () -> a GUIEnvironment
    tasks: list  # the evaluation tasks
    target_urls: dict  # {task_id: the expert's last URL} (toy phone only)
    grounder: object
    out: Path


def play(generate, run: Setup, sampler=None) -> list[dict]:
    """The planner on every task (each rank its share, gathered in task order)."""
    args, dist_info = run.args, run.dist_info
    policy = Planner(generate, run.grounder, args.observation)
    batch = 1 if args.env == "miniwob" else None  # one browser: one episode at a time
    mine = run.tasks[dist_info.rank :: dist_info.world_size]
    records = run_episodes(
        mine, policy, args.max_episode_steps, make_env=run.make_env, batch_size=batch
    )
    if sampler is not None:  # FSDP2: keep joining the other ranks' generate rounds
        finish_local(sampler, temperature=0, max_new_tokens=args.max_new_tokens)
    urls = run.target_urls
    parts = all_gather_object([episode_result(r, urls.get(r["task_id"])) for r in records])
    world = dist_info.world_size
    return [parts[k % world][k // world] for k in range(len(run.tasks))]


def scores(results: list[dict]) -> dict:
    n, steps = max(1, len(results)), max(1, sum(r["steps"] for r in results))
    return dict(
        SR=sum(r["success"] for r in results) / n,
        PR=sum(r["pr"] for r in results) / n,
        invalid_rate=sum(r["invalid"] for r in results) / steps,
    )


def evaluate_model(model, run: Setup) -> list[dict]:
    model.eval()
    sampler = HFSampler(model, run.processor, batch_size=32)
    generate = functools.partial(model_generate, sampler, run.args.max_new_tokens)
    return play(generate, run, sampler)


def setup(args: Args, dist_info) -> Setup:
    """The base model, the GUI environment (--env / --env_factory / the toy phone) with its
    evaluation tasks, and the grounder."""
    model_path = args.model or make_tiny_vlm()  # the toy base: the tiny LLaVA as built
    target_urls = {}
    if args.env == "miniwob":
        from common import miniwob_env

        make_env, tasks = miniwob_env.env_factory(
            args.tasks, args.episodes_per_task, args.max_episode_steps
        )
    elif args.env_factory:
        module, _, fn = args.env_factory.partition(":")
        make_env, tasks = getattr(importlib.import_module(module), fn)()
    else:
        tasks = named_tasks(args.tasks) or list_tasks(
            None if args.eval_split == "all" else args.eval_split
        )
        make_env = functools.partial(ToyGUIEnv, max_steps=args.max_episode_steps)
        target_urls = {t.task_id: expert_target_url(t) for t in tasks}
    grounder = StubGrounder()
    if args.grounder != "stub":
        frozen = precision_policy(dist_info.device.type).frozen_dtype  # bf16 on CUDA
        grounder = ModelGrounder(args.grounder, dist_info.device, frozen)
    processor = load_processor(model_path)
    out = Path(args.output_dir)
    return Setup(
        args, dist_info, model_path, processor, make_env, tasks, target_urls, grounder, out
    )


def evaluate_only(run: Setup):
    """--eval_only: the model as it is, SR per task (MiniWoB: next to a random agent)."""
    args = run.args
    model = load_model(run.model_path, vlm=True, dtype="float32")
    results = evaluate_model(shard_model(model, run.dist_info, frozen=True), run)
    by_task = defaultdict(list)
    for r in results:
        by_task[r["task_id"]].append(r)
    rows = [dict(task=k, episodes=len(v)) | scores(v) for k, v in by_task.items()]
    rows.append(dict(task="all", episodes=len(results)) | scores(results))
    if args.env == "miniwob":
        from common import miniwob_env

        policy = miniwob_env.random_policy(random.Random(args.seed))
        runs = miniwob_env.run_policy(run.make_env(), policy, run.tasks)
        for row in rows:
            mine = [r for r in runs if row["task"] in ("all", r["task_id"])]
            row["random agent SR"] = sum(r["success"] for r in mine) / len(mine)
    title = f"{args.env}: {args.model or 'toy base'} without training, greedy"
    print0(f"\n{title}, max {args.max_episode_steps} steps:\n" + format_table(rows))
    if run.dist_info.is_main:
        write_jsonl(run.out / "eval_only" / "episodes.jsonl", results)
        write_summary(run.out, [], eval_only=rows)
    cleanup_distributed()


# ------------------------------------------------------------------------------------------------
# The toy base, the conditions, the claims


def conditions(args: Args, counts: dict[str, int]) -> list[tuple[str, dict]]:
    """(name, mid-training draws): GUI post-training only (Table 3 row 1), the mixture, and the
    mixture without GUI mixed in (Table 4's ablation, run only a few steps past the switch)."""
    out = [("gui_only", {GUI: 0})] if args.compare and args.mixture != "gui_only" else []
    out.append((args.mixture, counts))
    if args.compare and sum(counts.values()) > counts[GUI] > 0:
        out.append((f"{args.mixture} without GUI mixed in", {**counts, GUI: 0}))
    return out


def guimid_claims(table: list[dict], mixture: str) -> list[dict]:
    """The paper's comparisons, computed from this run: mid-training beats GUI post-training only
    (Table 3, PR; and on the held-out GUI loss), and GUI data mixed into mid-training lowers the
    GUI loss at the switch (Table 4)."""
    by = {r["condition"]: r for r in table}
    base, mixed = by.get("gui_only"), by.get(mixture)
    unmixed = by.get(f"{mixture} without GUI mixed in")
    specs = []  # (claim, metric, baseline row, result row, higher is better, margin)
    if base and mixed and mixture != "gui_only":
        mid = f"{mixture} mid-training"
        specs.append((f"{mid} > GUI-only: PR", "PR", base, mixed, True, 0.02))
        specs.append(
            (f"{mid} < GUI-only: held-out loss", "heldout_gui_loss", base, mixed, False, 0)
        )
    if mixed and unmixed:
        switch = "GUI mixed in: lower GUI loss at the switch"
        specs.append((switch, "switch_gui_loss", unmixed, mixed, False, 0))
    return [
        claim(name, metric, b[metric], r[metric], higher_is_better=higher, margin=margin)
        for name, metric, b, r, higher, margin in specs
        if metric in r
    ]


def run_condition(name: str, counts: dict, pools: dict, heldout: list, run: Setup) -> dict | None:
    """Train one condition (both stages, one schedule), then evaluate the agent; its table row,
    or None when --stop_after_step stopped it (checkpointed). --resume reuses a finished one."""
    args, dist_info = run.args, run.dist_info
    cond_dir = run.out / re.sub(r"[^\w.-]+", "_", name)
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
        if heldout:
            row["heldout_gui_loss"] = heldout_loss(model, run.processor, heldout, args, dist_info)
        row |= scores(results)
        row["final_gui_loss"] = sum(gui_losses[-5:]) / max(1, len(gui_losses[-5:]))
        if dist_info.is_main:
            write_jsonl(cond_dir / "episodes.jsonl", results)
    if dist_info.is_main:
        (cond_dir / "eval.json").write_text(json.dumps(row))
    logger.close()
    return row


def loss_curves(name: str, cond_dir: Path) -> list[dict]:
    return [
        {
            "step": r["step"],
            f"{name}/loss": r["loss"],
            f"{name}/gui_loss": r.get("loss/" + GUI),
            f"{name}/lr": r["lr"],
        }
        for r in read_jsonl_tolerant(cond_dir / "metrics.jsonl")
    ]


def main(args: Args):
    dist_info = init_distributed()
    seed_everything(args.seed)
    run = setup(args, dist_info)  # base model, GUI environment + evaluation tasks, grounder
    if args.eval_only:
        return evaluate_only(run)

    # 1. the mid-training mixture (+ GUI trajectories mixed in) and the GUI trajectories
    counts, pools = mixture_pools(args)
    toy_env = args.env == "toy" and not args.env_factory
    heldout = expert_gui_samples(run.tasks, args.observation) if toy_env else []

    # 2. each condition: mid-training, then GUI fine-tuning under one schedule; then the agent
    table, curves, names = [], [], []
    for name, cond_counts in conditions(args, counts):
        row = run_condition(name, cond_counts, pools, heldout, run)
        if row is None:
            break
        table.append(row)
        names.append(name)
        curves += loss_curves(name, run.out / re.sub(r"[^\w.-]+", "_", name))

    # 3. the floor a GUI agent must beat: open the task's app, then wait (no model)
    if toy_env:
        apps = {t.goal: APPS[t.app].label for t in run.tasks}
        results = play(functools.partial(open_app_then_wait, apps), run)
        row = dict(condition="scripted: open the right app, then wait") | scores(results)
        table.append({k: v for k, v in row.items() if k != "invalid_rate"})

    # 4. the table, the paper's claims (computed), the curves
    title = f"GUI world, {args.eval_split} tasks ({len(run.tasks)}), SR and AgentBoard-style PR"
    print0(f"\n{title}:\n" + format_table(table))
    claims = guimid_claims(table, args.mixture)
    if claims:
        print0(format_claims(claims))
    if dist_info.is_main:
        write_summary(run.out, claims, conditions=table)
    if dist_info.is_main and curves:
        keys = [f"{c}/gui_loss" for c in names] + [f"{names[-1]}/loss"]
        keys += [f"{c}/lr" for c in names]
        png = run.out / "curves.png"
        print0("curves:", plot_curves(curves, keys, png, title="GUIMid: one schedule, two stages"))
    cleanup_distributed()


if __name__ == "__main__":
    main(parse_config(Args, PAPER, derived))
