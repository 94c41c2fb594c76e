"""Every action format <-> GUIAction, and the grounders: what a GUI agent writes becomes the one
internal action of common/gui_env.py (AndroidWorld's JSONAction shape), and back.

- AndroidWorld JSON (`parse_json_action`), OS-Genesis "Low-level thought / action" outputs
  (`parse_osgenesis`; coordinates -> nearest element centre), GUIMid fenced JSON
  {"Element Description", "Action", "Value"} (`parse_guimid` + a grounder: `StubGrounder`
  fuzzy-matches element names, a stand-in for UGround) - the formats the scripts' agents speak;
- WebArena id actions, BrowserGym calls and pyautogui calls, so that `ToyGUIEnv.step` and
  `parse_action` also accept what such an agent writes (the tests pin their parsing rules to
  those projects');
- formatters for the training targets (OS-Genesis, GUIMid) and for adapters (WebArena,
  BrowserGym);
- GUIMid's planner (its prompt, training target and `run_episodes` policy) and the reader of
  its MidGUI release rows.
`from common.gui_env import parse_action` (and the other names) keeps working.
"""

from __future__ import annotations

import ast
import difflib
import io
import json
import re
import tokenize
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from common.data import load_rows
from common.gui_apps import normalize_answer
from common.gui_env import (
    SCREEN_H,
    SCREEN_W,
    ActionError,
    GUIAction,
    element_at_point,
    element_center,
    format_axtree,
    nearest_center_index,
    validate_action,
)
from common.rewards import last_json_object


def parse_webarena(text: str) -> GUIAction:
    """WebArena id actions, taken from the last fenced block if there is one."""
    blocks = re.findall(r"```(?:\w+\n)?(.*?)```", text, re.S)
    s = (blocks[-1] if blocks else text).strip()
    if m := re.fullmatch(r"click \[(\d+)\]", s):
        return GUIAction("click", index=int(m.group(1)))
    if m := re.fullmatch(r"type \[(\d+)\] \[(.*?)\](?: \[([01])\])?", s, re.S):
        enter = m.group(3) != "0"  # press_enter_after defaults to 1
        return GUIAction(
            "input_text", index=int(m.group(1)), text=m.group(2) + ("\n" if enter else "")
        )
    if m := re.fullmatch(r"scroll \[(up|down)\]", s):
        return GUIAction("scroll", direction=m.group(1))
    if s.startswith("scroll"):
        raise ActionError(f"WebArena's regex rejects {s!r}: write 'scroll [up]' or 'scroll [down]'")
    if m := re.fullmatch(r"press \[(.+?)\]", s):
        if m.group(1).lower() == "enter":
            return GUIAction("keyboard_enter")
        raise ActionError(f"press [{m.group(1)}]: only Enter exists on the toy phone")
    if s == "go_back":
        return GUIAction("navigate_back")
    if m := re.fullmatch(r"goto \[toy://(\w+)(?:/.*)?\]", s):
        return GUIAction("open_app", app_name=m.group(1))
    if m := re.fullmatch(r"stop \[(.*)\]", s, re.S):
        answer = m.group(1).strip()
        if answer.upper() == "N/A":
            return GUIAction("status", goal_status="infeasible")
        return (
            GUIAction("answer", text=answer)
            if answer
            else GUIAction("status", goal_status="complete")
        )
    verb = s.split(" ")[0] if s else ""
    if verb in ("hover", "new_tab", "tab_focus", "close_tab", "go_forward", "goto"):
        raise ActionError(f"WebArena action {verb!r} has no meaning on the toy phone")
    raise ActionError(f"not a WebArena action: {s[:80]!r}")


BROWSERGYM_SIGNATURES = {  # name -> positional parameter names (the subset the toy phone supports)
    "click": ("bid", "button", "modifiers"),
    "fill": ("bid", "value"),
    "press": ("bid", "key_comb"),
    "scroll": ("delta_x", "delta_y"),
    "mouse_click": ("x", "y", "button"),
    "keyboard_type": ("text",),
    "keyboard_press": ("key",),
    "go_back": (),
    "noop": ("wait_ms",),
    "send_msg_to_user": ("text",),
    "report_infeasible": ("reason",),
}
BROWSERGYM_UNSUPPORTED = {
    "dblclick",
    "hover",
    "select_option",
    "focus",
    "clear",
    "drag_and_drop",
    "upload_file",
    "new_tab",
    "tab_close",
    "tab_focus",
    "goto",
    "go_forward",
    "mouse_move",
    "mouse_up",
    "mouse_down",
    "mouse_dblclick",
    "mouse_drag_and_drop",
    "mouse_upload_file",
    "keyboard_down",
    "keyboard_up",
    "keyboard_insert_text",
}


