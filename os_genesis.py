"""OS-Genesis: Automating GUI Agent Trajectory Construction via Reverse Task Synthesis (arXiv 2412.19723).

Explore first, name the task afterwards. Random walks record (screen before, action, screen after)
triples; a model turns each triple into a low-level instruction and a high-level task the action would
serve (reverse task synthesis); an agent executes every synthesized task (at most 15 steps, abort after
the same action 3 times in a row); a trajectory reward model (TRM) scores each trajectory 1-5, and each
training draw picks trajectory i with probability R_i / sum_k R_k (no filtering). The agent is then
fine-tuned on two objectives per step: (screen, task, history) -> low-level thought + action, and the
same inputs + the thought -> action. Here the GUI is the toy phone of common/gui_env.py; the agent is
evaluated on its held-out tasks (success rate, AndroidControl-style step accuracy, high and low level).

Departures (vs the paper and its released `collection/` code):
- The offline default runs STAND-INS for GPT-4o behind the model-backed paths' interfaces, each reading
  the toy phone's state: a rule-based describer (triple a11y + state change), an executor that carries
  out the synthesized task (the walk's path minus every step the task does not need) with 15% random
  slips, and a TRM that scores completion + coherence (a detour scores 4, a side effect 3).
  `--annotator/--text_filler/--executor/--judge model` use any LLM/VLM instead.
- A clean split: a synthesized task that is a held-out task (same goal, or the same instance: its state
  change passes a held-out check, or its answer is a held-out answer) is dropped before collection.
- The baseline is the paper's task-driven data, stood in by the scripted expert's trajectories of the
  phone's training tasks (`--data task_driven`); both start from the same warm-started toy base, a
  tiny VLM taught low-level instruction following on random screens (the paper starts from Qwen2-VL).
- One image per prompt (before | after with a red box; the TRM's last 3 screenshots side by side).
- Trajectories start on the launcher (the held-out tasks do); synthesized goals are de-duplicated by text.
- A judge output still invalid after 5 tries scores 1; screenshots are re-rendered by replay, not stored.
- The agent (tiny VLM; `--vlm False`: text-only LM) sees the last `--max_history 2` steps (paper: all).

Commands (naming --model selects the paper preset, PAPER below; flags you pass win; --print_config shows
the effective configuration without loading anything):
  CPU toy (offline, tiny VLM):  python os_genesis.py    # OS-Genesis vs task-driven data, claims in summary.json
  1 GPU:   python os_genesis.py --model Qwen/Qwen2-VL-7B-Instruct --annotator model --text_filler model \
             --executor model --judge model --annotator_model Qwen/Qwen2-VL-72B-Instruct \
             --judge_model Qwen/Qwen2-VL-72B-Instruct
  8 GPUs:  torchrun --nproc_per_node=8 os_genesis.py --model Qwen/Qwen2-VL-7B-Instruct --annotator model \
             --text_filler model --executor model --judge model --annotator_model Qwen/Qwen2-VL-72B-Instruct \
             --judge_model Qwen/Qwen2-VL-72B-Instruct
"""

from __future__ import annotations

import json
import random
import re
import shutil
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Literal

import torch
import torch.distributed as dist
from PIL import ImageDraw
from tqdm import tqdm

from common.claims import claim, format_claims, write_summary
from common.config import parse_config
from common.data import read_jsonl_tolerant, write_jsonl
from common.gui_env import (
    APPS,
    TASKS,
    ActionError,
    GUIAction,
    ScriptedExpert,
    Task,
    ToyGUIEnv,
    _extract_json_object,
    describe_action,
    format_osgenesis,
    instruction,
    list_tasks,
    normalize_answer,
    osgenesis_a11y,
    osgenesis_to_indexed,
    parse_json_action,
    parse_osgenesis,
    replay,
    rollout,
    run_episodes,
    screen_signature,
    side_by_side,
    state_diff,
    step_match,
    with_center_point,
)
from common.models import load_model, load_processor, load_tokenizer, make_tiny_lm, make_tiny_vlm
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


@dataclass
class Args(VLLMArgs):
    seed: int = field(default=0, metadata={"help": "random seed"})
    output_dir: str = field(
        default="runs/os_genesis", metadata={"help": "JSONL data, checkpoint, metrics, PNG"}
    )
    model: str = field(
        default="",
        metadata={"help": "agent to fine-tune (hub id or path); empty = tiny VLM built in code"},
    )
    vlm: bool = field(
        default=True,
        metadata={"help": "agent sees the screenshot; False = text-only LM on the a11y text"},
    )
    sampler: Literal["hf", "vllm"] = field(
        default="hf", metadata={"help": "hf | vllm, for the model-backed annotator/executor/judge"}
    )
    resume: bool = field(
        default=False, metadata={"help": "continue from the JSONL files and the SFT checkpoint"}
    )
    track: bool = field(default=False, metadata={"help": "log to Weights & Biases"})
    apps: str = field(default="settings,notes,shop,mail", metadata={"help": "apps to explore"})
    walks_per_app: int = field(
        default=15,
        metadata={"help": "walks per app (the paper walks once per AndroidWorld task, 116 in all)"},
    )
    walk_steps: int = field(
        default=10, metadata={"help": "steps per walk (sec 2.1: 10 mobile, 5 web)"}
    )
    walk_style: Literal["mobile", "web"] = field(
        default="mobile", metadata={"help": "mobile (elements x10, scroll/back x1) | web (4/3/3/1)"}
    )
    interactive_weight: float = field(
        default=10.0, metadata={"help": "weight per interactive element (sec 2.1)"}
    )
    nav_weight: float = field(
        default=1.0, metadata={"help": "weight of scroll down / scroll up / back each (sec 2.1)"}
    )
    long_press_ratio: float = field(
        default=0.1, metadata={"help": "long-clickable: click:long_press 9:1 (sec 2.1)"}
    )
    text_filler: Literal["rule", "model"] = field(
        default="rule", metadata={"help": "text for fields: rule (stand-in) | model (gpt-4o-mini)"}
    )
    filler_max_tokens: int = field(
        default=20, metadata={"help": "<= 20 tokens, T=0.7, fallback 'Test Input' (sec 2.1)"}
    )
    annotator: Literal["rule", "model"] = field(
        default="rule", metadata={"help": "reverse synthesis: rule (stand-in) | model (GPT-4o)"}
    )
    annotator_model: str = field(
        default="", metadata={"help": "LLM/VLM for annotator, filler, executor (empty = --model)"}
    )
    question_ratio: float = field(
        default=0.3, metadata={"help": "rule describer: info screens made questions (sec 2.2)"}
    )
    executor: Literal["follower", "model"] = field(
        default="follower",
        metadata={
            "help": "collection: follower (stand-in: runs the direct plan) | model (GPT-4o M3A)"
        },
    )
    executor_noise: float = field(
        default=0.15,
        metadata={"help": "follower stand-in: chance of a random click (slip) per step"},
    )
    max_steps: int = field(
        default=15, metadata={"help": "step cap for collection and evaluation (sec 2.3)"}
    )
    abort_repeats: int = field(
        default=3, metadata={"help": "abort after the same action this many times (sec 2.3)"}
    )
    judge: Literal["state", "model"] = field(
        default="state", metadata={"help": "reward model: state (stand-in) | model (GPT-4o)"}
    )
    judge_model: str = field(
        default="", metadata={"help": "LLM/VLM for --judge model (empty = --model)"}
    )
    judge_temperature: float = field(default=0.5, metadata={"help": "TRM sampling T (sec 2.4)"})
    judge_top_p: float = field(default=0.9, metadata={"help": "TRM top_p (sec 2.4)"})
    judge_retries: int = field(
        default=5, metadata={"help": "TRM tries until 1 <= score <= 5 (sec 2.4)"}
    )
    max_history: int = field(
        default=2,
        metadata={
            "help": "past steps shown to the agent, 0 = all; toy 2; paper: 0 (all past steps)"
        },
    )
    action_space: Literal["coords", "index"] = field(
        default="coords",
        metadata={"help": "coords: {text: (x, y)} a11y + x/y actions (sec 2.5) | index"},
    )
    data: Literal["os_genesis", "task_driven"] = field(
        default="os_genesis",
        metadata={
            "help": "os_genesis (stages 1-4) | "
            "task_driven (the paper's baseline: SFT on expert trajectories of the training tasks)"
        },
    )
    compare: bool = field(
        default=True,
        metadata={"help": "also train the task-driven baseline from the same base; write claims"},
    )
    tasks: str = field(
        default="",
        metadata={
            "help": "catalogue task ids (comma-separated) for task_driven data AND evaluation"
        },
    )
    eval_base: bool = field(
        default=True,
        metadata={"help": "evaluate the model before SFT too (the compared baseline reuses it)"},
    )
    base_steps: int = field(
        default=200,
        metadata={"help": "toy base (no --model): steps of low-level instruction following"},
    )
    train_steps: int = field(default=300, metadata={"help": "SFT optimizer steps"})
    batch_size: int = field(
        default=4,
        metadata={"help": "trajectory draws per step per rank, each -> planning + action sample"},
    )
    micro_batch_size: int = field(
        default=0,
        metadata={
            "help": "samples per forward/backward on one rank (gradient "
            "accumulation, same token-mean loss); 0 = the rank's whole batch; paper preset: 2 (not stated in the paper)"
        },
    )
    gradient_checkpointing: bool = field(
        default=False,
        metadata={
            "help": "recompute decoder layers in the backward pass; "
            "paper preset: True (not stated in the paper; needed for long sequences at 7B)"
        },
    )
    learning_rate: float = field(
        default=3e-3,
        metadata={
            "help": "AdamW LR; toy 3e-3 (tiny model from scratch); paper preset: 1e-5 (not stated in the paper; usual at 7B)"
        },
    )
    warmup_ratio: float = field(default=0.05, metadata={"help": "cosine schedule warmup share"})
    save_every: int = field(default=100, metadata={"help": "checkpoint every N steps"})
    max_new_tokens: int = field(
        default=96,
        metadata={
            "help": "agent generation budget; toy 96; paper preset: 512 (not stated in the paper)"
        },
    )
    eval_split: Literal["test", "train"] = field(
        default="test", metadata={"help": "held-out tasks of the toy env"}
    )
    eval_limit: int = field(
        default=0, metadata={"help": "evaluate on the first N held-out tasks (0 = all)"}
    )


