"""GPU check of the real-scale training path, offline, one GPU, a few minutes: Qwen2.5-0.5B- and
1.5B-shaped models built from their configs (random weights, no download), one zero_rl step, one
bstar SFT step and one genius_aco ACO step each, with common.train's precision policy (fp32 master
weights + AdamW state, bf16 compute through a one-rank FSDP2 MixedPrecisionPolicy, the frozen
reference in bf16), gradient checkpointing, chunked log-probs and micro-batches. Prints, per model
and step: step time, training tokens/s, peak memory and MFU = model FLOPs per token x tokens/s / the
GPU's dense bf16 peak (FLOPs per token: 6 x the matmul parameters + 12 x layers x hidden x context
for attention, PaLM App. B; the checkpointing recompute is not counted, as usual). Writes
bench/results/gpu_check-<device>.json.

    python bench/gpu_check.py                            # CUDA, both sizes
    python bench/gpu_check.py --device cpu --layers 2    # CPU dry run (what the test runs)
"""

from __future__ import annotations

import argparse
import functools
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.real_shape import Meter, bstar_step, build_model, qwen25_config, zero_rl_step  # noqa: E402
from common.train import Dist, make_optimizer, micro_batches, pad_batch, sequence_logprob  # noqa: E402

# dense bf16 peak FLOP/s (vendor data sheets, without sparsity)
PEAK_BF16 = {
    "H200": 989e12,
    "H100": 989e12,
    "A100": 312e12,
    "L40S": 362e12,
    "A10G": 70e12,
    "RTX 4090": 165e12,
}


def peak_flops(device: torch.device, override: float) -> float | None:
    if override:
        return override * 1e12
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    return next((v for k, v in PEAK_BF16.items() if k in name), None)


def flops_per_token(cfg, context: int) -> float:
    """Training FLOPs per token: 6 x matmul parameters (blocks + the lm_head projection) +
    attention."""
    h, L, kv = cfg.hidden_size, cfg.num_hidden_layers, cfg.num_key_value_heads
    d = h // cfg.num_attention_heads
    block = (
        h * h + 2 * h * kv * d + h * h + 3 * h * cfg.intermediate_size
    )  # q, k, v, o, gate/up/down
    return 6 * (L * block + cfg.vocab_size * h) + 12 * L * h * context


