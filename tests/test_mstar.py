"""mstar.py: the paper's rules pinned to hand-computed values, the shapes world, grading, the PRM
interface (stand-in and model-backed), optimizer state across iterations, the no-argument run's
claims, end to end, 2-process torchrun."""

import json
import random
import sys

import pytest
import torch

import mstar
from common import image_questions
from common.data import read_jsonl_tolerant
from common.models import make_tiny_vlm
from common.rewards import math_equal
from common.shapes_world import (
    grade_steps,
    in_eval_split,
    make_shapes_rows,
    misperceive,
    record_to_row,
    row_to_record,
    solve,
)
from common.train import Dist, read_checkpoint

# --------------------------------------------------------------------------------------------------
# Reward-Pass@2 and the top-2 selection (three queries of 16 samples, hand-computed)


def _query(correct_idx, top_idx, n=16):
    """16 samples; `correct_idx` are correct; the PRM ranks `top_idx` highest (in that order)."""
    correct = [i in correct_idx for i in range(n)]
    scores = [0.1 + 0.01 * i for i in range(n)]
    for rank, i in enumerate(top_idx):
        scores[i] = 0.99 - 0.01 * rank
    return correct, scores


def test_reward_pass_at_2_and_top2_selection():
    a = _query({5}, [5, 7])  # (a) one of the PRM top-2 is correct
    b = _query({0, 1, 2, 3, 4}, [9, 10])  # (b) 5 correct, the PRM top-2 are both wrong
    c = _query(set(), [0, 1])  # (c) nothing correct
    queries = [a, b, c]
    assert mstar.reward_pass_at_2(
        [q[0] for q in queries], [q[1] for q in queries]
    ) == pytest.approx(1 / 3)
    assert mstar.reward_pass_at_2([a[0]], [a[1]]) == 1.0
    assert mstar.reward_pass_at_2([b[0]], [b[1]]) == 0.0
    assert mstar.reward_pass_at_2([c[0]], [c[1]]) == 0.0
    # training data: (b) gives the 2 correct responses with the highest min-step R_p (4 then 3)
    assert mstar.select_responses(*b, rule="top2") == [4, 3]
    assert mstar.select_responses(*c, rule="top2") == []
    single = _query({11}, [0, 1])
    assert mstar.select_responses(*single, rule="top2") == [11]


def test_process_reward_is_min_step_score():
    assert mstar.process_reward([0.9, 0.2, 0.7]) == 0.2
    assert mstar.process_reward([]) == 0.0


def test_selection_variants():
    correct = [True, False, True, True, True, False]
    scores = [0.6, 0.99, 0.9, 0.6, 0.3, 0.95]
    assert mstar.select_responses(correct, scores, "top1") == [2]
    assert mstar.select_responses(correct, scores, "top2") == [
        2,
        0,
    ]  # tie 0.6: the earlier sample first
    assert mstar.select_responses(correct, scores, "top4") == [2, 0, 3, 4]
    assert mstar.select_responses(correct, scores, "threshold", threshold=0.6) == [
        2
    ]  # strictly above alpha
    assert mstar.select_responses(correct, scores, "threshold", threshold=0.5) == [0, 2, 3]
    assert mstar.select_responses(correct, scores, "all") == [0, 2, 3, 4]
    picked = mstar.select_responses(correct, scores, "random2", rng=random.Random(3))
    assert len(picked) == 2 and set(picked) <= {0, 2, 3, 4}
    seen = {
        tuple(mstar.select_responses(correct, scores, "random2", rng=random.Random(s)))
        for s in range(50)
    }
    assert len(seen) > 2  # really random, not the PRM's choice
    assert mstar.select_responses([True], [0.1], "random2", rng=random.Random(0)) == [0]
    with pytest.raises(ValueError, match="--selection"):
        mstar.select_responses(correct, scores, "top3")


def test_weighted_vote_pseudo_labels():
    # weights beat counts: "3" has 2 votes of 0.2, "4" one vote of 0.9
    assert mstar.weighted_vote(["3", "3", "4"], [0.2, 0.2, 0.9]) == "4"
    assert mstar.weighted_vote(["3", "3", "4"], [0.5, 0.5, 0.9]) == "3"
    assert (
        mstar.weighted_vote([None, "left", None], [1.0, 0.1, 1.0]) == "left"
    )  # unparsable answers do not vote
    assert mstar.weighted_vote(["b", "a", "a", "b"], [0.5, 0.5, 0.5, 0.5]) == "b"  # tie: first seen
    assert mstar.weighted_vote([None, None], [1.0, 1.0]) is None
    assert mstar.weighted_vote([], []) is None