# Used with --preset paper (the default once --model is named); the defaults above are the CPU toy's. The
# paper states no SFT hyperparameters: the LR and budget are ours for a 7B VLM. A flag on the command line wins.
PAPER = dict(
    max_history=0,  # every past step
    learning_rate=1e-5,  # not stated in the paper
    max_new_tokens=512,  # not stated: room for a low-level thought and the action
    gradient_checkpointing=True,  # not stated in the paper: bounds activation memory at long sequences
    micro_batch_size=2,  # not stated in the paper: bounds activation memory at long sequences
)


def derived(args, world_size: int) -> dict:
    """Every rank draws --batch_size trajectories per step (rank-seeded), so the global batch grows."""
    return dict(trajectory_draws_per_step_all_ranks=args.batch_size * world_size)


# ------------------------------------------------------------------------------------------------
# The paper's rules as small pure functions


def mobile_walk_weights(n_interactive: int, interactive_weight=10.0, nav_weight=1.0) -> list[float]:
    """Sec 2.1 (random_walk_aw.py): each interactive element x10, then [scroll down, scroll up, back] x1."""
    return [interactive_weight] * n_interactive + [nav_weight] * 3


def web_element_weight(role: str, explored: bool, new: bool) -> float:
    """Sec 2.1 (random_walk_web.py): unexplored+new 4, explored+new 3, unexplored+old 3, explored+old 1; static text 0."""
    if role in ("text", "heading", "StaticText", "list"):
        return 0.0
    return {(False, True): 4.0, (True, True): 3.0, (False, False): 3.0, (True, False): 1.0}[
        (explored, new)
    ]


def element_action(
    element: dict, long_press_ratio: float, rng: random.Random, text: str = "Test Input"
) -> GUIAction:
    """Sec 2.1: editable -> type; long-clickable -> click:long_press 9:1; otherwise click."""
    if element["is_editable"]:
        return GUIAction("input_text", index=element["index"], text=text)
    if element["is_long_clickable"] and rng.random() < long_press_ratio:
        return GUIAction("long_press", index=element["index"])
    return GUIAction("click", index=element["index"])


def should_abort(action_jsons: list[str], repeats: int = 3) -> bool:
    """Sec 2.3: abort when the same action JSON repeats `repeats` times in a row."""
    return len(action_jsons) >= repeats and len(set(action_jsons[-repeats:])) == 1


def parse_trm_output(text: str) -> tuple[str, int | None]:
    """Sec 2.4: 'Reason: ... Score: n'; a score outside 1..5 (or none) is invalid (None) and retried."""
    scores = re.findall(r"Score\s*:\s*(-?\d+)", text)
    reason = re.search(r"Reason\s*:\s*(.*?)(?:Score\s*:|$)", text, re.S)
    n = int(scores[-1]) if scores else None
    return (reason.group(1).strip() if reason else ""), (
        n if n is not None and 1 <= n <= 5 else None
    )


def trm_sampling_probs(scores: list[float]) -> list[float]:
    """Sec 2.4: no filtering; a training draw picks trajectory i with P = R_i / sum_k R_k."""
    total = float(sum(scores))
    if total <= 0:
        raise ValueError("trajectory scores must have a positive sum")
    return [s / total for s in scores]


def rubric_score(
    reached: bool, clean: bool, efficient: bool, partial: bool, right_app: bool, looped: bool
) -> int:
    """Sec 2.4 rubric, completion + coherence: 5 perfect; 4 done but inefficient (a detour, an invalid
    step); 3 partial, loop or error (done with side effects counts as an error); 2 early deviation
    (right app, never near the target); 1 immediate failure."""
    if reached and clean:
        return 5 if efficient else 4
    if reached or partial or looped:
        return 3
    return 2 if right_app else 1


# ------------------------------------------------------------------------------------------------
# Small helpers: prompts, models


def user_message(text: str, vlm: bool) -> list[dict]:
    return [
        {
            "role": "user",
            "content": [{"type": "image"}, {"type": "text", "text": text}] if vlm else text,
        }
    ]


def load_helper(path: str, args: Args):
    """A frozen LLM/VLM behind the Sampler interface (annotator, text filler, executor, judge)."""
    path = path or args.model or (make_tiny_vlm() if args.vlm else make_tiny_lm())
    proc = load_processor(path) if args.vlm else load_tokenizer(path)
    model = load_model(path, vlm=args.vlm)
    return make_sampler(args.sampler, model, proc, model_path=path, args=args)


def agent_prompt(
    goal: str, obs: dict, history: list[dict], args: Args, thought: str | None = None
) -> str:
    """Sec 2.5: screenshot + filtered a11y tree, the task, and 'Step i: thought action: json' history."""
    screen = (
        osgenesis_a11y(obs["ui_elements"]) if args.action_space == "coords" else obs["axtree_txt"]
    )
    first = max(0, len(history) - args.max_history) if args.max_history else 0
    past = "\n".join(
        f"Step {i + 1}: {h['thought']} action: {history_action(h, args)}"
        for i, h in enumerate(history)
        if i >= first
    )
    ask = (
        f"Low-level thought: {thought}\nWrite the action."
        if thought
        else "Write the low-level thought and the action."
    )
    return f"Screen: {screen}\nHistory:\n{past or 'None'}\nTask: {goal}\n{ask}"  # the task last: near the answer


def history_action(step: dict, args: Args) -> str:
    """A past step's action JSON in the agent's action space (index -> the element centre for coords)."""
    if args.action_space != "coords" or not step.get("xy"):
        return step["action"][:120]
    action = json.loads(step["action"])
    action.pop("index")
    return json.dumps({**action, "x": step["xy"][0], "y": step["xy"][1]})


def agent_target(action: GUIAction, obs: dict, args: Args, thought: str | None) -> str:
    """Planning target 'Low-level thought: ...\\naction: {json}', or 'action: {json}' (thought=None)."""
    action = (
        with_center_point(action, obs["ui_elements"]) if args.action_space == "coords" else action
    )
    return (
        format_osgenesis(thought, action) if thought is not None else f"action: {action.to_json()}"
    )


