"""Tests for os_genesis.py: the paper's rules pinned to hand-computed values (walk weights, the
abort rule, TRM parsing and score-weighted draws, AndroidControl step matching), the stand-ins
against the env's state, the model-backed paths with the tiny VLM (garbage output is parsed and
counted, never a crash), end-to-end runs (resume included, 2 ranks) and the learning claims."""

import json
import random
import sys
from collections import Counter
from functools import partial

import pytest

import os_genesis as og
from common import gui_agents as agents
from common.gui_env import (
    TASKS,
    GUIAction,
    Task,
    ToyGUIEnv,
    androidcontrol_click_ok,
    describe_action,
    replay,
    run_episodes,
    screen_signature,
    state_diff,
    step_match,
    token_f1,
)
from common.gui_standins import (
    PathFollower,
    RuleDescriber,
    apply_diff,
    describe_state_change,
    direct_plan,
    goal_template,
    held_out_templates,
    leaks_held_out,
    plan_step,
    task_target,
    template_split,
)
from common.train import init_distributed


def obs_with(elements):
    return {"ui_elements": elements}


def element(index, rid, editable=False, long_clickable=False, role="button"):
    return dict(
        index=index,
        resource_id=rid,
        role=role,
        text=rid,
        is_clickable=True,
        is_editable=editable,
        is_long_clickable=long_clickable,
    )


# stage 1: walks


def test_check7_mobile_walk_probabilities():
    weights = og.mobile_walk_weights(5)
    assert weights == [10.0] * 5 + [1.0] * 3
    assert sum(weights[5:]) / sum(weights) == pytest.approx(3 / 53) and 3 / 53 == pytest.approx(
        0.0566, abs=1e-4
    )
    rng = random.Random(0)
    assert all(
        og.element_action(element(0, "f", editable=True), 0.1, rng, "hi")
        == GUIAction("input_text", index=0, text="hi")
        for _ in range(200)
    )  # an editable element always yields input_text
    kinds = Counter(
        og.element_action(element(1, "row", long_clickable=True), 0.1, rng).action_type
        for _ in range(10_000)
    )
    assert kinds["long_press"] / 10_000 == pytest.approx(0.1, abs=0.01) and set(kinds) == {
        "click",
        "long_press",
    }
    assert {og.element_action(element(2, "b"), 0.1, rng).action_type for _ in range(500)} == {
        "click"
    }


def test_check8_web_walk_weights():
    a, b, c = (
        og.web_element_weight("button", False, True),
        og.web_element_weight("button", True, True),
        og.web_element_weight("link", True, False),
    )
    assert [a / (a + b + c), b / (a + b + c), c / (a + b + c)] == [4 / 8, 3 / 8, 1 / 8]
    assert (
        og.web_element_weight("button", False, False) == 3.0
        and og.web_element_weight("StaticText", False, True) == 0.0
    )


@pytest.fixture(scope="module")
def walks():
    walker, out = agents.Walker(og.Args(walk_steps=10), og.RULES, []), []
    for walk_id in range(24):
        walk = walker.walk(["settings", "notes", "shop", "mail"][walk_id % 4], walk_id)
        out.append((walk, walk["triples"]))
    return out


def follower_plan(triple):
    """Open the app, the walk's loop-free path to the triple, the triple's action."""
    return [["open_app", og.APPS[triple["app"]].label]] + triple["path"] + [triple["final_step"]]


def test_check9_unclickable_pool_and_triples(walks):
    pooled_so_far, n_pooled = set(), 0
    for walk, triples in walks:
        app = walk["app"]
        screens = replay(Task("w", app, "", start_app=app), walk["actions"])
        recorded = {t["step"] for t in triples}
        for k, action in enumerate(walk["actions"], start=1):
            before, after = screens[k - 1], screens[k]
            unchanged = (
                screen_signature(before) == screen_signature(after)
                and before["url"] == after["url"]
            )
            assert (k in recorded) == (not unchanged)  # a triple exactly for every real change
            if action.get("index") is not None:
                rid = before["ui_elements"][action["index"]]["resource_id"]
                assert (app, rid) not in pooled_so_far  # a pooled element is never proposed again
                if unchanged:
                    pooled_so_far.add((app, rid))
                    n_pooled += 1
        assert len(walk["pooled"]) == sum(
            1 for a in walk["actions"] if a.get("index") is not None
        ) - sum(1 for t in triples if t["action"].get("index") is not None)
    assert n_pooled > 0 and sum(len(t) for _, t in walks) > 100


