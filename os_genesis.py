"""OS-Genesis: reverse task synthesis for GUI agents (docs/os_genesis.md).

Paper: "OS-Genesis: Automating GUI Agent Trajectory Construction via Reverse Task Synthesis",
Sun et al., ACL 2025, arXiv 2412.19723; released code OS-Copilot/OS-Genesis (`collection/`).

Explore first, name the task afterwards. Random walks record (screen before, action, screen after)
triples; a model turns each triple into a low-level instruction and a high-level task that the step
would serve (reverse task synthesis); an agent executes every synthesized task (at most 15 steps,
abort after the same action 3 times in a row); a trajectory reward model (TRM) scores each
trajectory 1-5, and each training draw picks trajectory i with probability R_i / sum_k R_k (no
filtering). The agent is fine-tuned on two objectives per step: (screen, task, history) -> low-level
thought + action, and the same inputs + the thought -> action. Here the GUI is the toy phone of
common/gui_env.py; the agent is evaluated on its held-out tasks (success rate and
AndroidControl-style step accuracy, high and low level) against the paper's baseline, task-driven
data.

Departures (vs the paper and its released `collection/` code):
- Offline, rule-based STAND-INS for GPT-4o (common/gui_standins.py) read the toy phone's state: a
  describer (the triple's state change), an executor that carries out the synthesized task (the
  walk's path minus every step the task does not need) with 15% random slips, and a TRM that scores
  completion + coherence (a detour scores 4, a side effect 3). `--annotator/--text_filler/
  --executor/--judge model` use any LLM/VLM instead.
- A clean split: a synthesized task that is a held-out task (same goal, or the same instance: its
  state change passes a held-out check, or its answer is a held-out answer) is dropped.
- Task-driven baseline: the scripted expert's trajectories of the phone's training tasks (the paper
  has GPT-4o propose tasks from the apps' first screens and execute them).
- Both start from the same warm-started toy base, a tiny VLM taught low-level instruction following
  on random screens (the paper starts from Qwen2-VL-7B-Instruct).
- One image per prompt (before | after with a red box; the TRM's last 3 screenshots side by side).
- Trajectories start on the launcher (the held-out tasks do); synthesized goals are de-duplicated
  by text; a judge output still invalid after 5 tries scores 1; screenshots are re-rendered by
  replay, not stored.
- The agent sees the last `--max_history 2` steps (paper: all); the task comes last in its prompt.
- Every rank runs its share of each data stage (walks, triples, tasks, trajectories strided by
  rank) with its own helper models, so the pool of unclickable elements is per rank; the paper
  walks sequentially.
- `--env miniwob` walks MiniWoB++ pages (a page instance per walk, the web walker's weights, no
  long press); its stand-ins name the clicked element or the typed text, replay the walk's actions
  on the same page instance (15% slips) and judge by the last action; model-backed annotator and
  judge are toy-only there. SR is the page's own reward on instances the walks never saw.

Commands (naming --model selects the paper preset, PAPER below; --print_config shows it):
  CPU toy (offline, tiny VLM):  python os_genesis.py   # OS-Genesis vs task-driven, summary.json
  MiniWoB++ pages:  python os_genesis.py --env miniwob --tasks click-button,click-link
  1 GPU:   python os_genesis.py --model Qwen/Qwen2-VL-7B-Instruct --annotator model \
             --text_filler model --executor model --judge model \
             --annotator_model Qwen/Qwen2-VL-72B-Instruct --judge_model Qwen/Qwen2-VL-72B-Instruct
  8 GPUs:  torchrun --nproc_per_node=8 os_genesis.py <the same flags>
"""

from __future__ import annotations

import json
import random
import re
import shutil
from dataclasses import dataclass, replace
from functools import partial
from pathlib import Path
from typing import Literal

import torch
from PIL import ImageDraw
from tqdm import tqdm

from common import gui_env as gui
from common import gui_standins as standins
from common import miniwob_env as web
from common.claims import claim, format_claims, write_summary
from common.config import arg, parse_config
from common.data import read_jsonl_tolerant, write_jsonl
from common.gui_env import APPS, TASKS, ActionError, GUIAction, Task, ToyGUIEnv
from common.models import (
    end_of_turn,
    load_model,
    load_processor,
    load_tokenizer,
    make_tiny_lm,
    make_tiny_vlm,
)
from common.sampling import VLLMArgs, finish_local, generate_local, generate_sharded, make_sampler
from common.toys import toy_model
from common.train import (
    MetricsLogger,
    all_gather_object,
    barrier,
    format_table,
    init_distributed,
    load_checkpoint,
    make_optimizer,
    make_scheduler,
    micro_batches,
    print0,
    save_checkpoint,
    seed_everything,
    sft_inputs,
    sft_loss,
    shard_model,
)

WALK = "'Interaction-Driven Functional Discovery', collection/random_walk_aw.py"
TRM = "'Trajectory Reward Model', collection/genesis_rm.py"


@dataclass
class Args(VLLMArgs):
    seed: int = arg(0, "random seed")
    output_dir: str = arg("runs/os_genesis", "JSONL data, checkpoint, metrics, PNG")
    model: str = arg("", "agent to fine-tune (hub id or path); empty = tiny VLM built in code")
    vlm: bool = arg(True, "agent sees the screenshot; False = text-only LM on the a11y text")
    sampler: Literal["hf", "vllm"] = arg("hf", "backend of the model-backed helper roles")
    resume: bool = arg(False, "continue from the JSONL files and the SFT checkpoint")
    track: bool = arg(False, "log to Weights & Biases")
    env: Literal["toy", "miniwob"] = arg("toy", "toy phone | MiniWoB++ pages (Chromium; --tasks)")
    # stage 1: random walks
    apps: str = arg("settings,notes,shop,mail", "apps to explore")
    walks_per_app: int = arg(15, "walks per app (the paper walks once per AndroidWorld task)")
    walk_steps: int = arg(10, f"steps per walk (paper: 10 mobile, 5 web; {WALK})")
    walk_style: Literal["mobile", "web"] = arg("mobile", "element weights: 10/1 | 4/3/3/1")
    interactive_weight: float = arg(10.0, f"weight per interactive element (paper: 10; {WALK})")
    nav_weight: float = arg(1.0, f"weight of scroll down, scroll up, back each (paper: 1; {WALK})")
    long_press_ratio: float = arg(
        0.1, f"long-clickable: long_press share (paper: 0.1, 9:1; {WALK})"
    )
    text_filler: Literal["rule", "model"] = arg("rule", "field text: rule stand-in | model")
    filler_max_tokens: int = arg(20, f"model filler: max tokens, T=0.7 (paper: 20; {WALK})")
    # stage 2-4: synthesis, collection, reward model
    annotator: Literal["rule", "model"] = arg("rule", "reverse synthesis: rule stand-in | model")
    annotator_model: str = arg("", "LLM/VLM of annotator, filler, executor (empty = --model)")
    question_ratio: float = arg(0.3, "rule describer: share of info screens made questions")
    executor: Literal["follower", "model"] = arg("follower", "collection: stand-in | model")
    executor_noise: float = arg(0.15, "follower stand-in: chance of a random click per step")
    max_steps: int = arg(
        15, "step cap of collection and evaluation (paper: 15, trajectory collection)"
    )
    abort_repeats: int = arg(3, "abort after the same action this many times in a row")
    judge: Literal["state", "model"] = arg("state", "reward model: state stand-in | model")
    judge_model: str = arg("", "LLM/VLM for --judge model (empty = --model)")
    judge_temperature: float = arg(0.5, f"TRM sampling temperature (paper: 0.5; {TRM})")
    judge_top_p: float = arg(0.9, f"TRM top_p (paper: 0.9; {TRM})")
    judge_retries: int = arg(5, f"TRM tries until 1 <= score <= 5 (paper: 5; {TRM})")
    # stage 5: SFT and evaluation
    data: Literal["os_genesis", "task_driven"] = arg(
        "os_genesis", "os_genesis (stages 1-4) | task_driven (expert trajectories, the baseline)"
    )
    compare: bool = arg(True, "also train the task-driven baseline from the same base")
    tasks: str = arg("", "toy: catalogue task ids for task_driven data AND eval; miniwob: pages")
    eval_base: bool = arg(True, "evaluate the model before SFT too")
    max_history: int = arg(2, "past steps shown to the agent, 0 = all; paper: 0 (all steps)")
    action_space: Literal["coords", "index"] = arg(
        "index", "index: [id] role 'name' + index | {text: (x, y)} + x/y; paper: coords (mobile)"
    )
    base_steps: int = arg(200, "toy base (no --model): steps of low-level instruction following")
    train_steps: int = arg(300, "SFT optimizer steps")
    batch_size: int = arg(4, "trajectory draws per step per rank, each -> 2 samples")
    micro_batch_size: int = arg(0, "samples per forward/backward; 0 = all; paper preset: 2")
    gradient_checkpointing: bool = arg(False, "recompute decoder layers; paper preset: True")
    lr: float = arg(3e-3, "AdamW LR; toy 3e-3; paper preset: 1e-5 (not stated in the paper)")
    warmup_ratio: float = arg(0.05, "cosine schedule warmup share")
    save_every: int = arg(100, "checkpoint every N steps")
    max_new_tokens: int = arg(96, "agent generation budget; paper preset: 512")
    eval_split: Literal["test", "train"] = arg("test", "held-out tasks of the toy phone")
    eval_limit: int = arg(0, "evaluate on the first N held-out tasks (0 = all; miniwob: 3/page)")


