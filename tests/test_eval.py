"""common/evaluation.py: the SimpleRL-Zoo suite's metrics, table and files, a fake sampler for exact
numbers, two simulated ranks, and `--eval_only` end to end on a tiny model over the six fixtures."""

import json
import math
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

from common.evaluation import (
    EvalArgs,
    _rank_share,
    avg_at_k,
    format_suite_table,
    generate_everywhere,
    run_suite,
    suite_average,
    suite_names,
)
from common.sampling import Completion

FIXTURES = Path(__file__).parent / "fixtures" / "simplerl_eval"
SINGLE = SimpleNamespace(rank=0, world_size=1)


def test_metric_functions():
    assert avg_at_k([[True, False], [True, True], [False, False, False, True]]) == pytest.approx(
        (0.5 + 1 + 0.25) / 3
    )
    assert math.isnan(avg_at_k([]))
    assert suite_average({"a": 0.2, "b": 0.4, "c": float("nan")}) == pytest.approx(0.3)
    # SimpleRL-Zoo Table 1, Qwen-2.5-32B after RL: the six pass@1 columns average to 61.9
    paper = {
        "gsm8k": 95.9,
        "math500": 82.4,
        "minerva_math": 42.6,
        "olympiadbench": 46.4,
        "aime24": 36.7,
        "amc23": 67.5,
    }
    assert round(suite_average(paper), 1) == 61.9
    assert suite_names("simplerl") == [
        "gsm8k",
        "math500",
        "minerva_math",
        "olympiadbench",
        "aime24",
        "amc23",
    ]
    assert suite_names("aime24, amc23") == ["aime24", "amc23"]
    with pytest.raises(ValueError, match="--eval_suite: unknown benchmark"):
        suite_names("aime25")
    with pytest.raises(ValueError, match="--eval_avg_on: unknown benchmark"):
        suite_names("aime24,math", "--eval_avg_on")
    assert suite_names("", "--eval_avg_on") == []  # avg@k on nothing


def test_table_has_one_row_per_metric_and_the_average_column():
    results = {"gsm8k": {"n": 4, "greedy": 0.5}, "aime24": {"n": 3, "greedy": 1 / 3, "avg@4": 0.25}}
    table = format_suite_table(results, 4).splitlines()
    assert table[0] == "| metric | GSM8K | AIME24 | Avg |"
    assert table[2] == "| greedy pass@1 | 50.0 | 33.3 | 41.7 |"
    assert table[3] == "| avg@4 | - | 25.0 | 25.0 |"


def test_rank_shares_cover_every_item_once():
    items = list(range(5))
    shares = [_rank_share(items, rank, 2) for rank in range(2)]
    assert shares == [
        ([0, 1, 2], 3),
        ([3, 4, 0], 2),
    ]  # padded to equal length, padding dropped after
    assert [x for share, real in shares for x in share[:real]] == items


class FakeSampler:
    """Scripted answers: `table[prompt]` -> the boxed answer of greedy and of each of n samples."""

    def __init__(self, greedy: dict, sampled: dict):
        self.greedy, self.sampled, self.calls = greedy, sampled, []

    def generate(self, prompts, n=1, temperature=1.0, top_p=1.0, max_new_tokens=128, **kw):
        self.calls.append((len(prompts), n, temperature, top_p, max_new_tokens))
        table = self.greedy if temperature == 0 else self.sampled
        return [
            [
                Completion(f"So the answer is $\\boxed{{{a}}}$.", [1])
                for a in table.get(p, ["?"] * n)
            ][:n]
            for p in prompts
        ]