def _scan_calls(code: str) -> list[tuple[str, list, dict]]:
    """Top-level `name(literal, ...)` calls in order (BrowserGym/pyautogui call strings). Each
    call's arguments must be Python literals; anything else is a ValueError."""
    try:
        tokens = [
            t
            for t in tokenize.generate_tokens(io.StringIO(code).readline)
            if t.type
            not in (
                tokenize.NL,
                tokenize.NEWLINE,
                tokenize.COMMENT,
                tokenize.ENDMARKER,
                tokenize.INDENT,
                tokenize.DEDENT,
            )
        ]
    except (tokenize.TokenError, SyntaxError, IndentationError) as exc:
        raise ActionError(f"cannot tokenize action {code[:80]!r}: {exc}") from None
    lines, calls, i = code.splitlines(), [], 0

    def offset(pos):
        return sum(len(line) + 1 for line in lines[: pos[0] - 1]) + pos[1]

    while i < len(tokens):
        name_parts = [tokens[i].string]
        if tokens[i].type != tokenize.NAME:
            raise ActionError(f"expected an action call, got {tokens[i].string!r} in {code[:80]!r}")
        while (
            i + 2 < len(tokens)
            and tokens[i + 1].string == "."
            and tokens[i + 2].type == tokenize.NAME
        ):
            name_parts.append(tokens[i + 2].string)
            i += 2
        if i + 1 >= len(tokens) or tokens[i + 1].string != "(":
            raise ActionError(f"expected '(' after {'.'.join(name_parts)!r}")
        depth, j = 0, i + 1
        while j < len(tokens):
            depth += {"(": 1, ")": -1}.get(tokens[j].string, 0)
            if depth == 0:
                break
            j += 1
        if depth:
            raise ActionError(f"unbalanced parentheses in {code[:80]!r}")
        source = code[offset(tokens[i + 1].start) : offset(tokens[j].end)]
        try:
            call = ast.parse("f" + source, mode="eval").body
            args = [ast.literal_eval(a) for a in call.args]
            kwargs = {k.arg: ast.literal_eval(k.value) for k in call.keywords}
        except (SyntaxError, ValueError) as exc:
            raise ActionError(
                f"arguments of {'.'.join(name_parts)} must be literals: {exc}"
            ) from None
        calls.append((".".join(name_parts), args, kwargs))
        i = j + 1
    return calls


def parse_browsergym_calls(code: str, multiaction: bool = False) -> list[tuple[str, list]]:
    """BrowserGym's action string -> [(name, args)] (keywords folded into positions). Unknown
    name -> NameError; several calls without multiaction -> ValueError (BrowserGym's core action
    parsing)."""
    out = []
    for name, args, kwargs in _scan_calls(code):
        if name not in BROWSERGYM_SIGNATURES and name not in BROWSERGYM_UNSUPPORTED:
            raise NameError(f"Invalid action type '{name}'")
        params = BROWSERGYM_SIGNATURES.get(name, ())
        for k, v in kwargs.items():
            if k not in params:
                raise ActionError(f"{name}() got an unexpected keyword argument {k!r}")
            pos = params.index(k)
            args = args + [None] * (pos + 1 - len(args)) if len(args) <= pos else args
            args[pos] = v
        out.append((name, args))
    if len(out) > 1 and not multiaction:
        raise ValueError(f"received {len(out)} actions but multiaction is off")
    if not out:
        raise ActionError("empty BrowserGym action")
    return out


def _bid(value) -> int:
    if isinstance(value, int) or (isinstance(value, str) and value.isdigit()):
        return int(value)
    raise ActionError(
        f"unknown element bid {value!r}; the toy phone's bids are the indices in axtree_txt"
    )


