"""Tests for common/rewards.py: the SimpleRL grader, TinyZero countdown, pass@k and length rewards,
pinned to hand-computed values (the SimpleRL-Zoo grader's documented cases, TinyZero's countdown
scores, the length-reward papers' formulas)."""

import math
import multiprocessing
import threading
import time

import pytest

from common.rewards import (
    completion_text,
    correctness_reward,
    cosine_length_reward,
    countdown_reward,
    countdown_reward_fn,
    dapo_overlong_penalty,
    extract_answer,
    kimi_length_reward,
    l1_length_reward,
    math_equal,
    math_equal_batch,
    math_reward,
    pass_at_k,
    strip_string,
)

# ---------------------------------------------------------------- grader: (answer, gold, equal?)
GRADER_CASES = [
    # hand-computed
    ("\\frac{1}{2}", "0.5", True),
    ("0.5", "\\frac{1}{2}", True),
    ("\\dfrac{1}{2}", "\\frac12", True),
    # hand-computed
    ("x=5", "5", True),
    ("10\\%", "10", True),
    ("1,000", "1000", True),
    ("2\\sqrt{3}", "\\sqrt{12}", True),
    # hand-computed: looks alike, is not
    ("\\frac{1}{3}", "0.333", False),
    # fractions vs decimals
    ("\\frac{3}{4}", "0.75", True),
    ("3/4", "\\frac{3}{4}", True),
    ("\\tfrac{3}{4}", "0.75", True),
    ("\\frac{1}{3}", "0.333333", True),  # math-verify rounds floats to 6 places
    ("0.3333", "\\frac{1}{3}", False),
    ("\\frac{2}{4}", "\\frac{1}{2}", True),
    ("-\\frac{1}{2}", "-0.5", True),
    ("\\frac{-1}{2}", "-0.5", True),
    # decimals and integers
    ("3.0", "3", True),
    ("3.00", "3", True),
    ("3.05", "3.5", False),
    (".5", "0.5", True),
    ("12", "1.2", False),
    ("-5", "5", False),
    ("5", "-5", False),
    ("100", "10", False),
    ("1.0000001", "1", True),
    # units, degrees, money, percent
    ("5\\text{ cm}", "5", True),
    ("5 cm", "5", True),
    ("30^\\circ", "30", True),
    ("30^{\\circ}", "30", True),
    ("\\$5.00", "5", True),
    ("50\\%", "50", True),
    ("50\\%", "5", False),
    # thousands separators
    ("1{,}000", "1000", True),
    ("1,234,567", "1234567", True),
    ("1\\,000", "1000", True),
    ("1,000", "100", False),
    # assignments and prefixes
    ("y = 7", "7", True),
    ("k=3", "3", True),
    ("x = 6", "5", False),
    # symbolic
    ("\\sqrt{8}", "2\\sqrt{2}", True),
    ("\\pi r^2", "r^2\\pi", True),
    ("2x+1", "1+2x", True),
    ("\\left(3, 4\\right)", "(3,4)", True),
    ("\\frac{\\sqrt{3}}{2}", "\\frac{\\sqrt{2}}{2}", False),
    # intervals and tuples
    ("(1, 2)", "(1,2)", True),
    ("[1,3)", "[1, 3)", True),
    ("(1,3]", "[1,3]", False),
    ("(-\\infty, 3]", "(-\\infty,3]", True),
    ("(2,1)", "(1,2)", False),
    # matrices
    ("\\begin{pmatrix}1\\\\2\\end{pmatrix}", "\\begin{bmatrix}1\\\\2\\end{bmatrix}", True),
    ("\\begin{pmatrix}1&2\\\\3&4\\end{pmatrix}", "\\begin{pmatrix}1&2\\\\3&4\\end{pmatrix}", True),
    ("\\begin{pmatrix}1&2\\\\3&5\\end{pmatrix}", "\\begin{pmatrix}1&2\\\\3&4\\end{pmatrix}", False),
    (
        "\\begin{pmatrix} 1 & 2 \\\\ 3 & 4 \\end{pmatrix}",
        "\\begin{bmatrix}1&2\\\\3&4\\end{bmatrix}",
        True,
    ),
    # words
    ("five", "5", True),
    ("\\text{(A)}", "(A)", True),
]


@pytest.mark.parametrize("pred,gold,expected", GRADER_CASES)
def test_math_equal(pred, gold, expected):
    assert math_equal(pred, gold) is expected


