"""bstar.py: the paper's functions pinned to hand-computed values (balance score under both rules,
n*, the strict threshold, Pass@K-S / Reward@K-S, the configuration choice), the toy's stand-in PRM
(common/addition_steps.py; the model-backed PRM is tested in test_prm.py), how each mode starts an
iteration (asserted on optimizer / scheduler / weight state), resumable sampling, bad input, and
end-to-end runs (learning, mid-SFT resume, iterative RFT, 2-process torchrun)."""

import json
import sys
from pathlib import Path

import pytest
import torch

import bstar
from bstar import (
    Args,
    Runtime,
    balance_score,
    bstar_reward,
    choose_configuration,
    distinct_equation_ratio,
    keep_by_threshold,
    n_star_from,
    parse_grid,
    pass_at_k_s,
    prm_to_reward,
    reward_at_k_s,
    sample_and_score,
    selection_counts,
    start_iteration,
)
from common.addition_steps import grade_steps
from common.data import DataError, read_jsonl_tolerant, write_jsonl
from common.models import load_model, load_tokenizer, make_tiny_lm
from common.prm import RulePRM, split_steps
from common.sampling import Completion
from common.self_taught import build_warm_start, make_prm
from common.train import Dist, read_checkpoint

# ------------------------------------------------------------------------------------------------
# the paper's functions


def test_check7_balance_score_paper_and_code_rule():
    selected, unique_correct = [6, 2, 4, 0], [5, 2, 1, 0]
    per_query = [balance_score(n, u, 4) for n, u in zip(selected, unique_correct)]
    assert per_query == pytest.approx([5 / 6, 0.5, 0.0625, 0.0], abs=1e-4)
    assert balance_score(selected, unique_correct, 4) == pytest.approx(0.3490, abs=1e-4)
    assert balance_score(selected, unique_correct, 4, rule="code") == pytest.approx(
        0.4653, abs=1e-4
    )  # empty query dropped
    # 4 correct responses with one duplicate pair
    responses, correct, keep = ["A", "A", "B", "C"], [True] * 4, [True] * 4
    n, u = selection_counts(responses, correct, keep)
    assert (n, u) == (4, 3) and balance_score(n, u, 4) == pytest.approx(0.5625)
    n, u = selection_counts(responses, correct, keep, dedup=True)  # code: exact-string dedup first
    assert (n, u) == (3, 3)
    assert balance_score(n, u, 4, rule="code") == pytest.approx(0.75)
    assert balance_score(n, u, 8, rule="code") == pytest.approx(0.375)


def test_check8_n_star():
    assert n_star_from(67_500, 11_500) == 6
    assert n_star_from(13_500, 2_627) == 6
    assert n_star_from(960, 240) == 4  # the toy default: 30 steps x 32 / 240 queries


def test_check9_strict_threshold_filter():
    rewards = [bstar_reward(True, -0.3), bstar_reward(False, 0.2), bstar_reward(False, -0.1)]
    assert rewards == pytest.approx([0.7, 0.2, -0.1])
    assert keep_by_threshold(rewards, 0.0) == [True, True, False]
    assert keep_by_threshold(rewards, -0.1) == [True, True, False]  # strict: -0.1 is not above -0.1
    assert (
        bstar_reward(True, None) == 1.0 and bstar_reward(False, None) == 0.0
    )  # answer-only reward
    assert (
        prm_to_reward(0.35) == pytest.approx(-0.3)
        and prm_to_reward(1.0) == 1.0
        and prm_to_reward(0.0) == -1.0
    )


def test_check10_pass_and_reward_at_k_s():
    responses = ["A", "A", "B", "x", "y", "z"]
    correct = [True, True, True, False, False, False]
    assert pass_at_k_s(responses, correct, 2) == 1.0
    assert pass_at_k_s(responses, correct, 3) == 0.0  # "A" twice counts once
    rewards = [0.8, 0.7, 0.5, 0.9, 0.1, 0.0]  # ranking: x (wrong), A, B, ...
    assert reward_at_k_s(rewards, correct, 1) == 0.0
    assert reward_at_k_s(rewards, correct, 2) == 0.0
    assert reward_at_k_s([0.9, 0.8, 0.1, 0.0, 0.0, 0.0], correct, 3) == 1.0
    assert reward_at_k_s([0.5, 0.5], [True, False], 1) == 1.0  # tie: earlier sample ranks first
    assert reward_at_k_s([0.5], [True], 2) == 0.0  # fewer than S responses


