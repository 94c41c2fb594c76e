"""Tests for genius_aco.py: the paper's equations against hand-computed values (checks 1-6), w's
missing gradient, the foresight search on a scripted sampler (with and without foresight), the
seeded query sample, bad pairs files, one end-to-end run, the train stage under ACO and DPO on
hand-made pairs, the no-argument run's claims and a 2-process train stage."""

import json
import math
import sys
import zlib

import pytest
import torch

import common.preference_pairs as pp
import genius_aco as g
from common.data import DataError
from common.running_sums import make_toy_rows
from common.sampling import Completion, Sampler

F_SPEC = torch.tensor([-0.20, -0.25, -0.40, -0.60, -0.22, -0.90, -0.35, -0.30], dtype=torch.float64)
Q_SPEC = torch.tensor(
    [-0.30] * 4 + [-0.50] * 4, dtype=torch.float64
)  # candidates 0-3 beam 0, 4-7 beam 1


def loss_for(delta_w, delta_l, adv_w, adv_l, **kw):
    """aco_loss with zero reference log-probs, so policy log-probs are the Deltas."""
    t = lambda x: torch.tensor([x], dtype=torch.float64)  # noqa: E731
    return float(g.aco_loss(t(delta_w), t(delta_l), t(0.0), t(0.0), t(adv_w), t(adv_l), **kw)[0])


def test_aco_normal_region_check1():
    assert loss_for(2.0, -1.0, 0.5, 0.2) == pytest.approx(
        0.554355, abs=1e-6
    )  # paper: w = 1, logit 3.0
    assert loss_for(2.0, -1.0, 0.5, 0.2, clamp="code") == pytest.approx(
        0.539616, abs=1e-6
    )  # w = e^0.3
    assert float(g.aco_weight(torch.tensor(0.5), torch.tensor(0.2), clamp="code")) == pytest.approx(
        1.34986, abs=1e-5
    )


def test_aco_calibration_region_check2():
    assert float(g.aco_weight(torch.tensor(0.2), torch.tensor(0.7))) == pytest.approx(
        0.60653, abs=1e-5
    )
    assert loss_for(2.0, -1.0, 0.2, 0.7) == pytest.approx(0.571289, abs=1e-6)
    assert loss_for(2.0, -1.0, 0.2, 0.7, clamp="code") == pytest.approx(0.554355, abs=1e-6)
    assert float(g.aco_weight(torch.tensor(0.2), torch.tensor(0.7), alpha=2.0)) == pytest.approx(
        0.77880, abs=1e-5
    )
    assert loss_for(2.0, -1.0, 0.2, 0.7, alpha=2.0) == pytest.approx(0.563828, abs=1e-6)


def test_aco_reduces_to_dpo_check3():
    pc, pr, rc, rr = (
        torch.tensor([2.0, -3.0, 0.5]),
        torch.tensor([-1.0, 1.0, 0.2]),
        torch.zeros(3),
        torch.zeros(3),
    )
    dpo = g.dpo_loss(pc, pr, rc, rr, beta=0.1)
    assert float(dpo[0]) == pytest.approx(0.554355, abs=1e-6)
    same = torch.tensor([0.3, -0.2, 1.0])
    assert torch.allclose(g.aco_loss(pc, pr, rc, rr, same, same), dpo)  # A_l = A_w
    for clamp in ("paper", "code"):  # alpha -> inf
        assert torch.allclose(
            g.aco_loss(
                pc,
                pr,
                rc,
                rr,
                torch.tensor([0.0, 5.0, -2.0]),
                torch.tensor([3.0, -1.0, 0.0]),
                alpha=1e9,
                clamp=clamp,
            ),
            dpo,
        )
    with pytest.raises(ValueError, match="--clamp"):
        g.aco_weight(same, same, clamp="max")