# --preset paper (the default once --model is named). The paper states no SFT hyperparameters.
PAPER = dict(
    max_history=0,  # every past step (the released AndroidWorld agent's history)
    action_space="coords",  # the mobile format: {"text": "(x, y)"} a11y, x/y actions
    lr=1e-5,  # not stated in the paper: usual for full fine-tuning at 7B
    max_new_tokens=512,  # not stated: room for a low-level thought and the action
    gradient_checkpointing=True,  # not stated: bounds activation memory at long sequences
    micro_batch_size=2,  # not stated: bounds activation memory at long sequences
)


def derived(args, world_size: int) -> dict:
    """Every rank draws --batch_size trajectories per step (rank-seeded): the global batch grows."""
    return dict(trajectory_draws_per_step_all_ranks=args.batch_size * world_size)


# ------------------------------------------------------------------------------------------------
# The paper's rules as small pure functions


def mobile_walk_weights(n_interactive: int, interactive_weight=10.0, nav_weight=1.0) -> list:
    """Released random_walk_aw.py: each interactive element x10, then [scroll down, scroll up,
    back] x1 (paper: 'Interaction-Driven Functional Discovery')."""
    return [interactive_weight] * n_interactive + [nav_weight] * 3


def web_element_weight(role: str, explored: bool, new: bool) -> float:
    """Released random_walk_web.py: unexplored+new 4, explored+new 3, unexplored+old 3,
    explored+old 1; static text 0."""
    if role in ("text", "heading", "StaticText", "list"):
        return 0.0
    weights = {(False, True): 4.0, (True, True): 3.0, (False, False): 3.0, (True, False): 1.0}
    return weights[(explored, new)]


def element_action(element: dict, long_press_ratio: float, rng, text="Test Input") -> GUIAction:
    """Released random_walk_aw.py: editable -> type; long-clickable -> click:long_press 9:1."""
    if element["is_editable"]:
        return GUIAction("input_text", index=element["index"], text=text)
    if element["is_long_clickable"] and rng.random() < long_press_ratio:
        return GUIAction("long_press", index=element["index"])
    return GUIAction("click", index=element["index"])


def should_abort(action_jsons: list[str], repeats: int = 3) -> bool:
    """Paper, trajectory collection: abort when the same action repeats `repeats` times in a row."""
    return len(action_jsons) >= repeats and len(set(action_jsons[-repeats:])) == 1


def parse_trm_output(text: str) -> tuple[str, int | None]:
    """Released genesis_rm.py: 'Reason: ... Score: n'; a score outside 1..5 (or none) is None."""
    scores = re.findall(r"Score\s*:\s*(-?\d+)", text)
    reason = re.search(r"Reason\s*:\s*(.*?)(?:Score\s*:|$)", text, re.S)
    n = int(scores[-1]) if scores else None
    return (reason.group(1).strip() if reason else ""), (n if n and 1 <= n <= 5 else None)


def trm_sampling_probs(scores: list[float]) -> list[float]:
    """Paper, TRM: no filtering; a training draw picks trajectory i with P = R_i / sum_k R_k."""
    total = float(sum(scores))
    if total <= 0:
        raise ValueError("trajectory scores must have a positive sum")
    return [s / total for s in scores]


def rubric_score(reached, clean, efficient, partial, right_app, looped) -> int:
    """Paper's TRM rubric, completion + coherence: 5 perfect; 4 done but inefficient (a detour, an
    invalid step); 3 partial, loop or error (done with side effects counts as an error); 2 early
    deviation (right app, never near the target); 1 immediate failure."""
    if reached and clean:
        return 5 if efficient else 4
    if reached or partial or looped:
        return 3
    return 2 if right_app else 1


# ------------------------------------------------------------------------------------------------
# The agent's format (paper: mobile training format) and the model-backed helper roles


def user_message(text: str, vlm: bool) -> list[dict]:
    content = [{"type": "image"}, {"type": "text", "text": text}] if vlm else text
    return [{"role": "user", "content": content}]


def history_action(step: dict, args: Args) -> str:
    """A past step's action JSON in the agent's action space (coords: the element centre)."""
    if args.action_space != "coords" or not step.get("xy"):
        return step["action"][:120]
    action = json.loads(step["action"])
    action.pop("index")
    return json.dumps({**action, "x": step["xy"][0], "y": step["xy"][1]})


def agent_prompt(goal: str, obs: dict, history: list, args: Args, thought=None) -> str:
    """Screenshot + filtered a11y tree, 'Step i: thought action: json' history, then the task."""
    coords = args.action_space == "coords"
    screen = gui.osgenesis_a11y(obs["ui_elements"]) if coords else obs["axtree_txt"]
    first = max(0, len(history) - args.max_history) if args.max_history else 0
    past = "\n".join(
        f"Step {i + 1}: {h['thought']} action: {history_action(h, args)}"
        for i, h in enumerate(history)
        if i >= first
    )
    ask = "Write the low-level thought and the action."
    ask = f"Low-level thought: {thought}\nWrite the action." if thought else ask
    return f"Screen: {screen}\nHistory:\n{past or 'None'}\nTask: {goal}\n{ask}"


def agent_target(action: GUIAction, obs: dict, args: Args, thought: str | None) -> str:
    """Planning target 'Low-level thought: ...\\naction: {json}', or 'action: {json}'."""
    if args.action_space == "coords":
        action = gui.with_center_point(action, obs["ui_elements"])
    return (
        gui.format_osgenesis(thought, action)
        if thought is not None
        else f"action: {action.to_json()}"
    )


