"""Worker for tests/test_models_sampling.py (2 gloo ranks): the HF sampler on an FSDP2 model is
lock-step; generate_sharded splits an odd prompt list, and generate_local + finish_local survive
ranks that run different numbers of rounds (rank 0 three, rank 1 one), as os_genesis's evaluation
episodes do."""

import json
import sys

from common.models import load_model, load_tokenizer, make_tiny_lm
from common.sampling import HFSampler, finish_local, generate_local, generate_sharded
from common.train import (
    all_gather_object,
    cleanup_distributed,
    init_distributed,
    seed_everything,
    shard_model,
)

d = init_distributed()
seed_everything(d.rank)
path = make_tiny_lm()
tok = load_tokenizer(path)
sampler = HFSampler(shard_model(load_model(path), d), tok)
assert sampler.lockstep
prompts = [f"{i} plus {i}" for i in range(5)]
groups = generate_sharded(sampler, prompts, n=2, temperature=1.0, max_new_tokens=4 + 3 * d.rank)
rounds = [
    [f"round {r} rank {d.rank} item {k}" for k in range(r + 1)]
    for r in range(3 if d.rank == 0 else 1)
]
local = [
    len(generate_local(sampler, batch, n=1, temperature=1.0, max_new_tokens=5)) for batch in rounds
]
finish_local(sampler, n=1, temperature=1.0, max_new_tokens=5)
everything = all_gather_object(local)
if d.is_main:
    with open(sys.argv[1], "w") as f:
        json.dump({"gathered": [len(g) for g in groups], "local": everything}, f)
cleanup_distributed()
