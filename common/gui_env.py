"""A small simulated phone ("toy GUI world") shared by os_genesis.py and guimid.py, the GUI
environment protocol, and the one GUI agent loop (`run_episodes`).

What it is (modelled on BrowserGym's and AndroidWorld's environment APIs):
- A pure-Python screen graph (apps and tasks: common/gui_apps.py): a launcher plus four apps
  (Settings, Notes, Shop, Mail), several screens each. Widgets have {id, role, name, bbox,
  clickable, editable, scrollable, long_clickable, value, checked}; callbacks mutate the app
  state and switch screens; a back stack serves `navigate_back`.
- Gymnasium signatures as in BrowserGym: `reset(task) -> (obs, info)`,
  `step(action) -> (obs, reward, terminated, truncated, info)`. The observation holds `goal`,
  `url` (`toy://app/screen`), `screenshot` (a deterministic 128x192 pillow render with visible
  labels), `axtree_txt` (`[id] role 'name'` lines for text-only agents), `ui_elements`
  (AndroidWorld-style dicts with index, role, text, bbox_pixels and the is_* flags),
  `last_action`, `last_action_error`.
- One internal action type, `GUIAction`, mirroring AndroidWorld's `JSONAction`. Parsers turn
  every external format into it: AndroidWorld JSON, OS-Genesis "Low-level thought / action"
  outputs (coordinates -> nearest element centre), GUIMid fenced JSON {"Element Description",
  "Action", "Value"} (through a grounder; the stub one fuzzy-matches names); WebArena strings,
  BrowserGym calls and pyautogui calls through common/gui_formats.py. Formatters write
  AndroidWorld JSON, OS-Genesis targets and GUIMid blocks.
- Tasks are checks on the app state (reward in {0, 1}); question tasks compare a normalised
  answer; infeasible tasks expect `status: infeasible`. Optional subgoals are OR-accumulated
  (AgentBoard). `ScriptedExpert` solves every task; `TASKS` has a deterministic train/test split.
- Bad actions (unknown index, malformed string, unsupported verb) never raise out of `step`: they
  set `last_action_error`, change nothing and cost a step.
- `GUIEnvironment` is the small protocol an agent loop needs; a BrowserGym or AndroidWorld
  adapter implements it by mapping observations to these keys and `GUIAction` to that library's
  action (`gui_formats.format_browsergym`, `GUIAction.to_json`); common/miniwob_env.py is one;
  see docs/gui_world.md. `run_episodes` drives any of them, batched for model agents.
"""

from __future__ import annotations

import difflib
import functools
import hashlib
import json
import math
import re
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any, Protocol, runtime_checkable

from PIL import Image, ImageDraw, ImageFont

from common.gui_apps import (  # re-exported: the scripts import the apps from here
    APPS,
    TASKS,
    App,
    MailApp,
    NotesApp,
    SettingsApp,
    ShopApp,
    Task,
    Widget,
    build_tasks,
    list_tasks,
    normalize_answer,
)
from common.rewards import last_json_object

SCREEN_W, SCREEN_H = 128, 192  # small on purpose: a tiny VLM processor resizes it anyway
STATUS_BAR_H = 14
ROW_H = 17
ROWS_PER_PAGE = (SCREEN_H - STATUS_BAR_H) // ROW_H  # 10 rows of widgets fit on one page
SCROLL_ROWS = ROWS_PER_PAGE // 2  # one scroll moves half a page, so context overlaps
BACKGROUND = (245, 245, 245)

ACTION_TYPES = (
    "click",
    "long_press",
    "input_text",
    "keyboard_enter",
    "scroll",
    "navigate_back",
    "navigate_home",
    "open_app",
    "wait",
    "status",
    "answer",
)
TARGETED = ("click", "long_press", "input_text", "scroll")  # may name an element (index or x, y)
SCROLL_DIRECTIONS = ("up", "down", "left", "right")
GOAL_STATUSES = ("complete", "infeasible")


class ActionError(ValueError):
    """A malformed or impossible action; `step` turns it into `last_action_error`."""


# What an unparsable or impossible action raises; the environments turn it into an error
# observation (the step counts, the episode goes on) instead of crashing.
BAD_ACTION = (ActionError, ValueError, NameError, TypeError, KeyError)


# ------------------------------------------------------------------------------------------------
# The internal action (AndroidWorld JSONAction shape)


@dataclass
class GUIAction:
    """One action. Targets are `index` XOR (`x`, `y`) in screen pixels, as in AndroidWorld.
    `answer` ends the episode with the text as the answer (WebArena/GUIMid `stop [answer]`);
    `status` ends it with goal_status complete | infeasible."""

    action_type: str
    index: int | None = None
    x: float | None = None
    y: float | None = None
    text: str | None = None
    direction: str | None = None
    app_name: str | None = None
    goal_status: str | None = None

    def to_dict(self) -> dict:
        return {k: v for k, v in asdict(self).items() if v is not None}

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), ensure_ascii=False, default=repr)