def parse_agent_output(text: str, obs: dict) -> tuple[str, GUIAction | None]:
    """(thought, action with its point mapped to the nearest element centre); garbage -> None."""
    try:
        thought, action = gui.parse_osgenesis(text)
        return thought, gui.osgenesis_to_indexed(action, obs["ui_elements"])
    except ActionError:
        return "", None


def load_helper(path: str, args: Args):
    """A frozen LLM/VLM behind the Sampler interface (annotator, text filler, executor, judge)."""
    path = path or args.model or (make_tiny_vlm() if args.vlm else make_tiny_lm())
    proc = load_processor(path) if args.vlm else load_tokenizer(path)
    model = load_model(path, vlm=args.vlm)
    return make_sampler(args.sampler, model, proc, model_path=path, args=args)


class HelperModels:
    """The frozen helper models of this rank, each loaded once, when first asked for."""

    def __init__(self, args: Args):
        self.args, self.loaded = args, {}

    def get(self, path: str):
        if path not in self.loaded:
            self.loaded[path] = load_helper(path, self.args)
        return self.loaded[path]


class ModelPolicy:
    """The model-backed agent (the M3A-style executor, and the agent being evaluated): greedy;
    garbage goes to the env as raw text and comes back as an error step."""

    def __init__(self, sampler, args: Args):
        self.sampler, self.args = sampler, args

    def __call__(self, items: list) -> list:
        args = self.args
        prompts = [user_message(agent_prompt(o["goal"], o, s, args), args.vlm) for _, o, s in items]
        images = [o["screenshot"] for _, o, _ in items] if args.vlm else None
        outs = generate_local(  # FSDP2: lock-step rounds
            self.sampler,
            prompts,
            images=images,
            temperature=0.0,
            max_new_tokens=args.max_new_tokens,
        )
        decisions = [
            (parse_agent_output(c[0].text, o), c[0].text) for (_, o, _), c in zip(items, outs)
        ]
        return [(thought, action or raw) for (thought, action), raw in decisions]


def model_text_filler(sampler, args: Args):
    """Released random_walk_aw.py: a model writes <= 20 tokens at T=0.7, first line only; empty
    output -> 'Test Input'."""

    def fill(field_name: str, app: str) -> str:
        ask = f"Write a realistic short input for the '{field_name}' field of the {app} app."
        prompt = user_message(ask + " One line.", False)
        outs = sampler.generate([prompt], temperature=0.7, max_new_tokens=args.filler_max_tokens)
        return (outs[0][0].text.strip().splitlines() or [""])[0].strip() or "Test Input"

    return fill


SYNTHESIS_PROMPT = (
    "You are an expert in mobile app tasks. The image shows the {app} app before (left) and after "
    "(right) one action; the element acted on has a red box.\nAction: {action}\nWrite "
    "1. Sub-Instruction: a low-level instruction for this action; 2. Analysis: what changed; "
    "3. High-Level-Instruction: a realistic task (or a question answerable from the screen) that a "
    "user of {app} could give and that this action helps to complete.\nAnswer with JSON: "
    '{{"Sub-Instruction": "...", "Analysis": "...", "High-Level-Instruction": "..."}}'
)
TRM_PROMPT = (
    "You judge a mobile GUI agent.\nTask: {goal}\nSteps:\n{steps}\nThe image shows the last "
    "screenshots, oldest first. Score completion and coherence from 1 to 5: 5 perfect; 4 mostly "
    "done or inefficient; 3 partial, loop or error; 2 early deviation; 1 immediate failure.\n"
    "Answer as: Reason: <one sentence> Score: <1-5>"
)


class ModelDescriber:
    """Paper, 'Reverse Task Synthesis', with any VLM/LLM: one call per triple in the shape of the
    released prompts (before | after screenshots, red box on the element)."""

    name = "model"

    def __init__(self, sampler, args: Args, walk_actions: dict):
        self.sampler, self.args, self.walk_actions = sampler, args, walk_actions

    def describe(self, triples: list[dict]) -> list[str]:
        prompts, images = [], []
        for t in triples:
            task = Task("walk", t["app"], "", start_app=t["app"])
            screens = gui.replay(task, self.walk_actions[t["walk_id"]][: t["step"]])
            before = screens[-2]["screenshot"].copy()
            if t["element"]:
                b = t["element"]["bbox_pixels"]
                box = (b["x_min"], b["y_min"], b["x_max"] - 1, b["y_max"] - 1)
                ImageDraw.Draw(before).rectangle(box, outline="red", width=2)
            images.append(gui.side_by_side([before, screens[-1]["screenshot"]]))
            text = SYNTHESIS_PROMPT.format(app=APPS[t["app"]].label, action=t["action_text"])
            prompts.append(user_message(text, self.args.vlm))
        images = images if self.args.vlm else None
        outs = self.sampler.generate(prompts, images=images, temperature=0.0, max_new_tokens=256)
        return [o[0].text for o in outs]


def parse_synthesis(text: str) -> dict | None:
    """The annotator's JSON, or None (counted as invalid) when a key is missing or empty."""
    try:
        obj = gui._extract_json_object(text)
    except ActionError:
        return None
    keys = ("Sub-Instruction", "High-Level-Instruction")
    return obj if all(isinstance(obj.get(k), str) and obj[k].strip() for k in keys) else None


class StateJudge:
    """STAND-IN TRM: the paper's rubric on facts read from the replayed toy phone."""

    name = "state"

    def score(self, task: dict, triple: dict, traj: dict) -> tuple[int, str, int]:
        facts = standins.judge_facts(task, triple, traj)
        reason = facts.pop("reason")
        return rubric_score(**facts), reason, 1


class ModelJudge:
    """Released genesis_rm.py with any VLM/LLM: instruction + step summaries + the last 3
    screenshots, T=0.5, top_p 0.9, up to 5 tries."""

    name = "model"

    def __init__(self, sampler, args: Args):
        self.sampler, self.args = sampler, args

    def score(self, task: dict, triple: dict, traj: dict) -> tuple[int, str, int]:
        actions = [s["action"] for s in traj["steps"]]
        screens = [
            o["screenshot"] for o in gui.replay(Task("judge", task["app"], task["goal"]), actions)
        ]
        steps = "\n".join(f"Step {j + 1}: {s['thought']}" for j, s in enumerate(traj["steps"]))
        prompt = user_message(TRM_PROMPT.format(goal=task["goal"], steps=steps), self.args.vlm)
        images = [gui.side_by_side(screens[-3:])] if self.args.vlm else None
        for attempt in range(1, self.args.judge_retries + 1):
            text = self.sampler.generate(
                [prompt],
                images=images,
                max_new_tokens=64,
                temperature=self.args.judge_temperature,
                top_p=self.args.judge_top_p,
            )[0][0].text
            reason, score = parse_trm_output(text)
            if score is not None:
                return score, reason, attempt
        return 1, "invalid judge output", self.args.judge_retries


# ------------------------------------------------------------------------------------------------
# Stages 1-4, each run by every rank on its share and gathered (resumable JSONL records)


def read_records(out: Path, name: str) -> list[dict]:
    """Every rank's records of a stage: `name.jsonl` (rank 0) and `name.rank<r>.jsonl`."""
    files = [out / f"{name}.jsonl", *sorted(out.glob(f"{name}.rank*.jsonl"))]
    return [r for f in files for r in read_jsonl_tolerant(f)]