def browsergym_to_action(name: str, args: list) -> GUIAction:
    if name in BROWSERGYM_UNSUPPORTED:
        raise ActionError(f"BrowserGym action {name!r} is not supported on the toy phone")
    a = list(args) + [None] * 3
    if name == "click":
        return GUIAction("click", index=_bid(a[0]))
    if name == "fill":
        return GUIAction("input_text", index=_bid(a[0]), text=str(a[1] or ""))
    if name in ("press", "keyboard_press"):
        key = a[1] if name == "press" else a[0]
        if str(key).lower() != "enter":
            raise ActionError(f"key {key!r}: only Enter exists on the toy phone")
        return GUIAction("keyboard_enter")
    if name == "scroll":
        dx, dy = float(a[0] or 0), float(a[1] or 0)
        return GUIAction(
            "scroll",
            direction=("down" if dy > 0 else "up")
            if abs(dy) >= abs(dx)
            else ("right" if dx > 0 else "left"),
        )
    if name == "mouse_click":
        return GUIAction("click", x=float(a[0]), y=float(a[1]))
    if name == "keyboard_type":
        return GUIAction("input_text", text=str(a[0]))
    if name == "go_back":
        return GUIAction("navigate_back")
    if name == "noop":
        return GUIAction("wait")
    if name == "send_msg_to_user":
        return GUIAction("answer", text=str(a[0]))
    return GUIAction("status", goal_status="infeasible")  # report_infeasible


def parse_pyautogui(code: str) -> GUIAction:
    """One pyautogui-style call: `click(x=10, y=20)`, `write('abc')`, `press('enter')`,
    `scroll(-3)`."""
    calls = _scan_calls(code)
    if len(calls) != 1:
        raise ActionError(f"expected one pyautogui call, got {len(calls)}")
    name, args, kwargs = calls[0]
    name = name.removeprefix("pyautogui.")
    if name == "click":
        x, y = (
            kwargs.get("x", args[0] if args else None),
            kwargs.get("y", args[1] if len(args) > 1 else None),
        )
        if not isinstance(x, (int, float)) or not isinstance(y, (int, float)):
            raise ActionError("pyautogui click needs numeric x and y")
        return GUIAction("click", x=float(x), y=float(y))
    if name in ("write", "typewrite"):
        return GUIAction("input_text", text=str(kwargs.get("message", args[0] if args else "")))
    if name == "press" and str(args[0] if args else kwargs.get("keys", "")).lower() == "enter":
        return GUIAction("keyboard_enter")
    if name == "scroll":
        clicks = kwargs.get("clicks", args[0] if args else 0)
        return GUIAction(
            "scroll", direction="up" if clicks > 0 else "down"
        )  # pyautogui: positive scrolls up
    raise ActionError(f"pyautogui call {name!r} is not supported on the toy phone")


def format_webarena(action: GUIAction) -> str:
    t = action.action_type
    if t == "click" and action.index is not None:
        return f"click [{action.index}]"
    if t == "input_text" and action.index is not None:
        enter = (action.text or "").endswith("\n")
        return f"type [{action.index}] [{(action.text or '').rstrip(chr(10))}] [{int(enter)}]"
    if t == "scroll" and action.direction in ("up", "down"):
        return f"scroll [{action.direction}]"
    if t == "keyboard_enter":
        return "press [enter]"
    if t == "navigate_back":
        return "go_back"
    if t == "answer":
        return f"stop [{action.text}]"
    if t == "status":
        return "stop [N/A]" if action.goal_status == "infeasible" else "stop []"
    raise ActionError(f"{t} has no WebArena form")


def format_browsergym(action: GUIAction) -> str:
    t = action.action_type
    if t == "click":
        return (
            f"click('{action.index}')"
            if action.index is not None
            else f"mouse_click({action.x}, {action.y})"
        )
    if t == "input_text":
        return (
            f"fill('{action.index}', {action.text!r})"
            if action.index is not None
            else f"keyboard_type({action.text!r})"
        )
    if t == "keyboard_enter":
        return "keyboard_press('Enter')"
    if t == "scroll":
        dx, dy = {"up": (0, -100), "down": (0, 100), "left": (-100, 0), "right": (100, 0)}[
            action.direction
        ]
        return f"scroll({dx}, {dy})"
    if t == "navigate_back":
        return "go_back()"
    if t == "wait":
        return "noop()"
    if t == "answer":
        return f"send_msg_to_user({action.text!r})"
    if t == "status" and action.goal_status == "infeasible":
        return "report_infeasible('infeasible')"
    raise ActionError(f"{t} has no BrowserGym form")


