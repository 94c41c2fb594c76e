"""Tests for the toy GUI world (common/gui_env.py): experts, success checks, render vs a11y tree,
every action format (pinned to WebArena's, BrowserGym's, OS-Genesis' and GUIMid's rules), malformed
actions, and the one agent loop."""

import json
import random

import numpy as np
import pytest

from common.gui_env import (
    BACKGROUND,
    SCREEN_H,
    SCREEN_W,
    TASKS,
    ActionError,
    GUIAction,
    GUIEnvironment,
    ScriptedExpert,
    StubGrounder,
    Task,
    ToyGUIEnv,
    action_to_guimid,
    describe_action,
    element_at_point,
    format_guimid,
    format_osgenesis,
    guimid_to_action,
    list_tasks,
    nearest_center_index,
    normalize_answer,
    osgenesis_a11y,
    osgenesis_to_indexed,
    parse_action,
    parse_guimid,
    parse_json_action,
    parse_osgenesis,
    per_observation,
    rollout,
    run_episodes,
    screen_signature,
    state_diff,
    validate_action,
    with_center_point,
)
from common.gui_formats import (
    browsergym_to_action,
    format_browsergym,
    format_webarena,
    parse_browsergym_calls,
    parse_pyautogui,
    parse_webarena,
)


def el(index, text, x0, y0, x1, y1, role="button"):
    """A hand-made AW-style element for grounding tests."""
    return dict(
        index=index,
        id=str(index),
        resource_id=text,
        role=role,
        text=text,
        value="",
        bbox_pixels=dict(x_min=x0, y_min=y0, x_max=x1, y_max=y1),
        is_clickable=True,
        is_long_clickable=False,
        is_editable=False,
        is_scrollable=False,
        is_checkable=False,
        is_checked=False,
        is_focused=False,
    )


@pytest.fixture(scope="module")
def expert_runs():
    env = ToyGUIEnv()
    return {tid: rollout(env, ScriptedExpert(task).act, task) for tid, task in TASKS.items()}


# tasks --------------------------------------------------------------------------------------------


def test_catalogue_has_apps_splits_and_kinds():
    assert {t.app for t in TASKS.values()} == {"settings", "notes", "shop", "mail"}
    assert len(list_tasks("train")) >= 30 and len(list_tasks("test")) >= 12
    assert {t.task_id for t in list_tasks("train")}.isdisjoint(
        t.task_id for t in list_tasks("test")
    )
    assert any(t.answer for t in TASKS.values()) and any(not t.feasible for t in TASKS.values())
    assert all(len(t.expert) <= t.max_steps for t in TASKS.values())


def test_every_task_is_solved_by_the_expert_without_errors(expert_runs):
    for tid, (steps, info) in expert_runs.items():
        assert info["success"], tid
        assert steps[-1]["reward"] == 1.0, tid
        assert not any(s["error"] for s in steps), (tid, [s["error"] for s in steps])
        assert all(info["subgoals"]), tid  # every subgoal was met on the way


def test_no_task_is_solved_at_reset_or_by_waiting():
    env = ToyGUIEnv(max_steps=3)
    for task in TASKS.values():
        steps, info = rollout(env, lambda obs: GUIAction("wait"), task)
        assert not info["success"] and len(steps) == 3, task.task_id
        assert not env.task_success(), task.task_id


def test_wrong_stops_fail():
    env = ToyGUIEnv()
    env.reset("settings_q_android")
    *_, info = env.step(GUIAction("answer", text="13"))
    assert not info["success"]
    env.reset("settings_q_android")
    _, reward, terminated, _, info = env.step(
        '{"action_type": "answer", "text": " 14. "}'
    )  # normalised
    assert reward == 1.0 and terminated
    env.reset("settings_bluetooth_on")  # feasible task: calling it infeasible fails
    _, reward, terminated, _, _ = env.step(GUIAction("status", goal_status="infeasible"))
    assert terminated and reward == 0.0
    env.reset("settings_5g_infeasible")  # infeasible task: claiming completion fails
    _, reward, terminated, _, _ = env.step(GUIAction("status", goal_status="complete"))
    assert terminated and reward == 0.0
    env.reset("shop_q_price_0")
    assert env.step(GUIAction("answer", text="$30"))[1] == 1.0 and normalize_answer("$30") == "30"


