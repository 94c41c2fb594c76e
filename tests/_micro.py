"""Shared check for every trainer's micro-batching: one optimizer step of a script's step function
with gradient accumulation over micro-batches gives the same weights as the unsplit step (plain SGD
at lr 1, so a weight difference is a gradient difference)."""

import torch

from common.models import load_model


def weights_after_step(path, step, micro_batch_size: int, vlm: bool = False) -> dict:
    """`step(model, optimizer, micro_batch_size)` runs one optimizer step; returns the weights after
    it."""
    model = load_model(path, vlm=vlm).train()
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=1.0)
    step(model, optimizer, micro_batch_size)
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def assert_micro_batching_matches(
    path, step, micro_batch_size: int = 2, vlm: bool = False, atol: float = 1e-6
):
    whole = weights_after_step(path, step, 0, vlm)
    split = weights_after_step(path, step, micro_batch_size, vlm)
    base = load_model(path, vlm=vlm).state_dict()
    assert any(not torch.equal(whole[k], base[k]) for k in base), (
        "the step changed nothing: the check could not fail"
    )
    for k in whole:
        assert torch.allclose(whole[k], split[k], atol=atol, rtol=0), k