def test_walk_paths_replay_to_the_triple(walks):
    """The follower (no noise) replays a triple's loop-free path and reaches its screen."""
    checked = 0
    for _, triples in walks:
        for t in triples[:2]:
            follower = PathFollower(follower_plan(t), None, 0.0, random.Random(0))
            record = run_episodes(
                [Task(t["triple_id"], t["app"], "x")],
                partial(_follow, follower),
                max_steps=15,
                stop_fn=lambda steps: og.should_abort([s["action"] for s in steps]),
            )[0]
            urls = [s["url"] for s in _replay_urls(t["app"], record)]
            assert t["url_before"] in urls, (t["triple_id"], t["path"])
            checked += 1
    assert checked > 30


def _follow(follower, items):
    return [("", follower.act(obs)) for _, obs, _ in items]


def _replay_urls(app, record):
    return replay(Task("r", app, "x"), [s["action"] for s in record["steps"]])


# stage 2: reverse synthesis


def _triple_from(app, actions):
    """Run actions on a fresh env (app opened): the last one's triple, as the walk builds it."""
    args, pool, explored = og.Args(), set(), set()
    env = ToyGUIEnv(Task("t", app, "", start_app=app), max_steps=100)
    for a in actions[:-1]:
        env.step(a)
    before, before_state = env.obs, json.loads(json.dumps(env.state))
    after, *_ = env.step(actions[-1])
    el = before["ui_elements"][actions[-1].index] if actions[-1].index is not None else None
    return (
        dict(
            triple_id="t0",
            app=app,
            action=actions[-1].to_dict(),
            element=el,
            diff=state_diff(before_state, env.state),
            action_text=describe_action(actions[-1], before["ui_elements"]),
            title_before=before["ui_elements"][0]["text"],
            title_after=after["ui_elements"][0]["text"],
            url_before=before["url"],
            url_after=after["url"],
            after=[[e["resource_id"], e["text"], e["value"]] for e in after["ui_elements"]],
            path=[],
            final_step=plan_step(actions[-1], before["ui_elements"]),
        ),
        args,
        pool,
        explored,
    )


def test_rule_describer_names_the_state_change():
    triple = _triple_from("settings", [GUIAction("click", index=3), GUIAction("click", index=1)])[
        0
    ]  # Bluetooth screen, switch
    assert describe_state_change(triple["diff"]) == "Turn on Bluetooth."
    out = og.parse_synthesis(RuleDescriber(0.3).describe([triple])[0])
    assert (
        out["Sub-Instruction"] == "Click 'Bluetooth'."
        and out["High-Level-Instruction"] == "Turn on Bluetooth."
    )
    nav = _triple_from("mail", [GUIAction("click", index=1)])[0]  # Compose: a screen change only
    assert (
        og.parse_synthesis(RuleDescriber(0).describe([nav])[0])["High-Level-Instruction"]
        == "Open the Compose screen in Mail."
    )
    price = _triple_from("shop", [GUIAction("click", index=3), GUIAction("click", index=1)])[
        0
    ]  # Kitchen -> Blue mug
    question = json.loads(RuleDescriber(1.0).describe([price])[0])
    assert (
        question["High-Level-Instruction"] == "How much does the Blue mug cost?"
        and question["Answer"] == "$8"
    )
    diff = [("/notes/notes", [{"id": 1, "title": "A", "body": "", "pinned": False}], [])]
    assert describe_state_change(diff) == "Delete the note 'A'."


def test_parse_synthesis_rejects_garbage():
    assert (
        og.parse_synthesis(
            '{"Sub-Instruction": "Tap it", "Analysis": "", "High-Level-Instruction": "Do X"}'
        )["High-Level-Instruction"]
        == "Do X"
    )
    for bad in [
        "",
        "no json",
        '{"Sub-Instruction": "x"}',
        '{"Sub-Instruction": "x", "High-Level-Instruction": ""}',
        "{{{",
        "[1, 2]",
    ]:
        assert og.parse_synthesis(bad) is None


# stage 3: collection rules


