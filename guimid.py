"""GUIMid: mid-training mixtures, then GUI trajectory fine-tuning, evaluated as a GUI agent.

Paper: "Breaking the Data Barrier -- Building GUI Agents Through Task Generalization" (Zhang et al., arXiv
2504.10127, COLM 2025). No training code is released; this follows the paper text.

Idea: GUI trajectories are scarce, so first *mid-train* the VLM on data-rich reasoning domains (11 studied,
Table 1; math, even text-only, transfers best), then fine-tune on GUI trajectories. Both stages run under
ONE optimizer and ONE cosine LR schedule, and GUI trajectories are mixed into mid-training (without them the
loss spikes at the switch). GUIMid = MathInstruct 50% + multimodal math 26.7% + olympiad math 16.7% +
CodeI/O 6.7% (300K). The agent is a pure-vision planner: screenshot + URL/app + history of earlier actions +
task in; a thought and a fenced JSON {"Element Description", "Action", "Value"} out; a grounder (UGround in the
paper) maps the description to a point. Metrics: success rate (SR) and AgentBoard's progress rate (PR).

Departures:
- Toy scale (no --model): tiny LLaVA, toy domains made in code (MathInstruct -> 2-term arithmetic with steps,
  olympiad -> 4-term arithmetic, multimodal math -> common/shapes_world, CodeI/O -> compact "predict the
  output of f" samples written here; codeio.py's prompts are ~1K tokens each, too long for the CPU budget),
  GUI trajectories = the scripted expert on the GUI world's train tasks. The defaults are toy
  hyperparameters; a named --model selects the paper preset (PAPER below, Table 8).
- Toy observation: screenshot + accessibility text (--observation screenshot+axtree): the tiny VLM cannot
  read labels off its 64x64 image. The paper's planner is pure vision (the paper preset).
- Toy GUI data is scarce on purpose (the expert on 12 of the 40 training tasks, --gui_tasks), the regime
  where the paper says mid-training pays. The run also reports the loss at the stage switch without GUI
  data mixed in (Table 4's ablation) and a scripted "open the right app, then wait" planner's PR.
- `--env miniwob` runs the agent loop on MiniWoB++ pages (common/miniwob_env.py) instead of WebArena.
- Grounding: the toy uses the accessibility tree (common.gui_env.StubGrounder, a stand-in for UGround-V1-7B);
  `--grounder <VLM path>` asks a model for "(x, y)" in [0, 1000) through the same interface.
- The non-GUI:GUI ratio is not stated: default 56,062/150,000 GUI samples per mid-training sample (Table 2's
  whole set mixed into a 150K run, which the 300K run keeps "by duplicating GUI data").
- PR on the GUI world: content subgoals = the task's subgoals + success; the URL check = "on the screen where
  the expert acts last". Weight decay and gradient clipping are not stated: 0.0 and 1.0.
- `--data hub` reads the MidGUI per-domain release files; their columns are not documented, so rows may use
  LLaVA `conversations` (from/value), `messages` (role/content) or prompt/response columns; one image per row.

Commands (naming --model selects the paper preset, PAPER below; flags you pass win; --print_config shows
the effective configuration without loading anything):
  python guimid.py                                  # CPU toy: GUI-only vs GUIMid mix + GUI, claims in summary.json
  python guimid.py --env miniwob --eval_only        # MiniWoB++ in headless Chromium: an SR table per task
  python guimid.py --model Qwen/Qwen2-VL-7B-Instruct --mixture guimid_300k --gradient_checkpointing   # 1 GPU, toy data
  torchrun --nproc_per_node=8 guimid.py --model Qwen/Qwen2-VL-7B-Instruct --mixture guimid_300k --data hub \\
      --image_root /data/guimid_images --gradient_checkpointing --compare False   # FSDP2
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
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Literal

import torch
from PIL import Image
from tqdm import tqdm

from common.claims import claim, format_claims, write_summary
from common.config import parse_config, per_rank
from common.data import load_rows, make_arithmetic_rows, read_jsonl_tolerant, write_jsonl
from common.gui_env import (
    APPS,
    TASKS,
    ActionError,
    GUIAction,
    ScriptedExpert,
    StubGrounder,
    ToyGUIEnv,
    action_to_guimid,
    format_axtree,
    format_guimid,
    guimid_to_action,
    list_tasks,
    parse_guimid,
)
from common.models import load_model, load_processor, make_tiny_vlm
from common.sampling import HFSampler, get_tokenizer, render_prompt
from common.shapes_world import make_shapes_rows
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
    seed: int = field(default=0, metadata={"help": "random seed (mixture order, toy data, init)"})
    output_dir: str = field(
        default="runs/guimid", metadata={"help": "metrics, checkpoints, episodes, PNG"}
    )
    model: str = field(
        default="",
        metadata={
            "help": "VLM hub id/path; '' = tiny LLaVA (the paper trains Qwen2-VL-7B-Instruct)"
        },
    )
    data: Literal["toy", "hub"] = field(
        default="toy",
        metadata={"help": "toy (domains made in code) | hub (the DOMAINS table's files)"},
    )
    domain_data: str = field(
        default="", metadata={"help": "overrides: 'domain=path_or_hub,...' (JSON/JSONL/parquet)"}
    )
    image_root: str = field(
        default="", metadata={"help": "folder that relative image paths in --data hub rows use"}
    )
    mixture: str = field(
        default="guimid_300k",
        metadata={"help": "a RECIPES name or 'domain:weight,...' (Table 3 rows, §4)"},
    )
    mixture_size: int | None = field(
        default=960,
        metadata={
            "help": "mid-training samples from the mixture; None = the recipe total; toy 960; paper: None (300K for guimid_300k)"
        },
    )
    gui_mix_ratio: float = field(
        default=56_062 / 150_000,
        metadata={
            "help": "GUI samples mixed into mid-training per mixture sample (not stated; §3 says they are mixed in)"
        },
    )
    compare: bool = field(
        default=True,
        metadata={"help": "also train the 'GUI post-training only' baseline (Table 3 row 1)"},
    )
    lr: float = field(default=1e-2, metadata={"help": "peak LR; toy 1e-2; paper: 2e-5 (Table 8)"})
    batch_size: int = field(
        default=16,
        metadata={
            "help": "batch, all ranks; toy 16; paper: 32 (Table 8: 8 GPUs x 2 x accumulation 2)"
        },
    )
    micro_batch_size: int = field(
        default=2,
        metadata={
            "help": "rows per forward on one rank; the rest is grad accumulation; paper: 2 (Table 8)"
        },
    )
    gui_epochs: int = field(
        default=40, metadata={"help": "epochs of GUI fine-tuning; toy 40; paper: 1 (Table 8)"}
    )
    warmup_ratio: float = field(
        default=0.05, metadata={"help": "warmup share of the ONE schedule; paper: 0.05 (Table 8)"}
    )
    lr_scheduler: str = field(
        default="cosine",
        metadata={"help": "transformers scheduler over both stages (Table 8: cosine)"},
    )
    weight_decay: float = field(default=0.0, metadata={"help": "AdamW weight decay (not stated)"})
    max_grad_norm: float = field(default=1.0, metadata={"help": "gradient clipping (not stated)"})
    max_length: int = field(
        default=8192, metadata={"help": "context length, tokens; paper: 8192 (Table 8)"}
    )
    gradient_checkpointing: bool = field(
        default=False,
        metadata={
            "help": "trade compute for memory on big models; paper preset: True (not stated; a 7B VLM at 8192 tokens needs it)"
        },
    )
    save_every: int = field(
        default=50, metadata={"help": "checkpoint every N steps (and at the stage boundary)"}
    )
    resume: bool = field(
        default=False, metadata={"help": "continue each condition from its checkpoint"}
    )
    stop_after_step: int = field(
        default=0,
        metadata={
            "help": "stop a condition after this many steps, checkpointed (0 = run to the end)"
        },
    )
    grounder: str = field(
        default="stub",
        metadata={
            "help": "'stub' (a11y-tree stand-in) | a VLM path answering '(x, y)' (the paper uses UGround-V1-7B)"
        },
    )
    observation: Literal["screenshot", "screenshot+axtree"] = field(
        default="screenshot+axtree",
        metadata={
            "help": "screenshot | screenshot+axtree; toy screenshot+axtree (the tiny VLM cannot read labels off a 64x64 "
            "image); paper: screenshot (the planner is pure vision)"
        },
    )
    gui_tasks: int = field(
        default=12,
        metadata={
            "help": "GUI-world training tasks whose expert trajectories are the GUI "
            "data, 0 = all; toy 12 of 40 (scarce GUI data, §1); paper: 0 (all)"
        },
    )
    tasks: str = field(
        default="",
        metadata={
            "help": "GUI-world task ids (comma-separated): the GUI data AND the evaluation tasks"
        },
    )
    base_steps: int = field(
        default=0,
        metadata={
            "help": "toy base (no --model): copy warm-up steps (0 = the tiny VLM as built; see docs)"
        },
    )
    switch_loss_steps: int = field(
        default=3, metadata={"help": "GUI-stage steps averaged for the loss at the stage switch"}
    )
    max_episode_steps: int = field(
        default=15, metadata={"help": "agent steps per task; toy 15; paper: 30 (AgentBoard)"}
    )
    max_new_tokens: int = field(
        default=96,
        metadata={
            "help": "planner output tokens; toy 96; paper preset: 512 (not stated in the paper)"
        },
    )
    eval_split: Literal["test", "train", "all"] = field(
        default="test",
        metadata={"help": "GUI-world tasks to evaluate on: test (held out) | train | all"},
    )
    env: Literal["toy", "miniwob"] = field(
        default="toy",
        metadata={
            "help": "toy (the simulated phone) | miniwob (MiniWoB++ pages in "
            "headless Chromium; --tasks names them, default common.miniwob_env.DEFAULT_TASKS)"
        },
    )
    episodes_per_task: int = field(
        default=5, metadata={"help": "--env miniwob: seeded episodes per task"}
    )
    eval_only: bool = field(
        default=False,
        metadata={"help": "evaluate the model as it is (no training): an SR table per task"},
    )
    env_factory: str = field(
        default="",
        metadata={
            "help": "'module:function' returning (make_env, tasks) for an external GUIEnvironment"
        },
    )
    track: bool = field(default=False, metadata={"help": "log to Weights & Biases"})


# The paper's values (Table 8; AgentBoard's step limit), used with --preset paper (the default once --model
# is named); the defaults above are the CPU toy's. A flag on the command line wins.
PAPER = dict(
    lr=2e-5,  # Table 8
    batch_size=32,  # Table 8: 8 GPUs x 2 per device x accumulation 2
    gui_epochs=1,  # Table 8
    mixture_size=None,  # the recipe total: 300K for guimid_300k
    max_episode_steps=30,  # AgentBoard
    max_new_tokens=512,  # not stated in the paper
    gradient_checkpointing=True,  # not stated; a 7B VLM at 8192 tokens needs it
    observation="screenshot",  # the planner is pure vision: no DOM or accessibility tree
    gui_tasks=0,  # all of the GUI trajectories (Table 2)
)


def derived(args, world_size: int) -> dict:
    """Per-rank rows and gradient-accumulation steps implied by the global batch."""
    rows = per_rank(args.batch_size, world_size, "--batch_size")
    return dict(rows_per_rank=rows, accumulation_steps=-(-rows // args.micro_batch_size))


# ----------------------------------------------------------------------------------------------------
# The 11 mid-training domains (Table 1) + the GUI trajectories (Table 2). `hub` is the loadable release file.


@dataclass(frozen=True)
class Domain:
    hub: str
    sources: str  # Table 1/2 provenance (upstream hub ids)
    size: int
    columns: str
    toy: str | None = None  # toy generator in toy_samples()


MIDGUI = "hf://datasets/MidGUI/Mid-Training_data_of_separate_domains/"
LLAVA = "image, conversations[from/value]"
DOMAINS = {
    "chart_doc_qa": Domain(
        MIDGUI + "Chart_Document_QA.json",
        "InfographicVQA 2,184 + Ureader-QA 53,794 (MAmmoTH-VL/MAmmoTH-VL-Instruct-12M) + MPDocVQA 431 + MathV360K 93,591 (Zhiqiang007/MathV360K)",
        150_000,
        LLAVA,
    ),
    "non_gui_perception": Domain(
        MIDGUI + "Non-GUI_Perception.json", "Ureader-OCR 6,146 + DUE 143,854", 150_000, LLAVA
    ),
    "gui_perception": Domain(
        MIDGUI + "GUI_Perception.json",
        "MultiUI (neulab/MultiUI): 50K action prediction + 50K webpage QA + 50K image QA",
        150_000,
        LLAVA,
    ),
    "screenshot2code": Domain(
        MIDGUI + "Web_Screenshot2Code.json", "Web2Code (MBZUAI/Web2Code)", 150_000, LLAVA
    ),
    "mm_math": Domain(
        MIDGUI + "Multi-modal_Math .json", "MAVIS (CaraJ/MAVIS-Geometry)", 150_000, LLAVA, "shapes"
    ),
    "visual_conversation": Domain(
        MIDGUI + "Multi-round_Visual_Conversation.json", "SVIT (BAAI/SVIT)", 150_000, LLAVA
    ),
    "non_gui_agents": Domain(
        MIDGUI + "Non-GUI_Agents.json", "AlfWorld via MAmmoTH-VL", 51_780, LLAVA
    ),
    "mathinstruct": Domain(
        MIDGUI + "MathInstruct.json",
        "TIGER-Lab/MathInstruct, CoT split",
        150_000,
        "conversations | instruction, output",
        "arith2",
    ),
    "olympiad_math": Domain(
        MIDGUI + "Olympiad_Math.json",
        "AI-MO/NuminaMath-CoT, source == olympiads",
        150_000,
        "conversations | problem, solution",
        "arith4",
    ),
    "codeio": Domain(
        MIDGUI + "CodeIO.json",
        "hkust-nlp/CodeIO-PyEdu-Reasoning",
        150_000,
        "conversations | prompt, response",
        "codeio",
    ),
    "web_knowledge": Domain(
        MIDGUI + "Web_Knowledge_Base.json",
        "Synatra 99,924 + AgentTrek (xlangai/AgentTrek) 50,076",
        150_000,
        "conversations",
    ),
    "gui_trajectories": Domain(
        "hf://datasets/hkust-nlp/GUIMid/GUI_trajectory.json",
        "OS-Genesis web 3,789 + mobile 4,941, MM-Mind2Web 21,542, VisualWebArena 3,264, Aguvis 22,526",
        56_062,
        LLAVA,
        "gui",
    ),
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

# ----------------------------------------------------------------------------------------------------
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
    """Deterministic proportional sampling (§4 GUIMid mixture): counts proportional to the weights, summing to
    `total` exactly (largest remainder; ties go to the earlier domain). 3,000 draws of GUIMid -> 1500/800/500/200."""
    if unknown := [d for d in weights if d not in DOMAINS]:
        raise ValueError(f"--mixture: unknown domain(s) {unknown}; known: {', '.join(DOMAINS)}")
    if any(w < 0 or not math.isfinite(w) for w in weights.values()):
        raise ValueError(f"--mixture: weights must be finite and >= 0, got {weights}")
    weight_sum = sum(weights.values())
    if total > 0 and weight_sum <= 0:
        raise ValueError(
            f"--mixture: the total weight is zero ({weights}); give some domain a positive weight"
        )
    exact = (
        {d: total * w / weight_sum for d, w in weights.items()}
        if total > 0
        else {d: 0.0 for d in weights}
    )
    counts = {d: int(math.floor(x + 1e-9)) for d, x in exact.items()}
    by_remainder = sorted(
        weights, key=lambda d: -(exact[d] - counts[d])
    )  # stable sort keeps the table order on ties
    for d in by_remainder[: total - sum(counts.values())]:
        counts[d] += 1
    return counts


def draw_plan(
    counts: dict[str, int], pool_sizes: dict[str, int], seed: int
) -> list[tuple[str, int]]:
    """(domain, row) draws in a seeded random order. Each domain walks a seeded permutation of its rows and
    starts a new one when it runs out, so a small pool is duplicated (the paper duplicates GUI data, §3)."""
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
    """AgentBoard WebArena progress at one step (AgentBoard, arXiv 2401.13178, progress rate): 3/(n+3)*url + n/(n+3)*(met/n) with n content
    subgoals; without a URL check just met/n. 3 subgoals, 2 met, url 1 -> 0.5 + 0.5*2/3 = 0.8333."""
    n = len(content_flags)
    content = sum(map(bool, content_flags)) / n if n else 0.0
    return content if url_match is None else 3 / (n + 3) * url_match + n / (n + 3) * content


def progress_rate(step_scores: list[float], success: bool) -> float:
    """PR = running max of the per-step progress (AgentBoard), and 1 on success (SR = 1 iff PR = 1)."""
    return 1.0 if success else max(step_scores, default=0.0)


def history_entry(description: str, action: str, value: str) -> str:
    """One line of the planner's memory of earlier high-level actions ("step 2: click 'Sound'", §2)."""
    if action in ("click", "long_press", "hover"):
        return f"{action} '{description}'"
    if action == "type":
        return f"type '{value}' into '{description}'"
    return (
        f"{action} {value}".strip()
        if action == "scroll"
        else f"{action} '{value}'"
        if value
        else action
    )


