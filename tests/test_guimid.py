"""Tests for guimid.py: mixture proportions (the 300K table's shares), the one-optimizer and
one-schedule stage boundary with resume, planner-format parsing, AgentBoard progress rate,
grounding, the agent loop through the GUIEnvironment protocol with the tiny VLM, an end-to-end run
(+ --resume across the stage boundary), and the learning tests on the no-argument run."""

import json
import math
import sys
from collections import Counter
from pathlib import Path

import pytest
import torch

import guimid
from common.chat_sft import encode, mean_nll
from common.gui_base import (
    JSON_PIECES,
    WORDS,
    base_samples,
    screen_labels,
    toy_base,
    train_base,
    word_vlm,
)
from common.gui_env import ScriptedExpert, ToyGUIEnv, list_tasks
from common.gui_eval import Setup
from common.gui_formats import (
    ActionError,
    ModelGrounder,
    StubGrounder,
    action_to_guimid,
    format_guimid,
    guimid_to_action,
    history_entry,
    parse_guimid,
    parse_point,
    planner_messages,
    planner_target,
    rows_to_samples,
)
from common.models import load_model, load_processor, make_tiny_vlm
from common.toy_domains import (
    AGENT_VERBS,
    OBJECTS,
    ROOMS,
    agent_samples,
    expert_gui_samples,
    expert_target_url,
    gui_data_tasks,
    validation_tasks,
)
from common.train import Dist

# mixtures -----------------------------------------------------------------------------------------


def test_guimid_mixture_counts_match_spec_check_6():
    counts = guimid.allocate_counts(guimid.RECIPES["guimid_300k"], 3000)
    assert counts == {"mathinstruct": 1500, "mm_math": 800, "olympiad_math": 500, "codeio": 200}
    plan = guimid.draw_plan(counts, {d: 10_000 for d in counts}, seed=0)
    assert Counter(d for d, _ in plan) == Counter(
        counts
    )  # the drawn sequence holds exactly those counts
    shares = {d: n / 3000 for d, n in counts.items()}
    assert shares["mm_math"] == pytest.approx(0.267, abs=1e-3) and shares[
        "codeio"
    ] == pytest.approx(0.067, abs=1e-3)
    assert sum(guimid.allocate_counts(guimid.RECIPES["guimid_300k"], 300_000).values()) == 300_000


def test_mixture_is_deterministic_for_a_seed_and_sums_exactly():
    counts = guimid.allocate_counts({"mathinstruct": 1, "codeio": 1, "mm_math": 1}, 10)
    assert counts == {
        "mathinstruct": 4,
        "codeio": 3,
        "mm_math": 3,
    }  # largest remainder, ties to the first domain
    pools = {"mathinstruct": 50, "codeio": 50, "mm_math": 50}
    a, b, c = (guimid.draw_plan(counts, pools, seed=s) for s in (1, 1, 2))
    assert a == b and a != c and Counter(d for d, _ in c) == Counter(counts)
    assert guimid.allocate_counts({"codeio": 2.0, "mathinstruct": 0.0}, 7) == {
        "codeio": 7,
        "mathinstruct": 0,
    }
    assert guimid.parse_mixture("mathinstruct:3, codeio:1") == {"mathinstruct": 3.0, "codeio": 1.0}
    assert guimid.parse_mixture("mathinstruct") == {
        "mathinstruct": 150_000
    }  # each single domain is a recipe


def test_small_pool_is_duplicated_evenly():
    plan = guimid.draw_plan({"gui_trajectories": 7}, {"gui_trajectories": 3}, seed=0)
    rows = Counter(r for _, r in plan)
    assert set(rows) == {0, 1, 2} and sorted(rows.values()) == [
        2,
        2,
        3,
    ]  # a full pass before any repeat


