"""Rule-based STAND-INS for the big models of os_genesis.py, on the toy phone (common/gui_env.py).

OS-Genesis (arXiv 2412.19723) calls GPT-4o (gpt-4o-mini for text fields) in four roles. Offline,
each role is played here by rules that read the toy phone's state, where GPT-4o reads screenshots;
each sits behind the same interface as its model-backed twin in common/gui_agents.py:
- text filler: `rule_text_filler(rng)(field, app) -> str` (small per-field word lists);
- reverse-synthesis annotator: `RuleDescriber.describe(triples) -> [raw JSON text]` (names the
  triple's state change, asks a question about an info screen, or names the screen it opened);
- executor (the paper's M3A agent): `FollowerPolicy` runs `direct_plan`, the walk's path minus every
  step the task does not need, with random slips;
- trajectory reward model: `judge_facts` reads completion and coherence from the replayed env state;
  os_genesis.StateJudge turns them into the paper's 1-5 rubric.
Also here: the clean split by task template (`template_split`: held-out tasks come from templates
no training data is built from; `leaks_held_out` drops synthesized instances of them) and the
scripted expert's trajectories of catalogue tasks (the task-driven baseline). Nothing in this file
is OS-Genesis's algorithm.
"""

from __future__ import annotations

import json
import random
import re
from functools import partial

from common.gui_env import (
    APPS,
    TASKS,
    GUIAction,
    ScriptedExpert,
    Task,
    ToyGUIEnv,
    instruction,
    normalize_answer,
    run_episodes,
    state_diff,
)

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
# element on an info screen -> (question, which part of the element holds the answer)
QUESTIONS = {
    "price": ("How much does the {title} cost?", "last_word"),
    "android_version": ("Which Android version is this phone running?", "last_word"),
    "subject": ("What is the subject of the email from {sender}?", "text"),
    "body_box": ("What does the note '{note}' say?", "value"),
}
FIELD_TEXTS = {  # none is a held-out task's parameter
    "title": ["Shopping", "Todo", "Plans"],
    "body": ["call mom", "buy bread", "hello"],
    "to": ["dave", "erin", "grace"],
    "subject": ["Hi", "Update", "Question"],
    "address": ["1 Main St", "7 Hill Rd"],
    "device": ["My Phone", "Toy 2"],
    "search": ["mug", "seed", "novel", "pan"],
}


RECORD_LISTS = ("notes", "emails", "orders", "sent")


def _record_change(key: str, old: list, new: list) -> str | None:
    """The task a change of a notes/emails/orders/sent list accomplishes."""
    added = [x for x in new if x not in old]
    removed = [x for x in old if x not in new]
    if key == "orders":
        return f"Order {' and '.join(added[0]['items'])} to {added[0]['address']}."
    if key == "sent" and added[0]["subject"].startswith("Re:"):  # the catalogue's reply phrasing
        return f"Reply to {added[0]['to']}'s email saying '{added[0]['body']}'."
    if key == "sent":
        return f"Send an email to {added[0]['to']} with the subject '{added[0]['subject']}'."
    for a in added:
        b = next((r for r in removed if r["id"] == a["id"]), None)
        if b is None:
            return f"Create a note titled '{a['title']}' that says '{a['body']}'."
        noun = f"the note '{b['title']}'" if key == "notes" else f"the email from {a['sender']}"
        if key == "notes" and a["pinned"] != b["pinned"]:
            return f"{'Pin' if a['pinned'] else 'Unpin'} {noun}."
        if key == "emails" and a["starred"] != b["starred"]:
            return f"{'Star' if a['starred'] else 'Unstar'} {noun}."
        if a.get("title") != b.get("title"):
            return f"Rename {noun} to '{a['title']}'."
        return f"Edit {noun}."
    if removed and key == "notes":
        return f"Delete the note '{removed[0]['title']}'."
    if removed:
        return f"Delete the email from {removed[0]['sender']}."
    return None


