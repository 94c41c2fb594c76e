"""Worker for tests/test_train.py and tests/test_train_scale.py: a tiny SFT run with sharded
checkpoints that can be SIGKILLed (or stopped) and resumed, in one process or under torchrun (FSDP2
on gloo).

Batches are drawn from the global torch RNG (the same global batch on every rank; each rank trains
on its rows), so an exact match after resume also proves that the RNG state, optimizer, scheduler
and step were restored.
"""

import argparse
import sys
import time
from pathlib import Path

import torch

from common.models import load_model, make_tiny_lm
from common.train import (
    cleanup_distributed,
    full_state_dict,
    init_distributed,
    load_checkpoint,
    make_optimizer,
    make_scheduler,
    save_checkpoint,
    seed_everything,
    sft_loss,
    shard_model,
)

p = argparse.ArgumentParser()
p.add_argument("out_dir")
p.add_argument("--steps", type=int, default=6)
p.add_argument("--ckpt-every", type=int, default=3)
p.add_argument("--resume", action="store_true")
p.add_argument(
    "--hang-after", type=int, default=-1, help="sleep forever after this step (to be killed)"
)
p.add_argument(
    "--stop-after", type=int, default=-1, help="exit after this step without a final save"
)
args = p.parse_args()

out = Path(args.out_dir)
d = init_distributed()
seed_everything(0)
model = shard_model(load_model(make_tiny_lm()), d)
opt = make_optimizer(model, lr=3e-3, weight_decay=0.01)
sched = make_scheduler(opt, "cosine", warmup_steps=2, total_steps=args.steps)
start = 0
if args.resume:
    start, extra = load_checkpoint(out / "ckpt", model, opt, sched)
    assert extra["data_position"] == start * 4
for step in range(start, args.steps):
    ids = torch.randint(5, 300, (4, 12))[
        d.rank :: d.world_size
    ]  # (B, T) random token "documents", this rank's rows
    loss = sft_loss(model, ids, torch.ones_like(ids), torch.ones_like(ids))
    loss.backward()
    opt.step()
    sched.step()
    opt.zero_grad()
    if (step + 1) % args.ckpt_every == 0:
        save_checkpoint(
            out / "ckpt", model, opt, sched, step=step + 1, extra={"data_position": (step + 1) * 4}
        )
        print(f"saved step {step + 1}", flush=True)
    if step + 1 == args.hang_after:
        time.sleep(600)
    if step + 1 == args.stop_after:
        cleanup_distributed()
        sys.exit(0)
state = full_state_dict(model)
if d.is_main:
    torch.save(state, out / "final.pt")
cleanup_distributed()
