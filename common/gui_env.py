"""A small simulated phone ("toy GUI world") shared by os_genesis.py and guimid.py.

What it is (spec `gui_agents.md` section 3, the toy environment contract):
- A pure-Python screen graph: a launcher plus four apps (Settings, Notes, Shop, Mail), several screens
  each. Widgets have {id, role, name, bbox, clickable, editable, scrollable, long_clickable, value,
  checked}; callbacks mutate the app state and switch screens; a back stack serves `navigate_back`.
- Gymnasium signatures as in BrowserGym: `reset(task) -> (obs, info)`,
  `step(action) -> (obs, reward, terminated, truncated, info)`. The observation holds `goal`, `url`
  (`toy://app/screen`), `screenshot` (a deterministic 128x192 pillow render with visible labels),
  `axtree_txt` (`[id] role 'name'` lines for text-only agents), `ui_elements` (AndroidWorld-style dicts
  with index, role, text, bbox_pixels and the is_* flags), `last_action`, `last_action_error`.
- One internal action type, `GUIAction`, mirroring AndroidWorld's `JSONAction`. Parsers turn every
  external format into it: AndroidWorld JSON, OS-Genesis "Low-level thought / action" outputs
  (coordinates -> nearest element centre), GUIMid fenced JSON {"Element Description", "Action",
  "Value"} (through a grounder; the stub one fuzzy-matches names), WebArena strings, BrowserGym calls
  and pyautogui calls. Formatters write AndroidWorld JSON, OS-Genesis targets, GUIMid blocks, WebArena
  and BrowserGym strings.
- Tasks are checks on the app state (reward in {0, 1}); question tasks compare a normalised answer;
  infeasible tasks expect `status: infeasible`. Optional subgoals are OR-accumulated (AgentBoard).
  `ScriptedExpert` solves every task; `TASKS` has a deterministic train/test split.
- Bad actions (unknown index, malformed string, unsupported verb) never raise out of `step`: they set
  `last_action_error`, change nothing and cost a step.
- `GUIEnvironment` is the small protocol an agent loop needs; a BrowserGym or AndroidWorld adapter
  implements it by mapping observations to these keys and `GUIAction` to that library's action
  (`format_browsergym`, `GUIAction.to_json`); see docs/gui_world.md.
"""

from __future__ import annotations

import ast
import difflib
import hashlib
import io
import json
import math
import re
import tokenize
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Protocol, runtime_checkable

from PIL import Image, ImageDraw, ImageFont

from common.rewards import last_json_object

SCREEN_W, SCREEN_H = 128, 192  # small on purpose: a tiny VLM processor resizes it anyway
STATUS_BAR_H = 14
ROW_H = 17
ROWS_PER_PAGE = (SCREEN_H - STATUS_BAR_H) // ROW_H  # 10 rows of widgets fit on one page
SCROLL_ROWS = ROWS_PER_PAGE // 2  # one scroll moves half a page, so context overlaps
BACKGROUND = (245, 245, 245)

ACTION_TYPES = ("click", "long_press", "input_text", "keyboard_enter", "scroll", "navigate_back",
                "navigate_home", "open_app", "wait", "status", "answer")
TARGETED = ("click", "long_press", "input_text", "scroll")  # may name an element (index or x, y)
SCROLL_DIRECTIONS = ("up", "down", "left", "right")
GOAL_STATUSES = ("complete", "infeasible")


class ActionError(ValueError):
    """A malformed or impossible action; `step` turns it into `last_action_error`."""


# ----------------------------------------------------------------------------------------------------
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
    """Raise ActionError when the action breaks the JSONAction rules (spec section 5 check 3)."""
    t = action.action_type
    if t not in ACTION_TYPES:
        raise ActionError(f"unknown action_type {t!r}; expected one of {', '.join(ACTION_TYPES)}")
    has_index = action.index is not None
    has_point = action.x is not None or action.y is not None
    if has_point and (action.x is None or action.y is None):
        raise ActionError(f"{t}: give both x and y")
    for name in ("x", "y"):
        value = getattr(action, name)
        if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value)):
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
        raise ActionError(f"scroll direction {action.direction!r} is not one of {SCROLL_DIRECTIONS}")
    if t == "open_app" and not action.app_name:
        raise ActionError("open_app needs app_name")
    if t == "status" and action.goal_status not in GOAL_STATUSES:
        raise ActionError(f"status goal_status {action.goal_status!r} is not one of {GOAL_STATUSES}")
    return action


# ----------------------------------------------------------------------------------------------------
# Widgets, screens and the four apps


@dataclass
class Widget:
    key: str  # stable resource id ("wifi_switch", "note:3"); the index changes with the screen
    role: str  # heading | text | button | listitem | switch | radio | textbox | icon | list
    name: str
    value: str = ""
    checked: bool | None = None
    width: float = 1.0  # share of its row
    on_click: Callable[[], None] | None = None
    on_long_press: Callable[[], None] | None = None
    on_type: Callable[[str], None] | None = None  # editable when set
    on_submit: Callable[[], None] | None = None  # Enter in a text field
    bbox: tuple[int, int, int, int] = (0, 0, 0, 0)  # (x_min, y_min, x_max, y_max), set by layout

    @property
    def clickable(self) -> bool:
        return self.on_click is not None or self.on_type is not None


def _text(key, name, width=1.0):
    return Widget(key, "text", name, width=width)


def _button(key, name, on_click, width=1.0):
    return Widget(key, "button", name, on_click=on_click, width=width)


def _item(key, name, on_click, on_long_press=None):
    return Widget(key, "listitem", name, on_click=on_click, on_long_press=on_long_press)


def _switch(key, name, state: dict, field_name: str):
    def toggle():
        state[field_name] = not state[field_name]
    return Widget(key, "switch", name, checked=bool(state[field_name]), on_click=toggle)


def _textbox(key, name, drafts: dict, field_name: str, on_submit=None, width=1.0):
    def set_text(text):
        drafts[field_name] = text
    return Widget(key, "textbox", name, value=drafts.get(field_name, ""), on_type=set_text,
                  on_submit=on_submit, width=width)


class App:
    """An app: `initial_state()` plain data, and `screen_<name>(state, params, nav) -> (title, rows)`
    where rows is a list of widget lists. `nav` is the environment (push / back / flash)."""

    name, label, root = "", "", ""

    def initial_state(self) -> dict:
        raise NotImplementedError

    def build(self, screen: str, state: dict, params: dict, nav: "ToyGUIEnv"):
        return getattr(self, f"screen_{screen}")(state, params, nav)


class SettingsApp(App):
    name, label, root = "settings", "Settings", "main"

    def initial_state(self):
        return dict(airplane=False, wifi=True, network="HomeNet",
                    networks=["HomeNet", "CafeFree", "Office5G", "Guest"], bluetooth=False,
                    dark_theme=False, brightness=5, font_size="Default", volume=6, dnd=False,
                    vibrate=True, device_name="Toy Phone", model="Toy Phone 1", android="14",
                    drafts={})

    def screen_main(self, s, p, nav):
        return "Settings", [[_switch("airplane_switch", "Airplane mode", s, "airplane")]] + [
            [_item(f"open_{screen}", label, lambda screen=screen: nav.push(screen))]
            for screen, label in [("wifi", "Network & Wi-Fi"), ("bluetooth", "Bluetooth"),
                                  ("display", "Display"), ("sound", "Sound"), ("about", "About phone")]]

    def screen_wifi(self, s, p, nav):
        rows = [[_switch("wifi_switch", "Wi-Fi", s, "wifi")]]
        if not s["wifi"]:
            return "Wi-Fi", rows + [[_text("wifi_off", "Wi-Fi is off")]]
        rows.append([_text("wifi_status", f"Connected: {s['network']}" if s["network"] else "Not connected")])
        for net in s["networks"]:
            rows.append([_item(f"network:{net}", net, lambda net=net: s.update(network=net))])
        return "Wi-Fi", rows

    def screen_bluetooth(self, s, p, nav):
        rows = [[_switch("bluetooth_switch", "Bluetooth", s, "bluetooth")]]
        rows.append([_text("bt_visible", f"Visible as {s['device_name']}" if s["bluetooth"] else "Bluetooth is off")])
        return "Bluetooth", rows

    def screen_display(self, s, p, nav):
        def bump(delta):
            s["brightness"] = min(10, max(0, s["brightness"] + delta))
        return "Display", [
            [_switch("dark_switch", "Dark theme", s, "dark_theme")],
            [_text("brightness_value", f"Brightness {s['brightness']}", 0.6),
             _button("brightness_down", "-", lambda: bump(-1), 0.2), _button("brightness_up", "+", lambda: bump(1), 0.2)],
            [_item("open_font", f"Font size: {s['font_size']}", lambda: nav.push("font"))]]

    def screen_font(self, s, p, nav):
        return "Font size", [[Widget(f"font:{size}", "radio", size, checked=s["font_size"] == size,
                                     on_click=lambda size=size: s.update(font_size=size))]
                             for size in ("Small", "Default", "Large")]

    def screen_sound(self, s, p, nav):
        def bump(delta):
            s["volume"] = min(10, max(0, s["volume"] + delta))
        return "Sound", [
            [_text("volume_value", f"Volume {s['volume']}", 0.6),
             _button("volume_down", "-", lambda: bump(-1), 0.2), _button("volume_up", "+", lambda: bump(1), 0.2)],
            [_switch("dnd_switch", "Do not disturb", s, "dnd")],
            [_switch("vibrate_switch", "Vibrate", s, "vibrate")]]

    def screen_about(self, s, p, nav):
        d = s["drafts"]
        d.setdefault("device_name", s["device_name"])

        def save():
            if not d["device_name"].strip():
                return nav.flash("Name cannot be empty")
            s["device_name"] = d["device_name"].strip()
            nav.flash("Saved")
        return "About phone", [[_text("model", f"Model: {s['model']}")],
                               [_text("android_version", f"Android {s['android']}")],
                               [_textbox("device_name_box", "Device name", d, "device_name", on_submit=save)],
                               [_button("save_name", "Save", save)]]