def test_abort_rule_and_step_cap():
    assert (
        og.should_abort(["a", "a", "a"])
        and not og.should_abort(["a", "a", "b"])
        and not og.should_abort(["a", "a"])
    )
    assert og.should_abort(["b", "a", "a", "a"]) and not og.should_abort(["a", "b", "a", "a"])

    def back(items):
        return [("", GUIAction("navigate_back")) for _ in items]

    record = run_episodes(
        [Task("t", "notes", "x")],
        back,
        max_steps=15,
        stop_fn=lambda s: og.should_abort([x["action"] for x in s], 3),
    )[0]
    assert record["aborted"] and len(record["steps"]) == 3

    def wait_then(items):
        return [
            ("", GUIAction("wait") if len(s) % 2 else GUIAction("navigate_home"))
            for _, _, s in items
        ]

    record = run_episodes(
        [Task("t", "notes", "x")],
        wait_then,
        max_steps=15,
        stop_fn=lambda s: og.should_abort([x["action"] for x in s]),
    )[0]
    assert not record["aborted"] and len(record["steps"]) == 15  # the paper's 15-step cap


# stage 4: reward model


def test_check5_trm_parsing_and_weighted_sampling():
    assert og.parse_trm_output("Reason: ok\nScore: 4") == ("ok", 4)
    assert og.parse_trm_output("Score: 7")[1] is None and og.parse_trm_output("Score: 0")[1] is None
    assert (
        og.parse_trm_output("garbage")[1] is None
        and og.parse_trm_output("Reason: a Score: 2 ... Score: 5")[1] == 5
    )
    assert og.trm_sampling_probs([5, 4, 1]) == pytest.approx([0.5, 0.4, 0.1])
    draws = Counter(
        random.Random(0).choices(range(3), weights=og.trm_sampling_probs([5, 4, 1]), k=10_000)
    )
    assert all(abs(draws[i] / 10_000 - p) <= 0.03 for i, p in enumerate([0.5, 0.4, 0.1]))
    with pytest.raises(ValueError):
        og.trm_sampling_probs([0, 0])


def test_rubric_and_state_judge():
    # rubric_score(reached, clean, efficient, partial, right_app, looped)
    assert og.rubric_score(True, True, True, True, True, False) == 5
    assert og.rubric_score(True, True, False, True, True, False) == 4  # a detour
    assert og.rubric_score(True, False, True, True, True, False) == 3  # done, with a side effect
    assert og.rubric_score(False, True, False, True, True, False) == 3  # partial
    assert og.rubric_score(False, True, False, False, True, True) == 3  # a loop
    assert og.rubric_score(False, True, False, False, True, False) == 2
    assert og.rubric_score(False, True, False, False, False, False) == 1
    triple = _triple_from("settings", [GUIAction("click", index=3), GUIAction("click", index=1)])[0]
    triple["path"] = [["click", "open_bluetooth"]]
    task = dict(triple_id="t0", app="settings", goal="Turn on Bluetooth.", answer=None)
    task["plan"] = direct_plan(task, triple)
    assert task["plan"] == [
        ["open_app", "Settings"],
        ["click", "open_bluetooth"],
        ["click", "bluetooth_switch"],
    ]

    def judge(actions):
        it = iter(actions)
        record = run_episodes(
            [Task("t0", "settings", task["goal"])],
            lambda items: [("", next(it)) for _ in items],
            stop_fn=lambda s: og.should_abort([x["action"] for x in s]),
        )[0]
        return og.StateJudge().score(task, triple, record)[0]

    go, stop = (
        GUIAction("open_app", app_name="Settings"),
        GUIAction("status", goal_status="complete"),
    )
    bt, switch, back = (
        GUIAction("click", index=3),
        GUIAction("click", index=1),
        GUIAction("navigate_back"),
    )
    airplane = GUIAction("click", index=1)  # on the main screen: the airplane switch
    assert judge([go, bt, switch, stop]) == 5
    assert judge([go, bt, back, bt, switch, stop]) == 4  # a detour, no side effect
    assert judge([go, airplane, bt, switch, stop]) == 3  # done, but airplane mode is on now
    assert judge([go, bt, stop]) == 3  # partial: reached the switch's screen, never flipped it
    assert judge([GUIAction("navigate_home")] * 3) == 3  # a loop: aborted
    assert judge([go, stop]) == 2 and judge([GUIAction("open_app", app_name="Mail"), stop]) == 1
    assert not state_diff(
        apply_diff({"a": {"x": 1, "l": [1]}}, [("/a/l", [], [2])]), {"a": {"x": 1, "l": [1, 2]}}
    )


