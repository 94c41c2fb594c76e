"""common/prm.py: the model-backed PRM on models built in code (scores pinned to hand-computed
values, and to a manual forward pass of the tiny LM and the tiny VLM), batching, bad flags, and the
rule-based stand-in."""

import math
from pathlib import Path

import pytest
import torch
from PIL import Image
from transformers import Qwen2Config, Qwen2ForCausalLM, Qwen2ForTokenClassification

from common.models import (
    TINY_LM_DEFAULTS,
    load_model,
    load_processor,
    load_tokenizer,
    make_tiny_lm,
    make_tiny_vlm,
)
from common.prm import ProcessRewardModel, RulePRM, split_steps
from common.sampling import render_prompt

QUESTION, STEPS = "Add 3 5", ["3 + 5 = 8", "The answer is 8."]
EPS, H = 1e-6, TINY_LM_DEFAULTS["hidden_size"]


def sigmoid_of_log(x: float) -> float:
    """sigmoid(ln x) as the hand-built models give it: RMSNorm's eps scales the logit by
    1 / sqrt(1 + H eps)."""
    z = math.log(x) / math.sqrt(1 + H * EPS)
    return 1 / (1 + math.exp(-z))


def _transparent(model, tok, vectors: dict[str, torch.Tensor]):
    """Every decoder layer adds nothing (o_proj, down_proj = 0), so the final hidden state at a
    token is RMSNorm(its embedding); every embedding is 0 except those in `vectors` (keyed by the
    last token of the text)."""
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "o_proj" in name or "down_proj" in name or "embed_tokens" in name:
                p.zero_()
        embed = model.get_input_embeddings().weight  # (V, H), tied to the LM head
        for text, vector in vectors.items():
            embed[tok(text, add_special_tokens=False).input_ids[-1]] = vector
    return model


@pytest.fixture(scope="module")
def hand_built(tmp_path_factory):
    """A causal LM and a token classifier where the score at every "ки" tag is known by hand:
    the tag's hidden state is RMSNorm(e0) ~ sqrt(H) e0 (H = 64), the "+" row of the tied LM head
    is ln(3)/sqrt(H) e0 and "-" is 0, so P(+) = sigmoid(ln 3) = 0.75; the classifier's label-1 row
    is ln(4)/sqrt(H) e0, so P(label 1) = 0.8. Anywhere else the hidden state is 0 (P = 0.5)."""
    folder = Path(tmp_path_factory.mktemp("hand_prm"))
    tok = load_tokenizer(make_tiny_lm())
    cfg = Qwen2Config(
        vocab_size=len(tok), pad_token_id=tok.pad_token_id, rms_norm_eps=EPS, **TINY_LM_DEFAULTS
    )
    hidden = cfg.hidden_size
    e0 = torch.zeros(hidden)
    e0[0] = 1.0
    torch.manual_seed(0)
    lm = _transparent(Qwen2ForCausalLM(cfg), tok, {"ки": e0, "+": math.log(3) / hidden**0.5 * e0})
    lm.save_pretrained(folder / "lm")
    tok.save_pretrained(folder / "lm")
    classifier = _transparent(Qwen2ForTokenClassification(cfg), tok, {"ки": e0})
    with torch.no_grad():
        classifier.score.weight.zero_()
        classifier.score.weight[1] = math.log(4) / hidden**0.5 * e0
        if classifier.score.bias is not None:
            classifier.score.bias.zero_()
    classifier.save_pretrained(folder / "classifier")
    tok.save_pretrained(folder / "classifier")
    return folder


def test_token_head_reads_p_good_at_each_tag(hand_built):
    prm = ProcessRewardModel(str(hand_built / "lm"))
    scores = prm.step_scores([QUESTION, "Add 1 1", "Add 2 2"], [STEPS, ["1 + 1 = 2"], []])
    assert len(scores) == 3 and [len(s) for s in scores] == [2, 1, 0]
    for s in scores[0] + scores[1]:
        assert s == pytest.approx(
            sigmoid_of_log(3), abs=1e-6
        )  # sigmoid(ln 3); any other position gives 0.5
    ids, tags = prm.encode(QUESTION, STEPS)
    text = prm.tok.decode(ids)
    assert text == "Add 3 5 3 + 5 = 8 ки\nThe answer is 8. ки"  # Math-Shepherd's layout
    assert tags[-1] == len(ids) - 1 and ids[tags[0] + 1] == prm.tok("\n").input_ids[0]