class NotesApp(App):
    name, label, root = "notes", "Notes", "list"

    def initial_state(self):
        titles = [("Groceries", "milk, eggs"), ("Wifi password", "sunflower42"), ("Meeting", "Tuesday 10am"),
                  ("Books to read", "Dune"), ("Gym plan", "run 5k"), ("Recipes", "pancakes"),
                  ("Trip ideas", "Lisbon"), ("Birthday gifts", "scarf"), ("Passwords", "ask IT"),
                  ("Movies", "Alien")]
        notes = [dict(id=i + 1, title=t, body=b, pinned=False) for i, (t, b) in enumerate(titles)]
        return dict(notes=notes, next_id=len(notes) + 1, drafts={})

    @staticmethod
    def _find(s, note_id):
        return next((n for n in s["notes"] if n["id"] == note_id), None)

    def screen_list(self, s, p, nav):
        def open_editor(note_id):
            note = self._find(s, note_id) or dict(title="", body="")
            s["drafts"] = dict(title=note["title"], body=note["body"])
            nav.push("editor", note_id=note_id)
        rows = [[_button("new_note", "New note", lambda: open_editor(None))]]
        for n in sorted(s["notes"], key=lambda n: not n["pinned"]):  # pinned first, stable otherwise
            rows.append([_item(f"note:{n['id']}", n["title"] + (" (pinned)" if n["pinned"] else ""),
                               lambda i=n["id"]: open_editor(i), lambda i=n["id"]: nav.push("menu", note_id=i))])
        return "Notes", rows

    def screen_editor(self, s, p, nav):
        d = s["drafts"]

        def save():
            if not d.get("title", "").strip():
                return nav.flash("Title required")
            note = self._find(s, p["note_id"])
            if note is None:
                note = dict(id=s["next_id"], title="", body="", pinned=False)
                s["next_id"] += 1
                s["notes"].append(note)
            note.update(title=d["title"].strip(), body=d.get("body", "").strip())
            nav.back()

        def delete():
            s["notes"] = [n for n in s["notes"] if n["id"] != p["note_id"]]
            nav.back()
        rows = [[_textbox("title_box", "Title", d, "title")], [_textbox("body_box", "Body", d, "body")],
                [_button("save_note", "Save", save, 0.5), _button("delete_note", "Delete", delete, 0.5)]]
        return ("New note" if p["note_id"] is None else "Edit note"), rows

    def screen_menu(self, s, p, nav):
        note = self._find(s, p["note_id"])
        if note is None:
            return "Note", [[_text("gone", "Note deleted")]]

        def pin():
            note["pinned"] = not note["pinned"]
            nav.back()

        def delete():
            s["notes"].remove(note)
            nav.back()
        return note["title"], [[_button("pin_note", "Unpin" if note["pinned"] else "Pin", pin)],
                               [_button("menu_delete", "Delete", delete)], [_button("menu_cancel", "Cancel", nav.back)]]


class ShopApp(App):
    name, label, root = "shop", "Shop", "home"
    PRODUCTS = [("Blue mug", 8, "Kitchen"), ("Tea kettle", 25, "Kitchen"), ("Frying pan", 30, "Kitchen"),
                ("Chef knife", 40, "Kitchen"), ("Cookbook", 18, "Books"), ("Sci-fi novel", 12, "Books"),
                ("Atlas", 22, "Books"), ("Garden hose", 27, "Garden"), ("Seed pack", 4, "Garden"),
                ("Trowel", 9, "Garden"), ("Flower pot", 11, "Garden")]

    def initial_state(self):
        return dict(products=[dict(name=n, price=p, category=c) for n, p, c in self.PRODUCTS],
                    cart={}, orders=[], drafts={})

    def screen_home(self, s, p, nav):
        d = s["drafts"]

        def search():
            nav.push("results", query=d.get("query", "").strip())
        rows = [[_textbox("search_box", "Search bar", d, "query", on_submit=search)],
                [_button("search_button", "Search", search)]]
        rows += [[_item(f"category:{c}", c, lambda c=c: nav.push("results", category=c))]
                 for c in ("Kitchen", "Books", "Garden")]
        rows.append([_button("open_cart", f"Cart ({sum(s['cart'].values())})", lambda: nav.push("cart"))])
        return "Shop", rows

    def screen_results(self, s, p, nav):
        query, category = p.get("query", ""), p.get("category")
        hits = [x for x in s["products"] if (category and x["category"] == category)
                or (not category and query.lower() in x["name"].lower())]

        def open_product(name):
            s["drafts"]["qty"] = 1
            nav.push("product", product=name)
        rows = [[_item(f"product:{x['name']}", f"{x['name']} ${x['price']}", lambda n=x["name"]: open_product(n))]
                for x in hits] or [[_text("no_results", "No results")]]
        return category or f"Search: {query}", rows

    def screen_product(self, s, p, nav):
        product = next(x for x in s["products"] if x["name"] == p["product"])
        d = s["drafts"]

        def bump(delta):
            d["qty"] = min(9, max(1, d.get("qty", 1) + delta))

        def add():
            s["cart"][product["name"]] = s["cart"].get(product["name"], 0) + d.get("qty", 1)
            nav.flash(f"Added {d.get('qty', 1)} to cart")
        return product["name"], [
            [_text("price", f"Price: ${product['price']}")],
            [_button("qty_down", "-", lambda: bump(-1), 0.25), _text("qty", f"Qty {d.get('qty', 1)}", 0.5),
             _button("qty_up", "+", lambda: bump(1), 0.25)],
            [_button("add_to_cart", "Add to cart", add)], [_button("view_cart", "View cart", lambda: nav.push("cart"))]]

    def screen_cart(self, s, p, nav):
        prices = {x["name"]: x["price"] for x in s["products"]}
        rows = [[_text(f"line:{n}", f"{n} x{q}", 0.65),
                 _button(f"remove:{n}", "Remove", lambda n=n: s["cart"].pop(n, None), 0.35)]
                for n, q in s["cart"].items()] or [[_text("cart_empty", "Cart is empty")]]
        rows.append([_text("total", f"Total: ${sum(prices[n] * q for n, q in s['cart'].items())}")])
        rows.append([_button("checkout", "Checkout", lambda: nav.push("checkout"))])
        return "Cart", rows

    def screen_checkout(self, s, p, nav):
        d = s["drafts"]

        def place():
            if not s["cart"]:
                return nav.flash("Cart is empty")
            if not d.get("address", "").strip():
                return nav.flash("Address required")
            s["orders"].append(dict(items=dict(s["cart"]), address=d["address"].strip()))
            s["cart"] = {}
            nav.push("confirmation")
        return "Checkout", [[_textbox("address_box", "Address", d, "address", on_submit=place)],
                            [_button("place_order", "Place order", place)]]

    def screen_confirmation(self, s, p, nav):
        return "Order placed", [[_text("order_number", f"Order #{len(s['orders'])} placed")],
                                [_button("done", "Done", lambda: nav.open_app("shop"))]]