def test_direct_plan_drops_the_walks_detours_and_side_effects():
    """The executor stand-in carries out the task: a walk that starred and deleted other emails
    before opening carol's yields a plan that only opens carol's email (then answers)."""
    triple = _triple_from("mail", [GUIAction("click", index=5)])[0]  # open the email from carol
    triple["path"] = [
        ["click", "email:1"],
        ["click", "star"],
        ["back"],
        ["long_press", "email:2"],
        ["click", "menu_delete"],
    ]
    triple["final_step"] = ["click", "email:3"]
    task = dict(
        triple_id="t0",
        app="mail",
        goal="What is the subject of the email from carol?",
        answer="Photos",
    )
    assert direct_plan(task, triple) == [["open_app", "Mail"], ["click", "email:3"]]


def test_template_split_holds_out_every_second_template_of_each_app():
    assert held_out_templates() == {
        "settings_network",
        "settings_volume",
        "settings_rename",
        "settings_infeasible",
        "notes_delete",
        "notes_rename",
        "shop_order",
        "shop_infeasible",
        "mail_star",
        "mail_reply",
    }
    test, train = template_split("test"), template_split("train")
    assert (len(test), len(train)) == (24, 36) and all(goal_template(t.goal) for t in test + train)
    assert {goal_template(t.goal) for t in test}.isdisjoint(goal_template(t.goal) for t in train)
    assert goal_template("Turn on 5G in the network settings.") == "settings_infeasible"
    assert goal_template("Turn off Wi-Fi.") == "settings_switch"
    assert goal_template("Open the Font size screen in Settings.") is None


def test_no_held_out_template_instance_is_synthesized():
    held_out = template_split("test")
    no_screen = dict(diff=[], action={}, url_after="", title_after="", after=[])
    # a held-out template with a parameter no held-out task has: still an instance
    assert leaks_held_out(dict(goal="Star the email from alice.", answer=None), no_screen, held_out)
    reply = [("/mail/sent", [], [dict(to="dave", subject="Re: Hi", body="ok")])]  # a reply
    assert describe_state_change(reply) == "Reply to dave's email saying 'ok'."
    assert leaks_held_out(
        dict(goal="Answer dave", answer=None), dict(no_screen, diff=reply), held_out
    )
    network = dict(no_screen, diff=[("/settings/network", "CafeFree", "Guest")])
    assert leaks_held_out(dict(goal="Join Guest", answer=None), network, held_out)  # its change
    question = dict(goal="Where does my trip go?", answer="lisbon")  # a held-out answer
    assert leaks_held_out(question, no_screen, [TASKS["notes_q_7"]])
    price = _triple_from("shop", [GUIAction("click", index=3), GUIAction("click", index=1)])[0]
    asked = dict(goal="What's the price here?", answer="$8")  # the question of a held-out template
    assert leaks_held_out(asked, price, [TASKS["shop_q_price_2"]])
    assert not leaks_held_out(asked, price, held_out)  # prices are a training template
    bt = _triple_from("settings", [GUIAction("click", index=3), GUIAction("click", index=1)])[0]
    assert not leaks_held_out(dict(goal="Turn on Bluetooth.", answer=None), bt, held_out)


# evaluation rules


def test_check4_androidcontrol_step_matching():
    assert androidcontrol_click_ok((700, 1250), (500, 1000)) and not androidcontrol_click_ok(
        (800, 1300), (500, 1000)
    )
    assert token_f1("buy milk now", "buy milk") == pytest.approx(0.8) and token_f1("", "") == 1.0
    assert step_match(
        GUIAction("input_text", index=2, text="buy milk now"),
        GUIAction("input_text", index=2, text="buy milk"),
    ) == (True, True)
    assert step_match(GUIAction("click", index=3), GUIAction("click", index=2)) == (True, False)
    assert step_match(None, GUIAction("click", index=2)) == (False, False)
    assert step_match(GUIAction("answer", text="$8"), GUIAction("answer", text="8")) == (True, True)