def test_temperature_rule_and_ties():
    grid = [0.3, 0.4, 0.5, 0.6]
    assert mstar.choose_temperature(grid, [0.2, 0.5, 0.4, 0.1]) == 0.4
    assert mstar.choose_temperature(grid, [0.2, 0.5, 0.5, 0.5]) == 0.4  # tie: first in grid order
    assert mstar.choose_temperature([1.6, 0.3], [0.7, 0.7]) == 1.6  # grid order, not numeric order
    with pytest.raises(ValueError):
        mstar.choose_temperature(grid, [0.1])


def test_queries_for_iteration_cover_a_fraction_each():
    seen = [mstar.queries_for_iteration(10, 0.25, it, seed=0) for it in range(1, 5)]
    assert [len(s) for s in seen] == [3, 3, 3, 1]
    assert sorted(i for s in seen for i in s) == list(range(10))  # one pass covers every query once
    assert mstar.queries_for_iteration(10, 0.25, 5, 0) != seen[0]  # the next pass is reshuffled
    assert sorted(mstar.queries_for_iteration(7, 1.0, 3, 0)) == list(range(7))
    with pytest.raises(ValueError, match="--interval"):
        mstar.queries_for_iteration(10, 0.0, 1, 0)


# --------------------------------------------------------------------------------------------------
# shapes world, answers, PRMs, encoding


def test_shapes_world_deterministic_split_and_grader():
    rows = make_shapes_rows(40, seed=3)
    again = make_shapes_rows(40, seed=3)
    assert [r["question"] for r in rows] == [r["question"] for r in again]
    assert list(rows[0]["image"].getdata()) == list(again[0]["image"].getdata())
    assert rows[0]["image"].size == (64, 64)
    assert all(
        all(grade_steps(r, r["cot"])) for r in rows
    )  # the reference CoT passes its own grader
    assert all(r["cot"].endswith(f"The answer is {r['answer']}.") for r in rows)
    assert all(o["box"][2] > o["box"][0] for r in rows for o in r["objects"])
    assert (
        record_to_row(json.loads(json.dumps(row_to_record(rows[1]))))["question"]
        == rows[1]["question"]
    )
    train = make_shapes_rows(50, seed=1, split="train")
    evals = make_shapes_rows(20, seed=2, split="eval")
    assert not any(in_eval_split(r["objects"], r["question"]) for r in train)
    assert all(in_eval_split(r["objects"], r["question"]) for r in evals)
    for scene in ("single", "group"):
        assert all(all(grade_steps(r, r["cot"])) for r in make_shapes_rows(30, seed=0, scene=scene))
    triangle = [{"color": "red", "shape": "triangle", "row": 0, "col": 1, "box": [36, 4, 60, 28]}]
    assert solve(triangle, {"kind": "times", "k": 3, "scene": "single", "grid": 2}) == (
        "9",
        [
            "I see a red triangle at the top right.",
            "A triangle has 3 sides.",
            "3 x 3 = 9.",
            "The answer is 9.",
        ],
    )
    assert (
        solve(triangle, {"kind": "position", "axis": "x", "scene": "single", "grid": 2})[0]
        == "right"
    )
    seen_wrong = solve(
        misperceive(triangle, random.Random(1)), {"kind": "color", "scene": "single", "grid": 2}
    )
    assert grade_steps({"objects": triangle, "answer": "red"}, "\n".join(seen_wrong[1]))[0] is False
    with pytest.raises(ValueError, match="cannot make"):
        make_shapes_rows(2, kinds=("position",), min_objects=1, max_objects=1)
    with pytest.raises(ValueError, match="unknown question kind"):
        make_shapes_rows(2, kinds=("colour",))