def test_bad_mixtures_give_clear_errors():
    with pytest.raises(ValueError, match="unknown domain.*'mathinstrukt'"):
        guimid.allocate_counts(guimid.parse_mixture("mathinstrukt:1"), 100)
    with pytest.raises(ValueError, match="total weight is zero"):
        guimid.allocate_counts({"mathinstruct": 0, "codeio": 0}, 100)
    with pytest.raises(ValueError, match=">= 0"):
        guimid.allocate_counts({"mathinstruct": -1, "codeio": 2}, 100)
    with pytest.raises(ValueError, match="weight 'x' of 'codeio' is not a number"):
        guimid.parse_mixture("codeio:x")
    with pytest.raises(ValueError, match="no rows"):
        guimid.draw_plan({"codeio": 3}, {"codeio": 0}, seed=0)
    with pytest.raises(ValueError, match="no toy generator"):
        guimid.toy_samples("screenshot2code", 4, 0, "screenshot")
    with pytest.raises(ValueError, match=r"--compare_mixtures: unknown \['agents'\]"):
        guimid.compared_mixtures(guimid.Args(compare_mixtures="non_gui_agents,agents"))


def test_domain_table_matches_table_1():
    assert len(guimid.DOMAINS) == 12  # 11 mid-training domains + the GUI trajectories
    assert guimid.DOMAINS["chart_doc_qa"].size == 2_184 + 53_794 + 431 + 93_591
    assert guimid.DOMAINS["non_gui_agents"].size == 51_780
    assert guimid.DOMAINS["gui_trajectories"].size == 3_789 + 21_542 + 3_264 + 4_941 + 22_526
    assert sum(guimid.RECIPES["guimid_300k"].values()) == 300_000


# planner format -----------------------------------------------------------------------------------


def test_planner_output_parsing():
    good = planner_target("Search bar", "type", "GUI Agent")
    out = parse_guimid(good)
    assert (out.thought, out.description, out.action, out.value) == (
        "I will type 'GUI Agent' into 'Search bar'.",
        "Search bar",
        "type",
        "GUI Agent",
    )
    block = '{"Element Description": "Save", "Action": "click", "Value": ""}'
    wrapped = f"Sure! First I look.\n```json\n{block}\n```\nDone, hope it helps."
    out = parse_guimid(wrapped)
    assert (out.thought, out.description, out.action) == ("Sure! First I look.", "Save", "click")
    with pytest.raises(ActionError, match="missing key.*Value"):
        parse_guimid('```json\n{"Element Description": "Save", "Action": "click"}\n```')
    with pytest.raises(ActionError):
        parse_guimid("I think I should click save")
    with pytest.raises(ActionError):
        parse_guimid('```json\n{"Element Description": "Save", "Action": click}\n```')
    infeasible = parse_guimid(
        '```json\n{"Element Description": "", "Action": "stop", "Value": "infeasible"}\n```'
    )
    assert (
        guimid_to_action(infeasible, {"ui_elements": []}, StubGrounder()).goal_status
        == "infeasible"
    )


def test_history_entries():
    assert history_entry("Sound", "click", "") == "click 'Sound'"
    assert history_entry("", "open_app", "Settings") == "open_app 'Settings'"
    assert history_entry("", "scroll", "down") == "scroll down"
    assert history_entry("", "go_back", "") == "go_back"
    obs = {"app": "shop", "url": "toy://shop/home"}
    text = planner_messages("Buy a mug.", obs, ["open_app 'Shop'"])[0]["content"][1]["text"]
    assert (
        "Task: Buy a mug." in text
        and "toy://shop/home" in text
        and "step 1: open_app 'Shop'" in text
    )


def test_expert_trajectories_through_the_planner_format_solve_every_task():
    """Training targets are executable: thought + JSON -> a11y-tree grounding -> env (60 tasks)."""
    for task in list_tasks():
        env = ToyGUIEnv()
        obs, _ = env.reset(task)
        expert, done = ScriptedExpert(task), False
        while not done:
            text = planner_target(*action_to_guimid(expert.act(obs), obs["ui_elements"]))
            obs, _, terminated, truncated, info = env.step(
                guimid_to_action(parse_guimid(text), obs, StubGrounder())
            )
            done = terminated or truncated
        assert info["success"], task.task_id