def test_agent_format_round_trip():
    args, env = og.Args(action_space="coords"), ToyGUIEnv()
    obs, _ = env.reset(Task("t", "settings", "Turn on airplane mode.", start_app="settings"))
    target = agents.agent_target(GUIAction("click", index=1), obs, args, "Click 'Airplane mode'.")
    assert target.startswith(
        'Low-level thought: Click \'Airplane mode\'.\naction: {"action_type": "click", "x": '
    )
    assert agents.parse_agent_output(target, obs) == (
        "Click 'Airplane mode'.",
        GUIAction("click", index=1),
    )
    assert agents.parse_agent_output("<garbage>", obs) == ("", None)
    prompt = agents.agent_prompt(
        "Turn on airplane mode.",
        obs,
        [dict(thought="Open it.", action='{"action_type": "click", "index": 1}', xy=[5, 6])],
        args,
    )
    assert (
        '"Airplane mode": "(' in prompt
        and 'Step 1: Open it. action: {"action_type": "click", "x": 5, "y": 6}' in prompt
    )


# model-backed paths with the tiny VLM (garbage is fine)


@pytest.fixture(scope="module")
def tiny_sampler():
    return agents.load_helper("", og.Args())


def test_model_backed_annotator_filler_judge_and_executor(walks, tiny_sampler):
    args = og.Args(judge_retries=2, max_new_tokens=12)
    walk, triples = walks[0]
    texts = agents.ModelDescriber(tiny_sampler, args, {walk["walk_id"]: walk["actions"]}).describe(
        triples[:3]
    )
    assert len(texts) == 3 and all(isinstance(t, str) for t in texts)
    assert (
        sum(og.parse_synthesis(t) is None for t in texts) == 3
    )  # garbage from an untrained model: counted invalid
    text = agents.model_text_filler(tiny_sampler, args)("Title", "Notes")
    assert isinstance(text, str) and text and "\n" not in text
    task = dict(triple_id="x", app="settings", goal="Turn on Bluetooth.")
    policy = agents.ModelPolicy(tiny_sampler, args)
    traj = run_episodes(
        [Task("x", "settings", task["goal"])],
        policy,
        max_steps=3,
        stop_fn=lambda s: og.should_abort([x["action"] for x in s]),
    )[0]
    assert (
        1 <= len(traj["steps"]) <= 3
        and traj["invalid"] == len(traj["steps"])
        and not traj["success"]
    )
    score, reason, attempts = agents.ModelJudge(tiny_sampler, args, og.parse_trm_output).score(
        task, None, traj
    )
    assert (
        1 <= score <= 5
        and attempts <= 2
        and (reason != "invalid judge output" or (score, attempts) == (1, 2))
    )


# end to end


def test_end_to_end_with_resume(run_cmd, tmp_path):
    out = tmp_path / "run"
    cmd = [
        sys.executable,
        "os_genesis.py",
        "--output_dir",
        str(out),
        "--walks_per_app",
        "1",
        "--walk_steps",
        "5",
        "--save_every",
        "1",
        "--eval_limit",
        "1",
        "--max_steps",
        "2",
        "--max_new_tokens",
        "8",
    ]
    proc = run_cmd(cmd + ["--train_steps", "2"], timeout=300)
    assert "| stage" in proc.stdout and "after OS-Genesis SFT" in proc.stdout
    lines = {
        name: (out / f"{name}.jsonl").read_text().splitlines()
        for name in ("walks", "tasks", "trajectories", "scores")
    }
    triples = [t for line in lines["walks"] for t in json.loads(line)["triples"]]
    assert len(lines["walks"]) == 4 and triples
    assert len(lines["tasks"]) == len(triples)
    assert len(lines["trajectories"]) == len(lines["scores"])
    summary = json.loads((out / "summary.json").read_text())
    assert summary["counts"]["triples"] == len(triples) and (out / "curves.png").exists()
    assert [c["metric"] for c in summary["claims"]] == [
        "low_step_acc",
        "high_step_acc",
        "low_step_acc",
        "success_rate_easy",
    ]
    after = json.loads((out / "eval_after.json").read_text())
    assert summary["eval"]["after OS-Genesis SFT"] == {"agent": "after OS-Genesis SFT", **after}
    assert (out / "ckpt" / "meta.json").exists()
    assert (out / "task_driven" / "eval_after.json").exists() and not (
        out / "task_driven" / "eval_before.json"
    ).exists()
    resumed = run_cmd(cmd + ["--train_steps", "3", "--resume", "True"], timeout=300)
    assert "resumed from step 2" in resumed.stdout
    assert {
        n: (out / f"{n}.jsonl").read_text().splitlines() for n in lines
    } == lines  # no record appended twice
    loss_steps = [
        r["step"]
        for r in map(json.loads, (out / "metrics.jsonl").read_text().splitlines())
        if "loss" in r
    ]
    assert loss_steps == [1, 2, 3]  # one more SFT step, none repeated