def test_at_least_40_grader_cases():
    assert len(GRADER_CASES) >= 40


# ---------------------------------------------------------------- extraction
@pytest.mark.parametrize(
    "text,expected",
    [
        ("First \\boxed{3} ... actually \\boxed{4}", "4"),  # last box wins
        ("So $\\boxed{\\frac{1}{2}}$.", "\\frac{1}{2}"),  # braces balanced
        ("\\boxed{2} and then a cut \\boxed{\\frac{3", "2"),  # unbalanced tail skipped
        ("\\boxed{\\frac{1}{2}", "\\frac{1}{2}"),  # only an unclosed box: its tail, as Qwen
        ("\\fbox{7}", "7"),
        ("We get \\boxed 9$ ok", "9"),
        ("Thus the final answer is $12$. I hope it is correct.", "12"),  # Minerva
        ("The answer is $\\frac{1}{2}$. Done.", "\\frac{1}{2}"),
        ("so the answer is: 1,234.", "1,234"),
        ("the final answer is 5", "5"),
        ("... so we get 7 apples", "7"),  # last number
        ("costs 1,200 dollars, i.e. -3.5 per day", "-3.5"),
        ("cost 8<|im_end|> trailing 99", "8"),  # cut at end-of-text markers
        ("x <|endoftext|> 5", None),
        ("<|im_start|>assistant\nit is 4</s>9", "4"),
        ("no final answer here", None),
        ("", None),
        (None, None),
        (12, None),
    ],
)
def test_extract_answer(text, expected):
    assert extract_answer(text) == expected


def test_strip_string_examples():
    assert strip_string("\\dfrac{1}{2}") == "\\frac{1}{2}"
    assert strip_string("\\left( 1, 2 \\right)") == "(1,2)"
    assert strip_string("\\rightarrow") == "\\rightarrow"  # \right inside a command is kept
    assert strip_string("3/4") == "\\frac{3}{4}"
    assert strip_string("x=5") == "5"
    assert strip_string("3.0") == "3"
    assert strip_string("1,000") == "1000"
    assert strip_string("1,2") == "1,2"  # a tuple, not a thousands separator
    assert strip_string("\\sqrt3") == "\\sqrt{3}"
    assert strip_string("\\pi r") == "\\pi r"
    assert strip_string("\\text{Monday}") == "Monday"
    assert strip_string("\\boxed{5}") == "5"
    assert strip_string("5 m") == "5"
    assert strip_string("x^2 + 3m") == "x^2+3m"  # unit words only after a plain number
    assert strip_string("3+2\\text{i}") == "3+2i"  # \text{i} is not a unit
    assert strip_string("5\\text{ cm}^2") == "5"
    assert strip_string("(x=1, y=2)") == "(1,2)"
    assert strip_string("x \\in [0,1]") == "[0,1]"
    assert (
        strip_string("\\begin{pmatrix} 1 \\\\ 2 \\end{pmatrix}")
        == "\\begin{pmatrix}1\\\\2\\end{pmatrix}"
    )


# ------------------------------------------------------------- correctness reward (hand-computed)
def test_correctness_reward_cases():
    assert correctness_reward("So \\boxed{\\frac{1}{2}}", "0.5") == 1.0  # check 1
    assert correctness_reward("First \\boxed{3} ... actually \\boxed{4}", "4") == 1.0  # check 2
    assert correctness_reward("First \\boxed{3} ... actually \\boxed{4}", "3") == 0.0
    unboxed = "5 apples plus 2 apples, so we get 7 apples"  # check 3
    assert correctness_reward(unboxed, "7", mode="mix") == 1.0
    assert correctness_reward(unboxed, "7", mode="independent") == 0.5
    for text, gold in [
        ("\\boxed{x=5}", "5"),
        ("\\boxed{10\\%}", "10"),
        ("\\boxed{1,000}", "1000"),
        ("\\boxed{2\\sqrt{3}}", "\\sqrt{12}"),
    ]:  # check 4
        assert correctness_reward(text, gold) == 1.0, text
    assert correctness_reward("\\boxed{\\frac{1}{3}}", "0.333") == 0.0  # check 5
    assert correctness_reward("no final answer here", "3", mode="mix") == 0.0
    assert correctness_reward("no final answer here", "3", mode="independent") == -1.0
    assert correctness_reward("\\boxed{4}", "3", mode="independent") == -0.5
    assert correctness_reward("\\boxed{3}", "3", mode="independent") == 1.0
    assert correctness_reward("no answer", "3", mode="independent", format_penalty=-2.0) == -2.0
    with pytest.raises(ValueError, match="mode"):
        correctness_reward("\\boxed{3}", "3", mode="strict")