def validate_action(action: GUIAction) -> GUIAction:
    """Raise ActionError when the action breaks the JSONAction rules (AndroidWorld
    json_action.JSONAction.__post_init__)."""
    t = action.action_type
    if t not in ACTION_TYPES:
        raise ActionError(f"unknown action_type {t!r}; expected one of {', '.join(ACTION_TYPES)}")
    has_index = action.index is not None
    has_point = action.x is not None or action.y is not None
    if has_point and (action.x is None or action.y is None):
        raise ActionError(f"{t}: give both x and y")
    for name in ("x", "y"):
        value = getattr(action, name)
        if value is not None and (
            isinstance(value, bool)
            or not isinstance(value, (int, float))
            or not math.isfinite(value)
        ):
            raise ActionError(f"{t}: {name}={value!r} is not a finite number")
    if has_index and (isinstance(action.index, bool) or not isinstance(action.index, int)):
        raise ActionError(f"{t}: index {action.index!r} is not an integer")
    if has_index and has_point:
        raise ActionError(f"{t}: give index or (x, y), not both")
    if (has_index or has_point) and t not in TARGETED:
        raise ActionError(f"{t} takes no target element")
    if t in ("click", "long_press") and not (has_index or has_point):
        raise ActionError(f"{t} needs an index or x and y")
    if t in ("input_text", "answer") and not isinstance(action.text, str):
        raise ActionError(f"{t} needs a text string")
    if t == "scroll" and action.direction not in SCROLL_DIRECTIONS:
        raise ActionError(
            f"scroll direction {action.direction!r} is not one of {SCROLL_DIRECTIONS}"
        )
    if t == "open_app" and not action.app_name:
        raise ActionError("open_app needs app_name")
    if t == "status" and action.goal_status not in GOAL_STATUSES:
        raise ActionError(
            f"status goal_status {action.goal_status!r} is not one of {GOAL_STATUSES}"
        )
    return action


# ------------------------------------------------------------------------------------------------
# Layout, observation, rendering


@dataclass
class Frame:
    app: str  # "home" for the launcher
    screen: str
    params: dict = field(default_factory=dict)
    scroll: int = 0  # first visible row


_FONT = None


def _font():
    global _FONT
    if _FONT is None:
        _FONT = ImageFont.load_default(size=10)  # pillow's bundled font: same pixels everywhere
    return _FONT


def _fit(text: str, width: int) -> str:
    """Clip a label to the box width so the render never spills into a neighbour's box."""
    font = _font()
    if font.getlength(text) <= width:
        return text
    while text and font.getlength(text + "..") > width:
        text = text[:-1]
    return text + ".."


def element_center(element: dict) -> tuple[float, float]:
    b = element["bbox_pixels"]
    return (b["x_min"] + b["x_max"]) / 2, (b["y_min"] + b["y_max"]) / 2


def element_at_point(x: float, y: float, ui_elements: list[dict]) -> int | None:
    """A point resolves to the smallest element containing it, else to the nearest element centre
    (OS-Genesis' AndroidWorld rule); None for an empty screen."""
    inside = [e for e in ui_elements if _contains(e["bbox_pixels"], x, y)]
    if inside:
        return min(inside, key=_area)["index"]
    return nearest_center_index(x, y, ui_elements)


def _contains(b: dict, x: float, y: float) -> bool:
    return b["x_min"] <= x < b["x_max"] and b["y_min"] <= y < b["y_max"]


def _area(element: dict) -> float:
    b = element["bbox_pixels"]
    return (b["x_max"] - b["x_min"]) * (b["y_max"] - b["y_min"])


def nearest_center_index(x: float, y: float, ui_elements: list[dict]) -> int | None:
    """OS-Genesis evaluation: a predicted (x, y) maps to the nearest element centre's index."""
    if not ui_elements:
        return None
    return min(ui_elements, key=lambda e: math.dist((x, y), element_center(e)))["index"]


def screen_signature(obs: dict) -> frozenset:
    """The set of element identifiers on screen (OS-Genesis random_walk_aw.py: an unchanged set
    means the action did nothing). The identifier includes the visible state (name, value,
    checked) so that toggling a switch counts as a change (the AndroidWorld walk reads text +
    content description, which a toggle also changes)."""
    return frozenset(
        (e["resource_id"], e["text"], e["value"], e["is_checked"]) for e in obs["ui_elements"]
    )


def screenshot_hash(image: Image.Image) -> str:
    return hashlib.sha1(image.tobytes()).hexdigest()