def test_end_to_end_model_backed_stages_never_crash(run_cmd, tmp_path):
    out = tmp_path / "model"
    proc = run_cmd(
        [
            sys.executable,
            "os_genesis.py",
            "--output_dir",
            str(out),
            "--walks_per_app",
            "1",
            "--walk_steps",
            "3",
            "--apps",
            "settings",
            "--annotator",
            "model",
            "--text_filler",
            "model",
            "--judge",
            "model",
            "--train_steps",
            "1",
            "--eval_limit",
            "1",
            "--max_steps",
            "1",
            "--max_new_tokens",
            "8",
        ],
        timeout=300,
    )
    counts = json.loads((out / "counts.json").read_text())
    assert (
        counts["tasks_valid"] + counts["tasks_invalid"] == counts["triples"]
        and "SFT data" in proc.stdout
    )


def test_bad_flags_are_named(tmp_path):
    for bad in ("doom", "", "notes,doom"):
        with pytest.raises(ValueError, match="--apps"):
            og.generate_data(og.Args(apps=bad), tmp_path, init_distributed())


def test_overfits_two_training_tasks_to_success(run_cmd, tmp_path):
    """The harness can express success: SFT on the expert trajectories of 2 tasks, evaluated on
    them, reaches SR 1."""
    out = tmp_path / "overfit"
    run_cmd(
        [
            sys.executable,
            "os_genesis.py",
            "--output_dir",
            str(out),
            "--data",
            "task_driven",
            "--compare",
            "False",
            "--eval_base",
            "False",
            "--tasks",
            "settings_bluetooth_on,mail_star_dave",
            "--train_steps",
            "150",
            "--action_space",  # the paper's format; index actions reach 0.5 here in 150 steps
            "coords",
        ],
        timeout=600,
    )
    assert json.loads((out / "eval_after.json").read_text())["success_rate"] == 1.0


@pytest.fixture(scope="module")
def learned(tmp_path_factory):
    """The no-argument run (fixed seed), once for the learning tests below, with the thread
    settings the documented figures were measured with."""
    from conftest import _run

    out = tmp_path_factory.mktemp("learn")
    env = {"OMP_NUM_THREADS": "1", "OMP_WAIT_POLICY": "PASSIVE"}
    proc = _run([sys.executable, "os_genesis.py", "--output_dir", str(out)], 1800, env)
    return {
        c["name"]: c for c in json.loads((out / "summary.json").read_text())["claims"]
    }, proc.stdout[-3000:]


def test_learning_os_genesis_sft_improves_on_the_base(learned):
    claims, stdout = learned
    assert claims["OS-Genesis SFT > base: step acc (low)"]["holds"], stdout


def test_learning_os_genesis_data_beats_task_driven_data(learned):
    """The paper's claim (Table 1/2): OS-Genesis data beats task-driven data (expert trajectories of
    the training templates' tasks, as many as OS-Genesis's) on held-out templates' step accuracy."""
    claims, stdout = learned
    assert claims["OS-Genesis > task-driven: step acc (high)"]["holds"], stdout
    assert claims["OS-Genesis > task-driven: step acc (low)"]["holds"], stdout


@pytest.mark.xfail(
    strict=True,
    reason="on the clean template split neither agent solves a held-out task: the 2-layer agent "
    "does not read the goal's names or the screen (it clicks labels of other apps' screens), so "
    "it cannot compose a held-out template's steps (docs/os_genesis.md, Results)",
)
def test_learning_success_rises_on_the_easy_tier(learned):
    claims, stdout = learned
    assert claims["OS-Genesis SFT: SR above the base (easy tier)"]["holds"], stdout