def test_check11_configuration_choice_and_ties():
    assert choose_configuration({0.5: 0.47, 0.6: 0.52, 0.7: 0.55, 0.8: 0.54}) == 0.7
    assert (
        choose_configuration({0.5: 0.55, 0.6: 0.52, 0.7: 0.55}) == 0.5
    )  # tie: first in grid order
    grid = {(0.5, -0.1): 0.3, (0.5, 0.0): 0.6, (0.6, -0.1): 0.6, (0.6, 0.0): 0.1}
    assert choose_configuration(grid) == (0.5, 0.0)


def test_grids_and_diversity():
    assert parse_grid("0.5:1.2:0.1", "t") == [0.5, 0.6, 0.7, 0.8, 0.9, 1.0, 1.1, 1.2]
    assert len(parse_grid("0.5:1.2:0.05", "t")) == 15 and len(parse_grid("-1:1:0.1", "t")) == 21
    assert len(parse_grid("-1:1:0.01", "t")) == 201 and parse_grid("-1:1:0.1", "t")[10] == 0.0
    with pytest.raises(ValueError, match="--temperature_grid"):
        parse_grid("0.5-1.2", "temperature_grid")
    # 2 correct responses, 4 equations, 3 distinct
    assert distinct_equation_ratio(
        ["1 + 2 = 3\n3 + 4 = 7\nThe answer is 7.", "2 + 1 = 3\n3 + 4 = 7"]
    ) == pytest.approx(0.75)
    assert distinct_equation_ratio([]) is None and distinct_equation_ratio(["no equation"]) is None


# ------------------------------------------------------------------------------------------------
# process reward models


def test_toy_stand_in_prm_scores_each_step():
    checker = RulePRM(grade_steps)
    question = "Add 3 5 2"
    good = "3 + 5 = 8\n2 + 8 = 10\nThe answer is 10."
    bad_sum = "3 + 5 = 9\n9 + 2 = 11\nThe answer is 11."  # arithmetic slip, then consistent steps
    skipped = "3 + 5 = 8\nThe answer is 8."  # every step locally fine, answer wrong (steps judged)
    wrong_operand = "3 + 5 = 8\n8 + 7 = 15\nThe answer is 14."
    garbage = "\u00ff\x00 ))) +=+ 12 = 12 = 3"
    responses = [good, bad_sum, skipped, wrong_operand, garbage, ""]
    scores = checker.step_scores([question] * 6, [split_steps(r) for r in responses])
    assert scores == [[1.0, 1.0, 1.0], [0.0, 1.0, 1.0], [1.0, 1.0], [1.0, 0.0, 0.0], [0.0], []]


@pytest.fixture(scope="module")
def tiny_path():
    return make_tiny_lm()


# ------------------------------------------------------------------------------------------------
# how each mode starts an iteration's SFT (asserted on state)


def _train_one_step(model, optimizer, scheduler):
    loss = model(input_ids=torch.tensor([[1, 2, 3, 4]]), labels=torch.tensor([[1, 2, 3, 4]])).loss
    loss.backward()
    optimizer.step()
    scheduler.step()
    optimizer.zero_grad()