# ----------------------------------------------------------------------------------------------------
# Planner format (§2) and grounding


def planner_messages(
    goal: str, obs: dict, history: list[str], observation: str = "screenshot"
) -> list[dict]:
    """Screenshot + URL/app + earlier actions + task in (the same prompt for training and evaluation, §5)."""
    past = "\n".join(f"step {i + 1}: {h}" for i, h in enumerate(history)) or "none"
    text = f"Task: {goal}\nApp: {obs.get('app', '')} URL: {obs.get('url', '')}\nPrevious actions:\n{past}\n"
    if observation == "screenshot+axtree":
        text += format_axtree(obs["ui_elements"]) + "\n"
    return [user_msg(text + "Next action?", True)]


def planner_target(description: str, action: str, value: str) -> str:
    """A thought, then the fenced JSON action."""
    return format_guimid(
        f"I will {history_entry(description, action, value)}.", description, action, value
    )


def parse_point(text: str) -> tuple[float, float] | None:
    """'(x, y)' with x, y in [0, 1000) (UGround-V1's output) -> normalised (x, y); anything else -> None."""
    m = re.search(r"\(\s*(-?\d+(?:\.\d+)?)\s*,\s*(-?\d+(?:\.\d+)?)\s*\)", text or "")
    if not m:
        return None
    x, y = float(m.group(1)) / 1000, float(m.group(2)) / 1000
    return (x, y) if 0 <= x <= 1 and 0 <= y <= 1 else None