def test_the_toy_tokenizer_learns_the_phones_words_from_screens_not_tasks():
    """`--base_tokenizer screens`: the corpus is the phone's screens and the agent's output format
    on random walks; no task's goal is in it, and the phone's labels become single tokens."""
    from common.models import make_tokenizer

    texts = agents.phone_corpus(og.Args())
    corpus = "\n".join(texts)
    assert not [t.goal for t in TASKS.values() if t.goal in corpus]
    tok = make_tokenizer(texts=texts)
    for word in ("Settings", "Bluetooth", "Meeting", "Compose", "Brightness"):
        assert len(tok(f" '{word}'", add_special_tokens=False).input_ids) <= 3, word
    shared = make_tokenizer()
    prompt = og.agent_prompt("Star the email from dave.", og.gui.ToyGUIEnv().obs, [], og.Args())
    assert len(tok(prompt).input_ids) < 0.7 * len(shared(prompt).input_ids)  # 92 vs 143


def test_sft_micro_steps_equal_unsplit_step():
    from _micro import assert_micro_batching_matches

    from common.models import load_tokenizer, make_tiny_lm

    path = make_tiny_lm()
    tok = load_tokenizer(path)
    batch = [
        {
            "prompt_ids": tok(f"goal {i}:", add_special_tokens=False).input_ids,
            "target_ids": tok("click " * (i + 1), add_special_tokens=False).input_ids,
            "extra": {},
        }
        for i in range(5)
    ]

    def step(model, optimizer, micro):
        agents.sft_micro_steps(model, tok, batch, micro, "cpu")
        optimizer.step()

    assert_micro_batching_matches(path, step, micro_batch_size=2)


def test_torchrun_two_ranks_each_run_their_share_of_every_stage(run_cmd, torchrun_cmd, tmp_path):
    """Every data stage runs on both ranks: each writes its own records (distinct ids), and the
    gathered stage is the two shares together (world x local), which the SFT then trains on."""
    out = tmp_path / "ddp"
    flags = ["--walks_per_app", "2", "--walk_steps", "4", "--base_steps", "2", "--train_steps", "1"]
    flags += ["--compare", "False", "--eval_base", "False", "--eval_limit", "2"]
    flags += ["--max_steps", "1", "--max_new_tokens", "4", "--output_dir", str(out)]
    run_cmd([*torchrun_cmd, "os_genesis.py", *flags], timeout=900)
    counts = json.loads((out / "counts.json").read_text())
    for stage, count in (
        ("walks", "walks"),
        ("tasks", "triples"),
        ("trajectories", "trajectories"),
    ):
        ids = [
            [json.loads(line)["id"] for line in (out / name).read_text().splitlines()]
            for name in (f"{stage}.jsonl", f"{stage}.rank1.jsonl")
        ]
        assert ids[0] and ids[1] and not set(ids[0]) & set(ids[1]), stage
        assert len(ids[0]) + len(ids[1]) == counts[count], stage
    assert counts["walks"] == 8 and (out / "eval_after.json").exists()


def test_a_navigation_step_serves_a_task_on_the_screen_it_opens():
    """The rule describer, like the paper's prompt ("a task that this action helps to complete"),
    names a task done on the screen a navigation step opens; the executor's plan takes that one
    step further and the judge reads its change as the target."""
    triple = _triple_from("settings", [GUIAction("click", index=4)])[0]  # open Display
    assert triple["title_after"] == "Display" and not describe_state_change(triple["diff"])
    out = json.loads(RuleDescriber(0.0).describe([triple])[0])
    step, change = out["Steps"][0], out["Change"]
    assert describe_state_change(change) == out["High-Level-Instruction"] != "Open the Display"
    task = dict(triple_id="t0", app="settings", goal=out["High-Level-Instruction"], answer=None)
    task.update(extension=out["Steps"], change=change)
    assert task_target(task, triple) == dict(kind="change", diff=change)
    task["plan"] = direct_plan(task, triple)
    assert task["plan"] == [["open_app", "Settings"], ["click", "open_display"], step]
    follower = PathFollower(task["plan"], None, 0.0, random.Random(0))
    record = run_episodes([Task("t0", "settings", task["goal"])], partial(_follow, follower))[0]
    assert og.StateJudge().score(task, triple, record)[0] == 5
    assert RuleDescriber(0.0, serve=False).describe([triple])[0].count("Open the Display") == 1