def test_toy_base_samples_are_low_level_instructions_in_the_planner_format():
    """The base's data: the Task line names the step's own action (never a goal or a task's
    text), and the target is that action in the planner format, executable on the screen."""
    samples = base_samples(0, 20, 6, "screenshot+axtree")
    task_texts = " ".join(t.goal + json.dumps(t.expert) for t in list_tasks()).lower()
    assert not any(w.lower() in task_texts for w in WORDS)  # typed text is no task's value
    goals = {t.goal for t in list_tasks()}
    verbs = Counter()
    for x in samples:
        prompt, target = x["messages"][0]["content"][-1]["text"], x["messages"][1]["content"]
        task = prompt.split("\n")[0].removeprefix("Task: ")
        assert task not in goals and prompt.endswith("Next action?")
        out = parse_guimid(target)
        verbs[out.action] += 1
        assert out.thought == f"I will {history_entry(out.description, out.action, out.value)}."
        if out.action in ("click", "long_press", "type"):  # the instruction names the element
            assert f"'{out.description}'" in task and StubGrounder().ground(
                out.description, {"ui_elements": _screen_of(prompt)}
            )
    assert {"click", "open_app", "type", "long_press", "stop"} <= set(verbs)
    assert verbs["click"] > verbs["type"] > 0


def test_toy_base_training_fits_its_data_and_is_cached(tmp_path, monkeypatch, processor):
    samples = base_samples(0, 2, 4, "screenshot+axtree")
    model = load_model(make_tiny_vlm(), vlm=True, dtype="float32")
    before = mean_nll(model, processor, samples, 4, 8192, "cpu")
    torch.manual_seed(0)
    train_base(model, processor, samples, 20, 8, 1e-2, seed=0)
    after = mean_nll(model.eval(), processor, samples, 4, 8192, "cpu")
    assert after < 0.5 * before, (before, after)
    monkeypatch.setenv("NANOREASON_CACHE", str(tmp_path))
    path = toy_base(0, "screenshot+axtree", 1)
    assert toy_base(0, "screenshot+axtree", 1) == path  # built once, keyed by its inputs
    assert (tmp_path / Path(path).name / "config.json").exists()


def test_word_tokenizer_holds_screen_labels_and_the_json_text_as_single_tokens():
    """--base_tokenizer words: a label the screens show, a verb and the fixed JSON text are one
    token each, so copying 'Cookbook $18' out of the Task line is a one-token copy; text round-
    trips; the labels are the screens' own (app names in, typed words out)."""
    labels = screen_labels()
    assert {"Settings", "Mail", "Sound", "Wi-Fi", "Airplane mode", "Cookbook $18"} <= set(labels)
    assert not any(w in t for w in WORDS for t in labels)
    tok = load_processor(word_vlm()).tokenizer
    target = planner_target("Cookbook $18", "long_press", "")
    j0, j1, j2, j3 = JSON_PIECES
    pieces = ["I", "Ġwill", "Ġ", "long_press", "Ġ", "'", "Cookbook $18", "'", ".", "Ċ", j0]
    pieces += ["Cookbook $18", j1, "long_press", j2, j3]
    assert tok.tokenize(target) == pieces  # 16 tokens; the toy tokenizer needs 91
    assert len(load_processor(make_tiny_vlm()).tokenizer.tokenize(target)) == 91
    assert tok.decode(tok.encode(target)) == target
    assert tok.tokenize("Settingsx Mail") == tok.tokenize("Settingsx") + [
        "Ġ",
        "Mail",
    ]  # whole words


def test_toy_non_gui_agent_samples_act_on_the_named_object_and_hold_no_gui_labels():
    """--mixture non_gui_agents (toy): the answer names the object the task names, one of the
    objects listed, in the planner's JSON; no object, room or verb is a word of a phone label."""
    words = {w.lower().strip("():$!?,") for t in screen_labels() for w in t.split()}
    assert not words & set(OBJECTS + ROOMS + AGENT_VERBS)
    samples = agent_samples(50, 0)
    assert agent_samples(50, 0) == samples  # seeded
    for x in samples:
        question, answer = x["messages"][0]["content"], x["messages"][1]["content"]
        task = question.split("\n")[0]  # "Task: heat the plate."
        verb, obj = task.removeprefix("Task: ").removesuffix(".").split(" the ")
        out = parse_guimid(answer)
        assert (out.description, out.action, out.value) == (obj, verb, "")
        assert out.thought == f"I will {verb} '{obj}'." and f"] {obj}\n" in question
    first = samples[0]["messages"]
    assert first[1]["content"] == format_guimid("I will heat 'plate'.", "plate", "heat")
    assert guimid.toy_samples("non_gui_agents", 3, 0, "screenshot") == agent_samples(3, 0)