def describe_state_change(diff: list) -> str | None:
    """The user task a `state_diff` accomplishes ("Turn on Bluetooth."), or None when nothing in the
    app state changed (the action only moved between screens)."""
    for path, old, new in diff:
        _app, key, *rest = path.strip("/").split("/")
        if key in SWITCHES:
            return f"Turn {'on' if new else 'off'} {SWITCHES[key]}."
        if key in SETTINGS:
            return SETTINGS[key].format(new.lower() if key == "font_size" else new)
        if key == "cart" and new:
            return f"Add {new - (old or 0)} {rest[0]} to the cart."
        if key == "cart":
            return f"Remove {rest[0]} from the cart."
        task = _record_change(key, old or [], new or []) if key in RECORD_LISTS else None
        if task:
            return task
    return None


def screen_question(after: list, title: str) -> tuple[str, str] | None:
    """A question answerable from a screen (elements as [resource_id, text, value] rows) and its
    answer, or None when the screen shows nothing to ask about."""
    info = {rid: (text, value) for rid, text, value in after}
    rid = next((r for r in QUESTIONS if r in info), None)
    if rid is None:
        return None
    template, part = QUESTIONS[rid]
    text, value = info[rid]
    answer = {"last_word": text.split()[-1] if text else "", "text": text, "value": value}[part]
    sender = info.get("from", ("", ""))[0].removeprefix("From: ")
    note = info.get("title_box", ("", ""))[1]
    return template.format(title=title, note=note, sender=sender), answer


def rule_text_filler(rng: random.Random):
    """STAND-IN for gpt-4o-mini filling a field: a seeded pick from the field's word list."""

    def fill(field_name: str, app: str) -> str:
        key = next((k for k in FIELD_TEXTS if k in field_name.lower()), None)
        return rng.choice(FIELD_TEXTS[key]) if key else "Test Input"

    return fill


class RuleDescriber:
    """STAND-IN for the GPT-4o annotator: the same JSON, written from the triple's a11y and diff."""

    name = "rule"

    def __init__(self, question_ratio: float, serve: bool = True):
        self.question_ratio, self.serve = question_ratio, serve

    def describe(self, triples: list[dict]) -> list[str]:
        return [self.describe_one(t) for t in triples]

    def describe_one(self, t: dict) -> str:
        high, answer = describe_state_change(t["diff"]), None
        if high is None and t["action"]["action_type"] == "input_text":
            field_name, screen = t["element"]["text"], t["title_after"]
            high = f"Type '{t['action']['text']}' into the {field_name} field of {screen}."
        if high is None and random.Random(t["triple_id"]).random() < self.question_ratio:
            high, answer = screen_question(t["after"], t["title_after"]) or (None, None)
        served, extra = served_task(t) if high is None and self.serve else None, {}
        if served:  # stand-in only: the step that completes it and the change it makes
            high, extra = served[0], {"Steps": [served[1]], "Change": served[2]}
        record = {
            "Sub-Instruction": t["action_text"][:1].upper() + t["action_text"][1:] + ".",
            "Analysis": f"The screen went from {t['title_before']} to {t['title_after']}.",
            "High-Level-Instruction": high
            or f"Open the {t['title_after']} screen in {APPS[t['app']].label}.",
        }
        # "Answer" (and "Steps", "Change") are read by the stand-in executor and judge only
        return json.dumps(record | extra | ({"Answer": answer} if answer else {}))


def served_task(t: dict) -> tuple[str, list, list] | None:
    """A step that only opens a screen serves a task done there (the paper's prompt asks for "a
    task that this action helps to complete"): the first element on the opened screen, in a seeded
    order, whose click makes a describable change. (goal, that click, the change) or None."""
    plan = [["open_app", APPS[t["app"]].label]] + t["path"] + [t["final_step"]]
    done = run_plan(plan, t["app"])
    if done is None:
        return None
    env, obs = done
    before = json.loads(json.dumps(env.state))
    elements = [e for e in obs["ui_elements"] if e["is_clickable"] and not e["is_editable"]]
    random.Random(t["triple_id"]).shuffle(elements)
    for element in elements:
        step = ["click", element["resource_id"]]
        trial = run_plan(plan + [step], t["app"])  # a fresh env: the apps' callbacks hold state
        if trial is None:
            continue
        diff = [d for d in state_diff(before, trial[0].state) if not d[0].startswith("/system/")]
        goal = describe_state_change(diff)
        if goal:
            return goal, step, diff
    return None


# ------------------------------------------------------------------------------------------------
# State arithmetic: what a task asks for and whether a state has it