class ModelGrounder:
    """A VLM behind gui_env's Grounder interface (paper: frozen UGround-V1-7B); unsharded, one copy per rank."""

    def __init__(self, path: str, device="cpu", dtype="auto"):
        self.processor = load_processor(path)
        self.sampler = HFSampler(
            load_model(path, vlm=True, dtype=dtype, device=device), self.processor
        )
        self.failures = 0

    def ground(self, description: str, obs: dict) -> tuple[float, float] | None:
        ask = f"Point to the element on this screen described as: {description}\nAnswer with one point (x, y) in [0, 1000)."
        text = self.sampler.generate(
            [[user_msg(ask, True)]], temperature=0, max_new_tokens=24, images=[obs["screenshot"]]
        )
        point = parse_point(text[0][0].text)
        self.failures += point is None
        return point


# ----------------------------------------------------------------------------------------------------
# Data: samples are {"messages": [...], "image": PIL | path | None}


def user_msg(text: str, image: bool) -> dict:
    return {
        "role": "user",
        "content": [{"type": "image"}, {"type": "text", "text": text}] if image else text,
    }


CODE_FUNCTIONS = [  # (source, function, how the CoT says it) for the CodeI/O-style toy domain
    ("def f(xs):\n    return sorted(xs)", sorted, "sorting"),
    ("def f(xs):\n    return xs[::-1]", lambda xs: xs[::-1], "reversing"),
    ("def f(xs):\n    return max(xs)", max, "the largest of"),
    ("def f(xs):\n    return min(xs)", min, "the smallest of"),
    (
        "def f(xs):\n    return [x + 1 for x in xs]",
        lambda xs: [x + 1 for x in xs],
        "adding 1 to each of",
    ),
]


