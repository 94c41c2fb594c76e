"""Toy stand-ins for GUIMid's mid-training domains (guimid.py; arXiv 2504.10127, Table 1), made in
code so the CPU default runs offline. A sample is {"messages": [...], "image": PIL | None}.
Also the toy phone's side: the GUI trajectories, the --tasks reader, the expert's last URL (the
progress rate's URL subgoal) and a scripted "open the app, then wait" planner.

| Paper domain    | Toy stand-in                                                        |
|-----------------|---------------------------------------------------------------------|
| MathInstruct    | 2-term arithmetic, one line per partial result (`arithmetic_samples`) |
| Olympiad math   | 4-term arithmetic                                                   |
| Multimodal math | common/shapes_world questions with their chains of thought          |
| CodeI/O         | "predict the output of f(xs)" with a fenced JSON answer (`code_samples`) |
| Non-GUI agents  | a text room: act on the object the task names (`agent_samples`, not in GUIMid) |
| GUI trajectories | common/gui_env's scripted expert on the toy phone (`gui_samples`)  |

codeio.py's own CodeI/O prompts are ~1K tokens each, too long for the CPU budget.
"""

from __future__ import annotations

import json
import random
import re

from common.data import make_arithmetic_rows
from common.gui_env import TASKS, ScriptedExpert, ToyGUIEnv, list_tasks, rollout
from common.gui_formats import (
    action_to_guimid,
    format_guimid,
    history_entry,
    planner_messages,
    planner_target,
    user_msg,
)
from common.shapes_world import make_shapes_rows


def chat(question: str, answer: str, image=None) -> dict:
    """One question/answer sample (the image, if any, goes with the question)."""
    messages = [user_msg(question, image is not None), {"role": "assistant", "content": answer}]
    return {"messages": messages, "image": image}


def arithmetic_cot(expression: str) -> str:
    """Left-to-right partial results, one per line, then the answer."""
    tokens = expression.split()
    value, lines = int(tokens[0]), []
    for op, x in zip(tokens[1::2], tokens[2::2]):
        new = value + int(x) if op == "+" else value - int(x)
        lines.append(f"{value} {op} {x} = {new}.")
        value = new
    return "\n".join(lines + [f"The answer is {value}."])


def arithmetic_samples(n: int, seed: int, num_terms: int, max_value: int) -> list[dict]:
    rows = make_arithmetic_rows(n, seed, num_terms=num_terms, max_value=max_value)
    return [chat(r["question"], arithmetic_cot(r["expression"])) for r in rows]


def shapes_samples(n: int, seed: int) -> list[dict]:
    return [chat(r["question"], r["cot"], r["image"]) for r in make_shapes_rows(n, seed)]


def reverse(xs):
    return xs[::-1]


def add_one(xs):
    return [x + 1 for x in xs]


CODE_FUNCTIONS = [  # (source, function, how the chain of thought says it)
    ("def f(xs):\n    return sorted(xs)", sorted, "sorting"),
    ("def f(xs):\n    return xs[::-1]", reverse, "reversing"),
    ("def f(xs):\n    return max(xs)", max, "the largest of"),
    ("def f(xs):\n    return min(xs)", min, "the smallest of"),
    ("def f(xs):\n    return [x + 1 for x in xs]", add_one, "adding 1 to each of"),
]


def code_samples(n: int, seed: int) -> list[dict]:
    """CodeI/O's task in miniature: a function and an input in; the reasoning, then the output as
    fenced JSON out."""
    rng, out = random.Random(seed), []
    for _ in range(n):
        source, fn, says = rng.choice(CODE_FUNCTIONS)
        xs = [rng.randint(0, 9) for _ in range(rng.randint(2, 4))]
        answer = f"f returns {says} {xs}.\n```json\n{json.dumps({'output': fn(xs)})}\n```"
        out.append(chat(f"Predict the output of f(xs) for xs = {xs}.\n{source}", answer))
    return out


# The toy non-GUI agent world (AlfWorld in miniature): rooms, objects and verbs that are no label
# of the toy phone (tests/test_guimid.py checks), so the domain holds no GUI data.
ROOMS = ["cellar", "bedroom", "garage", "hallway", "attic"]
OBJECTS = ["apple", "bowl", "candle", "fork", "key", "lamp", "cup", "pencil", "plate", "sponge"]
OBJECTS += ["towel", "vase", "watch", "spoon", "cloth", "bottle", "pillow", "hammer"]
AGENT_VERBS = ["take", "open", "clean", "heat", "examine"]