def test_w_receives_no_gradient():
    pc, pr = (
        torch.tensor([2.0, -1.0], requires_grad=True),
        torch.tensor([-1.0, 0.5], requires_grad=True),
    )
    adv_c, adv_r = (
        torch.tensor([0.2, 0.5], requires_grad=True),
        torch.tensor([0.7, 0.1], requires_grad=True),
    )
    for clamp in ("paper", "code"):
        loss = g.aco_loss(pc, pr, torch.zeros(2), torch.zeros(2), adv_c, adv_r, clamp=clamp).sum()
        leaves, stack, seen = set(), [loss.grad_fn], set()
        while stack:  # walk the autograd graph down to its leaves
            node = stack.pop()
            if node is None or node in seen:
                continue
            seen.add(node)
            if hasattr(node, "variable"):
                leaves.add(id(node.variable))
            stack += [nxt for nxt, _ in node.next_functions]
        assert id(pc) in leaves and id(pr) in leaves
        assert id(adv_c) not in leaves and id(adv_r) not in leaves
    loss.backward()
    assert adv_c.grad is None and adv_r.grad is None and pr.grad is not None
    # the rejected side's gradient is scaled by w: with w < 1 it is pushed down less than DPO would
    pr_dpo = pr.detach().clone().requires_grad_(True)
    g.dpo_loss(pc.detach(), pr_dpo, torch.zeros(2), torch.zeros(2)).sum().backward()
    pr_aco = pr.detach().clone().requires_grad_(True)
    g.aco_loss(
        pc.detach(), pr_aco, torch.zeros(2), torch.zeros(2), adv_c.detach(), adv_r.detach()
    ).sum().backward()
    assert abs(float(pr_aco.grad[0])) < abs(float(pr_dpo.grad[0]))  # A_l > A_w: w = e^-0.5


def test_foresight_distribution_and_distinct_draws_check4():
    probs = g.foresight_distribution(F_SPEC, tau=0.1)
    expected = [0.3154, 0.1913, 0.0427, 0.0058, 0.2582, 0.0003, 0.0704, 0.1160]
    assert probs.tolist() == pytest.approx(expected, abs=1e-4)
    draws = g.sample_distinct(
        probs.expand(100_000, 8), 2, torch.Generator().manual_seed(0)
    )  # (1e5, 2)
    assert bool((draws[:, 0] != draws[:, 1]).all())
    first = torch.bincount(draws[:, 0], minlength=8).double() / 100_000
    assert (first - probs).abs().max() < 0.005


def test_pair_and_advantages_check5():
    adv = g.step_advantages(F_SPEC, Q_SPEC)
    probs = g.foresight_distribution(F_SPEC, 0.1)
    gen = torch.Generator().manual_seed(0)
    rejected = [g.choose_pair(F_SPEC, probs, "paper", gen) for _ in range(3000)]
    assert {c for c, _ in rejected} == {0}
    counts = torch.bincount(torch.tensor([r for _, r in rejected]), minlength=8).double() / 3000
    assert counts[0] == 0 and counts[4] == pytest.approx(
        0.2582 / (1 - 0.3154), abs=0.03
    )  # F without the winner
    assert float(adv[0]) == pytest.approx(0.10) and float(adv[4]) == pytest.approx(0.28)

    def w(rejected, clamp):
        return float(g.aco_weight(adv[0], adv[rejected], 1.0, clamp))

    assert w(4, "paper") == pytest.approx(0.8353, abs=1e-4) and w(4, "code") == 1.0
    assert g.choose_pair(F_SPEC, probs, "lowest") == (0, 5)  # greedy ablation
    assert (
        float(adv[5]) == pytest.approx(-0.40)
        and w(5, "paper") == 1.0
        and w(5, "code") == pytest.approx(1.6487, abs=1e-4)
    )
    uniform = torch.bincount(
        torch.tensor([g.choose_pair(F_SPEC, probs, "uniform", gen)[1] for _ in range(3500)]),
        minlength=8,
    )
    assert (
        uniform[0] == 0 and int(uniform[1:].min()) > 400
    )  # released code: uniform over the other 7
    assert torch.equal(
        g.step_advantages(F_SPEC, torch.zeros(8, dtype=torch.float64)), F_SPEC
    )  # first timestamp: A = f