def test_run_suite_grades_and_writes_eval_json(tmp_path, capsys):
    # fixture golds: AIME24 1, 16, 999; AMC23 17, 15, 2.5 (math_equal_batch: 17.0 == 17)
    greedy = {
        "What is $3^4 - 4^3$?": ["17.0"],
        "How many positive divisors does $2024$ have?": ["16"],
    }
    sampled = {
        "What is $3^4 - 4^3$?": ["17", "18"],
        "What is $\\frac{5}{2}$ written as a decimal?": ["5/2", "2.5"],
    }
    sampler = FakeSampler(greedy, sampled)
    args = EvalArgs(eval_suite="aime24,amc23", eval_data_dir=str(FIXTURES), eval_avg_k=2)
    summary = run_suite(sampler, lambda q: q, args, SINGLE, lambda x: [x], 7, tmp_path, "fake")
    assert summary["benchmarks"]["aime24"] == {"n": 3, "greedy": pytest.approx(1 / 3), "avg@2": 0.0}
    assert summary["benchmarks"]["amc23"] == {
        "n": 3,
        "greedy": pytest.approx(1 / 3),
        "avg@2": pytest.approx(0.5),
    }
    assert summary["average"] == {"greedy": pytest.approx(1 / 3), "avg@2": pytest.approx(0.25)}
    assert (0, 1, 0.0, 1.0, 7) not in sampler.calls and (
        3,
        2,
        1.0,
        0.95,
        7,
    ) in sampler.calls  # paper's T / top-p
    saved = json.loads((tmp_path / "eval.json").read_text())
    assert saved["benchmarks"]["amc23"]["avg@2"] == 0.5 and saved["settings"]["max_new_tokens"] == 7
    lines = (tmp_path / "eval_outputs" / "amc23.jsonl").read_text().splitlines()
    assert (
        json.loads(lines[0])["greedy_pred"] == "17.0"
        and json.loads(lines[0])["greedy_correct"] is True
    )
    assert "| avg@2 | 0.0 | 50.0 | 25.0 |" in capsys.readouterr().out


def test_two_ranks_generate_their_shares_and_gather_in_order():
    prompts = [f"q{i}" for i in range(5)]
    sampler = FakeSampler({p: [p.upper()] for p in prompts}, {})
    parts = []  # what each simulated rank contributes to the gather
    for rank in range(2):
        dist = SimpleNamespace(rank=rank, world_size=2)
        generate_everywhere(
            sampler, prompts, dist, lambda x: parts.append(x) or [x], n=1, temperature=0.0
        )
    assert [call[0] for call in sampler.calls] == [
        3,
        3,
    ]  # equal prompt counts on both ranks (padding)
    merged = generate_everywhere(
        sampler,
        prompts,
        SimpleNamespace(rank=0, world_size=2),
        lambda x: parts,
        n=1,
        temperature=0.0,
    )
    assert [g[0] for g in merged] == [f"So the answer is $\\boxed{{Q{i}}}$." for i in range(5)]


@pytest.mark.parametrize(
    "script,extra",
    [
        ("zero_rl.py", []),
        ("bstar.py", ["--eval_limit", "1"]),
        ("genius_aco.py", ["--eval_limit", "1"]),
    ],
)
def test_eval_only_end_to_end_on_a_tiny_model(run_cmd, tmp_path, script, extra):
    """Six fixture benchmarks, greedy + avg@2 on AIME24/AMC23, the table and eval.json."""
    from common.models import make_tiny_lm

    out = tmp_path / "eval"
    proc = run_cmd(
        [
            sys.executable,
            script,
            "--eval_only",
            "--model",
            make_tiny_lm(),
            "--eval_data_dir",
            str(FIXTURES),
            "--eval_avg_k",
            "2",
            "--eval_max_tokens",
            "8",
            "--output_dir",
            str(out),
            *extra,
        ],
        timeout=240,
    )
    summary = json.loads((out / "eval.json").read_text())
    assert list(summary["benchmarks"]) == [
        "gsm8k",
        "math500",
        "minerva_math",
        "olympiadbench",
        "aime24",
        "amc23",
    ]
    n = {"gsm8k": 4, "math500": 5, "minerva_math": 4, "olympiadbench": 4, "aime24": 3, "amc23": 3}
    for name, result in summary["benchmarks"].items():
        assert result["n"] == (1 if extra else n[name]) and 0.0 <= result["greedy"] <= 1.0
        assert ("avg@2" in result) == (name in ("aime24", "amc23"))
    assert "| metric | GSM8K | MATH500 | Minerva | Olympiad | AIME24 | AMC23 | Avg |" in proc.stdout
    assert len((out / "eval_outputs" / "math500.jsonl").read_text().splitlines()) == (
        1 if extra else 5
    )
