"""The plumbing of os_genesis.py around a GUI environment (docs/os_genesis.md).

The script keeps the paper's rules, stage sequence and training; this file holds what runs them:
- resumable stages (`run_stage`): every rank runs its share and appends to its own JSONL file;
- the agent's format (mobile training format of the released data: screenshot + a11y, history,
  task -> "Low-level thought: ...\naction: {json}") and its encoder;
- the frozen helper models and the model-backed roles (text filler, reverse-synthesis annotator,
  the M3A-style executor/agent `ModelPolicy`, the TRM `ModelJudge`), twins of the rule stand-ins
  of common/gui_standins.py;
- stage 1's random walker (`Walker`), which applies the script's walk rules;
- the evaluation harness (toy phone: success rate per tier and AndroidControl-style step
  accuracy; MiniWoB++ pages: the page's own reward);
- the MiniWoB++ data path (`generate_web_data`) and the toy base (`toy_base`).
Functions passed as `code=` to `common.toys.toy_model` (base_samples, agent_prompt, agent_target,
make_encoder, sft_micro_steps) are hashed into the toy base's cache key: edit them and it rebuilds.
"""

from __future__ import annotations

import json
import random
import shutil
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from PIL import ImageDraw
from tqdm import tqdm

from common import gui_env as gui
from common import gui_standins as standins
from common import miniwob_env as web
from common.data import read_jsonl_tolerant, write_jsonl
from common.gui_base import walk_action
from common.gui_env import APPS, TASKS, ActionError, GUIAction, Task, ToyGUIEnv
from common.models import (
    end_of_turn,
    load_model,
    load_processor,
    load_tokenizer,
    make_tiny_lm,
    make_tiny_vlm,
    tokenizer_corpus,
)
from common.sampling import finish_local, generate_local, generate_sharded, make_sampler
from common.toys import toy_model
from common.train import (
    all_gather_object,
    barrier,
    make_optimizer,
    micro_batches,
    sft_inputs,
    sft_loss,
    shard_model,
)

if TYPE_CHECKING:
    from os_genesis import Args


# ------------------------------------------------------------------------------------------------
# Resumable stages: each rank runs its share and appends to its own JSONL file; records gathered


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


# ------------------------------------------------------------------------------------------------
# The agent's format (paper: mobile training format) and its encoder


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


# ------------------------------------------------------------------------------------------------
# The frozen helper models and the model-backed roles (twins of common/gui_standins.py)


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


class ModelJudge:
    """Released genesis_rm.py with any VLM/LLM: instruction + step summaries + the last 3
    screenshots, T=0.5, top_p 0.9, up to 5 tries; `parse(text) -> (reason, score or None)`."""

    name = "model"

    def __init__(self, sampler, args: Args, parse):
        self.sampler, self.args, self.parse = sampler, args, parse

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
            reason, score = self.parse(text)
            if score is not None:
                return score, reason, attempt
        return 1, "invalid judge output", self.args.judge_retries


def stage_counts(walks, synthesized, dropped: tuple, tasks, trajectories, scores) -> dict:
    """The stage table of stages 1-4 (counts.json); `dropped`: (held-out instances, unclear)."""
    steps = sum(len(t["steps"]) for t in trajectories)
    return dict(
        walks=len(walks),
        walk_steps=sum(len(w["actions"]) for w in walks),
        noop_pooled=sum(len(w["pooled"]) for w in walks),
        triples=sum(len(w["triples"]) for w in walks),
        tasks_valid=sum(t["valid"] for t in synthesized),
        tasks_invalid=sum(not t["valid"] for t in synthesized),
        tasks_held_out_dropped=dropped[0],
        tasks_unclear_dropped=dropped[1],
        tasks_unique=len(tasks),
        trajectories=len(trajectories),
        aborted=sum(t["aborted"] for t in trajectories),
        steps=steps,
        mean_steps=steps / max(1, len(trajectories)),
        judge_invalid=sum(s["reason"] == "invalid judge output" for s in scores),
        **{f"score_{k}": sum(s["score"] == k for s in scores) for k in range(1, 6)},
    )


