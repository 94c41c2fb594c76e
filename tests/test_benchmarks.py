"""common/benchmarks.py on our own fixture rows in each release format
(tests/fixtures/simplerl_eval, laid out like SimpleRL-Zoo's
`examples/simplelr_math_eval/data/<name>/test.jsonl`)."""

import json
import re
from pathlib import Path

import pytest

from common.benchmarks import (
    SIMPLERL_SUITE,
    gsm8k_gold,
    load_benchmark,
    load_math_rows,
    number_gold,
    olympiad_gold,
    simplerl_question,
)
from common.data import DataError, write_jsonl
from common.rewards import extract_answer, math_equal

FIXTURES = Path(__file__).parent / "fixtures" / "simplerl_eval"

EXPECTED_GOLDS = {
    "gsm8k": ["38", "1200", "25", "4"],
    "math500": [
        "12",
        "\\frac{3}{7}",
        "(-3, 3)",
        "\\begin{pmatrix} 4 \\\\ -3 \\end{pmatrix}",
        "\\$25",
    ],
    "minerva_math": ["2", "3.0e10", "e^{-t}", "\\frac{1}{9}"],
    "olympiadbench": ["12", "-2, 2", "18", "2^{5}"],
    "aime24": ["1", "16", "999"],
    "amc23": ["17", "15", "2.5"],
}


@pytest.mark.parametrize("name", SIMPLERL_SUITE)
def test_each_benchmark_loads_its_gold(name):
    rows = load_benchmark(name, str(FIXTURES))  # the SimpleRL-Zoo folder layout
    assert [r["answer"] for r in rows] == EXPECTED_GOLDS[name]
    assert all(r["question"].strip() and r["benchmark"] == name for r in rows)
    same = load_benchmark(name, str(FIXTURES / name / "test.jsonl"))  # the file itself
    assert [r["answer"] for r in same] == EXPECTED_GOLDS[name]
    assert (
        load_benchmark(name, str(FIXTURES / name), limit=2) == rows[:2]
    )  # the benchmark's own folder


def test_source_fields_are_kept():
    olympiad = load_benchmark("olympiadbench", str(FIXTURES))[2]
    assert (
        olympiad["unit"] == "$cm^2$"
        and olympiad["final_answer"] == ["$18$"]
        and olympiad["id"] == 3003
    )
    gsm = load_benchmark("gsm8k", str(FIXTURES))[1]
    assert (
        gsm["solution"].endswith("#### 1,200") and gsm["idx"] == 8
    )  # the worked solution keeps a name
    aime = load_benchmark("aime24", str(FIXTURES))[0]
    assert aime["question"] == aime["problem"] and aime["url"].startswith("https://")


def test_math500_answer_is_the_solutions_box():
    for row in load_benchmark("math500", str(FIXTURES)):
        assert extract_answer(row["solution"]) == row["answer"]


def test_gsm8k_gold_is_the_last_number_of_the_worked_solution():
    for row in load_benchmark("gsm8k", str(FIXTURES)):
        worked = re.sub(
            r"<<[^>]*>>", "", row["solution"].rsplit("####", 1)[0]
        )  # drop the calculator marks
        last = re.findall(r"\d[\d,]*(?:\.\d+)?", worked)[-1].replace(",", "")
        assert float(last) == float(row["answer"])


def test_amc_floats_grade_equal_to_integers():
    assert number_gold(27.0) == "27" and number_gold("27.0") == "27" and number_gold(2.5) == "2.5"
    assert number_gold(-1.0) == "-1" and number_gold(None) is None and number_gold("\\pi") == "\\pi"
    for row in load_benchmark("amc23", str(FIXTURES)):
        value = row["answer"]
        assert math_equal(value, value + ".0") and math_equal(f"{float(value)}", value)
    assert not math_equal("27", "27.5")


def test_gold_rules():
    assert gsm8k_gold("so 3 + 4 = <<3+4=7>>7\n#### 7") == "7"
    assert gsm8k_gold("#### 1,000,000") == "1000000" and gsm8k_gold("#### 1,2") == "1,2"
    assert gsm8k_gold("no final line 7") is None
    assert olympiad_gold(["$(3,0),(-3,1)$"]) == "(3,0),(-3,1)"
    assert olympiad_gold(["$69$,$84$"]) == "69, 84"
    assert (
        olympiad_gold(["$a$", "$b$"]) == "a, b"
    )  # several elements: all of them, not just the first
    assert olympiad_gold("['$\\\\frac{7}{15}$']") == "\\frac{7}{15}"  # the Python-list string form
    assert (
        olympiad_gold([]) is None
        and olympiad_gold(None) is None
        and olympiad_gold("[broken") is None
    )
    assert math_equal(olympiad_gold(["$69$,$84$"]), "69,84")