def _screen_of(prompt: str) -> list[dict]:
    """The accessibility lines of a planner prompt as minimal ui_elements (for the grounder)."""
    lines = [ln for ln in prompt.split("\n") if ln.startswith("[")]
    names = [ln.split("'", 1)[1].rsplit("'", 1)[0] for ln in lines if "'" in ln]
    box = {"x_min": 0, "y_min": 0, "x_max": 10, "y_max": 10}
    return [{"text": n, "role": "button", "is_clickable": True, "bbox_pixels": box} for n in names]


def test_validation_tasks_are_the_training_tasks_without_gui_data():
    used = {t.task_id for t in gui_data_tasks(12, 3)}
    val = validation_tasks(12, 3)
    assert len(used) == 12 and len(val) == 28 and not used & {t.task_id for t in val}
    assert all(t.split == "train" for t in val)


def test_parse_point():
    assert parse_point("(120, 340)") == pytest.approx((0.12, 0.34))
    assert parse_point("The element is at ( 500.5 , 7 ).") == pytest.approx((0.5005, 0.007))
    assert (
        parse_point("click it") is None
        and parse_point("(1200, 5)") is None
        and parse_point(None) is None
    )


# progress rate ------------------------------------------------------------------------------------


def test_progress_rate_spec_check_10():
    assert guimid.progress_score(1.0, [True, True, False]) == pytest.approx(0.5 + 0.5 * 2 / 3)
    assert guimid.progress_score(1.0, [True, True, False]) == pytest.approx(0.8333, abs=1e-4)
    later = guimid.progress_score(0.0, [True, True, False])  # a later step scores lower ...
    assert later == pytest.approx(1 / 3)
    assert guimid.progress_rate([0.8333, later], success=False) == pytest.approx(
        0.8333
    )  # ... PR keeps the max
    assert guimid.progress_rate([0.2], success=True) == 1.0
    assert guimid.progress_score(None, [True, False]) == 0.5
    assert guimid.progress_score(1.0, [False]) == pytest.approx(0.75)  # n = 1: 3/4 * url
    assert guimid.progress_rate([], success=False) == 0.0


# data + encoding ----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def processor():
    return load_processor(make_tiny_vlm())


def test_encode_masks_every_assistant_turn(processor):
    sample = {
        "messages": [
            {"role": "user", "content": "2 + 2?"},
            {"role": "assistant", "content": "4"},
            {"role": "user", "content": "and 3 + 3?"},
            {"role": "assistant", "content": "6"},
        ]
    }
    e = encode(processor, sample, 8192)
    tok = processor.tokenizer
    assert tok.decode([i for i, m in zip(e["ids"], e["mask"]) if m]) == "4<|im_end|>6<|im_end|>"
    full = processor.apply_chat_template(sample["messages"], tokenize=False)
    assert tok.decode(e["ids"]) == full.rstrip("\n")
    image_sample = guimid.toy_samples("mm_math", 1, 0, "screenshot")[0]
    e = encode(processor, image_sample, 8192)
    assert e["ids"].count(tok.convert_tokens_to_ids("<image>")) == 16 and e["extra"][
        "pixel_values"
    ].shape == (1, 3, 64, 64)
    assert encode(processor, image_sample, 20)["ids"] == e["ids"][:20]