class ScriptedSampler(Sampler):
    """Deterministic stand-in for the Sampler interface: steps 'L<k>' + newline, foresight
    rollouts whose mean log-prob depends on the prompt; with `end_at` a step ends the response
    from that depth on."""

    def __init__(self, end_at=None):
        self.calls, self.end_at = [], end_at

    def generate(
        self,
        prompts,
        n=1,
        temperature=1.0,
        top_p=1.0,
        max_new_tokens=128,
        stop=None,
        images=None,
        batch_size=None,
    ):
        self.calls.append((len(prompts), n, stop is not None))
        out = []
        for p in prompts:
            depth = p.count("\n")
            group = []
            for j in range(n):
                ends = stop is not None and self.end_at is not None and depth >= self.end_at
                text = f"L{len(p) % 7}{j}" + ("" if ends or stop is None else "\n")
                lp = -((len(p) * 31 + j * 17) % 97) / 100.0
                group.append(Completion(text, [1, 2], [lp, lp], "stop"))
            out.append(group)
        return out


def search_args(**kw):
    args = g.Args(
        num_queries=3, max_step_tokens=8, max_foresight_tokens=8, max_completion_tokens=8, **kw
    )
    return args


def test_one_pair_per_timestamp_check6_batched():
    sampler, args = ScriptedSampler(), search_args()
    queries = ["q one", "q two", "q three"]
    pairs, completed, counts = g.foresight_search(
        sampler, queries, ["0", "1", "2"], queries, args, torch.Generator().manual_seed(0)
    )
    assert [len(p) for p in pairs] == [args.num_steps] * 3  # 25,000 queries -> 100,000 pairs
    assert [p["timestamp"] for p in pairs[1]] == [0, 1, 2, 3] and counts[
        "queries_short_of_K_pairs"
    ] == 0
    # every timestamp is two batched calls (all beams' steps, all candidates' foresight), then one
    # completion call
    assert (
        sampler.calls[:2] == [(6, 4, True), (24, 1, False)]
        and len(sampler.calls) == 2 * args.num_steps + 1
    )
    first = pairs[0][0]
    assert (
        first["chosen_f"] == max(first["candidate_f"])
        and first["chosen_advantage"] == first["chosen_f"]
    )  # Q = 0 at t = 0
    assert first["chosen"].startswith(args.prefill) and all(
        len(c["responses"]) == 2 for c in completed
    )
    later = pairs[0][2]
    assert (
        later["chosen_advantage"] != later["chosen_f"]
    )  # A = f - Q of its beam from the second timestamp on


def test_search_handles_steps_that_end_the_response():
    sampler, args = (
        ScriptedSampler(end_at=4),
        search_args(),
    )  # the prompt has 2 newlines + one per step
    pairs, completed, counts = g.foresight_search(
        sampler, ["a", "b"], ["0", "1"], ["a", "b"], args, torch.Generator().manual_seed(0)
    )
    assert [len(p) for p in pairs] == [3, 3] and counts["queries_short_of_K_pairs"] == 2
    assert counts["ended_response"] == 16 and all(len(c["responses"]) == 2 for c in completed)


def test_step_value_with_and_without_foresight():
    # foresight: the mean over the rollout's tokens only, (-1.0 - 0.5 + 0.0) / 3 = -0.5
    assert g.step_value([-0.2, -0.4], [-1.0, -0.5, 0.0]) == pytest.approx(-0.5)
    # 'w/o foresight' (or a step that ended the response): the step's own tokens, (-0.2 - 0.4) / 2
    assert g.step_value([-0.2, -0.4]) == pytest.approx(-0.3)
    assert g.step_value([-0.2, -0.4], []) == pytest.approx(-0.3) and g.step_value([]) == 0.0