def test_math_reward_trl_contract():
    completions = [
        "\\boxed{4}",
        [{"role": "assistant", "content": "the answer is 4"}],
        [{"role": "user", "content": "q"}, {"role": "assistant", "content": "\\boxed{5}"}],
        "\\boxed{4}",
    ]
    rewards = math_reward(
        prompts=["q"] * 4,
        completions=completions,
        answer=["4", "4", "4", None],
        trainer_state=None,
        completion_ids=[[1]] * 4,
    )
    assert rewards == [1.0, 1.0, 0.0, None]
    assert math_reward(["q"], ["\\boxed{4}"], ["3"], mode="independent") == [-0.5]
    assert (
        completion_text({"role": "assistant", "content": [{"type": "text", "text": "hi"}]}) == "hi"
    )
    assert completion_text(None) == ""


# ---------------------------------------------------------------- robustness: garbage and time
# limits
GARBAGE = [
    None,
    "",
    "   ",
    "\U0001f600" * 50,
    "\ud800",
    "1" * 10000,
    "{" * 500,
    "}" * 500,
    "\\boxed{{{{",
    "\\frac{1}{",
    "$$$$",
    "\\",
    "\x00\x01",
    3.5,
    ["a"],
    # long repetitive strings: a regex with nested quantifiers would take minutes on these
    "." * 20000 + "x",
    " " * 20000 + "x",
    "\\boxed{" * 3000,
    "<answer>" * 3000,
    "1," * 10000 + "x",
]


@pytest.mark.parametrize("junk", GARBAGE)
def test_garbage_never_raises(junk):
    # a short timeout: deep brace nests make math-verify's parser slow, so they end on the time
    # limit
    assert math_equal(junk, "5", timeout=0.5) is False
    assert math_equal("5", junk, timeout=0.5) is False
    assert correctness_reward(junk, "5", timeout=0.5) == 0.0
    assert countdown_reward(junk, 48, [3, 4, 8, 2]) == 0.0
    extract_answer(junk)
    strip_string(junk)
    assert math_reward(["q"], [junk], ["5"], timeout=0.5) == [0.0]


def test_huge_numbers():
    big = "1" * 10000
    assert math_equal(big, big) is True
    assert math_equal(big + ".5", big + ".50") is True
    assert math_equal(big, big[:-1] + "2") is False
    assert correctness_reward(f"\\boxed{{{big}}}", "5") == 0.0


TOWER = "2^{2^{2^{2^{2^{2^{2^{2}}}}}}}"


def test_pathological_input_returns_false_within_timeout():
    start = time.monotonic()
    assert math_equal(TOWER, "5", timeout=1.0) is False
    # Only checks that the call did not hang (without the timeout it runs for many minutes), not its
    # speed: the bound is generous for a loaded machine (restarting the worker re-imports sympy).
    assert time.monotonic() - start < 60
    # the grader still works after its worker was killed and replaced
    assert math_equal("2\\sqrt{3}", "\\sqrt{12}") is True