@pytest.mark.parametrize("mode", ["bstar", "online_rft", "iterative_rft", "rest_em", "star"])
def test_start_iteration_inherits_or_resets_state(mode, tiny_path):
    args = Args(mode=mode, sft_steps=5, iterations=3)
    model = load_model(tiny_path)
    initial = {k: v.clone() for k, v in model.state_dict().items()}
    optimizer, scheduler = bstar.make_optimizer_and_schedule(model, args, 15)
    _train_one_step(model, optimizer, scheduler)
    trained = {k: v.clone() for k, v in model.state_dict().items()}
    new_opt, new_sched = start_iteration(mode, model, optimizer, scheduler, args, tiny_path)
    if mode in (
        "bstar",
        "online_rft",
    ):  # the same optimizer (Adam moments, step count) and the same schedule position
        assert new_opt is optimizer and new_sched is scheduler and scheduler.last_epoch == 1
        assert all(int(s["step"]) == 1 for s in new_opt.state.values()) and len(new_opt.state) > 0
    else:
        assert new_opt is not optimizer and len(new_opt.state) == 0 and new_sched.last_epoch == 0
        assert new_sched.get_last_lr()[0] == pytest.approx(args.lr)
    weights = model.state_dict()
    reference = initial if mode in ("rest_em", "star") else trained
    assert all(torch.equal(weights[k], reference[k]) for k in weights)
    assert not all(
        torch.equal(trained[k], initial[k]) for k in weights
    )  # the step did change the weights


# ------------------------------------------------------------------------------------------------
# resumable sampling, garbage output, bad input


class CountingSampler:
    """Test double for the Sampler interface: fixed texts; records the prompts it was asked for."""

    def __init__(self, texts):
        self.texts, self.prompts = texts, []

    def generate(self, prompts, n=1, **kwargs):
        self.prompts += [p[0]["content"] for p in prompts]
        return [
            [Completion(self.texts[i % len(self.texts)], [], [], "stop") for i in range(n)]
            for _ in prompts
        ]


def test_sample_and_score_reuses_finished_records_and_survives_garbage(tmp_path):
    rows = [{"id": f"q{i}", "question": f"Add {i} 1", "answer": str(i + 1)} for i in range(1, 6)]
    texts = ["1 + 1 = 2\nThe answer is 2.", "\u0000garbage", "", "The answer is"]
    sampler = CountingSampler(texts)
    rt = Runtime(Args(), Dist(), None, sampler, RulePRM(grade_steps))
    path = tmp_path / "samples.jsonl"
    first = sample_and_score(rt, rows[:2], 4, 0.7, path)
    with open(path, "a") as f:
        f.write('{"id": "q3", "quest')  # a record cut off by a kill
    records = sample_and_score(rt, rows, 4, 0.7, path)
    assert sampler.prompts == [
        "Add 1 1",
        "Add 2 1",
        "Add 3 1",
        "Add 4 1",
        "Add 5 1",
    ]  # q1, q2 not sampled again
    assert records[:2] == first and [r["id"] for r in records] == [r["id"] for r in rows]
    assert [r["id"] for r in read_jsonl_tolerant(path)] == ["q1", "q2", "q3", "q4", "q5"]
    assert (
        records[0]["correct"] == [True, False, False, False]
        and records[1]["correct"] == [False] * 4
    )
    assert records[0]["prm"] == [1.0, -1.0, -1.0, -1.0] and records[0]["reward"] == [
        2.0,
        -1.0,
        -1.0,
        -1.0,
    ]
    with pytest.raises(DataError, match="samples.jsonl.*new --output_dir"):
        sample_and_score(rt, rows, 8, 0.7, path)  # a record with another k is not silently reused


def test_bad_input_names_flag_file_and_field(tmp_path):
    for bad, flag in [  # Args built in code: the parser's Literal check is bypassed
        (dict(mode="dpo"), "--mode"),
        (dict(reward="prm"), "--reward"),
        (dict(balance_rule="x"), "--balance_rule"),
        (dict(threshold_grid="-1:1"), "--threshold_grid"),
        (dict(sampler="sglang"), "--sampler"),
    ]:
        with pytest.raises(ValueError, match=flag):
            bstar.validate(Args(**bad))
    data = tmp_path / "train.jsonl"
    write_jsonl(data, [{"question": "1+1?", "answer": "2"}, {"question": "2+2?"}])
    with pytest.raises(DataError, match=r"train.jsonl:2: missing field 'answer'"):
        bstar.load_task(Args(data=str(data)))
    write_jsonl(data, [{"question": "1+1?", "answer": "#### 2"}] * 3)
    train, evals = bstar.load_task(Args(data=str(data), eval_queries=1))
    assert len(train) == 2 and evals[0]["answer"] == "2"  # GSM8K's '#### N' gold format
    with pytest.raises(ValueError, match="--prm rule"):
        make_prm(Args(data=str(data)), "cpu")
    with pytest.raises(ValueError, match="--balance_rule"):
        balance_score([1], [1], 4, rule="mean")
    with pytest.raises(ValueError, match="--eval_queries 500"):
        bstar.load_task(Args(eval_queries=500))