def test_search_without_foresight_makes_no_rollouts():
    sampler, args = ScriptedSampler(), search_args(step_value="step")
    pairs, _, counts = g.foresight_search(
        sampler, ["q"], ["0"], ["q"], args, torch.Generator().manual_seed(0)
    )
    # one step call per timestamp and the completion call: no foresight rollouts at all
    assert len(sampler.calls) == args.num_steps + 1 and all(
        stop for _, _, stop in sampler.calls[:-1]
    )
    assert [len(p) for p in pairs] == [args.num_steps] and counts["ended_response"] == 0
    first = pairs[0][0]
    # every scripted step has log-probs [lp, lp], so f is the step's own lp; no rollout in the pair
    assert first["chosen_f"] == max(first["candidate_f"])
    assert (
        first["chosen"].startswith(args.prefill)
        and first["chosen"][len(args.prefill) :].count("\n") == 1
    )
    assert first["chosen"].endswith("\n")  # prefill + step + newline, nothing looked ahead


def test_sample_queries_is_a_seeded_prefix_stable_permutation():
    rows = [{"instruction": f"q{i}"} for i in range(10)]
    # random.Random(0).shuffle(list(range(10))) = [7, 8, 1, 5, 3, 4, 2, 0, 9, 6]
    picked = pp.sample_queries(rows, 4, seed=0)
    assert [r["instruction"] for r in picked] == ["q7", "q8", "q1", "q5"]
    assert pp.sample_queries(rows, 6, seed=0)[:4] == pp.sample_queries(
        rows, 4, seed=0
    )  # n grows, ids stay
    assert pp.sample_queries(rows, 4, seed=1) != pp.sample_queries(rows, 4, seed=0)
    assert sorted(r["instruction"] for r in pp.sample_queries(rows, None, seed=0)) == sorted(
        f"q{i}" for i in range(10)
    )
    assert len(pp.sample_queries(rows, 50, seed=0)) == 10


def test_weight_spread_and_claims():
    spread = pp.weight_spread(torch.tensor([1.0, 0.5, 1.0, 0.25]))
    # sorted [0.25, 0.5, 1, 1]: p10 at position 0.3 -> 0.25 + 0.3 * 0.25, p50 at 1.5 -> 0.75
    assert spread == {
        "mean": 0.6875,
        "min": 0.25,
        "p10": 0.325,
        "p50": 0.75,
        "frac_below_1": 0.5,
        "frac_above_1": 0.0,
    }
    evals = [{"eval/loss": 0.693}, {"eval/loss": 0.60}]
    claims = pp.run_claims(
        evals,
        {"accuracy_greedy": 0.5, "accuracy_sampled_T1": 0.4},
        {"accuracy_greedy": 0.5, "accuracy_sampled_T1": 0.6},
    )
    assert [(c["metric"], c["holds"]) for c in claims] == [
        ("eval/loss", True),
        ("accuracy_greedy", False),
        ("accuracy_sampled_T1", True),
    ]
    assert pp.run_claims(evals[:1], {}, {}) == []  # no answers, one evaluation: nothing to claim


def test_malformed_pairs_line_is_named(tmp_path):
    good = {
        "query": "q",
        "chosen": "a",
        "rejected": "b",
        "chosen_advantage": 0.1,
        "rejected_advantage": 0.0,
        "query_id": "0",
    }
    path = tmp_path / "pairs.jsonl"
    path.write_text(
        json.dumps(good) + "\n" + '{"query": "q", "chosen": "a"\n' + json.dumps(good) + "\n"
    )
    with pytest.raises(DataError, match=r"pairs\.jsonl:2"):
        pp.load_pairs(path)
    path.write_text(
        json.dumps(good) + "\n" + json.dumps({**good, "rejected_advantage": None}) + "\n"
    )
    with pytest.raises(DataError, match=r"pairs\.jsonl:2: missing field 'rejected_advantage'"):
        pp.load_pairs(path)