def agent_samples(n: int, seed: int) -> list[dict]:
    """A non-GUI agent step: a room's objects listed, a task that names one object, the earlier
    actions; the answer acts on the named object in the planner's format (a thought, then the
    fenced JSON action). A toy design choice: the paper's AlfWorld rows (MAmmoTH-VL) have their
    own format; here the domain teaches what the planner needs, copying the named item out of
    the task into the JSON."""
    rng, out = random.Random(seed), []
    for _ in range(n):
        things = rng.sample(OBJECTS, rng.randint(3, 6))
        target, verb = rng.choice(things), rng.choice(AGENT_VERBS)
        seen = "\n".join(f"[{i}] {t}" for i, t in enumerate(things))
        past = [
            f"{rng.choice(AGENT_VERBS)} '{rng.choice(OBJECTS)}'" for _ in range(rng.randint(0, 3))
        ]
        past_text = "\n".join(f"step {i + 1}: {h}" for i, h in enumerate(past)) or "none"
        question = f"Task: {verb} the {target}.\nRoom: {rng.choice(ROOMS)}\n"
        question += f"Previous actions:\n{past_text}\nYou see:\n{seen}\nNext action?"
        out.append(chat(question, format_guimid(f"I will {verb} '{target}'.", target, verb)))
    return out


def toy_domain_samples(kind: str, n: int, seed: int) -> list[dict]:
    """n samples of a toy domain: arith2 | arith4 | shapes | codeio | agents."""
    if kind == "arith2":
        return arithmetic_samples(n, seed, 2, 99)
    if kind == "arith4":
        return arithmetic_samples(n, seed, 4, 30)
    if kind == "shapes":
        return shapes_samples(n, seed)
    if kind == "codeio":
        return code_samples(n, seed)
    if kind == "agents":
        return agent_samples(n, seed)
    known = "arith2, arith4, shapes, codeio, agents"
    raise ValueError(f"unknown toy domain {kind!r}; known: {known}")


# ------------------------------------------------------------------------------------------------
# The toy phone (common/gui_env.py): GUI trajectories, tasks, and a scripted planner


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


def gui_samples(tasks: list | int, seed: int, observation: str) -> list[dict]:
    """The expert on the named tasks (a list), or on that many seeded training tasks (0 = all)."""
    if isinstance(tasks, list):
        return expert_gui_samples(tasks, observation)
    return expert_gui_samples(gui_data_tasks(tasks, seed), observation)


def gui_data_tasks(n: int, seed: int) -> list:
    """The training tasks whose expert runs are the GUI data: n seeded ones (0 = all)."""
    train = list_tasks("train")
    return random.Random(seed).sample(train, n) if 0 < n < len(train) else train


def validation_tasks(n: int, seed: int) -> list:
    """The training tasks that are NOT GUI data (`gui_data_tasks(n, seed)`): a validation split
    to choose the toy's knobs on, never the evaluation tasks."""
    used = {t.task_id for t in gui_data_tasks(n, seed)}
    return [t for t in list_tasks("train") if t.task_id not in used]


def named_tasks(spec: str) -> list:
    """GUI-world tasks named by --tasks (comma-separated ids); an unknown id is an error."""
    ids = [i.strip() for i in spec.split(",") if i.strip()]
    if unknown := [i for i in ids if i not in TASKS]:
        raise ValueError(f"--tasks: unknown task id(s) {unknown}; see common/gui_apps.py")
    return [TASKS[i] for i in ids]


def expert_target_url(task) -> str:
    """The URL where the expert acts last: the toy's stand-in for AgentBoard's URL subgoal."""
    return rollout(ToyGUIEnv(), ScriptedExpert(task).act, task)[0][-1]["obs"]["url"]


def open_app_then_wait(apps: dict[str, str], messages: list, images: list) -> list[str]:
    """A scripted planner: open the task's app, then wait (how much PR needs no skill)."""
    texts = [m[0]["content"][-1]["text"] for m in messages]
    return [
        format_guimid("", "", "open_app", apps[re.search(r"Task: (.*)\n", t).group(1)])
        if "Previous actions:\nnone" in t
        else format_guimid("", "", "wait")
        for t in texts
    ]