def test_mean_nll_is_a_token_mean_whatever_the_micro_batch(processor):
    """Padding a micro-batch must not change the held-out loss: rows of different lengths (with
    and without an image) scored one by one and all together give the same token mean."""
    model = load_model(make_tiny_vlm(), vlm=True).eval()
    samples = guimid.toy_samples("mathinstruct", 2, 0, "") + guimid.toy_samples("mm_math", 1, 0, "")
    rows = [encode(processor, x, 8192) for x in samples]
    assert len({len(r["ids"]) for r in rows}) > 1  # the batch of 3 really is padded
    one_by_one = [mean_nll(model, processor, [x], 1, 8192, "cpu") for x in samples]
    tokens = [sum(r["mask"][1:]) for r in rows]
    pooled = sum(n * t for n, t in zip(one_by_one, tokens)) / sum(tokens)
    assert mean_nll(model, processor, samples, 3, 8192, "cpu") == pytest.approx(pooled, rel=1e-5)


def test_rows_to_samples_formats_and_errors(tmp_path):
    rows = [
        {
            "image": "a.png",
            "conversations": [
                {"from": "human", "value": "<image>\nWhat?"},
                {"from": "gpt", "value": "A cat."},
            ],
        },
        {
            "messages": [
                {"role": "user", "content": "Hi"},
                {"role": "assistant", "content": "Hello"},
            ]
        },
        {"instruction": "1+1?", "output": "2"},
    ]
    s = rows_to_samples(rows, "x.json", str(tmp_path))
    assert (
        s[0]["image"] == str(tmp_path / "a.png")
        and s[0]["messages"][0]["content"][1]["text"] == "What?"
    )
    assert (
        s[1]["messages"][1] == {"role": "assistant", "content": "Hello"}
        and s[2]["messages"][0]["content"] == "1+1?"
    )
    with pytest.raises(ValueError, match="x.json row 0: no conversations"):
        rows_to_samples([{"foo": 1}], "x.json", "")
    with pytest.raises(ValueError, match="row 0: 2 images"):
        rows_to_samples(
            [{"images": ["a", "b"], "conversations": [{"from": "human", "value": "?"}]}],
            "x.json",
            "",
        )


# one optimizer, one schedule ----------------------------------------------------------------------


def _args(tmp_path, **kw):
    return guimid.Args(
        output_dir=str(tmp_path), lr=1e-2, batch_size=2, micro_batch_size=1, save_every=100, **kw
    )


def _run(tmp_path, pools, processor, path, **kw):
    torch.manual_seed(0)
    model = load_model(path, vlm=True)
    mid, gui = guimid.build_batches({"mathinstruct": 4, "gui_trajectories": 0}, pools, 1, 2, seed=0)
    opt, sched, logger = guimid.train_condition(
        model, processor, pools, mid, gui, _args(tmp_path, **kw), Dist(), tmp_path
    )
    return model, opt, sched, logger, len(mid), len(gui)


def _adam_steps(model, optimizer) -> dict[str, set]:
    """{sub-module: the set of AdamW step counts of its parameters that have optimizer state}."""
    out = {}
    for name, p in model.named_parameters():
        if p in optimizer.state:
            out.setdefault(name.split(".")[1], set()).add(int(optimizer.state[p]["step"]))
    return out