# ------------------------------------------------------------------------------------------------
# end to end

SMALL = dict(
    iterations=2,
    queries_per_iteration=32,
    search_queries=8,
    temperature_grid="0.6:1.0:0.2",
    sft_steps=4,
    save_every=2,
    eval_queries=32,
    samples_per_query=4,
)
SMALL_CLI = [x for k, v in SMALL.items() for x in (f"--{k}", str(v))]


def _ckpt_state(ckpt: Path):
    optim = read_checkpoint(ckpt)["optim"]  # the sharded (DCP) checkpoint, gathered
    steps = {int(s["step"]) for s in optim["state"].values()}
    return (
        torch.load(ckpt / "scheduler.pt", weights_only=False)["last_epoch"],
        steps,
        json.loads((ckpt / "meta.json").read_text()),
    )


def test_end_to_end_learning_and_inherited_optimizer(run_cmd, tmp_path):
    """The toy with a small budget: greedy accuracy rises; one LR schedule and optimizer ran
    through all iterations."""
    out = tmp_path / "run"
    proc = run_cmd(
        [
            sys.executable,
            "bstar.py",
            "--output_dir",
            str(out),
            "--iterations",
            "2",
            "--search_queries",
            "8",
            "--temperature_grid",
            "0.7:1.1:0.4",
        ],
        timeout=400,
    )  # default M = 240 queries, 30 SFT steps, 200 eval
    history = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [h["step"] for h in history] == [0, 1, 2]
    # +0.05 = 10 of the 200 eval questions; the rise is 0.075 on one CPU model, more on another
    assert history[-1]["greedy_acc"] >= history[0]["greedy_acc"] + 0.05, history
    claims = json.loads((out / "summary.json").read_text())["claims"]
    assert [c["holds"] for c in claims] == [True], claims
    assert claims[0]["baseline"] == history[0]["greedy_acc"]  # computed from the run
    assert claims[0]["result"] == history[-1]["greedy_acc"]
    assert all(h["temperature"] in (0.7, 1.1) and -1 <= h["threshold"] <= 1 for h in history[1:])
    assert "| iter |" in proc.stdout and (out / "curves.png").stat().st_size > 0
    assert len(read_jsonl_tolerant(out / "samples/iter_02/samples.jsonl")) == 240
    last_epoch, optim_steps, meta = _ckpt_state(out / "ckpt")
    assert (
        last_epoch == 60
        and optim_steps == {60}
        and meta["extra"] == {"iteration": 3, "sft_step": 0}
    )


def test_mid_sft_resume_reuses_samples_and_matches_step_counts(tmp_path, monkeypatch):
    out = tmp_path / "run"
    args = Args(output_dir=str(out), **SMALL)
    build_warm_start(args)  # cached P0 (common/self_taught.py's sft_step is not patched)
    real_step, calls = bstar.sft_step, {"n": 0}

    def crash_in_iteration_2(*a, **kw):
        calls["n"] += 1
        if calls["n"] == 7:  # iteration 2, after its checkpoint at SFT step 2
            raise KeyboardInterrupt("simulated kill")
        return real_step(*a, **kw)

    monkeypatch.setattr(bstar, "sft_step", crash_in_iteration_2)
    with pytest.raises(KeyboardInterrupt):
        bstar.main(args)
    assert json.loads((out / "ckpt/meta.json").read_text())["extra"] == {
        "iteration": 2,
        "sft_step": 2,
    }
    samples = (out / "samples/iter_02/samples.jsonl").read_text()
    monkeypatch.setattr(bstar, "sft_step", real_step)
    args.resume = True
    history = bstar.main(args)
    assert (
        out / "samples/iter_02/samples.jsonl"
    ).read_text() == samples  # sampling reused, not redone
    assert [h["step"] for h in history] == [0, 1, 2]
    last_epoch, optim_steps, _ = _ckpt_state(out / "ckpt")
    assert last_epoch == 8 and optim_steps == {8}  # as if never interrupted