def test_rule_prm_stand_in_checks_steps_not_the_label():
    row = next(r for r in make_shapes_rows(40, seed=5) if r["kind"] == "add")
    prm = image_questions.RuleStepPRM()
    good = row["cot"]
    wrong_answer_only = good.rsplit("The answer is", 1)[0] + "The answer is 99."
    lines = good.split("\n")
    bad_count = "\n".join([lines[0], lines[1].split(":")[0] + ": 9.", *lines[2:]])
    scores = prm.step_scores([row], [[good, wrong_answer_only, bad_count, "garbage ###"]])[0]
    rp = [mstar.process_reward(s) for s in scores]
    assert (
        rp[0] == 1.0 and rp[1] == 1.0
    )  # it never sees the label: the final answer line is not a step
    assert rp[2] == 0.0 and rp[3] == 0.5
    with pytest.raises(ValueError, match="--prm"):
        prm.step_scores([{"question": "q", "answer": "1"}], [["x"]])


def test_grading_in_one_batch_equals_serial_grading():
    preds = ["2", "2.0", "left", "Left", "right", None, "", "\\frac{1}{2}", "0.5", "7", "x+1"]
    golds = ["2", "2", "left", "left", "left", "2", "2", "0.5", "\\frac{1}{2}", "3+4", "1+x"]
    serial = []
    for p, g in zip(preds, golds):
        quick = image_questions.quick_match(p, g)
        serial.append(math_equal(p, g) if quick is None else quick)
    assert serial == [True, True, True, True, False, False, False, True, True, True, True]
    assert image_questions.grade(preds, golds) == serial
    assert image_questions.quick_match("right", "left") is False  # words never reach math-verify
    assert image_questions.quick_match("7", "3+4") is None  # expressions do
    assert image_questions.split_steps("a\n\n b \nThe answer is 3.") == ["a", "b"]
    assert mstar.extract_answer("Count: 2.\nThe answer is 2.") == "2"


def test_baseline_budget_matches_the_continuous_run():
    # 8 iterations x 8 steps at 25%: 2 full passes over the queries, 64 SFT steps
    assert mstar.baseline_budget(8, 8, 0.25) == (2, 32)
    assert mstar.baseline_budget(16, 625, 0.25) == (4, 2500)
    assert mstar.baseline_budget(2, 3, 1.0) == (2, 3)
    assert mstar.baseline_budget(1, 4, 0.25) == (1, 4)


def test_every_rank_samples_its_own_share():
    items = list(range(5))
    first, n0 = mstar.shard(items, Dist(rank=0, world_size=2))
    second, n1 = mstar.shard(items, Dist(rank=1, world_size=2))
    assert (first, n0) == ([0, 1, 2], 3)
    assert (second, n1) == ([3, 4, 0], 2)  # padded to as many forwards, the copy dropped after


