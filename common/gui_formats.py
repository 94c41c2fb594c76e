"""WebArena, BrowserGym and pyautogui action strings <-> GUIAction, for adapters and tests.

The toy phone's agents speak AndroidWorld JSON, OS-Genesis and GUIMid (common/gui_env.py); these
three formats are here so that `ToyGUIEnv.step` and `parse_action` also accept what a WebArena,
BrowserGym or pyautogui agent writes (and the tests pin their parsing rules to those projects').
"""

from __future__ import annotations

import ast
import io
import re
import tokenize

from common.gui_env import ActionError, GUIAction


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
    """Top-level `name(literal, ...)` calls in order (BrowserGym/pyautogui call strings). Each call's
    arguments must be Python literals; anything else is a ValueError."""
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
    """BrowserGym's action string -> [(name, args)] (keywords folded into positions). Unknown name ->
    NameError; several calls without multiaction -> ValueError (BrowserGym core action parsing)."""
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
    """pyautogui-style `click(x=10, y=20)`, `write('abc')`, `press('enter')`, `scroll(-3)` (one call)."""
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