def test_optimizer_and_scheduler_continue_across_the_stage_boundary(tmp_path, processor):
    path = make_tiny_vlm()
    pools = {
        "mathinstruct": guimid.toy_samples("mathinstruct", 4, 0, ""),
        "gui_trajectories": expert_gui_samples(list_tasks("train")[:1])[:4],
    }
    model_a, opt_a, sched_a, log_a, n_mid, n_gui = _run(tmp_path / "a", pools, processor, path)
    assert (n_mid, n_gui) == (2, 2)
    total = n_mid + n_gui
    assert sched_a.last_epoch == total  # one schedule: it never restarted at the stage boundary
    steps = _adam_steps(model_a, opt_a)  # one optimizer: its state runs through the boundary
    assert steps["language_model"] == {total} and steps["multi_modal_projector"] == {
        n_gui
    }  # images only come in stage 2
    assert [r["stage"] for r in log_a.history] == [0, 0, 1, 1]
    warmup = math.ceil(0.05 * total)
    cosine = [
        1e-2
        * (
            s / warmup
            if s < warmup
            else 0.5 * (1 + math.cos(math.pi * (s - warmup) / (total - warmup)))
        )
        for s in range(total)
    ]
    assert [r["lr"] for r in log_a.history] == pytest.approx(
        cosine
    )  # step 2 (first GUI step) continues the cosine
    # kill at the boundary, resume in a fresh process state: same optimizer state, lr, weights
    _, _, _, log_b1, _, _ = _run(tmp_path / "b", pools, processor, path, stop_after_step=n_mid)
    meta = json.loads((tmp_path / "b" / "checkpoint" / "meta.json").read_text())
    assert (
        meta["step"] == n_mid
        and meta["extra"]["stage"] == "mid"
        and meta["extra"]["data_position"] == n_mid
    )
    model_b, opt_b, sched_b, log_b, _, _ = _run(tmp_path / "b", pools, processor, path, resume=True)
    assert sched_b.last_epoch == total and _adam_steps(model_b, opt_b) == steps
    assert [r["step"] for r in log_b.history] == [1, 2, 3, 4]
    assert [r["lr"] for r in log_b.history] == pytest.approx([r["lr"] for r in log_a.history])
    for (name, a), b in zip(model_a.named_parameters(), model_b.parameters()):
        torch.testing.assert_close(a, b, msg=name)
    with pytest.raises(ValueError, match="other data flags"):
        guimid.train_condition(
            load_model(path, vlm=True),
            processor,
            pools,
            [[("mathinstruct", 0)]],
            [],
            _args(tmp_path / "b", resume=True),
            Dist(),
            tmp_path / "b",
        )


def test_train_condition_micro_batches_equal_unsplit_step(tmp_path, processor, monkeypatch):
    from _micro import assert_micro_batching_matches

    path = make_tiny_vlm()
    pools = {
        "mathinstruct": guimid.toy_samples("mathinstruct", 2, 0, ""),
        "gui_trajectories": expert_gui_samples(list_tasks("train")[:1])[:2],
    }
    batch = [
        ("mathinstruct", 0),
        ("gui_trajectories", 0),
        ("mathinstruct", 1),
        ("gui_trajectories", 1),
    ]

    def step(
        model, optimizer, micro
    ):  # one step on 4 rows (text and screenshots), whole or in micro-batches of 1
        monkeypatch.setattr(
            guimid, "make_optimizer", lambda *a, **k: optimizer
        )  # the helper's plain SGD
        args = guimid.Args(
            output_dir=str(tmp_path),
            lr=1.0,
            batch_size=4,
            micro_batch_size=micro or 4,
            save_every=100,
            warmup_ratio=0.0,
            lr_scheduler="constant",
        )
        guimid.train_condition(
            model, processor, pools, [batch], [], args, Dist(), tmp_path / f"m{micro}"
        )

    assert_micro_batching_matches(path, step, micro_batch_size=1, vlm=True)


# agent loop ---------------------------------------------------------------------------------------


class AdapterEnv:
    """An external environment seen only through the GUIEnvironment protocol (reset/step), like a
    BrowserGym
    or AndroidWorld adapter would be; here it wraps the toy phone and hides everything else."""

    def __init__(self):
        self._env = ToyGUIEnv()

    def reset(self, task=None, seed=None):
        return self._env.reset(task, seed)

    def step(self, action):
        return self._env.step(action)


