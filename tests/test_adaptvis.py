"""adaptvis.py: the scaling rule pinned to hand-computed numbers, the intervention inside real
models (tiny LLaVA and a tiny random Qwen2-VL), the gate, the metrics, the hand-set toy model,
bad input, one end-to-end run and the learning test (the no-argument run's claims)."""

import copy
import json
import math
import sys
from types import SimpleNamespace

import pytest
import torch

import adaptvis as av

torch.set_num_threads(1)  # the tiny models are faster on one thread when the cores are shared


def softmax(xs):
    exps = [math.exp(x) for x in xs]
    return [e / sum(exps) for e in exps]


# ---------------------------------------------------------------- the scaling rule (hand-computed)


def attend(last_row_logits, n_image, alpha, rows=3):
    """The registered attention function on a fake layer whose last query row has these logits."""
    T = len(last_row_logits)
    key = torch.tensor(last_row_logits).reshape(
        1, 1, T, 1
    )  # head dim 1, query 1 on the last row: logits = keys
    query = torch.ones(1, 1, T, 1)
    query[0, 0, :-1, 0] = torch.linspace(0.3, -0.7, T - 1)  # other rows: arbitrary logits
    image_mask = torch.zeros(1, T, dtype=torch.bool)
    image_mask[0, T - n_image :] = True
    state = av.ImageAttentionScaling(
        image_token_id=0, base_implementation="eager", alpha=alpha, image_mask=image_mask, record=[]
    )
    layer = SimpleNamespace(num_key_value_groups=1, training=False, image_attention_scaling=state)
    causal = torch.full((T, T), torch.finfo(torch.float32).min).triu(1)[None, None]
    _, weights = av.scaled_image_attention_forward(layer, query, key, key, causal, scaling=1.0)
    return weights[0, 0]  # (T, T)


@pytest.mark.parametrize(
    "alpha, expected, mass",
    [
        (1.0, [0.1757, 0.1065, 0.4775, 0.1757, 0.0646], 0.7178),
        (2.0, [0.0404, 0.0245, 0.8106, 0.1097, 0.0148], 0.9352),
        (0.5, [0.2793, 0.1694, 0.2793, 0.1694, 0.1027], 0.5514),
    ],
)
def test_positive_logits_match_hand_computed(alpha, expected, mass):
    weights = attend([1.0, 0.5, 2.0, 1.0, 0.0], n_image=3, alpha=alpha)
    assert weights[-1].tolist() == pytest.approx(expected, abs=1e-4)
    assert weights[-1, 2:].sum().item() == pytest.approx(mass, abs=1e-4)
    assert torch.equal(
        weights[:-1], attend([1.0, 0.5, 2.0, 1.0, 0.0], n_image=3, alpha=1.0)[:-1]
    )  # other rows untouched


@pytest.mark.parametrize(
    "alpha, mass, ratio", [(1.0, 0.0474, 2.718), (2.0, 0.0150, 7.389), (0.5, 0.0879, 1.649)]
)
def test_negative_logits_scale_logits_not_probabilities(alpha, mass, ratio):
    row = attend([2.0, 1.0, -1.0, -2.0], n_image=2, alpha=alpha)[-1]
    assert row[2:].sum().item() == pytest.approx(mass, abs=1e-4)
    assert (row[2] / row[3]).item() == pytest.approx(ratio, abs=1e-3)
    by_hand = softmax([2.0, 1.0, -1.0 * alpha, -2.0 * alpha])
    assert row.tolist() == pytest.approx(by_hand, abs=1e-6)
    if alpha == 2.0:  # the wrong rule (scale probabilities, renormalise) raises the mass instead
        p = softmax([2.0, 1.0, -1.0, -2.0])
        wrong = (2 * p[2] + 2 * p[3]) / (p[0] + p[1] + 2 * p[2] + 2 * p[3])
        assert wrong > 0.0474 > row[2:].sum().item()