# ------------------------------------------------------------------------------------------------
# Parsers: every external action format -> GUIAction


def _extract_json_object(text: str) -> dict:
    """The last balanced {...} in the text, parsed; raises ActionError naming what was wrong."""
    fenced = re.findall(r"```(?:json)?\s*(\{.*?\})\s*```", text, re.S)
    candidate = fenced[-1] if fenced else last_json_object(text)
    if candidate is None:
        raise ActionError(f"no JSON object found in {text[:80]!r}")
    try:
        obj = json.loads(candidate)
    except json.JSONDecodeError as exc:
        raise ActionError(f"malformed JSON action {candidate[:80]!r}: {exc}") from None
    if not isinstance(obj, dict):
        raise ActionError("the JSON action must be an object")
    return obj


_JSON_FIELDS = ("action_type", "index", "x", "y", "text", "direction", "app_name", "goal_status")


def parse_json_action(action: str | dict) -> GUIAction:
    """AndroidWorld JSONAction: {"action_type": "click", "index": 3}; unknown keys are errors."""
    obj = _extract_json_object(action) if isinstance(action, str) else dict(action)
    unknown = set(obj) - set(_JSON_FIELDS)
    if unknown:
        raise ActionError(
            f"unknown JSON action keys {sorted(unknown)}; allowed: {list(_JSON_FIELDS)}"
        )
    if "action_type" not in obj:
        raise ActionError("JSON action is missing 'action_type'")
    if obj.get("index") is not None:
        try:
            obj["index"] = int(obj["index"])
        except (TypeError, ValueError):
            raise ActionError(f"index {obj['index']!r} is not an integer") from None
    return validate_action(GUIAction(**obj))


def parse_osgenesis(text: str) -> tuple[str, GUIAction]:
    """'Low-level thought: ...\\naction: {json}' (OS-Genesis mobile target) -> (thought, action)."""
    match = re.search(r"action\s*:\s*(\{.*\})", text, re.S | re.I)
    if not match:
        raise ActionError("no 'action: {...}' line found in the OS-Genesis output")
    thought = re.search(r"Low-level thought\s*:\s*(.*?)\s*(?:\n|action\s*:)", text, re.S | re.I)
    return (thought.group(1).strip() if thought else ""), parse_json_action(match.group(1))


def osgenesis_to_indexed(action: GUIAction, ui_elements: list[dict]) -> GUIAction:
    """OS-Genesis evaluation: (x, y) -> the nearest element centre's index."""
    if action.x is None:
        return action
    index = nearest_center_index(action.x, action.y, ui_elements)
    if index is None:
        raise ActionError("no element on screen to ground the point to")
    return GUIAction(**{**action.to_dict(), "x": None, "y": None, "index": index})


def with_center_point(action: GUIAction, ui_elements: list[dict]) -> GUIAction:
    """Index -> element centre (x, y): the OS-Genesis mobile training target's coordinates."""
    if action.index is None:
        return action
    x, y = element_center(ui_elements[action.index])
    return GUIAction(**{**action.to_dict(), "index": None, "x": x, "y": y})


# -- GUIMid: a planner writes a description; a grounder turns it into a point --


@dataclass
class GUIMidOutput:
    thought: str
    description: str
    action: str
    value: str


GUIMID_KEYS = ("Element Description", "Action", "Value")


def parse_guimid(text: str) -> GUIMidOutput:
    """The GUIMid planner's output: a thought, then a fenced JSON block
    {"Element Description", "Action", "Value"}."""
    obj = _extract_json_object(text)
    missing = [k for k in GUIMID_KEYS if k not in obj]
    if missing:
        raise ActionError(
            f"GUIMid action is missing key(s) {missing}; it needs {list(GUIMID_KEYS)}"
        )
    start = text.find("```")
    thought = (text[:start] if start >= 0 else text[: text.find("{")]).strip()
    return GUIMidOutput(
        thought,
        str(obj["Element Description"] or ""),
        str(obj["Action"] or "").strip().lower(),
        "" if obj["Value"] is None else str(obj["Value"]),
    )