class MailApp(App):
    name, label, root = "mail", "Mail", "inbox"

    def initial_state(self):
        mails = [("alice", "Lunch Friday?", "Pizza at noon?"), ("bob", "Quarterly report", "Draft attached"),
                 ("carol", "Photos", "From the trip"), ("dave", "Invoice 42", "Due next week"),
                 ("erin", "Book club", "Next pick: Dune"), ("frank", "Flight update", "Gate B12"),
                 ("grace", "Hello!", "Long time no see"), ("heidi", "Rent", "Paid, thanks")]
        return dict(emails=[dict(id=i + 1, sender=a, subject=b, body=c, starred=False)
                            for i, (a, b, c) in enumerate(mails)], sent=[], drafts={})

    def _compose(self, s, nav, to="", subject=""):
        s["drafts"] = dict(to=to, subject=subject, body="")
        nav.push("compose")

    def screen_inbox(self, s, p, nav):
        rows = [[_button("compose", "Compose", lambda: self._compose(s, nav), 0.5),
                 _button("open_sent", "Sent", lambda: nav.push("sent"), 0.5)]]
        for m in s["emails"]:
            rows.append([_item(f"email:{m['id']}", ("* " if m["starred"] else "") + f"{m['sender']}: {m['subject']}",
                               lambda i=m["id"]: nav.push("read", email_id=i),
                               lambda i=m["id"]: nav.push("mail_menu", email_id=i))])
        return "Inbox", rows

    def _email(self, s, p):
        return next((m for m in s["emails"] if m["id"] == p["email_id"]), None)

    def _delete(self, s, m, nav):
        s["emails"].remove(m)
        nav.back()

    def screen_read(self, s, p, nav):
        m = self._email(s, p)
        if m is None:
            return "Email", [[_text("gone", "Email deleted")]]
        return m["subject"], [
            [_text("from", f"From: {m['sender']}")], [_text("subject", m["subject"])], [_text("body", m["body"])],
            [_button("reply", "Reply", lambda: self._compose(s, nav, m["sender"], "Re: " + m["subject"]), 0.34),
             _button("star", "Unstar" if m["starred"] else "Star", lambda: m.update(starred=not m["starred"]), 0.33),
             _button("delete_email", "Delete", lambda: self._delete(s, m, nav), 0.33)]]

    def screen_mail_menu(self, s, p, nav):
        m = self._email(s, p)
        if m is None:
            return "Email", [[_text("gone", "Email deleted")]]

        def star():
            m["starred"] = not m["starred"]
            nav.back()
        return m["subject"], [[_button("menu_star", "Unstar" if m["starred"] else "Star", star)],
                              [_button("menu_delete", "Delete", lambda: self._delete(s, m, nav))],
                              [_button("menu_cancel", "Cancel", nav.back)]]

    def screen_compose(self, s, p, nav):
        d = s["drafts"]

        def send():
            if not d.get("to", "").strip():
                return nav.flash("Recipient required")
            s["sent"].append(dict(to=d["to"].strip(), subject=d.get("subject", "").strip(),
                                  body=d.get("body", "").strip()))
            nav.back()
        return "Compose", [[_textbox("to_box", "To", d, "to")], [_textbox("subject_box", "Subject", d, "subject")],
                           [_textbox("body_box", "Body", d, "body")], [_button("send", "Send", send)]]

    def screen_sent(self, s, p, nav):
        rows = [[_text(f"sent:{i}", f"To {m['to']}: {m['subject']}")] for i, m in enumerate(s["sent"])]
        return "Sent", rows or [[_text("sent_empty", "No sent mail")]]


APPS: dict[str, App] = {a.name: a for a in (SettingsApp(), NotesApp(), ShopApp(), MailApp())}


# ----------------------------------------------------------------------------------------------------
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
    """Spec section 3.3: a point resolves to the (smallest) element containing it, else the nearest
    centre; None for an empty screen."""
    inside = [e for e in ui_elements if e["bbox_pixels"]["x_min"] <= x < e["bbox_pixels"]["x_max"]
              and e["bbox_pixels"]["y_min"] <= y < e["bbox_pixels"]["y_max"]]
    if inside:
        b = lambda e: e["bbox_pixels"]  # noqa: E731
        return min(inside, key=lambda e: (b(e)["x_max"] - b(e)["x_min"]) * (b(e)["y_max"] - b(e)["y_min"]))["index"]
    return nearest_center_index(x, y, ui_elements)


def nearest_center_index(x: float, y: float, ui_elements: list[dict]) -> int | None:
    """OS-Genesis evaluation: a predicted (x, y) maps to the nearest element centre's index."""
    if not ui_elements:
        return None
    return min(ui_elements, key=lambda e: math.dist((x, y), element_center(e)))["index"]


def screen_signature(obs: dict) -> frozenset:
    """Spec section 3.5: the set of element identifiers on screen. The identifier includes the visible
    state (name, value, checked) so that toggling a switch counts as a change (the AndroidWorld walk
    reads text + content description, which a toggle also changes)."""
    return frozenset((e["resource_id"], e["text"], e["value"], e["is_checked"]) for e in obs["ui_elements"])


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
    """OS-Genesis mobile observation text: {"Get started": "(539.5, 2148.0)", ...} (text -> centre)."""
    return json.dumps({e["text"]: "({:.1f}, {:.1f})".format(*element_center(e))
                       for e in ui_elements if e["role"] not in ("list",)}, ensure_ascii=False)


def state_diff(before: Any, after: Any, path: str = "") -> list[tuple[str, Any, Any]]:
    """(path, old, new) for every leaf that changed; lists compare by value (drafts are skipped, they
    are typing in progress, not an effect)."""
    if isinstance(before, dict) and isinstance(after, dict):
        out = []
        for k in sorted(set(before) | set(after), key=str):
            if k == "drafts":
                continue
            out += state_diff(before.get(k), after.get(k), f"{path}/{k}")
        return out
    return [] if before == after else [(path, before, after)]


# ----------------------------------------------------------------------------------------------------
# Tasks


def normalize_answer(text: str) -> str:
    """Lower-case, drop surrounding quotes, a leading '$', trailing punctuation and extra spaces."""
    text = str(text).strip().lower().strip("'\"`").strip()
    text = re.sub(r"\s+", " ", text).rstrip(".!")
    return text.lstrip("$").replace(",", "")


@dataclass
class Task:
    """A goal plus the state predicate that says it was reached. `check=None` and `answer=None` for
    synthesized (unchecked) goals; `feasible=False` wants `status: infeasible`. `expert` is a plan of
    ('open_app', label) | ('click'|'long_press', key) | ('type', key, text) | ('answer', text) |
    ('status', goal_status) steps addressed by resource id."""

    task_id: str
    app: str
    goal: str
    check: Callable[[dict], bool] | None = None
    answer: str | None = None
    feasible: bool = True
    setup: Callable[[dict], None] | None = None
    expert: list = field(default_factory=list)
    subgoals: list = field(default_factory=list)  # [(description, predicate(state))]
    split: str = "train"
    max_steps: int = 15
    start_app: str | None = None  # None: start on the launcher, as AndroidWorld tasks do

    def to_dict(self) -> dict:
        return dict(task_id=self.task_id, app=self.app, goal=self.goal, answer=self.answer,
                    feasible=self.feasible, split=self.split, checked=self.check is not None)


def _set(app, **values):
    def setup(state):
        state[app].update(values)
    return setup


def _opened(app):
    return (f"open {app}", lambda st: st["system"]["visited_app"].get(app, False))


def _note_id(title):
    return next(n["id"] for n in NotesApp().initial_state()["notes"] if n["title"] == title)


def _email_id(sender):
    return next(m["id"] for m in MailApp().initial_state()["emails"] if m["sender"] == sender)


