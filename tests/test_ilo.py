"""ilo.py: ILO on hand-built neighbourhoods (spec check 11), ties, pooling, freezing, end to end."""

import math
import sys

import pytest
import torch

from ilo import freeze_first_layers, ilo_scores, knn_indices, mean_pooled_states
from common.models import load_model, load_tokenizer, make_tiny_lm


def unit(deg):
    return [math.cos(math.radians(deg)), math.sin(math.radians(deg))]


def spec_toy():
    """Spec check 11: unit vectors at these angles (degrees), languages A, B, C."""
    angles = {"A": [0, 50, 120], "B": [8, 57, 200], "C": [131, 250, 262]}
    vectors = torch.tensor([unit(d) for lang in "ABC" for d in angles[lang]])
    return vectors, [lang for lang in "ABC" for _ in range(3)]


def test_spec_neighbourhoods_and_scores_t2():
    x, langs = spec_toy()
    nn = knn_indices(x, k=2)
    names = [[langs[j] for j in row] for row in nn.tolist()]
    # A -> [B,A], [B,B], [C,B]; B -> [A,A], [A,B], [C,C]; C -> [A,B], [C,B], [C,B] (as sets per point)
    expected = [["B", "A"], ["B", "B"], ["C", "B"], ["A", "A"], ["A", "B"], ["C", "C"], ["A", "B"], ["C", "B"], ["C", "B"]]
    assert [sorted(n) for n in names] == [sorted(e) for e in expected]
    s = ilo_scores(x, langs, k=2, t=2)
    assert s["A"] == pytest.approx({"bridge": 1 / 3, "reach": 1.0, "ilo": 0.5})
    assert s["B"] == pytest.approx({"bridge": 0.0, "reach": 1.0, "ilo": 0.0})
    assert s["C"] == pytest.approx({"bridge": 1 / 3, "reach": 1.0, "ilo": 0.5})


def test_spec_scores_t1_all_one():
    x, langs = spec_toy()
    assert all(v["ilo"] == pytest.approx(1.0) for v in ilo_scores(x, langs, k=2, t=1).values())


def test_language_that_reaches_no_other_gets_zero():
    # two tight, far-apart clusters: A alone around 0 deg, B and C mixed around 180 deg
    x = torch.tensor([unit(d) for d in (0, 1, 2, 180, 181, 182, 183)])
    langs = ["A", "A", "A", "B", "C", "B", "C"]
    s = ilo_scores(x, langs, k=2, t=1)
    assert s["A"] == {"bridge": 0.0, "reach": 0.0, "ilo": 0.0}
    assert s["B"]["reach"] == pytest.approx(0.5) and s["B"]["bridge"] == 1.0  # reaches C only, of {A, C}


def test_ties_broken_by_lower_index_deterministically():
    x = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.0, 1.0], [0.0, 1.0], [0.0, 1.0]])  # point 0 equidistant to 1..4
    assert knn_indices(x, k=2)[0].tolist() == [1, 2]
    assert knn_indices(x, k=2, chunk=2).tolist() == knn_indices(x, k=2).tolist()


def test_vectorised_matches_a_plain_loop_on_random_data():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(90, 16, generator=g)
    nn = knn_indices(x, k=5, chunk=32)
    xn = torch.nn.functional.normalize(x, dim=-1)
    for i in range(0, 90, 7):
        d = 1 - xn @ xn[i]
        d[i] = math.inf
        assert set(nn[i].tolist()) == set(torch.argsort(d)[:5].tolist())


@pytest.fixture(scope="module")
def tiny():
    path = make_tiny_lm()
    return load_model(path), load_tokenizer(path)


def test_padding_does_not_change_pooled_vectors(tiny):
    model, tok = tiny
    sentences = ["a short one .", "a much longer sentence with many more words in it ."]
    batched = mean_pooled_states(model, tok, sentences, batch_size=2)  # (L+1, 2, D)
    single = torch.cat([mean_pooled_states(model, tok, [s], batch_size=1) for s in sentences], dim=1)
    assert batched.shape == (model.config.num_hidden_layers + 1, 2, model.config.hidden_size)
    assert torch.allclose(batched, single, atol=1e-5)


def test_freezing_freezes_exactly_the_first_blocks_and_the_rest_trains():
    model = load_model(make_tiny_lm())  # 2 blocks
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    frozen = freeze_first_layers(model, 1, "paper")
    assert "model.embed_tokens.weight" in frozen and all(n.startswith(("model.embed_tokens", "model.layers.0.")) for n in frozen)
    ids = torch.randint(5, 300, (2, 8))
    model(input_ids=ids, labels=ids).loss.backward()
    torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1).step()
    for n, p in model.named_parameters():
        if n in frozen:
            assert p.grad is None and torch.equal(p, before[n]), n
    assert not torch.equal(model.model.layers[1].mlp.up_proj.weight, before["model.layers.1.mlp.up_proj.weight"])
    # the released code's rule: blocks 0..N, plus final norm and lm_head
    code = freeze_first_layers(load_model(make_tiny_lm()), 0, "code")
    assert any(n.startswith("model.layers.0.") for n in code) and "model.norm.weight" in code
    assert not any(n.startswith("model.layers.1.") for n in code)


def test_end_to_end_minimal(tmp_path, run_cmd):
    out = tmp_path / "ilo"
    proc = run_cmd([sys.executable, "ilo.py", "--output_dir", str(out), "--max_sentences", "20", "--finetune_steps", "4",
                    "--ckpt_every", "2", "--k", "3", "--t", "2"])
    assert "Mean ILO over languages" in proc.stdout
    assert (out / "ilo_vs_layer.png").exists() and (out / "ilo_per_layer.csv").exists()
    # resume: the checkpoints at step 4 exist, so a resumed run fine-tunes nothing more and still reports
    proc = run_cmd([sys.executable, "ilo.py", "--output_dir", str(out), "--max_sentences", "20", "--finetune_steps", "4",
                    "--k", "3", "--t", "2", "--resume"])
    assert "resumed at step 4" in proc.stdout


def test_finetune_backward_micro_batches_equal_unsplit_step():
    from _micro import assert_micro_batching_matches
    from ilo import finetune_backward

    path = make_tiny_lm()
    tok = load_tokenizer(path)
    enc = tok(["la " * (i + 1) + tok.eos_token for i in range(5)], return_tensors="pt", padding=True, padding_side="right")

    def step(model, optimizer, micro):
        finetune_backward(model, enc["input_ids"], enc["attention_mask"], micro)
        optimizer.step()

    assert_micro_batching_matches(path, step, micro_batch_size=2)