def run_stage(out: Path, name: str, items: list, work, dist_info, chunk: int = 32) -> list:
    """`work(items) -> records` on this rank's share of `items` (strided by rank), skipping items
    whose record (same "id") a file already holds. Records are appended to this rank's own file as
    each chunk finishes; every rank's records come back, gathered, in the order of `items`."""
    rank, world = dist_info.rank, dist_info.world_size
    order = {item["id"]: i for i, item in enumerate(items)}
    share = items[rank::world]
    done = {r["id"]: r for r in read_records(out, name) if r["id"] in {s["id"] for s in share}}
    todo = [item for item in share if item["id"] not in done]
    path = out / (f"{name}.jsonl" if rank == 0 else f"{name}.rank{rank}.jsonl")
    records = list(done.values())
    for start in tqdm(range(0, len(todo), chunk), desc=name, disable=not dist_info.is_main):
        new = work(todo[start : start + chunk])
        write_jsonl(path, new, mode="a")
        records += new
    gathered = [r for part in all_gather_object(records) for r in part]
    return sorted(gathered, key=lambda r: order[r["id"]])


def walk_candidates(obs: dict, app: str, pool: set) -> list[dict]:
    """Interactive elements on screen, minus the app's unclickable pool."""
    return [
        e
        for e in obs["ui_elements"]
        if (e["is_clickable"] or e["is_editable"] or e["is_long_clickable"])
        and (app, e["resource_id"]) not in pool
    ]


class Walker:
    """Stage 1 (paper: 'Interaction-Driven Functional Discovery'): random walks from an app's first
    screen. An element action that changes nothing pools the element (never proposed again in that
    app) and records nothing; every real change records a (before, action, after) triple."""

    def __init__(self, args: Args, done: list[dict], filler_sampler=None):
        self.args, self.filler_sampler = args, filler_sampler
        self.pool = {(w["app"], rid) for w in done for rid in w["pooled"]}
        triples = [t for w in done for t in w["triples"] if t["element"]]
        self.explored = {(t["app"], t["element"]["resource_id"]) for t in triples}

    def __call__(self, jobs: list[dict]) -> list[dict]:
        return [self.walk(job["app"], job["id"]) for job in jobs]

    def choose(self, obs: dict, app: str, previous: set, rng) -> tuple[str, object]:
        """One weighted draw: ("element", element) | ("scroll", direction) | ("back", None)."""
        args, elements = self.args, walk_candidates(obs, app, self.pool)
        options = [("element", e) for e in elements]
        if args.walk_style == "web":
            weights = [
                web_element_weight(
                    e["role"],
                    (app, e["resource_id"]) in self.explored,
                    e["resource_id"] not in previous,
                )
                for e in elements
            ]
        else:
            options += [("scroll", "down"), ("scroll", "up"), ("back", None)]
            weights = mobile_walk_weights(len(elements), args.interactive_weight, args.nav_weight)
        if not options or sum(weights) == 0:
            return "stop", None
        return rng.choices(options, weights=weights)[0]

    def walk(self, app: str, walk_id: int) -> dict:
        args = self.args
        rng = random.Random(args.seed * 1_000_003 + walk_id)
        filler = (
            standins.rule_text_filler(rng)
            if self.filler_sampler is None
            else model_text_filler(self.filler_sampler, args)
        )
        env = ToyGUIEnv(Task(f"walk{walk_id}", app, "", start_app=app), max_steps=10**6)
        obs, actions, triples, pooled, path, previous = env.obs, [], [], [], [], set()
        seen = {(obs["url"], gui.screen_signature(obs)): 0}  # screen -> length of the path to it
        for step in range(args.walk_steps):
            kind, target = self.choose(obs, app, previous, rng)
            if kind == "stop":
                break
            if kind == "element":
                text = filler(target["text"], APPS[app].label) if target["is_editable"] else ""
                action = element_action(target, args.long_press_ratio, rng, text)
                self.explored.add((app, target["resource_id"]))
            elif kind == "scroll":
                action = GUIAction("scroll", direction=target)
            else:
                action = GUIAction("navigate_back")
            before, before_state = obs, json.loads(json.dumps(env.state))
            previous = {e["resource_id"] for e in obs["ui_elements"]}
            obs = env.step(action)[0]
            actions.append(action.to_dict())
            if (
                gui.screen_signature(obs) == gui.screen_signature(before)
                and obs["url"] == before["url"]
            ):
                if kind == "element":  # unchanged element set -> unclickable pool, no triple
                    self.pool.add((app, target["resource_id"]))
                    pooled.append(target["resource_id"])
                continue
            triples.append(triple_record(walk_id, step, app, action, before, obs, env, actions))
            triples[-1].update(diff=gui.state_diff(before_state, env.state), path=list(path))
            path.append(triples[-1]["final_step"])
            key = (obs["url"], gui.screen_signature(obs))
            path = path[: seen[key]] if key in seen else path  # a detour back leaves the path
            seen = {k: v for k, v in seen.items() if v <= len(path)} | {key: len(path)}
        return dict(
            id=walk_id, walk_id=walk_id, app=app, actions=actions, pooled=pooled, triples=triples
        )


def triple_record(walk_id, step, app, action, before, obs, env, actions) -> dict:
    """A (before, action, after) triple as the later stages read it (screens are replayed)."""
    element = before["ui_elements"][action.index] if action.index is not None else None
    keep = ("resource_id", "text", "role", "bbox_pixels")
    return dict(
        id=f"w{walk_id}s{step}",
        triple_id=f"w{walk_id}s{step}",
        walk_id=walk_id,
        step=len(actions),
        app=app,
        action=action.to_dict(),
        action_text=gui.describe_action(action, before["ui_elements"]),
        url_before=before["url"],
        url_after=obs["url"],
        element=element and {k: element[k] for k in keep},
        title_before=before["ui_elements"][0]["text"],
        title_after=obs["ui_elements"][0]["text"],
        after=[[e["resource_id"], e["text"], e["value"]] for e in obs["ui_elements"]],
        final_step=standins.plan_step(action, before["ui_elements"]),
    )


def synthesize(triples: list[dict], describer) -> list[dict]:
    """Stage 2 (paper: 'Reverse Task Synthesis'): one annotator call per triple -> a low-level
    instruction and a high-level task; invalid outputs are kept and counted."""
    records = []
    for t, text in zip(triples, describer.describe(triples)):
        parsed = parse_synthesis(text) or {}
        records.append(
            dict(
                id=t["id"],
                triple_id=t["triple_id"],
                app=t["app"],
                annotator=describer.name,
                valid=bool(parsed),
                raw=text[:400],
                low=parsed.get("Sub-Instruction"),
                goal=parsed.get("High-Level-Instruction"),
                answer=parsed.get("Answer"),
                extension=parsed.get("Steps"),
                change=parsed.get("Change"),
            )
        )
    return records


class Collector:
    """Stage 3 (paper: trajectory collection): run each task from the launcher with the executor,
    15-step cap, abort after 3 identical actions in a row."""

    def __init__(self, args: Args, sampler=None):
        self.args, self.sampler = args, sampler

    def stop(self, steps: list) -> bool:
        return should_abort([s["action"] for s in steps], self.args.abort_repeats)

    def __call__(self, tasks: list[dict]) -> list[dict]:
        args = self.args
        if self.sampler is None:
            policy = standins.FollowerPolicy(tasks, args.executor_noise, args.seed)
        else:
            policy = ModelPolicy(self.sampler, args)
        episodes = [Task(t["id"], t["app"], t["goal"]) for t in tasks]
        records = gui.run_episodes(episodes, policy, args.max_steps, stop_fn=self.stop)
        return [dict(id=r["task_id"], **r) for r in records]