def genius_step(model, optimizer, args, meter: Meter, vocab: int) -> dict:
    """One genius_aco update: chosen/rejected sequence log-probs over micro-batches, the ACO loss
    (Genius, arXiv 2504.08672) against fixed reference log-probs, mean over the pairs, AdamW."""
    import genius_aco as GA

    dev, P = meter.device, args.sft_batch
    g = torch.Generator().manual_seed(2)
    prompt = [torch.randint(0, vocab, (args.prompt_len,), generator=g).tolist() for _ in range(P)]
    chosen, rejected = (
        [torch.randint(0, vocab, (args.response_len,), generator=g).tolist() for _ in range(P)]
        for _ in range(2)
    )
    adv = torch.randn(P, 2, generator=g)  # (P, 2) chosen / rejected advantages
    ref = (
        -args.response_len * torch.log(torch.tensor(float(vocab))) * torch.ones(P, 2)
    )  # (P, 2) uniform reference

    def update():
        model.train()
        total = 0.0
        for sl in micro_batches(P, args.micro_batch_size // 2 or 1):  # a pair is two rows
            n = sl.stop - sl.start
            ids, att, mask = (
                x.to(dev) for x in pad_batch(prompt[sl] * 2, chosen[sl] + rejected[sl], 0)
            )  # (2n, L)
            logps = sequence_logprob(model, ids, att, mask)  # (2n,)
            losses = GA.aco_loss(
                logps[:n],
                logps[n:],
                ref[sl, 0].to(dev),
                ref[sl, 1].to(dev),
                adv[sl, 0].to(dev),
                adv[sl, 1].to(dev),
            )  # (n,)
            loss = losses.sum() / P
            loss.backward()
            total += loss.item()
        return total

    loss = meter("genius_aco/forward_backward", update)
    meter(
        "genius_aco/optimizer_step",
        lambda: (optimizer.step(), optimizer.zero_grad(set_to_none=True)),
    )
    return {"loss": loss, "tokens": 2 * P * (args.prompt_len + args.response_len)}


def parse(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="cuda")
    p.add_argument("--sizes", default="0.5B,1.5B")
    p.add_argument(
        "--layers",
        type=int,
        default=0,
        help="override the number of decoder layers (0 = the real one)",
    )
    p.add_argument("--prompts", type=int, default=8, help="zero_rl prompts per step")
    p.add_argument("--group", type=int, default=8, help="zero_rl responses per prompt")
    p.add_argument("--prompt_len", type=int, default=256)
    p.add_argument("--response_len", type=int, default=1024)
    p.add_argument("--micro_batch_size", type=int, default=8)
    p.add_argument(
        "--sft_batch", type=int, default=32, help="bstar SFT rows / genius_aco pairs per step"
    )
    p.add_argument("--no_ref", action="store_true")
    p.add_argument(
        "--peak_tflops", type=float, default=0.0, help="the GPU's bf16 peak, if not in PEAK_BF16"
    )
    p.add_argument("--out_dir", default=str(Path(__file__).resolve().parent / "results"))
    return p.parse_args(argv)


def main(argv=None) -> dict:
    args = parse(argv)
    dev = torch.device(args.device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit(
            "bench/gpu_check.py: --device cuda but torch sees no GPU (use --device cpu for a dry "
            "run)"
        )
    dist = Dist(device=dev)
    peak = peak_flops(dev, args.peak_tflops)
    name = torch.cuda.get_device_name(dev) if dev.type == "cuda" else "cpu"
    report = {
        "device": name,
        "torch": torch.__version__,
        "peak_bf16_flops": peak,
        "args": vars(args),
        "runs": [],
    }
    t_start = time.perf_counter()
    for size in args.sizes.split(","):
        cfg = qwen25_config(size, args.layers or None)
        meter = Meter(dev)
        model = meter("build/policy", functools.partial(build_model, cfg, dist))
        ref = (
            None
            if args.no_ref
            else meter("build/reference", functools.partial(build_model, cfg, dist, frozen=True))
        )
        optimizer = make_optimizer(model, 1e-6)
        steps = {"zero_rl": zero_rl_step(model, ref, optimizer, args, meter, cfg.vocab_size)}
        del ref
        steps["bstar"] = bstar_step(model, optimizer, args, meter, cfg.vocab_size)
        steps["genius_aco"] = genius_step(model, optimizer, args, meter, cfg.vocab_size)
        context = args.prompt_len + args.response_len
        for algo, res in steps.items():
            rows = [r for r in meter.rows if r["phase"].startswith(algo + "/")]
            train = [
                r for r in rows if "generate" not in r["phase"] and "logprobs" not in r["phase"]
            ]
            train_s = sum(r["seconds"] for r in train)
            tps = res["tokens"] / train_s if train_s else None
            mfu = tps * flops_per_token(cfg, context) / peak if (tps and peak) else None
            run = {
                "size": size,
                "layers": cfg.num_hidden_layers,
                "algo": algo,
                "step_seconds": sum(r["seconds"] for r in rows),
                "train_seconds": train_s,
                "train_tokens": res["tokens"],
                "tokens_per_s": tps,
                "mfu": mfu,
                "peak_gib": max(r["peak_gib"] for r in rows),
                "loss": res["loss"],
                "phases": rows,
            }
            report["runs"].append(run)
            print(
                f"Qwen2.5-{size} ({cfg.num_hidden_layers} layers) {algo:<10} step "
                f"{run['step_seconds']:7.2f} s  "
                f"train {tps or 0:9.0f} tok/s  peak {run['peak_gib']:6.2f} GiB  MFU "
                + (f"{mfu:.1%}" if mfu is not None else "n/a")
                + f"  loss {res['loss']:.4f}",
                flush=True,
            )
        del model, optimizer
        if dev.type == "cuda":
            torch.cuda.empty_cache()
    report["total_seconds"] = time.perf_counter() - t_start
    out = Path(args.out_dir) / f"gpu_check-{name.replace(' ', '_')}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=1))
    print(f"wrote {out}")
    return report


if __name__ == "__main__":
    main()
