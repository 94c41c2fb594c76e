"""Worker for tests/test_train.py: train the tiny LM a few steps (1 or 2 processes) and save the
full state dict, so the test can compare a 2-process FSDP2 run with a single-process run on the same
data."""

import sys

import torch

from common.models import load_model, load_tokenizer, make_tiny_lm
from common.sampling import HFSampler
from common.train import (
    cleanup_distributed,
    full_state_dict,
    init_distributed,
    make_optimizer,
    pad_batch,
    seed_everything,
    sft_loss,
    shard_model,
)

out_path, steps = sys.argv[1], int(sys.argv[2])
d = init_distributed()
seed_everything(0)
path = make_tiny_lm()
tok = load_tokenizer(path)
model = shard_model(load_model(path), d)
opt = make_optimizer(model, lr=1e-3)
texts = [f"{a} plus {b} is {a + b}" for a in range(4) for b in range(4)]  # 16 rows, global batch
prompt_ids = [tok(t[: t.index(" is")], add_special_tokens=False).input_ids for t in texts]
resp_ids = [tok(t[t.index(" is") :], add_special_tokens=False).input_ids for t in texts]
for _ in range(steps):
    # each rank takes its slice of the same global batch; FSDP2 averages gradients over ranks
    rows = list(range(d.rank, len(texts), d.world_size))
    ids, att, mask = pad_batch(
        [prompt_ids[i] for i in rows], [resp_ids[i] for i in rows], tok.pad_token_id
    )
    loss = sft_loss(model, ids, att, mask)
    loss.backward()
    opt.step()
    opt.zero_grad()
# sampling works on the sharded model when every rank generates (different lengths per rank)
out = HFSampler(model, tok).generate(
    [f"{d.rank} plus"], n=2, temperature=1.0, max_new_tokens=8 + 4 * d.rank
)
assert len(out) == 1 and len(out[0]) == 2
state = full_state_dict(model)
if d.is_main:
    torch.save(state, out_path)
cleanup_distributed()