def parse_agent_output(text: str, obs: dict) -> tuple[str, GUIAction | None]:
    """(thought, action with its point mapped to the nearest element centre); (thought, None) for garbage."""
    try:
        thought, action = parse_osgenesis(text)
        return thought, osgenesis_to_indexed(action, obs["ui_elements"])
    except ActionError:
        return "", None


def model_policy(sampler, args: Args):
    """The model-backed agent (M3A-style executor, and the agent being evaluated): greedy decoding."""

    def policy(items):
        prompts = [
            user_message(agent_prompt(obs["goal"], obs, steps, args), args.vlm)
            for _, obs, steps in items
        ]
        images = [o["screenshot"] for _, o, _ in items] if args.vlm else None
        outs = generate_local(
            sampler, prompts, images=images, temperature=0.0, max_new_tokens=args.max_new_tokens
        )  # FSDP2: lock-step rounds
        decisions = [
            (parse_agent_output(out[0].text, obs), out[0].text)
            for (_, obs, _), out in zip(items, outs)
        ]
        return [
            (thought, action or raw) for (thought, action), raw in decisions
        ]  # garbage -> env error, counted

    return policy


# ------------------------------------------------------------------------------------------------
# STAND-INS for GPT-4o (the offline default). Each reads the toy phone's state, which a real model
# would read from screenshots, and sits behind the same interface as its model-backed twin:
# text filler (rule_text_filler | model_text_filler), describer (RuleDescriber | ModelDescriber),
# executor (PathFollower on direct_plan | model_policy), judge (StateJudge | ModelJudge).

SWITCHES = {
    "airplane": "airplane mode",
    "wifi": "Wi-Fi",
    "bluetooth": "Bluetooth",
    "dark_theme": "dark theme",
    "dnd": "Do not disturb",
    "vibrate": "vibration",
}
SETTINGS = {
    "brightness": "Set the brightness to {}.",
    "volume": "Set the volume to {}.",
    "font_size": "Change the font size to {}.",
    "network": "Connect to the Wi-Fi network {}.",
    "device_name": "Rename this phone to {}.",
}


def describe_state_change(diff: list) -> str | None:
    """Stand-in describer knowledge: the user task a `state_diff` accomplishes ("Turn on Bluetooth."), or None
    when nothing in the app state changed (the action only moved between screens)."""
    for path, old, new in diff:
        app, key, *rest = path.strip("/").split("/")
        if key in SWITCHES:
            return f"Turn {'on' if new else 'off'} {SWITCHES[key]}."
        if key in SETTINGS:
            return SETTINGS[key].format(new.lower() if key == "font_size" else new)
        if key == "cart":
            return (
                f"Add {new - (old or 0)} {rest[0]} to the cart."
                if new
                else f"Remove {rest[0]} from the cart."
            )
        old, new = old or [], new or []  # the rest are lists of records
        added, removed = [x for x in new if x not in old], [x for x in old if x not in new]
        if key == "orders":
            return f"Order {' and '.join(added[0]['items'])} to {added[0]['address']}."
        if key == "sent":
            return f"Send an email to {added[0]['to']} with the subject '{added[0]['subject']}'."
        if key in ("notes", "emails"):
            for a in added:
                b = next((r for r in removed if r["id"] == a["id"]), None)
                noun = (
                    f"the note '{(b or a).get('title')}'"
                    if key == "notes"
                    else f"the email from {a['sender']}"
                )
                if b is None:
                    return f"Create a note titled '{a['title']}' that says '{a['body']}'."
                if key == "notes" and a["pinned"] != b["pinned"]:
                    return f"{'Pin' if a['pinned'] else 'Unpin'} {noun}."
                if key == "emails" and a["starred"] != b["starred"]:
                    return f"{'Star' if a['starred'] else 'Unstar'} {noun}."
                return (
                    f"Rename {noun} to '{a['title']}'."
                    if a.get("title") != b.get("title")
                    else f"Edit {noun}."
                )
            if removed:
                return (
                    f"Delete the note '{removed[0]['title']}'."
                    if key == "notes"
                    else f"Delete the email from {removed[0]['sender']}."
                )
    return None


QUESTIONS = {  # element on a screen -> (question, answer from its (text, value))
    "price": ("How much does the {title} cost?", lambda text, value: text.split()[-1]),
    "android_version": (
        "Which Android version is this phone running?",
        lambda text, value: text.split()[-1],
    ),
    "subject": ("What is the subject of the email from {sender}?", lambda text, value: text),
    "body_box": ("What does the note '{note}' say?", lambda text, value: value),
}
FIELD_TEXTS = {
    "title": ["Shopping", "Todo", "Plans"],
    "body": ["call mom", "buy bread", "hello"],
    "to": ["dave", "erin", "grace"],
    "subject": ["Hi", "Update", "Question"],
    "address": ["1 Main St", "7 Hill Rd"],
    "device": ["My Phone", "Toy 2"],
    "search": ["mug", "seed", "novel", "pan"],
}  # none is a held-out task's parameter


def screen_question(after: list, title: str) -> tuple[str, str] | None:
    """Stand-in describer knowledge: a question answerable from a screen (elements as [resource_id, text,
    value] rows) and its answer, or None when the screen shows nothing to ask about."""
    info = {rid: (text, value) for rid, text, value in after}
    rid = next((r for r in QUESTIONS if r in info), None)
    if rid is None:
        return None
    template, extract = QUESTIONS[rid]
    sender = info.get("from", ("", ""))[0].removeprefix("From: ")
    return template.format(
        title=title, note=info.get("title_box", ("", ""))[1], sender=sender
    ), extract(*info[rid])


def toy_field_text(field_name: str, rng) -> str:
    """Stand-in text generator: a seeded pick from a small word list for the field, else 'Test Input'."""
    key = next((k for k in FIELD_TEXTS if k in field_name.lower()), None)
    return rng.choice(FIELD_TEXTS[key]) if key else "Test Input"


def apply_diff(state: dict, diff: list) -> dict:
    """`state` with a `state_diff` applied on top (list changes as add/remove of items). A change is already
    present in `state` exactly when `state_diff(apply_diff(state, diff), state)` is empty."""
    out = json.loads(json.dumps(state))
    for path, old, new in diff:
        *parents, leaf = path.strip("/").split("/")
        node = out
        for p in parents:
            node = node.setdefault(p, {})
        if isinstance(new, list) or isinstance(old, list):
            gone = [x for x in old or [] if x not in (new or [])]
            kept = [x for x in node.get(leaf) or [] if x not in gone]
            node[leaf] = kept + [x for x in new or [] if x not in (old or []) and x not in kept]
        else:
            node[leaf] = new
    return out


class PathFollower:
    """STAND-IN executor (the paper's GPT-4o M3A agent): follows a plan of steps addressed by resource id (["open_app", label],
    ["click" | "long_press", rid], ["type", rid, text], ["scroll", direction], ["back"]), then answers or stops.
    With probability `noise` it clicks something at random instead; when its target is not on screen it goes
    back (a caller's repeat rule ends hopeless loops)."""

    def __init__(self, plan: list, answer: str | None, noise: float, rng):
        self.plan, self.answer, self.noise, self.rng, self.pos = plan, answer, noise, rng, 0

    def act(self, obs: dict) -> GUIAction:
        clickable = [e for e in obs["ui_elements"] if e["is_clickable"]]
        if clickable and self.rng.random() < self.noise:
            return GUIAction("click", index=self.rng.choice(clickable)["index"])
        if self.pos >= len(self.plan):
            return (
                GUIAction("answer", text=self.answer)
                if self.answer
                else GUIAction("status", goal_status="complete")
            )
        step = self.plan[self.pos]
        if step[0] in ("open_app", "scroll", "back"):
            self.pos += 1
            return (
                GUIAction("open_app", app_name=step[1])
                if step[0] == "open_app"
                else GUIAction("scroll", direction=step[1])
                if step[0] == "scroll"
                else GUIAction("navigate_back")
            )
        index = next((e["index"] for e in obs["ui_elements"] if e["resource_id"] == step[1]), None)
        if index is None:
            return GUIAction(
                "navigate_back"
            )  # lost: go back (hopeless cases end by the repeat rule)
        self.pos += 1
        return (
            GUIAction("input_text", index=index, text=step[2])
            if step[0] == "type"
            else GUIAction(step[0], index=index)
        )