def apply_diff(state: dict, diff: list) -> dict:
    """`state` with a `state_diff` applied on top (list changes as add/remove of items). A change is
    already present in `state` exactly when `state_diff(apply_diff(state, diff), state)` is
    empty."""
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


def canonical(state):
    """Lists of records in a fixed order: an edited note stays in place, `apply_diff` appends it."""
    if isinstance(state, dict):
        return {k: canonical(v) for k, v in state.items() if k != "system"}
    if isinstance(state, list):
        return sorted((canonical(x) for x in state), key=lambda x: json.dumps(x, sort_keys=True))
    return state


def initial_phone_state() -> dict:
    """The phone's state after reset (every walk, trajectory and held-out task starts here)."""
    return json.loads(json.dumps(ToyGUIEnv(render=False).state))


def task_target(task: dict, triple: dict) -> dict:
    """What a synthesized task asks for: the triple's state change, the answer on its after-screen,
    the text typed into its field, or else reaching its after-screen."""
    if task.get("change"):  # a task the triple's step serves, done one step further
        return dict(kind="change", diff=task["change"])
    diff = [d for d in triple["diff"] if not d[0].startswith("/system/")]  # where the agent is
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


# The catalogue's task templates (common/gui_apps.py), per app in catalogue order: a goal's
# template is the first pattern that matches its start (lower case). The rule describer writes
# goals in the same phrasing; a model's goal is also matched through the change it asks for.
TEMPLATES = {
    "settings": [
        ("settings_switch", r"turn (on|off) (?!5g)"),
        ("settings_network", r"connect to the wi-fi network "),
        ("settings_brightness", r"set the brightness to "),
        ("settings_volume", r"set the volume to "),
        ("settings_font", r"change the font size to "),
        ("settings_rename", r"rename this phone to "),
        ("settings_question", r"(which android version|what is the model name)"),
        ("settings_infeasible", r"turn on 5g"),
    ],
    "notes": [
        ("notes_create", r"create a note titled "),
        ("notes_delete", r"delete the note "),
        ("notes_pin", r"(un)?pin the note "),
        ("notes_rename", r"rename the note "),
        ("notes_question", r"(what is the wi-fi password|which city is in my|what does the note)"),
    ],
    "shop": [
        ("shop_cart", r"(add \d+ .* to the cart|remove .* from the cart)"),
        ("shop_order", r"order "),
        ("shop_price", r"how much does the "),
        ("shop_infeasible", r"buy a laptop"),
    ],
    "mail": [
        ("mail_send", r"send an email to "),
        ("mail_star", r"(un)?star the email from "),
        ("mail_delete", r"delete the email from "),
        ("mail_reply", r"reply to "),
        ("mail_question", r"what is the subject of the email from "),
    ],
}


def goal_template(goal: str | None) -> str | None:
    """The catalogue template a goal is an instance of ("Turn on Wi-Fi." -> "settings_switch"), or
    None (e.g. "Open the Font size screen in Settings.")."""
    text = (goal or "").strip().lower()
    for patterns in TEMPLATES.values():
        name = next((n for n, p in patterns if re.match(p, text)), None)
        if name:
            return name
    return None


def held_out_templates() -> set[str]:
    """A clean split by template: every second template of each app in catalogue order (a fixed
    rule, not chosen by result). Their tasks are the held-out tasks; no training data, OS-Genesis
    or task-driven, is built from them."""
    return {name for patterns in TEMPLATES.values() for name, _ in patterns[1::2]}


def template_split(split: str) -> list[Task]:
    """The catalogue tasks of the held-out templates ("test") or of the others ("train")."""
    held_out = held_out_templates()
    return [t for t in TASKS.values() if (goal_template(t.goal) in held_out) == (split == "test")]


def leaks_held_out(task: dict, triple: dict, held_out: list[Task]) -> bool:
    """True when a synthesized task is an instance of a held-out task's template: its goal reads as
    one, the state change it asks for reads as one (or passes a held-out check), it asks the
    question of a held-out template about the screen it opened, or its answer is a held-out
    answer."""
    templates = {goal_template(t.goal) for t in held_out} - {None}
    if goal_template(task["goal"]) in templates:
        return True
    answers = {normalize_answer(t.answer) for t in held_out if t.answer}
    if task.get("answer") and normalize_answer(task["answer"]) in answers:
        return True
    target = task_target(task, triple)
    if target["kind"] == "answer":
        question = screen_question(triple["after"], triple["title_after"])
        return bool(question) and goal_template(question[0]) in templates
    if target["kind"] != "change":
        return False
    if goal_template(describe_state_change(target["diff"])) in templates:
        return True
    start = initial_phone_state()
    after = apply_diff(start, target["diff"])
    return any(t.check is not None and t.check(after) and not t.check(start) for t in held_out)