def test_success_check_reads_state_not_screens():
    env = ToyGUIEnv(end_on_success=False)
    env.reset("settings_bluetooth_on")
    env.step(GUIAction("open_app", app_name="Settings"))
    obs, *_ = env.step(
        GUIAction(
            "click",
            index=next(
                e["index"] for e in env.obs["ui_elements"] if e["resource_id"] == "open_bluetooth"
            ),
        )
    )
    assert obs["url"] == "toy://settings/bluetooth" and not env.task_success()
    obs, reward, terminated, _, _ = env.step(GUIAction("click", index=1))  # the switch
    assert (
        env.state["settings"]["bluetooth"]
        and env.task_success()
        and not terminated
        and reward == 0.0
    )
    _, reward, terminated, _, info = env.step(GUIAction("status", goal_status="complete"))
    assert terminated and reward == 1.0 and info["success"]


def test_max_steps_truncates_and_steps_after_done_are_errors():
    env = ToyGUIEnv(max_steps=2)
    env.reset("mail_send_0")
    assert env.step(GUIAction("wait"))[3] is False
    obs, reward, terminated, truncated, _ = env.step(GUIAction("wait"))
    assert truncated and not terminated and reward == 0.0
    obs, *_ = env.step(GUIAction("wait"))
    assert "episode is over" in obs["last_action_error"]


def test_state_changes_back_stack_scroll_and_drafts():
    env = ToyGUIEnv()
    obs, _ = env.reset(Task("t", "notes", "look around", start_app="notes"))
    assert obs["url"] == "toy://notes/list"
    titles = {e["text"] for e in obs["ui_elements"]}
    assert "Movies" not in titles and obs["ui_elements"][-1]["is_scrollable"]
    obs, *_ = env.step(GUIAction("scroll", direction="down"))
    assert "Movies" in {e["text"] for e in obs["ui_elements"]}
    before = env.state["notes"]["notes"][0]["pinned"]
    obs, *_ = env.step(GUIAction("scroll", direction="up"))
    obs, *_ = env.step(GUIAction("long_press", index=2))  # Groceries -> context menu
    assert obs["url"] == "toy://notes/menu"
    obs, *_ = env.step(GUIAction("click", index=1))  # Pin -> back to the list, pinned first
    assert env.state["notes"]["notes"][0]["pinned"] != before and obs["url"] == "toy://notes/list"
    obs, *_ = env.step(GUIAction("navigate_back"))
    assert obs["url"] == "toy://home/launcher"
    env.step(GUIAction("open_app", app_name="mail"))
    obs, *_ = env.step(GUIAction("navigate_home"))
    assert obs["url"] == "toy://home/launcher"
    snap = json.loads(json.dumps(env.state))
    env.step(GUIAction("open_app", app_name="settings"))
    env.step(GUIAction("click", index=1))  # airplane switch
    assert state_diff(snap, env.state)[0][0] == "/settings/airplane"


def test_text_fields_focus_enter_and_validation_flash():
    env = ToyGUIEnv()
    env.reset(Task("t", "shop", "search", start_app="shop"))
    obs, *_ = env.step(GUIAction("input_text", text="mug"))  # nothing focused yet
    assert "no text field is focused" in obs["last_action_error"]
    obs, *_ = env.step(GUIAction("click", index=1))  # focus the search bar
    assert obs["ui_elements"][1]["is_focused"] and "focused" in obs["axtree_txt"]
    env.step(GUIAction("input_text", text="kettle"))
    obs, *_ = env.step(GUIAction("keyboard_enter"))
    assert obs["url"] == "toy://shop/results" and obs["ui_elements"][1]["text"] == "Tea kettle $25"
    obs, *_ = env.step(GUIAction("input_text", index=1, text="x"))
    assert "not editable" in obs["last_action_error"]
    env.reset(Task("t", "mail", "send", start_app="mail"))
    env.step(GUIAction("click", index=1))  # compose
    obs, *_ = env.step(GUIAction("click", index=4))  # send with no recipient
    assert obs["url"] == "toy://mail/compose" and any(
        e["text"] == "Recipient required" for e in obs["ui_elements"]
    )
    assert env.state["mail"]["sent"] == []


# render vs a11y tree ------------------------------------------------------------------------------