def initial_phone_state() -> dict:
    """The toy phone's state after reset (every walk, trajectory and held-out task starts here)."""
    return json.loads(json.dumps(ToyGUIEnv().state))


def task_target(task: dict, triple: dict) -> dict:
    """What the synthesized task asks for, as the stand-ins read it: the triple's state change, the
    answer on its after-screen, the text typed into its field, or else reaching its after-screen."""
    diff = [
        d for d in triple["diff"] if not d[0].startswith("/system/")
    ]  # where the agent is: not an effect
    if diff:
        return dict(kind="change", diff=diff)
    if task.get("answer"):
        return dict(
            kind="answer",
            answer=task["answer"],
            url=triple["url_after"],
            title=triple["title_after"],
        )
    if triple["action"]["action_type"] == "input_text":
        return dict(
            kind="typed", rid=triple["element"]["resource_id"], text=triple["action"]["text"]
        )
    return dict(kind="screen", url=triple["url_after"], title=triple["title_after"])


def canonical(state):
    """Lists of records in a fixed order: an edited note stays in place, `apply_diff` appends it."""
    if isinstance(state, dict):
        return {k: canonical(v) for k, v in state.items() if k != "system"}
    if isinstance(state, list):
        return sorted((canonical(x) for x in state), key=lambda x: json.dumps(x, sort_keys=True))
    return state


def target_reached(target: dict, obs: dict, state: dict) -> bool:
    """Is the target there (for an answer: is the screen that shows it open)?"""
    if target["kind"] == "change":  # the change is present: applying it again changes nothing
        return not state_diff(canonical(apply_diff(state, target["diff"])), canonical(state))
    if target["kind"] == "typed":
        return any(
            e["resource_id"] == target["rid"] and e["value"] == target["text"]
            for e in obs["ui_elements"]
        )
    return obs["url"] == target["url"] and obs["ui_elements"][0]["text"] == target["title"]


def side_effects(start: dict, end: dict, target: dict) -> list:
    """App-state changes beyond the target's own (the TRM's "coherence": a trajectory that stars and
    deletes other emails on the way is not a clean demonstration of the task)."""
    intended = apply_diff(start, target["diff"]) if target["kind"] == "change" else start
    return state_diff(canonical(intended), canonical(end))


def run_plan(plan: list, app: str) -> tuple[ToyGUIEnv, dict] | None:
    """Replay a resource-id plan from the launcher (no noise); None when a step's target is missing."""
    env = ToyGUIEnv(Task("plan", app, ""), max_steps=10**6, end_on_success=False)
    obs, follower = env.obs, PathFollower(plan, None, 0.0, random.Random(0))
    while follower.pos < len(plan):
        pos = follower.pos
        obs = env.step(follower.act(obs))[0]
        if follower.pos == pos or obs["last_action_error"]:
            return None  # lost (the next step's target is not on this screen) or an invalid step
    return env, obs


def direct_plan(task: dict, triple: dict) -> list:
    """STAND-IN executor's plan for a synthesized task: open the app, then the walk's path to the
    triple, minus every step the task does not need (a step is dropped when the plan without it
    still reaches the target with no side effects), so the executor carries out the instruction
    instead of replaying the random walk's detours. Spans are tried longest first, so a round trip
    (open an email, delete it, back on the inbox) goes in one cut."""
    target, start = task_target(task, triple), initial_phone_state()
    plan = [["open_app", APPS[triple["app"]].label]] + triple["path"] + [triple["final_step"]]

    def works(candidate):
        done = run_plan(candidate, triple["app"])
        return (
            bool(done)
            and target_reached(target, done[1], done[0].state)
            and not side_effects(start, done[0].state, target)
        )

    cut = True
    while cut:
        cut = next(
            (
                plan[:i] + plan[i + n :]
                for n in range(len(plan) - 1, 0, -1)
                for i in range(1, len(plan) - n + 1)
                if works(plan[:i] + plan[i + n :])
            ),
            None,
        )
        plan = cut or plan
    return plan


def leaks_held_out(task: dict, triple: dict, held_out: list[Task]) -> bool:
    """True when a synthesized task is a held-out task (same goal text, or the same template
    instance: its state change passes a held-out check, or its answer is a held-out answer)."""
    goals = {normalize_answer(t.goal) for t in held_out}
    if normalize_answer(task["goal"]) in goals:
        return True
    if task.get("answer") and any(
        t.answer and normalize_answer(t.answer) == normalize_answer(task["answer"])
        for t in held_out
    ):
        return True
    target = task_target(task, triple)
    if target["kind"] != "change":
        return False
    start = initial_phone_state()
    after = apply_diff(start, target["diff"])
    return any(t.check is not None and t.check(after) and not t.check(start) for t in held_out)


# ------------------------------------------------------------------------------------------------
# Stage 1: interaction-driven functional discovery (random walks)


def rule_text_filler(rng: random.Random):
    """STAND-IN for gpt-4o-mini filling a text field: a seeded pick from the toy's per-field word lists."""
    return lambda field_name, app: toy_field_text(field_name, rng)


def model_text_filler(sampler, args: Args):
    """Sec 2.1: a model writes <= 20 tokens at T=0.7, first line only; empty output -> 'Test Input'."""

    def fill(field_name: str, app: str) -> str:
        prompt = user_message(
            f"Write a realistic short input for the '{field_name}' field of the {app} app. One line.",
            False,
        )
        text = sampler.generate([prompt], temperature=0.7, max_new_tokens=args.filler_max_tokens)[
            0
        ][0].text
        return (text.strip().splitlines() or [""])[0].strip() or "Test Input"

    return fill


def plan_step(action: GUIAction, ui_elements: list[dict]) -> list:
    """The action as a resource-id step, which the follower replays on whatever screen it sees."""
    t = action.action_type
    if t in ("input_text", "click", "long_press"):
        step = ["type" if t == "input_text" else t, ui_elements[action.index]["resource_id"]]
        return step + [action.text] if t == "input_text" else step
    return ["scroll", action.direction] if t == "scroll" else ["back"]


def random_walk(
    app: str, walk_id: int, args: Args, pool: set, explored: set, filler, rng: random.Random
):
    """One walk from the app's first screen. An element action that changes nothing pools the element (never
    proposed again) and records nothing; every real change records a (before, action, after) triple."""
    env = ToyGUIEnv(Task(f"walk{walk_id}", app, "", start_app=app), max_steps=10**6)
    obs, actions, triples, pooled, path, previous = (
        env.obs,
        [],
        [],
        [],
        [],
        set(),
    )  # previous: ids on the last screen
    seen = {(obs["url"], screen_signature(obs)): 0}
    for step in range(args.walk_steps):
        elements = [
            e
            for e in obs["ui_elements"]
            if (e["is_clickable"] or e["is_editable"] or e["is_long_clickable"])
            and (app, e["resource_id"]) not in pool
        ]
        if args.walk_style == "web":
            options = [("element", e) for e in elements]
            weights = [
                web_element_weight(
                    e["role"], (app, e["resource_id"]) in explored, e["resource_id"] not in previous
                )
                for e in elements
            ]
        else:
            options = [("element", e) for e in elements] + [
                ("scroll", "down"),
                ("scroll", "up"),
                ("back", None),
            ]
            weights = mobile_walk_weights(len(elements), args.interactive_weight, args.nav_weight)
        if not options or sum(weights) == 0:
            break
        kind, target = rng.choices(options, weights=weights)[0]
        if kind == "element":
            text = filler(target["text"], APPS[app].label) if target["is_editable"] else ""
            action = element_action(target, args.long_press_ratio, rng, text)
            explored.add((app, target["resource_id"]))
        else:
            action = (
                GUIAction("scroll", direction=target)
                if kind == "scroll"
                else GUIAction("navigate_back")
            )
        before, before_state, previous = (
            obs,
            json.loads(json.dumps(env.state)),
            {e["resource_id"] for e in obs["ui_elements"]},
        )
        obs, *_ = env.step(action)
        actions.append(action.to_dict())
        if screen_signature(obs) == screen_signature(before) and obs["url"] == before["url"]:
            if kind == "element":  # sec 2.1: unchanged element set -> unclickable pool, no triple
                pool.add((app, target["resource_id"]))
                pooled.append(target["resource_id"])
            continue
        element = before["ui_elements"][action.index] if action.index is not None else None
        triples.append(
            dict(
                triple_id=f"w{walk_id}s{step}",
                walk_id=walk_id,
                step=len(actions),
                app=app,
                action=action.to_dict(),
                action_text=describe_action(action, before["ui_elements"]),
                url_before=before["url"],
                url_after=obs["url"],
                element=element
                and {k: element[k] for k in ("resource_id", "text", "role", "bbox_pixels")},
                title_before=before["ui_elements"][0]["text"],
                title_after=obs["ui_elements"][0]["text"],
                diff=state_diff(before_state, env.state),
                after=[[e["resource_id"], e["text"], e["value"]] for e in obs["ui_elements"]],
                path=list(path),
                final_step=plan_step(action, before["ui_elements"]),
            )
        )
        path.append(triples[-1]["final_step"])
        key = (obs["url"], screen_signature(obs))
        path = (
            path[: seen[key]] if key in seen else path
        )  # back on a screen seen before: the detour leaves the path
        seen = {k: v for k, v in seen.items() if v <= len(path)} | {key: len(path)}
    return dict(
        walk_id=walk_id, app=app, actions=actions, pooled=pooled, n_triples=len(triples)
    ), triples