def format_axtree(ui_elements: list[dict], url: str = "") -> str:
    """BrowserGym-style text rendering, `[id] role 'name'` plus the states that matter."""
    lines = [f"url: {url}"] if url else []
    for e in ui_elements:
        flags = []
        if e["is_checkable"]:
            flags.append("checked" if e["is_checked"] else "unchecked")
        if e["is_editable"]:
            flags.append(f"value='{e['value']}'")
        if e["is_focused"]:
            flags.append("focused")
        if e["is_long_clickable"]:
            flags.append("long_clickable")
        if e["is_scrollable"]:
            flags.append("scrollable")
        lines.append(f"[{e['index']}] {e['role']} '{e['text']}'" + "".join(" " + f for f in flags))
    return "\n".join(lines)


def osgenesis_a11y(ui_elements: list[dict]) -> str:
    """OS-Genesis mobile observation text: {"Get started": "(539.5, 2148.0)", ...}
    (text -> centre)."""
    return json.dumps(
        {
            e["text"]: "({:.1f}, {:.1f})".format(*element_center(e))
            for e in ui_elements
            if e["role"] not in ("list",)
        },
        ensure_ascii=False,
    )


def state_diff(before: Any, after: Any, path: str = "") -> list[tuple[str, Any, Any]]:
    """(path, old, new) for every leaf that changed; lists compare by value (drafts are skipped,
    they are typing in progress, not an effect)."""
    if isinstance(before, dict) and isinstance(after, dict):
        out = []
        for k in sorted(set(before) | set(after), key=str):
            if k == "drafts":
                continue
            out += state_diff(before.get(k), after.get(k), f"{path}/{k}")
        return out
    return [] if before == after else [(path, before, after)]


# ------------------------------------------------------------------------------------------------
# The environment


@runtime_checkable
class GUIEnvironment(Protocol):
    """What an agent loop needs. ToyGUIEnv implements it; a BrowserGym or AndroidWorld adapter wraps
    that library's env and maps its observation to these keys (goal, url, screenshot, axtree_txt,
    ui_elements, last_action, last_action_error) and a GUIAction to its action
    (BrowserGym: `env.step(format_browsergym(action))`; AndroidWorld:
    `env.execute_action(JSONAction(**action.to_dict()))`, success from
    `task.is_successful(env)`)."""

    def reset(self, task: Any = None, seed: int | None = None) -> tuple[dict, dict]: ...

    def step(self, action: Any) -> tuple[dict, float, bool, bool, dict]: ...