def judge_all(trajectories: list[dict], judge, tasks: dict, triples: dict) -> list[dict]:
    """Stage 4 (paper: 'Trajectory Reward Model'): a 1-5 score per trajectory, no filtering."""
    records = []
    for traj in trajectories:
        score, reason, attempts = judge.score(tasks[traj["id"]], triples[traj["id"]], traj)
        records.append(dict(id=traj["id"], score=score, reason=reason, attempts=attempts))
    return records


def generate_data(args: Args, out: Path, dist_info) -> tuple[list, dict, dict]:
    """Stages 1-4 (or the baseline's expert trajectories): (trajectories, {id: score}, counts)."""
    if args.env == "miniwob":
        return generate_web_data(args, out, dist_info)
    if args.data == "task_driven":  # the paper's baseline: trajectories of given tasks, score 5
        tasks = [dict(id=t.task_id) for t in named_tasks(args) or gui.list_tasks("train")]
        work = partial(standins.expert_trajectories, max_steps=args.max_steps)
        trajectories = run_stage(out, "trajectories", tasks, work, dist_info)
        mean = sum(len(t["steps"]) for t in trajectories) / len(trajectories)
        counts = dict(trajectories=len(trajectories), mean_steps=mean)
        return trajectories, {t["id"]: 5 for t in trajectories}, counts
    apps = [a.strip() for a in args.apps.split(",") if a.strip()]
    if not apps or any(a not in APPS for a in apps):
        raise ValueError(f"--apps {args.apps!r}: choose from {sorted(APPS)}")
    helpers = HelperModels(args)
    jobs = [
        dict(id=i * len(apps) + k, app=app)
        for i in range(args.walks_per_app)
        for k, app in enumerate(apps)
    ]
    filler = helpers.get(args.annotator_model) if args.text_filler == "model" else None
    walker = Walker(args, read_records(out, "walks"), filler)
    walks = run_stage(out, "walks", jobs, walker, dist_info, chunk=1)
    triples = [t for w in walks for t in w["triples"]]
    by_triple = {t["id"]: t for t in triples}

    if args.annotator == "rule":
        describer = standins.RuleDescriber(args.question_ratio)
    else:
        actions = {w["walk_id"]: w["actions"] for w in walks}
        describer = ModelDescriber(helpers.get(args.annotator_model), args, actions)
    work = partial(synthesize, describer=describer)
    synthesized = run_stage(out, "tasks", triples, work, dist_info)
    held_out = gui.list_tasks(args.eval_split)
    tasks, leaked, unclear = standins.trainable_tasks(synthesized, by_triple, held_out)

    executor = helpers.get(args.annotator_model) if args.executor == "model" else None
    trajectories = run_stage(out, "trajectories", tasks, Collector(args, executor), dist_info)
    if args.judge == "state":
        judge = StateJudge()
    else:
        judge = ModelJudge(helpers.get(args.judge_model), args)
    work = partial(judge_all, judge=judge, tasks={t["id"]: t for t in tasks}, triples=by_triple)
    scores = run_stage(out, "scores", trajectories, work, dist_info)
    counts = dict(
        walks=len(walks),
        walk_steps=sum(len(w["actions"]) for w in walks),
        noop_pooled=sum(len(w["pooled"]) for w in walks),
        triples=len(triples),
        tasks_valid=sum(t["valid"] for t in synthesized),
        tasks_invalid=sum(not t["valid"] for t in synthesized),
        tasks_held_out_dropped=leaked,
        tasks_unclear_dropped=unclear,
        tasks_unique=len(tasks),
        trajectories=len(trajectories),
        aborted=sum(t["aborted"] for t in trajectories),
        mean_steps=sum(len(t["steps"]) for t in trajectories) / max(1, len(trajectories)),
        judge_invalid=sum(s["reason"] == "invalid judge output" for s in scores),
        **{f"score_{k}": sum(s["score"] == k for s in scores) for k in range(1, 6)},
    )
    return trajectories, {s["id"]: s["score"] for s in scores}, counts


# ------------------------------------------------------------------------------------------------
# Stage 5: SFT on the paper's two objectives, and evaluation


def make_encoder(proc, vlm: bool):
    """(prompt, target, image) -> prompt ids, target ids + end of turn, image tensors as kwargs."""
    tok = getattr(proc, "tokenizer", proc)
    end = end_of_turn(tok)

    def encode(prompt: str, target: str, image) -> dict:
        text = proc.apply_chat_template(
            user_message(prompt, vlm), tokenize=False, add_generation_prompt=True
        )
        if vlm:
            enc = proc(text=[text], images=[image], return_tensors="pt")
        else:
            enc = {"input_ids": [tok(text, add_special_tokens=False)["input_ids"]]}
        return dict(
            prompt_ids=list(map(int, enc["input_ids"][0])),
            target_ids=tok(target + end, add_special_tokens=False)["input_ids"],
            extra={k: v for k, v in enc.items() if k not in ("input_ids", "attention_mask")},
        )

    return encode


def step_samples(traj: dict, observations: list, args: Args, encode) -> list[list[dict]]:
    """Per valid step: [planning sample (task -> thought + action), action sample (task + thought
    -> action)] (paper: the two training objectives)."""
    out = []
    for t, (step, obs) in enumerate(zip(traj["steps"], observations)):
        if step["error"] or not step["action"].startswith("{"):
            continue
        action, history, image = (
            gui.parse_json_action(step["action"]),
            traj["steps"][:t],
            obs["screenshot"],
        )
        plan_prompt = agent_prompt(traj["goal"], obs, history, args)
        act_prompt = agent_prompt(traj["goal"], obs, history, args, step["thought"])
        out.append(
            [
                encode(plan_prompt, agent_target(action, obs, args, step["thought"]), image),
                encode(act_prompt, agent_target(action, obs, args, None), image),
            ]
        )
    return out


def sft_batches(per_traj: list, probs: list, args: Args, start: int, rank: int):
    """Each step's batch: --batch_size draws with P(i) = R_i / sum R, a random step of each, both
    objectives. The draw depends only on (seed, step, rank), so --resume continues exactly."""
    for step in range(start, args.train_steps if per_traj else start):
        rng = random.Random(args.seed * 7919 + step * 131 + rank)
        picks = rng.choices(range(len(per_traj)), weights=probs, k=args.batch_size)
        yield step, [sample for i in picks for sample in rng.choice(per_traj[i])]


def sft_micro_steps(model, tok, batch: list[dict], micro_batch_size: int, device) -> float:
    """Forward/backward of one rank's batch in micro-batches; each micro-batch's summed NLL is
    divided by the whole batch's target-token count, so the gradient is the batch's token mean."""
    num_tokens = sum(len(b["target_ids"]) for b in batch)
    total = 0.0
    for sl in micro_batches(len(batch), micro_batch_size):
        part = batch[sl]
        input_ids, attention_mask, loss_mask = sft_inputs(
            tok, [b["prompt_ids"] for b in part], [b["target_ids"] for b in part], device
        )  # (b, L) each
        extra = {k: torch.cat([b["extra"][k] for b in part]).to(device) for k in part[0]["extra"]}
        loss = sft_loss(model, input_ids, attention_mask, loss_mask, normalizer=num_tokens, **extra)
        loss.backward()  # pixel_values above: (b, 3, H, W)
        total += loss.item()
    return total


EASY_STEPS = 3  # the easier tier of held-out tasks: the expert needs at most 3 steps