def test_agent_loop_with_the_tiny_vlm_and_a_model_grounder(processor):
    path = make_tiny_vlm()
    model = load_model(path, vlm=True)
    tasks = list_tasks("test")[:2]
    args = guimid.Args(max_episode_steps=2, max_new_tokens=6)
    run = Setup(args, Dist(), path, processor, AdapterEnv, tasks, {}, StubGrounder(), None)
    results = guimid.evaluate_model(model, run)
    assert [r["task_id"] for r in results] == [t.task_id for t in tasks]
    assert all(
        r["steps"] == 2 and r["invalid"] == 2 and not r["success"] and r["pr"] == 0.0
        for r in results
    )  # garbage counted
    scripted = iter(
        [
            format_guimid("I open it.", "", "open_app", "Settings"),
            format_guimid("Done.", "Airplane mode", "click", ""),
        ]
    )
    task = next(t for t in list_tasks() if t.task_id == "settings_airplane_on")
    urls = {task.task_id: expert_target_url(task)}
    args = guimid.Args(max_episode_steps=5)
    run = Setup(args, Dist(), path, processor, ToyGUIEnv, [task], urls, StubGrounder(), None)
    [r] = guimid.play(lambda msgs, imgs: [next(scripted) for _ in msgs], run)
    assert (
        r["success"]
        and r["pr"] == 1.0
        and r["steps"] == 2
        and r["history"] == ["open_app 'Settings'", "click 'Airplane mode'"]
    )
    grounder = ModelGrounder(path)
    obs, _ = ToyGUIEnv().reset(task)
    point = grounder.ground(
        "Settings", obs
    )  # the untrained tiny VLM: a point or None, never a crash
    assert point is None or all(0 <= v <= 1 for v in point)
    assert grounder.failures == (point is None)


# end to end ---------------------------------------------------------------------------------------

TINY = [
    "--mixture_size",
    "32",
    "--gui_epochs",
    "1",
    "--batch_size",
    "64",
    "--micro_batch_size",
    "32",
    "--gui_tasks",
    "0",
    "--max_episode_steps",
    "2",
    "--max_new_tokens",
    "8",
]


def test_end_to_end_resume_across_the_stage_boundary_and_fsdp2(run_cmd, torchrun_cmd, tmp_path):
    out = tmp_path / "run"
    proc = run_cmd([sys.executable, "guimid.py", "--output_dir", str(out), *TINY], timeout=300)
    assert (
        "| gui_only" in proc.stdout
        and "| guimid_300k" in proc.stdout
        and (out / "curves.png").exists()
    )
    row = json.loads((out / "guimid_300k" / "eval.json").read_text())
    assert row["mid_steps"] == 1 and row["gui_steps"] == 3 and 0 <= row["SR"] <= row["PR"] <= 1
    assert len((out / "guimid_300k" / "episodes.jsonl").read_text().splitlines()) == len(
        list_tasks("test")
    )
    # stop at the stage boundary; --resume finishes the GUI stage, same optimizer and schedule
    res = tmp_path / "resumed"
    run_cmd(
        [
            sys.executable,
            "guimid.py",
            "--output_dir",
            str(res),
            "--compare",
            "False",
            "--stop_after_step",
            "1",
            *TINY,
        ]
    )
    assert (
        json.loads((res / "guimid_300k" / "checkpoint" / "meta.json").read_text())["extra"]["stage"]
        == "mid"
    )
    run_cmd(
        [
            sys.executable,
            "guimid.py",
            "--output_dir",
            str(res),
            "--compare",
            "False",
            "--resume",
            *TINY,
        ]
    )
    meta = json.loads((res / "guimid_300k" / "checkpoint" / "meta.json").read_text())
    assert meta["step"] == 4 and meta["extra"]["stage"] == "gui"
    uninterrupted = [
        json.loads(x) for x in (out / "guimid_300k" / "metrics.jsonl").read_text().splitlines()
    ]
    resumed = [
        json.loads(x) for x in (res / "guimid_300k" / "metrics.jsonl").read_text().splitlines()
    ]
    assert [r["step"] for r in resumed] == [1, 2, 3, 4]
    assert [r["lr"] for r in resumed] == pytest.approx([r["lr"] for r in uninterrupted])
    assert [r["loss"] for r in resumed] == pytest.approx(
        [r["loss"] for r in uninterrupted], rel=1e-4
    )
    # 2 processes, FSDP2 on gloo: same schedule, same first-step loss (before any update), the
    # evaluation split over ranks
    fsdp = tmp_path / "fsdp"
    proc = run_cmd(
        [*torchrun_cmd, "guimid.py", "--output_dir", str(fsdp), "--compare", "False", *TINY],
        timeout=300,
    )
    assert "| guimid_300k" in proc.stdout
    two = [json.loads(x) for x in (fsdp / "guimid_300k" / "metrics.jsonl").read_text().splitlines()]
    assert [r["lr"] for r in two] == pytest.approx([r["lr"] for r in uninterrupted])
    assert two[0]["loss"] == pytest.approx(uninterrupted[0]["loss"], rel=1e-4)
    assert len((fsdp / "guimid_300k" / "episodes.jsonl").read_text().splitlines()) == len(
        list_tasks("test")
    )


