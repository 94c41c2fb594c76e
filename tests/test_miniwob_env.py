"""MiniWoB++ behind the GUI-environment protocol (common/miniwob_env.py). Needs the `miniwob`
package and Chromium + chromedriver (.ci/run installs them); skipped cleanly where they are
absent."""

import random

import pytest

from common.gui_env import GUIAction, GUIEnvironment
from common.miniwob_env import (
    MiniWoBGUIEnv,
    chromium_available,
    dom_to_ui_elements,
    make_tasks,
    random_policy,
    run_policy,
    scripted_policy,
)

needs_chromium = pytest.mark.skipif(
    not chromium_available(), reason="needs `pip install miniwob` and Chromium + chromedriver"
)


@pytest.fixture(scope="module")
def env():
    e = MiniWoBGUIEnv(max_steps=6)
    yield e
    e.close()


def test_dom_elements_map_to_ui_elements():
    import numpy as np

    def dom(ref, tag, text, left, top, w, h, leaf=1, id_=""):
        return dict(
            ref=ref,
            tag=tag,
            text=text,
            value="",
            id=id_,
            classes="",
            left=np.array([left]),
            top=np.array([top]),
            width=np.array([w]),
            height=np.array([h]),
            flags=np.array([0, 0, 0, leaf]),
        )

    elements = dom_to_ui_elements(
        [
            dom(1, "body", "", 0, 0, 160, 210, 0),
            dom(2, "div", "", 0, 0, 160, 210, 0, "wrap"),
            dom(3, "button", "okay", 10, 60, 40, 20),
            dom(4, "input_text", "", 10, 90, 80, 20),
            dom(5, "span", "gone", 0, 0, 0, 0),
        ]
    )
    assert [(e["index"], e["role"], e["text"], e["is_editable"]) for e in elements] == [
        (0, "button", "okay", False),
        (1, "input_text", "input_text", True),
    ]
    assert (
        elements[0]["bbox_pixels"] == dict(x_min=10.0, y_min=60.0, x_max=50.0, y_max=80.0)
        and elements[0]["ref"] == 3
    )


@needs_chromium
def test_scripted_policy_solves_click_button_and_random_agent_sr_is_reported(env, capsys):
    assert isinstance(env, GUIEnvironment)
    obs, info = env.reset(make_tasks(["click-button"], 1)[0])
    assert obs["goal"].startswith("Click on the") and obs["url"] == "miniwob://click-button"
    assert (
        obs["screenshot"].size == (160, 210)
        and "button" in obs["axtree_txt"]
        and not info["success"]
    )
    tasks = make_tasks(["click-button"], 5)
    scripted = run_policy(env, scripted_policy, tasks)
    assert all(r["success"] for r in scripted), scripted  # the task's own reward says so
    rand = run_policy(env, random_policy(random.Random(0)), tasks)
    with capsys.disabled():
        print(
            f"\nMiniWoB click-button: scripted SR {sum(r['success'] for r in scripted) / 5:.2f}, "
            f"random agent SR {sum(r['success'] for r in rand) / 5:.2f}"
        )


@needs_chromium
def test_bad_actions_never_crash_and_typing_works(env):
    obs, _ = env.reset(make_tasks(["enter-text"], 1)[0])
    obs, reward, terminated, truncated, _ = env.step(GUIAction("click", index=99))
    assert "unknown element index" in obs["last_action_error"] and not terminated and reward == 0
    obs, *_ = env.step(GUIAction("navigate_home"))
    assert "not an action on a MiniWoB page" in obs["last_action_error"]
    obs, *_ = env.step("not an action at all")
    assert obs["last_action_error"]
    field = next(e for e in obs["ui_elements"] if e["is_editable"])
    obs, *_ = env.step(GUIAction("input_text", index=field["index"], text="hello"))
    assert (
        not obs["last_action_error"]
        and next(e for e in obs["ui_elements"] if e["is_editable"])["value"] == "hello"
    )


@needs_chromium
def test_guimid_eval_only_prints_an_sr_table(run_cmd, tmp_path):
    import json
    import sys

    proc = run_cmd(
        [
            sys.executable,
            "guimid.py",
            "--env",
            "miniwob",
            "--eval_only",
            "--output_dir",
            str(tmp_path),
            "--tasks",
            "click-test,click-button",
            "--episodes_per_task",
            "1",
            "--max_episode_steps",
            "2",
            "--max_new_tokens",
            "8",
        ],
        timeout=600,
    )
    assert "| click-test" in proc.stdout and "random agent SR" in proc.stdout
    rows = json.loads((tmp_path / "summary.json").read_text())["eval_only"]
    assert [r["task"] for r in rows] == ["click-test", "click-button", "all"] and rows[-1][
        "episodes"
    ] == 2


@needs_chromium
def test_os_genesis_explores_miniwob_pages_end_to_end(run_cmd, tmp_path):
    """os_genesis.py --env miniwob: walks on MiniWoB pages -> synthesized tasks -> the stand-in
    executor on the same page instances -> TRM scores -> SFT -> SR on unseen page instances."""
    import json
    import sys

    out = tmp_path / "osg"
    flags = ["--env", "miniwob", "--tasks", "click-button,click-link", "--output_dir", str(out)]
    flags += ["--walks_per_app", "3", "--walk_steps", "3", "--train_steps", "2", "--base_steps"]
    flags += ["2", "--eval_limit", "1", "--max_steps", "2", "--max_new_tokens", "8"]
    proc = run_cmd([sys.executable, "os_genesis.py", *flags], timeout=900)
    counts = json.loads((out / "counts.json").read_text())
    walks = [json.loads(line) for line in (out / "walks.jsonl").read_text().splitlines()]
    assert counts["walks"] == len(walks) == 6 and counts["triples"] > 0
    assert counts["trajectories"] == counts["tasks_unique"] > 0
    assert sum(counts[f"score_{k}"] for k in range(1, 6)) == counts["trajectories"]
    summary = json.loads((out / "summary.json").read_text())
    after = summary["eval"]["after OS-Genesis SFT"]
    assert 0 <= after["success_rate"] <= 1 and "after task-driven SFT" in summary["eval"]
    assert "held-out" in proc.stdout