def test_toy_rows_keep_heldout_queries_out_of_the_warmstart():
    sft = {r["instruction"] for r in make_toy_rows(500, seed=1, pool="sft")}
    held = make_toy_rows(100, seed=3, pool="heldout")
    assert not sft & {r["instruction"] for r in held}
    row = held[0]
    terms = [int(x) for x in row["instruction"][8:-1].split(" + ")]
    assert row["answer"] == str(sum(terms)) and row["cot"].count("\n") == len(terms) - 1


FAST = [
    "--toy_warmstart_steps",
    "20",
    "--num_eval_queries",
    "4",
    "--max_foresight_tokens",
    "24",
    "--max_completion_tokens",
    "24",
]


def test_end_to_end_and_resume(run_cmd, tmp_path):
    out = tmp_path / "run"
    cmd = [
        sys.executable,
        "genius_aco.py",
        "--output_dir",
        str(out),
        "--num_queries",
        "6",
        "--batch_size",
        "4",
        "--epochs",
        "1",
        "--eval_fraction",
        "0.34",
        "--eval_every",
        "1",
        *FAST,
    ]
    run_cmd(cmd, timeout=300)
    pairs = [json.loads(line) for line in (out / "pairs.jsonl").read_text().splitlines()]
    assert pairs and all(set(pp.PAIR_FIELDS) <= set(p) for p in pairs) and len(pairs) <= 6 * 4
    assert all(
        len({p["timestamp"] for p in pairs if p["query_id"] == q})
        == sum(p["query_id"] == q for p in pairs)
        for q in {p["query_id"] for p in pairs}
    )
    metrics = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert any("eval/loss" in m for m in metrics) and any("train/w_mean" in m for m in metrics)
    summary = json.loads((out / "summary.json").read_text())
    evals = [m for m in metrics if "eval/loss" in m]
    first = summary["claims"][0]  # computed from this run's own held-out pair losses, not typed in
    assert first["metric"] == "eval/loss" and first["baseline"] == pytest.approx(
        math.log(2), abs=1e-4
    )
    assert (
        first["result"] == pytest.approx(evals[-1]["eval/loss"]) and not first["higher_is_better"]
    )
    assert {c["metric"] for c in summary["claims"]} == {
        "eval/loss",
        "accuracy_greedy",
        "accuracy_sampled_T1",
    }
    assert (
        0 < summary["w_train"]["min"] <= summary["w_train"]["mean"] <= 1.0
    )  # the paper's clamp: w <= 1
    proc = run_cmd(cmd + ["--resume"], timeout=300)
    assert "0 queries to search" in proc.stdout and len(
        (out / "pairs.jsonl").read_text().splitlines()
    ) == len(pairs)


def test_learning_no_argument_run_holds_its_claims(run_cmd, tmp_path):
    """The no-argument toy with its fixed seed: no answer is used, yet held-out greedy and sampled
    accuracy rise over the warm-started base, and the held-out pairs' loss falls."""
    out = tmp_path / "toy"
    proc = run_cmd([sys.executable, "genius_aco.py", "--output_dir", str(out)], timeout=900)
    claims = json.loads((out / "summary.json").read_text())["claims"]
    assert len(claims) == 3 and all(c["holds"] for c in claims), proc.stdout[-3000:]


def write_pairs(path, n=12):
    """n hand-made pairs: A_w = 0.1 * (i % 3), A_l = 0.1, so w = e^-0.1 where i % 3 == 0, else 1
    (the paper's clamp), and DPO's w = 1 everywhere."""
    rows = [
        {
            "query_id": str(i),
            "query": f"What is {i} + 2 + 1 + 3 + 1?",
            "chosen": f"The reasoning steps are:\n\n{i} + 2 = {i + 2}\n",
            "rejected": f"The reasoning steps are:\n\n{i} + 2 = {i + 3}\n",
            "chosen_advantage": 0.1 * (i % 3),
            "rejected_advantage": 0.1,
        }
        for i in range(n)
    ]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return rows