def arithmetic_cot(expression: str) -> str:
    """Left-to-right partial results, one per line, then the answer."""
    tokens = expression.split()
    value, lines = int(tokens[0]), []
    for op, x in zip(tokens[1::2], tokens[2::2]):
        new = value + int(x) if op == "+" else value - int(x)
        lines.append(f"{value} {op} {x} = {new}.")
        value = new
    return "\n".join(lines + [f"The answer is {value}."])


def expert_gui_samples(tasks, observation: str = "screenshot") -> list[dict]:
    """The scripted expert on each task, one planner sample per step (GUI trajectories, Table 2 stand-in)."""
    samples, env = [], ToyGUIEnv()
    for task in tasks:
        expert, (obs, _), history, done = ScriptedExpert(task), env.reset(task), [], False
        while not done:
            action = expert.act(obs)
            triple = action_to_guimid(action, obs["ui_elements"])
            samples.append(
                {
                    "messages": planner_messages(task.goal, obs, history, observation)
                    + [{"role": "assistant", "content": planner_target(*triple)}],
                    "image": obs["screenshot"],
                }
            )
            history.append(history_entry(*triple))
            obs, _, terminated, truncated, _ = env.step(action)
            done = terminated or truncated
    return samples


def toy_samples(
    domain: str, n: int, seed: int, observation: str, gui_tasks: int | list = 0
) -> list[dict]:
    kind, rng = DOMAINS[domain].toy, random.Random(seed)
    if kind is None:
        raise ValueError(
            f"domain {domain!r} has no toy generator; pass --data hub or --domain_data {domain}=<file>"
        )
    if kind == "gui":
        if isinstance(gui_tasks, list):  # named tasks
            return expert_gui_samples(gui_tasks, observation)
        tasks = list_tasks("train")
        return expert_gui_samples(
            random.Random(seed).sample(tasks, gui_tasks) if 0 < gui_tasks < len(tasks) else tasks,
            observation,
        )
    if kind.startswith("arith"):
        rows = make_arithmetic_rows(
            n, seed, num_terms=int(kind[-1]), max_value=99 if kind == "arith2" else 30
        )
        return [
            {
                "messages": [
                    user_msg(r["question"], False),
                    {"role": "assistant", "content": arithmetic_cot(r["expression"])},
                ]
            }
            for r in rows
        ]
    if kind == "shapes":
        return [
            {
                "messages": [
                    user_msg(r["question"], True),
                    {"role": "assistant", "content": r["cot"]},
                ],
                "image": r["image"],
            }
            for r in make_shapes_rows(n, seed)
        ]
    out = []
    for _ in range(n):
        source, fn, says = rng.choice(CODE_FUNCTIONS)
        xs = [rng.randint(0, 9) for _ in range(rng.randint(2, 4))]
        answer = f"f returns {says} {xs}.\n```json\n{json.dumps({'output': fn(xs)})}\n```"
        out.append(
            {
                "messages": [
                    user_msg(f"Predict the output of f(xs) for xs = {xs}.\n{source}", False),
                    {"role": "assistant", "content": answer},
                ]
            }
        )
    return out


def rows_to_samples(rows: list[dict], source: str, image_root: str) -> list[dict]:
    """Release rows -> samples. Accepts LLaVA conversations, chat messages or prompt/response-like columns."""
    roles = {
        "human": "user",
        "user": "user",
        "gpt": "assistant",
        "assistant": "assistant",
        "system": "system",
    }
    samples = []
    for i, r in enumerate(rows):
        conv = r.get("conversations") or r.get("messages")
        if conv is None:
            pair = next(
                (
                    (p, q)
                    for p, q in (
                        ("instruction", "output"),
                        ("problem", "solution"),
                        ("prompt", "response"),
                        ("question", "answer"),
                    )
                    if p in r and q in r
                ),
                None,
            )
            if pair is None:
                raise ValueError(
                    f"{source} row {i}: no conversations/messages or prompt/response-like columns ({sorted(r)})"
                )
            conv = [
                {"role": "user", "content": r[pair[0]]},
                {"role": "assistant", "content": r[pair[1]]},
            ]
        image = r.get("image") or r.get("images")
        image = image[0] if isinstance(image, list) and len(image) == 1 else image
        if isinstance(image, list):
            raise ValueError(
                f"{source} row {i}: {len(image)} images; one image per sample is supported"
            )
        if isinstance(image, str) and image_root:
            image = str(Path(image_root) / image)
        messages = []
        for m in conv:
            role, text = (
                roles.get(m.get("from", m.get("role"))),
                str(m.get("value", m.get("content", ""))),
            )
            if role is None:
                raise ValueError(
                    f"{source} row {i}: unknown speaker {m.get('from', m.get('role'))!r}"
                )
            first_user = (
                image is not None
                and role == "user"
                and not any(x["role"] == "user" for x in messages)
            )
            messages.append(
                user_msg(text.replace("<image>", "").strip(), True)
                if first_user
                else {"role": role, "content": text}
            )
        samples.append({"messages": messages, "image": image})
    return samples


def named_tasks(spec: str) -> list:
    """GUI-world tasks named by --tasks (comma-separated ids); an unknown id is an error that names it."""
    ids = [i.strip() for i in spec.split(",") if i.strip()]
    if unknown := [i for i in ids if i not in TASKS]:
        raise ValueError(
            f"--tasks: unknown task id(s) {unknown}; see common/gui_apps.py build_tasks"
        )
    return [TASKS[i] for i in ids]


