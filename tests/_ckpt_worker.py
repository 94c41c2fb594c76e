"""Worker for tests/test_train.py: a tiny SFT run with checkpoints that can be SIGKILLed and resumed.

Batches are drawn from the global torch RNG, so an exact match after resume also proves that the RNG
state, optimizer, scheduler and step were restored.
"""

import argparse
import time
from pathlib import Path

import torch

from common.models import load_model, make_tiny_lm
from common.train import load_checkpoint, make_optimizer, make_scheduler, save_checkpoint, seed_everything, sft_loss

p = argparse.ArgumentParser()
p.add_argument("out_dir")
p.add_argument("--steps", type=int, default=6)
p.add_argument("--ckpt-every", type=int, default=3)
p.add_argument("--resume", action="store_true")
p.add_argument("--hang-after", type=int, default=-1, help="sleep forever after this step (to be killed)")
args = p.parse_args()

out = Path(args.out_dir)
seed_everything(0)
model = load_model(make_tiny_lm())
opt = make_optimizer(model, lr=3e-3, weight_decay=0.01)
sched = make_scheduler(opt, "cosine", warmup_steps=2, total_steps=args.steps)
start = 0
if args.resume:
    start, extra = load_checkpoint(out / "ckpt", model, opt, sched)
    assert extra["data_position"] == start * 4
for step in range(start, args.steps):
    ids = torch.randint(5, 300, (4, 12))  # (B, T) random token "documents"
    loss = sft_loss(model, ids, torch.ones_like(ids), torch.ones_like(ids))
    loss.backward()
    opt.step()
    sched.step()
    opt.zero_grad()
    if (step + 1) % args.ckpt_every == 0:
        save_checkpoint(out / "ckpt", model, opt, sched, step=step + 1, extra={"data_position": (step + 1) * 4})
        print(f"saved step {step + 1}", flush=True)
    if step + 1 == args.hang_after:
        time.sleep(600)
torch.save(model.state_dict(), out / "final.pt")