class ToyGUIEnv:
    """The toy phone. `reset(task)` takes a Task, a task id, a free-form goal string or None."""

    def __init__(
        self,
        task: Task | str | None = None,
        seed: int = 0,
        max_steps: int | None = None,
        end_on_success: bool = True,
        grounder=None,  # a common.gui_formats.Grounder; default StubGrounder
        render: bool = True,  # False: obs["screenshot"] is None (rule-only users skip drawing)
    ):
        self.apps = APPS
        self.render = render
        self.seed = seed
        self.max_steps_override = max_steps
        self.end_on_success = (
            end_on_success  # BrowserGym/MiniWoB: the episode ends when the check passes
        )
        if grounder is None:
            from common.gui_formats import StubGrounder

            grounder = StubGrounder()
        self.grounder = grounder
        self.reset(task)

    # -- navigation API used by the app callbacks --
    def push(self, screen: str, **params):
        self.stack.append(Frame(self.stack[-1].app, screen, params))

    def back(self):
        if len(self.stack) > 1:
            self.stack.pop()

    def flash(self, message: str):
        self._flash = message

    def open_app(self, name: str):
        app = self._app_by_name(name)
        self.stack = [Frame("home", "launcher"), Frame(app.name, app.root)]
        self.state["system"]["visited_app"][app.name] = True

    def _app_by_name(self, name: str) -> App:
        wanted = str(name).strip().lower()
        for app in self.apps.values():
            if wanted in (app.name, app.label.lower()):
                return app
        raise ActionError(
            f"unknown app {name!r}; installed apps: "
            + ", ".join(a.label for a in self.apps.values())
        )

    # -- gym API --
    def reset(self, task: Task | str | None = None, seed: int | None = None) -> tuple[dict, dict]:
        if seed is not None:
            self.seed = seed
        if isinstance(task, str):
            task = TASKS.get(task) or Task(task_id="free", app="", goal=task)
        self.task = task or Task(task_id="none", app="", goal="")
        self.state = {name: app.initial_state() for name, app in self.apps.items()}
        self.state["system"] = dict(answer=None, status=None, visited_app={})
        if self.task.setup:
            self.task.setup(self.state)
        self.stack = [Frame("home", "launcher")]
        self.focus_key: str | None = None
        self._flash = ""
        self.steps = 0
        self.done = False
        self.subgoal_flags = [False] * len(self.task.subgoals)
        self.max_steps = self.max_steps_override or self.task.max_steps
        if self.task.start_app:
            self.open_app(self.task.start_app)
        self.obs = self._observe(last_action="", error="")
        return self.obs, self._info(success=False)

    def step(self, action: GUIAction | dict | str) -> tuple[dict, float, bool, bool, dict]:
        if self.done:
            self.obs = self._observe(last_action=str(action), error="episode is over; call reset()")
            return self.obs, 0.0, True, False, self._info(success=False)
        self.steps += 1
        self._flash = ""
        error = ""
        last = (
            action.to_json()
            if isinstance(action, GUIAction)
            else action
            if isinstance(action, str)
            else json.dumps(action, default=repr)
        )
        terminated, success = False, False
        try:
            act = (
                action
                if isinstance(action, GUIAction)
                else _parse_action(
                    action, ui_elements=self.obs["ui_elements"], grounder=self.grounder
                )
            )
            validate_action(act)
            terminated = self._execute(act)
        except BAD_ACTION as exc:  # bad actions never crash the env
            error = f"{type(exc).__name__}: {exc}"
        sys_state = self.state["system"]
        if terminated:
            success = self._terminal_success()
        elif self.end_on_success and self.task.check is not None and self.task.check(self.state):
            terminated, success = True, True
        for i, (_, pred) in enumerate(self.task.subgoals):
            self.subgoal_flags[i] = self.subgoal_flags[i] or bool(
                pred(self.state)
            )  # AgentBoard OR-accumulation
        sys_state["app"], sys_state["screen"] = self.stack[-1].app, self.stack[-1].screen
        truncated = not terminated and self.steps >= self.max_steps
        self.done = terminated or truncated
        self.obs = self._observe(last_action=last, error=error)
        return self.obs, float(success), terminated, truncated, self._info(success)

    def _terminal_success(self) -> bool:
        st, task = self.state["system"], self.task
        if st["status"] == "infeasible":
            return not task.feasible
        if not task.feasible:
            return False
        if task.answer is not None:
            return st["answer"] is not None and normalize_answer(st["answer"]) == normalize_answer(
                task.answer
            )
        return task.check is not None and bool(task.check(self.state))

    def task_success(self) -> bool:
        """Success of the current state, for an episode that ran out of steps (AndroidWorld reads
        `is_successful` at the end whatever the agent said)."""
        return (
            self._terminal_success()
            if self.state["system"]["status"]
            else (
                self.task.check is not None
                and self.task.feasible
                and bool(self.task.check(self.state))
            )
        )

    def _info(self, success: bool) -> dict:
        return dict(
            success=bool(success),
            steps=self.steps,
            task_id=self.task.task_id,
            subgoals=list(self.subgoal_flags),
            answer=self.state["system"]["answer"],
            status=self.state["system"]["status"],
        )

    # -- executing one validated action; returns True when the agent ended the episode --
    def _target(self, act: GUIAction) -> Widget | None:
        if act.index is not None:
            if not isinstance(act.index, int) or not 0 <= act.index < len(self.widgets):
                raise ActionError(
                    f"unknown element index {act.index!r}; this screen has elements "
                    f"0..{len(self.widgets) - 1}"
                )
            return self.widgets[act.index]
        if act.x is not None:
            if not (0 <= act.x < SCREEN_W and 0 <= act.y < SCREEN_H):
                raise ActionError(
                    f"point ({act.x}, {act.y}) is outside the {SCREEN_W}x{SCREEN_H} screen"
                )
            return self.widgets[element_at_point(act.x, act.y, self.obs["ui_elements"])]
        return None

    def _execute(self, act: GUIAction) -> bool:
        t, target = act.action_type, self._target(act)
        before = (len(self.stack), self.stack[-1].screen)
        if t == "click":
            if target.on_type is not None:
                self.focus_key = target.key
            if target.on_click is not None:
                target.on_click()
        elif t == "long_press":
            if target.on_long_press is not None:
                target.on_long_press()
        elif t == "input_text":
            field_widget = target or next(
                (w for w in self.widgets if w.key == self.focus_key), None
            )
            if field_widget is None:
                raise ActionError(
                    "input_text: no text field is focused; click one first or give its index"
                )
            if field_widget.on_type is None:
                raise ActionError(
                    f"input_text: element [{self.widgets.index(field_widget)}] "
                    f"'{field_widget.name}' is not editable"
                )
            self.focus_key = field_widget.key
            field_widget.on_type(
                act.text.rstrip("\n")
            )  # typing replaces the field's text (BrowserGym fill)
            if (
                act.text.endswith("\n") and field_widget.on_submit
            ):  # WebArena appends Enter by default
                field_widget.on_submit()
        elif t == "keyboard_enter":
            focused = next((w for w in self.widgets if w.key == self.focus_key), None)
            if focused is not None and focused.on_submit is not None:
                focused.on_submit()
        elif t == "scroll":
            frame = self.stack[-1]
            delta = {"down": SCROLL_ROWS, "up": -SCROLL_ROWS}.get(act.direction, 0)
            frame.scroll = min(max(0, frame.scroll + delta), self._max_scroll)
        elif t == "navigate_back":
            self.back()
        elif t == "navigate_home":
            self.stack = [Frame("home", "launcher")]
        elif t == "open_app":
            self.open_app(act.app_name)
        elif t == "status":
            self.state["system"]["status"] = act.goal_status
            return True
        elif t == "answer":
            self.state["system"].update(answer=act.text, status="complete")
            return True
        if (len(self.stack), self.stack[-1].screen) != before:
            self.focus_key = None  # a new screen has no focused field
        return False

    # -- building the current screen --
    def _build_rows(self) -> tuple[str, list[list[Widget]]]:
        frame = self.stack[-1]
        if frame.app == "home":

            def icon(app):
                return Widget(
                    f"app:{app.name}",
                    "icon",
                    app.label,
                    width=0.5,
                    on_click=lambda a=app.name: self.open_app(a),
                )

            icons = [icon(a) for a in self.apps.values()]
            return "Home", [icons[i : i + 2] for i in range(0, len(icons), 2)]
        return self.apps[frame.app].build(frame.screen, self.state[frame.app], frame.params, self)

    def _observe(self, last_action: str, error: str) -> dict:
        title, rows = self._build_rows()
        frame = self.stack[-1]
        capacity = ROWS_PER_PAGE - (1 if self._flash else 0)
        scrollable = len(rows) > capacity
        self._max_scroll = max(0, len(rows) - capacity)
        frame.scroll = min(frame.scroll, self._max_scroll)
        right = SCREEN_W - (6 if scrollable else 2)
        heading = Widget("title", "heading", title, bbox=(0, 0, SCREEN_W, STATUS_BAR_H))
        widgets = [heading]
        for r, row in enumerate(rows[frame.scroll : frame.scroll + capacity]):
            y0 = STATUS_BAR_H + r * ROW_H + 1
            x, total = 2.0, right - 2
            for c, w in enumerate(row):  # widgets share the row by width, 2 px apart
                x1 = x + w.width * total
                w.bbox = (
                    round(x) + (1 if c else 0),
                    y0,
                    round(x1) - (1 if c < len(row) - 1 else 0),
                    y0 + ROW_H - 2,
                )
                widgets.append(w)
                x = x1
        if self._flash:
            y0 = STATUS_BAR_H + capacity * ROW_H + 1
            widgets.append(
                Widget("flash", "text", self._flash, bbox=(2, y0, SCREEN_W - 2, y0 + ROW_H - 2))
            )
        if scrollable:
            widgets.append(
                Widget(
                    "scroll_list",
                    "list",
                    f"{title} list",
                    bbox=(0, STATUS_BAR_H, SCREEN_W, SCREEN_H),
                )
            )
        self.widgets = widgets
        app_name = frame.app if frame.app != "home" else "home"
        url = f"toy://{app_name}/{frame.screen}"
        ui_elements = [self._element(i, w, scrollable) for i, w in enumerate(widgets)]
        return dict(
            goal=self.task.goal,
            url=url,
            app=app_name,
            screenshot=self._render(widgets, frame, len(rows), capacity) if self.render else None,
            axtree_txt=format_axtree(ui_elements, url),
            ui_elements=ui_elements,
            last_action=last_action,
            last_action_error=error,
        )

    def _element(self, index: int, w: Widget, scrollable: bool) -> dict:
        x0, y0, x1, y1 = w.bbox
        return dict(
            index=index,
            id=str(index),
            resource_id=w.key,
            role=w.role,
            text=w.name,
            value=w.value,
            content_description="",
            bbox_pixels=dict(x_min=x0, y_min=y0, x_max=x1, y_max=y1),
            is_clickable=w.clickable,
            is_long_clickable=w.on_long_press is not None,
            is_editable=w.on_type is not None,
            is_scrollable=w.role == "list" and scrollable,
            is_checkable=w.checked is not None,
            is_checked=bool(w.checked),
            is_focused=w.key == self.focus_key and w.on_type is not None,
            is_enabled=True,
            is_visible=True,
        )

    def _render(
        self, widgets: list[Widget], frame: Frame, n_rows: int, capacity: int
    ) -> Image.Image:
        img = Image.new("RGB", (SCREEN_W, SCREEN_H), BACKGROUND)
        draw, font = ImageDraw.Draw(img), _font()
        for w in widgets:
            x0, y0, x1, y1 = w.bbox
            ty = (y0 + y1) // 2 - 6
            if w.role == "heading":
                draw.rectangle((x0, y0, x1 - 1, y1 - 1), fill=(40, 60, 110))
                draw.text((x0 + 3, y0 + 1), _fit(w.name, x1 - x0 - 6), fill="white", font=font)
            elif w.role == "list":
                thumb_h = max(8, (SCREEN_H - STATUS_BAR_H) * capacity // n_rows)
                top = STATUS_BAR_H + (SCREEN_H - STATUS_BAR_H - thumb_h) * frame.scroll // max(
                    1, n_rows - capacity
                )
                draw.rectangle((x1 - 4, y0, x1 - 1, y1 - 1), fill=(225, 225, 225))
                draw.rectangle((x1 - 4, top, x1 - 1, top + thumb_h - 1), fill=(120, 120, 120))
            elif w.role in ("button", "icon"):
                fill = (200, 215, 240) if w.role == "button" else (255, 220, 170)
                draw.rounded_rectangle(
                    (x0, y0, x1 - 1, y1 - 1), radius=3, fill=fill, outline=(90, 90, 120)
                )
                label = _fit(w.name, x1 - x0 - 4)
                draw.text(
                    ((x0 + x1 - font.getlength(label)) / 2, ty), label, fill="black", font=font
                )
            elif w.role == "textbox":
                focused = w.key == self.focus_key
                draw.rectangle(
                    (x0, y0, x1 - 1, y1 - 1),
                    fill="white",
                    outline=(30, 90, 200) if focused else (130, 130, 130),
                    width=2 if focused else 1,
                )
                label = f"{w.name}: {w.value}" if w.value else w.name
                draw.text(
                    (x0 + 3, ty),
                    _fit(label, x1 - x0 - 6),
                    fill="black" if w.value else (140, 140, 140),
                    font=font,
                )
            elif w.role in ("switch", "radio"):
                if w.role == "switch":
                    draw.rounded_rectangle(
                        (x1 - 20, y0 + 3, x1 - 2, y1 - 3),
                        radius=5,
                        fill=(60, 170, 90) if w.checked else (170, 170, 170),
                    )
                    knob = x1 - 9 if w.checked else x1 - 19
                    draw.ellipse((knob, y0 + 4, knob + 7, y1 - 4), fill="white")
                    draw.text((x0 + 2, ty), _fit(w.name, x1 - x0 - 26), fill="black", font=font)
                else:
                    draw.ellipse(
                        (x0 + 2, y0 + 3, x0 + 11, y0 + 12),
                        outline="black",
                        fill=(60, 120, 200) if w.checked else "white",
                    )
                    draw.text((x0 + 15, ty), _fit(w.name, x1 - x0 - 17), fill="black", font=font)
            else:  # listitem, text
                draw.text(
                    (x0 + 2, ty),
                    _fit(w.name, x1 - x0 - 4),
                    fill=(20, 20, 20) if w.role == "listitem" else (70, 70, 70),
                    font=font,
                )
                if w.role == "listitem":
                    draw.line((x0, y1 - 1, x1 - 1, y1 - 1), fill=(200, 200, 200))
        return img