def test_scale_image_attention_rows_columns_and_per_row_alpha():
    logits = torch.randn(2, 3, 4, 4)
    mask = torch.tensor([[False, True, True, False], [True, False, False, False]])
    out = av.scale_image_attention(logits, mask, torch.tensor([2.0, 0.5]))
    assert torch.equal(out[:, :, :-1], logits[:, :, :-1])
    assert torch.equal(out[0, :, -1, [0, 3]], logits[0, :, -1, [0, 3]])
    assert torch.allclose(out[0, :, -1, 1:3], 2.0 * logits[0, :, -1, 1:3])
    assert torch.allclose(out[1, :, -1, 0], 0.5 * logits[1, :, -1, 0])
    assert torch.equal(av.scale_image_attention(logits, mask, 1.0), logits)
    assert torch.equal(
        av.scale_image_attention(logits, mask, 3.0, query_index=0)[:, :, 1:], logits[:, :, 1:]
    )


# ---------------------------------------------------------------- AdaptVis gate, metrics, split


def test_choose_alpha_at_below_above_threshold():
    assert av.choose_alpha(0.35, 0.4, 0.5, 1.5) == 0.5
    assert av.choose_alpha(0.62, 0.4, 0.5, 1.5) == 1.5
    assert av.choose_alpha(0.40, 0.4, 0.5, 1.5) == 1.5  # at the threshold: not below
    assert av.choose_alpha(0.3996, 0.4, 0.5, 1.5) == 1.5  # rounds to 0.40
    assert av.choose_alpha(0.3949, 0.4, 0.5, 1.5) == 0.5  # rounds to 0.39
    for bad in (float("nan"), 1.2, -0.1):
        with pytest.raises(ValueError, match="confidence"):
            av.choose_alpha(bad, 0.4, 0.5, 1.5)
    assert av.first_token_confidence([math.log(0.25), -3.0]) == pytest.approx(0.25)
    assert av.first_token_confidence([]) == 0.0


def test_whatsup_scoring():
    assert not av.whatsup_correct("In front of the table", "On")
    assert av.whatsup_correct("left", "Left")
    assert av.whatsup_correct("On the table.", "On")
    assert not av.whatsup_correct("right", "Left")
    assert av.whatsup_correct("It is behind the chair", "Behind")


def test_vsr_counts_and_harmonic_mean_of_tpr_tnr():
    tp, tn, fp, fn = av.vsr_counts(["Yes", "no", "yes it is", "No", "not sure"], [1, 0, 0, 1, 0])
    assert (tp, tn, fp, fn) == (1, 1, 2, 1)  # "not" is not a "no"
    m = av.vsr_metrics(tp, tn, fp, fn)
    assert m["acc"] == pytest.approx(0.4) and m["tpr"] == 0.5 and m["tnr"] == pytest.approx(1 / 3)
    assert m["f1"] == pytest.approx(2 * 0.5 * (1 / 3) / (0.5 + 1 / 3))
    assert av.vsr_metrics(0, 0, 3, 2)["f1"] == 0.0


def test_tune_test_split_is_fixed_20_80():
    tune, test = av.tune_test_split(100, 0.2, seed=1)
    assert (
        len(tune) == 20
        and len(test) == 80
        and not set(tune) & set(test)
        and sorted(tune + test) == list(range(100))
    )
    assert (tune, test) == av.tune_test_split(100, 0.2, seed=1)


def test_auroc_and_box_patches():
    assert av.auroc([0.9, 0.8, 0.3, 0.5], [1, 1, 0, 0]) == 1.0
    assert av.auroc([0.5, 0.2, 0.5], [1, 0, 0]) == 0.75  # one tie counts 1/2
    assert math.isnan(av.auroc([0.1, 0.2], [1, 1]))
    assert av.box_patch_mask([[0, 0, 16, 16]], (64, 64), 4).nonzero().flatten().tolist() == [0]
    assert av.box_patch_mask([[10, 10, 20, 20]], (64, 64), 4).nonzero().flatten().tolist() == [
        0,
        1,
        4,
        5,
    ]