def build_tasks() -> list[Task]:
    """The task catalogue. Within each template the last parameter goes to the test split, so held-out
    tasks reuse seen screens with unseen parameters."""
    groups: list[list[Task]] = []
    S = "Settings"
    for field_name, key, screen, label, on in [
            ("bluetooth", "bluetooth_switch", "open_bluetooth", "Bluetooth", True),
            ("dnd", "dnd_switch", "open_sound", "Do not disturb", True),
            ("dark_theme", "dark_switch", "open_display", "dark theme", True),
            ("wifi", "wifi_switch", "open_wifi", "Wi-Fi", False),
            ("vibrate", "vibrate_switch", "open_sound", "vibration", False)]:
        verb = "on" if on else "off"
        groups.append([Task(f"settings_{field_name}_{verb}", "settings", f"Turn {verb} {label}.",
                            check=lambda st, f=field_name, on=on: st["settings"][f] == on,
                            setup=_set("settings", **{field_name: not on}),
                            expert=[("open_app", S), ("click", screen), ("click", key)],
                            subgoals=[_opened("settings")])])
    groups[-1].append(Task("settings_airplane_on", "settings", "Turn on airplane mode.",
                           check=lambda st: st["settings"]["airplane"],
                           expert=[("open_app", S), ("click", "airplane_switch")], subgoals=[_opened("settings")]))
    groups.append([Task(f"settings_wifi_{net}", "settings", f"Connect to the Wi-Fi network {net}.",
                        check=lambda st, net=net: st["settings"]["wifi"] and st["settings"]["network"] == net,
                        expert=[("open_app", S), ("click", "open_wifi"), ("click", f"network:{net}")],
                        subgoals=[_opened("settings")]) for net in ("CafeFree", "Guest", "Office5G")])
    for what, lo, hi in [("brightness", "brightness_down", "brightness_up"), ("volume", "volume_down", "volume_up")]:
        screen = "open_display" if what == "brightness" else "open_sound"
        start = SettingsApp().initial_state()[what]
        groups.append([Task(f"settings_{what}_{n}", "settings", f"Set the {what} to {n}.",
                            check=lambda st, what=what, n=n: st["settings"][what] == n,
                            expert=[("open_app", S), ("click", screen)] + [("click", hi if n > start else lo)] * abs(n - start),
                            subgoals=[_opened("settings")]) for n in ((7, 3, 8) if what == "brightness" else (4, 8, 2))])
    groups.append([Task(f"settings_font_{size}", "settings", f"Change the font size to {size.lower()}.",
                        check=lambda st, size=size: st["settings"]["font_size"] == size,
                        expert=[("open_app", S), ("click", "open_display"), ("click", "open_font"), ("click", f"font:{size}")],
                        subgoals=[_opened("settings")]) for size in ("Large", "Small")])
    groups.append([Task(f"settings_rename_{i}", "settings", f"Rename this phone to {name}.",
                        check=lambda st, name=name: st["settings"]["device_name"] == name,
                        expert=[("open_app", S), ("click", "open_about"), ("type", "device_name_box", name), ("click", "save_name")],
                        subgoals=[_opened("settings")]) for i, name in enumerate(("Work Phone", "Kitchen Tab", "Pixel Toy"))])
    groups.append([Task("settings_q_android", "settings", "Which Android version is this phone running?",
                        answer="14", expert=[("open_app", S), ("click", "open_about"), ("answer", "14")]),
                   Task("settings_q_model", "settings", "What is the model name of this phone?",
                        answer="Toy Phone 1", expert=[("open_app", S), ("click", "open_about"), ("answer", "Toy Phone 1")])])
    groups.append([Task("settings_5g_infeasible", "settings", "Turn on 5G in the network settings.", feasible=False,
                        expert=[("open_app", S), ("click", "open_wifi"), ("status", "infeasible")])])

    N = "Notes"
    groups.append([Task(f"notes_create_{i}", "notes", f"Create a note titled '{title}' that says '{body}'.",
                        check=lambda st, t=title, b=body: any(n["title"] == t and n["body"] == b for n in st["notes"]["notes"]),
                        expert=[("open_app", N), ("click", "new_note"), ("type", "title_box", title),
                                ("type", "body_box", body), ("click", "save_note")],
                        subgoals=[_opened("notes"), (f"title {title}", lambda st, t=title: any(
                            n["title"] == t for n in st["notes"]["notes"]))])
                   for i, (title, body) in enumerate([("Chores", "vacuum"), ("Packing", "socks"), ("Ideas", "a robot")])])
    for verb, titles in [("delete", ("Meeting", "Movies", "Recipes")), ("pin", ("Trip ideas", "Passwords", "Gym plan"))]:
        tasks = []
        for title in titles:
            nid = _note_id(title)
            if verb == "delete":
                check = lambda st, i=nid: all(n["id"] != i for n in st["notes"]["notes"])
                plan = [("open_app", N), ("long_press", f"note:{nid}"), ("click", "menu_delete")]
            else:
                check = lambda st, i=nid: any(n["id"] == i and n["pinned"] for n in st["notes"]["notes"])
                plan = [("open_app", N), ("long_press", f"note:{nid}"), ("click", "pin_note")]
            tasks.append(Task(f"notes_{verb}_{nid}", "notes", f"{verb.capitalize()} the note '{title}'.", check=check,
                              expert=plan, subgoals=[_opened("notes")]))
        groups.append(tasks)
    groups.append([Task(f"notes_rename_{_note_id(a)}", "notes", f"Rename the note '{a}' to '{b}'.",
                        check=lambda st, i=_note_id(a), b=b: any(n["id"] == i and n["title"] == b for n in st["notes"]["notes"]),
                        expert=[("open_app", N), ("click", f"note:{_note_id(a)}"), ("type", "title_box", b), ("click", "save_note")],
                        subgoals=[_opened("notes")]) for a, b in [("Gym plan", "Workout"), ("Books to read", "Reading list")]])
    groups.append([Task(f"notes_q_{_note_id(t)}", "notes", q, answer=a,
                        expert=[("open_app", N), ("click", f"note:{_note_id(t)}"), ("answer", a)])
                   for t, q, a in [("Wifi password", "What is the Wi-Fi password saved in my notes?", "sunflower42"),
                                   ("Trip ideas", "Which city is in my trip ideas note?", "Lisbon")]])

    H = "Shop"
    prices = {n: p for n, p, _ in ShopApp.PRODUCTS}
    category = {n: c for n, _, c in ShopApp.PRODUCTS}
    groups.append([Task(f"shop_cart_{i}", "shop", f"Add {qty} {name} to the cart.",
                        check=lambda st, n=name, q=qty: st["shop"]["cart"].get(n, 0) == q,
                        expert=[("open_app", H), ("type", "search_box", name.split()[-1].lower()), ("click", "search_button"),
                                ("click", f"product:{name}")] + [("click", "qty_up")] * (qty - 1) + [("click", "add_to_cart")],
                        subgoals=[_opened("shop")])
                   for i, (name, qty) in enumerate([("Blue mug", 2), ("Cookbook", 1), ("Trowel", 3), ("Atlas", 2)])])
    groups.append([Task(f"shop_order_{i}", "shop", f"Order a {name} to {address}.",
                        check=lambda st, n=name, a=address: any(o["items"].get(n) and o["address"] == a for o in st["shop"]["orders"]),
                        expert=[("open_app", H), ("click", f"category:{category[name]}"), ("click", f"product:{name}"),
                                ("click", "add_to_cart"), ("click", "view_cart"), ("click", "checkout"),
                                ("type", "address_box", address), ("click", "place_order")],
                        subgoals=[_opened("shop"), ("in cart", lambda st, n=name: n in st["shop"]["cart"] or any(
                            n in o["items"] for o in st["shop"]["orders"]))])
                   for i, (name, address) in enumerate([("Tea kettle", "12 Oak St"), ("Seed pack", "5 Elm Rd"),
                                                        ("Sci-fi novel", "9 Pine Ave")])])
    groups.append([Task(f"shop_q_price_{i}", "shop", f"How much does the {name} cost?", answer=f"${prices[name]}",
                        expert=[("open_app", H), ("click", f"category:{category[name]}"), ("answer", f"${prices[name]}")])
                   for i, name in enumerate(("Frying pan", "Garden hose", "Chef knife"))])
    groups.append([Task("shop_laptop_infeasible", "shop", "Buy a laptop.", feasible=False,
                        expert=[("open_app", H), ("type", "search_box", "laptop"), ("click", "search_button"),
                                ("status", "infeasible")])])

    M = "Mail"
    groups.append([Task(f"mail_send_{i}", "mail", f"Send an email to {to} with the subject '{subject}'.",
                        check=lambda st, t=to, s=subject: any(m["to"] == t and m["subject"] == s for m in st["mail"]["sent"]),
                        expert=[("open_app", M), ("click", "compose"), ("type", "to_box", to),
                                ("type", "subject_box", subject), ("click", "send")],
                        subgoals=[_opened("mail")])
                   for i, (to, subject) in enumerate([("alice", "Dinner"), ("bob", "Slides"), ("carol", "Weekend")])])
    for verb, senders in [("star", ("dave", "erin", "heidi")), ("delete", ("frank", "grace", "bob"))]:
        tasks = []
        for sender in senders:
            eid = _email_id(sender)
            if verb == "star":
                check = lambda st, i=eid: any(m["id"] == i and m["starred"] for m in st["mail"]["emails"])
                plan = [("open_app", M), ("click", f"email:{eid}"), ("click", "star")]
            else:
                check = lambda st, i=eid: all(m["id"] != i for m in st["mail"]["emails"])
                plan = [("open_app", M), ("long_press", f"email:{eid}"), ("click", "menu_delete")]
            tasks.append(Task(f"mail_{verb}_{sender}", "mail", f"{verb.capitalize()} the email from {sender}.",
                              check=check, expert=plan, subgoals=[_opened("mail")]))
        groups.append(tasks)
    groups.append([Task(f"mail_reply_{sender}", "mail", f"Reply to {sender}'s email saying '{body}'.",
                        check=lambda st, t=sender, b=body: any(m["to"] == t and m["body"] == b and m["subject"].startswith("Re:")
                                                               for m in st["mail"]["sent"]),
                        expert=[("open_app", M), ("click", f"email:{_email_id(sender)}"), ("click", "reply"),
                                ("type", "body_box", body), ("click", "send")],
                        subgoals=[_opened("mail")]) for sender, body in [("alice", "Sounds good"), ("carol", "Thanks")]])
    groups.append([Task(f"mail_q_{sender}", "mail", f"What is the subject of the email from {sender}?", answer=subject,
                        expert=[("open_app", M), ("answer", subject)])
                   for sender, subject in [("bob", "Quarterly report"), ("frank", "Flight update")]])

    tasks = []
    for group in groups:
        for i, task in enumerate(group):
            task.split = "test" if len(group) > 1 and i == len(group) - 1 else "train"
            tasks.append(task)
    return tasks