# ------------------------------------------------------------------------------------------------
# Stage 2: reverse task synthesis (triple -> low-level instruction -> high-level task, in one call)

SYNTHESIS_PROMPT = (
    "You are an expert in mobile app tasks. The image shows the {app} app before (left) and after (right) one action; "
    "the element acted on has a red box.\nAction: {action}\nWrite 1. Sub-Instruction: a low-level instruction for this "
    "action; 2. Analysis: what changed; 3. High-Level-Instruction: a realistic task (or a question answerable from the "
    "screen) that a user of {app} could give and that this action helps to complete.\n"
    'Answer with JSON: {{"Sub-Instruction": "...", "Analysis": "...", "High-Level-Instruction": "..."}}'
)


class RuleDescriber:
    """STAND-IN for the GPT-4o annotator: writes the same JSON from the triple's a11y and state diff."""

    name = "rule"

    def __init__(self, args: Args):
        self.args = args

    def describe(self, triples: list[dict]) -> list[str]:
        out = []
        for t in triples:
            high, answer = describe_state_change(t["diff"]), None
            if high is None and t["action"]["action_type"] == "input_text":
                high = f"Type '{t['action']['text']}' into the {t['element']['text']} field of {t['title_after']}."
            if high is None and random.Random(t["triple_id"]).random() < self.args.question_ratio:
                high, answer = screen_question(t["after"], t["title_after"]) or (None, None)
            record = {
                "Sub-Instruction": t["action_text"][:1].upper() + t["action_text"][1:] + ".",
                "Analysis": f"The screen went from {t['title_before']} to {t['title_after']}.",
                "High-Level-Instruction": high
                or f"Open the {t['title_after']} screen in {APPS[t['app']].label}.",
            }
            out.append(
                json.dumps(record | ({"Answer": answer} if answer else {}))
            )  # Answer: for the stand-in executor only
        return out


class ModelDescriber:
    """Sec 2.2 with any VLM/LLM through the Sampler: one call per triple in the paper's prompt shape."""

    name = "model"

    def __init__(self, sampler, args: Args, walk_actions: dict):
        self.sampler, self.args, self.walk_actions = sampler, args, walk_actions

    def describe(self, triples: list[dict]) -> list[str]:
        prompts, images = [], []
        for t in triples:
            screens = replay(
                Task("walk", t["app"], "", start_app=t["app"]),
                self.walk_actions[t["walk_id"]][: t["step"]],
            )
            before = screens[-2]["screenshot"].copy()
            if t["element"]:
                b = t["element"]["bbox_pixels"]
                ImageDraw.Draw(before).rectangle(
                    (b["x_min"], b["y_min"], b["x_max"] - 1, b["y_max"] - 1), outline="red", width=2
                )
            images.append(side_by_side([before, screens[-1]["screenshot"]]))
            prompts.append(
                user_message(
                    SYNTHESIS_PROMPT.format(app=APPS[t["app"]].label, action=t["action_text"]),
                    self.args.vlm,
                )
            )
        outs = self.sampler.generate(
            prompts, images=images if self.args.vlm else None, temperature=0.0, max_new_tokens=256
        )
        return [o[0].text for o in outs]


def parse_synthesis(text: str) -> dict | None:
    """The annotator's JSON, or None (counted as invalid) when a key is missing or empty."""
    try:
        obj = _extract_json_object(text)
    except ActionError:
        return None
    keys = ("Sub-Instruction", "High-Level-Instruction")
    return obj if all(isinstance(obj.get(k), str) and obj[k].strip() for k in keys) else None


# ------------------------------------------------------------------------------------------------
# Stage 3 executor stand-in and stage 4 reward models

TRM_PROMPT = (
    "You judge a mobile GUI agent.\nTask: {goal}\nSteps:\n{steps}\nThe image shows the last screenshots, oldest first. "
    "Score completion and coherence from 1 to 5: 5 perfect; 4 mostly done or inefficient; 3 partial, loop or error; "
    "2 early deviation; 1 immediate failure.\nAnswer as: Reason: <one sentence> Score: <1-5>"
)


def follower_plan(triple: dict) -> list:
    """STAND-IN executor's plan: open the app, the walk's loop-free path to the triple, the triple's action."""
    return [["open_app", APPS[triple["app"]].label]] + triple["path"] + [triple["final_step"]]


class StateJudge:
    """STAND-IN for the GPT-4o TRM: the sec 2.4 rubric read from the toy env after replaying the trajectory.
    Completion: is the task's target there (its state change, its answer, its screen)? Coherence: no
    side effects, no more steps than the direct plan, no invalid steps."""

    name = "state"

    def score(self, task: dict, triple: dict, traj: dict) -> tuple[int, str, int]:
        env = ToyGUIEnv(
            Task("judge", task["app"], task["goal"]), max_steps=10**6, end_on_success=False
        )
        start, target = initial_phone_state(), task_target(task, triple)
        observations = [env.step(s["action"])[0] for s in traj["steps"]]
        urls = [o["url"] for o in observations]
        if target["kind"] == "answer":
            reached = normalize_answer(env.state["system"]["answer"] or "") == normalize_answer(
                task["answer"]
            )
        else:
            reached = bool(observations) and target_reached(target, observations[-1], env.state)
        extra = side_effects(start, env.state, target)
        optimal = (
            len(task.get("plan") or follower_plan(triple)) + 1
        )  # the direct plan + stop/answer
        score = rubric_score(
            reached,
            not extra,
            len(urls) <= optimal and traj["invalid"] == 0,
            triple["url_before"] in urls,
            bool(urls) and urls[0].startswith(f"toy://{triple['app']}/"),
            traj["aborted"],
        )
        return score, f"reached={reached} side_effects={len(extra)} steps={len(urls)}/{optimal}", 1


class ModelJudge:
    """Sec 2.4 with any VLM/LLM: instruction + step summaries + last 3 screenshots, T=0.5, up to 5 tries."""

    name = "model"

    def __init__(self, sampler, args: Args):
        self.sampler, self.args = sampler, args

    def score(self, task: dict, triple: dict, traj: dict) -> tuple[int, str, int]:
        screens = [
            o["screenshot"]
            for o in replay(
                Task("judge", task["app"], task["goal"]), [s["action"] for s in traj["steps"]]
            )
        ]
        steps = "\n".join(f"Step {j + 1}: {s['thought']}" for j, s in enumerate(traj["steps"]))
        prompt = user_message(TRM_PROMPT.format(goal=task["goal"], steps=steps), self.args.vlm)
        for attempt in range(1, self.args.judge_retries + 1):
            text = self.sampler.generate(
                [prompt],
                images=[side_by_side(screens[-3:])] if self.args.vlm else None,
                max_new_tokens=64,
                temperature=self.args.judge_temperature,
                top_p=self.args.judge_top_p,
            )[0][0].text
            reason, score = parse_trm_output(text)
            if score is not None:
                return score, reason, attempt
        return 1, "invalid judge output", self.args.judge_retries


