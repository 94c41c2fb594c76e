"""common/train.py at real scale: the precision policy, chunked log-probs (equality, gradients, peak
memory), gradient checkpointing, micro-batch accumulation and sharded (DCP) checkpoints on 2 gloo
ranks."""

import sys

import pytest
import torch

from common.models import load_model, make_tiny_lm
from common.train import (
    Dist,
    logprobs_from_hidden,
    make_optimizer,
    micro_batches,
    precision_policy,
    sft_loss,
    shard_model,
    token_logprobs,
)


@pytest.fixture(scope="module")
def tiny_path():
    return make_tiny_lm()


def test_precision_policy_bf16_compute_on_cuda_fp32_on_cpu():
    gpu = precision_policy("cuda", 1)
    assert (gpu.compute_dtype, gpu.reduce_dtype, gpu.frozen_dtype, gpu.fsdp) == (
        torch.bfloat16,
        torch.float32,
        torch.bfloat16,
        True,
    )  # one GPU: a one-rank FSDP2 mesh
    cpu = precision_policy("cpu", 1)
    assert (cpu.compute_dtype, cpu.frozen_dtype, cpu.fsdp) == (torch.float32, torch.float32, False)
    assert precision_policy("cpu", 2).fsdp


def test_make_optimizer_refuses_bf16_trainable_weights(tiny_path):
    model = load_model(tiny_path, dtype="bfloat16")
    with pytest.raises(ValueError, match="fp32 master weights"):
        make_optimizer(model, 1e-6)
    model.requires_grad_(False)
    model.model.norm.float().requires_grad_(True)
    make_optimizer(model, 1e-6)  # frozen bf16 weights next to trained fp32 ones are fine
    trained = shard_model(
        load_model(tiny_path, dtype="bfloat16"), Dist()
    )  # CPU: cast to fp32 masters
    assert {p.dtype for p in trained.parameters()} == {torch.float32}
    make_optimizer(trained, 1e-6)


def test_shard_model_one_rank_fsdp2_on_gloo_matches_plain(run_cmd):
    out = run_cmd([sys.executable, "tests/_one_rank_worker.py"]).stdout
    diff = float(out.split("max_diff")[1])
    print(out)
    assert diff < 1e-5


def _full_logprobs(hidden, weight, targets, temperature=1.0):
    logits = (hidden @ weight.T).float() / temperature  # (B, T, V)
    lse = logits.logsumexp(-1)
    logps = logits.gather(-1, targets[..., None])[..., 0] - lse
    return logps, lse - (logits.softmax(-1) * logits).sum(-1)


@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_logprobs_from_hidden_equals_full_values_and_grads(temperature):
    torch.manual_seed(0)
    hidden = torch.randn(2, 7, 16, requires_grad=True)  # (B, T, H)
    weight = torch.randn(50, 16, requires_grad=True)  # (V, H)
    targets = torch.randint(0, 50, (2, 7))
    c_lp, c_ent = torch.randn(2, 7), torch.randn(2, 7)  # arbitrary upstream gradients
    grads = []
    for fn in (_full_logprobs, lambda h, w, t, tau: logprobs_from_hidden(h, w, t, 3, True, tau)):
        lp, ent = fn(hidden, weight, targets, temperature)
        ((lp * c_lp).sum() + (ent * c_ent).sum()).backward()
        grads.append((lp.detach(), ent.detach(), hidden.grad.clone(), weight.grad.clone()))
        hidden.grad = weight.grad = None
    for full, chunked in zip(*grads):
        assert torch.allclose(full, chunked, atol=1e-5, rtol=0)
    assert grads[0][3].abs().sum() > 0  # the head gets a gradient (a test that can fail)
    with torch.no_grad():  # chunk_size larger than B*T, and no entropy
        assert torch.allclose(
            logprobs_from_hidden(hidden, weight, targets, 1000, temperature=temperature),
            grads[0][0],
            atol=1e-5,
        )


def test_logprobs_from_hidden_peak_rss_below_full_logits(run_cmd):
    """hidden (1, 8192, 64), 151,936-word head: the full (1, T, V) fp32 logits alone are 4.98 GB."""
    full_logits_mb = 8192 * 151_936 * 4 / 2**20
    chunked = float(
        run_cmd([sys.executable, "tests/_rss_worker.py", "chunked"], timeout=600).stdout.split()[-1]
    )
    bound = full_logits_mb / 2
    print(
        f"peak RSS chunked {chunked:.0f} MB; full logits alone {full_logits_mb:.0f} MB "
        f"(python tests/_rss_worker.py full: ~5000 MB measured); bound {bound:.0f} MB"
    )
    assert chunked < bound < full_logits_mb