def test_overfits_two_training_tasks_to_success(run_cmd, tmp_path):
    """The harness can express success: GUI SFT on 2 tasks' expert trajectories, evaluated on
    them, reaches SR 1."""
    out = tmp_path / "overfit"
    run_cmd(
        [
            sys.executable,
            "guimid.py",
            "--output_dir",
            str(out),
            "--mixture",
            "gui_only",
            "--compare",
            "False",
            "--tasks",
            "settings_bluetooth_on,mail_star_dave",
            "--batch_size",
            "4",
            "--gui_epochs",
            "150",
        ],
        timeout=900,
    )
    assert json.loads((out / "gui_only" / "eval.json").read_text())["SR"] == 1.0


@pytest.fixture(scope="module")
def learned(tmp_path_factory):
    """The no-argument run (fixed seed), once for the learning tests below: claims by name."""
    from conftest import _run

    out = tmp_path_factory.mktemp("learn")
    proc = _run([sys.executable, "guimid.py", "--output_dir", str(out)], timeout=1800)
    summary = json.loads((out / "summary.json").read_text())
    rows = {r["condition"]: r for r in summary["conditions"]}
    return {c["name"]: c for c in summary["claims"]}, rows, proc.stdout[-3000:]


def test_learning_every_claim_holds(learned):
    claims, _, stdout = learned
    assert len(claims) == 4 and all(c["holds"] for c in claims.values()), stdout


def test_learning_mixing_gui_data_in_removes_the_spike_at_the_switch(learned):
    claims, _, stdout = learned
    switch = claims["GUI mixed in: lower GUI loss at the switch"]
    assert switch["holds"] and switch["baseline"] > 2 * switch["result"], stdout


def test_learning_scripted_baseline_earns_progress_but_never_success(learned):
    _, rows, _ = learned
    scripted = rows["scripted: open the right app, then wait"]
    assert scripted["SR"] == 0 and 0.1 < scripted["PR"] < 0.5  # the right app is a third of it


def test_learning_mid_training_lowers_the_held_out_gui_loss(learned):
    """The paper's claim: with scarce GUI data, mid-training (with GUI data mixed in) makes the
    GUI stage generalise better: a lower loss on the held-out tasks' expert steps."""
    claims, _, stdout = learned
    for name in ("guimid_300k", "non_gui_agents"):
        loss = claims[f"{name} mid-training < GUI-only: held-out loss"]
        assert loss["holds"] and loss["result"] < 0.8 * loss["baseline"], stdout


def test_learning_toy_non_gui_agent_mid_training_raises_pr(learned):
    """The Non-GUI agents row of Table 3 (the toy domain answers in the planner's JSON;
    docs/guimid.md): mid-training on it makes the GUI stage emit valid actions where GUI-only
    emits none (seed 0, test split: 0.090 vs 0.000), still below the scripted open-the-app
    baseline."""
    claims, rows, stdout = learned
    pr = claims["non_gui_agents mid-training > GUI-only: PR"]
    assert pr["holds"] and pr["result"] >= 0.05 and pr["baseline"] == 0.0, stdout
    assert pr["result"] < rows["scripted: open the right app, then wait"]["PR"]


@pytest.mark.xfail(
    strict=True,
    reason="the toy's arithmetic, shapes and f(xs) domains do not carry the paper's math-to-GUI "
    "transfer: both planners emit no valid action on held-out tasks, PR 0 (docs/guimid.md)",
)
def test_learning_guimid_recipe_raises_pr(learned):
    _, rows, stdout = learned
    assert rows["guimid_300k"]["PR"] > rows["gui_only"]["PR"] + 0.02, stdout