def expected_w_train(rows, eval_fraction):
    """w over the training pairs by hand: the held-out queries are those whose crc32 % 1000 falls
    below 1000 * eval_fraction."""
    train = [r for r in rows if zlib.crc32(r["query_id"].encode()) % 1000 >= 1000 * eval_fraction]
    w = [math.exp(-0.1) if int(r["query_id"]) % 3 == 0 else 1.0 for r in train]
    return {
        "mean": pytest.approx(sum(w) / len(w), abs=1e-4),
        "min": pytest.approx(min(w), abs=1e-4),
        "frac_below_1": pytest.approx(sum(x < 1 for x in w) / len(w), abs=1e-4),
    }


def train_stage(run_cmd, pairs, out, *extra):
    cmd = [sys.executable, "genius_aco.py", "--stage", "train", "--pairs_file", str(pairs)]
    cmd += ["--output_dir", str(out), "--batch_size", "4", "--epochs", "2", "--eval_every", "1"]
    run_cmd(cmd + ["--eval_fraction", "0.3", "--lr", "1e-3", *FAST, *extra], timeout=300)
    metrics = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    return json.loads((out / "summary.json").read_text()), metrics


def test_train_stage_uses_the_selected_loss(run_cmd, tmp_path):
    """The same pairs under --loss aco and --loss dpo: both start at ln 2 (policy = reference),
    DPO's w is 1 on every step, ACO's w over the training pairs is the hand-computed one, and the
    two runs end apart because ACO pushes the w < 1 rejected sides down less."""
    rows = write_pairs(tmp_path / "pairs.jsonl")
    aco, aco_metrics = train_stage(run_cmd, tmp_path / "pairs.jsonl", tmp_path / "aco")
    dpo, dpo_metrics = train_stage(
        run_cmd, tmp_path / "pairs.jsonl", tmp_path / "dpo", "--loss", "dpo"
    )
    for summary in (aco, dpo):
        assert summary["eval"][0]["step"] == 0
        assert summary["eval"][0]["eval/loss"] == pytest.approx(math.log(2), abs=1e-5)
    assert aco["loss"] == "aco" and dpo["loss"] == "dpo"
    assert {k: aco["w_train"][k] for k in ("mean", "min", "frac_below_1")} == expected_w_train(
        rows, 0.3
    )
    train_w = [m["train/w_mean"] for m in dpo_metrics if "train/w_mean" in m]
    assert train_w and all(w == 1.0 for w in train_w)
    assert any(m["train/w_mean"] < 1 for m in aco_metrics if "train/w_mean" in m)
    assert aco["eval"][-1]["eval/loss"] != pytest.approx(dpo["eval"][-1]["eval/loss"], abs=1e-7)


def test_torchrun_train_stage(run_cmd, torchrun_cmd, tmp_path):
    """Two gloo ranks, FSDP2, on a pairs file written here (the train stage needs no sampler):
    the frozen reference makes the first held-out loss ln 2, and w is the hand-computed one."""
    path = tmp_path / "pairs.jsonl"
    rows = write_pairs(path)
    out = tmp_path / "run"
    proc = run_cmd(
        [
            *torchrun_cmd,
            "genius_aco.py",
            "--stage",
            "train",
            "--pairs_file",
            str(path),
            "--output_dir",
            str(out),
            "--batch_size",
            "4",
            "--micro_batch_size",
            "1",
            "--epochs",
            "1",
            "--eval_fraction",
            "0.3",
            *FAST,
        ],
        timeout=300,
    )
    assert "held-out pairs" in proc.stdout
    summary = json.loads((out / "summary.json").read_text())
    assert len(summary["eval"]) >= 2 and math.isfinite(summary["eval"][-1]["eval/loss"])
    assert summary["eval"][0]["eval/loss"] == pytest.approx(math.log(2), abs=1e-5)
    w_train = {k: summary["w_train"][k] for k in ("mean", "min", "frac_below_1")}
    assert w_train == expected_w_train(rows, 0.3)