def load_domain(domain: str, args: Args, n_toy: int, overrides: dict) -> list[dict]:
    source = overrides.get(domain) or (DOMAINS[domain].hub if args.data == "hub" else None)
    if source is None:
        return toy_samples(
            domain,
            n_toy,
            args.seed + sorted(DOMAINS).index(domain),
            args.observation,
            (named_tasks(args.tasks) if args.env == "toy" else []) or args.gui_tasks,
        )
    if source.startswith("hf://"):
        import datasets

        rows = [dict(r) for r in datasets.load_dataset("json", data_files=source, split="train")]
    else:
        rows = load_rows(source)
    return rows_to_samples(rows, source, args.image_root)


# ----------------------------------------------------------------------------------------------------
# Encoding, batches, one training run over both stages


def encode(processor, sample: dict, max_length: int) -> dict:
    """Token ids with the loss on every assistant turn. The first prompt segment goes through the processor
    (which expands the image placeholder and returns pixel_values etc.), the rest through the tokenizer."""
    tok = get_tokenizer(processor)
    end_id = tok.convert_tokens_to_ids("<|im_end|>")
    end_id = tok.eos_token_id if end_id in (None, tok.unk_token_id) else end_id
    messages, image, ids, mask, extra, done = (
        sample["messages"],
        sample.get("image"),
        [],
        [],
        {},
        "",
    )
    for i, m in enumerate(messages):
        if m["role"] != "assistant":
            continue
        text = render_prompt(processor, messages[:i])
        if not text.startswith(done):
            raise ValueError(
                "the chat template is not prefix-stable across turns; cannot mask the prompts"
            )
        if not ids and image is not None:
            img = Image.open(image).convert("RGB") if isinstance(image, str) else image
            enc = processor(text=[text], images=[img], return_tensors="pt")
            segment = enc["input_ids"][0].tolist()
            extra = {k: v for k, v in enc.items() if k not in ("input_ids", "attention_mask")}
        else:
            segment = tok(text[len(done) :], add_special_tokens=False)["input_ids"]
        response = tok(m["content"], add_special_tokens=False)["input_ids"] + [end_id]
        ids, mask = ids + segment + response, mask + [0] * len(segment) + [1] * len(response)
        done = text + m["content"] + tok.convert_ids_to_tokens(end_id)
    return {"ids": ids[:max_length], "mask": mask[:max_length], "extra": extra}


def collate(
    rows: list[dict], pad_id: int, device
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, dict]:
    L = max(len(r["ids"]) for r in rows)
    input_ids = torch.full((len(rows), L), pad_id, dtype=torch.long)  # (B, L)
    attention_mask, loss_mask = torch.zeros_like(input_ids), torch.zeros_like(input_ids)  # (B, L)
    for i, r in enumerate(rows):
        input_ids[i, : len(r["ids"])] = torch.tensor(r["ids"])
        attention_mask[i, : len(r["ids"])] = 1
        loss_mask[i, : len(r["mask"])] = torch.tensor(r["mask"])
    keys = {
        k for r in rows for k in r["extra"]
    }  # image tensors of the rows that have one, stacked along dim 0
    extra = {
        k: torch.cat([r["extra"][k] for r in rows if k in r["extra"]]).to(device) for k in keys
    }
    return input_ids.to(device), attention_mask.to(device), loss_mask.to(device), extra


def build_batches(
    mid_counts: dict[str, int], pools: dict[str, list], gui_epochs: int, batch_size: int, seed: int
):
    """Stage 1 (mixture + GUI mixed in) then stage 2 (GUI epochs) as one list of global batches of (domain, row)."""
    stage1 = draw_plan(
        {d: n for d, n in mid_counts.items() if n}, {d: len(p) for d, p in pools.items()}, seed
    )
    stage2 = draw_plan({GUI: gui_epochs * len(pools[GUI])}, {GUI: len(pools[GUI])}, seed + 1)
    chunk = lambda draws: [draws[i : i + batch_size] for i in range(0, len(draws), batch_size)]  # noqa: E731
    return chunk(stage1), chunk(stage2)


def train_condition(
    model, processor, pools, mid_batches, gui_batches, args: Args, dist_info, out_dir: Path
):
    """One optimizer and one LR schedule over mid-training + GUI fine-tuning (§3), resumable at any step (the
    checkpoint holds the step = the position in the deterministic batch plan). Returns (optimizer, scheduler, logger)."""
    batches, n_mid = mid_batches + gui_batches, len(mid_batches)
    optimizer = make_optimizer(model, args.lr, weight_decay=args.weight_decay)
    scheduler = make_scheduler(
        optimizer, args.lr_scheduler, math.ceil(args.warmup_ratio * len(batches)), len(batches)
    )
    digest = hashlib.sha1(json.dumps([n_mid, batches]).encode()).hexdigest()[:12]
    start, ckpt = 0, out_dir / "checkpoint"
    # Parameters with no gradient yet (the vision tower during text-only mid-training) have no AdamW state:
    # load_checkpoint leaves them without, so they start fresh at their first gradient, as uninterrupted.
    if args.resume and (loaded := load_checkpoint(ckpt, model, optimizer, scheduler)) is not None:
        start, extra = loaded
        if extra.get("plan") != digest:
            raise ValueError(
                f"{ckpt}: written with other data flags (--mixture/--mixture_size/--batch_size/--seed/...)"
            )
    logger = MetricsLogger(
        out_dir,
        track=args.track,
        run_name=f"guimid-{out_dir.name}",
        config=asdict(args),
        resume_step=start if args.resume else None,
    )
    pad_id = get_tokenizer(processor).pad_token_id
    encoded = functools.lru_cache(maxsize=4096)(
        lambda d, r: encode(processor, pools[d][r], args.max_length)
    )  # toy: epochs
    stop = min(len(batches), args.stop_after_step or len(batches))
    for step in tqdm(
        range(start, stop),
        desc=out_dir.name,
        disable=not dist_info.is_main,
        initial=start,
        total=len(batches),
    ):
        mine = batches[step][dist_info.rank :: dist_info.world_size]
        n_micro = math.ceil(
            math.ceil(len(batches[step]) / dist_info.world_size) / args.micro_batch_size
        )
        rows = [(d, r, 1.0) for d, r in mine] + [(*batches[step][0], 0.0)] * (
            n_micro * args.micro_batch_size - len(mine)
        )
        todo = [
            (encoded(d, r), d, w) for d, r, w in rows
        ]  # short ranks run zero-weight copies: FSDP2 needs lock-step passes
        total_tokens = sum(sum(e["mask"][1:]) * w for e, _, w in todo) or 1.0
        nll, tokens = defaultdict(float), defaultdict(float)
        for k in range(0, len(todo), args.micro_batch_size):
            part = todo[k : k + args.micro_batch_size]
            input_ids, attention_mask, loss_mask, extra = collate(
                [e for e, _, _ in part], pad_id, dist_info.device
            )
            logps = token_logprobs(model, input_ids, attention_mask, **extra)  # (b, L-1)
            weights = torch.tensor([w for _, _, w in part], device=logps.device)
            row_nll = -(logps * loss_mask[:, 1:]).sum(-1) * weights  # (b,)
            (
                row_nll.sum() / total_tokens
            ).backward()  # token mean over this rank's share of the global batch
            for (e, d, w), v in zip(part, row_nll.tolist()):
                nll[d], tokens[d] = nll[d] + v, tokens[d] + sum(e["mask"][1:]) * w
        grad_norm = clip_grad_norm(model, args.max_grad_norm)
        lr = scheduler.get_last_lr()[0]
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        domain_nll, domain_tokens = Counter(), Counter()
        for part_nll, part_tokens in all_gather_object((dict(nll), dict(tokens))):
            domain_nll.update(part_nll)
            domain_tokens.update(part_tokens)
        metrics = {
            "loss": sum(domain_nll.values()) / max(1e-9, sum(domain_tokens.values())),
            "lr": lr,
            "grad_norm": grad_norm,
            "stage": int(step >= n_mid),
        }
        metrics |= {
            f"loss/{d}": domain_nll[d] / domain_tokens[d]
            for d in sorted(domain_tokens)
            if domain_tokens[d] > 0
        }
        logger.log(metrics, step + 1)
        if (step + 1) % args.save_every == 0 or step + 1 in (n_mid, stop):
            save_checkpoint(
                ckpt,
                model,
                optimizer,
                scheduler,
                step + 1,
                extra={
                    "stage": "mid" if step + 1 <= n_mid else "gui",
                    "data_position": step + 1,
                    "plan": digest,
                },
            )
    return optimizer, scheduler, logger


