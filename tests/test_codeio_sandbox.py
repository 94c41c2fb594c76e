"""codeio.py against common/sandbox.py (issue #21 items 11-13): JSON feedback as in the release, one
main_solution call per candidate input, and sandbox failures kept out of feedback and scores."""

import json
from pathlib import Path

import pytest

import codeio
from codeio import check_answer, feedback_text, verify_input
from common.sandbox import ExecResult, Sandbox, probe_isolation

ROOT = Path(__file__).resolve().parents[1]
JOSEPHUS = (
    "def main_solution(n, m):\n    last = 0\n    for i in range(2, n + 1):\n"
    "        last = (last + m) % i\n    return last"
)


@pytest.fixture(scope="module")
def sandbox():
    with Sandbox(workers=1, timeout=5.0, allow_weaker=bool(probe_isolation()["missing"])) as box:
        yield box


def test_feedback_values_are_json_as_in_the_release():
    """hkust-nlp/CodeIO: src/check_io_pred_acc_mp.py (output) and src/codeio_utils.py,
    template_check_input (input) put json.dumps(value) into the message: true/null/"a"."""
    pair = {
        "input": {"word": "a'b", "flag": True, "none": None},
        "output": {"ok": False, "xs": [1.5]},
    }
    text = feedback_text("output", pair, {"status": "mismatch", "predicted": [True, None, "b"]})
    assert text == (
        '[Mismatch] Your output is not correct! Given the input {"word": "a\'b", "flag": true, '
        '"none": null}, your predicted output is [true, null, "b"] which is wrong!'
    )
    text = feedback_text(
        "input",
        pair,
        {"status": "AssertionError", "predicted": {"word": "x"}, "actual": {"ok": True, "xs": []}},
    )
    assert text == (
        '[Mismatch] Your input is not feasible! Given the output {"ok": false, "xs": [1.5]}, '
        'your predicted input is {"word": "x"}, which actually gets a wrong output as '
        '{"ok": true, "xs": []}'
    )


def test_each_candidate_input_runs_main_solution_once(sandbox):
    """The n-th call returns n: with one call per candidate the outputs are 1, 2, 3, ... (two calls
    per candidate would give 2, 4, 6, ...)."""
    counting = {
        "main_code": "calls = []\ndef main_solution(x):\n"
        "    calls.append(x)\n    return len(calls)",
        "generator_code": "def input_generator():\n    return {'x': random.randint(0, 10 ** 9)}",
    }
    args = codeio.Args(max_generator_calls=5, max_pairs=10, io_recheck=False)
    code, kwargs = codeio.io_job(counting, args, seed=3)
    result = sandbox.call(code, "collect_io_pairs", kwargs, timeout=30)
    assert result.ok, result
    assert [pair["output"] for pair in result.value["pairs"]] == [1, 2, 3, 4, 5]
    assert result.value["stats"] == {"kept": 5}
    # --io_recheck (default): the 5 kept inputs run once more (calls 6..10 disagree ->
    # nondeterministic)
    code, kwargs = codeio.io_job(counting, codeio.Args(max_generator_calls=5, max_pairs=10), seed=3)
    rechecked = sandbox.call(code, "collect_io_pairs", kwargs, timeout=30)
    assert [p["output"] for p in rechecked.value["pairs"]] == [1, 2, 3, 4, 5]
    assert rechecked.value["stats"] == {"kept": 5, "nondeterministic": 5}


class BrokenSandbox:
    """A sandbox whose worker died under every call: an infrastructure failure, not the
    program's."""

    def call(self, *args, **kwargs):
        return ExecResult(
            "sandbox_error", stderr="sandbox worker died or stopped answering; replaced"
        )


def test_sandbox_failure_is_neither_scored_nor_shown_to_the_model():
    check = verify_input(BrokenSandbox(), JOSEPHUS, {"n": 61, "m": 4}, 38)
    assert check["status"] == "sandbox_error"
    sample = {"kind": "input", "pair": {"input": {"n": 61, "m": 4}, "output": 38}}
    answer = check_answer(
        BrokenSandbox(),
        sample,
        {"main_code": JOSEPHUS},
        '{"input": {"n": 61, "m": 4}}',
        codeio.Args(),
    )
    assert (
        answer["status"] == "sandbox_error"
        and answer["correct"] is None
        and answer["feedback"] is None
    )
    assert "died" not in json.dumps(answer.get("feedback"))


def test_verify_and_revise_skip_sandbox_failures(tmp_path, monkeypatch):
    """The verify stage writes no record for a sandbox failure (a rerun retries it), the revise
    stage gives it no second turn, and the summary says how many there were and how isolated the
    code is."""
    out = tmp_path / "run"
    out.mkdir()
    pair = {"input": {"n": 61, "m": 4}, "output": 38}
    fn = {
        "name": "josephus",
        "origin": "unified",
        "status": "ok",
        "reason": "ok",
        "main_code": JOSEPHUS,
        "generator_code": "",
        "io_description": "",
        "problem": "",
    }
    (out / "rewrite.jsonl").write_text(json.dumps(fn) + "\n")
    (out / "io.jsonl").write_text(
        json.dumps(
            {"name": "josephus", "status": "ok", "reason": "ok", "pairs": [pair, pair], "stats": {}}
        )
        + "\n"
    )
    rows = [
        {"id": f"josephus:{kind}:0", "name": "josephus", "kind": kind, "pair": pair, "prompt": "p"}
        for kind in ("input", "output")
    ]
    (out / "prompts.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (out / "cot.jsonl").write_text(
        "".join(
            json.dumps(
                {
                    "id": r["id"],
                    "prompt": "p",
                    "response": '{"input": {"n": 5, "m": 2}}'
                    if r["kind"] == "input"
                    else '{"output": 37}',
                }
            )
            + "\n"
            for r in rows
        )
    )

    class Stub:  # the sandbox fails for every execution; the output check needs none
        def __init__(self, **kwargs):
            self.isolation = {"level": "weaker", "missing": ["bubblewrap"]}

        call = BrokenSandbox.call

        def close(self):
            pass

    monkeypatch.setattr(codeio, "Sandbox", Stub)
    monkeypatch.setattr(
        codeio, "generate", lambda sampler, messages, args, desc: ["turn 2"] * len(messages)
    )
    args = codeio.Args(output_dir=str(out), stages="verify,revise", sandbox_allow_weaker=True)
    summary = {row["stage"]: row for row in codeio.main(args)}
    verified = [json.loads(line) for line in (out / "verify.jsonl").read_text().splitlines()]
    assert [v["kind"] for v in verified] == ["output"]  # the input check hit the sandbox failure
    assert "1 sandbox errors" in summary["verify"]["notes"]
    assert summary["sandbox"]["notes"] == "isolation weaker, missing bubblewrap"
    revised = [json.loads(line) for line in (out / "revise.jsonl").read_text().splitlines()]
    assert [r["id"] for r in revised] == ["josephus:output:0"]
    assert "sandbox" not in revised[0]["feedback_1"] and "died" not in json.dumps(revised)