TASKS: dict[str, Task] = {t.task_id: t for t in build_tasks()}


def list_tasks(split: str | None = None, app: str | None = None) -> list[Task]:
    return [t for t in TASKS.values() if (split is None or t.split == split) and (app is None or t.app == app)]


# ----------------------------------------------------------------------------------------------------
# The environment


@runtime_checkable
class GUIEnvironment(Protocol):
    """What an agent loop needs. ToyGUIEnv implements it; a BrowserGym or AndroidWorld adapter wraps
    that library's env and maps its observation to these keys (goal, url, screenshot, axtree_txt,
    ui_elements, last_action, last_action_error) and a GUIAction to its action
    (BrowserGym: `env.step(format_browsergym(action))`; AndroidWorld:
    `env.execute_action(JSONAction(**action.to_dict()))`, success from `task.is_successful(env)`)."""

    def reset(self, task: Any = None, seed: int | None = None) -> tuple[dict, dict]: ...

    def step(self, action: Any) -> tuple[dict, float, bool, bool, dict]: ...


class ToyGUIEnv:
    """The toy phone. `reset(task)` takes a Task, a task id, a free-form goal string or None."""

    def __init__(self, task: Task | str | None = None, seed: int = 0, max_steps: int | None = None,
                 end_on_success: bool = True, grounder: "Grounder | None" = None):
        self.apps = APPS
        self.seed = seed
        self.max_steps_override = max_steps
        self.end_on_success = end_on_success  # BrowserGym/MiniWoB: the episode ends when the check passes
        self.grounder = grounder or StubGrounder()
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
        raise ActionError(f"unknown app {name!r}; installed apps: {', '.join(a.label for a in self.apps.values())}")

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
        last = action.to_json() if isinstance(action, GUIAction) else action if isinstance(action, str) else \
            json.dumps(action, default=repr)
        terminated, success = False, False
        try:
            act = action if isinstance(action, GUIAction) else parse_action(action, ui_elements=self.obs["ui_elements"],
                                                                             grounder=self.grounder)
            validate_action(act)
            terminated = self._execute(act)
        except (ActionError, ValueError, NameError, TypeError, KeyError) as exc:  # bad actions never crash the env
            error = f"{type(exc).__name__}: {exc}"
        sys_state = self.state["system"]
        if terminated:
            success = self._terminal_success()
        elif self.end_on_success and self.task.check is not None and self.task.check(self.state):
            terminated, success = True, True
        for i, (_, pred) in enumerate(self.task.subgoals):
            self.subgoal_flags[i] = self.subgoal_flags[i] or bool(pred(self.state))  # AgentBoard OR-accumulation
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
            return st["answer"] is not None and normalize_answer(st["answer"]) == normalize_answer(task.answer)
        return task.check is not None and bool(task.check(self.state))

    def task_success(self) -> bool:
        """Success of the current state, for an episode that ran out of steps (AndroidWorld reads
        `is_successful` at the end whatever the agent said)."""
        return self._terminal_success() if self.state["system"]["status"] else (
            self.task.check is not None and self.task.feasible and bool(self.task.check(self.state)))

    def _info(self, success: bool) -> dict:
        return dict(success=bool(success), steps=self.steps, task_id=self.task.task_id,
                    subgoals=list(self.subgoal_flags), answer=self.state["system"]["answer"],
                    status=self.state["system"]["status"])

    # -- executing one validated action; returns True when the agent ended the episode --
    def _target(self, act: GUIAction) -> Widget | None:
        if act.index is not None:
            if not isinstance(act.index, int) or not 0 <= act.index < len(self.widgets):
                raise ActionError(f"unknown element index {act.index!r}; this screen has elements 0..{len(self.widgets) - 1}")
            return self.widgets[act.index]
        if act.x is not None:
            if not (0 <= act.x < SCREEN_W and 0 <= act.y < SCREEN_H):
                raise ActionError(f"point ({act.x}, {act.y}) is outside the {SCREEN_W}x{SCREEN_H} screen")
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
            field_widget = target or next((w for w in self.widgets if w.key == self.focus_key), None)
            if field_widget is None:
                raise ActionError("input_text: no text field is focused; click one first or give its index")
            if field_widget.on_type is None:
                raise ActionError(f"input_text: element [{self.widgets.index(field_widget)}] '{field_widget.name}' is not editable")
            self.focus_key = field_widget.key
            field_widget.on_type(act.text.rstrip("\n"))  # typing replaces the field's text (BrowserGym fill)
            if act.text.endswith("\n") and field_widget.on_submit:  # WebArena appends Enter by default
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
                return Widget(f"app:{app.name}", "icon", app.label, width=0.5, on_click=lambda a=app.name: self.open_app(a))
            icons = [icon(a) for a in self.apps.values()]
            return "Home", [icons[i:i + 2] for i in range(0, len(icons), 2)]
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
        for r, row in enumerate(rows[frame.scroll:frame.scroll + capacity]):
            y0 = STATUS_BAR_H + r * ROW_H + 1
            x, total = 2.0, right - 2
            for c, w in enumerate(row):  # widgets share the row by width, 2 px apart
                x1 = x + w.width * total
                w.bbox = (round(x) + (1 if c else 0), y0, round(x1) - (1 if c < len(row) - 1 else 0), y0 + ROW_H - 2)
                widgets.append(w)
                x = x1
        if self._flash:
            y0 = STATUS_BAR_H + capacity * ROW_H + 1
            widgets.append(Widget("flash", "text", self._flash, bbox=(2, y0, SCREEN_W - 2, y0 + ROW_H - 2)))
        if scrollable:
            widgets.append(Widget("scroll_list", "list", f"{title} list", bbox=(0, STATUS_BAR_H, SCREEN_W, SCREEN_H)))
        self.widgets = widgets
        app_name = frame.app if frame.app != "home" else "home"
        url = f"toy://{app_name}/{frame.screen}"
        ui_elements = [self._element(i, w, scrollable) for i, w in enumerate(widgets)]
        return dict(goal=self.task.goal, url=url, app=app_name, screenshot=self._render(widgets, frame, len(rows), capacity),
                    axtree_txt=format_axtree(ui_elements, url), ui_elements=ui_elements,
                    last_action=last_action, last_action_error=error)

    def _element(self, index: int, w: Widget, scrollable: bool) -> dict:
        x0, y0, x1, y1 = w.bbox
        return dict(index=index, id=str(index), resource_id=w.key, role=w.role, text=w.name, value=w.value,
                    content_description="", bbox_pixels=dict(x_min=x0, y_min=y0, x_max=x1, y_max=y1),
                    is_clickable=w.clickable, is_long_clickable=w.on_long_press is not None,
                    is_editable=w.on_type is not None, is_scrollable=w.role == "list" and scrollable,
                    is_checkable=w.checked is not None, is_checked=bool(w.checked),
                    is_focused=w.key == self.focus_key and w.on_type is not None, is_enabled=True, is_visible=True)

    def _render(self, widgets: list[Widget], frame: Frame, n_rows: int, capacity: int) -> Image.Image:
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
                top = STATUS_BAR_H + (SCREEN_H - STATUS_BAR_H - thumb_h) * frame.scroll // max(1, n_rows - capacity)
                draw.rectangle((x1 - 4, y0, x1 - 1, y1 - 1), fill=(225, 225, 225))
                draw.rectangle((x1 - 4, top, x1 - 1, top + thumb_h - 1), fill=(120, 120, 120))
            elif w.role in ("button", "icon"):
                fill = (200, 215, 240) if w.role == "button" else (255, 220, 170)
                draw.rounded_rectangle((x0, y0, x1 - 1, y1 - 1), radius=3, fill=fill, outline=(90, 90, 120))
                label = _fit(w.name, x1 - x0 - 4)
                draw.text(((x0 + x1 - font.getlength(label)) / 2, ty), label, fill="black", font=font)
            elif w.role == "textbox":
                focused = w.key == self.focus_key
                draw.rectangle((x0, y0, x1 - 1, y1 - 1), fill="white", outline=(30, 90, 200) if focused else (130, 130, 130),
                               width=2 if focused else 1)
                label = f"{w.name}: {w.value}" if w.value else w.name
                draw.text((x0 + 3, ty), _fit(label, x1 - x0 - 6), fill="black" if w.value else (140, 140, 140), font=font)
            elif w.role in ("switch", "radio"):
                if w.role == "switch":
                    draw.rounded_rectangle((x1 - 20, y0 + 3, x1 - 2, y1 - 3), radius=5,
                                           fill=(60, 170, 90) if w.checked else (170, 170, 170))
                    knob = x1 - 9 if w.checked else x1 - 19
                    draw.ellipse((knob, y0 + 4, knob + 7, y1 - 4), fill="white")
                    draw.text((x0 + 2, ty), _fit(w.name, x1 - x0 - 26), fill="black", font=font)
                else:
                    draw.ellipse((x0 + 2, y0 + 3, x0 + 11, y0 + 12), outline="black", fill=(60, 120, 200) if w.checked else "white")
                    draw.text((x0 + 15, ty), _fit(w.name, x1 - x0 - 17), fill="black", font=font)
            else:  # listitem, text
                draw.text((x0 + 2, ty), _fit(w.name, x1 - x0 - 4), fill=(20, 20, 20) if w.role == "listitem" else (70, 70, 70),
                          font=font)
                if w.role == "listitem":
                    draw.line((x0, y1 - 1, x1 - 1, y1 - 1), fill=(200, 200, 200))
        return img