# ------------------------------------------------------------------------------------------------
# The scripted expert


class ScriptedExpert:
    """Follows a task's plan: each target by resource id, scrolling when it is off screen."""

    def __init__(self, task: Task):
        self.plan, self.pos, self.scroll_dir, self.last_sig = list(task.expert), 0, "down", None

    def act(self, obs: dict) -> GUIAction:
        if self.pos >= len(self.plan):
            return GUIAction("status", goal_status="complete")
        step = self.plan[self.pos]
        kind = step[0]
        if kind in ("click", "long_press", "type"):
            index = next(
                (e["index"] for e in obs["ui_elements"] if e["resource_id"] == step[1]), None
            )
            if index is None:  # off screen: scroll down to the bottom, then back up
                sig = screen_signature(obs)
                if sig == self.last_sig:
                    self.scroll_dir = "up" if self.scroll_dir == "down" else "down"
                self.last_sig = sig
                return GUIAction("scroll", direction=self.scroll_dir)
            self.pos += 1
            if kind == "type":
                return GUIAction("input_text", index=index, text=step[2])
            return GUIAction(kind, index=index)
        self.pos += 1
        if kind == "open_app":
            return GUIAction("open_app", app_name=step[1])
        if kind == "answer":
            return GUIAction("answer", text=step[1])
        if kind == "status":
            return GUIAction("status", goal_status=step[1])
        raise ValueError(f"unknown expert step {step!r}")