# ----------------------------------------------------------------------------------------------------
# The agent loop (any GUIEnvironment) and evaluation


def expert_target_url(task) -> str:
    """The URL where the expert takes its last action: the toy's stand-in for AgentBoard's URL subgoal."""
    env, expert = ToyGUIEnv(), ScriptedExpert(task)
    (obs, _), done = env.reset(task), False
    while not done:
        url = obs["url"]
        obs, _, terminated, truncated, _ = env.step(expert.act(obs))
        done = terminated or truncated
    return url


def run_agent(
    policy,
    make_env,
    tasks,
    grounder,
    max_steps: int,
    dist_info,
    observation="screenshot",
    target_urls=None,
):
    """Planner -> parse -> ground -> env.step, batched over this rank's tasks; every rank calls `policy` with the
    same number of prompts each round (FSDP2 generate is a collective). Returns per-task results (all ranks)."""
    if len(tasks) < dist_info.world_size:
        raise ValueError(
            f"{len(tasks)} evaluation tasks for {dist_info.world_size} ranks: every rank needs one"
        )
    mine = list(range(dist_info.rank, len(tasks), dist_info.world_size))
    envs = {i: make_env() for i in mine}
    state = {
        i: dict(
            obs=envs[i].reset(tasks[i])[0],
            history=[],
            scores=[],
            steps=0,
            errors=0,
            success=False,
            done=False,
        )
        for i in mine
    }
    while True:
        active = [i for i in mine if not state[i]["done"]]
        width = max(all_gather_object(len(active)))
        if width == 0:
            break
        prompts = [(tasks[i].goal, state[i]["obs"], state[i]["history"]) for i in active]
        prompts += [prompts[0] if prompts else (tasks[mine[0]].goal, state[mine[0]]["obs"], [])] * (
            width - len(active)
        )
        outputs = policy(
            [planner_messages(g, o, h, observation) for g, o, h in prompts],
            [o["screenshot"] for _, o, _ in prompts],
        )
        for i, text in zip(active, outputs):
            s, env = state[i], envs[i]
            try:
                out = parse_guimid(text)
                action = guimid_to_action(out, s["obs"], grounder)
                s["history"].append(history_entry(out.description, out.action, out.value))
            except (
                ActionError,
                ValueError,
            ) as exc:  # garbage output never crashes: count it, spend the step
                s["errors"] += 1
                action = GUIAction("wait")
                s["history"].append(f"invalid action ({type(exc).__name__})")
            s["obs"], reward, terminated, truncated, info = env.step(action)
            s["steps"] += 1
            s["success"] = bool(info.get("success", reward > 0))
            url_match = None if not target_urls else float(s["obs"].get("url") == target_urls[i])
            s["scores"].append(
                progress_score(url_match, list(info.get("subgoals", [])) + [s["success"]])
            )
            s["done"] = terminated or truncated or s["steps"] >= max_steps
    results = [
        dict(
            task_id=getattr(tasks[i], "task_id", str(i)),
            success=s["success"],
            pr=progress_rate(s["scores"], s["success"]),
            steps=s["steps"],
            invalid=s["errors"],
            history=s["history"],
        )
        for i, s in state.items()
    ]
    return sorted(
        (r for part in all_gather_object(results) for r in part), key=lambda r: r["task_id"]
    )


@torch.no_grad()
def heldout_loss(model, processor, samples: list[dict], args: Args, dist_info) -> float:
    """Token-mean NLL of the expert's planner outputs on the evaluation tasks: how well the GUI stage
    generalises, on a scale that moves before success does."""
    pad_id, nll, tokens = get_tokenizer(processor).pad_token_id, 0.0, 0.0
    for k in range(0, len(samples), args.micro_batch_size):
        rows = [
            encode(processor, x, args.max_length) for x in samples[k : k + args.micro_batch_size]
        ]
        input_ids, attention_mask, loss_mask, extra = collate(rows, pad_id, dist_info.device)
        logps = token_logprobs(model, input_ids, attention_mask, **extra)  # (b, L-1)
        nll -= float((logps * loss_mask[:, 1:]).sum())
        tokens += float(loss_mask[:, 1:].sum())
    return nll / max(1.0, tokens)


def open_app_then_wait(tasks):
    """A scripted GUIMid-format policy: open the task's app, then wait (how much PR needs no skill)."""
    apps = {t.goal: APPS[t.app].label for t in tasks}

    def policy(messages, images):
        texts = [m[0]["content"][-1]["text"] for m in messages]
        return [
            format_guimid("", "", "open_app", apps[re.search(r"Task: (.*)\n", t).group(1)])
            if "Previous actions:\nnone" in t
            else format_guimid("", "", "wait")
            for t in texts
        ]

    return policy