def test_classifier_head_reads_label_1(hand_built):
    prm = ProcessRewardModel(str(hand_built / "classifier"), head="classifier")
    scores = prm.step_scores([QUESTION], [STEPS])
    assert scores[0] == pytest.approx([sigmoid_of_log(4)] * 2, abs=1e-6)  # sigmoid(ln 4)


def test_trained_tiny_lm_matches_a_manual_forward_and_batching_does_not_matter():
    path = make_tiny_lm()
    questions = [QUESTION, "Add 1 1", "Add 9 9 9"]
    steps = [STEPS, ["garbage without newline"], ["9 + 9 = 18", "18 + 9 = 27", "The answer is 27."]]
    one_batch = ProcessRewardModel(path).step_scores(questions, steps)
    one_by_one = ProcessRewardModel(path, batch_size=1).step_scores(questions, steps)
    assert [len(s) for s in one_batch] == [2, 1, 3]
    for a, b in zip(one_batch, one_by_one):
        assert a == pytest.approx(b, abs=1e-5)  # right padding leaves every tag's score alone
    tok, model = load_tokenizer(path), load_model(path)
    ids = tok(QUESTION + " ").input_ids
    ids += tok("3 + 5 = 8 ки", add_special_tokens=False).input_ids
    ids += tok("\n", add_special_tokens=False).input_ids
    ids += tok("The answer is 8. ки", add_special_tokens=False).input_ids
    with torch.no_grad():
        logits = model(input_ids=torch.tensor([ids])).logits[0, -1]  # (V,) at the last tag
    plus, minus = tok("+").input_ids[0], tok("-").input_ids[0]
    expected = torch.softmax(logits[[plus, minus]], -1)[0].item()
    assert one_batch[0][1] == pytest.approx(expected, abs=1e-5)


def _pixel_values(prompts: list[dict], total_len: int) -> dict:
    return {"pixel_values": torch.cat([p["pixel_values"] for p in prompts])}  # (B, 3, H, W)


def test_vlm_prm_takes_processor_output_and_image_tensors():
    path = make_tiny_vlm()
    processor = load_processor(path)
    chat = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": QUESTION}]}]
    images = [Image.new("RGB", (32, 32), c) for c in ("red", "blue")]
    prompts = [
        processor(text=[render_prompt(processor, chat)], images=[im], return_tensors="pt")
        for im in images
    ]
    prm = ProcessRewardModel(path, vlm=True, extra_inputs=_pixel_values)
    scores = prm.step_scores(prompts, [STEPS, STEPS])
    model = load_model(path, vlm=True)
    for prompt, got in zip(prompts, scores):
        ids, tags = prm.encode(prompt, STEPS)
        with torch.no_grad():
            logits = model(
                input_ids=torch.tensor([ids]), pixel_values=prompt["pixel_values"]
            ).logits[0]  # (L, V)
        pair = logits[tags][:, prm.candidates].softmax(-1)[:, 0]  # (steps,)
        assert got == pytest.approx(pair.tolist(), abs=1e-5)
    assert scores[0] != pytest.approx(scores[1], abs=1e-6)  # the image reached the model


def test_bad_flags_are_named():
    path = make_tiny_lm()
    with pytest.raises(ValueError, match="--prm_good_token"):
        ProcessRewardModel(path, good="+-+-good")
    with pytest.raises(ValueError, match="--prm_head"):
        ProcessRewardModel(path, head="value")
    with pytest.raises(ValueError, match="--prm_step_tag"):
        ProcessRewardModel(path, step_tag="")
    with pytest.raises(ValueError, match="--prm_head classifier"):
        ProcessRewardModel(path, head="classifier", vlm=True)


def test_rule_prm_and_split_steps():
    assert split_steps(" a \n\n b\n") == ["a", "b"] and split_steps("a\n\nb", "\n\n") == ["a", "b"]

    def grade(prompt, steps):
        return [float(prompt in s) for s in steps]

    prm = RulePRM(grade)
    assert prm.step_scores(["x", "y"], [["x1", "2"], []]) == [[1.0, 0.0], []]
    assert "stand-in" in prm.name
