"""Worker for tests/test_train_scale.py: peak RSS of log-probs on hidden (1, 8192, 64) and a
151,936-word head (Qwen2.5's vocabulary), chunked (`logprobs_from_hidden`, gradients on) or through
the full logits."""

import resource
import sys

import torch

from common.train import logprobs_from_hidden

mode = sys.argv[1]
torch.manual_seed(0)
V, H, T = 151_936, 64, 8192
weight = (torch.randn(V, H) * 0.02).requires_grad_(True)  # (V, H)
hidden = torch.randn(1, T, H, requires_grad=True)  # (1, T, H)
targets = torch.randint(0, V, (1, T))  # (1, T)
if mode == "chunked":
    logps = logprobs_from_hidden(hidden, weight, targets)  # (1, T), the training forward
else:
    logits = hidden @ weight.T  # (1, T, V): 4.98 GB in fp32
    logps = logits.gather(-1, targets[..., None])[..., 0] - logits.logsumexp(-1)
peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB
print(f"peak_rss_mb {peak_mb:.0f}")