def expert_step_prompts(tasks: list[Task], args: Args) -> tuple[dict, list, list]:
    """Prompts on every step of the scripted expert's trajectories, given the task only (high) or
    also the gold low-level instruction (low), their screenshots and the gold (action, obs)."""
    prompts, images, golds = {"high": [], "low": []}, [], []
    for task in tasks:
        history = []
        for s in gui.rollout(ToyGUIEnv(), gui.ScriptedExpert(task).act, task)[0]:
            obs, action = s["obs"], s["action"]
            thought = gui.instruction(action, obs["ui_elements"])
            high = agent_prompt(task.goal, obs, history, args)
            prompts["high"].append(user_message(high, args.vlm))
            low = agent_prompt(task.goal, obs, history, args, thought)
            prompts["low"].append(user_message(low, args.vlm))
            images.append(obs["screenshot"])
            golds.append((action, obs))
            xy = (
                gui.with_center_point(action, obs["ui_elements"])
                if action.index is not None
                else None
            )
            history.append(dict(thought=thought, action=action.to_json(), xy=xy and [xy.x, xy.y]))
    return prompts, images, golds


def evaluate(sampler, args: Args, tasks: list[Task], dist_info) -> dict:
    """Success rate on held-out tasks (greedy, 15 steps; overall and per tier) and step accuracy on
    their expert steps, high level (AndroidControl-High style) and low level (AC-Low)."""
    rank, world = dist_info.rank, dist_info.world_size
    mine = gui.run_episodes(tasks[rank::world], ModelPolicy(sampler, args), args.max_steps)
    # ranks whose episodes ended early keep joining the lock-step rounds of the others (FSDP2)
    finish_local(sampler, temperature=0.0, max_new_tokens=args.max_new_tokens)
    episodes = [e for part in all_gather_object(mine) for e in part]
    easy_ids = {t.task_id for t in tasks if len(t.expert) <= EASY_STEPS}
    easy = [e for e in episodes if e["task_id"] in easy_ids]
    hard = [e for e in episodes if e["task_id"] not in easy_ids]
    result = dict(
        success_rate=sum(e["success"] for e in episodes) / len(episodes),
        success_rate_easy=sum(e["success"] for e in easy) / max(1, len(easy)),
        success_rate_hard=sum(e["success"] for e in hard) / max(1, len(hard)),
        invalid_action_rate=sum(e["invalid"] for e in episodes)
        / max(1, sum(len(e["steps"]) for e in episodes)),
    )
    prompts, images, golds = expert_step_prompts(tasks, args)
    for level in ("high", "low"):
        outs = generate_sharded(
            sampler,
            prompts[level],
            images=images if args.vlm else None,
            temperature=0.0,
            max_new_tokens=args.max_new_tokens,
        )
        prefix = "" if level == "high" else "Low-level thought: -\n"
        matches = [
            gui.step_match(parse_agent_output(prefix + out[0].text, obs)[1], gold)
            for out, (gold, obs) in zip(outs, golds)
        ]
        result[f"{level}_type_acc"] = sum(m[0] for m in matches) / len(matches)
        result[f"{level}_step_acc"] = sum(m[1] for m in matches) / len(matches)
    return result


# ------------------------------------------------------------------------------------------------
# --env miniwob: the same stages on MiniWoB++ pages (common/miniwob_env.py, headless Chromium)


def replay_screens(args: Args):
    """traj -> the observation before each of its steps (screens are replayed, not stored)."""
    if args.env == "miniwob":
        env = web_env(args)
        return partial(page_screens, env)
    return toy_screens


def page_screens(env, traj: dict) -> list[dict]:
    return web.replay_page(env, web.MiniWoBTask(traj["page"], traj["seed"]), traj["actions"])


def toy_screens(traj: dict) -> list[dict]:
    task = TASKS.get(traj["task_id"]) or Task(traj["task_id"], traj["app"], traj["goal"])
    return gui.replay(task, [s["action"] for s in traj["steps"]])  # catalogue tasks: their setup


_WEB_ENVS = {}


def web_env(args: Args):
    """One browser per process, shared by the stages and the evaluation."""
    if "env" not in _WEB_ENVS:
        _WEB_ENVS["env"] = web.MiniWoBGUIEnv(max_steps=args.max_steps)
    return _WEB_ENVS["env"]


def pages(args: Args) -> list[str]:
    return [n.strip() for n in args.tasks.split(",") if n.strip()] or list(web.DEFAULT_TASKS[:2])


class PageWalker:
    """Stage 1 on pages: the released web walker's weights (random_walk_web.py); fields get the
    filler's text; no long press on the web."""

    def __init__(self, args: Args):
        self.args, self.memo = args, dict(pool=set(), explored=set())
        self.rules = dict(weight=web_element_weight, action=self.act)

    def act(self, element: dict, rng) -> GUIAction:
        text = standins.rule_text_filler(rng)(element["text"], "web")
        return element_action(element, 0.0, rng, text)

    def __call__(self, jobs: list[dict]) -> list[dict]:
        out = []
        for job in jobs:
            rng = random.Random(f"{self.args.seed}-{job['id']}")
            task = web.MiniWoBTask(job["page"], job["seed"])
            env, steps = web_env(self.args), self.args.walk_steps
            actions, triples = web.walk_page(env, task, steps, rng, self.rules, self.memo)
            for t in triples:
                t.update(id=f"{job['id']}s{t['step']}", app=job["page"], page=job["page"])
                t.update(seed=job["seed"])
            out.append(dict(id=job["id"], app=job["page"], actions=actions, triples=triples))
        return out


class PageCollector:
    """Stage 3 on pages: each task on its own page instance, with the stand-in (the walk's
    actions, 15% slips) or the model executor; stage 4's stand-in judge reads the result."""

    def __init__(self, args: Args, triples: dict, sampler=None):
        self.args, self.triples, self.sampler = args, triples, sampler

    def __call__(self, tasks: list[dict]) -> list[dict]:
        args, out = self.args, []
        for t in tasks:
            triple = self.triples[t["id"]]
            rng = random.Random(f"{args.seed}-{t['id']}")
            plan = triple["path"] + [triple["action"]]
            policy = web.ReplayPolicy(plan, args.executor_noise, rng)
            policy = ModelPolicy(self.sampler, args) if self.sampler else policy
            task = web.MiniWoBTask(triple["page"], triple["seed"], goal=t["goal"])
            record = web.run_page_episode(web_env(args), task, policy, args.max_steps)
            record["actions"] = [json.loads(s["action"]) for s in record["steps"]]
            out.append(record | dict(id=t["id"], task_id=t["id"]))
        return out


def page_judge(trajectories: list[dict], triples: dict) -> list[dict]:
    """Stage 4 on pages: the paper's rubric on the stand-in's facts."""
    out = []
    for traj in trajectories:
        facts = web.web_judge_facts(triples[traj["id"]], traj)
        reason = facts.pop("reason")
        out.append(dict(id=traj["id"], score=rubric_score(**facts), reason=reason, attempts=1))
    return out