def test_collate_vision_passes_every_processor_output():
    # LLaVA-style: pixel_values (1, 3, H, W) per image;
    # Qwen2-VL-style: flattened patches + grid + per-token ids
    llava = [
        {
            "input_ids": torch.ones(1, n, dtype=torch.long),
            "attention_mask": torch.ones(1, n),
            "pixel_values": torch.rand(1, 3, 8, 8),
        }
        for n in (3, 5)
    ]
    out = image_questions.collate_vision(llava, 7)
    assert set(out) == {"pixel_values"} and out["pixel_values"].shape == (2, 3, 8, 8)
    qwen = [
        {
            "input_ids": torch.ones(1, n, dtype=torch.long),
            "attention_mask": torch.ones(1, n),
            "pixel_values": torch.rand(p, 12),
            "image_grid_thw": torch.tensor([[1, 2, p // 2]]),
            "mm_token_type_ids": torch.ones(1, n, dtype=torch.long),
        }
        for n, p in ((3, 4), (5, 8))
    ]
    out = image_questions.collate_vision(qwen, 7)
    assert out["pixel_values"].shape == (12, 12) and out["image_grid_thw"].shape == (2, 3)
    assert out["mm_token_type_ids"].shape == (2, 7) and out["mm_token_type_ids"][0].tolist() == [
        1,
        1,
        1,
        0,
        0,
        0,
        0,
    ]


def test_model_backed_prm_interface_with_tiny_vlm():
    args = mstar.Args()
    prm = image_questions.ModelPRM(make_tiny_vlm(), args, "cpu")
    rows = make_shapes_rows(2, seed=0)
    scores = prm.step_scores(rows, [[rows[0]["cot"], "one line", ""], [rows[1]["cot"]]])
    assert [len(s) for s in scores[0]] == [len(image_questions.split_steps(rows[0]["cot"])), 1, 0]
    assert all(0.0 < x < 1.0 for group in scores for resp in group for x in resp)


def test_bad_flags_fail_early(tmp_path):
    with pytest.raises(ValueError, match="--training"):
        mstar.main(mstar.Args(training="star", output_dir=str(tmp_path)))
    with pytest.raises(ValueError, match="--selection"):
        mstar.main(mstar.Args(selection="best", output_dir=str(tmp_path)))
    with pytest.raises(ValueError, match="--pseudo_label_share"):
        mstar.main(mstar.Args(pseudo_label_share=1.0, output_dir=str(tmp_path)))


# --------------------------------------------------------------------------------------------------
# optimizer state across iterations, learning, end to end, torchrun

TINY = dict(
    num_train=8,
    num_unlabeled=4,
    num_val=2,
    num_test=4,
    samples_per_query=2,
    eval_k=2,
    warmup_samples=1,
    warmup_steps=1,
    num_iterations=2,
    steps_per_iteration=2,
    temperature_grid="0.5,1.0",
    max_new_tokens=6,
    batch_size=4,
    val_samples_per_query=2,
    baseline="none",
)


@pytest.mark.parametrize("training", ["continuous", "iterative_rft", "rest_em"])
def test_optimizer_state_across_iterations(tmp_path, monkeypatch, training):
    # every response counts as correct so each iteration trains (the untrained tiny VLM answers
    # nothing right)
    monkeypatch.setattr(mstar, "grade", lambda preds, golds: [True] * len(preds))
    loaded = []
    real_load = mstar.load_checkpoint
    monkeypatch.setattr(
        mstar,
        "load_checkpoint",
        lambda path, *a, **k: loaded.append(str(path)) or real_load(path, *a, **k),
    )
    mstar.main(
        mstar.Args(model=make_tiny_vlm(), output_dir=str(tmp_path), training=training, **TINY)
    )
    optim = read_checkpoint(tmp_path / "ckpt")["optim"]
    sched = torch.load(tmp_path / "ckpt" / "scheduler.pt", weights_only=False)
    steps = {int(s["step"]) for s in optim["state"].values()}
    if training == "continuous":  # one AdamW and one schedule across both iterations (2 x 2 steps)
        assert steps == {4} and sched["last_epoch"] == 4
    else:  # a fresh optimizer and schedule each iteration
        assert steps == {2} and sched["last_epoch"] == 2
    # ReST-EM restarts every iteration from the warm-up weights; the others continue
    assert loaded == ([str(tmp_path / "ckpt_warmup")] * 2 if training == "rest_em" else [])
    records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["iteration"] for r in records] == [-1, 0, 1, 2]
    assert all(r["samples_kept"] > 0 for r in records[2:])


def test_baseline_in_a_second_process_equals_the_baseline_after(tmp_path):
    """The baseline in a second process (the CPU default) gives the numbers it gives run after the
    continuous run in the same process: it starts from the warm-up checkpoint and the seed."""
    model = make_tiny_vlm()
    tables = []
    for beside in (True, False):
        out = tmp_path / str(beside)
        flags = {**TINY, "baseline": "iterative_rft", "baseline_process": beside}
        tables.append(mstar.main(mstar.Args(model=model, output_dir=str(out), **flags)))
        assert (out / "iterative_rft" / "log.txt").exists() == beside
    assert [r["stage"] for r in tables[0]][-2:] == ["iter 2", "iterative_rft 1"]  # 1 x 4 steps
    assert tables[0] == tables[1]


def test_resume_skips_done_iterations(tmp_path, run_cmd):
    flags = [f"--{k}={v}" for k, v in TINY.items()] + [
        "--model",
        make_tiny_vlm(),
        "--output_dir",
        str(tmp_path),
    ]
    run_cmd([sys.executable, "mstar.py", *flags, "--num_iterations", "1"], timeout=300)
    (tmp_path / "samples" / "iter002.jsonl").write_text(
        '{"query_id": "shapes-1-3", "respon'
    )  # killed mid-record
    proc = run_cmd([sys.executable, "mstar.py", *flags, "--resume"], timeout=300)
    assert "resumed after iteration 1" in proc.stdout
    assert (
        len(read_jsonl_tolerant(tmp_path / "samples" / "iter002.jsonl")) == 2
    )  # 25% of 8 queries, fragment dropped
    records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["iteration"] for r in records] == [-1, 0, 1, 2]
    assert (tmp_path / "curves.png").exists() and (tmp_path / "samples" / "iter002.jsonl").exists()


def test_no_argument_run_holds_its_claims(tmp_path):
    """The no-argument run (cached toy base, built on first use): continuous self-evolving beats
    the warm-up model and iterative RFT on the same budget (greedy accuracy, 96 test queries).
    Measured (seed 0, one thread per process, twice with the same numbers): warm-up 0.042 ->
    0.354 after 8 continuous iterations; iterative RFT (2 iterations x 32 steps at interval 100%,
    in a second process) 0.188."""
    mstar.main(mstar.Args(output_dir=str(tmp_path)))
    claims = json.loads((tmp_path / "summary.json").read_text())["claims"]
    assert [c["name"] for c in claims] == [
        "continuous self-evolving improves on the warm-up",
        "continuous beats iterative_rft, same budget",
    ]
    warm_up, baseline = claims
    if abs(warm_up["baseline"] - 4 / 96) > 1e-6:  # not the CPU model the figures were measured on
        pytest.xfail(
            f"warm-up accuracy {warm_up['baseline']:.3f}, not the measured 0.042: this CPU's float "
            "kernels send the toy down another trajectory, where the claims do not hold "
            f"(docs/mstar.md): {claims}"
        )
    assert all(c["holds"] for c in claims), claims
    assert warm_up["result"] - warm_up["baseline"] > 0.2  # measured 0.312
    assert baseline["result"] - baseline["baseline"] > 0.1  # measured 0.167


def test_torchrun_two_processes(tmp_path, run_cmd, torchrun_cmd):
    """FSDP2 over 2 gloo ranks with the toy base (some answers are right, every stage trains)."""
    flags = [
        f"--{k}={v}"
        for k, v in {
            **TINY,
            "samples_per_query": 4,
            "max_new_tokens": 48,
            "warmup_selection": "all",
        }.items()
    ]
    proc = run_cmd(
        [
            *torchrun_cmd,
            "mstar.py",
            *flags,
            "--output_dir",
            str(tmp_path),
            "--pseudo_label_share",
            "0.5",
        ],
        timeout=300,
    )
    assert "| iter 2" in proc.stdout
    records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert sum(r.get("samples_kept", 0) for r in records) > 0
    optim = read_checkpoint(tmp_path / "ckpt")["optim"]
    # continuous: 2 iterations x 2 steps, one AdamW
    assert {int(s["step"]) for s in optim["state"].values()} == {4}


class _Qwen2VLImageOnlyProcessor:
    """What Qwen2VLProcessor does for images (its constructor also wants a video processor, which
    needs torchvision, not a dependency here): the image processor's flattened patches +
    image_grid_thw, each <|image_pad|> expanded to one token per merged patch, and
    mm_token_type_ids marking them."""

    def __init__(self, tokenizer, image_processor, template):
        self.tokenizer, self.image_processor, self.chat_template = (
            tokenizer,
            image_processor,
            template,
        )

    def apply_chat_template(self, messages, **kwargs):
        return self.tokenizer.apply_chat_template(
            messages, chat_template=self.chat_template, **kwargs
        )

    def __call__(self, text, images, return_tensors="pt", padding=False):
        vision = self.image_processor(images, return_tensors="pt")
        merged = (vision["image_grid_thw"].prod(-1) // self.image_processor.merge_size**2).tolist()
        text = [t.replace("<|image_pad|>", "<|image_pad|>" * n) for t, n in zip(text, merged)]
        enc = self.tokenizer(text, return_tensors="pt", padding=padding or len(text) > 1)
        image_id = self.tokenizer.convert_tokens_to_ids("<|image_pad|>")
        return {**enc, **vision, "mm_token_type_ids": (enc["input_ids"] == image_id).long()}


def test_qwen2_vl_family_on_a_data_file(tmp_path, monkeypatch):
    """A tiny random Qwen2-VL (M-RoPE, merged patches) through warm-up, sampling, training and
    checkpoints on a JSONL file with image paths, scored by a model-backed PRM (the same model)."""
    from transformers import (
        Qwen2VLConfig,
        Qwen2VLForConditionalGeneration,
        Qwen2VLImageProcessorPil,
    )

    from common.models import make_tokenizer

    tok = make_tokenizer()
    tok.add_special_tokens(
        {
            "additional_special_tokens": [
                "<|im_start|>",
                "<|im_end|>",
                "<image>",
                "<|vision_start|>",
                "<|image_pad|>",
                "<|vision_end|>",
            ]
        }
    )
    ids = tok.convert_tokens_to_ids
    cfg = Qwen2VLConfig(
        text_config=dict(
            vocab_size=len(tok),
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=2,
            rope_parameters={"rope_type": "default", "mrope_section": [2, 1, 1], "rope_theta": 1e4},
            eos_token_id=tok.eos_token_id,
            pad_token_id=tok.pad_token_id,
        ),
        vision_config=dict(
            depth=1,
            embed_dim=16,
            hidden_size=32,
            num_heads=2,
            patch_size=8,
            spatial_merge_size=2,
            temporal_patch_size=2,
            mlp_ratio=2,
        ),
        image_token_id=ids("<|image_pad|>"),
        vision_start_token_id=ids("<|vision_start|>"),
        vision_end_token_id=ids("<|vision_end|>"),
    )
    torch.manual_seed(0)
    Qwen2VLForConditionalGeneration(cfg).save_pretrained(tmp_path / "qwen2vl")
    template = tok.chat_template.replace(
        "'<image>'", "'<|vision_start|><|image_pad|><|vision_end|>'"
    )
    processor = _Qwen2VLImageOnlyProcessor(
        tok,
        Qwen2VLImageProcessorPil(
            min_pixels=32 * 32, max_pixels=32 * 32, patch_size=8, merge_size=2
        ),
        template,
    )
    monkeypatch.setattr(image_questions, "load_processor", lambda path: processor)
    # the random model answers nothing right
    monkeypatch.setattr(mstar, "grade", lambda preds, golds: [True] * len(preds))
    (tmp_path / "img").mkdir()
    with open(tmp_path / "data.jsonl", "w") as f:
        for r in make_shapes_rows(14, seed=0):
            r["image"].save(tmp_path / "img" / f"{r['id']}.png")
            f.write(
                json.dumps({"q": r["question"], "a": r["answer"], "img": f"{r['id']}.png"}) + "\n"
            )
    model = str(tmp_path / "qwen2vl")
    table = mstar.main(
        mstar.Args(
            **{**TINY, "num_unlabeled": 0},
            model=model,
            prm=model,
            data=str(tmp_path / "data.jsonl"),
            image_root=str(tmp_path / "img"),
            question_field="q",
            answer_field="a",
            image_field="img",
            output_dir=str(tmp_path / "run"),
        )
    )
    assert [row["stage"] for row in table] == ["base", "warm-up", "iter 1", "iter 2"]
    assert all(row["samples_kept"] > 0 for row in table[1:])
    record = json.loads(
        (tmp_path / "run" / "samples" / "iter001.jsonl").read_text().splitlines()[0]
    )
    assert (
        0 < record["prm"][0] < 1
    )  # model-backed PRM: min over steps of P("+") / (P("+") + P("-"))
    with pytest.raises(FileNotFoundError, match="row 0: image .*nowhere.png"):
        (tmp_path / "bad.jsonl").write_text(
            json.dumps({"q": "?", "a": "1", "img": "nowhere.png"}) + "\n" * 2
        )
        image_questions.load_splits(
            mstar.Args(
                data=str(tmp_path / "bad.jsonl"),
                num_train=0,
                num_val=0,
                num_test=0,
                question_field="q",
                answer_field="a",
                image_field="img",
            )
        )


def test_train_steps_micro_batches_equal_unsplit_step(tmp_path):
    from _micro import assert_micro_batching_matches

    from common.models import load_processor

    path = make_tiny_vlm()
    processor = load_processor(path)
    rows = make_shapes_rows(5, seed=0, split="train")
    examples = [
        (r, r["cot"][: 10 * (i + 1)]) for i, r in enumerate(rows)
    ]  # responses of different lengths

    def step(model, optimizer, micro):
        args = mstar.Args(batch_size=5, micro_batch_size=micro, max_grad_norm=1e9)
        sched = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda _: 1.0)
        run = image_questions.Run(args, Dist(), model, processor, None, None, tmp_path, tmp_path)
        image_questions.train_steps(run, optimizer, sched, examples, 1, seed=0)

    assert_micro_batching_matches(path, step, micro_batch_size=2, vlm=True)