def test_token_logprobs_match_model_logits_with_temperature(tiny_path):
    model = load_model(tiny_path)
    ids = torch.randint(5, 300, (2, 9))
    lp, ent = token_logprobs(
        model, ids, torch.ones_like(ids), return_entropy=True, temperature=0.5, chunk_size=5
    )
    logits = model(input_ids=ids).logits[:, :-1].float() / 0.5  # (B, L-1, V)
    ref = torch.log_softmax(logits, -1).gather(-1, ids[:, 1:, None])[..., 0]
    ref_ent = -(logits.softmax(-1) * logits.log_softmax(-1)).sum(-1)
    assert torch.allclose(lp, ref, atol=1e-5) and torch.allclose(ent, ref_ent, atol=1e-4)


def _count_layer_calls(model):
    calls = []
    for layer in model.model.layers:
        # HF checkpoints `forward` (the layer's own hooks stay outside) and the recompute may stop
        # early: count the attention module's pre-hook, which every recompute reaches
        layer.self_attn.register_forward_pre_hook(lambda *a: calls.append(1))
    return calls


def test_gradient_checkpointing_recomputes_layers_and_keeps_loss_and_grads(tiny_path):
    ids = torch.randint(5, 300, (2, 11))
    results = []
    for ckpt in (False, True):
        model = shard_model(load_model(tiny_path), Dist(), gradient_checkpointing=ckpt).train()
        calls = _count_layer_calls(model)
        loss = sft_loss(model, ids, torch.ones_like(ids), torch.ones_like(ids))
        forward_calls = len(calls)
        loss.backward()
        results.append(
            (loss.detach(), [p.grad.clone() for p in model.parameters()], forward_calls, len(calls))
        )
    (l0, g0, f0, n0), (l1, g1, f1, n1) = results
    assert f0 == f1 == 2 and n0 == 2  # 2 layers, forward only once without checkpointing
    assert n1 == 4  # checkpointed: each layer runs again in the backward pass
    assert torch.allclose(l0, l1, atol=1e-6)
    assert all(torch.allclose(a, b, atol=1e-6) for a, b in zip(g0, g1))


def test_micro_batches_with_batch_token_normalizer_equal_unsplit_step(tiny_path):
    assert micro_batches(5, 2) == [slice(0, 2), slice(2, 4), slice(4, 5)]
    assert micro_batches(5, 0) == [slice(0, 5)]
    torch.manual_seed(0)
    ids = torch.randint(5, 300, (5, 10))
    mask = (
        torch.rand(5, 10) < 0.6
    ).long()  # rows with different token counts: a plain mean per micro-batch differs
    grads = []
    for size in (0, 2):
        model = load_model(tiny_path)
        total = float(mask[:, 1:].sum())
        for sl in micro_batches(5, size):
            sft_loss(
                model, ids[sl], torch.ones_like(ids[sl]), mask[sl], normalizer=total
            ).backward()
        grads.append([p.grad.clone() for p in model.parameters()])
    assert all(torch.allclose(a, b, atol=1e-6) for a, b in zip(*grads))


def test_dcp_checkpoint_two_ranks_resume_equals_uninterrupted(tmp_path, run_cmd, torchrun_cmd):
    full, cut = tmp_path / "full", tmp_path / "cut"
    run_cmd(
        [*torchrun_cmd, "tests/_ckpt_worker.py", str(full), "--steps", "4", "--ckpt-every", "2"],
        timeout=300,
    )
    run_cmd(
        [
            *torchrun_cmd,
            "tests/_ckpt_worker.py",
            str(cut),
            "--steps",
            "4",
            "--ckpt-every",
            "2",
            "--stop-after",
            "3",
        ],
        timeout=300,
    )
    assert not (cut / "final.pt").exists()
    shards = sorted(f.name for f in (cut / "ckpt" / "state").iterdir())
    assert shards == [".metadata", "__0_0.distcp", "__1_0.distcp"], (
        shards
    )  # one shard file per rank
    run_cmd(
        [
            *torchrun_cmd,
            "tests/_ckpt_worker.py",
            str(cut),
            "--steps",
            "4",
            "--ckpt-every",
            "2",
            "--resume",
        ],
        timeout=300,
    )
    a, b = torch.load(full / "final.pt"), torch.load(cut / "final.pt")
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


def test_token_logprobs_of_a_vlm_with_images_match_its_logits():
    from common.models import make_tiny_vlm

    model = load_model(make_tiny_vlm(), vlm=True)
    image_id = model.config.image_token_index
    ids = torch.tensor(
        [[5] + [image_id] * 16 + [7, 8, 9, 10]]
    )  # (1, L): one 64x64 image = 16 image tokens
    pixels = torch.randn(1, 3, 64, 64)
    lp = token_logprobs(model, ids, torch.ones_like(ids), pixel_values=pixels, chunk_size=4)
    logits = model(input_ids=ids, pixel_values=pixels).logits[:, :-1].float()  # (1, L-1, V)
    ref = torch.log_softmax(logits, -1).gather(-1, ids[:, 1:, None])[..., 0]
    assert torch.allclose(lp, ref, atol=1e-5)
    text_only = token_logprobs(
        model, ids, torch.ones_like(ids), pixel_values=torch.zeros_like(pixels)
    )
    assert not torch.allclose(
        lp[0, -4:], text_only[0, -4:], atol=1e-4
    )  # the image reached the text positions
