"""ilo.py: ILO on hand-built neighbourhoods, ties, pooling, freezing, held-out split, claims."""

import json
import math
import sys

import pytest
import torch

from common.models import load_model, load_tokenizer, make_tiny_lm
from ilo import (
    count_cut,
    freeze_first_layers,
    ilo_claims,
    ilo_scores,
    knn_indices,
    mean_pooled_states,
    split_held_out,
)


def unit(deg):
    return [math.cos(math.radians(deg)), math.sin(math.radians(deg))]


def angle_toy():
    """Hand-computed example: unit vectors at these angles (degrees), languages A, B, C."""
    angles = {"A": [0, 50, 120], "B": [8, 57, 200], "C": [131, 250, 262]}
    vectors = torch.tensor([unit(d) for lang in "ABC" for d in angles[lang]])
    return vectors, [lang for lang in "ABC" for _ in range(3)]


def test_hand_computed_neighbourhoods_and_scores_t2():
    x, langs = angle_toy()
    nn = knn_indices(x, k=2)
    names = [[langs[j] for j in row] for row in nn.tolist()]
    # A -> [B,A], [B,B], [C,B]; B -> [A,A], [A,B], [C,C]; C -> [A,B], [C,B], [C,B] (sets)
    expected = [
        ["B", "A"],
        ["B", "B"],
        ["C", "B"],
        ["A", "A"],
        ["A", "B"],
        ["C", "C"],
        ["A", "B"],
        ["C", "B"],
        ["C", "B"],
    ]
    assert [sorted(n) for n in names] == [sorted(e) for e in expected]
    s = ilo_scores(x, langs, k=2, t=2)
    assert s["A"] == pytest.approx({"bridge": 1 / 3, "reach": 1.0, "ilo": 0.5})
    assert s["B"] == pytest.approx({"bridge": 0.0, "reach": 1.0, "ilo": 0.0})
    assert s["C"] == pytest.approx({"bridge": 1 / 3, "reach": 1.0, "ilo": 0.5})


def test_hand_computed_scores_t1_all_one():
    x, langs = angle_toy()
    assert all(v["ilo"] == pytest.approx(1.0) for v in ilo_scores(x, langs, k=2, t=1).values())


def test_language_that_reaches_no_other_gets_zero():
    # two tight, far-apart clusters: A alone around 0 deg, B and C mixed around 180 deg
    x = torch.tensor([unit(d) for d in (0, 1, 2, 180, 181, 182, 183)])
    langs = ["A", "A", "A", "B", "C", "B", "C"]
    s = ilo_scores(x, langs, k=2, t=1)
    assert s["A"] == {"bridge": 0.0, "reach": 0.0, "ilo": 0.0}
    assert (
        s["B"]["reach"] == pytest.approx(0.5) and s["B"]["bridge"] == 1.0
    )  # reaches C only, of {A, C}


def test_ties_broken_by_lower_index_deterministically():
    x = torch.tensor(
        [[1.0, 0.0], [0.0, 1.0], [0.0, 1.0], [0.0, 1.0], [0.0, 1.0]]
    )  # point 0 equidistant to 1..4
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
    single = torch.cat(
        [mean_pooled_states(model, tok, [s], batch_size=1) for s in sentences], dim=1
    )
    assert batched.shape == (model.config.num_hidden_layers + 1, 2, model.config.hidden_size)
    assert torch.allclose(batched, single, atol=1e-5)


def test_freezing_freezes_exactly_the_first_blocks_and_the_rest_trains():
    model = load_model(make_tiny_lm())  # 2 blocks
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    frozen = freeze_first_layers(model, 1, "paper")
    assert "model.embed_tokens.weight" in frozen and all(
        n.startswith(("model.embed_tokens", "model.layers.0.")) for n in frozen
    )
    ids = torch.randint(5, 300, (2, 8))
    model(input_ids=ids, labels=ids).loss.backward()
    torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1).step()
    for n, p in model.named_parameters():
        if n in frozen:
            assert p.grad is None and torch.equal(p, before[n]), n
    assert not torch.equal(
        model.model.layers[1].mlp.up_proj.weight, before["model.layers.1.mlp.up_proj.weight"]
    )


def frozen_groups(names):
    """Parameter names -> their module groups ('embed', 'layer0', 'norm', 'lm_head.weight')."""
    groups = set()
    for n in names:
        if n.startswith("model.layers."):
            groups.add("layer" + n.split(".")[2])
        else:
            groups.add(
                {"model.embed_tokens.weight": "embed", "model.norm.weight": "norm"}.get(n, n)
            )
    return groups


@pytest.mark.parametrize(
    "style, n, expected",
    [
        ("paper", 1, {"embed", "layer0"}),  # the paper's "early layers": embeddings + blocks 0..N-1
        ("paper", 2, {"embed", "layer0", "layer1"}),
        # released selective_grad_freeze(n_first=N): range(N + 1) blocks, embeddings, norm, lm_head
        ("code", 0, {"embed", "layer0", "norm", "lm_head.weight"}),
        ("code", 1, {"embed", "layer0", "layer1", "norm", "lm_head.weight"}),
    ],
)
def test_frozen_parameter_sets_of_both_styles(style, n, expected):
    model = load_model(make_tiny_lm(num_hidden_layers=3, tie_word_embeddings=False))
    frozen = freeze_first_layers(model, n, style)
    assert frozen_groups(frozen) == expected
    trainable = [name for name, p in model.named_parameters() if p.requires_grad]
    assert (
        frozen_groups(trainable)
        == frozen_groups(name for name, _ in model.named_parameters()) - expected
    )


