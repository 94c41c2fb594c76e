"""Worker for tests/test_train_scale.py: a plain process (no torchrun) wraps the tiny LM in FSDP2 on
a one-rank gloo mesh (the path a single GPU takes for its bf16 policy) and trains it two steps next
to an unwrapped copy; prints the largest parameter difference."""

import torch

from common.models import load_model, make_tiny_lm
from common.train import Dist, Precision, full_state_dict, make_optimizer, sft_loss, shard_model

path = make_tiny_lm()
policy = Precision(torch.float32, torch.float32, torch.float32, fsdp=True)  # CPU: fp32 compute
wrapped = shard_model(load_model(path), Dist(), policy=policy)
plain = load_model(path)
assert type(wrapped).__name__.startswith("FSDP"), type(wrapped)
assert all(type(p).__name__ == "DTensor" for p in wrapped.parameters())
frozen = shard_model(load_model(path), Dist(), frozen=True, policy=policy)
assert not any(p.requires_grad for p in frozen.parameters()) and not frozen.training
ids = torch.randint(5, 300, (3, 10))  # (B, T)
for model in (wrapped, plain):
    opt = make_optimizer(model, lr=1e-2)
    for _ in range(2):
        sft_loss(model, ids, torch.ones_like(ids), torch.ones_like(ids)).backward()
        opt.step()
        opt.zero_grad()
a, b = full_state_dict(wrapped), plain.state_dict()
print(f"max_diff {max(float((a[k] - b[k]).abs().max()) for k in b):.3g}")