class Grounder(Protocol):
    """Maps an element description to a normalised point (x, y) in [0, 1] or None (UGround)."""

    def ground(self, description: str, obs: dict) -> tuple[float, float] | None: ...


class StubGrounder:
    """Stand-in for UGround: fuzzy-match the description against element names (ratio of difflib,
    1.0 for containment) and return the best element's normalised bbox centre."""

    def __init__(self, threshold: float = 0.5):
        self.threshold = threshold

    def ground(self, description: str, obs: dict) -> tuple[float, float] | None:
        want = normalize_answer(description)
        best, best_score = None, self.threshold
        for e in obs["ui_elements"]:
            if e["role"] == "list":
                continue
            name = normalize_answer(e["text"])
            score = (
                1.0
                if want and (want == name)
                else 0.9
                if want and name and (want in name or name in want)
                else difflib.SequenceMatcher(None, want, name).ratio()
            )
            score += (
                0.01 * e["is_clickable"]
            )  # on a tie ("Wi-Fi" heading vs "Wi-Fi" switch) prefer what acts
            if score > best_score:
                best, best_score = e, score
        if best is None:
            return None
        x, y = element_center(best)
        return x / SCREEN_W, y / SCREEN_H


def parse_point(text: str) -> tuple[float, float] | None:
    """'(x, y)' with x, y in [0, 1000) (UGround-V1's output) -> normalised (x, y), else None."""
    m = re.search(r"\(\s*(-?\d+(?:\.\d+)?)\s*,\s*(-?\d+(?:\.\d+)?)\s*\)", text or "")
    if not m:
        return None
    x, y = float(m.group(1)) / 1000, float(m.group(2)) / 1000
    return (x, y) if 0 <= x <= 1 and 0 <= y <= 1 else None