def test_adaptvis_generate_routes_rows_by_confidence_and_grid_search():
    rows = [{"id": i, "subset": "mixed", "answer": "Left"} for i in range(4)]
    confidence = [0.2, 0.9, 0.39, 0.4]
    calls = []

    def fake_generate(batch, alpha):
        calls.append((alpha, [r["id"] for r in batch]))
        return [{"text": f"{alpha}", "confidence": confidence[r["id"]]} for r in batch]

    outs, alphas = av.adaptvis_generate(fake_generate, rows, 0.4, 0.5, 1.5)
    assert alphas == [0.5, 1.5, 0.5, 1.5] and [o["text"] for o in outs] == [
        "0.5",
        "1.5",
        "0.5",
        "1.5",
    ]
    assert calls == [(1.0, [0, 1, 2, 3]), (0.5, [0, 2]), (1.5, [1, 3])]
    by_alpha = {
        a: [
            {"text": "left" if a == 0.5 and i % 2 == 0 else "right", "confidence": confidence[i]}
            for i in range(4)
        ]
        for a in (0.5, 1.0, 1.5)
    }
    args = SimpleNamespace(thresholds=[0.3, 0.4], alpha_smooth_grid=[0.5], alpha_sharpen_grid=[1.5])
    scaling, best_alpha, adapt, best = av.grid_search(rows, by_alpha, args)
    assert scaling == {0.5: 0.5, 1.0: 0.0, 1.5: 0.0} and best_alpha == 0.5
    assert (
        adapt[(0.4, 0.5, 1.5)] == 0.5 and adapt[(0.3, 0.5, 1.5)] == 0.25 and best == (0.4, 0.5, 1.5)
    )


# ---------------------------------------------------------------- inside real models


@pytest.fixture(scope="module")
def llava():
    from common.models import load_processor, make_tiny_vlm
    from common.sampling import render_prompt
    from common.spatial_scenes import make_whatsup_rows

    path = make_tiny_vlm()
    processor = load_processor(path)
    rows = make_whatsup_rows(2, 0, "mixed")
    texts = [render_prompt(processor, av.messages(r)) for r in rows]
    texts[1] += " Be brief."  # different lengths: left padding is exercised
    enc = processor(
        text=texts, images=[r["image"] for r in rows], padding=True, return_tensors="pt"
    )
    return path, processor, enc


def load(path, attn):
    from common.models import load_model

    return load_model(path, vlm=True, attn_implementation=attn).eval()


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
def test_llava_alpha_one_reproduces_the_model_exactly(llava, attn):
    path, _, enc = llava
    reference = load(path, attn)
    model = load(path, attn)
    state = av.enable_image_attention_scaling(model)
    with torch.no_grad():
        expected = reference(**enc).logits
        assert torch.equal(model(**enc).logits, expected)
        if (
            attn == "eager"
        ):  # the scaled code path itself, at alpha = 1, is the eager attention bit for bit
            state.record = []
            assert torch.equal(model(**enc).logits, expected) and state.scaled_calls == 2


def test_llava_only_the_last_prefill_row_changes(llava):
    path, _, enc = llava
    model = load(path, "eager")
    state = av.enable_image_attention_scaling(model)
    with torch.no_grad():
        base = model(**enc, output_attentions=True)
        state.alpha = 2.0
        scaled = model(**enc, output_attentions=True)
    assert (state.image_mask.sum(-1) == 16).all()
    real = enc["attention_mask"][
        :, :-1
    ].bool()  # left-padding rows see every key (fully masked rows): ignore them
    assert torch.equal(scaled.logits[:, :-1][real], base.logits[:, :-1][real])
    assert not torch.allclose(scaled.logits[:, -1], base.logits[:, -1])
    for a, b in zip(scaled.attentions, base.attentions):
        assert torch.equal(a[:, :, :-1], b[:, :, :-1]) and not torch.allclose(
            a[:, :, -1], b[:, :, -1]
        )


def test_llava_decode_steps_are_untouched(llava):
    path, processor, enc = llava
    model = load(path, "sdpa")
    state = av.enable_image_attention_scaling(model)
    with torch.no_grad():
        state.alpha = 2.0
        prefill = model(**enc, use_cache=True)
        assert state.scaled_calls == 2  # one per layer
        step = {
            "input_ids": prefill.logits[:, -1:].argmax(-1),
            "attention_mask": torch.cat(
                [enc["attention_mask"], torch.ones(2, 1, dtype=torch.long)], 1
            ),
        }
        scaled_step = model(**step, past_key_values=copy.deepcopy(prefill.past_key_values)).logits
        state.alpha = 1.0
        plain_step = model(**step, past_key_values=copy.deepcopy(prefill.past_key_values)).logits
        assert torch.equal(scaled_step, plain_step) and state.scaled_calls == 2
        state.alpha = 2.0
        model.generate(**enc, max_new_tokens=4, do_sample=False)
        assert state.scaled_calls == 4  # generate: the prefill's two layers again, no decode step


