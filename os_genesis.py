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
common/gui_env.py; the agent is evaluated on tasks of held-out templates (success rate and
AndroidControl-style step accuracy, high and low level) against the paper's baseline, task-driven
data. Plumbing: common/gui_agents.py; the rule stand-ins: common/gui_standins.py.

Departures (vs the paper and its released `collection/` code):
- Offline, rule-based STAND-INS for GPT-4o (common/gui_standins.py) read the toy phone's state: a
  describer (the triple's state change), an executor that carries out the synthesized task (the
  walk's path minus every step the task does not need) with 15% random slips, and a TRM that scores
  completion + coherence (a detour scores 4, a side effect 3). `--annotator/--text_filler/
  --executor/--judge model` use any LLM/VLM instead.
- A clean split by template: every second task template of each app is held out (the paper tests
  on other benchmarks' tasks); a synthesized task that is an instance of a held-out template (its
  goal, its state change, its question, or its answer) is dropped.
- Task-driven baseline: the scripted expert's trajectories of the training templates' tasks,
  cycled to as many trajectories as the OS-Genesis data (the paper has GPT-4o propose tasks from
  the apps' first screens and execute them).
- Both start from the same warm-started toy base, a tiny VLM taught low-level instruction following
  on random screens, with a tokenizer trained on the phone's screens (the paper starts from
  Qwen2-VL-7B-Instruct).
- One image per prompt (before | after with a red box; the TRM's last 3 screenshots side by side).
- Trajectories start on the launcher (the held-out tasks do); goals are de-duplicated by text; a
  judge output still invalid after 5 tries scores 1; screenshots are replayed, not stored; the
  agent sees the last `--max_history 2` steps (paper: all); the task comes last in its prompt.
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
from dataclasses import dataclass, replace
from functools import partial
from pathlib import Path
from typing import Literal

import torch
from tqdm import tqdm

from common import gui_agents as agents
from common import gui_env as gui
from common import gui_standins as standins
from common.claims import claim, format_claims, write_summary
from common.config import arg, parse_config
from common.gui_agents import (
    ModelDescriber,
    ModelJudge,
    ModelPolicy,
    agent_prompt,
    agent_target,
    run_stage,
)
from common.gui_env import APPS, TASKS, ActionError, GUIAction, Task
from common.processes import in_second_process
from common.sampling import VLLMArgs
from common.train import (
    MetricsLogger,
    cleanup_distributed,
    format_table,
    init_distributed,
    load_checkpoint,
    make_optimizer,
    make_scheduler,
    print0,
    save_checkpoint,
    seed_everything,
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
    baseline_process: bool = arg(True, "one CPU process: run the baseline in a second process")
    driven_trajectories: int = arg(
        0, "task_driven: training tasks cycled to N trajectories (0: each once; compare: OSG's N)"
    )
    tasks: str = arg("", "toy: catalogue task ids for task_driven data AND eval; miniwob: pages")
    eval_base: bool = arg(True, "evaluate the model before SFT too")
    max_history: int = arg(2, "past steps shown to the agent, 0 = all; paper: 0 (all steps)")
    action_space: Literal["coords", "index"] = arg(
        "index", "index: [id] role 'name' + index | {text: (x, y)} + x/y; paper: coords (mobile)"
    )
    base_steps: int = arg(200, "toy base (no --model): steps of low-level instruction following")
    base_tokenizer: Literal["screens", "toy"] = arg("screens", "toy base: BPE on the phone's text")
    train_steps: int = arg(300, "SFT optimizer steps")
    batch_size: int = arg(4, "trajectory draws per step per rank, each -> 2 samples")
    micro_batch_size: int = arg(0, "samples per forward/backward; 0 = all; paper preset: 2")
    gradient_checkpointing: bool = arg(False, "recompute decoder layers; paper preset: True")
    lr: float = arg(3e-3, "AdamW LR; toy 3e-3; paper preset: 1e-5 (not stated in the paper)")
    warmup_ratio: float = arg(0.05, "cosine schedule warmup share")
    save_every: int = arg(100, "checkpoint every N steps")
    max_new_tokens: int = arg(96, "agent generation budget; paper preset: 512")
    eval_split: Literal["test", "train"] = arg(
        "test", "toy: tasks of the held-out templates | of the training templates"
    )
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


# The rules above as the walker and the MiniWoB++ path of common/gui_agents.py apply them
RULES = dict(
    mobile_weights=mobile_walk_weights,
    web_weight=web_element_weight,
    element_action=element_action,
    rubric=rubric_score,
)


# ------------------------------------------------------------------------------------------------
# Stage 2 (paper: 'Reverse Task Synthesis'); the annotator is a stand-in or a model


def parse_synthesis(text: str) -> dict | None:
    """The annotator's JSON, or None (counted as invalid) when a key is missing or empty."""
    try:
        obj = gui._extract_json_object(text)
    except ActionError:
        return None
    keys = ("Sub-Instruction", "High-Level-Instruction")
    return obj if all(isinstance(obj.get(k), str) and obj[k].strip() for k in keys) else None


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


# ------------------------------------------------------------------------------------------------
# Stage 3 (paper: trajectory collection) and stage 4 (paper: 'Trajectory Reward Model')


class Collector:
    """Stage 3 (paper: trajectory collection): run each task from the launcher with the executor,
    15-step cap, abort after 3 identical actions in a row."""

    def __init__(self, args: Args, sampler=None):
        self.args, self.sampler = args, sampler

    def stop(self, steps: list) -> bool:
        return should_abort([s["action"] for s in steps], self.args.abort_repeats)

    def __call__(self, tasks: list[dict]) -> list[dict]:
        args = self.args
        draw = self.sampler is not None  # the stand-in reads no pixels: no screenshots drawn
        make_env = partial(gui.ToyGUIEnv, max_steps=args.max_steps, render=draw)
        if self.sampler is None:
            policy = standins.FollowerPolicy(tasks, args.executor_noise, args.seed)
        else:
            policy = ModelPolicy(self.sampler, args)
        episodes = [Task(t["id"], t["app"], t["goal"]) for t in tasks]
        records = gui.run_episodes(
            episodes, policy, args.max_steps, stop_fn=self.stop, make_env=make_env
        )
        return [dict(id=r["task_id"], **r) for r in records]


class StateJudge:
    """STAND-IN TRM: the paper's rubric on facts read from the replayed toy phone."""

    name = "state"

    def score(self, task: dict, triple: dict, traj: dict) -> tuple[int, str, int]:
        facts = standins.judge_facts(task, triple, traj)
        reason = facts.pop("reason")
        return rubric_score(**facts), reason, 1


def judge_all(trajectories: list[dict], judge, tasks: dict, triples: dict) -> list[dict]:
    """Stage 4 (paper: 'Trajectory Reward Model'): a 1-5 score per trajectory, no filtering."""
    records = []
    for traj in trajectories:
        score, reason, attempts = judge.score(tasks[traj["id"]], triples[traj["id"]], traj)
        records.append(dict(id=traj["id"], score=score, reason=reason, attempts=attempts))
    return records


# ------------------------------------------------------------------------------------------------
# Stages 1-4, each run by every rank on its share and gathered (resumable JSONL records)


def named_tasks(args: Args) -> list[Task]:
    """The catalogue tasks named by --tasks (an unknown id is an error that names it)."""
    ids = [i.strip() for i in args.tasks.split(",") if i.strip()]
    if unknown := [i for i in ids if i not in TASKS]:
        raise ValueError(f"--tasks: unknown task id(s) {unknown}; see common/gui_apps.py")
    return [TASKS[i] for i in ids]


def eval_tasks(args: Args) -> list[Task]:
    """The --tasks, else the catalogue tasks of the held-out templates (--eval_split test) or of
    the training templates (train): common/gui_standins.py, `template_split`."""
    return named_tasks(args) or standins.template_split(args.eval_split)


def run_tasks(args: Args) -> list[Task]:
    """The evaluation's toy tasks, the first --eval_limit (miniwob: evaluate_web picks its own)."""
    tasks = [] if args.env == "miniwob" else eval_tasks(args)
    return tasks[: args.eval_limit or None]


def generate_data(args: Args, out: Path, dist_info) -> tuple[list, dict, dict]:
    """Stages 1-4 (or the baseline's expert trajectories): (trajectories, {id: score}, counts)."""
    if args.env == "miniwob":
        return agents.generate_web_data(args, out, dist_info, RULES)
    if args.data == "task_driven":  # the paper's baseline: trajectories of given tasks, score 5
        catalogue = named_tasks(args) or standins.template_split("train")
        n = args.driven_trajectories or len(catalogue)  # the training tasks, cycled to n
        tasks = [dict(id=f"{k}", task_id=catalogue[k % len(catalogue)].task_id) for k in range(n)]
        work = partial(standins.expert_trajectories, max_steps=args.max_steps)
        trajectories = run_stage(out, "trajectories", tasks, work, dist_info)
        steps = sum(len(t["steps"]) for t in trajectories)
        counts = dict(trajectories=len(trajectories), steps=steps)
        counts.update(mean_steps=steps / len(trajectories))
        return trajectories, {t["id"]: 5 for t in trajectories}, counts
    apps = [a.strip() for a in args.apps.split(",") if a.strip()]
    if not apps or any(a not in APPS for a in apps):
        raise ValueError(f"--apps {args.apps!r}: choose from {sorted(APPS)}")
    helpers = agents.HelperModels(args)
    jobs = [
        dict(id=i * len(apps) + k, app=app)
        for i in range(args.walks_per_app)
        for k, app in enumerate(apps)
    ]
    filler = helpers.get(args.annotator_model) if args.text_filler == "model" else None
    walker = agents.Walker(args, RULES, agents.read_records(out, "walks"), filler)
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
    held_out = eval_tasks(args)
    tasks, leaked, unclear = standins.trainable_tasks(synthesized, by_triple, held_out)

    executor = helpers.get(args.annotator_model) if args.executor == "model" else None
    trajectories = run_stage(out, "trajectories", tasks, Collector(args, executor), dist_info)
    if args.judge == "state":
        judge = StateJudge()
    else:
        judge = ModelJudge(helpers.get(args.judge_model), args, parse_trm_output)
    work = partial(judge_all, judge=judge, tasks={t["id"]: t for t in tasks}, triples=by_triple)
    scores = run_stage(out, "scores", trajectories, work, dist_info)
    counts = agents.stage_counts(walks, synthesized, (leaked, unclear), tasks, trajectories, scores)
    return trajectories, {s["id"]: s["score"] for s in scores}, counts


# ------------------------------------------------------------------------------------------------
# Stage 5: SFT on the paper's two objectives, score-weighted draws


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


def fine_tune(args: Args, base: str, data: tuple, out: Path, dist_info) -> tuple:
    """Stage 5 (paper: training): SFT on score-weighted draws, two objectives per drawn step."""
    seed_everything(args.seed)
    model, proc, sampler = agents.load_agent(base, args, dist_info)
    tok, encode = getattr(proc, "tokenizer", proc), agents.make_encoder(proc, args.vlm)
    trajectories, scores, _ = data
    replay = agents.replay_screens(args)
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
        loss = agents.sft_micro_steps(model, tok, batch, args.micro_batch_size, dist_info.device)
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


# ------------------------------------------------------------------------------------------------
# The run: OS-Genesis data and task-driven data, each -> SFT -> evaluation on held-out tasks


def sft_and_evaluate(args: Args, base: str, data: tuple, tasks: list, dist_info) -> dict:
    """Stage 5 into args.output_dir: SFT on `data`, then the agent's evaluation (its table row)."""
    out = Path(args.output_dir)
    print0(format_table([{"stage": k, "count": v} for k, v in data[2].items()]))
    if dist_info.is_main:
        (out / "counts.json").write_text(json.dumps(data[2]))
    sampler, logger = fine_tune(args, base, data, out, dist_info)
    after = agents.evaluate_agent(sampler, args, tasks, dist_info)
    name = "OS-Genesis" if args.data == "os_genesis" else "task-driven"
    if dist_info.is_main:
        (out / "eval_after.json").write_text(json.dumps(after))
        logger.log({f"eval/{k}": v for k, v in after.items()}, args.train_steps)
        logger.plot(["loss", "lr"], out / "curves.png", title=f"{name} SFT")
    logger.close()
    return {"agent": f"after {name} SFT", **after, "counts": data[2]}


def run_data_and_sft(args: Args, base: str, dist_info) -> dict:
    """Stages 1-5 (or the baseline's data and stage 5) into a fresh args.output_dir."""
    out = agents.fresh_output_dir(args, dist_info)
    data = generate_data(args, out, dist_info)
    return sft_and_evaluate(args, base, data, run_tasks(args), dist_info)


def start_baseline(args: Args, base: str, n: int, dist_info):
    """The paper's baseline (Table 1), task-driven data cycled to OSG's `n` trajectories, into
    <output_dir>/task_driven: a call that gives its row. --baseline_process, one CPU process: it
    starts now in a second process beside OSG's SFT (one thread each); else it runs when called."""
    out = Path(args.output_dir) / "task_driven"
    driven = replace(args, data="task_driven", driven_trajectories=n, output_dir=str(out))
    if args.baseline_process and dist_info.world_size == 1 and dist_info.device.type == "cpu":
        return in_second_process(out / "log.txt", run_data_and_sft, driven, base, dist_info)
    return partial(run_data_and_sft, driven, base, dist_info)


def report(args: Args, rows: list[dict], counts: dict, genesis: str, tasks: list):
    """Rank 0: the data and evaluation tables, the claims, summary.json."""
    out = Path(args.output_dir)
    data = [
        {"SFT data": a, "trajectories": c["trajectories"], "steps": c.get("steps")}
        for a, c in counts.items()
    ]
    print0("\n" + format_table(data))  # --compare: task-driven gets as many trajectories as OSG
    where = "MiniWoB page instances" if args.env == "miniwob" else f"{len(tasks)} toy tasks"
    print0(f"\nheld-out {where} ({args.eval_split} split):\n" + format_table(rows))
    claims = os_genesis_claims(rows) if args.eval_base and args.env == "toy" else []
    print0(format_claims(claims))
    evals = {r["agent"]: r for r in rows}
    write_summary(out, claims, counts=counts[genesis], data=data, eval=evals)


def main(args: Args):
    dist_info = init_distributed()
    if not args.model and dist_info.world_size == 1:  # the toy: the same numbers on any machine,
        torch.set_num_threads(1)  # and one core each for the baseline's second process
    seed_everything(args.seed)
    base = args.model or agents.toy_base(args, dist_info)
    tasks = run_tasks(args)
    out = agents.fresh_output_dir(args, dist_info)
    # ALGO LOGIC: OS-Genesis data (stages 1-4) -> SFT; the same SFT on task-driven data
    data = generate_data(args, out, dist_info)
    compare = args.compare and args.data == "os_genesis"  # as many trajectories as OSG's data
    baseline = compare and start_baseline(args, base, data[2]["trajectories"], dist_info)
    genesis = sft_and_evaluate(args, base, data, tasks, dist_info)
    rows = []
    if args.eval_base:
        before = agents.evaluate_once(base, args, tasks, dist_info, out / "eval_before.json")
        rows.append({"agent": "base before SFT", **before})
    if baseline:
        rows.append(baseline())
    rows.append(genesis)
    counts = {r["agent"]: r.pop("counts") for r in rows if "counts" in r}
    if dist_info.is_main:
        report(args, rows, counts, genesis["agent"], tasks)
    cleanup_distributed()


def os_genesis_claims(rows: list[dict]) -> list[dict]:
    """The paper's comparisons (Table 1), from this run: OS-Genesis SFT improves on the base,
    OS-Genesis data beats task-driven data on held-out step accuracy, and success on the easier
    tier moves above the base's."""
    by = {r["agent"]: r for r in rows}
    base, genesis = by["base before SFT"], by["after OS-Genesis SFT"]
    driven = by.get("after task-driven SFT")
    low = "low_step_acc"
    claims = [claim("OS-Genesis SFT > base: step acc (low)", low, base[low], genesis[low])]
    for level in ("high", "low") if driven else ():
        metric = f"{level}_step_acc"
        name = f"OS-Genesis > task-driven: step acc ({level})"
        claims.append(claim(name, metric, driven[metric], genesis[metric]))
    name = "OS-Genesis SFT: SR above the base (easy tier)"
    base_sr, sr = base["success_rate_easy"], genesis["success_rate_easy"]
    return claims + [claim(name, "success_rate_easy", base_sr, sr)]


if __name__ == "__main__":
    main(parse_config(Args, PAPER, derived))