def guimid_claims(table: list[dict], mixture: str, no_mix: str) -> list[dict]:
    """The paper's comparisons, computed from this run: mid-training on the mixture beats GUI post-training
    only (Table 3, PR), and mixing GUI data into mid-training lowers the GUI loss at the switch (§3)."""
    by = {r["condition"]: r for r in table}
    out = []
    if "gui_only" in by and mixture in by and mixture != "gui_only":
        out += [
            claim(
                f"{mixture} mid-training > GUI-only: PR",
                "PR",
                by["gui_only"]["PR"],
                by[mixture]["PR"],
                margin=0.02,
            )
        ]
        if "heldout_gui_loss" in by[mixture]:
            out += [
                claim(
                    f"{mixture} mid-training < GUI-only: held-out loss",
                    "heldout_gui_loss",
                    by["gui_only"]["heldout_gui_loss"],
                    by[mixture]["heldout_gui_loss"],
                    higher_is_better=False,
                )
            ]
    if mixture in by and no_mix in by:
        out += [
            claim(
                "GUI mixed in: lower GUI loss at the switch",
                "switch_gui_loss",
                by[no_mix]["switch_gui_loss"],
                by[mixture]["switch_gui_loss"],
                higher_is_better=False,
            )
        ]
    return out


def make_policy(model, processor, max_new_tokens: int):
    sampler = HFSampler(model, processor, batch_size=32)

    def policy(messages, images):  # greedy, as the paper decodes (T=0, top_p 1, §1 Evaluation)
        if hasattr(
            model, "unshard"
        ):  # FSDP2: transformers 5 encodes images outside the root forward (its hook)
            model.unshard()
        completions = sampler.generate(
            messages, temperature=0, max_new_tokens=max_new_tokens, images=images
        )
        if hasattr(model, "reshard"):
            model.reshard()
        return [c[0].text for c in completions]

    return policy


# ----------------------------------------------------------------------------------------------------


WARMUP_WORDS = (
    "the a of to and in is it for on with as at by from open close new list item page button field "
    "red blue green small large first last next left right top bottom one two three four five"
).split()


def toy_base(dist_info, steps: int = 100, seed: int = 0, lr: float = 3e-3) -> str:
    """The toy base (no --model): the tiny LLaVA after a short generic warm-up (repeat a line of words), so
    every condition starts from a model that can copy text into its answer, as a pretrained VLM can."""
    if steps == 0:
        return make_tiny_vlm()

    def build(folder: Path):
        tiny = make_tiny_vlm()
        model, processor, rng = (
            load_model(tiny, vlm=True),
            load_processor(tiny),
            random.Random(seed),
        )
        lines = [" ".join(rng.choices(WARMUP_WORDS, k=rng.randint(2, 8))) for _ in range(2000)]
        rows = [
            encode(
                processor,
                {
                    "messages": [
                        user_msg(f"Repeat: {x}", False),
                        {"role": "assistant", "content": x},
                    ]
                },
                256,
            )
            for x in lines
        ]
        optimizer, pad_id = make_optimizer(model, lr), get_tokenizer(processor).pad_token_id
        for _ in tqdm(range(steps), desc="toy base: warm-up"):
            input_ids, attention_mask, loss_mask, _ = collate(
                rng.sample(rows, 16), pad_id, "cpu"
            )  # (16, L)
            logps = token_logprobs(model, input_ids, attention_mask)  # (16, L-1)
            loss = -(logps * loss_mask[:, 1:]).sum() / loss_mask[:, 1:].sum()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
        model.save_pretrained(folder)
        processor.save_pretrained(folder)

    spec = dict(steps=steps, seed=seed, lr=lr)
    path = (
        toy_model("guimid-base", spec, build, code=[encode, collate, user_msg])
        if dist_info.is_main
        else None
    )
    barrier()  # rank 0 builds; the others then find it in the cache
    return path or toy_model("guimid-base", spec, build, code=[encode, collate, user_msg])


def evaluate_only(
    args: Args, model_path, processor, make_env, tasks, grounder, target_urls, dist_info, out: Path
):
    """--eval_only: the model as it is on the tasks, an SR table per task (MiniWoB: next to a random agent)."""
    model = shard_model(
        load_model(model_path, vlm=True, dtype="float32"), dist_info, frozen=True
    )  # eval mode
    policy = make_policy(model, processor, args.max_new_tokens)
    if args.env == "miniwob":  # one browser: the episodes run one after another
        results = [
            r
            for t in tasks
            for r in run_agent(
                policy, make_env, [t], grounder, args.max_episode_steps, dist_info, args.observation
            )
        ]
    else:
        results = run_agent(
            policy,
            make_env,
            tasks,
            grounder,
            args.max_episode_steps,
            dist_info,
            args.observation,
            target_urls,
        )
    random_sr = {}
    if args.env == "miniwob":
        from common import miniwob_env

        runs = miniwob_env.run_policy(
            make_env(), miniwob_env.random_policy(random.Random(args.seed)), tasks
        )
        random_sr = {
            name: sum(r["success"] for r in runs if r["task_id"] == name)
            / sum(r["task_id"] == name for r in runs)
            for name in dict.fromkeys(r["task_id"] for r in runs)
        }
    by_task = defaultdict(list)
    for r in results:
        by_task[r["task_id"]].append(r)
    rows = [
        dict(
            task=k,
            episodes=len(v),
            SR=sum(r["success"] for r in v) / len(v),
            PR=sum(r["pr"] for r in v) / len(v),
        )
        | ({"random agent SR": random_sr[k]} if k in random_sr else {})
        for k, v in by_task.items()
    ]
    rows.append(
        dict(
            task="all",
            episodes=len(results),
            SR=sum(r["success"] for r in results) / len(results),
            PR=sum(r["pr"] for r in results) / len(results),
        )
        | ({"random agent SR": sum(random_sr.values()) / len(random_sr)} if random_sr else {})
    )
    print0(
        f"\n{args.env}: {args.model or 'toy base'} without training, greedy, max {args.max_episode_steps} steps:\n"
        + format_table(rows)
    )
    if dist_info.is_main:
        write_jsonl(out / "eval_only" / "episodes.jsonl", results)
        write_summary(out, [], eval_only=rows)
    cleanup_distributed()


