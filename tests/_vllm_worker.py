"""Worker for tests/test_sampling_vllm.py (2 gloo ranks, fake vLLM on PYTHONPATH): FSDP2 trainer
plus one colocated engine per rank; three sampling rounds with two updates between them (sleep, SFT
step, push)."""

import json
import sys

from common.models import load_model, load_tokenizer, make_tiny_lm
from common.sampling import VLLMArgs, generate_sharded, make_sampler
from common.train import (
    cleanup_distributed,
    init_distributed,
    make_optimizer,
    pad_batch,
    sft_loss,
    shard_model,
)

d = init_distributed()
path = make_tiny_lm()
tok = load_tokenizer(path)
model = shard_model(load_model(path), d)
opt = make_optimizer(model, lr=1e-2)
sampler = make_sampler("vllm", model_path=path, tokenizer=tok, args=VLLMArgs())
prompts = [f"{i} plus {i + 1} is" for i in range(6)]  # the same global list on every rank
for round_ in range(3):
    groups = generate_sharded(sampler, prompts, n=2, temperature=1.0, max_new_tokens=4)
    if round_ == 2:
        break
    sampler.sleep()  # the update
    ids, att, mask = pad_batch(
        [tok(p, add_special_tokens=False).input_ids for p in prompts[d.rank :: 2]],
        [tok(" 7", add_special_tokens=False).input_ids] * 3,
        tok.pad_token_id,
    )
    sft_loss(model, ids, att, mask).backward()
    opt.step()
    opt.zero_grad()
    sampler.sync_weights(
        model
    )  # every rank: full_tensor() of each DTensor, pushed into its own engine
if d.is_main:
    result = {
        "gathered": len(groups),
        "local": len(prompts) // d.world_size,
        "texts": [str(g[0].token_ids) + p for g, p in zip(groups, prompts)],
        "state_dict_names": list(sampler.llm.hf.state_dict()),
    }
    with open(sys.argv[1], "w") as f:
        json.dump(result, f)
cleanup_distributed()