def _visited_observations(expert_runs):
    seen = {}
    for steps, _ in expert_runs.values():
        for s in steps:
            seen.setdefault(s["obs"]["axtree_txt"], s["obs"])
    return list(seen.values())


def test_render_and_accessibility_tree_agree(expert_runs):
    observations = _visited_observations(expert_runs)
    assert len(observations) > 30
    for obs in observations:
        pixels = np.asarray(obs["screenshot"])  # (H, W, 3)
        assert pixels.shape == (SCREEN_H, SCREEN_W, 3)
        drawn = (pixels != np.array(BACKGROUND)).any(-1)  # (H, W) pixels that are not background
        covered = np.zeros_like(drawn)
        for e in obs["ui_elements"]:
            b = e["bbox_pixels"]
            assert (
                0 <= b["x_min"] < b["x_max"] <= SCREEN_W
                and 0 <= b["y_min"] < b["y_max"] <= SCREEN_H
            ), e
            assert drawn[b["y_min"] : b["y_max"], b["x_min"] : b["x_max"]].any(), (
                obs["url"],
                e["text"],
            )  # visible
            assert (
                e["index"] == int(e["id"])
                and f"[{e['index']}] {e['role']} '{e['text']}'" in obs["axtree_txt"]
            )
            covered[b["y_min"] : b["y_max"], b["x_min"] : b["x_max"]] = True
        assert not (drawn & ~covered).any(), obs["url"]  # nothing drawn outside a node's box
        widgets = [e for e in obs["ui_elements"] if e["role"] != "list"]
        for a in widgets:  # sibling widgets do not overlap
            for b in widgets:
                if a["index"] < b["index"]:
                    A, B = a["bbox_pixels"], b["bbox_pixels"]
                    assert (
                        A["x_max"] <= B["x_min"]
                        or B["x_max"] <= A["x_min"]
                        or A["y_max"] <= B["y_min"]
                        or B["y_max"] <= A["y_min"]
                    ), (obs["url"], a["text"], b["text"])


def test_render_is_deterministic_and_shows_state():
    env = ToyGUIEnv()
    env.reset(Task("t", "settings", "", start_app="settings"))
    one = np.asarray(env.obs["screenshot"]).copy()
    env.reset(Task("t", "settings", "", start_app="settings"))
    assert (one == np.asarray(env.obs["screenshot"])).all()
    sig = screen_signature(env.obs)
    obs, *_ = env.step(
        GUIAction("click", index=1)
    )  # airplane mode on: the switch is drawn differently
    assert not (one == np.asarray(obs["screenshot"])).all() and screen_signature(obs) != sig
    assert obs["ui_elements"][1]["is_checked"] and "checked" in obs["axtree_txt"]
    obs, *_ = env.step(GUIAction("wait"))
    assert screen_signature(obs) == screen_signature(env.obs)


def test_clicks_by_coordinates_and_osgenesis_a11y():
    env = ToyGUIEnv()
    obs, _ = env.reset()
    notes_icon = next(e for e in obs["ui_elements"] if e["text"] == "Notes")
    b = notes_icon["bbox_pixels"]
    obs, *_ = env.step(
        GUIAction("click", x=b["x_min"] + 1, y=b["y_max"] - 1)
    )  # a corner still hits it
    assert obs["url"] == "toy://notes/list"
    a11y = json.loads(osgenesis_a11y(obs["ui_elements"]))
    assert "New note" in a11y and a11y["New note"].startswith("(")
    obs, *_ = env.step(GUIAction("click", x=500, y=10))
    assert "outside" in obs["last_action_error"]


# action formats (spec s5) -------------------------------------------------------------------------


def test_check1_webarena_strings():
    assert parse_webarena("type [164] [restaurants near CMU]") == GUIAction(
        "input_text", index=164, text="restaurants near CMU\n"
    )
    assert parse_webarena("type [164] [abc] [0]") == GUIAction("input_text", index=164, text="abc")
    assert parse_webarena("scroll [down]") == GUIAction("scroll", direction="down")
    with pytest.raises(ActionError, match="regex rejects"):
        parse_webarena("scroll [direction=down]")
    text = "Let's think. In summary, the next action I will perform is ```click [7]```"
    assert parse_webarena(text) == GUIAction("click", index=7)
    assert parse_webarena("stop [N/A]") == GUIAction("status", goal_status="infeasible")
    assert parse_webarena("stop [$8]") == GUIAction("answer", text="$8")
    with pytest.raises(ActionError):
        parse_webarena("hover [3]")