def test_math_equal_in_threads_and_forked_processes():
    results = {}

    def grade(i):
        results[i] = (
            math_equal(f"\\sqrt{{{i * i}}}", str(i)),
            math_equal(f"\\sqrt{{{i * i}}}", str(i + 1)),
        )

    def grade_tower():
        results["tower"] = math_equal(TOWER, "5", timeout=1.0)

    threads = [threading.Thread(target=grade, args=(i,)) for i in range(2, 4)] + [
        threading.Thread(target=grade_tower)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert results == {2: (True, False), 3: (True, False), "tower": False}

    with multiprocessing.get_context("fork").Pool(1) as pool:
        assert pool.starmap(math_equal, [("\\sqrt{9}", "3"), ("\\sqrt{9}", "4")]) == [True, False]


def test_math_equal_batch_gives_math_equal_verdicts():
    preds = [p for p, _, _ in GRADER_CASES] + [None, "", "\\frac{1}{2", "0.5", "0.5", "\\sqrt{12}"]
    golds = [g for _, g, _ in GRADER_CASES] + [
        "1",
        "1",
        "1",
        "\\frac{1}{2}",
        "\\frac{1}{2}",
        "2\\sqrt{3}",
    ]
    serial = [math_equal(p, g) for p, g in zip(preds, golds)]
    assert serial[: len(GRADER_CASES)] == [
        expected for _, _, expected in GRADER_CASES
    ]  # not vacuous
    assert (
        math_equal_batch(preds, golds, workers=2) == serial
    )  # two worker processes, a repeated pair
    assert math_equal_batch(preds, golds, workers=1) == serial
    assert math_equal_batch([], []) == []
    with pytest.raises(ValueError, match="3 predictions but 2 gold"):
        math_equal_batch(["1", "2", "3"], ["1", "2"])
    with pytest.raises(ValueError, match="workers must be >= 1"):
        math_equal_batch(["1"], ["1"], workers=0)


def test_math_equal_batch_goes_on_after_a_stuck_pair():
    """The tower hangs its worker: it is False within the timeout, the worker is replaced, and the
    pairs queued behind it in the same pipelined batch are still graded."""
    preds = [TOWER, "\\sqrt{12}", "\\frac{2}{4}", "\\sqrt{8}"]
    golds = ["5", "2\\sqrt{3}", "0.5", "3"]
    start = time.monotonic()
    assert math_equal_batch(preds, golds, workers=1, timeout=1.0) == [False, True, True, False]
    assert time.monotonic() - start < 60  # did not hang (a generous bound on a shared machine)


# ---------------------------------------------------------------- countdown (hand-computed)
@pytest.mark.parametrize(
    "completion,target,nums,expected",
    [
        ("Let me think.\n<answer> 3 * 4 * (8 / 2) </answer>", 48, [3, 4, 8, 2], 1.0),
        ("<answer>(8 - 4 + 2) * 3</answer>", 48, [3, 4, 8, 2], 0.1),  # not all numbers
        ("<answer>3 * 8</answer>", 48, [3, 4, 8, 2], 0.1),
        ("<answer>24</answer>", 48, [3, 4, 8, 2], 0.1),
        ("<answer>3 * 4 * (8 / 2) = 48</answer>", 48, [3, 4, 8, 2], 0.1),  # '=' rejected
        ("<answer> 3 * 4 * (8 / 2) </answer>\nDone.", 48, [3, 4, 8, 2], 0.0),  # trailing line
        ("3 * 4 * (8 / 2)", 48, [3, 4, 8, 2], 0.0),  # no tags
        ("<answer>(98 - 12) / 2</answer>", 43, [98, 12, 2], 1.0),
        (
            "<answer>1</answer> <answer>(98 - 12) / 2</answer>",
            43,
            [98, 12, 2],
            1.0,
        ),  # last tag on the line
        ("<answer>(98 - 12) / 2</answer><|im_end|>", 43, [98, 12, 2], 1.0),
        ("<answer>2 * 2 * 4 * 3</answer>", 48, [3, 4, 8, 2], 0.1),  # 2 used twice, 8 unused
        ("<answer>3 * 4 * (8 / (2 - 2))</answer>", 48, [3, 4, 8, 2, 2], 0.1),  # division by zero
        ("<answer>9 ** 99 ** 98</answer>", 43, [9, 99, 98], 0.1),  # runaway power refused, no hang
        ("<answer>(3 + 4 + 8) ** 2</answer>", 48, [3, 4, 8, 2], 0.1),
        (
            "<answer>2 ** 4 * 3 + 8 - 8</answer>",
            48,
            [2, 4, 3, 8, 8],
            1.0,
        ),  # ** passes the whitelist
        ("<answer>3 * 4 * (8 / 2) + abs(0)</answer>", 48, [3, 4, 8, 2, 0], 0.1),  # names rejected
        ("<answer>03 * 4 * 8 / 2</answer>", 48, [3, 4, 8, 2], 0.1),  # int("03") == 3 but eval fails
        ("<answer>4(3) * 8 / 2</answer>", 48, [3, 4, 8, 2], 0.1),  # a call, TypeError in eval
    ],
)
def test_countdown_reward(completion, target, nums, expected):
    assert countdown_reward(completion, target, nums) == pytest.approx(expected)


def test_countdown_full_text_and_trl_wrapper():
    prompt = (
        "A conversation between User and Assistant. User: Using [3, 4, 8, 2] make 48. "
        "Assistant: Let me"
    )
    assert (
        countdown_reward(
            prompt + " solve\n<answer>3*4*(8/2)</answer>", 48, [3, 4, 8, 2], full_text=True
        )
        == 1.0
    )
    assert countdown_reward("<answer>3*4*(8/2)</answer>", 48, [3, 4, 8, 2], full_text=True) == 0.0
    assert (
        countdown_reward(
            "<answer>3*4*(8/2)</answer>", 48, [3, 4, 8, 2], format_score=0.0, score=2.0
        )
        == 2.0
    )
    rewards = countdown_reward_fn(
        ["p"] * 3,
        [
            "<answer>3*4*(8/2)</answer>",
            [{"role": "assistant", "content": "<answer>3*8</answer>"}],
            "none",
        ],
        target=[48, 48, 48],
        nums=[[3, 4, 8, 2]] * 3,
    )
    assert rewards == [1.0, 0.1, 0.0]


# ---------------------------------------------------------------- pass@k (hand-computed)
def test_pass_at_k():
    assert pass_at_k(8, 2, 4) == pytest.approx(1 - 15 / 70)
    assert pass_at_k(8, 2, 4) == pytest.approx(0.7857, abs=1e-4)
    assert pass_at_k(8, 0, 4) == 0.0
    assert pass_at_k(8, 5, 4) == 1.0  # n - c < k
    assert pass_at_k(10, 3, 1) == pytest.approx(0.3)
    n, c, k = 200, 17, 50
    assert pass_at_k(n, c, k) == pytest.approx(1 - math.comb(n - c, k) / math.comb(n, k))
    for bad in [(4, 5, 1), (4, 1, 0), (4, 1, 5), (4, -1, 1)]:
        with pytest.raises(ValueError):
            pass_at_k(*bad)


# ---------------------------------------------------------------- length rewards (hand-computed)
def test_kimi_length_reward():
    assert kimi_length_reward([100, 200, 300], [True, True, True]) == pytest.approx(
        [0.5, 0.0, -0.5]
    )
    wrong = kimi_length_reward([100, 200, 300], [False, False, False])
    assert wrong[0] == 0.0 and wrong[2] == pytest.approx(-0.5)
    assert kimi_length_reward([150, 150, 150], [True, False, True]) == [0.0, 0.0, 0.0]
    assert kimi_length_reward([], []) == []
    with pytest.raises(ValueError):
        kimi_length_reward([1, 2], [True])


def test_cosine_length_reward():
    assert cosine_length_reward(0, True, 1000) == pytest.approx(2.0)
    assert cosine_length_reward(500, True, 1000) == pytest.approx(1.5)
    assert cosine_length_reward(500, False, 1000) == pytest.approx(-5.0)
    assert cosine_length_reward(250, False, 1000) == pytest.approx(-8.536, abs=1e-3)
    assert cosine_length_reward(984, True, 1000) == -10.0
    assert cosine_length_reward(983, True, 1000) == pytest.approx(
        1.0 + 0.5 * (1 + math.cos(math.pi * 0.983))
    )
    # open-r1 style constants through the arguments
    assert cosine_length_reward(0, False, 1000, r_wrong=(-1.0, -0.5)) == pytest.approx(-1.0)


def test_dapo_overlong_penalty():
    assert dapo_overlong_penalty(700, 1000, 200) == 0.0
    assert dapo_overlong_penalty(800, 1000, 200) == 0.0
    assert dapo_overlong_penalty(900, 1000, 200) == pytest.approx(-0.5)
    assert dapo_overlong_penalty(1000, 1000, 200) == pytest.approx(-1.0)
    assert dapo_overlong_penalty(1100, 1000, 200) == -1.0
    assert dapo_overlong_penalty(18432, 16384 + 4096, 4096) == pytest.approx(-0.5)
    with pytest.raises(ValueError):
        dapo_overlong_penalty(10, 1000, 0)


def test_l1_length_reward():
    assert l1_length_reward(1500, True, 1000, mode="exact") == pytest.approx(0.85)
    assert l1_length_reward(2000, False, 1000, mode="exact") == pytest.approx(-0.30)
    assert l1_length_reward(1000, True, 1000, mode="max") == pytest.approx(0.5)
    assert l1_length_reward(500, True, 1000, mode="max") == pytest.approx(0.65)
    assert l1_length_reward(2000, True, 1000, mode="max") == pytest.approx(0.2)
    assert l1_length_reward(3000, True, 1000, mode="max") == 0.0
    assert l1_length_reward(500, False, 1000, mode="max") == 0.0
    assert l1_length_reward(-5000, True, 1000, mode="max") == 1.0  # clipped at 1
    with pytest.raises(ValueError):
        l1_length_reward(10, True, 10, mode="min")