@pytest.mark.parametrize(
    "name,row,field",
    [
        (
            "gsm8k",
            {"question": "q", "answer": "worked solution without a final line 5"},
            "'answer'",
        ),
        ("minerva_math", {"problem": "q", "solution": "no box here, 5", "type": "t"}, "'solution'"),
        ("olympiadbench", {"question": "q", "final_answer": [], "unit": None}, "'final_answer'"),
        ("aime24", {"problem": "q", "question": "q", "url": "u"}, "'answer'"),
        ("math500", {"problem": "q", "solution": "none", "level": 1}, "'answer'"),
        ("amc23", {"answer": 3.0}, "'question' or 'problem'"),
    ],
)
def test_missing_gold_names_file_line_and_field(tmp_path, name, row, field):
    good = json.loads((FIXTURES / name / "test.jsonl").read_text().splitlines()[0])
    path = tmp_path / name / "test.jsonl"
    write_jsonl(path, [good, row])
    with pytest.raises(DataError, match=rf"{name}/test\.jsonl:2: .*{re.escape(field)}"):
        load_benchmark(name, str(tmp_path))


def test_unknown_benchmark_and_missing_file(tmp_path):
    with pytest.raises(DataError, match="unknown benchmark 'math'; choose from gsm8k"):
        load_benchmark("math", str(FIXTURES))
    with pytest.raises(DataError, match="no such file"):
        load_benchmark("gsm8k", str(FIXTURES / "nope.jsonl"))
    (tmp_path / "aime24").mkdir()  # an eval data folder without the asked benchmark
    with pytest.raises(DataError, match="no gsm8k/test.jsonl"):
        load_benchmark("gsm8k", str(tmp_path))


QWEN_PROMPT = (
    "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\n{q}"
    "\nPlease reason step by step, and put your final answer within \\boxed{{}}.<|im_end|>\n"
    "<|im_start|>assistant\n"
)


def test_simplerl_zoo_data_parquet(tmp_path):
    """SimpleRL-Zoo-Data tiers are verl parquet rows: an already templated `prompt` and
    `reward_model.ground_truth`; the question is read back out of either template."""
    import datasets

    rows = [
        {
            "data_source": "simplelr_qwen_level3to5",
            "prompt": [{"role": "user", "content": QWEN_PROMPT.format(q="What is $2+2$?")}],
            "ability": "math",
            "reward_model": {"ground_truth": "4", "style": "rule"},
            "extra_info": {"index": 0, "split": "train"},
        },
        {
            "data_source": "simplelr_abel_level3to5",
            "prompt": [
                {
                    "role": "user",
                    "content": "Question:\nFind $\\frac{1}{2}+\\frac{1}{4}$.\nAnswer:\n"
                    "Let's think step by step.\n",
                }
            ],
            "ability": "math",
            "reward_model": {"ground_truth": "\\frac{3}{4}", "style": "rule"},
            "extra_info": {"index": 1, "split": "train"},
        },
    ]
    datasets.Dataset.from_list(rows).to_parquet(str(tmp_path / "train.parquet"))
    loaded = load_math_rows(str(tmp_path / "train.parquet"))
    assert [(r["question"], r["answer"]) for r in loaded] == [
        ("What is $2+2$?", "4"),
        ("Find $\\frac{1}{2}+\\frac{1}{4}$.", "\\frac{3}{4}"),
    ]
    assert loaded[0]["data_source"] == "simplelr_qwen_level3to5"
    assert simplerl_question("plain text") == "plain text" and simplerl_question([]) is None


def test_math_and_gsm8k_train_files(tmp_path):
    math_rows = [
        {
            "problem": "Compute $3 \\cdot 5$.",
            "solution": "We get $3 \\cdot 5 = \\boxed{15}$.",
            "level": "Level 1",
            "type": "Prealgebra",
        },
        {
            "problem": "Simplify $\\sqrt{8}$.",
            "solution": "$\\sqrt{8} = \\boxed{2\\sqrt{2}}$.",
            "level": "Level 2",
            "type": "Algebra",
        },
    ]
    write_jsonl(tmp_path / "math_train.jsonl", math_rows)
    assert [r["answer"] for r in load_math_rows(str(tmp_path / "math_train.jsonl"))] == [
        "15",
        "2\\sqrt{2}",
    ]
    gsm_rows = [
        {
            "question": "Sam has 3 bags of 4 apples. How many apples?",
            "answer": "3 * 4 = <<3*4=12>>12\n#### 12",
        }
    ]
    write_jsonl(tmp_path / "gsm_train.jsonl", gsm_rows)
    loaded = load_math_rows(str(tmp_path / "gsm_train.jsonl"))
    assert loaded[0]["answer"] == "12" and loaded[0]["solution"].startswith("3 * 4")
    write_jsonl(tmp_path / "bad.jsonl", math_rows + [{"problem": "x", "solution": "no box"}])
    expected = r"bad\.jsonl:3: missing field 'answer' and no other gold .*'solution'"
    with pytest.raises(DataError, match=expected):
        load_math_rows(str(tmp_path / "bad.jsonl"))