# ------------------------------------------------------------------------------------------------
# The executor stand-in: plans addressed by resource id


def plan_step(action: GUIAction, ui_elements: list[dict]) -> list:
    """The action as a resource-id step, which the follower replays on whatever screen it sees."""
    kind = action.action_type
    if kind in ("input_text", "click", "long_press"):
        rid = ui_elements[action.index]["resource_id"]
        return ["type", rid, action.text] if kind == "input_text" else [kind, rid]
    return ["scroll", action.direction] if kind == "scroll" else ["back"]


class PathFollower:
    """STAND-IN executor (the paper's GPT-4o M3A agent): follows a plan of steps addressed by
    resource id (["open_app", label], ["click" | "long_press", rid], ["type", rid, text],
    ["scroll", direction], ["back"]), then answers or stops. With probability `noise` it clicks
    something at random instead; when its target is not on screen it goes back (the caller's
    repeat rule ends hopeless loops)."""

    def __init__(self, plan: list, answer: str | None, noise: float, rng: random.Random):
        self.plan, self.answer, self.noise, self.rng, self.pos = plan, answer, noise, rng, 0

    def act(self, obs: dict) -> GUIAction:
        clickable = [e for e in obs["ui_elements"] if e["is_clickable"]]
        if clickable and self.rng.random() < self.noise:
            return GUIAction("click", index=self.rng.choice(clickable)["index"])
        if self.pos >= len(self.plan):
            if self.answer:
                return GUIAction("answer", text=self.answer)
            return GUIAction("status", goal_status="complete")
        step = self.plan[self.pos]
        if step[0] in ("open_app", "scroll", "back"):
            self.pos += 1
            if step[0] == "open_app":
                return GUIAction("open_app", app_name=step[1])
            if step[0] == "scroll":
                return GUIAction("scroll", direction=step[1])
            return GUIAction("navigate_back")
        index = next((e["index"] for e in obs["ui_elements"] if e["resource_id"] == step[1]), None)
        if index is None:
            return GUIAction("navigate_back")  # lost: go back
        self.pos += 1
        if step[0] == "type":
            return GUIAction("input_text", index=index, text=step[2])
        return GUIAction(step[0], index=index)


def run_plan(plan: list, app: str) -> tuple[ToyGUIEnv, dict] | None:
    """Replay a resource-id plan from the launcher (no noise); None when a target is missing."""
    env = ToyGUIEnv(Task("plan", app, ""), max_steps=10**6, end_on_success=False, render=False)
    obs, follower = env.obs, PathFollower(plan, None, 0.0, random.Random(0))
    while follower.pos < len(plan):
        pos = follower.pos
        obs = env.step(follower.act(obs))[0]
        if follower.pos == pos or obs["last_action_error"]:
            return None  # lost (the next step's target is not on this screen) or an invalid step
    return env, obs


def plan_works(plan: list, triple: dict, target: dict, start: dict) -> bool:
    """Does the plan reach the target with no side effects?"""
    done = run_plan(plan, triple["app"])
    if done is None:
        return False
    env, obs = done
    return target_reached(target, obs, env.state) and not side_effects(start, env.state, target)


def direct_plan(task: dict, triple: dict) -> list:
    """STAND-IN executor's plan for a synthesized task: open the app, then the walk's path to the
    triple, minus every step the task does not need (a step is dropped when the plan without it
    still reaches the target with no side effects), so the executor carries out the instruction
    instead of replaying the random walk's detours. Spans are tried longest first, so a round trip
    (open an email, delete it, back on the inbox) goes in one cut."""
    target, start = task_target(task, triple), initial_phone_state()
    plan = [["open_app", APPS[triple["app"]].label]] + triple["path"] + [triple["final_step"]]
    plan += task.get("extension") or []  # the step that completes a task the triple serves
    while True:
        cuts = (
            plan[:i] + plan[i + n :]
            for n in range(len(plan) - 1, 0, -1)
            for i in range(1, len(plan) - n + 1)
        )
        shorter = next((c for c in cuts if plan_works(c, triple, target, start)), None)
        if shorter is None:
            return plan
        plan = shorter