def test_qwen2_vl_family():
    """A tiny random Qwen2-VL (M-RoPE, merged patches): same guarantees through the same hook."""
    from transformers import Qwen2VLConfig, Qwen2VLForConditionalGeneration

    cfg = Qwen2VLConfig(
        text_config=dict(
            vocab_size=64,
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=2,
            rope_parameters={"rope_type": "default", "mrope_section": [2, 1, 1], "rope_theta": 1e4},
            bos_token_id=0,
            eos_token_id=1,
            pad_token_id=0,
        ),
        vision_config=dict(
            depth=1,
            embed_dim=16,
            hidden_size=32,
            num_heads=2,
            patch_size=4,
            spatial_merge_size=2,
            temporal_patch_size=2,
            mlp_ratio=2,
        ),
        image_token_id=60,
        video_token_id=61,
        vision_start_token_id=62,
        vision_end_token_id=63,
    )
    torch.manual_seed(0)
    reference = Qwen2VLForConditionalGeneration(cfg).eval()
    model = copy.deepcopy(reference)
    state = av.enable_image_attention_scaling(model)
    ids = torch.tensor(
        [[5, 6, 62] + [60] * 4 + [63, 7, 8, 9]]
    )  # 4x4 patches -> 4 image tokens after the 2x2 merge
    inputs = dict(
        input_ids=ids,
        attention_mask=torch.ones_like(ids),
        pixel_values=torch.randn(16, 3 * 2 * 4 * 4),
        image_grid_thw=torch.tensor([[1, 4, 4]]),
        mm_token_type_ids=(ids == 60).long(),
    )
    with torch.no_grad():
        expected = reference(**inputs).logits
        assert torch.equal(model(**inputs).logits, expected)
        # the scaled (eager) path at alpha = 1, compared bit for bit (the model runs sdpa)
        state.record = []
        unscaled = model(**inputs).logits
        state.alpha, state.record = 0.5, None
        scaled = model(**inputs).logits
        assert state.image_mask.sum().item() == 4 and state.scaled_calls == 4
        assert torch.allclose(unscaled, expected, atol=1e-6)
        assert torch.equal(scaled[:, :-1], unscaled[:, :-1]) and not torch.allclose(
            scaled[:, -1], expected[:, -1]
        )
        model.generate(**inputs, max_new_tokens=3, do_sample=False)
        assert state.scaled_calls == 6


def test_bad_input(tmp_path):
    from common.models import load_model, make_tiny_lm

    with pytest.raises(ValueError, match="image_token_id"):
        av.enable_image_attention_scaling(load_model(make_tiny_lm()))
    prompts = tmp_path / "p.jsonl"
    prompts.write_text(
        json.dumps(
            {
                "question": "<image>\nUSER: Where is the cup in relation to the table? "
                "Answer with left, right, on or under.\nASSISTANT:",
                "answer": ["On"],
            }
        )
        + "\n"
    )
    args = SimpleNamespace(
        task="whatsup", data=str(prompts), annotations="", image_root=str(tmp_path)
    )
    with pytest.raises(ValueError, match="--annotations"):
        av.load_real_rows(args)
    (tmp_path / "a.json").write_text(json.dumps([{"image_path": "x.jpg"}, {"image_path": "y.jpg"}]))
    args.annotations = str(tmp_path / "a.json")
    with pytest.raises(ValueError, match="pair up by row"):
        av.load_real_rows(args)
    (tmp_path / "a.json").write_text(json.dumps([{"image_path": "x.jpg"}]))
    (row,) = av.load_real_rows(args)
    assert (
        row["question"]
        == "Where is the cup in relation to the table? Answer with left, right, on or under."
        and row["answer"] == "On"
    )
    assert row["image_path"] == str(tmp_path / "x.jpg") and row["options"] == [
        "left",
        "right",
        "on",
        "under",
    ]
    args.task = "nope"
    with pytest.raises(ValueError, match="--task"):
        av.load_real_rows(args)


