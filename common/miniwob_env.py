"""MiniWoB++ web tasks behind the same GUI-environment protocol as the toy phone.

The `miniwob` package (Farama, gymnasium API) runs each task page in Chromium through Selenium.
`MiniWoBGUIEnv` maps its observation (utterance, DOM elements with boxes, a 160x210 screenshot) to
the toy phone's keys (goal, url, screenshot, axtree_txt, ui_elements, last_action,
last_action_error) and a `GUIAction` to a MiniWoB action: click by index -> CLICK_ELEMENT, click by
point -> CLICK_COORDS, input_text -> FOCUS_ELEMENT_AND_TYPE_TEXT (TYPE_TEXT when no element is
named), keyboard_enter -> PRESS_KEY <Enter>, scroll -> SCROLL_UP/DOWN_COORDS, wait -> NONE; status
/ answer end the episode. Success is the task's own reward: raw reward > 0, as BrowserGym's MiniWoB
tasks count it. Bad actions set `last_action_error` and cost a step, as on the toy phone.

Chromium runs headless from the OS packages (Debian: `apt-get install chromium chromium-driver`),
with no sandbox (we run as root in CI), no GPU, no background networking, component updates, sync or
first-run screens, and an empty profile: the machine has no network, and Chromium would otherwise
keep trying to reach Google's services. `chromium_available()` says whether it can start.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import tempfile
from dataclasses import dataclass

from PIL import Image

from common.gui_env import (
    BAD_ACTION,
    ActionError,
    GUIAction,
    element_at_point,
    format_axtree,
    instruction,
    parse_action,
    per_observation,
    run_episodes,
    validate_action,
)

CHROMIUM_FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--disable-default-apps",
    "--disable-extensions",
)
# Tasks a tiny agent can act on in a few steps (click / type / enter); --tasks picks others.
DEFAULT_TASKS = ("click-test", "click-button", "click-link", "focus-text", "enter-text")
EDITABLE_TAGS = ("input_text", "input_password", "textarea", "input_number", "input_email")


def chromium_paths() -> tuple[str | None, str | None]:
    """(chromium, chromedriver) from $MINIWOB_CHROME_BINARY/$MINIWOB_CHROMEDRIVER or the PATH."""
    binary = (
        os.environ.get("MINIWOB_CHROME_BINARY")
        or shutil.which("chromium")
        or shutil.which("chromium-browser")
    )
    driver = os.environ.get("MINIWOB_CHROMEDRIVER") or shutil.which("chromedriver")
    return binary, driver


def chromium_available() -> bool:
    """True when the miniwob package, Chromium and chromedriver are all installed."""
    try:
        import miniwob  # noqa: F401
    except ImportError:
        return False
    return all(chromium_paths())


def _patch_chrome_options(profile_dir: str):
    """miniwob builds its ChromeOptions inside SeleniumInstance.create_driver; give it ours (the
    flags above, an empty profile) by swapping the `webdriver` name that module uses, nothing
    global."""
    from miniwob import selenium_instance
    from selenium import webdriver

    class Options(webdriver.ChromeOptions):
        def __init__(self):
            super().__init__()
            for flag in CHROMIUM_FLAGS + (
                f"--user-data-dir={tempfile.mkdtemp(dir=profile_dir)}",
            ):  # one each
                self.add_argument(flag)

    class Shim:
        ChromeOptions = Options
        Chrome = webdriver.Chrome

    selenium_instance.webdriver = Shim


@dataclass
class MiniWoBTask:
    """One MiniWoB episode: the task page (e.g. "click-button") and the seed of its instance. The
    goal (the page's utterance) is only known after reset; `goal` holds it once read."""

    task_id: str
    seed: int = 0
    goal: str = ""
    app: str = "miniwob"


def make_tasks(
    names: list[str] | tuple[str, ...] = DEFAULT_TASKS, episodes: int = 5, seed: int = 0
) -> list[MiniWoBTask]:
    """`episodes` seeded instances of each named task (fixed seeds: every run sees the same
    pages)."""
    return [MiniWoBTask(name, seed * 1000 + k) for name in names for k in range(episodes)]


def dom_to_ui_elements(dom_elements) -> list[dict]:
    """MiniWoB DOM elements -> AndroidWorld-style element dicts (the toy phone's `ui_elements`).
    The page body and elements of zero size are left out; the index is the position in this list."""
    out = []
    for d in dom_elements:
        width, height = float(d["width"][0]), float(d["height"][0])
        if (
            d["tag"] in ("body", "html")
            or d["id"] in ("wrap", "area", "query")
            or width <= 0
            or height <= 0
        ):
            continue
        x0, y0 = float(d["left"][0]), float(d["top"][0])
        focused, _, _, is_leaf = (int(f) for f in d["flags"])
        tag, text = d["tag"], d["text"] or d["id"] or d["classes"] or d["tag"]
        out.append(
            dict(
                index=len(out),
                id=str(len(out)),
                resource_id=f"ref:{int(d['ref'])}",
                ref=int(d["ref"]),
                role=tag,
                text=text,
                value=d["value"],
                content_description="",
                bbox_pixels=dict(x_min=x0, y_min=y0, x_max=x0 + width, y_max=y0 + height),
                is_clickable=bool(is_leaf)
                or tag in ("button", "a", "input_checkbox", "input_radio"),
                is_long_clickable=False,
                is_editable=tag in EDITABLE_TAGS,
                is_scrollable=False,
                is_checkable=tag in ("input_checkbox", "input_radio"),
                is_checked=False,
                is_focused=bool(focused),
                is_enabled=True,
                is_visible=True,
            )
        )
    return out


class MiniWoBGUIEnv:
    """A MiniWoB++ task page as a GUIEnvironment: `reset(MiniWoBTask | name)`,
    `step(GUIAction | str | dict)`."""

    def __init__(self, task: MiniWoBTask | str | None = None, max_steps: int = 10):
        if not chromium_available():
            raise RuntimeError(
                "MiniWoB needs `pip install miniwob` and Chromium + chromedriver "
                "(Debian: apt-get install chromium chromium-driver)"
            )
        binary, driver = chromium_paths()
        os.environ.setdefault("MINIWOB_CHROME_BINARY", binary)
        os.environ.setdefault("MINIWOB_CHROMEDRIVER", driver)
        self.profile_dir = tempfile.mkdtemp(prefix="miniwob-profile-")
        _patch_chrome_options(self.profile_dir)
        self.max_steps, self.envs, self.env = max_steps, {}, None
        if task is not None:
            self.reset(task)

    def _gym_env(self, name: str):
        if (
            name not in self.envs
        ):  # one browser at a time, reused across the episodes of its task page
            from miniwob.environment import MiniWoBEnvironment

            self.close_browsers()
            self.envs[name] = MiniWoBEnvironment(subdomain=name)
        return self.envs[name]

    def reset(
        self, task: MiniWoBTask | str | None = None, seed: int | None = None
    ) -> tuple[dict, dict]:
        task = MiniWoBTask(task) if isinstance(task, str) else task
        if task is None:
            raise ValueError(
                "MiniWoBGUIEnv.reset needs a task (a MiniWoBTask or a task name such as "
                "'click-button')"
            )
        self.task, self.env = task, self._gym_env(task.task_id)
        raw, info = self.env.reset(seed=task.seed if seed is None else seed)
        self.steps, self.done, self.success = 0, False, False
        task.goal = raw["utterance"]
        self.obs = self._observe(raw, last_action="", error="")
        return self.obs, self._info(info)

    def _observe(self, raw: dict, last_action: str, error: str) -> dict:
        elements = dom_to_ui_elements(raw["dom_elements"])
        url = f"miniwob://{self.task.task_id}"
        return dict(
            goal=self.task.goal,
            url=url,
            app="miniwob",
            screenshot=Image.fromarray(raw["screenshot"]),
            axtree_txt=format_axtree(elements, url),
            ui_elements=elements,
            last_action=last_action,
            last_action_error=error,
        )

    def _info(self, meta: dict) -> dict:
        return dict(
            success=self.success,
            steps=self.steps,
            task_id=self.task.task_id,
            subgoals=[],
            raw_reward=float(meta.get("raw_reward", 0.0) or 0.0),
        )

    def _to_miniwob(self, act: GUIAction):
        """GUIAction -> a MiniWoB action dict (None: the agent ended the episode)."""
        import numpy as np
        from miniwob.action import ActionTypes

        t, elements, env = act.action_type, self.obs["ui_elements"], self.env.unwrapped
        if act.index is not None and not 0 <= act.index < len(elements):
            raise ActionError(
                f"unknown element index {act.index}; this page has elements 0..{len(elements) - 1}"
            )
        target = elements[act.index] if act.index is not None else None
        if t == "click" and target is not None and target["ref"] > 0:
            return env.create_action(ActionTypes.CLICK_ELEMENT, ref=target["ref"])
        if t == "click" and target is not None:  # a text node (negative ref): click its centre
            b = target["bbox_pixels"]
            return env.create_action(
                ActionTypes.CLICK_COORDS,
                coords=np.array(
                    [(b["x_min"] + b["x_max"]) / 2, (b["y_min"] + b["y_max"]) / 2], dtype=np.float32
                ),
            )
        if t == "click":
            return env.create_action(
                ActionTypes.CLICK_COORDS, coords=np.array([act.x, act.y], dtype=np.float32)
            )
        if t == "input_text":
            if target is None and act.x is not None:
                target = elements[element_at_point(act.x, act.y, elements)]
            text = (act.text or "").rstrip("\n")
            if target is None:
                return env.create_action(ActionTypes.TYPE_TEXT, text=text)
            return env.create_action(
                ActionTypes.FOCUS_ELEMENT_AND_TYPE_TEXT, ref=target["ref"], text=text
            )
        if t == "keyboard_enter":
            return env.create_action(
                ActionTypes.PRESS_KEY, key=env.action_space_config.allowed_keys.index("<Enter>")
            )
        if t == "scroll" and act.direction in ("up", "down"):
            kind = (
                ActionTypes.SCROLL_UP_COORDS
                if act.direction == "up"
                else ActionTypes.SCROLL_DOWN_COORDS
            )
            return env.create_action(kind, coords=np.array([80.0, 105.0], dtype=np.float32))
        if t == "wait":
            return env.create_action(ActionTypes.NONE)
        if t in ("status", "answer"):
            return None
        raise ActionError(
            f"{t} is not an action on a MiniWoB page "
            "(click, input_text, keyboard_enter, scroll, wait, stop)"
        )

    def step(self, action: GUIAction | str | dict) -> tuple[dict, float, bool, bool, dict]:
        last = action.to_json() if isinstance(action, GUIAction) else str(action)
        if self.done:
            self.obs = {
                **self.obs,
                "last_action": last,
                "last_action_error": "episode is over; call reset()",
            }
            return self.obs, 0.0, True, False, self._info({})
        self.steps += 1
        try:
            act = (
                action
                if isinstance(action, GUIAction)
                else parse_action(action, ui_elements=self.obs["ui_elements"])
            )
            mw_action = self._to_miniwob(validate_action(act))
        except BAD_ACTION as exc:  # bad actions never crash the env
            self.done = self.steps >= self.max_steps
            self.obs = {
                **self.obs,
                "last_action": last,
                "last_action_error": f"{type(exc).__name__}: {exc}",
            }
            return self.obs, 0.0, False, self.done, self._info({})
        if (
            mw_action is None
        ):  # the agent stopped: success is whatever the page says now (nothing yet)
            self.done = True
            self.obs = {**self.obs, "last_action": last, "last_action_error": ""}
            return self.obs, 0.0, True, False, self._info({})
        raw, _, terminated, _, meta = self.env.step(mw_action)
        self.success = bool(terminated and float(meta.get("raw_reward", 0.0) or 0.0) > 0)
        truncated = not terminated and self.steps >= self.max_steps
        self.done = terminated or truncated
        if not terminated:
            self.obs = self._observe(raw, last_action=last, error="")
        else:
            self.obs = {**self.obs, "last_action": last, "last_action_error": ""}
        return self.obs, float(self.success), terminated, truncated, self._info(meta)

    def task_success(self) -> bool:
        return self.success

    def close_browsers(self):
        for env in self.envs.values():
            env.close()
        self.envs = {}

    def close(self):
        self.close_browsers()
        shutil.rmtree(self.profile_dir, ignore_errors=True)


def scripted_policy(obs: dict) -> GUIAction:
    """A rule policy for the simple click / type tasks: "Enter/Type ..." types the quoted text into
    the field, then clicks Submit; "Focus ..." clicks the field; otherwise click the element whose
    text the goal quotes (click-button, click-link) or names (click-test's "Click Me!")."""
    goal, elements = obs["goal"], obs["ui_elements"]
    quoted = goal.split('"')[1] if goal.count('"') >= 2 else ""
    field = next((e for e in elements if e["is_editable"]), None)
    if field is not None and goal.lower().startswith(("enter", "type")):
        if field["value"] != quoted:
            return GUIAction("input_text", index=field["index"], text=quoted)
        submit = next((e for e in elements if e["text"].lower() == "submit"), None)
        return GUIAction("click", index=submit["index"]) if submit else GUIAction("keyboard_enter")
    if field is not None and goal.lower().startswith("focus"):
        return GUIAction("click", index=field["index"])
    exact = [e for e in elements if quoted and e["text"] == quoted]
    named = exact or [
        e for e in elements if e["is_clickable"] and e["text"] and e["text"].lower() in goal.lower()
    ]
    if named:
        return GUIAction("click", index=named[0]["index"])
    return GUIAction("click", index=elements[-1]["index"]) if elements else GUIAction("wait")


def random_policy(rng: random.Random):
    """The random agent: click a random clickable element (type a random word into fields)."""

    def act(obs: dict) -> GUIAction:
        clickable = [e for e in obs["ui_elements"] if e["is_clickable"] or e["is_editable"]] or obs[
            "ui_elements"
        ]
        if not clickable:
            return GUIAction("wait")
        e = rng.choice(clickable)
        return (
            GUIAction("input_text", index=e["index"], text=rng.choice(["a", "test", "hello"]))
            if e["is_editable"]
            else GUIAction("click", index=e["index"])
        )

    return act


def run_policy(env: MiniWoBGUIEnv, policy, tasks: list[MiniWoBTask]) -> list[dict]:
    """One episode per task with a per-observation policy, through the one GUI agent loop
    (common.gui_env.run_episodes); [{task_id, seed, success, steps}]."""
    records = run_episodes(
        tasks, per_observation(policy), env.max_steps, make_env=lambda: env, batch_size=1
    )
    return [
        dict(task_id=t.task_id, seed=t.seed, success=r["success"], steps=len(r["steps"]))
        for t, r in zip(tasks, records)
    ]


def env_factory(names: str = "", episodes: int = 5, max_steps: int = 10):
    """(make_env, tasks) for guimid's agent loop (`--env miniwob`); one browser per process."""
    tasks = make_tasks(
        [n.strip() for n in names.split(",") if n.strip()] or DEFAULT_TASKS, episodes
    )
    shared = {}

    def make_env():
        if "env" not in shared:
            shared["env"] = MiniWoBGUIEnv(max_steps=max_steps)
        return shared["env"]

    return make_env, tasks


# ------------------------------------------------------------------------------------------------
# OS-Genesis on MiniWoB pages (os_genesis.py --env miniwob): the walk loop, the rule stand-ins for
# the annotator and the judge, replay and one agent loop. The paper's rules (element weights, the
# element action) come in from os_genesis.py as functions.


def walk_page(env: MiniWoBGUIEnv, task: MiniWoBTask, steps: int, rng, rules: dict, memo: dict):
    """A random walk on one page instance: `rules["weight"](role, explored, new)` weighs the
    elements, `rules["action"](element, rng)` acts on the drawn one. An action that leaves the page
    unchanged pools the element (`memo["pool"]`); every change, or the end of the episode, records
    a triple. Returns (actions, triples)."""
    obs, _ = env.reset(task)
    actions, triples, previous = [], [], set()
    for _ in range(steps):
        elements = [e for e in obs["ui_elements"] if e["is_clickable"] or e["is_editable"]]
        elements = [e for e in elements if page_key(task, e) not in memo["pool"]]
        weights = [
            rules["weight"](
                e["role"], page_key(task, e) in memo["explored"], e["text"] not in previous
            )
            for e in elements
        ]
        if not elements or sum(weights) == 0:
            break
        element = rng.choices(elements, weights=weights)[0]
        memo["explored"].add(page_key(task, element))
        action = rules["action"](element, rng)
        previous = {e["text"] for e in obs["ui_elements"]}
        after, _, terminated, truncated, _ = env.step(action)
        actions.append(action.to_dict())
        changed = screen_state(after) != screen_state(obs)
        if not (changed or terminated):
            memo["pool"].add(page_key(task, element))
        else:
            triples.append(
                dict(
                    step=len(actions),
                    action=action.to_dict(),
                    element={k: element[k] for k in ("text", "role", "resource_id")},
                    title_before=obs["goal"],
                    ended=bool(terminated),
                    path=actions[:-1],
                )
            )
        obs = after
        if terminated or truncated:
            break
    return actions, triples


def page_key(task: MiniWoBTask, element: dict) -> tuple:
    """An element across instances of a page (refs change from seed to seed; text and role stay)."""
    return task.task_id, element["text"], element["role"]


def screen_state(obs: dict) -> list:
    """What a page shows: each element's text, value and focus."""
    return [(e["text"], e["value"], e["is_focused"]) for e in obs["ui_elements"]]


def web_rule_goal(triple: dict) -> tuple[str, str]:
    """STAND-IN for the GPT-4o annotator on a page: (low-level instruction, high-level task) named
    from the triple's element, the way a page's own instructions name it."""
    element, action = triple["element"], triple["action"]
    if action["action_type"] == "input_text":
        low = f"Type '{action['text']}' into the {element['text']} field."
        return low, f'Enter "{action["text"]}" into the text field.'
    low = f"Click the '{element['text']}' {element['role']}."
    return low, f'Click on the "{element["text"]}" {element["role"]}.'


def replay_page(env: MiniWoBGUIEnv, task: MiniWoBTask, actions: list) -> list[dict]:
    """The observations of a recorded episode on its page instance (the seed fixes the page)."""
    obs, _ = env.reset(task)
    out = [obs]
    for a in actions:
        out.append(env.step(a if isinstance(a, (str, GUIAction)) else GUIAction(**a))[0])
    return out


def run_page_episode(env: MiniWoBGUIEnv, task: MiniWoBTask, policy, max_steps: int, stop_fn=None):
    """One episode with a batch policy (`policy([(0, obs, steps)]) -> [(thought, action)]`), the
    goal replaced by `task.goal` when set; a record in `gui_env.run_episodes`' format."""
    goal = task.goal
    obs, _ = env.reset(task)
    obs["goal"] = task.goal = goal or obs["goal"]
    record = dict(task_id=f"{task.task_id}#{task.seed}", goal=task.goal, app=task.task_id)
    record.update(page=task.task_id, seed=task.seed)
    record.update(steps=[], success=False, aborted=False, invalid=0)
    for _ in range(max_steps):
        thought, action = policy([(0, obs, record["steps"])])[0]
        obs, _, terminated, truncated, info = env.step(action)
        obs["goal"] = task.goal
        text = action.to_json() if isinstance(action, GUIAction) else str(action)
        record["steps"].append(
            dict(thought=thought, action=text, xy=None, error=obs["last_action_error"])
        )
        record["invalid"] += bool(obs["last_action_error"])
        record["aborted"] = bool(stop_fn and stop_fn(record["steps"]) and not terminated)
        record["success"] = bool(info["success"])
        if terminated or truncated or record["aborted"]:
            break
    return record


def web_judge_facts(triple: dict, traj: dict) -> dict:
    """STAND-IN for the GPT-4o TRM on a page: completion = the trajectory's last action is the
    triple's action on the same element; coherence = no extra or invalid steps."""
    steps = [s for s in traj["steps"] if s["action"].startswith("{")]
    last = json.loads(steps[-1]["action"]) if steps else {}
    want = triple["action"]
    reached = bool(last) and all(last.get(k) == v for k, v in want.items() if v is not None)
    efficient = len(traj["steps"]) <= triple["step"] + 1 and traj["invalid"] == 0
    return dict(
        reached=reached,
        clean=True,
        efficient=efficient,
        partial=len(steps) >= triple["step"],
        right_app=True,
        looped=traj["aborted"],
        reason=f"reached={reached} steps={len(traj['steps'])}/{triple['step']}",
    )


class ReplayPolicy:
    """STAND-IN executor on a page (the paper's GPT-4o agent): the walk's actions up to the
    triple's own, then stop; with probability `noise` a random clickable element instead (a slip).
    A batch policy of one episode (`run_page_episode`)."""

    def __init__(self, plan: list[dict], noise: float, rng: random.Random):
        self.plan, self.noise, self.rng, self.pos = plan, noise, rng, 0

    def __call__(self, items: list) -> list:
        obs = items[0][1]
        clickable = [e for e in obs["ui_elements"] if e["is_clickable"]]
        if clickable and self.rng.random() < self.noise:
            action = GUIAction("click", index=self.rng.choice(clickable)["index"])
        elif self.pos < len(self.plan):
            action, self.pos = GUIAction(**self.plan[self.pos]), self.pos + 1
        else:
            action = GUIAction("status", goal_status="complete")
        return [(instruction(action, obs["ui_elements"]), action)]


class ObsPolicy:
    """A per-observation policy (`scripted_policy`) as a batch policy with thoughts."""

    def __init__(self, policy):
        self.policy = policy

    def __call__(self, items: list) -> list:
        actions = [self.policy(obs) for _, obs, _ in items]
        return [(instruction(a, o["ui_elements"]), a) for a, (_, o, _) in zip(actions, items)]