def test_check2_osgenesis_coordinates_to_nearest_centre():
    elements = [
        el(0, "Skip", 0, 2000, 400, 2100),
        el(1, "Get started", 339, 2098, 740, 2198),
        el(2, "Logo", 300, 300, 700, 700),
    ]
    thought, action = parse_osgenesis(
        "Low-level thought: Click 'Get started'\n"
        'action: {"action_type":"click","x":539.5,"y":2148.0}'
    )
    assert thought == "Click 'Get started'" and action == GUIAction("click", x=539.5, y=2148.0)
    indexed = osgenesis_to_indexed(action, elements)
    assert indexed.to_json() == '{"action_type": "click", "index": 1}'
    typed = osgenesis_to_indexed(GUIAction("input_text", x=10.0, y=2050.0, text="hi"), elements)
    assert typed == GUIAction("input_text", index=0, text="hi")
    assert nearest_center_index(500, 500, elements) == 2
    target = format_osgenesis(
        "Click 'Get started'", with_center_point(GUIAction("click", index=1), elements)
    )
    assert parse_osgenesis(target)[1] == GUIAction("click", x=539.5, y=2148.0)


def test_point_inside_beats_nearest_centre():
    wide = el(0, "Wide row", 0, 0, 100, 10)
    small = el(1, "Dot", 90, 12, 94, 16)
    assert nearest_center_index(92, 9, [wide, small]) == 1  # the dot's centre is closer...
    assert element_at_point(92, 9, [wide, small]) == 0  # ...but the point lies inside the row


def test_check3_json_action_validity():
    with pytest.raises(ActionError, match="not both"):
        parse_json_action('{"action_type":"click","index":3,"x":5,"y":5}')
    with pytest.raises(ActionError, match="direction"):
        parse_json_action({"action_type": "scroll", "direction": "diagonal"})
    env = ToyGUIEnv()
    env.reset("settings_bluetooth_on")
    _, _, terminated, _, info = env.step('{"action_type": "status", "goal_status": "complete"}')
    assert terminated and info["status"] == "complete"
    for bad in [
        '{"action_type":"click"}',
        '{"action_type":"fly"}',
        '{"index": 2}',
        '{"action_type":"click","index":"x"}',
        '{"action_type":"click","x":1}',
        '{"action_type":"open_app"}',
        '{"action_type":"status","goal_status":"won"}',
        '{"action_type":"click","index":1,"color":"red"}',
        '{"action_type":"click","x":"a","y":2}',
        '{"action_type":"wait","index":2}',
        "not json at all",
        '{"action_type": "click", "index": 2',
    ]:
        with pytest.raises(ActionError):
            parse_json_action(bad)
    assert parse_json_action('prefix {"action_type":"click","index":"3"} suffix') == GUIAction(
        "click", index=3
    )
    # a brace inside the typed text is text, not the end of the object
    # (common.rewards.last_json_object)
    assert parse_json_action(
        'I type: {"action_type":"input_text","index":2,"text":"a}b"}'
    ) == GUIAction("input_text", index=2, text="a}b")


def test_check12_browsergym_calls():
    assert parse_browsergym_calls("click('a51')") == [("click", ["a51"])]
    with pytest.raises(ValueError, match="multiaction"):
        parse_browsergym_calls("click('1') fill('2','x')")
    assert len(parse_browsergym_calls("click('1')\nfill('2', 'x')", multiaction=True)) == 2
    with pytest.raises(NameError):
        parse_browsergym_calls("launch_rockets()")
    assert parse_browsergym_calls("fill(bid='3', value='a (b), c')") == [
        ("fill", ["3", "a (b), c"])
    ]
    assert browsergym_to_action("fill", ["3", "milk"]) == GUIAction(
        "input_text", index=3, text="milk"
    )
    assert browsergym_to_action("scroll", [0, 200]) == GUIAction("scroll", direction="down")
    assert browsergym_to_action("report_infeasible", ["no 5G"]) == GUIAction(
        "status", goal_status="infeasible"
    )
    with pytest.raises(ActionError, match="bid"):
        browsergym_to_action("click", ["a51"])
    with pytest.raises(ActionError, match="not supported"):
        browsergym_to_action("hover", ["3"])
    with pytest.raises(ActionError, match="literals"):
        parse_browsergym_calls("click(open('/etc/passwd'))")