def test_toy_model_reads_the_answer_off_its_attention():
    """The hand-set tiny LLaVA: its last-row image logits are SALIENCE * colour amount - OFFSET,
    text logits 0, and its greedy answer is the dominant axis of red minus blue position."""
    from common.models import load_model, load_processor
    from common.sampling import HFSampler
    from common.spatial_scenes import OFFSET, SALIENCE, build_toy_vlm, make_whatsup_rows

    path = av.toy_model(
        "adaptvis-toy", {}, build_toy_vlm, code=[av.toy_configs, av.set_toy_weights]
    )
    model = load_model(path, vlm=True).eval()
    processor = load_processor(path)
    state = av.enable_image_attention_scaling(model)
    rows = make_whatsup_rows(8, 3, "cluttered")
    enc = processor(
        text=[av.render_prompt(processor, av.messages(r)) for r in rows],
        images=[r["image"] for r in rows],
        padding=True,
        return_tensors="pt",
    )
    state.record = []
    with torch.no_grad():
        model(**enc)
    (weights,) = state.record  # (B, 2, K): one layer
    image = state.image_mask[0]
    assert image.sum() == 256
    logits = weights[0].log()  # log-softmax = logit - logsumexp: compare differences
    text_row = logits[:, ~image & enc["attention_mask"][0].bool()]
    assert torch.allclose(text_row, text_row[:, :1], atol=1e-4)  # every text token scores the same
    white = logits[:, image].min(-1).values - text_row[:, 0]
    assert white.tolist() == pytest.approx([-OFFSET, -OFFSET], abs=0.05)
    saturated = logits[:, image].max(-1).values - text_row[:, 0]
    assert saturated.tolist() == pytest.approx([SALIENCE - OFFSET] * 2, abs=0.05)
    state.record = None
    outs = HFSampler(model, processor).generate(
        [av.messages(r) for r in rows],
        temperature=0,
        max_new_tokens=5,
        images=[r["image"] for r in rows],
    )
    texts = [c.text for (c,) in outs]
    assert all(t.strip() in ("left", "right", "above", "below") for t in texts), texts
    assert sum(av.whatsup_correct(t, r["answer"]) for t, r in zip(texts, rows)) >= 6


def test_end_to_end_minimal(run_cmd, tmp_path):
    out = tmp_path / "run"
    cmd = [sys.executable, "adaptvis.py", "--toy_eval_rows", "20", "--max_new_tokens", "3"]
    cmd += ["--analysis_rows", "4", "--thresholds", "0.5", "--output_dir", str(out)]
    proc = run_cmd(cmd, timeout=240, env={"OMP_NUM_THREADS": "1"})
    assert "AdaptVis" in proc.stdout and "attention on" in proc.stdout
    summary = json.loads((out / "summary.json").read_text())
    assert set(summary["subsets"]) == {"controlled", "cluttered", "mixed"}
    methods = set(summary["subsets"]["mixed"]["test"])
    assert {"alpha=0.5", "alpha=1.0", "alpha=2.0", "ScalingVis", "AdaptVis"} <= methods
    assert [c["name"].split(":")[0] for c in summary["claims"]] == [
        "controlled",
        "cluttered",
        "mixed",
    ]
    assert len(summary["attention_analysis"]["image_mass"]["1.0"]) == 1  # one layer
    assert (out / "tuning_accuracy_vs_alpha.png").exists()
    generations = (out / "generations.jsonl").read_text()
    assert len(generations.splitlines()) == 20 * 6  # every row at every alpha, each once
    rerun = run_cmd(cmd + ["--resume"], timeout=240, env={"OMP_NUM_THREADS": "1"})
    assert (out / "generations.jsonl").read_text() == generations and "AdaptVis" in rerun.stdout
    again = json.loads((out / "summary.json").read_text())
    assert again["subsets"] == summary["subsets"]


def test_learning_claims_of_the_default_run(run_cmd, tmp_path):
    """The no-argument toy run: smoothing lifts the controlled scenes, sharpening the cluttered
    ones, and on the mixed set AdaptVis beats the best single fixed alpha (all on test splits)."""
    out = tmp_path / "run"
    run_cmd([sys.executable, "adaptvis.py", "--output_dir", str(out)], timeout=900)
    summary = json.loads((out / "summary.json").read_text())
    claims = {c["name"].split(":")[0]: c for c in summary["claims"]}
    assert all(c["holds"] for c in claims.values()), summary["claims"]
    subsets = summary["subsets"]
    assert subsets["controlled"]["best_alpha"] < 1 < subsets["cluttered"]["best_alpha"]
    for name in ("controlled", "cluttered"):
        assert claims[name]["result"] - claims[name]["baseline"] >= 0.05
    assert claims["mixed"]["result"] > claims["mixed"]["baseline"]
