"""A real model shape through the real training path, offline: Qwen2.5-0.5B's exact architecture
(hidden 896, 24 layers, 14 query / 2 KV heads, vocab 151,936, tied embeddings; Qwen2.5-1.5B's with
--size 1.5B) built from its config with random weights (nothing is downloaded), then

- one zero_rl step: sample G responses per prompt (HF generate), old and reference log-probs, the
  PPO-clip + k3-KL + entropy loss over micro-batches (common.grpo_plumbing.response_logprobs:
  chunked log-probs, the concatenated path under gradient checkpointing), AdamW step;
- one bstar SFT step (bstar.sft_step: token-mean NLL accumulated over micro-batches), AdamW step;
- (gpu_check.py adds one genius_aco ACO step.)

through common.train's precision policy (fp32 master weights; on CUDA bf16 compute through a
one-rank FSDP2 mesh, the reference model in bf16), gradient checkpointing on, log-probs projected
1,024 positions at a time. Prints the time of each phase and the peak memory (CPU: the process's
peak RSS; CUDA: peak allocated).

    python bench/real_shape.py                # 0.5B shape on the CPU, a few minutes on 2 cores
    python bench/real_shape.py --layers 2     # what the test runs
    python bench/real_shape.py --size 1.5B --device cuda --prompts 8 --group 8 --response_len 512
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from common.train import Dist, make_optimizer, micro_batches, shard_model  # noqa: E402

# Qwen2.5-0.5B / -1.5B config.json (hub: Qwen/Qwen2.5-0.5B, Qwen/Qwen2.5-1.5B), the fields that set
# the shape
QWEN25 = {
    "0.5B": dict(
        hidden_size=896,
        intermediate_size=4864,
        num_hidden_layers=24,
        num_attention_heads=14,
        num_key_value_heads=2,
        vocab_size=151_936,
        tie_word_embeddings=True,
    ),
    "1.5B": dict(
        hidden_size=1536,
        intermediate_size=8960,
        num_hidden_layers=28,
        num_attention_heads=12,
        num_key_value_heads=2,
        vocab_size=151_936,
        tie_word_embeddings=True,
    ),
}
QWEN25_COMMON = dict(
    max_position_embeddings=32_768,
    rope_theta=1_000_000.0,
    rms_norm_eps=1e-6,
    hidden_act="silu",
    bos_token_id=151_643,
    eos_token_id=151_643,
    attention_dropout=0.0,
    use_sliding_window=False,
)


def qwen25_config(size: str = "0.5B", layers: int | None = None):
    from transformers import Qwen2Config

    shape = dict(QWEN25[size])
    if layers:
        shape["num_hidden_layers"] = layers
    return Qwen2Config(**shape, **QWEN25_COMMON)


def build_model(cfg, dist: Dist, frozen: bool = False, seed: int = 0):
    """Random weights from the config on the CPU (fp32), then the precision policy + FSDP2
    (common.train)."""
    from transformers import Qwen2ForCausalLM

    torch.manual_seed(seed)
    model = Qwen2ForCausalLM(cfg)
    return shard_model(model, dist, frozen=frozen, gradient_checkpointing=not frozen)


def params_of(model) -> int:
    return sum(p.numel() for p in model.parameters())


class Meter:
    """Wall time and peak memory of each phase (CUDA peaks are reset per phase; the CPU RSS peak
    only grows)."""

    def __init__(self, device: torch.device):
        self.device, self.rows = device, []

    def __call__(self, name: str, fn):
        if self.device.type == "cuda":
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
        t0 = time.perf_counter()
        out = fn()
        if self.device.type == "cuda":
            torch.cuda.synchronize()
            peak = torch.cuda.max_memory_allocated() / 2**30
        else:
            peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # Linux: KiB -> GiB
        self.rows.append(
            {
                "phase": name,
                "seconds": round(time.perf_counter() - t0, 3),
                "peak_gib": round(peak, 3),
            }
        )
        return out


def zero_rl_step(model, ref, optimizer, args, meter: Meter, vocab: int) -> dict:
    """One GRPO step of zero_rl.py's update on random prompts: generate, old/ref log-probs, loss,
    AdamW."""
    import zero_rl as Z
    from common.grpo_plumbing import response_logprobs

    dev, G, T = meter.device, args.group, args.response_len
    prompts = torch.randint(0, vocab, (args.prompts, args.prompt_len), device=dev)  # (P, Lp)
    prompt_mask = torch.ones_like(prompts)

    def generate():
        with torch.no_grad():
            out = model.generate(
                input_ids=prompts,
                attention_mask=prompt_mask,
                do_sample=True,
                max_new_tokens=T,
                min_new_tokens=T,
                num_return_sequences=G,
                pad_token_id=0,
            )
        return out[:, args.prompt_len :]  # (P*G, T)

    responses = meter("zero_rl/generate", generate)
    B = responses.shape[0]
    response_mask = torch.ones_like(responses)  # (B, T)
    index = torch.arange(B, device=dev) // G  # (B,) each row's prompt
    rewards = torch.randint(0, 2, (B,)).float()
    advantages = Z.grpo_advantages(rewards, G).to(dev)  # (B,)

    def logprobs_no_grad(m):
        with torch.no_grad():
            return torch.cat(
                [
                    response_logprobs(
                        m,
                        prompts[index[sl]],
                        prompt_mask[index[sl]],
                        responses[sl],
                        response_mask[sl],
                        torch.arange(sl.stop - sl.start, device=dev),
                    )
                    for sl in micro_batches(B, args.micro_batch_size)
                ]
            )  # (B, T)

    old = meter("zero_rl/old_logprobs", lambda: logprobs_no_grad(model))
    ref_lp = (
        meter("zero_rl/ref_logprobs", lambda: logprobs_no_grad(ref)) if ref is not None else None
    )

    def update():
        model.train()
        num_tokens = float(response_mask.sum())
        total = 0.0
        for sl in micro_batches(B, args.micro_batch_size):
            n = sl.stop - sl.start
            logps, entropy = response_logprobs(
                model,
                prompts[index[sl]],
                prompt_mask[index[sl]],
                responses[sl],
                response_mask[sl],
                torch.arange(n, device=dev),
                return_entropy=True,
            )
            per_token, _ = Z.ppo_clip_loss(logps, old[sl], advantages[sl], 0.2, 0.2)  # (b, T)
            if ref_lp is not None:
                per_token = per_token + 1e-4 * Z.k3_kl(logps, ref_lp[sl])
            per_token = per_token - 0.001 * entropy
            loss = Z.aggregate_loss(per_token, response_mask[sl].float(), "dapo", T, num_tokens, B)
            loss.backward()
            total += loss.item()
        return total

    loss = meter("zero_rl/forward_backward", update)
    meter(
        "zero_rl/optimizer_step", lambda: (optimizer.step(), optimizer.zero_grad(set_to_none=True))
    )
    return {"loss": loss, "tokens": B * (args.prompt_len + T)}


def bstar_step(model, optimizer, args, meter: Meter, vocab: int) -> dict:
    """One bstar.sft_step (token-mean NLL over micro-batches, clipping, AdamW) on random (prompt,
    response) pairs."""
    import types

    import bstar

    tok = types.SimpleNamespace(
        pad_token_id=0
    )  # sft_step only pads; the ids below span the whole vocabulary
    g = torch.Generator().manual_seed(1)
    pairs = [
        (
            torch.randint(0, vocab, (args.prompt_len,), generator=g).tolist(),
            torch.randint(0, vocab, (args.response_len,), generator=g).tolist(),
        )
        for _ in range(args.sft_batch)
    ]
    sched = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda _: 1.0)
    model.train()
    loss = meter(
        "bstar/sft_step",
        lambda: bstar.sft_step(
            model, optimizer, sched, tok, pairs, 1.0, meter.device, args.micro_batch_size
        ),
    )
    return {"loss": loss, "tokens": args.sft_batch * (args.prompt_len + args.response_len)}


def parse(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--size", default="0.5B", choices=sorted(QWEN25))
    p.add_argument(
        "--layers",
        type=int,
        default=0,
        help="override the number of decoder layers (0 = the real one)",
    )
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--prompts", type=int, default=2, help="prompts per zero_rl step")
    p.add_argument("--group", type=int, default=2, help="responses per prompt (G)")
    p.add_argument("--prompt_len", type=int, default=64)
    p.add_argument("--response_len", type=int, default=64)
    p.add_argument(
        "--micro_batch_size",
        type=int,
        default=2,
        help="rows per forward/backward (paper preset: 2)",
    )
    p.add_argument("--sft_batch", type=int, default=4, help="pairs per bstar SFT step")
    p.add_argument(
        "--no_ref", action="store_true", help="skip zero_rl's frozen reference model (beta = 0)"
    )
    p.add_argument("--json", default="", help="also write the figures to this JSON file")
    return p.parse_args(argv)


def main(argv=None) -> dict:
    args = parse(argv)
    torch.set_num_threads(max(1, torch.get_num_threads()))
    dist = Dist(device=torch.device(args.device))
    cfg = qwen25_config(args.size, args.layers or None)
    meter = Meter(dist.device)
    model = meter("build/policy", lambda: build_model(cfg, dist))
    ref = (
        None
        if args.no_ref
        else meter("build/reference", lambda: build_model(cfg, dist, frozen=True))
    )
    optimizer = make_optimizer(model, 1e-6)
    z = zero_rl_step(model, ref, optimizer, args, meter, cfg.vocab_size)
    b = bstar_step(model, optimizer, args, meter, cfg.vocab_size)
    result = {
        "size": args.size,
        "layers": cfg.num_hidden_layers,
        "params": params_of(model),
        "device": args.device,
        "args": vars(args),
        "phases": meter.rows,
        "zero_rl_loss": z["loss"],
        "bstar_loss": b["loss"],
        "finite": all(map(lambda v: v == v and abs(v) != float("inf"), (z["loss"], b["loss"]))),
    }
    width = max(len(r["phase"]) for r in meter.rows)
    print(
        f"Qwen2.5-{args.size} shape, {cfg.num_hidden_layers} layers, {result['params'] / 1e6:.0f}M "
        f"parameters, "
        f"{args.device}; policy fp32 "
        f"masters{' + bf16 FSDP2 compute' if args.device == 'cuda' else ''}, "
        "gradient checkpointing, chunked log-probs, micro-batches of " + str(args.micro_batch_size)
    )
    for r in meter.rows:
        print(f"  {r['phase']:<{width}}  {r['seconds']:8.2f} s   peak {r['peak_gib']:.2f} GiB")
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(result, indent=1))
    return result


if __name__ == "__main__":
    main()