class FollowerPolicy:
    """A batch policy for `run_episodes` (`policy([(i, obs, steps)]) -> [(thought, action)]`): one
    PathFollower per task, each following the task's direct plan."""

    def __init__(self, tasks: list[dict], noise: float, seed: int):
        self.agents = [
            PathFollower(t["plan"], t["answer"], noise, random.Random(f"{seed}-{t['triple_id']}"))
            for t in tasks
        ]

    def __call__(self, items: list) -> list:
        actions = [self.agents[i].act(obs) for i, obs, _ in items]
        return [(instruction(a, obs["ui_elements"]), a) for a, (_, obs, _) in zip(actions, items)]


class ExpertPolicy:
    """The scripted expert on catalogue tasks, as a batch policy for `run_episodes`."""

    def __init__(self, tasks: list[Task]):
        self.experts = [ScriptedExpert(t) for t in tasks]

    def __call__(self, items: list) -> list:
        actions = [self.experts[i].act(obs) for i, obs, _ in items]
        return [(instruction(a, obs["ui_elements"]), a) for a, (_, obs, _) in zip(actions, items)]


def judge_facts(task: dict, triple: dict, traj: dict) -> dict:
    """STAND-IN for what the GPT-4o TRM reads off the screenshots: the trajectory is replayed and
    the rubric's inputs read from the env. Completion: is the target there (its state change, its
    answer, its screen)? Coherence: no side effects, no more steps than the direct plan + 1 (the
    stop/answer), no invalid steps."""
    judged = Task("judge", task["app"], task["goal"])
    env = ToyGUIEnv(judged, max_steps=10**6, end_on_success=False, render=False)
    start, target = initial_phone_state(), task_target(task, triple)
    observations = [env.step(s["action"])[0] for s in traj["steps"]]
    urls = [o["url"] for o in observations]
    if target["kind"] == "answer":
        given = normalize_answer(env.state["system"]["answer"] or "")
        reached = given == normalize_answer(task["answer"])
    else:
        reached = bool(observations) and target_reached(target, observations[-1], env.state)
    extra = side_effects(start, env.state, target)
    optimal = len(task["plan"]) + 1
    return dict(
        reached=reached,
        clean=not extra,
        efficient=len(urls) <= optimal and traj["invalid"] == 0,
        partial=triple["url_before"] in urls,
        right_app=bool(urls) and urls[0].startswith(f"toy://{triple['app']}/"),
        looped=traj["aborted"],
        reason=f"reached={reached} side_effects={len(extra)} steps={len(urls)}/{optimal}",
    )


def trainable_tasks(synthesized: list[dict], by_triple: dict, held_out: list[Task]) -> tuple:
    """Valid goals, de-duplicated by text (first wins), minus held-out tasks or instances and
    minus changes already true on a fresh phone (the walk undid its own step: no task from the
    start); each kept task gets the stand-in executor's direct plan."""
    unique = list(
        {normalize_answer(t["goal"]): t for t in synthesized[::-1] if t["valid"]}.values()
    )
    unique = unique[::-1]
    leaked = [t for t in unique if leaks_held_out(t, by_triple[t["id"]], held_out)]
    launcher = ToyGUIEnv(render=False)
    unclear = [
        t
        for t in unique
        if t not in leaked
        and target_reached(task_target(t, by_triple[t["id"]]), launcher.obs, launcher.state)
    ]
    kept = [t for t in unique if t not in leaked and t not in unclear]
    for t in kept:
        t["plan"] = direct_plan(t, by_triple[t["id"]])
    return kept, len(leaked), len(unclear)


def expert_trajectories(tasks: list[dict], max_steps: int) -> list[dict]:
    """The task-driven baseline's trajectories: the scripted expert on catalogue tasks."""
    catalogue = [TASKS[t["task_id"]] for t in tasks]
    no_screenshots = partial(ToyGUIEnv, max_steps=max_steps, render=False)  # rules read no pixels
    records = run_episodes(catalogue, ExpertPolicy(catalogue), max_steps, make_env=no_screenshots)
    return [dict(id=t["id"], **r) for t, r in zip(tasks, records)]