def rollout(
    env: ToyGUIEnv, policy: Callable[[dict], Any], task: Task | str | None = None
) -> tuple[list[dict], dict]:
    """Run one episode; returns the steps [{obs, action, reward}] and the final info."""
    obs, info = env.reset(task)
    steps, done = [], False
    while not done:
        action = policy(obs)
        next_obs, reward, terminated, truncated, info = env.step(action)
        steps.append(
            dict(obs=obs, action=action, reward=reward, error=next_obs["last_action_error"])
        )
        obs, done = next_obs, terminated or truncated
    return steps, info


def replay(task: Task, actions: list) -> list[dict]:
    """The observations of a recorded episode, rebuilt by re-running its actions (deterministic)."""
    env = ToyGUIEnv(task, max_steps=10**6, end_on_success=False)
    return [env.obs] + [
        env.step(a if isinstance(a, (str, GUIAction)) else GUIAction(**a))[0] for a in actions
    ]


def run_episodes(
    tasks: list,
    policy: Callable,
    max_steps: int = 15,
    stop_fn: Callable[[list[dict]], bool] | None = None,
    progress: Callable | None = None,
    make_env: Callable[[], GUIEnvironment] | None = None,
    batch_size: int | None = None,
) -> list[dict]:
    """The one GUI agent loop (os_genesis.py, guimid.py, the MiniWoB++ runs): lock-step episodes,
    so that a model agent decodes one batch per step.

    `policy([(i, obs, steps)]) -> [(thought, action)]` for the active episodes (i indexes `tasks`,
    `steps` the episode's records so far). `action` is a GUIAction; or raw model text, which the
    env parses (a bad one sets `last_action_error` and costs the step, as in `step`); or None: the
    policy found no valid action, the step is spent as `wait` and counted invalid. `thought` is the
    text the agent keeps in its history. `stop_fn(steps)` may end an episode early (a repeat rule).
    `make_env()` builds one environment per episode (default: the toy phone); `batch_size` runs
    the tasks in groups of that many (1 for a single shared browser). Model agents under FSDP2
    generate through `common.sampling.generate_local` and call `finish_local` after this loop.

    Each step records the thought, the action (JSON, the raw text, or None), the target's centre
    `xy` (for coordinate-style histories), the env's error, and what a progress metric needs:
    the new `url`, the OR-accumulated `subgoals` and `success` after the step."""
    make_env = make_env or functools.partial(ToyGUIEnv, max_steps=max_steps)
    records, size = [], batch_size or max(1, len(tasks))
    for start in range(0, len(tasks), size):
        indices = range(start, min(start + size, len(tasks)))
        envs = {i: make_env() for i in indices}
        obs = {i: envs[i].reset(tasks[i])[0] for i in indices}
        records += [
            dict(
                task_id=getattr(tasks[i], "task_id", str(i)),
                goal=obs[i].get("goal", getattr(tasks[i], "goal", "")),
                app=getattr(tasks[i], "app", ""),
                steps=[],
                success=False,
                aborted=False,
                invalid=0,
            )
            for i in indices
        ]
        active = list(indices)
        for _ in (progress or iter)(range(max_steps)):
            if not active:
                break
            items = [(i, obs[i], records[i]["steps"]) for i in active]
            for i, (thought, action) in zip(list(active), policy(items)):
                ended, obs[i] = _play_step(envs[i], obs[i], records[i], thought, action, stop_fn)
                if ended or len(records[i]["steps"]) >= max_steps:
                    active.remove(i)
    return records


