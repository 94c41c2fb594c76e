"""The toy phone's four apps (Settings, Notes, Shop, Mail) and its task catalogue.

`common/gui_env.py` is the environment that runs them. An app is plain data (`initial_state()`) plus
one `screen_<name>(state, params, nav)` builder per screen that returns (title, rows of widgets);
widget callbacks mutate the state and call `nav` (the env: push / back / flash / open_app). A task
is a goal plus a predicate on that state; `build_tasks` holds out the last parameter of every
template.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial

# --------------------------------------------------------------------------------------------------
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

    return Widget(
        key,
        "textbox",
        name,
        value=drafts.get(field_name, ""),
        on_type=set_text,
        on_submit=on_submit,
        width=width,
    )


class App:
    """An app: `initial_state()` plain data, and `screen_<name>(state, params, nav) -> (title,
    rows)` where rows is a list of widget lists. `nav` is the environment (push / back / flash)."""

    name, label, root = "", "", ""

    def initial_state(self) -> dict:
        raise NotImplementedError

    def build(self, screen: str, state: dict, params: dict, nav):
        return getattr(self, f"screen_{screen}")(state, params, nav)


class SettingsApp(App):
    name, label, root = "settings", "Settings", "main"

    def initial_state(self):
        return dict(
            airplane=False,
            wifi=True,
            network="HomeNet",
            networks=["HomeNet", "CafeFree", "Office5G", "Guest"],
            bluetooth=False,
            dark_theme=False,
            brightness=5,
            font_size="Default",
            volume=6,
            dnd=False,
            vibrate=True,
            device_name="Toy Phone",
            model="Toy Phone 1",
            android="14",
            drafts={},
        )

    def screen_main(self, s, p, nav):
        return "Settings", [[_switch("airplane_switch", "Airplane mode", s, "airplane")]] + [
            [_item(f"open_{screen}", label, lambda screen=screen: nav.push(screen))]
            for screen, label in [
                ("wifi", "Network & Wi-Fi"),
                ("bluetooth", "Bluetooth"),
                ("display", "Display"),
                ("sound", "Sound"),
                ("about", "About phone"),
            ]
        ]

    def screen_wifi(self, s, p, nav):
        rows = [[_switch("wifi_switch", "Wi-Fi", s, "wifi")]]
        if not s["wifi"]:
            return "Wi-Fi", rows + [[_text("wifi_off", "Wi-Fi is off")]]
        rows.append(
            [
                _text(
                    "wifi_status", f"Connected: {s['network']}" if s["network"] else "Not connected"
                )
            ]
        )
        for net in s["networks"]:
            rows.append([_item(f"network:{net}", net, lambda net=net: s.update(network=net))])
        return "Wi-Fi", rows

    def screen_bluetooth(self, s, p, nav):
        rows = [[_switch("bluetooth_switch", "Bluetooth", s, "bluetooth")]]
        rows.append(
            [
                _text(
                    "bt_visible",
                    f"Visible as {s['device_name']}" if s["bluetooth"] else "Bluetooth is off",
                )
            ]
        )
        return "Bluetooth", rows

    def screen_display(self, s, p, nav):
        def bump(delta):
            s["brightness"] = min(10, max(0, s["brightness"] + delta))

        return "Display", [
            [_switch("dark_switch", "Dark theme", s, "dark_theme")],
            [
                _text("brightness_value", f"Brightness {s['brightness']}", 0.6),
                _button("brightness_down", "-", lambda: bump(-1), 0.2),
                _button("brightness_up", "+", lambda: bump(1), 0.2),
            ],
            [_item("open_font", f"Font size: {s['font_size']}", lambda: nav.push("font"))],
        ]

    def screen_font(self, s, p, nav):
        return "Font size", [
            [
                Widget(
                    f"font:{size}",
                    "radio",
                    size,
                    checked=s["font_size"] == size,
                    on_click=lambda size=size: s.update(font_size=size),
                )
            ]
            for size in ("Small", "Default", "Large")
        ]

    def screen_sound(self, s, p, nav):
        def bump(delta):
            s["volume"] = min(10, max(0, s["volume"] + delta))

        return "Sound", [
            [
                _text("volume_value", f"Volume {s['volume']}", 0.6),
                _button("volume_down", "-", lambda: bump(-1), 0.2),
                _button("volume_up", "+", lambda: bump(1), 0.2),
            ],
            [_switch("dnd_switch", "Do not disturb", s, "dnd")],
            [_switch("vibrate_switch", "Vibrate", s, "vibrate")],
        ]

    def screen_about(self, s, p, nav):
        d = s["drafts"]
        d.setdefault("device_name", s["device_name"])

        def save():
            if not d["device_name"].strip():
                return nav.flash("Name cannot be empty")
            s["device_name"] = d["device_name"].strip()
            nav.flash("Saved")

        return "About phone", [
            [_text("model", f"Model: {s['model']}")],
            [_text("android_version", f"Android {s['android']}")],
            [_textbox("device_name_box", "Device name", d, "device_name", on_submit=save)],
            [_button("save_name", "Save", save)],
        ]


class NotesApp(App):
    name, label, root = "notes", "Notes", "list"

    def initial_state(self):
        titles = [
            ("Groceries", "milk, eggs"),
            ("Wifi password", "sunflower42"),
            ("Meeting", "Tuesday 10am"),
            ("Books to read", "Dune"),
            ("Gym plan", "run 5k"),
            ("Recipes", "pancakes"),
            ("Trip ideas", "Lisbon"),
            ("Birthday gifts", "scarf"),
            ("Passwords", "ask IT"),
            ("Movies", "Alien"),
        ]
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
        for n in sorted(
            s["notes"], key=lambda n: not n["pinned"]
        ):  # pinned first, stable otherwise
            rows.append(
                [
                    _item(
                        f"note:{n['id']}",
                        n["title"] + (" (pinned)" if n["pinned"] else ""),
                        lambda i=n["id"]: open_editor(i),
                        lambda i=n["id"]: nav.push("menu", note_id=i),
                    )
                ]
            )
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

        rows = [
            [_textbox("title_box", "Title", d, "title")],
            [_textbox("body_box", "Body", d, "body")],
            [
                _button("save_note", "Save", save, 0.5),
                _button("delete_note", "Delete", delete, 0.5),
            ],
        ]
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

        return note["title"], [
            [_button("pin_note", "Unpin" if note["pinned"] else "Pin", pin)],
            [_button("menu_delete", "Delete", delete)],
            [_button("menu_cancel", "Cancel", nav.back)],
        ]


class ShopApp(App):
    name, label, root = "shop", "Shop", "home"
    PRODUCTS = [
        ("Blue mug", 8, "Kitchen"),
        ("Tea kettle", 25, "Kitchen"),
        ("Frying pan", 30, "Kitchen"),
        ("Chef knife", 40, "Kitchen"),
        ("Cookbook", 18, "Books"),
        ("Sci-fi novel", 12, "Books"),
        ("Atlas", 22, "Books"),
        ("Garden hose", 27, "Garden"),
        ("Seed pack", 4, "Garden"),
        ("Trowel", 9, "Garden"),
        ("Flower pot", 11, "Garden"),
    ]

    def initial_state(self):
        return dict(
            products=[dict(name=n, price=p, category=c) for n, p, c in self.PRODUCTS],
            cart={},
            orders=[],
            drafts={},
        )

    def screen_home(self, s, p, nav):
        d = s["drafts"]

        def search():
            nav.push("results", query=d.get("query", "").strip())

        rows = [
            [_textbox("search_box", "Search bar", d, "query", on_submit=search)],
            [_button("search_button", "Search", search)],
        ]
        rows += [
            [_item(f"category:{c}", c, lambda c=c: nav.push("results", category=c))]
            for c in ("Kitchen", "Books", "Garden")
        ]
        rows.append(
            [_button("open_cart", f"Cart ({sum(s['cart'].values())})", lambda: nav.push("cart"))]
        )
        return "Shop", rows

    def screen_results(self, s, p, nav):
        query, category = p.get("query", ""), p.get("category")
        hits = [
            x
            for x in s["products"]
            if (category and x["category"] == category)
            or (not category and query.lower() in x["name"].lower())
        ]

        def open_product(name):
            s["drafts"]["qty"] = 1
            nav.push("product", product=name)

        rows = [
            [
                _item(
                    f"product:{x['name']}",
                    f"{x['name']} ${x['price']}",
                    lambda n=x["name"]: open_product(n),
                )
            ]
            for x in hits
        ] or [[_text("no_results", "No results")]]
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
            [
                _button("qty_down", "-", lambda: bump(-1), 0.25),
                _text("qty", f"Qty {d.get('qty', 1)}", 0.5),
                _button("qty_up", "+", lambda: bump(1), 0.25),
            ],
            [_button("add_to_cart", "Add to cart", add)],
            [_button("view_cart", "View cart", lambda: nav.push("cart"))],
        ]

    def screen_cart(self, s, p, nav):
        prices = {x["name"]: x["price"] for x in s["products"]}
        rows = [
            [
                _text(f"line:{n}", f"{n} x{q}", 0.65),
                _button(f"remove:{n}", "Remove", lambda n=n: s["cart"].pop(n, None), 0.35),
            ]
            for n, q in s["cart"].items()
        ] or [[_text("cart_empty", "Cart is empty")]]
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

        return "Checkout", [
            [_textbox("address_box", "Address", d, "address", on_submit=place)],
            [_button("place_order", "Place order", place)],
        ]

    def screen_confirmation(self, s, p, nav):
        return "Order placed", [
            [_text("order_number", f"Order #{len(s['orders'])} placed")],
            [_button("done", "Done", lambda: nav.open_app("shop"))],
        ]


class MailApp(App):
    name, label, root = "mail", "Mail", "inbox"

    def initial_state(self):
        mails = [
            ("alice", "Lunch Friday?", "Pizza at noon?"),
            ("bob", "Quarterly report", "Draft attached"),
            ("carol", "Photos", "From the trip"),
            ("dave", "Invoice 42", "Due next week"),
            ("erin", "Book club", "Next pick: Dune"),
            ("frank", "Flight update", "Gate B12"),
            ("grace", "Hello!", "Long time no see"),
            ("heidi", "Rent", "Paid, thanks"),
        ]
        return dict(
            emails=[
                dict(id=i + 1, sender=a, subject=b, body=c, starred=False)
                for i, (a, b, c) in enumerate(mails)
            ],
            sent=[],
            drafts={},
        )

    def _compose(self, s, nav, to="", subject=""):
        s["drafts"] = dict(to=to, subject=subject, body="")
        nav.push("compose")

    def screen_inbox(self, s, p, nav):
        rows = [
            [
                _button("compose", "Compose", lambda: self._compose(s, nav), 0.5),
                _button("open_sent", "Sent", lambda: nav.push("sent"), 0.5),
            ]
        ]
        for m in s["emails"]:
            rows.append(
                [
                    _item(
                        f"email:{m['id']}",
                        ("* " if m["starred"] else "") + f"{m['sender']}: {m['subject']}",
                        lambda i=m["id"]: nav.push("read", email_id=i),
                        lambda i=m["id"]: nav.push("mail_menu", email_id=i),
                    )
                ]
            )
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
            [_text("from", f"From: {m['sender']}")],
            [_text("subject", m["subject"])],
            [_text("body", m["body"])],
            [
                _button(
                    "reply",
                    "Reply",
                    lambda: self._compose(s, nav, m["sender"], "Re: " + m["subject"]),
                    0.34,
                ),
                _button(
                    "star",
                    "Unstar" if m["starred"] else "Star",
                    lambda: m.update(starred=not m["starred"]),
                    0.33,
                ),
                _button("delete_email", "Delete", lambda: self._delete(s, m, nav), 0.33),
            ],
        ]

    def screen_mail_menu(self, s, p, nav):
        m = self._email(s, p)
        if m is None:
            return "Email", [[_text("gone", "Email deleted")]]

        def star():
            m["starred"] = not m["starred"]
            nav.back()

        return m["subject"], [
            [_button("menu_star", "Unstar" if m["starred"] else "Star", star)],
            [_button("menu_delete", "Delete", lambda: self._delete(s, m, nav))],
            [_button("menu_cancel", "Cancel", nav.back)],
        ]

    def screen_compose(self, s, p, nav):
        d = s["drafts"]

        def send():
            if not d.get("to", "").strip():
                return nav.flash("Recipient required")
            s["sent"].append(
                dict(
                    to=d["to"].strip(),
                    subject=d.get("subject", "").strip(),
                    body=d.get("body", "").strip(),
                )
            )
            nav.back()

        return "Compose", [
            [_textbox("to_box", "To", d, "to")],
            [_textbox("subject_box", "Subject", d, "subject")],
            [_textbox("body_box", "Body", d, "body")],
            [_button("send", "Send", send)],
        ]

    def screen_sent(self, s, p, nav):
        rows = [
            [_text(f"sent:{i}", f"To {m['to']}: {m['subject']}")] for i, m in enumerate(s["sent"])
        ]
        return "Sent", rows or [[_text("sent_empty", "No sent mail")]]


APPS: dict[str, App] = {a.name: a for a in (SettingsApp(), NotesApp(), ShopApp(), MailApp())}


# --------------------------------------------------------------------------------------------------
# Tasks


def normalize_answer(text: str) -> str:
    """Lower-case, drop surrounding quotes, a leading '$', trailing punctuation and extra spaces."""
    text = str(text).strip().lower().strip("'\"`").strip()
    text = re.sub(r"\s+", " ", text).rstrip(".!")
    return text.lstrip("$").replace(",", "")


@dataclass
class Task:
    """A goal plus the state predicate that says it was reached. `check=None` and `answer=None` for
    synthesized (unchecked) goals; `feasible=False` wants `status: infeasible`. `expert` is a plan
    of ('open_app', label) | ('click'|'long_press', key) | ('type', key, text) | ('answer', text) |
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
        return dict(
            task_id=self.task_id,
            app=self.app,
            goal=self.goal,
            answer=self.answer,
            feasible=self.feasible,
            split=self.split,
            checked=self.check is not None,
        )