def test_check12_guimid_json_and_stub_grounder():
    env = ToyGUIEnv()
    obs, _ = env.reset(Task("t", "shop", "search", start_app="shop"))
    block = '{"Element Description":"Search bar","Action":"type","Value":"GUI Agent"}'
    text = f"I should search.\n```json\n{block}\n```"
    out = parse_guimid(text)
    assert (out.thought, out.description, out.action, out.value) == (
        "I should search.",
        "Search bar",
        "type",
        "GUI Agent",
    )
    obs, *_ = env.step(text)
    assert (
        env.state["shop"]["drafts"]["query"] == "GUI Agent"
        and obs["ui_elements"][1]["value"] == "GUI Agent"
    )
    x, y = StubGrounder().ground("Search bar", obs)
    assert 0 < x < 1 and 0 < y < 1
    env.reset("settings_5g_infeasible")
    _, reward, terminated, _, info = env.step(
        '```json\n{"Element Description":"","Action":"stop","Value":"infeasible"}\n```'
    )
    assert terminated and info["status"] == "infeasible" and reward == 1.0
    with pytest.raises(ActionError, match="missing key"):
        parse_guimid('```json\n{"Action":"click","Value":""}\n```')
    with pytest.raises(ActionError, match="ground"):
        guimid_to_action(
            parse_guimid('{"Element Description":"Quantum flux","Action":"click","Value":""}'),
            obs,
            StubGrounder(),
        )


def test_pyautogui_calls():
    assert parse_pyautogui("pyautogui.click(x=10, y=20)") == GUIAction("click", x=10.0, y=20.0)
    assert parse_pyautogui("write('hello')") == GUIAction("input_text", text="hello")
    assert parse_pyautogui("scroll(-3)") == GUIAction("scroll", direction="down")
    with pytest.raises(ActionError):
        parse_pyautogui("pyautogui.dragTo(1, 2)")


def test_every_format_round_trips_through_the_expert(expert_runs):
    """Each expert action re-encoded in every format that can express it still solves the task."""
    env = ToyGUIEnv()
    for fmt in ("json", "osgenesis", "guimid", "webarena", "browsergym"):
        for tid, task in TASKS.items():
            expert = ScriptedExpert(task)

            def policy(obs, fmt=fmt, expert=expert):
                action = expert.act(obs)
                if fmt == "json":
                    return action.to_json()
                if fmt == "osgenesis":
                    return format_osgenesis("t", with_center_point(action, obs["ui_elements"]))
                if fmt == "guimid":
                    return format_guimid("t", *action_to_guimid(action, obs["ui_elements"]))
                try:
                    return (
                        format_webarena(action) if fmt == "webarena" else format_browsergym(action)
                    )
                except ActionError:
                    return action  # long_press / open_app have no web form

            steps, info = rollout(env, policy, task)
            assert info["success"] and not any(s["error"] for s in steps), (
                fmt,
                tid,
                [s["error"] for s in steps],
            )


def test_describe_action_and_validate():
    elements = [el(0, "Wi-Fi", 0, 0, 10, 10)]
    assert describe_action(GUIAction("click", index=0), elements) == "click 'Wi-Fi'"
    assert (
        describe_action(GUIAction("input_text", index=0, text="abc\n"), elements)
        == "type 'abc' into 'Wi-Fi'"
    )
    assert describe_action(GUIAction("open_app", app_name="Mail"), elements) == "open app 'Mail'"
    with pytest.raises(ActionError):
        validate_action(GUIAction("click", x=float("nan"), y=1.0))