class ModelGrounder:
    """A VLM behind the Grounder interface (GUIMid: a frozen UGround-V1-7B), one copy a rank."""

    def __init__(self, path: str, device="cpu", dtype="auto"):
        from common.models import load_model, load_processor  # torch only when asked for
        from common.sampling import HFSampler

        model = load_model(path, vlm=True, dtype=dtype, device=device)
        self.sampler = HFSampler(model, load_processor(path))
        self.failures = 0

    def ground(self, description: str, obs: dict) -> tuple[float, float] | None:
        ask = f"Point to the element on this screen described as: {description}\n"
        ask += "Answer with one point (x, y) in [0, 1000)."
        out = self.sampler.generate(
            [[{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": ask}]}]],
            temperature=0,
            max_new_tokens=24,
            images=[obs["screenshot"]],
        )
        point = parse_point(out[0][0].text)
        self.failures += point is None
        return point


def guimid_to_action(out: GUIMidOutput, obs: dict, grounder: Grounder) -> GUIAction:
    """GUIMid mobile actions -> GUIAction (click, type, scroll, go_back, go_home, long_press, enter,
    open_app, wait, stop [completed | infeasible | answer])."""
    a, v = out.action.replace(" ", "_"), out.value.strip()
    if a in ("click", "long_press", "type"):
        point = grounder.ground(out.description, obs)
        if point is None:
            raise ActionError(
                f"could not ground element description {out.description!r} on this screen"
            )
        x, y = point[0] * SCREEN_W, point[1] * SCREEN_H
        if a == "type":
            return GUIAction("input_text", x=x, y=y, text=out.value)
        return GUIAction(a, x=x, y=y)
    if a == "scroll":
        return GUIAction("scroll", direction=v.lower())
    if a in ("go_back", "back"):
        return GUIAction("navigate_back")
    if a in ("go_home", "home"):
        return GUIAction("navigate_home")
    if a in ("enter", "press") and (a == "enter" or v.lower() == "enter"):
        return GUIAction("keyboard_enter")
    if a == "open_app":
        return GUIAction("open_app", app_name=v)
    if a == "wait":
        return GUIAction("wait")
    if a == "stop":
        if v.lower() in ("infeasible", "n/a"):
            return GUIAction("status", goal_status="infeasible")
        if v.lower() in ("", "completed", "complete", "done"):
            return GUIAction("status", goal_status="complete")
        return GUIAction("answer", text=v)
    raise ActionError(f"GUIMid action {out.action!r} is not a mobile action the toy phone supports")


def parse_action(
    text: str | dict,
    fmt: str = "auto",
    ui_elements: list[dict] | None = None,
    grounder: Grounder | None = None,
) -> GUIAction:
    """Any format -> GUIAction. fmt: auto | json | osgenesis | guimid | webarena | browsergym |
    pyautogui. Grounding needs the current ui_elements (OS-Genesis points, GUIMid descriptions)."""
    if isinstance(text, dict):
        return parse_json_action(text)
    if not isinstance(text, str):
        raise ActionError(
            f"an action must be a GUIAction, dict or string, not {type(text).__name__}"
        )
    s = text.strip()
    if fmt == "auto":
        fmt = (
            "osgenesis"
            if re.search(r"low-level thought", s, re.I)
            else "guimid"
            if "Element Description" in s
            else "json"
            if "action_type" in s
            else "pyautogui"
            if s.startswith("pyautogui.")
            else "webarena"
            if re.match(r"(```\w*\s*)?[a-z_]+( \[|$)", s) or "```" in s
            else "browsergym"
        )
    if fmt == "json":
        return parse_json_action(s)
    if fmt == "osgenesis":
        action = parse_osgenesis(s)[1]
        return osgenesis_to_indexed(action, ui_elements or [])
    if fmt == "guimid":
        return guimid_to_action(
            parse_guimid(s), {"ui_elements": ui_elements or []}, grounder or StubGrounder()
        )
    if fmt == "webarena":
        return parse_webarena(s)
    if fmt == "pyautogui":
        return parse_pyautogui(s)
    if fmt == "browsergym":
        return browsergym_to_action(*parse_browsergym_calls(s)[0])
    raise ValueError(f"unknown action format {fmt!r}")


# ------------------------------------------------------------------------------------------------
# Formatters: GUIAction -> external formats


def format_osgenesis(thought: str, action: GUIAction) -> str:
    """The OS-Genesis mobile training target ("Low-level thought: ...\naction: {json}")."""
    return f"Low-level thought: {thought}\naction: {action.to_json()}"


def format_guimid(thought: str, description: str, action: str, value: str = "") -> str:
    block = json.dumps(
        {"Element Description": description, "Action": action, "Value": value}, ensure_ascii=False
    )
    return f"{thought}\n```json\n{block}\n```"


def action_to_guimid(action: GUIAction, ui_elements: list[dict]) -> tuple[str, str, str]:
    """(Element Description, Action, Value) for a GUIAction; the element is named by its label."""
    target = (
        action.index
        if action.index is not None
        else (element_at_point(action.x, action.y, ui_elements) if action.x is not None else None)
    )
    desc = ui_elements[target]["text"] if target is not None else ""
    t = action.action_type
    table = {
        "click": ("click", ""),
        "long_press": ("long_press", ""),
        "input_text": ("type", (action.text or "").rstrip("\n")),
        "keyboard_enter": ("enter", ""),
        "scroll": ("scroll", action.direction or ""),
        "navigate_back": ("go_back", ""),
        "navigate_home": ("go_home", ""),
        "open_app": ("open_app", action.app_name or ""),
        "wait": ("wait", ""),
        "answer": ("stop", action.text or ""),
        "status": ("stop", "infeasible" if action.goal_status == "infeasible" else "completed"),
    }
    verb, value = table[t]
    return desc, verb, value


# ------------------------------------------------------------------------------------------------
# GUIMid's planner (guimid.py; arXiv 2504.10127): the prompt it reads, the target it is trained
# on, and the policy that runs it in common.gui_env.run_episodes


def user_msg(text: str, image: bool) -> dict:
    """A user turn; with an image, the processor's placeholder comes first."""
    content = [{"type": "image"}, {"type": "text", "text": text}] if image else text
    return {"role": "user", "content": content}


def history_entry(description: str, action: str, value: str) -> str:
    """One line of the planner's memory of earlier high-level actions ("click 'Sound'")."""
    if action in ("click", "long_press", "hover"):
        return f"{action} '{description}'"
    if action == "type":
        return f"type '{value}' into '{description}'"
    if action == "scroll":
        return f"{action} {value}".strip()
    return f"{action} '{value}'" if value else action


def planner_messages(goal: str, obs: dict, history: list[str], observation="screenshot") -> list:
    """Screenshot + URL/app + earlier actions + task in (the paper trains and evaluates on the
    same prompt)."""
    past = "\n".join(f"step {i + 1}: {h}" for i, h in enumerate(history)) or "none"
    text = f"Task: {goal}\nApp: {obs.get('app', '')} URL: {obs.get('url', '')}\n"
    text += f"Previous actions:\n{past}\n"
    if observation == "screenshot+axtree":
        text += format_axtree(obs["ui_elements"]) + "\n"
    return [user_msg(text + "Next action?", True)]


def planner_target(description: str, action: str, value: str) -> str:
    """A thought, then the fenced JSON action."""
    thought = f"I will {history_entry(description, action, value)}."
    return format_guimid(thought, description, action, value)


class Planner:
    """The GUIMid agent as a `common.gui_env.run_episodes` policy: prompt -> text (`generate`,
    greedy as the paper decodes) -> parsed JSON -> grounded action. Garbage never crashes: the
    step becomes an invalid action (None) and the history says so."""

    def __init__(self, generate, grounder: Grounder, observation: str):
        self.generate, self.grounder, self.observation = generate, grounder, observation

    def __call__(self, items: list[tuple]) -> list[tuple]:
        messages = [
            planner_messages(obs["goal"], obs, [s["thought"] for s in steps], self.observation)
            for _, obs, steps in items
        ]
        texts = self.generate(messages, [obs["screenshot"] for _, obs, _ in items])
        decisions = []
        for (_, obs, _), text in zip(items, texts):
            try:
                out = parse_guimid(text)
                action = guimid_to_action(out, obs, self.grounder)
                decisions.append((history_entry(out.description, out.action, out.value), action))
            except (ActionError, ValueError) as exc:
                decisions.append((f"invalid action ({type(exc).__name__})", None))
        return decisions


# ------------------------------------------------------------------------------------------------
# The MidGUI release rows -> samples {"messages": [...], "image": PIL | path | None}. Their columns
# are not documented, so LLaVA `conversations`, chat `messages` and prompt/response-like columns
# are all read.

ROLES = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant"}
ROLES["system"] = "system"
PAIRS = (("instruction", "output"), ("problem", "solution"), ("prompt", "response"))
PAIRS += (("question", "answer"),)


def rows_to_samples(rows: list[dict], source: str, image_root: str) -> list[dict]:
    """Release rows -> samples: LLaVA conversations, chat messages or prompt/response columns."""
    samples = []
    for i, r in enumerate(rows):
        conv = r.get("conversations") or r.get("messages")
        if conv is None:
            pair = next(((p, q) for p, q in PAIRS if p in r and q in r), None)
            if pair is None:
                raise ValueError(
                    f"{source} row {i}: no conversations/messages or prompt/response-like "
                    f"columns ({sorted(r)})"
                )
            conv = [{"role": "user", "content": r[pair[0]]}]
            conv += [{"role": "assistant", "content": r[pair[1]]}]
        image = r.get("image") or r.get("images")
        image = image[0] if isinstance(image, list) and len(image) == 1 else image
        if isinstance(image, list):
            raise ValueError(f"{source} row {i}: {len(image)} images; one per sample is supported")
        if isinstance(image, str) and image_root:
            image = str(Path(image_root) / image)
        messages = []
        for m in conv:
            speaker = m.get("from", m.get("role"))
            role, text = ROLES.get(speaker), str(m.get("value", m.get("content", "")))
            if role is None:
                raise ValueError(f"{source} row {i}: unknown speaker {speaker!r}")
            first_user = role == "user" and not any(x["role"] == "user" for x in messages)
            if image is not None and first_user:  # the image goes with the first user turn
                messages.append(user_msg(text.replace("<image>", "").strip(), True))
            else:
                messages.append({"role": role, "content": text})
        samples.append({"messages": messages, "image": image})
    return samples


def load_release(source: str, image_root: str) -> list[dict]:
    """A release file (hf://datasets/... or a local JSON/JSONL/parquet) -> samples."""
    if source.startswith("hf://"):
        import datasets  # only when asked for

        rows = [dict(r) for r in datasets.load_dataset("json", data_files=source, split="train")]
    else:
        rows = load_rows(source)
    return rows_to_samples(rows, source, image_root)