# ----------------------------------------------------------------------------------------------------
# The scripted expert


class ScriptedExpert:
    """Follows a task's plan, finding each target by resource id and scrolling when it is off screen."""

    def __init__(self, task: Task):
        self.plan, self.pos, self.scroll_dir, self.last_sig = list(task.expert), 0, "down", None

    def act(self, obs: dict) -> GUIAction:
        if self.pos >= len(self.plan):
            return GUIAction("status", goal_status="complete")
        step = self.plan[self.pos]
        kind = step[0]
        if kind in ("click", "long_press", "type"):
            index = next((e["index"] for e in obs["ui_elements"] if e["resource_id"] == step[1]), None)
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


def rollout(env: ToyGUIEnv, policy: Callable[[dict], Any], task: Task | str | None = None) -> tuple[list[dict], dict]:
    """Run one episode; returns the steps [{obs, action, reward}] and the final info."""
    obs, info = env.reset(task)
    steps, done = [], False
    while not done:
        action = policy(obs)
        next_obs, reward, terminated, truncated, info = env.step(action)
        steps.append(dict(obs=obs, action=action, reward=reward, error=next_obs["last_action_error"]))
        obs, done = next_obs, terminated or truncated
    return steps, info


def replay(task: Task, actions: list) -> list[dict]:
    """The observations of a recorded episode, rebuilt by re-running its actions (the env is deterministic)."""
    env = ToyGUIEnv(task, max_steps=10**6, end_on_success=False)
    return [env.obs] + [env.step(a if isinstance(a, (str, GUIAction)) else GUIAction(**a))[0] for a in actions]


def run_episodes(tasks: list[Task], policy: Callable, max_steps: int = 15,
                 stop_fn: Callable[[list[dict]], bool] | None = None, progress: Callable = lambda it: it) -> list[dict]:
    """Lock-step episodes for batched model agents. `policy([(i, obs, steps)]) -> [(thought, action)]` where
    action is a GUIAction or raw model text (a bad one costs a step, as in `step`). `stop_fn(steps)` may
    end an episode early (e.g. a repeat rule). Each step records thought, action JSON (or the raw text),
    the target's centre `xy` (for coordinate-style histories) and the error."""
    envs = [ToyGUIEnv(max_steps=max_steps) for _ in tasks]
    obs = [env.reset(task)[0] for env, task in zip(envs, tasks)]
    records = [dict(task_id=t.task_id, goal=t.goal, app=t.app, steps=[], success=False, aborted=False, invalid=0)
               for t in tasks]
    active = list(range(len(tasks)))
    for _ in progress(range(max_steps)):
        if not active:
            break
        for i, (thought, action) in zip(list(active), policy([(i, obs[i], records[i]["steps"]) for i in active])):
            elements, (new_obs, _, terminated, truncated, info) = obs[i]["ui_elements"], envs[i].step(action)
            valid_index = isinstance(action, GUIAction) and isinstance(action.index, int) and 0 <= action.index < len(elements)
            records[i]["steps"].append(dict(
                thought=thought, action=action.to_json() if isinstance(action, GUIAction) else str(action),
                xy=list(element_center(elements[action.index])) if valid_index else None, error=new_obs["last_action_error"]))
            records[i]["invalid"] += bool(new_obs["last_action_error"])
            obs[i] = new_obs
            aborted = stop_fn is not None and stop_fn(records[i]["steps"])
            if terminated or truncated or aborted:
                records[i].update(success=bool(info["success"] or envs[i].task_success()), aborted=bool(aborted and not terminated),
                                  final_url=new_obs["url"])
                active.remove(i)
    return records


def side_by_side(images: list[Image.Image]) -> Image.Image:
    """Screenshots pasted left to right (one image for VLMs that take one image per prompt)."""
    canvas = Image.new("RGB", (sum(i.width for i in images), max(i.height for i in images)), "white")
    for k, img in enumerate(images):
        canvas.paste(img, (sum(i.width for i in images[:k]), 0))
    return canvas


def describe_action(action: GUIAction, ui_elements: list[dict]) -> str:
    """A short low-level description ("click 'Wi-Fi'"), the GUIMid history and rule-based describer form."""
    name = None
    if action.index is not None and 0 <= action.index < len(ui_elements):
        name = ui_elements[action.index]["text"]
    elif action.x is not None and ui_elements:
        name = ui_elements[element_at_point(action.x, action.y, ui_elements)]["text"]
    t = action.action_type
    return {"click": f"click '{name}'", "long_press": f"long press '{name}'",
            "input_text": f"type '{(action.text or '').rstrip()}'" + (f" into '{name}'" if name else ""),
            "keyboard_enter": "press enter", "scroll": f"scroll {action.direction}", "navigate_back": "go back",
            "navigate_home": "go home", "open_app": f"open app '{action.app_name}'", "wait": "wait",
            "status": f"stop ({action.goal_status})", "answer": f"answer '{action.text}'"}.get(t, t)


# ----------------------------------------------------------------------------------------------------
# Step accuracy (spec section 3: the SR/PR/step-accuracy evaluator)


def token_f1(pred: str, gold: str) -> float:
    """SQuAD-style token F1 on normalised answers ("buy milk now" vs "buy milk" -> 0.8)."""
    p, g = normalize_answer(pred).split(), normalize_answer(gold).split()
    common = sum(min(p.count(w), g.count(w)) for w in set(p))
    if common == 0:
        return float(p == g)
    precision, recall = common / len(p), common / len(g)
    return 2 * precision * recall / (precision + recall)


def androidcontrol_click_ok(pred_xy, gold_xy, width=1080, height=2400) -> bool:
    """OS-Genesis sec 2.6 (AndroidControl): a click is right within sqrt((0.14 W)^2 + (0.14 H)^2) pixels of the
    truth (368.45 px on a 1080x2400 screen)."""
    return math.dist(pred_xy, gold_xy) <= math.hypot(0.14 * width, 0.14 * height)