def test_malformed_actions_never_crash_the_env():
    env = ToyGUIEnv(max_steps=500)
    env.reset("notes_create_0")
    rng = random.Random(0)
    alphabet = "abc[](){}'\":,\n 0123456789_-=.`\\ñ€"
    junk = [
        "",
        "   ",
        None,
        42,
        [],
        {"action_type": None},
        "click [999]",
        "click('999')",
        "type [2]",
        "```json\n{oops}\n```",
        "Low-level thought: x\naction: {}",
        '{"action_type":"open_app","app_name":"Doom"}',
        '{"action_type":"click","index":-1}',
        "pyautogui.click()",
        "stop",
        "((((",
        "'unterminated",
        '{"Element Description": 5, "Action": null, "Value": []}',
        GUIAction("click", index=99),
        GUIAction("teleport"),
        GUIAction("click", index="2"),
    ]
    junk += ["".join(rng.choice(alphabet) for _ in range(rng.randint(1, 40))) for _ in range(200)]
    for action in junk:
        obs, reward, terminated, truncated, _ = env.step(action)
        assert isinstance(obs["last_action_error"], str)
        if terminated or truncated:
            env.reset("notes_create_0")
    env.reset("notes_create_0")
    for action in junk[:21]:
        obs, *_ = env.step(action)
        assert obs["last_action_error"], repr(action)  # each one is reported as an error
    assert obs["url"] == "toy://home/launcher"  # and none of them changed anything


def test_parse_action_autodetects_formats():
    assert parse_action("click [3]") == GUIAction("click", index=3)
    assert parse_action("click('3')") == GUIAction("click", index=3)
    assert parse_action('{"action_type":"navigate_back"}') == GUIAction("navigate_back")
    assert parse_action("pyautogui.press('enter')") == GUIAction("keyboard_enter")
    assert parse_action("go_back") == GUIAction("navigate_back")
    assert parse_action("noop()") == GUIAction("wait")


def test_toy_env_satisfies_the_adapter_protocol():
    assert isinstance(ToyGUIEnv(), GUIEnvironment)


# the one agent loop -------------------------------------------------------------------------------


class CountingEnv:
    """One shared environment (like MiniWoB's one browser): counts resets, wraps the toy phone."""

    def __init__(self, max_steps):
        self.env, self.resets = ToyGUIEnv(max_steps=max_steps), 0

    def reset(self, task=None, seed=None):
        self.resets += 1
        return self.env.reset(task, seed)

    def step(self, action):
        return self.env.step(action)


def test_run_episodes_lock_step_records_and_invalid_actions():
    """The one GUI agent loop: experts solve their tasks in lock-step rounds; a None action is
    spent as `wait` and counted invalid; raw text is parsed by the env; stop_fn aborts."""
    tasks = [TASKS["settings_airplane_on"], TASKS["mail_star_dave"]]
    experts = [ScriptedExpert(t) for t in tasks]
    rounds = []

    def policy(items):
        rounds.append([i for i, _, _ in items])
        return [(f"step {len(steps)}", experts[i].act(obs)) for i, obs, steps in items]

    records = run_episodes(tasks, policy, max_steps=10)
    assert rounds == [[0, 1], [0, 1], [1]]  # airplane takes 2 steps, star 3; one batch per round
    assert [r["success"] for r in records] == [True, True] and records[0]["invalid"] == 0
    first = records[0]["steps"][0]  # open_app Settings: the subgoal "open settings" is met
    assert first["url"] == "toy://settings/main" and first["subgoals"] == [True]
    assert first["success"] is False and records[0]["steps"][-1]["success"] is True
    assert records[1]["steps"][1]["thought"] == "step 1"

    # None: no valid action (a wait, counted); raw text: the env parses it (garbage -> its error)
    answers = iter(
        [(("bad", None),), (("raw", "not an action at all"),), (("ok", GUIAction("wait")),)]
    )
    [r] = run_episodes([tasks[0]], lambda items: next(answers), max_steps=3)
    assert [s["action"] for s in r["steps"]][::2] == [None, GUIAction("wait").to_json()]
    assert r["invalid"] == 2 and r["steps"][0]["error"] and r["steps"][1]["error"]
    assert not r["steps"][2]["error"] and not r["success"] and len(r["steps"]) == 3

    # stop_fn ends an episode early; batch_size=1 runs one episode at a time on one shared env
    shared = CountingEnv(max_steps=10)
    waits = per_observation(lambda obs: GUIAction("wait"))
    out = run_episodes(
        tasks,
        waits,
        10,
        stop_fn=lambda steps: len(steps) == 2,
        make_env=lambda: shared,
        batch_size=1,
    )
    assert [len(r["steps"]) for r in out] == [2, 2] and all(r["aborted"] for r in out)
    assert shared.resets == 2 and [r["task_id"] for r in out] == [t.task_id for t in tasks]