# ------------------------------------------------------------------------------------------------
# Stage 5: SFT samples (the paper's two objectives) and evaluation


def make_encoder(proc, vlm: bool):
    """(prompt, target, image) -> prompt ids, target ids (+ end of turn), image tensors kept as model kwargs."""
    tok = getattr(proc, "tokenizer", proc)
    end = "<|im_end|>" if "<|im_end|>" in tok.get_vocab() else tok.eos_token

    def encode(prompt: str, target: str, image) -> dict:
        text = proc.apply_chat_template(
            user_message(prompt, vlm), tokenize=False, add_generation_prompt=True
        )
        enc = (
            proc(text=[text], images=[image], return_tensors="pt")
            if vlm
            else {"input_ids": [tok(text, add_special_tokens=False)["input_ids"]]}
        )
        return dict(
            prompt_ids=list(map(int, enc["input_ids"][0])),
            target_ids=tok(target + end, add_special_tokens=False)["input_ids"],
            extra={k: v for k, v in enc.items() if k not in ("input_ids", "attention_mask")},
        )

    return encode


def step_samples(traj: dict, args: Args, encode) -> list[list[dict]]:
    """Per valid step: [planning sample (task -> thought + action), action sample (task + thought -> action)]."""
    task = TASKS.get(traj["task_id"]) or Task(
        traj["task_id"], traj["app"], traj["goal"]
    )  # catalogue tasks: their setup
    observations = replay(task, [s["action"] for s in traj["steps"]])
    out = []
    for t, (step, obs) in enumerate(zip(traj["steps"], observations)):
        if step["error"] or not step["action"].startswith("{"):
            continue
        action, history = parse_json_action(step["action"]), traj["steps"][:t]
        out.append(
            [
                encode(
                    agent_prompt(traj["goal"], obs, history, args),
                    agent_target(action, obs, args, step["thought"]),
                    obs["screenshot"],
                ),
                encode(
                    agent_prompt(traj["goal"], obs, history, args, step["thought"]),
                    agent_target(action, obs, args, None),
                    obs["screenshot"],
                ),
            ]
        )
    return out


EASY_STEPS = (
    3  # the easier tier of held-out tasks: the expert needs at most 3 steps (open the app + 2)
)


def evaluate(sampler, args: Args, tasks: list[Task]) -> dict:
    """Success rate on held-out tasks (greedy, 15 steps) and step accuracy on their expert steps, given the task
    only (high level, AndroidControl-High style) or also the gold low-level instruction (AC-Low style)."""
    rank, world = (dist.get_rank(), dist.get_world_size()) if dist.is_initialized() else (0, 1)
    mine = run_episodes(
        tasks[rank::world],
        model_policy(sampler, args),
        args.max_steps,
        progress=lambda it: tqdm(it, desc="eval", leave=False),
    )  # each rank its share
    # ranks whose episodes ended early keep joining the lock-step rounds of the others (FSDP2)
    finish_local(sampler, temperature=0.0, max_new_tokens=args.max_new_tokens)
    episodes = [e for part in all_gather_object(mine) for e in part]
    prompts, images, golds = {"high": [], "low": []}, [], []
    for task in tasks:
        history = []
        for s in rollout(ToyGUIEnv(), ScriptedExpert(task).act, task)[0]:
            thought, elements = (
                instruction(s["action"], s["obs"]["ui_elements"]),
                s["obs"]["ui_elements"],
            )
            prompts["high"].append(
                user_message(agent_prompt(task.goal, s["obs"], history, args), args.vlm)
            )
            prompts["low"].append(
                user_message(agent_prompt(task.goal, s["obs"], history, args, thought), args.vlm)
            )
            images.append(s["obs"]["screenshot"])
            golds.append((s["action"], s["obs"]))
            xy = with_center_point(s["action"], elements) if s["action"].index is not None else None
            history.append(
                dict(thought=thought, action=s["action"].to_json(), xy=xy and [xy.x, xy.y])
            )
    easy_ids = {
        t.task_id for t in tasks if len(t.expert) <= EASY_STEPS
    }  # gathered episodes are in rank order
    easy = [e["task_id"] in easy_ids for e in episodes]
    result = dict(
        success_rate=sum(e["success"] for e in episodes) / len(episodes),
        success_rate_easy=sum(e["success"] for e, k in zip(episodes, easy) if k)
        / max(1, sum(easy)),
        success_rate_hard=sum(e["success"] for e, k in zip(episodes, easy) if not k)
        / max(1, len(easy) - sum(easy)),
        invalid_action_rate=sum(e["invalid"] for e in episodes)
        / max(1, sum(len(e["steps"]) for e in episodes)),
    )
    for level in ("high", "low"):
        outs = generate_sharded(
            sampler,
            prompts[level],
            images=images if args.vlm else None,
            temperature=0.0,
            max_new_tokens=args.max_new_tokens,
        )
        matches = [
            step_match(
                parse_agent_output(
                    out[0].text if level == "high" else "Low-level thought: -\n" + out[0].text, obs
                )[1],
                gold,
            )
            for out, (gold, obs) in zip(outs, golds)
        ]
        result[f"{level}_type_acc"] = sum(m[0] for m in matches) / len(matches)
        result[f"{level}_step_acc"] = sum(m[1] for m in matches) / len(matches)
    return result


def sft_micro_steps(model, tok, batch: list[dict], micro_batch_size: int, device) -> float:
    """Forward/backward of one rank's SFT batch in micro-batches; each micro-batch's summed NLL is divided by the
    target-token count of the whole batch, so the accumulated gradient is the unsplit batch's token mean."""
    num_tokens = sum(len(b["target_ids"]) for b in batch)
    total = 0.0
    for sl in micro_batches(len(batch), micro_batch_size):
        part = batch[sl]
        input_ids, attention_mask, loss_mask = sft_inputs(
            tok, [b["prompt_ids"] for b in part], [b["target_ids"] for b in part], device
        )  # (b, L) each
        extra = {
            k: torch.cat([b["extra"][k] for b in part]).to(device) for k in part[0]["extra"]
        }  # pixel_values (b, 3, H, W)
        loss = sft_loss(model, input_ids, attention_mask, loss_mask, normalizer=num_tokens, **extra)
        loss.backward()
        total += loss.item()
    return total


# ------------------------------------------------------------------------------------------------
# The toy base (no --model): a tiny VLM that can follow low-level instructions, as the paper's
# backbones can before OS-Genesis data teaches them high-level tasks


def base_samples(args: Args, encode, n_walks: int = 120) -> list[dict]:
    """Low-level instruction following on random screens: the task is the low-level instruction
    ("Click 'Sound'.", "Open app 'Mail'."); the target is the agent format (thought + action). The
    walks use their own seeds and clickable elements only, no goal of any task."""
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
            thought = instruction(action, obs["ui_elements"])
            samples.append(
                encode(
                    agent_prompt(thought, obs, [], args),
                    agent_target(action, obs, args, thought),
                    obs["screenshot"],
                )
            )
            obs = env.step(action)[0]
    return samples