def step_match(pred: GUIAction | None, gold: GUIAction) -> tuple[bool, bool]:
    """(type match, full match) for step accuracy. Points are already mapped to the nearest element centre
    (OS-Genesis' AndroidWorld rule), so targets compare by element; text is right when exact or token F1 > 0.5
    (OS-Genesis sec 2.6)."""
    if pred is None or pred.action_type != gold.action_type:
        return False, False
    same_text = token_f1(pred.text or "", gold.text or "") > 0.5
    ok = {"click": pred.index == gold.index, "long_press": pred.index == gold.index, "answer": same_text,
          "input_text": same_text and (gold.index is None or pred.index == gold.index), "scroll": pred.direction == gold.direction,
          "open_app": str(pred.app_name).lower() == str(gold.app_name).lower(), "status": pred.goal_status == gold.goal_status}
    return True, ok.get(gold.action_type, True)


# ----------------------------------------------------------------------------------------------------
# Stand-ins for big models that read the toy world's state (used by os_genesis.py, named as stand-ins there)

SWITCHES = {"airplane": "airplane mode", "wifi": "Wi-Fi", "bluetooth": "Bluetooth", "dark_theme": "dark theme",
            "dnd": "Do not disturb", "vibrate": "vibration"}
SETTINGS = {"brightness": "Set the brightness to {}.", "volume": "Set the volume to {}.", "font_size": "Change the font size to {}.",
            "network": "Connect to the Wi-Fi network {}.", "device_name": "Rename this phone to {}."}


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
            return f"Add {new - (old or 0)} {rest[0]} to the cart." if new else f"Remove {rest[0]} from the cart."
        old, new = old or [], new or []  # the rest are lists of records
        added, removed = [x for x in new if x not in old], [x for x in old if x not in new]
        if key == "orders":
            return f"Order {' and '.join(added[0]['items'])} to {added[0]['address']}."
        if key == "sent":
            return f"Send an email to {added[0]['to']} with the subject '{added[0]['subject']}'."
        if key in ("notes", "emails"):
            for a in added:
                b = next((r for r in removed if r["id"] == a["id"]), None)
                noun = f"the note '{(b or a).get('title')}'" if key == "notes" else f"the email from {a['sender']}"
                if b is None:
                    return f"Create a note titled '{a['title']}' that says '{a['body']}'."
                if key == "notes" and a["pinned"] != b["pinned"]:
                    return f"{'Pin' if a['pinned'] else 'Unpin'} {noun}."
                if key == "emails" and a["starred"] != b["starred"]:
                    return f"{'Star' if a['starred'] else 'Unstar'} {noun}."
                return f"Rename {noun} to '{a['title']}'." if a.get("title") != b.get("title") else f"Edit {noun}."
            if removed:
                return f"Delete the note '{removed[0]['title']}'." if key == "notes" else f"Delete the email from {removed[0]['sender']}."
    return None


QUESTIONS = {  # element on a screen -> (question, answer from its (text, value))
    "price": ("How much does the {title} cost?", lambda text, value: text.split()[-1]),
    "android_version": ("Which Android version is this phone running?", lambda text, value: text.split()[-1]),
    "subject": ("What is the subject of the email from {sender}?", lambda text, value: text),
    "body_box": ("What does the note '{note}' say?", lambda text, value: value)}
FIELD_TEXTS = {"title": ["Shopping", "Todo", "Plans"], "body": ["call mom", "buy bread", "hello"], "to": ["dave", "erin", "grace"],
               "subject": ["Hi", "Update", "Question"], "address": ["1 Main St", "7 Hill Rd"], "device": ["My Phone", "Toy 2"],
               "search": ["mug", "seed", "novel", "pan"]}  # none is a held-out task's parameter


def screen_question(after: list, title: str) -> tuple[str, str] | None:
    """Stand-in describer knowledge: a question answerable from a screen (elements as [resource_id, text,
    value] rows) and its answer, or None when the screen shows nothing to ask about."""
    info = {rid: (text, value) for rid, text, value in after}
    rid = next((r for r in QUESTIONS if r in info), None)
    if rid is None:
        return None
    template, extract = QUESTIONS[rid]
    sender = info.get("from", ("", ""))[0].removeprefix("From: ")
    return template.format(title=title, note=info.get("title_box", ("", ""))[1], sender=sender), extract(*info[rid])


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
    """Stand-in executor (os_genesis.py): follows a plan of steps addressed by resource id (["open_app", label],
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
            return GUIAction("answer", text=self.answer) if self.answer else GUIAction("status", goal_status="complete")
        step = self.plan[self.pos]
        if step[0] in ("open_app", "scroll", "back"):
            self.pos += 1
            return (GUIAction("open_app", app_name=step[1]) if step[0] == "open_app" else
                    GUIAction("scroll", direction=step[1]) if step[0] == "scroll" else GUIAction("navigate_back"))
        index = next((e["index"] for e in obs["ui_elements"] if e["resource_id"] == step[1]), None)
        if index is None:
            return GUIAction("navigate_back")  # lost: go back (hopeless cases end by the repeat rule)
        self.pos += 1
        return GUIAction("input_text", index=index, text=step[2]) if step[0] == "type" else GUIAction(step[0], index=index)


def instruction(action: GUIAction, ui_elements: list[dict]) -> str:
    """The action as a low-level instruction sentence: "Click 'Bluetooth'."."""
    text = describe_action(action, ui_elements)
    return text[:1].upper() + text[1:] + "."


# ----------------------------------------------------------------------------------------------------
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
    """AndroidWorld JSONAction: {"action_type": "click", "index": 3} (strict: unknown keys are errors)."""
    obj = _extract_json_object(action) if isinstance(action, str) else dict(action)
    unknown = set(obj) - set(_JSON_FIELDS)
    if unknown:
        raise ActionError(f"unknown JSON action keys {sorted(unknown)}; allowed: {list(_JSON_FIELDS)}")
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
    """OS-Genesis evaluation: (x, y) -> the nearest element centre's index ('type' -> input_text)."""
    if action.x is None:
        return action
    index = nearest_center_index(action.x, action.y, ui_elements)
    if index is None:
        raise ActionError("no element on screen to ground the point to")
    return GUIAction(**{**action.to_dict(), "x": None, "y": None, "index": index})


def with_center_point(action: GUIAction, ui_elements: list[dict]) -> GUIAction:
    """Index -> element centre (x, y): the coordinate form of the OS-Genesis mobile training target."""
    if action.index is None:
        return action
    x, y = element_center(ui_elements[action.index])
    return GUIAction(**{**action.to_dict(), "index": None, "x": x, "y": y})


def parse_webarena(text: str) -> GUIAction:
    """WebArena id actions, taken from the last fenced block if there is one."""
    blocks = re.findall(r"```(?:\w+\n)?(.*?)```", text, re.S)
    s = (blocks[-1] if blocks else text).strip()
    if m := re.fullmatch(r"click \[(\d+)\]", s):
        return GUIAction("click", index=int(m.group(1)))
    if m := re.fullmatch(r"type \[(\d+)\] \[(.*?)\](?: \[([01])\])?", s, re.S):
        enter = m.group(3) != "0"  # press_enter_after defaults to 1
        return GUIAction("input_text", index=int(m.group(1)), text=m.group(2) + ("\n" if enter else ""))
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
        return GUIAction("answer", text=answer) if answer else GUIAction("status", goal_status="complete")
    verb = s.split(" ")[0] if s else ""
    if verb in ("hover", "new_tab", "tab_focus", "close_tab", "go_forward", "goto"):
        raise ActionError(f"WebArena action {verb!r} has no meaning on the toy phone")
    raise ActionError(f"not a WebArena action: {s[:80]!r}")


BROWSERGYM_SIGNATURES = {  # name -> positional parameter names (the subset the toy phone supports)
    "click": ("bid", "button", "modifiers"), "fill": ("bid", "value"), "press": ("bid", "key_comb"),
    "scroll": ("delta_x", "delta_y"), "mouse_click": ("x", "y", "button"), "keyboard_type": ("text",),
    "keyboard_press": ("key",), "go_back": (), "noop": ("wait_ms",), "send_msg_to_user": ("text",),
    "report_infeasible": ("reason",)}
BROWSERGYM_UNSUPPORTED = {"dblclick", "hover", "select_option", "focus", "clear", "drag_and_drop", "upload_file",
                          "new_tab", "tab_close", "tab_focus", "goto", "go_forward", "mouse_move", "mouse_up",
                          "mouse_down", "mouse_dblclick", "mouse_drag_and_drop", "mouse_upload_file",
                          "keyboard_down", "keyboard_up", "keyboard_insert_text"}