# ------------------------------------------------------------------------------------------------
# Stage 1: random walks on the toy phone (the rules come from os_genesis.py)


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
    app) and records nothing; every real change records a (before, action, after) triple.
    `rules`: os_genesis.RULES (the walk weights and the element action of the released walkers)."""

    def __init__(self, args: Args, rules: dict, done: list[dict], filler_sampler=None):
        self.args, self.rules, self.filler_sampler = args, rules, filler_sampler
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
                self.rules["web_weight"](
                    e["role"],
                    (app, e["resource_id"]) in self.explored,
                    e["resource_id"] not in previous,
                )
                for e in elements
            ]
        else:
            options += [("scroll", "down"), ("scroll", "up"), ("back", None)]
            weights = self.rules["mobile_weights"](
                len(elements), args.interactive_weight, args.nav_weight
            )
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
        env = ToyGUIEnv(
            Task(f"walk{walk_id}", app, "", start_app=app), max_steps=10**6, render=False
        )
        obs, actions, triples, pooled, path, previous = env.obs, [], [], [], [], set()
        seen = {(obs["url"], gui.screen_signature(obs)): 0}  # screen -> length of the path to it
        for step in range(args.walk_steps):
            kind, target = self.choose(obs, app, previous, rng)
            if kind == "stop":
                break
            if kind == "element":
                text = filler(target["text"], APPS[app].label) if target["is_editable"] else ""
                action = self.rules["element_action"](target, args.long_press_ratio, rng, text)
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


# ------------------------------------------------------------------------------------------------
# Evaluation: held-out toy tasks


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

    def __init__(self, args: Args, rules: dict):
        self.args, self.memo = args, dict(pool=set(), explored=set())
        self.element_action = rules["element_action"]
        self.rules = dict(weight=rules["web_weight"], action=self.act)

    def act(self, element: dict, rng) -> GUIAction:
        text = standins.rule_text_filler(rng)(element["text"], "web")
        return self.element_action(element, 0.0, rng, text)

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


def page_judge(trajectories: list[dict], triples: dict, rubric) -> list[dict]:
    """Stage 4 on pages: the paper's rubric on the stand-in's facts."""
    out = []
    for traj in trajectories:
        facts = web.web_judge_facts(triples[traj["id"]], traj)
        reason = facts.pop("reason")
        out.append(dict(id=traj["id"], score=rubric(**facts), reason=reason, attempts=1))
    return out


def generate_web_data(args: Args, out: Path, dist_info, rules: dict) -> tuple[list, dict, dict]:
    """Stages 1-4 on MiniWoB pages (rule stand-ins; --executor model runs the model agent) with
    the script's `rules`. Task-driven data: the scripted expert on the walked page instances, with
    the pages' goals."""
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
    walks = run_stage(out, "walks", jobs, PageWalker(args, rules), dist_info, chunk=1)
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
    work = partial(page_judge, triples=triples, rubric=rules["rubric"])
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


def phone_corpus(args: Args, n_walks: int = 200, walk_length: int = 10) -> list[str]:
    """What the agent reads and writes on the toy phone, for a tokenizer of its own: the shared
    toy corpus, the accessibility trees of seeded random walks (screens, no task's goal) and the
    agent's output for each walk action (a pretrained VLM's tokenizer holds 'Settings' or
    'Bluetooth' as one token; the shared toy tokenizer spells them out)."""
    texts = list(tokenizer_corpus())
    for k in range(n_walks):
        rng = random.Random(f"phone-corpus-{k}")
        env = ToyGUIEnv(Task("corpus", "", ""), max_steps=10**6, render=False)
        obs = env.obs
        for _ in range(walk_length):
            action = walk_action(rng, obs)
            thought = gui.instruction(action, obs["ui_elements"])
            texts += [obs["axtree_txt"], agent_target(action, obs, args, thought)]
            obs = env.step(action)[0]
    return texts


def toy_base(args: Args, dist_info) -> str:
    """The warm-started toy base, built once by rank 0 and cached (common.toys.toy_model)."""
    spec = dict(seed=args.seed, vlm=args.vlm, steps=args.base_steps, action_space=args.action_space)
    spec |= dict(tokenizer=args.base_tokenizer) if args.base_tokenizer != "toy" else {}

    def build(folder: Path):
        texts = phone_corpus(args) if args.base_tokenizer == "screens" else None
        tiny = make_tiny_vlm(texts=texts) if args.vlm else make_tiny_lm(texts=texts)
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
    code += [gui.instruction, phone_corpus, walk_action]
    path = toy_model("os_genesis-base", spec, build, code=code) if dist_info.is_main else None
    barrier()  # rank 0 builds; the others then find it in the cache
    return path or toy_model("os_genesis-base", spec, build, code=code)


# ------------------------------------------------------------------------------------------------
# Loading, evaluating once, fresh output folders


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