def main(args: Args):
    dist_info = init_distributed()
    seed_everything(args.seed)
    model_path = args.model or toy_base(dist_info, args.base_steps)
    processor = load_processor(model_path)
    out = Path(args.output_dir)
    pairs = [p.split("=", 1) for p in filter(None, args.domain_data.split(","))]
    if any(len(p) != 2 or p[0] not in DOMAINS for p in pairs):
        raise ValueError(
            f"--domain_data {args.domain_data!r}: write 'domain=path,...' with domains from {list(DOMAINS)}"
        )
    overrides = dict(pairs)
    recipe = parse_mixture(args.mixture)
    mix_total = (
        0
        if not recipe
        else args.mixture_size
        if args.mixture_size is not None
        else int(sum(recipe.values()))
    )
    mid_counts = allocate_counts(recipe, mix_total)
    mid_counts[GUI] = round(args.gui_mix_ratio * mix_total)
    if args.env == "miniwob":
        from common import miniwob_env

        make_env, tasks = miniwob_env.env_factory(
            args.tasks, args.episodes_per_task, args.max_episode_steps
        )
        target_urls = None
    elif args.env_factory:
        module, _, fn = args.env_factory.partition(":")
        make_env, tasks = getattr(importlib.import_module(module), fn)()
        target_urls = None
    else:
        tasks = named_tasks(args.tasks) or list_tasks(
            None if args.eval_split == "all" else args.eval_split
        )
        make_env, target_urls = (
            functools.partial(ToyGUIEnv, max_steps=args.max_episode_steps),
            [expert_target_url(t) for t in tasks],
        )
    frozen = precision_policy(
        dist_info.device.type
    ).frozen_dtype  # the frozen grounder: bf16 on CUDA
    grounder = (
        StubGrounder()
        if args.grounder == "stub"
        else ModelGrounder(args.grounder, dist_info.device, frozen)
    )
    if args.eval_only:
        return evaluate_only(
            args, model_path, processor, make_env, tasks, grounder, target_urls, dist_info, out
        )
    pools = {d: load_domain(d, args, n, overrides) for d, n in mid_counts.items() if n or d == GUI}
    print0(
        f"mid-training draws per domain: {mid_counts}; pool sizes: { {d: len(p) for d, p in pools.items()} }"
    )
    heldout = (
        expert_gui_samples(tasks, args.observation)
        if args.env == "toy" and not args.env_factory
        else []
    )
    no_mix = f"{args.mixture} without GUI mixed in"  # Table 4's ablation: only run up to the stage switch
    conditions = (["gui_only"] if args.compare and args.mixture != "gui_only" else []) + [
        args.mixture
    ]
    conditions += [no_mix] if args.compare and mix_total and mid_counts[GUI] else []
    table, curves = [], []
    for cond in conditions:
        cond_dir = out / re.sub(r"[^\w.-]+", "_", cond)
        counts = (
            {GUI: 0}
            if cond == "gui_only"
            else {**mid_counts, GUI: 0}
            if cond == no_mix
            else mid_counts
        )  # Table 3 row 1
        mid_batches, gui_batches = build_batches(
            counts, pools, args.gui_epochs, args.batch_size, args.seed
        )
        run_args = (
            replace(args, stop_after_step=len(mid_batches) + args.switch_loss_steps)
            if cond == no_mix
            else args
        )
        if args.resume and (cond_dir / "eval.json").exists():
            row = json.loads((cond_dir / "eval.json").read_text())
        else:
            seed_everything(args.seed)  # every condition starts from the same weights
            # fp32 masters, bf16 compute on CUDA (Table 8: bf16) through common.train's precision policy
            model = load_model(model_path, vlm=True, dtype="float32")
            model = shard_model(
                model, dist_info, gradient_checkpointing=args.gradient_checkpointing
            )  # train mode
            _, _, logger = train_condition(
                model, processor, pools, mid_batches, gui_batches, run_args, dist_info, cond_dir
            )
            if args.stop_after_step and args.stop_after_step < len(mid_batches) + len(gui_batches):
                print0(
                    f"{cond}: stopped after step {args.stop_after_step} (checkpointed); rerun with --resume"
                )
                break
            gui_losses = [r["loss/" + GUI] for r in logger.history if "loss/" + GUI in r]
            switch = [r["loss/" + GUI] for r in logger.history if r["step"] > len(mid_batches)][
                : args.switch_loss_steps
            ]
            row = dict(
                condition=cond,
                mid_steps=len(mid_batches),
                gui_steps=len(gui_batches),
                switch_gui_loss=sum(switch) / max(1, len(switch)) if mid_batches else None,
            )
            if cond != no_mix:
                model.eval()
                results = run_agent(
                    make_policy(model, processor, args.max_new_tokens),
                    make_env,
                    tasks,
                    grounder,
                    args.max_episode_steps,
                    dist_info,
                    args.observation,
                    target_urls,
                )
                if heldout:
                    row["heldout_gui_loss"] = heldout_loss(
                        model, processor, heldout, args, dist_info
                    )
                row |= dict(
                    SR=sum(r["success"] for r in results) / len(results),
                    PR=sum(r["pr"] for r in results) / len(results),
                    invalid_rate=sum(r["invalid"] for r in results)
                    / max(1, sum(r["steps"] for r in results)),
                    final_gui_loss=sum(gui_losses[-5:]) / max(1, len(gui_losses[-5:])),
                )
                if dist_info.is_main:
                    write_jsonl(cond_dir / "episodes.jsonl", results)
            if dist_info.is_main:
                (cond_dir / "eval.json").write_text(json.dumps(row))
            logger.close()
            del model
        table.append(row)
        curves += [
            {
                "step": r["step"],
                f"{cond}/loss": r["loss"],
                f"{cond}/gui_loss": r.get("loss/" + GUI),
                f"{cond}/lr": r["lr"],
            }
            for r in read_jsonl_tolerant(cond_dir / "metrics.jsonl")
        ]
    if (
        not args.env_factory
    ):  # the floor a GUI agent must beat: open the task's app, then wait (no model)
        scripted = run_agent(
            open_app_then_wait(tasks),
            make_env,
            tasks,
            grounder,
            args.max_episode_steps,
            dist_info,
            args.observation,
            target_urls,
        )
        table.append(
            dict(
                condition="scripted: open the right app, then wait",
                SR=sum(r["success"] for r in scripted) / len(scripted),
                PR=sum(r["pr"] for r in scripted) / len(scripted),
            )
        )
    print0(
        f"\nGUI world, {args.eval_split} tasks ({len(tasks)}), SR and AgentBoard-style PR:\n"
        + format_table(table)
    )
    claims = guimid_claims(table, args.mixture, no_mix)
    if claims:
        print0(format_claims(claims))
    if dist_info.is_main:
        write_summary(out, claims, conditions=table)
    if dist_info.is_main and curves:
        keys = (
            [f"{c}/gui_loss" for c in conditions]
            + [f"{conditions[-1]}/loss"]
            + [f"{c}/lr" for c in conditions]
        )
        print0(
            "curves:",
            plot_curves(curves, keys, out / "curves.png", title="GUIMid: one schedule, two stages"),
        )
    cleanup_distributed()


if __name__ == "__main__":
    main(parse_config(Args, PAPER, derived))