def _scan_calls(code: str) -> list[tuple[str, list, dict]]:
    """Top-level `name(literal, ...)` calls in order (BrowserGym/pyautogui call strings). Each call's
    arguments must be Python literals; anything else is a ValueError."""
    try:
        tokens = [t for t in tokenize.generate_tokens(io.StringIO(code).readline)
                  if t.type not in (tokenize.NL, tokenize.NEWLINE, tokenize.COMMENT, tokenize.ENDMARKER,
                                    tokenize.INDENT, tokenize.DEDENT)]
    except (tokenize.TokenError, SyntaxError, IndentationError) as exc:
        raise ActionError(f"cannot tokenize action {code[:80]!r}: {exc}") from None
    lines, calls, i = code.splitlines(), [], 0

    def offset(pos):
        return sum(len(line) + 1 for line in lines[:pos[0] - 1]) + pos[1]
    while i < len(tokens):
        name_parts = [tokens[i].string]
        if tokens[i].type != tokenize.NAME:
            raise ActionError(f"expected an action call, got {tokens[i].string!r} in {code[:80]!r}")
        while i + 2 < len(tokens) and tokens[i + 1].string == "." and tokens[i + 2].type == tokenize.NAME:
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
        source = code[offset(tokens[i + 1].start):offset(tokens[j].end)]
        try:
            call = ast.parse("f" + source, mode="eval").body
            args = [ast.literal_eval(a) for a in call.args]
            kwargs = {k.arg: ast.literal_eval(k.value) for k in call.keywords}
        except (SyntaxError, ValueError) as exc:
            raise ActionError(f"arguments of {'.'.join(name_parts)} must be literals: {exc}") from None
        calls.append((".".join(name_parts), args, kwargs))
        i = j + 1
    return calls


def parse_browsergym_calls(code: str, multiaction: bool = False) -> list[tuple[str, list]]:
    """BrowserGym's action string -> [(name, args)] (keywords folded into positions). Unknown name ->
    NameError; several calls without multiaction -> ValueError (spec section 5 check 12)."""
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
    raise ActionError(f"unknown element bid {value!r}; the toy phone's bids are the indices in axtree_txt")


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
        return GUIAction("scroll", direction=("down" if dy > 0 else "up") if abs(dy) >= abs(dx) else ("right" if dx > 0 else "left"))
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
        x, y = kwargs.get("x", args[0] if args else None), kwargs.get("y", args[1] if len(args) > 1 else None)
        if not isinstance(x, (int, float)) or not isinstance(y, (int, float)):
            raise ActionError("pyautogui click needs numeric x and y")
        return GUIAction("click", x=float(x), y=float(y))
    if name in ("write", "typewrite"):
        return GUIAction("input_text", text=str(kwargs.get("message", args[0] if args else "")))
    if name == "press" and str(args[0] if args else kwargs.get("keys", "")).lower() == "enter":
        return GUIAction("keyboard_enter")
    if name == "scroll":
        clicks = kwargs.get("clicks", args[0] if args else 0)
        return GUIAction("scroll", direction="up" if clicks > 0 else "down")  # pyautogui: positive scrolls up
    raise ActionError(f"pyautogui call {name!r} is not supported on the toy phone")


# -- GUIMid: a planner writes a description; a grounder turns it into a point --


@dataclass
class GUIMidOutput:
    thought: str
    description: str
    action: str
    value: str


GUIMID_KEYS = ("Element Description", "Action", "Value")


def parse_guimid(text: str) -> GUIMidOutput:
    """A thought, then a fenced JSON block {"Element Description", "Action", "Value"} (GUIMid section 2)."""
    obj = _extract_json_object(text)
    missing = [k for k in GUIMID_KEYS if k not in obj]
    if missing:
        raise ActionError(f"GUIMid action is missing key(s) {missing}; it needs {list(GUIMID_KEYS)}")
    start = text.find("```")
    thought = (text[:start] if start >= 0 else text[:text.find("{")]).strip()
    return GUIMidOutput(thought, str(obj["Element Description"] or ""), str(obj["Action"] or "").strip().lower(),
                        "" if obj["Value"] is None else str(obj["Value"]))


class Grounder(Protocol):
    """Maps an element description to a normalised point (x, y) in [0, 1], or None (UGround's job)."""

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
            score = 1.0 if want and (want == name) else 0.9 if want and name and (want in name or name in want) else \
                difflib.SequenceMatcher(None, want, name).ratio()
            score += 0.01 * e["is_clickable"]  # on a tie ("Wi-Fi" heading vs "Wi-Fi" switch) prefer what acts
            if score > best_score:
                best, best_score = e, score
        if best is None:
            return None
        x, y = element_center(best)
        return x / SCREEN_W, y / SCREEN_H


def guimid_to_action(out: GUIMidOutput, obs: dict, grounder: Grounder) -> GUIAction:
    """GUIMid mobile actions -> GUIAction (click, type, scroll, go_back, go_home, long_press, enter,
    open_app, wait, stop [completed | infeasible | answer])."""
    a, v = out.action.replace(" ", "_"), out.value.strip()
    if a in ("click", "long_press", "type"):
        point = grounder.ground(out.description, obs)
        if point is None:
            raise ActionError(f"could not ground element description {out.description!r} on this screen")
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


def parse_action(text: str | dict, fmt: str = "auto", ui_elements: list[dict] | None = None,
                 grounder: Grounder | None = None) -> GUIAction:
    """Any format -> GUIAction. fmt: auto | json | osgenesis | guimid | webarena | browsergym | pyautogui.
    Grounding needs the current ui_elements (OS-Genesis points, GUIMid descriptions)."""
    if isinstance(text, dict):
        return parse_json_action(text)
    if not isinstance(text, str):
        raise ActionError(f"an action must be a GUIAction, dict or string, not {type(text).__name__}")
    s = text.strip()
    if fmt == "auto":
        fmt = ("osgenesis" if re.search(r"low-level thought", s, re.I) else
               "guimid" if "Element Description" in s else
               "json" if "action_type" in s else
               "pyautogui" if s.startswith("pyautogui.") else
               "webarena" if re.match(r"(```\w*\s*)?[a-z_]+( \[|$)", s) or "```" in s else "browsergym")
    if fmt == "json":
        return parse_json_action(s)
    if fmt == "osgenesis":
        action = parse_osgenesis(s)[1]
        return osgenesis_to_indexed(action, ui_elements or [])
    if fmt == "guimid":
        return guimid_to_action(parse_guimid(s), {"ui_elements": ui_elements or []}, grounder or StubGrounder())
    if fmt == "webarena":
        return parse_webarena(s)
    if fmt == "pyautogui":
        return parse_pyautogui(s)
    if fmt == "browsergym":
        return browsergym_to_action(*parse_browsergym_calls(s)[0])
    raise ValueError(f"unknown action format {fmt!r}")


# ----------------------------------------------------------------------------------------------------
# Formatters: GUIAction -> external formats


def format_osgenesis(thought: str, action: GUIAction) -> str:
    """The OS-Genesis mobile training target (spec section 2.5)."""
    return f"Low-level thought: {thought}\naction: {action.to_json()}"


def format_guimid(thought: str, description: str, action: str, value: str = "") -> str:
    block = json.dumps({"Element Description": description, "Action": action, "Value": value}, ensure_ascii=False)
    return f"{thought}\n```json\n{block}\n```"


def action_to_guimid(action: GUIAction, ui_elements: list[dict]) -> tuple[str, str, str]:
    """(Element Description, Action, Value) for a GUIAction, the element named by its visible label."""
    target = action.index if action.index is not None else (
        element_at_point(action.x, action.y, ui_elements) if action.x is not None else None)
    desc = ui_elements[target]["text"] if target is not None else ""
    t = action.action_type
    table = {"click": ("click", ""), "long_press": ("long_press", ""), "input_text": ("type", (action.text or "").rstrip("\n")),
             "keyboard_enter": ("enter", ""), "scroll": ("scroll", action.direction or ""), "navigate_back": ("go_back", ""),
             "navigate_home": ("go_home", ""), "open_app": ("open_app", action.app_name or ""), "wait": ("wait", ""),
             "answer": ("stop", action.text or ""),
             "status": ("stop", "infeasible" if action.goal_status == "infeasible" else "completed")}
    verb, value = table[t]
    return desc, verb, value


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
        return f"click('{action.index}')" if action.index is not None else f"mouse_click({action.x}, {action.y})"
    if t == "input_text":
        return f"fill('{action.index}', {action.text!r})" if action.index is not None else f"keyboard_type({action.text!r})"
    if t == "keyboard_enter":
        return "keyboard_press('Enter')"
    if t == "scroll":
        dx, dy = {"up": (0, -100), "down": (0, 100), "left": (-100, 0), "right": (100, 0)}[action.direction]
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