def test_end_to_end_minimal(tmp_path, run_cmd):
    out = tmp_path / "ilo"
    proc = run_cmd(
        [
            sys.executable,
            "ilo.py",
            "--output_dir",
            str(out),
            "--max_sentences",
            "20",
            "--finetune_steps",
            "4",
            "--ckpt_every",
            "2",
            "--k",
            "3",
            "--t",
            "2",
        ]
    )
    assert "Mean ILO over languages" in proc.stdout
    assert (out / "ilo_vs_layer.png").exists() and (out / "ilo_per_layer.csv").exists()
    # resume: the checkpoints at step 4 exist, so a resumed run fine-tunes nothing and still reports
    proc = run_cmd(
        [
            sys.executable,
            "ilo.py",
            "--output_dir",
            str(out),
            "--max_sentences",
            "20",
            "--finetune_steps",
            "4",
            "--k",
            "3",
            "--t",
            "2",
            "--resume",
        ]
    )
    assert "resumed at step 4" in proc.stdout


def test_finetune_backward_micro_batches_equal_unsplit_step():
    from _micro import assert_micro_batching_matches

    from ilo import finetune_backward

    path = make_tiny_lm()
    tok = load_tokenizer(path)
    enc = tok(
        ["la " * (i + 1) + tok.eos_token for i in range(5)],
        return_tensors="pt",
        padding=True,
        padding_side="right",
    )

    def step(model, optimizer, micro):
        finetune_backward(model, enc["input_ids"], enc["attention_mask"], micro)
        optimizer.step()

    assert_micro_batching_matches(path, step, micro_batch_size=2)


def test_count_cut_counts_only_sentences_longer_than_max_length(tiny):
    _, tok = tiny
    short, long = "a b .", " ".join(["word"] * 40)
    n_short, n_long = (len(tok(s)["input_ids"]) for s in (short, long))
    assert n_short < 10 < n_long
    assert count_cut(tok, [short, long, long], 10) == 2
    assert count_cut(tok, [short, long], n_long) == 0  # exactly max_length tokens is not cut


def test_held_out_split_keeps_eval_parallel_and_never_fine_tunes_on_it():
    rows = [{"lang": lang, "text": f"{lang} {i}"} for lang in ("a", "b") for i in range(5)]
    eval_rows, ft_rows = split_held_out(rows, 2)
    assert [r["text"] for r in eval_rows] == [
        "a 0",
        "a 1",
        "b 0",
        "b 1",
    ]  # same positions per language
    assert [r["text"] for r in ft_rows] == ["a 2", "a 3", "a 4", "b 2", "b 3", "b 4"]
    assert len(split_held_out(rows, 0)[0]) == 4  # 0 = half (5 // 2 per language)
    with pytest.raises(ValueError, match="--eval_sentences 5: language 'a'"):
        split_held_out(rows, 5)


def test_claims_follow_the_curves_and_perplexities():
    def recs(values):  # two languages with the same ILO per layer
        return [
            {"layer": i, "lang": lang, "ilo": v}
            for i, v in enumerate(values)
            for lang in ("x", "y")
        ]

    results = {
        "base": recs([0.8, 0.6, 0.5, 0.7]),
        "finetune": recs([0.9, 0.9, 0.2, 0.3]),
        "finetune_freeze1": recs([0.8, 0.6, 0.5, 0.6]),
    }
    ppl = {
        "base": {"x": 4.0, "y": 4.0},
        "finetune": {"x": 2.0, "y": 40.0},
        "finetune_freeze1": {"x": 2.5, "y": 8.0},
    }
    claims = {c["name"]: c for c in ilo_claims(results, ppl, "x", 1)}
    drop = claims["fine-tuning lowers ILO"]  # layers 2-3 only: above the frozen ones
    assert (drop["metric"], drop["baseline"], drop["result"]) == (
        "mean ILO, layers 2-3",
        pytest.approx(0.6),
        pytest.approx(0.25),
    )
    assert claims["freezing 1 blocks keeps ILO higher"]["result"] == pytest.approx(0.55)
    assert claims["freezing helps the other languages"]["result"] == pytest.approx(math.log(8.0))
    assert all(c["holds"] for c in claims.values())
    # a difference within the margin does not count
    results["finetune"] = recs([0.8, 0.6, 0.5, 0.69])
    assert not {c["name"]: c for c in ilo_claims(results, ppl, "x", 1)}["fine-tuning lowers ILO"][
        "holds"
    ]


def test_no_arg_toy_shows_the_claims(tmp_path, run_cmd):
    """The no-argument toy (fixed seed): all four claims hold."""
    out = tmp_path / "toy"
    proc = run_cmd([sys.executable, "ilo.py", "--output_dir", str(out)], timeout=900)
    summary = json.loads((out / "summary.json").read_text())
    assert [c["holds"] for c in summary["claims"]] == [True] * 4, proc.stdout[-3000:]