def generate_web_data(args: Args, out: Path, dist_info) -> tuple[list, dict, dict]:
    """Stages 1-4 on MiniWoB pages (rule stand-ins; --executor model runs the model agent).
    Task-driven data: the scripted expert on the walked page instances, with the pages' goals."""
    if "model" in (args.annotator, args.text_filler) or args.judge == "model":
        raise ValueError("--env miniwob: --annotator/--text_filler/--judge model are toy-only")
    jobs = [
        dict(id=f"{page}#{k}", page=page, seed=k)
        for k in range(args.walks_per_app)
        for page in pages(args)
    ]
    if args.data == "task_driven":
        expert = web.ObsPolicy(web.scripted_policy)
        trajectories = []
        for job in jobs[dist_info.rank :: dist_info.world_size]:
            task = web.MiniWoBTask(job["page"], job["seed"])
            record = web.run_page_episode(web_env(args), task, expert, args.max_steps)
            actions = [json.loads(s["action"]) for s in record["steps"]]
            trajectories.append(record | dict(id=job["id"], actions=actions))
        trajectories = [t for part in all_gather_object(trajectories) for t in part]
        return trajectories, {t["id"]: 5 for t in trajectories}, dict(trajectories=len(jobs))
    walks = run_stage(out, "walks", jobs, PageWalker(args), dist_info, chunk=1)
    triples = {t["id"]: t for w in walks for t in w["triples"]}
    synthesized = []  # stage 2 with the stand-in: one (low, high) per triple, de-duplicated
    for t in triples.values():
        low, goal = web.web_rule_goal(t)
        synthesized.append(dict(id=t["id"], app=t["page"], low=low, goal=goal, valid=True))
    tasks = list({(t["app"], triples[t["id"]]["seed"], t["goal"]): t for t in synthesized}.values())
    executor = HelperModels(args).get(args.annotator_model) if args.executor == "model" else None
    trajectories = run_stage(
        out, "trajectories", tasks, PageCollector(args, triples, executor), dist_info, chunk=1
    )
    work = partial(page_judge, triples=triples)
    scores = run_stage(out, "scores", trajectories, work, dist_info)
    counts = dict(walks=len(walks), triples=len(triples), tasks_unique=len(tasks))
    counts.update(trajectories=len(trajectories))
    counts.update({f"score_{k}": sum(s["score"] == k for s in scores) for k in range(1, 6)})
    return trajectories, {s["id"]: s["score"] for s in scores}, counts


def evaluate_web(sampler, args: Args, dist_info) -> dict:
    """Success rate on held-out page instances (seeds the walks never saw; the page's own reward)
    and step accuracy on the scripted expert's steps there."""
    env, per_page = web_env(args), args.eval_limit or 3
    tasks = web.make_tasks(pages(args), per_page, seed=1)  # seeds 1000+: never walked
    policy = ModelPolicy(sampler, args)
    mine = [
        web.run_page_episode(env, t, policy, args.max_steps)
        for t in tasks[dist_info.rank :: dist_info.world_size]
    ]
    finish_local(sampler, temperature=0.0, max_new_tokens=args.max_new_tokens)
    episodes = [e for part in all_gather_object(mine) for e in part]
    prompts, golds = [], []
    for task in tasks:
        expert = web.run_page_episode(
            env, web.MiniWoBTask(task.task_id, task.seed), web.ObsPolicy(web.scripted_policy), 4
        )
        screens = web.replay_page(
            env, web.MiniWoBTask(task.task_id, task.seed), [s["action"] for s in expert["steps"]]
        )
        for k, (step, obs) in enumerate(zip(expert["steps"], screens)):
            prompts.append(
                user_message(agent_prompt(expert["goal"], obs, expert["steps"][:k], args), args.vlm)
            )
            golds.append((gui.parse_json_action(step["action"]), obs))
    images = [obs["screenshot"] for _, obs in golds] if args.vlm else None
    outs = generate_sharded(
        sampler, prompts, images=images, temperature=0.0, max_new_tokens=args.max_new_tokens
    )
    matches = [
        gui.step_match(parse_agent_output(o[0].text, obs)[1], gold)
        for o, (gold, obs) in zip(outs, golds)
    ]
    sr = sum(e["success"] for e in episodes) / len(episodes)
    return dict(
        success_rate=sr,
        success_rate_easy=sr,  # every default page takes the expert 1-2 steps
        invalid_action_rate=sum(e["invalid"] for e in episodes)
        / max(1, sum(len(e["steps"]) for e in episodes)),
        high_type_acc=sum(m[0] for m in matches) / max(1, len(matches)),
        high_step_acc=sum(m[1] for m in matches) / max(1, len(matches)),
    )


# ------------------------------------------------------------------------------------------------
# The toy base (no --model): a tiny VLM that follows low-level instructions, as the paper's
# backbones can before OS-Genesis data teaches them high-level tasks


def base_samples(args: Args, encode, n_walks: int = 120) -> list[dict]:
    """Low-level instruction following on random screens: the task is the low-level instruction
    ("Click 'Sound'."), the target the agent format (thought + action); no task's goal."""
    samples, apps = [], list(APPS)
    for k in range(n_walks):
        rng = random.Random(f"base-{args.seed}-{k}")
        env = ToyGUIEnv(Task("base", "", ""), max_steps=10**6)
        obs = env.obs
        for _ in range(6):
            clickable = [
                e for e in obs["ui_elements"] if e["is_clickable"] and not e["is_editable"]
            ]
            if obs["app"] == "home" or not clickable or rng.random() < 0.1:
                action = GUIAction("open_app", app_name=APPS[rng.choice(apps)].label)
            else:
                action = GUIAction("click", index=rng.choice(clickable)["index"])
            thought = gui.instruction(action, obs["ui_elements"])
            prompt = agent_prompt(thought, obs, [], args)
            samples.append(
                encode(prompt, agent_target(action, obs, args, thought), obs["screenshot"])
            )
            obs = env.step(action)[0]
    return samples


def toy_base(args: Args, dist_info) -> str:
    """The warm-started toy base, built once by rank 0 and cached (common.toys.toy_model)."""
    spec = dict(seed=args.seed, vlm=args.vlm, steps=args.base_steps, action_space=args.action_space)

    def build(folder: Path):
        tiny = make_tiny_vlm() if args.vlm else make_tiny_lm()
        model = load_model(tiny, vlm=args.vlm)
        proc = load_processor(tiny) if args.vlm else load_tokenizer(tiny)
        tok, samples = (
            getattr(proc, "tokenizer", proc),
            base_samples(args, make_encoder(proc, args.vlm)),
        )
        optimizer, rng = make_optimizer(model, args.lr), random.Random(args.seed)
        model.train()
        for _ in (bar := tqdm(range(args.base_steps), desc="toy base: low-level instructions")):
            loss = sft_micro_steps(model, tok, rng.sample(samples, 8), 0, "cpu")
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            bar.set_postfix(loss=f"{loss:.3f}")
        model.save_pretrained(folder)
        proc.save_pretrained(folder)

    code = [base_samples, agent_prompt, agent_target, make_encoder, sft_micro_steps]
    code += [gui.instruction]
    path = toy_model("os_genesis-base", spec, build, code=code) if dist_info.is_main else None
    barrier()  # rank 0 builds; the others then find it in the cache
    return path or toy_model("os_genesis-base", spec, build, code=code)


def named_tasks(args: Args) -> list[Task]:
    """The catalogue tasks named by --tasks (an unknown id is an error that names it)."""
    ids = [i.strip() for i in args.tasks.split(",") if i.strip()]
    if unknown := [i for i in ids if i not in TASKS]:
        raise ValueError(f"--tasks: unknown task id(s) {unknown}; see common/gui_apps.py")
    return [TASKS[i] for i in ids]


def load_agent(path: str, args: Args, dist_info):
    """The agent (fp32 masters; bf16 compute on CUDA via shard_model), its processor, a sampler."""
    model = load_model(path, vlm=args.vlm, dtype="float32")
    proc = load_processor(path) if args.vlm else load_tokenizer(path)
    model = shard_model(model, dist_info, gradient_checkpointing=args.gradient_checkpointing)
    return model, proc, make_sampler("hf", model, proc)