def per_observation(act: Callable[[dict], Any]) -> Callable:
    """A one-observation policy (obs -> GUIAction) as a `run_episodes` policy (no thoughts)."""
    return functools.partial(_act_on_each, act)


def _act_on_each(act, items: list[tuple]) -> list[tuple]:
    return [("", act(obs)) for _, obs, _ in items]


def _play_step(env, obs: dict, record: dict, thought: str, action, stop_fn) -> tuple[bool, dict]:
    """One step of one episode in `run_episodes`: act, record, and say whether it ended."""
    elements = obs["ui_elements"]
    new_obs, reward, terminated, truncated, info = env.step(
        GUIAction("wait") if action is None else action
    )
    success = bool(info.get("success", reward > 0))
    valid_index = (
        isinstance(action, GUIAction)
        and isinstance(action.index, int)
        and 0 <= action.index < len(elements)
    )
    error = new_obs.get("last_action_error", "")
    if action is None:
        error = error or "the policy gave no valid action"
    record["steps"].append(
        dict(
            thought=thought,
            action=action.to_json() if isinstance(action, GUIAction) else action,
            xy=list(element_center(elements[action.index])) if valid_index else None,
            error=error,
            url=new_obs.get("url", ""),
            subgoals=list(info.get("subgoals", [])),
            success=success,
        )
    )
    record["invalid"] += bool(error)
    aborted = stop_fn is not None and stop_fn(record["steps"])
    # updated after every step, so an episode that the loop's step budget cuts short is final too
    task_success = getattr(env, "task_success", None)
    record.update(
        success=success or bool(task_success and task_success()),
        aborted=bool(aborted and not terminated),
        final_url=new_obs.get("url", ""),
    )
    return terminated or truncated or aborted, new_obs


