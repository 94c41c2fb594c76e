"""Evaluating a planner-style GUI agent (guimid.py): the environment and tasks that the flags name
(the toy phone, MiniWoB++ or an external `module:function`), the agent's episodes split over
ranks and gathered in task order, SR/PR summaries, and the --eval_only table.
"""

from __future__ import annotations

import functools
import importlib
import random
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

from common.claims import write_summary
from common.data import write_jsonl
from common.gui_base import toy_base, word_vlm
from common.gui_env import ToyGUIEnv, list_tasks, run_episodes
from common.gui_formats import ModelGrounder, Planner, StubGrounder
from common.models import load_processor, make_tiny_vlm
from common.sampling import finish_local, generate_local
from common.toy_domains import expert_target_url, named_tasks, validation_tasks
from common.train import (
    all_gather_object,
    barrier,
    cleanup_distributed,
    format_table,
    precision_policy,
    print0,
)


@dataclass
class Setup:
    """What every condition shares: the flags, ranks, base model, GUI tasks and grounder."""

    args: object  # the script's Args
    dist_info: object
    model_path: str
    processor: object
    make_env: object  # () -> a GUIEnvironment
    tasks: list  # the evaluation tasks
    target_urls: dict  # {task_id: the expert's last URL} (toy phone only)
    grounder: object
    out: Path


def setup(args, dist_info, gui_seed: int = 0) -> Setup:
    """The base model, the GUI environment (--env / --env_factory / the toy phone) with its
    evaluation tasks, and the grounder. `gui_seed` picks the GUI-data tasks (--eval_split val:
    the other training tasks)."""
    model_path = args.model or toy_base_path(args, dist_info)
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
        tasks = named_tasks(args.tasks) or (
            validation_tasks(args.gui_tasks, gui_seed)
            if args.eval_split == "val"
            else list_tasks(None if args.eval_split == "all" else args.eval_split)
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


def toy_base_path(args, dist_info) -> str:
    """The toy base (no --model): the tiny LLaVA taught low-level instruction following in the
    planner format (common/gui_base.py), built once by rank 0; or, --base_steps 0, as built."""
    if not args.base_steps:
        return make_tiny_vlm() if args.base_tokenizer == "toy" else word_vlm()
    build = functools.partial(toy_base, tokenizer=args.base_tokenizer)
    path = build(args.seed, args.observation, args.base_steps) if dist_info.is_main else None
    barrier()  # rank 0 builds; the others then find it in the cache
    return path or build(args.seed, args.observation, args.base_steps)


def model_generate(sampler, max_new_tokens: int, messages: list, images: list) -> list[str]:
    """Greedy planner outputs (T=0, as the paper evaluates); each rank its own prompts."""
    outs = generate_local(
        sampler, messages, images=images, temperature=0, max_new_tokens=max_new_tokens
    )
    return [c[0].text for c in outs]


def play_episodes(generate, run: Setup, sampler=None) -> list[dict]:
    """The planner (`common.gui_formats.Planner`) in the one agent loop on every task: each rank
    its share, the step records gathered in task order."""
    args, dist_info = run.args, run.dist_info
    policy = Planner(generate, run.grounder, args.observation)
    batch = 1 if args.env == "miniwob" else None  # one browser: one episode at a time
    mine = run.tasks[dist_info.rank :: dist_info.world_size]
    records = run_episodes(
        mine, policy, args.max_episode_steps, make_env=run.make_env, batch_size=batch
    )
    if sampler is not None:  # FSDP2: keep joining the other ranks' generate rounds
        finish_local(sampler, temperature=0, max_new_tokens=args.max_new_tokens)
    parts = all_gather_object(records)
    world = dist_info.world_size
    return [parts[k % world][k // world] for k in range(len(run.tasks))]


def scores(results: list[dict]) -> dict:
    """SR, mean PR and the share of invalid steps over episode results."""
    n, steps = max(1, len(results)), max(1, sum(r["steps"] for r in results))
    return dict(
        SR=sum(r["success"] for r in results) / n,
        PR=sum(r["pr"] for r in results) / n,
        invalid_rate=sum(r["invalid"] for r in results) / steps,
    )


def report_eval_only(run: Setup, results: list[dict]):
    """--eval_only: SR per task (MiniWoB: next to a random agent), printed and written."""
    args = run.args
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