def toy_base(args: Args, d) -> str:
    """Build (once, cached by common.toys.toy_model) the warm-started toy base."""
    spec = dict(seed=args.seed, vlm=args.vlm, steps=args.base_steps, action_space=args.action_space)

    def build(folder: Path):
        tiny = make_tiny_vlm() if args.vlm else make_tiny_lm()
        model, proc = (
            load_model(tiny, vlm=args.vlm),
            load_processor(tiny) if args.vlm else load_tokenizer(tiny),
        )
        tok, samples = (
            getattr(proc, "tokenizer", proc),
            base_samples(args, make_encoder(proc, args.vlm)),
        )
        optimizer, rng = make_optimizer(model, args.learning_rate), random.Random(args.seed)
        model.train()
        for _ in (bar := tqdm(range(args.base_steps), desc="toy base: low-level instructions")):
            batch = rng.sample(samples, 8)
            input_ids, attention_mask, loss_mask = sft_inputs(
                tok, [b["prompt_ids"] for b in batch], [b["target_ids"] for b in batch]
            )
            extra = {
                k: torch.cat([b["extra"][k] for b in batch]) for k in batch[0]["extra"]
            }  # pixel_values (8, 3, H, W)
            loss = sft_loss(model, input_ids, attention_mask, loss_mask, **extra)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            bar.set_postfix(loss=f"{loss.item():.3f}")
        model.save_pretrained(folder)
        proc.save_pretrained(folder)

    code = [base_samples, agent_prompt, agent_target, make_encoder, instruction, ToyGUIEnv]
    path = toy_model("os_genesis-base", spec, build, code=code) if d.is_main else None
    barrier()  # rank 0 builds; the others then find it in the cache
    return path or toy_model("os_genesis-base", spec, build, code=code)


def named_tasks(args: Args) -> list[Task]:
    """The catalogue tasks named by --tasks (an unknown id is an error that names it)."""
    ids = [i.strip() for i in args.tasks.split(",") if i.strip()]
    if unknown := [i for i in ids if i not in TASKS]:
        raise ValueError(
            f"--tasks: unknown task id(s) {unknown}; see common/gui_apps.py build_tasks"
        )
    return [TASKS[i] for i in ids]


def task_driven_data(files: dict, args: Args) -> dict:
    """The task-driven baseline (sec 4.1): the expert's trajectories of the training tasks, score 5 each
    (uniform draws), in the same record format as collected trajectories."""
    if not read_jsonl_tolerant(files["trajectories"]):
        tasks = named_tasks(args) or list_tasks("train")
        experts = [ScriptedExpert(t) for t in tasks]
        policy = lambda items: [
            (instruction(a, o["ui_elements"]), a)  # noqa: E731
            for a, (_, o, _) in zip([experts[i].act(o) for i, o, _ in items], items)
        ]
        write_jsonl(files["trajectories"], run_episodes(tasks, policy, args.max_steps))
        write_jsonl(
            files["scores"],
            [
                dict(task_id=t.task_id, score=5, reason="expert", attempts=0, judge="none")
                for t in tasks
            ],
        )
    trajectories = read_jsonl_tolerant(files["trajectories"])
    return dict(
        trajectories=len(trajectories),
        mean_steps=sum(len(t["steps"]) for t in trajectories) / len(trajectories),
    )


def generate_data(args: Args, out: Path) -> dict:
    """Stages 1-4 (rank 0). Each stage appends complete JSONL records and skips what an earlier run finished."""
    files = {
        name: out / f"{name}.jsonl"
        for name in ("walks", "triples", "tasks", "trajectories", "scores")
    }
    if (
        args.data == "task_driven"
    ):  # the paper's baseline: trajectories of given tasks, all trained on alike
        return task_driven_data(files, args)
    if args.data != "os_genesis":
        raise ValueError(f"--data {args.data!r}: choose os_genesis or task_driven")
    helpers = {}
    helper = lambda path: helpers.get(path) or helpers.setdefault(path, load_helper(path, args))  # noqa: E731
    apps = [a.strip() for a in args.apps.split(",") if a.strip()]
    if not apps or any(a not in APPS for a in apps):
        raise ValueError(f"--apps {args.apps!r}: choose from {sorted(APPS)}")

    # Stage 1: random walks. Triples of a walk without a walk record (killed mid-walk) are dropped.
    walks = read_jsonl_tolerant(files["walks"])
    done = {w["walk_id"] for w in walks}
    triples = [t for t in read_jsonl_tolerant(files["triples"]) if t["walk_id"] in done]
    write_jsonl(files["triples"], triples)
    pool = {(w["app"], rid) for w in walks for rid in w["pooled"]}
    explored = {(t["app"], t["element"]["resource_id"]) for t in triples if t["element"]}
    jobs = [
        (app, i * len(apps) + k) for i in range(args.walks_per_app) for k, app in enumerate(apps)
    ]
    for app, walk_id in tqdm([j for j in jobs if j[1] not in done], desc="1/5 random walks"):
        rng = random.Random(args.seed * 1_000_003 + walk_id)
        filler = (
            rule_text_filler(rng)
            if args.text_filler == "rule"
            else model_text_filler(helper(args.annotator_model), args)
        )
        walk, new_triples = random_walk(app, walk_id, args, pool, explored, filler, rng)
        write_jsonl(files["triples"], new_triples, mode="a")
        write_jsonl(files["walks"], [walk], mode="a")  # written last: marks the walk complete
        walks.append(walk)
        triples += new_triples

    # Stage 2: reverse task synthesis
    synthesized = read_jsonl_tolerant(files["tasks"])
    todo = [t for t in triples if t["triple_id"] not in {s["triple_id"] for s in synthesized}]
    describer = (
        RuleDescriber(args)
        if args.annotator == "rule"
        else ModelDescriber(
            helper(args.annotator_model), args, {w["walk_id"]: w["actions"] for w in walks}
        )
    )
    for start in tqdm(range(0, len(todo), 32), desc="2/5 reverse task synthesis"):
        for t, text in zip(todo[start : start + 32], describer.describe(todo[start : start + 32])):
            parsed = parse_synthesis(text)
            synthesized.append(
                dict(
                    triple_id=t["triple_id"],
                    app=t["app"],
                    annotator=describer.name,
                    valid=parsed is not None,
                    raw=text[:400],
                    low=parsed and parsed["Sub-Instruction"],
                    goal=parsed and parsed["High-Level-Instruction"],
                    answer=parsed and parsed.get("Answer"),
                )
            )
            write_jsonl(files["tasks"], [synthesized[-1]], mode="a")
    unique = list(
        {normalize_answer(t["goal"]): t for t in reversed(synthesized) if t["valid"]}.values()
    )[::-1]  # first wins
    by_triple, held_out = {t["triple_id"]: t for t in triples}, list_tasks(args.eval_split)
    leaked = [t for t in unique if leaks_held_out(t, by_triple[t["triple_id"]], held_out)]
    unique = [
        t for t in unique if t not in leaked
    ]  # a clean split: no held-out task (or instance) is trained on
    launcher = ToyGUIEnv()
    unclear = [
        t
        for t in unique
        if target_reached(task_target(t, by_triple[t["triple_id"]]), launcher.obs, launcher.state)
    ]
    unique = [
        t for t in unique if t not in unclear
    ]  # the change undoes an earlier walk step: no task from the start
    for t in unique:
        t["plan"] = direct_plan(
            t, by_triple[t["triple_id"]]
        )  # the stand-in executor's and judge's plan

    # Stage 3: trajectory collection (15 steps, abort after 3 identical actions)
    trajectories = read_jsonl_tolerant(files["trajectories"])
    todo = [t for t in unique if t["triple_id"] not in {r["task_id"] for r in trajectories}]
    for start in tqdm(range(0, len(todo), 32), desc="3/5 trajectory collection"):
        chunk = todo[start : start + 32]
        if args.executor == "follower":
            agents = [
                PathFollower(
                    t["plan"],
                    t["answer"],
                    args.executor_noise,
                    random.Random(f"{args.seed}-{t['triple_id']}"),
                )
                for t in chunk
            ]
            policy = lambda items, agents=agents: [  # noqa: E731
                (instruction(a, obs["ui_elements"]), a)
                for a, (_, obs, _) in zip([agents[i].act(o) for i, o, _ in items], items)
            ]
        else:
            policy = model_policy(helper(args.annotator_model), args)
        records = run_episodes(
            [Task(t["triple_id"], t["app"], t["goal"]) for t in chunk],
            policy,
            args.max_steps,
            stop_fn=lambda steps: should_abort([s["action"] for s in steps], args.abort_repeats),
        )
        for r in records:
            write_jsonl(files["trajectories"], [r], mode="a")
        trajectories += records

    # Stage 4: trajectory reward model
    tasks_by_id, scores = {t["triple_id"]: t for t in unique}, read_jsonl_tolerant(files["scores"])
    judge = StateJudge() if args.judge == "state" else ModelJudge(helper(args.judge_model), args)
    for traj in tqdm(
        [t for t in trajectories if t["task_id"] not in {s["task_id"] for s in scores}],
        desc="4/5 reward model",
    ):
        score, reason, attempts = judge.score(
            tasks_by_id[traj["task_id"]], by_triple[traj["task_id"]], traj
        )
        scores.append(
            dict(
                task_id=traj["task_id"],
                score=score,
                reason=reason,
                attempts=attempts,
                judge=judge.name,
            )
        )
        write_jsonl(files["scores"], [scores[-1]], mode="a")
    return dict(
        walks=len(walks),
        walk_steps=sum(len(w["actions"]) for w in walks),
        noop_pooled=sum(len(w["pooled"]) for w in walks),
        triples=len(triples),
        tasks_valid=sum(t["valid"] for t in synthesized),
        tasks_invalid=sum(not t["valid"] for t in synthesized),
        tasks_held_out_dropped=len(leaked),
        tasks_unclear_dropped=len(unclear),
        tasks_unique=len(unique),
        trajectories=len(trajectories),
        aborted=sum(t["aborted"] for t in trajectories),
        mean_steps=sum(len(t["steps"]) for t in trajectories) / max(1, len(trajectories)),
        judge_invalid=sum(s["reason"] == "invalid judge output" for s in scores),
        **{f"score_{k}": sum(s["score"] == k for s in scores) for k in range(1, 6)},
    )