def side_by_side(images: list[Image.Image]) -> Image.Image:
    """Screenshots pasted left to right (one image for VLMs that take one image per prompt)."""
    canvas = Image.new(
        "RGB", (sum(i.width for i in images), max(i.height for i in images)), "white"
    )
    for k, img in enumerate(images):
        canvas.paste(img, (sum(i.width for i in images[:k]), 0))
    return canvas


def describe_action(action: GUIAction, ui_elements: list[dict]) -> str:
    """A short low-level description ("click 'Wi-Fi'"): the GUIMid history and describer form."""
    name = None
    if action.index is not None and 0 <= action.index < len(ui_elements):
        name = ui_elements[action.index]["text"]
    elif action.x is not None and ui_elements:
        name = ui_elements[element_at_point(action.x, action.y, ui_elements)]["text"]
    t = action.action_type
    return {
        "click": f"click '{name}'",
        "long_press": f"long press '{name}'",
        "input_text": f"type '{(action.text or '').rstrip()}'"
        + (f" into '{name}'" if name else ""),
        "keyboard_enter": "press enter",
        "scroll": f"scroll {action.direction}",
        "navigate_back": "go back",
        "navigate_home": "go home",
        "open_app": f"open app '{action.app_name}'",
        "wait": "wait",
        "status": f"stop ({action.goal_status})",
        "answer": f"answer '{action.text}'",
    }.get(t, t)


# ------------------------------------------------------------------------------------------------
# Step accuracy (OS-Genesis's AndroidControl evaluation)


def token_f1(pred: str, gold: str) -> float:
    """SQuAD-style token F1 on normalised answers ("buy milk now" vs "buy milk" -> 0.8)."""
    p, g = normalize_answer(pred).split(), normalize_answer(gold).split()
    common = sum(min(p.count(w), g.count(w)) for w in set(p))
    if common == 0:
        return float(p == g)
    precision, recall = common / len(p), common / len(g)
    return 2 * precision * recall / (precision + recall)


def androidcontrol_click_ok(pred_xy, gold_xy, width=1080, height=2400) -> bool:
    """OS-Genesis's AndroidControl evaluation: a click is right within
    sqrt((0.14 W)^2 + (0.14 H)^2) pixels of the truth (368.45 px on a 1080x2400 screen)."""
    return math.dist(pred_xy, gold_xy) <= math.hypot(0.14 * width, 0.14 * height)


def step_match(pred: GUIAction | None, gold: GUIAction) -> tuple[bool, bool]:
    """(type match, full match) for step accuracy. Points are already mapped to the nearest element
    centre (OS-Genesis' AndroidWorld rule), so targets compare by element; text is right when exact
    or token F1 > 0.5 (OS-Genesis's AndroidControl evaluation)."""
    if pred is None or pred.action_type != gold.action_type:
        return False, False
    same_text = token_f1(pred.text or "", gold.text or "") > 0.5
    ok = {
        "click": pred.index == gold.index,
        "long_press": pred.index == gold.index,
        "answer": same_text,
        "input_text": same_text and (gold.index is None or pred.index == gold.index),
        "scroll": pred.direction == gold.direction,
        "open_app": str(pred.app_name).lower() == str(gold.app_name).lower(),
        "status": pred.goal_status == gold.goal_status,
    }
    return True, ok.get(gold.action_type, True)


def instruction(action: GUIAction, ui_elements: list[dict]) -> str:
    """The action as a low-level instruction sentence: "Click 'Bluetooth'."."""
    text = describe_action(action, ui_elements)
    return text[:1].upper() + text[1:] + "."


# ------------------------------------------------------------------------------------------------
# The action formats and grounders live in common/gui_formats.py (which builds on this module);
# the names below are still importable from here, loaded on first use (a module __getattr__,
# PEP 562), so `from common.gui_env import parse_action` works without an import cycle.

FORMATS = (
    "_extract_json_object",  # os_genesis.py reads JSON objects with it
    "parse_json_action",
    "parse_osgenesis",
    "osgenesis_to_indexed",
    "with_center_point",
    "GUIMidOutput",
    "parse_guimid",
    "Grounder",
    "StubGrounder",
    "guimid_to_action",
    "parse_action",
    "format_osgenesis",
    "format_guimid",
    "action_to_guimid",
    "GUIMID_KEYS",
    "parse_webarena",
    "parse_pyautogui",
    "parse_browsergym_calls",
    "browsergym_to_action",
    "format_webarena",
    "format_browsergym",
)


def __getattr__(name: str):
    if name in FORMATS:
        from common import gui_formats

        return getattr(gui_formats, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def _parse_action(action, **kwargs) -> GUIAction:
    from common.gui_formats import parse_action

    return parse_action(action, **kwargs)