def test_iterative_rft_resets_optimizer_each_iteration(tmp_path):
    out = tmp_path / "run"
    args = Args(
        output_dir=str(out),
        mode="iterative_rft",
        threshold=-0.5,
        **{**SMALL, "queries_per_iteration": 8, "eval_queries": 8},
    )
    history = bstar.main(args)
    assert all(
        h["temperature"] == 1.0 and h["threshold"] == -0.5 for h in history[1:]
    )  # fixed configuration
    last_epoch, optim_steps, meta = _ckpt_state(out / "ckpt")
    assert (
        meta["step"] == 8 and last_epoch == 4 and optim_steps == {4}
    )  # 2 x 4 SFT steps, optimizer saw only the last 4


def test_torchrun_two_processes(run_cmd, torchrun_cmd, tmp_path):
    out = tmp_path / "ddp"
    run_cmd(
        [
            *torchrun_cmd,
            "bstar.py",
            "--output_dir",
            str(out),
            *SMALL_CLI,
            "--iterations",
            "1",
            "--queries_per_iteration",
            "6",
        ],
        timeout=300,
    )
    history = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [h["step"] for h in history] == [0, 1] and history[1]["sft_steps_total"] == 4
    assert (
        len(read_jsonl_tolerant(out / "samples/iter_01/samples.jsonl")) == 6
    )  # odd split over 2 ranks, no duplicates
    last_epoch, optim_steps, _ = _ckpt_state(out / "ckpt")
    assert last_epoch == 4 and optim_steps == {4}


def test_sft_step_micro_batches_equal_unsplit_step():
    from _micro import assert_micro_batching_matches

    path = make_tiny_lm()
    tok = load_tokenizer(path)
    pairs = [
        (
            tok(f"q{i}", add_special_tokens=False).input_ids,
            tok("1 2 3 4 5"[: 2 * i + 1], add_special_tokens=False).input_ids,
        )
        for i in range(5)
    ]  # responses of different lengths: the token mean must span the whole batch

    def step(model, optimizer, micro):
        sched = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda _: 1.0)
        bstar.sft_step(model, optimizer, sched, tok, pairs, 1e9, "cpu", micro)

    assert_micro_batching_matches(path, step, micro_batch_size=2)


def test_iteration_queries_wrap_and_selection_is_strict():
    rows = [{"id": i} for i in range(5)]
    assert [r["id"] for r in bstar.iteration_queries(rows, 3, 1)] == [0, 1, 2]
    assert [r["id"] for r in bstar.iteration_queries(rows, 3, 2)] == [3, 4, 0]  # wraps around
    assert [r["id"] for r in bstar.iteration_queries(rows, 9, 1)] == [0, 1, 2, 3, 4]
    record = {"question": "q", "responses": ["a", "b", "c"], "reward": [0.5, 0.0, -0.2]}
    assert bstar.selected_pairs([record], 0.0) == [("q", "a")]
    assert Args().model == ""  # the toy model (docs/conventions.md)


def test_load_policy_keeps_the_policy_trainable_under_gradient_checkpointing(tiny_path):
    """The paper preset turns gradient checkpointing on; the policy must stay trainable."""
    rt, model, path = bstar.load_policy(Args(model=tiny_path, gradient_checkpointing=True), Dist())
    assert path == tiny_path and all(p.requires_grad for p in model.parameters())
    assert model.is_gradient_checkpointing and rt.prm is not None and rt.tok is not None