def main(args: Args):
    d = init_distributed()
    seed_everything(args.seed)
    out = Path(args.output_dir)
    if d.is_main:
        out.mkdir(parents=True, exist_ok=True)
        if not args.resume:  # a fresh run starts from nothing
            for f in [
                *out.glob("*.jsonl"),
                *(f for f in out.glob("*.json") if f.name != "config.json"),
            ]:
                f.unlink()
            shutil.rmtree(out / "ckpt", ignore_errors=True)
        counts = generate_data(args, out)
        print0(format_table([{"stage": k, "count": v} for k, v in counts.items()]))
        (out / "counts.json").write_text(json.dumps(counts))
    barrier()
    counts = json.loads((out / "counts.json").read_text())

    # ALGO LOGIC: SFT on score-weighted draws of trajectories, two objectives per drawn step
    path = args.model or toy_base(args, d)
    model = load_model(
        path, vlm=args.vlm, dtype="float32"
    )  # fp32 masters; bf16 compute on CUDA via shard_model
    proc = load_processor(path) if args.vlm else load_tokenizer(path)
    encode, tok, per_traj, weights = (
        make_encoder(proc, args.vlm),
        getattr(proc, "tokenizer", proc),
        [],
        [],
    )
    scores = {s["task_id"]: s["score"] for s in read_jsonl_tolerant(out / "scores.jsonl")}
    for traj in tqdm(
        [t for t in read_jsonl_tolerant(out / "trajectories.jsonl") if t["task_id"] in scores],
        desc="SFT samples",
        disable=not d.is_main,
    ):
        if samples := step_samples(traj, args, encode):
            per_traj.append(samples)
            weights.append(scores[traj["task_id"]])
    probs = trm_sampling_probs(weights) if weights else []
    print0(
        f"SFT data: {len(per_traj)} trajectories, {sum(map(len, per_traj))} steps x 2 objectives"
    )
    model = shard_model(model, d, gradient_checkpointing=args.gradient_checkpointing)
    sampler, eval_tasks = (
        make_sampler("hf", model, proc),
        (named_tasks(args) or list_tasks(args.eval_split))[: args.eval_limit or None],
    )
    optimizer = make_optimizer(model, args.learning_rate)
    scheduler = make_scheduler(
        optimizer, "cosine", int(args.warmup_ratio * args.train_steps), args.train_steps
    )
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
    if args.eval_base and not (out / "eval_before.json").exists():
        before = evaluate(sampler, args, eval_tasks)  # every rank evaluates its share of the tasks
        if d.is_main:
            (out / "eval_before.json").write_text(json.dumps(before))
    barrier()
    before = json.loads((out / "eval_before.json").read_text()) if args.eval_base else {}

    model.train()
    progress = tqdm(
        range(start, args.train_steps if per_traj else start), desc="5/5 SFT", disable=not d.is_main
    )
    for step in progress:
        rng = random.Random(
            args.seed * 7919 + step * 131 + d.rank
        )  # the draw depends only on the step: resume-exact
        picks = rng.choices(
            range(len(per_traj)), weights=probs, k=args.batch_size
        )  # P(i) = R_i / sum R
        batch = [
            sample for i in picks for sample in rng.choice(per_traj[i])
        ]  # a random step, both objectives
        loss = sft_micro_steps(model, tok, batch, args.micro_batch_size, d.device)
        for p in (
            model.parameters()
        ):  # unused ones (LLaVA's vision post-layernorm): a zero grad is a zero AdamW update,
            if (
                p.grad is None
            ):  # but gives them optimizer state, which the strict checkpoint loader needs on --resume
                p.grad = torch.zeros_like(p)
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        logger.log({"loss": loss, "lr": scheduler.get_last_lr()[0]}, step + 1)
        progress.set_postfix(loss=f"{loss:.3f}")
        if (step + 1) % args.save_every == 0 or step + 1 == args.train_steps:
            save_checkpoint(out / "ckpt", model, optimizer, scheduler, step + 1)

    after = evaluate(sampler, args, eval_tasks)
    name = "OS-Genesis" if args.data == "os_genesis" else "task-driven"
    if d.is_main:
        (out / "eval_after.json").write_text(json.dumps(after))
        logger.log(
            {f"eval/{k}_before": v for k, v in before.items()}
            | {f"eval/{k}_after": v for k, v in after.items()},
            args.train_steps,
        )
        logger.plot(["loss", "lr"], out / "curves.png", title=f"{name} SFT")
    logger.close()
    if not args.eval_base:
        return
    rows = [{"agent": "base before SFT", **before}, {"agent": f"after {name} SFT", **after}]
    if (
        args.compare and args.data == "os_genesis"
    ):  # the paper's baseline, same base and budget (Table 1)
        del model, sampler, optimizer
        main(
            replace(
                args,
                data="task_driven",
                output_dir=str(out / "task_driven"),
                eval_base=False,
                compare=False,
            )
        )
        rows.insert(
            1,
            {
                "agent": "after task-driven SFT",
                **json.loads((out / "task_driven" / "eval_after.json").read_text()),
            },
        )
    if d.is_main:
        print0(
            f"\nheld-out toy tasks ({args.eval_split} split, {len(eval_tasks)} tasks, max {args.max_steps} steps):\n"
            + format_table(rows)
        )
        claims = os_genesis_claims(rows)
        if claims:
            print0(format_claims(claims))
        write_summary(out, claims, counts=counts, eval={r["agent"]: r for r in rows})


def os_genesis_claims(rows: list[dict]) -> list[dict]:
    """The paper's comparisons (Table 1), computed from this run: OS-Genesis SFT improves on the base,
    OS-Genesis data beats task-driven data on held-out step accuracy, and success moves above the
    base's on the easier tier."""
    by = {r["agent"]: r for r in rows}
    base, genesis, driven = (
        by["base before SFT"],
        by["after OS-Genesis SFT"],
        by.get("after task-driven SFT"),
    )
    claims = [
        claim(
            "OS-Genesis SFT > base: step acc (low)",
            "low_step_acc",
            base["low_step_acc"],
            genesis["low_step_acc"],
        )
    ]
    claims += (
        []
        if driven is None
        else [
            claim(
                "OS-Genesis > task-driven: step acc (high)",
                "high_step_acc",
                driven["high_step_acc"],
                genesis["high_step_acc"],
            ),
            claim(
                "OS-Genesis > task-driven: step acc (low)",
                "low_step_acc",
                driven["low_step_acc"],
                genesis["low_step_acc"],
            ),
        ]
    )
    return claims + [
        claim(
            "OS-Genesis SFT: SR above the base (easy tier)",
            "success_rate_easy",
            base["success_rate_easy"],
            genesis["success_rate_easy"],
        )
    ]


if __name__ == "__main__":
    main(parse_config(Args, PAPER, derived))