def evaluate_agent(sampler, args: Args, tasks: list, dist_info) -> dict:
    if args.env == "miniwob":
        return evaluate_web(sampler, args, dist_info)
    return evaluate(sampler, args, tasks, dist_info)


def evaluate_once(path: str, args: Args, tasks: list, dist_info, file: Path) -> dict:
    """Evaluate a saved model once; the result is kept in `file` (reused by --resume)."""
    if not file.exists():
        result = evaluate_agent(load_agent(path, args, dist_info)[2], args, tasks, dist_info)
        if dist_info.is_main:
            file.write_text(json.dumps(result))
    barrier()
    return json.loads(file.read_text())


def fine_tune(args: Args, base: str, data: tuple, out: Path, dist_info) -> tuple:
    """Stage 5 (paper: training): SFT on score-weighted draws, two objectives per drawn step."""
    seed_everything(args.seed)
    model, proc, sampler = load_agent(base, args, dist_info)
    tok, encode = getattr(proc, "tokenizer", proc), make_encoder(proc, args.vlm)
    trajectories, scores, _ = data
    replay = replay_screens(args)
    per_traj = [step_samples(t, replay(t), args, encode) for t in trajectories if t["id"] in scores]
    weights = [scores[t["id"]] for t in trajectories if t["id"] in scores]
    weights = [w for w, s in zip(weights, per_traj) if s]
    per_traj = [s for s in per_traj if s]
    probs = trm_sampling_probs(weights) if weights else []
    print0(f"SFT data: {len(per_traj)} trajectories, {sum(map(len, per_traj))} steps x 2")
    optimizer = make_optimizer(model, args.lr)
    warmup = int(args.warmup_ratio * args.train_steps)
    scheduler = make_scheduler(optimizer, "cosine", warmup, args.train_steps)
    state = load_checkpoint(out / "ckpt", model, optimizer, scheduler) if args.resume else None
    start = state[0] if state else 0
    if state:
        print0(f"resumed from step {start}")
    logger = MetricsLogger(
        out,
        track=args.track,
        run_name="os_genesis",
        config=vars(args),
        resume_step=start if args.resume else None,
    )
    model.train()
    batches = sft_batches(per_traj, probs, args, start, dist_info.rank)
    for step, batch in tqdm(
        batches, desc="SFT", total=args.train_steps - start, disable=not dist_info.is_main
    ):
        loss = sft_micro_steps(model, tok, batch, args.micro_batch_size, dist_info.device)
        for p in model.parameters():  # unused ones (LLaVA's vision post-layernorm) get a zero
            if p.grad is None:  # grad: optimizer state, which the strict --resume loader needs
                p.grad = torch.zeros_like(p)
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        logger.log({"loss": loss, "lr": scheduler.get_last_lr()[0]}, step + 1)
        if (step + 1) % args.save_every == 0 or step + 1 == args.train_steps:
            save_checkpoint(out / "ckpt", model, optimizer, scheduler, step + 1)
    return sampler, logger


def fresh_output_dir(args: Args, dist_info) -> Path:
    """A fresh run starts from nothing (config.json stays); --resume keeps everything."""
    out = Path(args.output_dir)
    if dist_info.is_main:
        out.mkdir(parents=True, exist_ok=True)
        stale = [] if args.resume else [*out.glob("*.jsonl"), *out.glob("*.json")]
        for f in (f for f in stale if f.name != "config.json"):
            f.unlink()
        if not args.resume:
            shutil.rmtree(out / "ckpt", ignore_errors=True)
            shutil.rmtree(out / "task_driven", ignore_errors=True)
    barrier()
    return out


def run_data_and_sft(args: Args, base: str, tasks: list, dist_info) -> dict:
    """Stages 1-5 into args.output_dir; returns the agent's evaluation after SFT."""
    out = fresh_output_dir(args, dist_info)
    data = generate_data(args, out, dist_info)
    print0(format_table([{"stage": k, "count": v} for k, v in data[2].items()]))
    if dist_info.is_main:
        (out / "counts.json").write_text(json.dumps(data[2]))
    sampler, logger = fine_tune(args, base, data, out, dist_info)
    after = evaluate_agent(sampler, args, tasks, dist_info)
    name = "OS-Genesis" if args.data == "os_genesis" else "task-driven"
    if dist_info.is_main:
        (out / "eval_after.json").write_text(json.dumps(after))
        logger.log({f"eval/{k}": v for k, v in after.items()}, args.train_steps)
        logger.plot(["loss", "lr"], out / "curves.png", title=f"{name} SFT")
    logger.close()
    return {"agent": f"after {name} SFT", **after, "counts": data[2]}


def main(args: Args):
    dist_info = init_distributed()
    seed_everything(args.seed)
    base = args.model or toy_base(args, dist_info)
    tasks = [] if args.env == "miniwob" else named_tasks(args) or gui.list_tasks(args.eval_split)
    tasks = tasks[: args.eval_limit or None]  # miniwob: evaluate_web picks held-out instances
    rows = []
    # ALGO LOGIC: OS-Genesis data (stages 1-4) -> SFT; the same SFT on task-driven data
    genesis = run_data_and_sft(args, base, tasks, dist_info)
    out = Path(args.output_dir)
    if args.eval_base:
        before = evaluate_once(base, args, tasks, dist_info, out / "eval_before.json")
        rows.append({"agent": "base before SFT", **before})
    if args.compare and args.data == "os_genesis":  # the paper's baseline (Table 1)
        driven_args = replace(args, data="task_driven", output_dir=str(out / "task_driven"))
        rows.append(run_data_and_sft(driven_args, base, tasks, dist_info))
    rows.append(genesis)
    counts = {r["agent"]: r.pop("counts") for r in rows if "counts" in r}
    if not dist_info.is_main:
        return
    where = "MiniWoB page instances" if args.env == "miniwob" else f"{len(tasks)} toy tasks"
    print0(f"\nheld-out {where} ({args.eval_split} split):\n" + format_table(rows))
    claims = os_genesis_claims(rows) if args.eval_base and args.env == "toy" else []
    print0(format_claims(claims))
    write_summary(out, claims, counts=counts[genesis["agent"]], eval={r["agent"]: r for r in rows})


def os_genesis_claims(rows: list[dict]) -> list[dict]:
    """The paper's comparisons (Table 1), from this run: OS-Genesis SFT improves on the base,
    OS-Genesis data beats task-driven data on held-out step accuracy, and success on the easier
    tier moves above the base's."""
    by = {r["agent"]: r for r in rows}
    base, genesis = by["base before SFT"], by["after OS-Genesis SFT"]
    driven = by.get("after task-driven SFT")
    claims = [
        claim(
            "OS-Genesis SFT > base: step acc (low)",
            "low_step_acc",
            base["low_step_acc"],
            genesis["low_step_acc"],
        )
    ]
    for level in ("high", "low") if driven else ():
        metric = f"{level}_step_acc"
        name = f"OS-Genesis > task-driven: step acc ({level})"
        claims.append(claim(name, metric, driven[metric], genesis[metric]))
    name = "OS-Genesis SFT: SR above the base (easy tier)"
    base_sr, sr = base["success_rate_easy"], genesis["success_rate_easy"]
    return claims + [claim(name, "success_rate_easy", base_sr, sr)]


if __name__ == "__main__":
    main(parse_config(Args, PAPER, derived))