def _set(app, **values):
    def setup(state):
        state[app].update(values)

    return setup


def _opened(app):
    return (f"open {app}", lambda st: st["system"]["visited_app"].get(app, False))


# Success checks of the tasks built in loops (module-level functions, bound with partial, so that
# each task keeps its own id and a Task stays picklable).
def _note_deleted(state, note_id):
    return all(n["id"] != note_id for n in state["notes"]["notes"])


def _note_pinned(state, note_id):
    return any(n["id"] == note_id and n["pinned"] for n in state["notes"]["notes"])


def _note_titled(state, note_id, title):
    return any(n["id"] == note_id and n["title"] == title for n in state["notes"]["notes"])


def _email_starred(state, email_id):
    return any(m["id"] == email_id and m["starred"] for m in state["mail"]["emails"])


def _email_deleted(state, email_id):
    return all(m["id"] != email_id for m in state["mail"]["emails"])


def _note_id(title):
    return next(n["id"] for n in NotesApp().initial_state()["notes"] if n["title"] == title)


def _email_id(sender):
    return next(m["id"] for m in MailApp().initial_state()["emails"] if m["sender"] == sender)


def build_tasks() -> list[Task]:
    """The task catalogue. Within each template the last parameter goes to the test split, so
    held-out tasks reuse seen screens with unseen parameters."""
    groups: list[list[Task]] = []
    S = "Settings"
    for field_name, key, screen, label, on in [
        ("bluetooth", "bluetooth_switch", "open_bluetooth", "Bluetooth", True),
        ("dnd", "dnd_switch", "open_sound", "Do not disturb", True),
        ("dark_theme", "dark_switch", "open_display", "dark theme", True),
        ("wifi", "wifi_switch", "open_wifi", "Wi-Fi", False),
        ("vibrate", "vibrate_switch", "open_sound", "vibration", False),
    ]:
        verb = "on" if on else "off"
        groups.append(
            [
                Task(
                    f"settings_{field_name}_{verb}",
                    "settings",
                    f"Turn {verb} {label}.",
                    check=lambda st, f=field_name, on=on: st["settings"][f] == on,
                    setup=_set("settings", **{field_name: not on}),
                    expert=[("open_app", S), ("click", screen), ("click", key)],
                    subgoals=[_opened("settings")],
                )
            ]
        )
    groups[-1].append(
        Task(
            "settings_airplane_on",
            "settings",
            "Turn on airplane mode.",
            check=lambda st: st["settings"]["airplane"],
            expert=[("open_app", S), ("click", "airplane_switch")],
            subgoals=[_opened("settings")],
        )
    )
    groups.append(
        [
            Task(
                f"settings_wifi_{net}",
                "settings",
                f"Connect to the Wi-Fi network {net}.",
                check=lambda st, net=net: (
                    st["settings"]["wifi"] and st["settings"]["network"] == net
                ),
                expert=[("open_app", S), ("click", "open_wifi"), ("click", f"network:{net}")],
                subgoals=[_opened("settings")],
            )
            for net in ("CafeFree", "Guest", "Office5G")
        ]
    )
    for what, lo, hi in [
        ("brightness", "brightness_down", "brightness_up"),
        ("volume", "volume_down", "volume_up"),
    ]:
        screen = "open_display" if what == "brightness" else "open_sound"
        start = SettingsApp().initial_state()[what]
        groups.append(
            [
                Task(
                    f"settings_{what}_{n}",
                    "settings",
                    f"Set the {what} to {n}.",
                    check=lambda st, what=what, n=n: st["settings"][what] == n,
                    expert=[("open_app", S), ("click", screen)]
                    + [("click", hi if n > start else lo)] * abs(n - start),
                    subgoals=[_opened("settings")],
                )
                for n in ((7, 3, 8) if what == "brightness" else (4, 8, 2))
            ]
        )
    groups.append(
        [
            Task(
                f"settings_font_{size}",
                "settings",
                f"Change the font size to {size.lower()}.",
                check=lambda st, size=size: st["settings"]["font_size"] == size,
                expert=[
                    ("open_app", S),
                    ("click", "open_display"),
                    ("click", "open_font"),
                    ("click", f"font:{size}"),
                ],
                subgoals=[_opened("settings")],
            )
            for size in ("Large", "Small")
        ]
    )
    groups.append(
        [
            Task(
                f"settings_rename_{i}",
                "settings",
                f"Rename this phone to {name}.",
                check=lambda st, name=name: st["settings"]["device_name"] == name,
                expert=[
                    ("open_app", S),
                    ("click", "open_about"),
                    ("type", "device_name_box", name),
                    ("click", "save_name"),
                ],
                subgoals=[_opened("settings")],
            )
            for i, name in enumerate(("Work Phone", "Kitchen Tab", "Pixel Toy"))
        ]
    )
    groups.append(
        [
            Task(
                "settings_q_android",
                "settings",
                "Which Android version is this phone running?",
                answer="14",
                expert=[("open_app", S), ("click", "open_about"), ("answer", "14")],
            ),
            Task(
                "settings_q_model",
                "settings",
                "What is the model name of this phone?",
                answer="Toy Phone 1",
                expert=[("open_app", S), ("click", "open_about"), ("answer", "Toy Phone 1")],
            ),
        ]
    )
    groups.append(
        [
            Task(
                "settings_5g_infeasible",
                "settings",
                "Turn on 5G in the network settings.",
                feasible=False,
                expert=[("open_app", S), ("click", "open_wifi"), ("status", "infeasible")],
            )
        ]
    )

    N = "Notes"
    groups.append(
        [
            Task(
                f"notes_create_{i}",
                "notes",
                f"Create a note titled '{title}' that says '{body}'.",
                check=lambda st, t=title, b=body: any(
                    n["title"] == t and n["body"] == b for n in st["notes"]["notes"]
                ),
                expert=[
                    ("open_app", N),
                    ("click", "new_note"),
                    ("type", "title_box", title),
                    ("type", "body_box", body),
                    ("click", "save_note"),
                ],
                subgoals=[
                    _opened("notes"),
                    (
                        f"title {title}",
                        lambda st, t=title: any(n["title"] == t for n in st["notes"]["notes"]),
                    ),
                ],
            )
            for i, (title, body) in enumerate(
                [("Chores", "vacuum"), ("Packing", "socks"), ("Ideas", "a robot")]
            )
        ]
    )
    for verb, titles in [
        ("delete", ("Meeting", "Movies", "Recipes")),
        ("pin", ("Trip ideas", "Passwords", "Gym plan")),
    ]:
        tasks = []
        for title in titles:
            nid = _note_id(title)
            if verb == "delete":
                check = partial(_note_deleted, note_id=nid)
                plan = [("open_app", N), ("long_press", f"note:{nid}"), ("click", "menu_delete")]
            else:
                check = partial(_note_pinned, note_id=nid)
                plan = [("open_app", N), ("long_press", f"note:{nid}"), ("click", "pin_note")]
            tasks.append(
                Task(
                    f"notes_{verb}_{nid}",
                    "notes",
                    f"{verb.capitalize()} the note '{title}'.",
                    check=check,
                    expert=plan,
                    subgoals=[_opened("notes")],
                )
            )
        groups.append(tasks)
    groups.append(
        [
            Task(
                f"notes_rename_{_note_id(a)}",
                "notes",
                f"Rename the note '{a}' to '{b}'.",
                check=partial(_note_titled, note_id=_note_id(a), title=b),
                expert=[
                    ("open_app", N),
                    ("click", f"note:{_note_id(a)}"),
                    ("type", "title_box", b),
                    ("click", "save_note"),
                ],
                subgoals=[_opened("notes")],
            )
            for a, b in [("Gym plan", "Workout"), ("Books to read", "Reading list")]
        ]
    )
    groups.append(
        [
            Task(
                f"notes_q_{_note_id(t)}",
                "notes",
                q,
                answer=a,
                expert=[("open_app", N), ("click", f"note:{_note_id(t)}"), ("answer", a)],
            )
            for t, q, a in [
                ("Wifi password", "What is the Wi-Fi password saved in my notes?", "sunflower42"),
                ("Trip ideas", "Which city is in my trip ideas note?", "Lisbon"),
            ]
        ]
    )

    H = "Shop"
    prices = {n: p for n, p, _ in ShopApp.PRODUCTS}
    category = {n: c for n, _, c in ShopApp.PRODUCTS}
    groups.append(
        [
            Task(
                f"shop_cart_{i}",
                "shop",
                f"Add {qty} {name} to the cart.",
                check=lambda st, n=name, q=qty: st["shop"]["cart"].get(n, 0) == q,
                expert=[
                    ("open_app", H),
                    ("type", "search_box", name.split()[-1].lower()),
                    ("click", "search_button"),
                    ("click", f"product:{name}"),
                ]
                + [("click", "qty_up")] * (qty - 1)
                + [("click", "add_to_cart")],
                subgoals=[_opened("shop")],
            )
            for i, (name, qty) in enumerate(
                [("Blue mug", 2), ("Cookbook", 1), ("Trowel", 3), ("Atlas", 2)]
            )
        ]
    )
    groups.append(
        [
            Task(
                f"shop_order_{i}",
                "shop",
                f"Order a {name} to {address}.",
                check=lambda st, n=name, a=address: any(
                    o["items"].get(n) and o["address"] == a for o in st["shop"]["orders"]
                ),
                expert=[
                    ("open_app", H),
                    ("click", f"category:{category[name]}"),
                    ("click", f"product:{name}"),
                    ("click", "add_to_cart"),
                    ("click", "view_cart"),
                    ("click", "checkout"),
                    ("type", "address_box", address),
                    ("click", "place_order"),
                ],
                subgoals=[
                    _opened("shop"),
                    (
                        "in cart",
                        lambda st, n=name: (
                            n in st["shop"]["cart"]
                            or any(n in o["items"] for o in st["shop"]["orders"])
                        ),
                    ),
                ],
            )
            for i, (name, address) in enumerate(
                [
                    ("Tea kettle", "12 Oak St"),
                    ("Seed pack", "5 Elm Rd"),
                    ("Sci-fi novel", "9 Pine Ave"),
                ]
            )
        ]
    )
    groups.append(
        [
            Task(
                f"shop_q_price_{i}",
                "shop",
                f"How much does the {name} cost?",
                answer=f"${prices[name]}",
                expert=[
                    ("open_app", H),
                    ("click", f"category:{category[name]}"),
                    ("answer", f"${prices[name]}"),
                ],
            )
            for i, name in enumerate(("Frying pan", "Garden hose", "Chef knife"))
        ]
    )
    groups.append(
        [
            Task(
                "shop_laptop_infeasible",
                "shop",
                "Buy a laptop.",
                feasible=False,
                expert=[
                    ("open_app", H),
                    ("type", "search_box", "laptop"),
                    ("click", "search_button"),
                    ("status", "infeasible"),
                ],
            )
        ]
    )

    M = "Mail"
    groups.append(
        [
            Task(
                f"mail_send_{i}",
                "mail",
                f"Send an email to {to} with the subject '{subject}'.",
                check=lambda st, t=to, s=subject: any(
                    m["to"] == t and m["subject"] == s for m in st["mail"]["sent"]
                ),
                expert=[
                    ("open_app", M),
                    ("click", "compose"),
                    ("type", "to_box", to),
                    ("type", "subject_box", subject),
                    ("click", "send"),
                ],
                subgoals=[_opened("mail")],
            )
            for i, (to, subject) in enumerate(
                [("alice", "Dinner"), ("bob", "Slides"), ("carol", "Weekend")]
            )
        ]
    )
    for verb, senders in [
        ("star", ("dave", "erin", "heidi")),
        ("delete", ("frank", "grace", "bob")),
    ]:
        tasks = []
        for sender in senders:
            eid = _email_id(sender)
            if verb == "star":
                check = partial(_email_starred, email_id=eid)
                plan = [("open_app", M), ("click", f"email:{eid}"), ("click", "star")]
            else:
                check = partial(_email_deleted, email_id=eid)
                plan = [("open_app", M), ("long_press", f"email:{eid}"), ("click", "menu_delete")]
            tasks.append(
                Task(
                    f"mail_{verb}_{sender}",
                    "mail",
                    f"{verb.capitalize()} the email from {sender}.",
                    check=check,
                    expert=plan,
                    subgoals=[_opened("mail")],
                )
            )
        groups.append(tasks)
    groups.append(
        [
            Task(
                f"mail_reply_{sender}",
                "mail",
                f"Reply to {sender}'s email saying '{body}'.",
                check=lambda st, t=sender, b=body: any(
                    m["to"] == t and m["body"] == b and m["subject"].startswith("Re:")
                    for m in st["mail"]["sent"]
                ),
                expert=[
                    ("open_app", M),
                    ("click", f"email:{_email_id(sender)}"),
                    ("click", "reply"),
                    ("type", "body_box", body),
                    ("click", "send"),
                ],
                subgoals=[_opened("mail")],
            )
            for sender, body in [("alice", "Sounds good"), ("carol", "Thanks")]
        ]
    )
    groups.append(
        [
            Task(
                f"mail_q_{sender}",
                "mail",
                f"What is the subject of the email from {sender}?",
                answer=subject,
                expert=[("open_app", M), ("answer", subject)],
            )
            for sender, subject in [("bob", "Quarterly report"), ("frank", "Flight update")]
        ]
    )

    tasks = []
    for group in groups:
        for i, task in enumerate(group):
            task.split = "test" if len(group) > 1 and i == len(group) - 1 else "train"
            tasks.append(task)
    return tasks


TASKS: dict[str, Task] = {t.task_id: t for t in build_tasks()}


def list_tasks(split: str | None = None, app: str | None = None) -> list[Task]:
    return [
        t
        for t in TASKS.values()
        if (split is None or t.split == split) and (app is None or t.app == app)
    ]
