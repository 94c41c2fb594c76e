"""Training plumbing shared by every script: torchrun init, FSDP2, log-probs, SFT loss, optimizer,
schedule, checkpoints and metrics.

- `init_distributed` reads torchrun's environment (gloo on CPU, nccl on GPU); without torchrun it is
  a single process and every collective helper here is a no-op.
- One precision policy (`precision_policy`) for every trainer: fp32 master weights and AdamW state
  (`make_optimizer` refuses anything else); on CUDA the forward/backward runs in bf16 through
  FSDP2's `MixedPrecisionPolicy(param_dtype=bf16, reduce_dtype=fp32)`, on one GPU too (a one-rank
  mesh); frozen models (reference, PRM, judge, teacher) are held in bf16 on CUDA. The CPU stays
  fp32.
- `shard_model` applies FSDP2 `fully_shard` to each decoder layer, then to the root (verl's order),
  before anything is moved to the GPU (`fully_shard` moves each rank's shard to the mesh device).
  Tied input/output embeddings share one parameter, which stays with the root group.
- `token_logprobs` is the one place log-probs are computed: the samplers, the RL losses and the SFT
  loss all use it, so "old" and "new" log-probs can never disagree by construction. It takes the
  final hidden states from the model and projects them onto the vocabulary chunk by chunk
  (`logprobs_from_hidden`), so no (B, T, V) logits tensor ever exists.
- Checkpoints are sharded with `torch.distributed.checkpoint` (each rank writes and reads its own
  shard of model + optimizer), plus scheduler, step, the caller's `extra` (data position, ...) and
  every rank's RNG states. They are written to a temporary folder and renamed into place, so a run
  killed at any moment leaves the previous checkpoint intact. `export_pretrained` still gathers one
  HF `save_pretrained` folder.
"""

from __future__ import annotations

import json
import math
import os
import random
import shutil
import tempfile
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist

from common.data import write_jsonl

# --------------------------------------------------------------------------------------------------
# distributed


@dataclass
class Dist:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def init_distributed(timeout_minutes: float = 30.0) -> Dist:
    """Join torchrun's process group when launched by torchrun; otherwise a single process."""
    if int(os.environ.get("WORLD_SIZE", "1")) > 1 and not dist.is_initialized():
        local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        if torch.cuda.is_available():
            torch.cuda.set_device(local_rank)
            backend, device = "nccl", torch.device("cuda", local_rank)
        else:
            backend, device = "gloo", torch.device("cpu")
            # CPU ranks share the machine's cores: one rank must not take them all.
            torch.set_num_threads(max(1, (os.cpu_count() or 1) // int(os.environ["WORLD_SIZE"])))
        dist.init_process_group(backend, timeout=timedelta(minutes=timeout_minutes))
        return Dist(dist.get_rank(), dist.get_world_size(), local_rank, device)
    if dist.is_initialized():
        local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        device = (
            torch.device("cuda", local_rank) if torch.cuda.is_available() else torch.device("cpu")
        )
        return Dist(dist.get_rank(), dist.get_world_size(), local_rank, device)
    return Dist(device=torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu"))


def is_main_process() -> bool:
    return not dist.is_initialized() or dist.get_rank() == 0


def print0(*args, **kwargs):
    if is_main_process():
        print(*args, **kwargs, flush=True)


def barrier():
    if dist.is_initialized():
        dist.barrier()


def all_gather_object(obj) -> list:
    """Every rank's `obj`, in rank order (a one-element list without torchrun)."""
    if not dist.is_initialized():
        return [obj]
    out = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


def broadcast_object(obj, src: int = 0):
    if not dist.is_initialized():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]


def cleanup_distributed(barrier: bool = True):
    """Leave the process group. The barrier makes the ranks leave together: gloo can abort a rank
    ("terminate called without an active exception") whose peer tears its connections down first.
    Pass barrier=False on an error path, where the other ranks may never arrive."""
    if dist.is_initialized():
        if barrier:
            dist.barrier()
        dist.destroy_process_group()


def seed_everything(seed: int):
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


# --------------------------------------------------------------------------------------------------
# FSDP2


@dataclass(frozen=True)
class Precision:
    """Which dtype each piece lives and computes in. Master weights and AdamW state are always
    fp32."""

    compute_dtype: torch.dtype  # forward/backward of trained models (FSDP2 param_dtype)
    reduce_dtype: torch.dtype  # gradient reduce-scatter
    frozen_dtype: torch.dtype  # weights of frozen models (reference, PRM, judge, teacher)
    fsdp: (
        bool  # wrap with fully_shard even in one process (a one-rank mesh carries the bf16 policy)
    )


def precision_policy(device_type: str, world_size: int = 1) -> Precision:
    """bf16 compute with fp32 master weights on CUDA (FSDP2 mixed precision, any world size); fp32
    on CPU, where bf16 matmuls are slow and the toy runs must stay exact. FSDP2 only when it is
    needed: several ranks, or CUDA (its MixedPrecisionPolicy is what gives the bf16 compute)."""
    cuda = device_type == "cuda"
    low = torch.bfloat16 if cuda else torch.float32
    return Precision(
        compute_dtype=low, reduce_dtype=torch.float32, frozen_dtype=low, fsdp=cuda or world_size > 1
    )


def _ensure_process_group(device: torch.device):
    """A one-rank process group for FSDP2 in a plain (non-torchrun) process."""
    if dist.is_initialized():
        return
    cuda = device.type == "cuda"
    index = (
        device.index if device.index is not None else (torch.cuda.current_device() if cuda else 0)
    )
    dist.init_process_group(
        "nccl" if cuda else "gloo",
        store=dist.HashStore(),
        rank=0,
        world_size=1,
        device_id=torch.device("cuda", index) if cuda else None,
    )


def enable_gradient_checkpointing(model):
    """HF activation checkpointing of every decoder layer, non-reentrant (the variant FSDP2
    supports). HF checkpoints only while the model is in train mode with gradients on (shard_model
    leaves trained models in train mode; a script that switches to eval switches back before its
    loss pass). It also turns off the KV cache in train mode (a recomputed layer cannot append to
    it)."""
    kwargs = {"use_reentrant": False}
    if hasattr(model, "activation_checkpointing_enable"):  # transformers >= 5.2x
        model.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)
    else:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)
    return model


def gradient_checkpointing_on(model) -> bool:
    """Whether HF activation checkpointing is enabled (transformers 5.2x renamed the property)."""
    new = hasattr(type(model), "is_activation_checkpointing")
    name = "is_activation_checkpointing" if new else "is_gradient_checkpointing"
    return bool(getattr(model, name, False))


def shard_model(
    model,
    dist_info: Dist,
    frozen: bool = False,
    policy: Precision | None = None,
    gradient_checkpointing: bool = False,
):
    """Apply the precision policy and FSDP2: shard each transformer block, then the root.

    Trained models are cast to fp32 (master weights); `frozen` ones (reference, PRM, teacher) to the
    policy's frozen dtype, with gradients off and in eval mode. `fully_shard` runs on the CPU copy
    and moves only this rank's shard to the device; without FSDP the model is just moved there.
    """
    policy = policy or precision_policy(dist_info.device.type, dist_info.world_size)
    # train mode for trained models: HF checkpoints layers only in train mode (the samplers switch
    # to eval and back); every model here has dropout 0, so the mode changes nothing else
    model.requires_grad_(False).eval() if frozen else model.train()
    model.to(dtype=policy.frozen_dtype if frozen else torch.float32)
    if gradient_checkpointing and not frozen:
        enable_gradient_checkpointing(model)
    if not policy.fsdp or (frozen and dist_info.world_size == 1):
        return model.to(dist_info.device)
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

    _ensure_process_group(dist_info.device)
    mesh = init_device_mesh(dist_info.device.type, (dist.get_world_size(),))
    # frozen weights already are in their compute dtype: nothing to cast, no gradients to reduce
    mp = (
        MixedPrecisionPolicy()
        if frozen
        else MixedPrecisionPolicy(
            param_dtype=policy.compute_dtype, reduce_dtype=policy.reduce_dtype
        )
    )
    block_names = set(getattr(model, "_no_split_modules", None) or [])
    for module in model.modules():
        if type(module).__name__ in block_names:
            fully_shard(module, mesh=mesh, mp_policy=mp)
    fully_shard(model, mesh=mesh, mp_policy=mp)  # root: embeddings, (tied) lm_head, final norm
    return model.to(dist_info.device)  # buffers outside any block (rotary inv_freq)


# --------------------------------------------------------------------------------------------------
# batches, log-probs, losses


def pad_batch(prompt_ids: list[list[int]], completion_ids: list[list[int]], pad_id: int):
    """Concatenate prompt + completion per row and right-pad.

    Returns input_ids (B, L), attention_mask (B, L), completion_mask (B, L) (1 on completion
    tokens).
    """
    rows = [p + c for p, c in zip(prompt_ids, completion_ids)]
    L = max(len(r) for r in rows)
    input_ids = torch.full((len(rows), L), pad_id, dtype=torch.long)
    attention_mask = torch.zeros((len(rows), L), dtype=torch.long)
    completion_mask = torch.zeros((len(rows), L), dtype=torch.long)
    for i, (p, c) in enumerate(zip(prompt_ids, completion_ids)):
        input_ids[i, : len(p) + len(c)] = torch.tensor(p + c, dtype=torch.long)
        attention_mask[i, : len(p) + len(c)] = 1
        completion_mask[i, len(p) : len(p) + len(c)] = 1
    return input_ids, attention_mask, completion_mask


def _chunk_logprobs(hidden, weight, targets, return_entropy: bool):
    """hidden (n, H), weight (V, H), targets (n,) -> log-probs (n,) [and entropies (n,)], fp32."""
    logits = (hidden @ weight.to(hidden.dtype).T).float()  # (n, V) in the compute dtype, then fp32
    lse = torch.logsumexp(logits, dim=-1)  # (n,)
    logps = logits.gather(-1, targets.unsqueeze(-1)).squeeze(-1) - lse  # (n,)
    if not return_entropy:
        return logps
    entropy = lse - (torch.softmax(logits, dim=-1) * logits).sum(-1)  # (n,) H = lse - E_p[z]
    return logps, entropy


def logprobs_from_hidden(
    hidden,
    lm_head_weight,
    targets,
    chunk_size: int = 1024,
    return_entropy: bool = False,
    temperature: float = 1.0,
):
    """Log-probs of `targets` (and entropies) from final hidden states, never materialising (B, T,
    V).

    hidden (B, T, H), lm_head_weight (V, H), targets (B, T) -> (B, T) fp32 [, (B, T)]. The B*T
    positions are projected onto the vocabulary `chunk_size` at a time; with gradients on, each
    chunk is recomputed in the backward pass (torch.utils.checkpoint), so the peak is one chunk's
    (chunk_size, V) logits instead of (B*T, V), and gradients reach both `hidden` and the head.
    The temperature divides the logits (z / tau), as the sampler does.
    """
    B, T, H = hidden.shape
    flat_h = hidden.reshape(B * T, H)  # (N, H)
    if temperature != 1.0:
        flat_h = flat_h / temperature  # (h / tau) W^T = (h W^T) / tau
    flat_t = targets.reshape(B * T)  # (N,)
    grad = torch.is_grad_enabled() and (hidden.requires_grad or lm_head_weight.requires_grad)
    parts = []
    for s in range(0, B * T, max(1, chunk_size)):
        args = (
            flat_h[s : s + chunk_size],
            lm_head_weight,
            flat_t[s : s + chunk_size],
            return_entropy,
        )
        if grad:
            out = torch.utils.checkpoint.checkpoint(_chunk_logprobs, *args, use_reentrant=False)
        else:
            out = _chunk_logprobs(*args)
        parts.append(out if return_entropy else (out,))
    if not parts:  # T == 0
        empty = hidden.new_zeros((B, T), dtype=torch.float32)
        return (empty, empty.clone()) if return_entropy else empty
    logps = torch.cat([p[0] for p in parts]).view(B, T)  # (B, T)
    if not return_entropy:
        return logps
    return logps, torch.cat([p[1] for p in parts]).view(B, T)  # (B, T), (B, T)


# Heads that are not a plain bias-free projection (Gemma-2's soft-capping, Cohere's logit_scale,
# Granite's logits_scaling) go through the model's own logits instead of logprobs_from_hidden.
_LOGIT_TRANSFORMS = ("final_logit_softcapping", "logit_scale", "logits_scaling")


def _text_config(model):
    cfg = model.config
    return cfg.get_text_config() if hasattr(cfg, "get_text_config") else cfg


def lm_head_weight(model):
    """The output projection's weight (V, H): the tied embedding too. Under FSDP2 call it right
    after the model's forward: the root group keeps its parameters unsharded until the backward, so
    this is the full (gathered, compute-dtype) weight and its gradient goes through FSDP2's
    reduce-scatter."""
    return model.get_output_embeddings().weight


def plain_lm_head(model) -> bool:
    head = model.get_output_embeddings()
    cfg = _text_config(model)
    odd = [k for k in _LOGIT_TRANSFORMS if getattr(cfg, k, None) not in (None, 1.0)]
    return isinstance(head, torch.nn.Linear) and head.bias is None and not odd


def forward_hidden(model, **inputs):
    """(final hidden states (B, L, H), model output) through the model's own forward.

    The full forward runs (so FSDP2's root hooks, VLM image merging and attention patches all run),
    with `logits_to_keep=1` so its lm_head sees one position only; the hidden states are read from
    the base model's output (after the final norm) by a forward hook.
    """
    box = {}

    def grab(module, args, output):
        box["hidden"] = output[0]  # last_hidden_state

    handle = model.base_model.register_forward_hook(grab)
    try:
        out = model(**inputs, logits_to_keep=1)
    finally:
        handle.remove()
    return box["hidden"], out


def token_logprobs(
    model,
    input_ids,
    attention_mask,
    return_entropy: bool = False,
    temperature: float = 1.0,
    chunk_size: int = 1024,
    **model_kwargs,
):
    """Log-prob of each next token under the model: (B, L-1) for targets input_ids[:, 1:].

    With `return_entropy`, also the entropy of each predictive distribution, (B, L-1). The logits
    are never materialised: see `logprobs_from_hidden`.
    """
    targets = input_ids[:, 1:]  # (B, L-1) position t predicts token t+1
    if not plain_lm_head(model):
        logits = model(input_ids=input_ids, attention_mask=attention_mask, **model_kwargs).logits
        logits = logits[:, :-1].float() / temperature  # (B, L-1, V)
        lse = torch.logsumexp(logits, dim=-1)  # (B, L-1)
        logps = logits.gather(-1, targets.unsqueeze(-1)).squeeze(-1) - lse
        if not return_entropy:
            return logps
        return logps, lse - (torch.softmax(logits, dim=-1) * logits).sum(-1)
    hidden, _ = forward_hidden(
        model, input_ids=input_ids, attention_mask=attention_mask, **model_kwargs
    )  # (B, L, H)
    return logprobs_from_hidden(
        hidden[:, :-1], lm_head_weight(model), targets, chunk_size, return_entropy, temperature
    )  # (B, L-1)


def sft_loss(
    model, input_ids, attention_mask, loss_mask, normalizer: float | None = None, **model_kwargs
):
    """Mean negative log-likelihood over the tokens where loss_mask is 1 (prompt tokens masked out).

    `normalizer` replaces this batch's own token count: a micro-batch divides by the token count of
    its whole batch, so the accumulated gradient equals the unsplit batch's token mean.
    """
    logps = token_logprobs(model, input_ids, attention_mask, **model_kwargs)  # (B, L-1)
    mask = loss_mask[:, 1:].to(logps.dtype)
    denom = mask.sum().clamp(min=1.0) if normalizer is None else max(float(normalizer), 1.0)
    return -(logps * mask).sum() / denom


def micro_batches(n: int, size: int) -> list[slice]:
    """Rows [0, n) as consecutive slices of at most `size` rows (size <= 0: one slice)."""
    size = size if size > 0 else max(n, 1)
    return [slice(s, min(s + size, n)) for s in range(0, n, size)]


def make_optimizer(model, lr: float, weight_decay: float = 0.0, betas=(0.9, 0.999)):
    """AdamW over the trainable parameters, which must be fp32 master weights: at lr 1e-6 a bf16
    weight (8 mantissa bits) rounds most updates away. shard_model casts trained models to fp32."""
    params = [p for p in model.parameters() if p.requires_grad]
    bad = [
        (n, p.dtype)
        for n, p in model.named_parameters()
        if p.requires_grad and p.dtype != torch.float32
    ]
    if bad:
        raise ValueError(
            f"make_optimizer: trainable parameter {bad[0][0]!r} is {bad[0][1]} ({len(bad)} such); "
            "AdamW steps fp32 master weights only: pass the model through shard_model (or load it "
            "with dtype='float32'); bf16 compute comes from the FSDP2 mixed-precision policy"
        )
    return torch.optim.AdamW(params, lr=lr, betas=tuple(betas), weight_decay=weight_decay)


def make_scheduler(
    optimizer, kind: str = "constant", warmup_steps: int = 0, total_steps: int = 1, **kind_kwargs
):
    """transformers.get_scheduler: 'constant', 'constant_with_warmup', 'cosine', 'linear', ...;
    `kind_kwargs` go to the schedule itself (e.g. min_lr_rate=0.1 for 'cosine_with_min_lr')."""
    from transformers import get_scheduler

    return get_scheduler(
        kind,
        optimizer,
        num_warmup_steps=warmup_steps,
        num_training_steps=max(1, total_steps),
        scheduler_specific_kwargs=kind_kwargs or None,
    )


def clip_grad_norm(model, max_norm: float) -> float:
    """Gradient clipping that also works on FSDP2's DTensor parameters; returns the total norm."""
    norm = torch.nn.utils.clip_grad_norm_(
        [p for p in model.parameters() if p.grad is not None], max_norm
    )
    if hasattr(norm, "full_tensor"):
        norm = norm.full_tensor()
    return float(norm)


# --------------------------------------------------------------------------------------------------
# checkpoints


def _rng_state() -> dict:
    state = {
        "python": random.getstate(),
        "numpy": np.random.get_state(),
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict):
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def full_state_dict(model, optimizer=None):
    """Full (unsharded, CPU) state dicts; a collective under FSDP2 (every rank must call it)."""
    from torch.distributed.checkpoint.state_dict import (
        StateDictOptions,
        get_model_state_dict,
        get_state_dict,
    )

    opts = StateDictOptions(full_state_dict=True, cpu_offload=True)
    if optimizer is None:
        return get_model_state_dict(model, options=opts)
    return get_state_dict(model, optimizer, options=opts)


def save_checkpoint(
    ckpt_dir, model, optimizer=None, scheduler=None, step: int = 0, extra: dict | None = None
):
    """Atomically write a sharded checkpoint folder (tmp folder + rename). Every rank must call it.

    `state/` is a torch.distributed.checkpoint folder: each rank writes its own shard of the model
    and optimizer (FSDP2 DTensors stay sharded; no rank gathers the full state). Beside it: the
    scheduler, `meta.json` (step, extra, the parameters that have optimizer state) and one RNG file
    per rank.
    """
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_model_state_dict, get_state_dict

    ckpt_dir = Path(ckpt_dir)
    tmp, old = (
        ckpt_dir.with_name(ckpt_dir.name + ".tmp"),
        ckpt_dir.with_name(ckpt_dir.name + ".old"),
    )
    rank = dist.get_rank() if dist.is_initialized() else 0
    if rank == 0:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
    barrier()
    if optimizer is not None:
        model_sd, optim_sd = get_state_dict(model, optimizer)  # sharded (DTensor) under FSDP2
        state = {"model": model_sd, "optim": optim_sd}
        with_state = sorted(optim_sd["state"])  # FQNs of the parameters AdamW has state for
    else:
        state, with_state = {"model": get_model_state_dict(model)}, []
    dcp.save(state, checkpoint_id=str(tmp / "state"))
    torch.save(_rng_state(), tmp / f"rng_rank{rank}.pt")
    if rank == 0:
        if scheduler is not None:
            torch.save(scheduler.state_dict(), tmp / "scheduler.pt")
        with open(tmp / "meta.json", "w") as f:
            json.dump(
                {
                    "step": step,
                    "extra": extra or {},
                    "optimizer": optimizer is not None,
                    "params_with_optimizer_state": with_state,
                },
                f,
            )
    barrier()
    if rank == 0:
        if ckpt_dir.exists():
            shutil.rmtree(old, ignore_errors=True)
            os.rename(ckpt_dir, old)
        os.rename(tmp, ckpt_dir)
        shutil.rmtree(old, ignore_errors=True)
    barrier()


def read_checkpoint(ckpt_dir) -> dict:
    """The whole checkpoint as plain tensors in one process, for inspection or conversion:
    {"model": {fqn: tensor}, "optim": {"state": {fqn: {...}}, "param_groups": [...]}, "meta":
    {...}}. Gathers every rank's shard (DCP's `dcp_to_torch_save`), so it needs the full model's
    memory."""
    from torch.distributed.checkpoint.format_utils import dcp_to_torch_save

    ckpt_dir = Path(ckpt_dir)
    with tempfile.TemporaryDirectory() as tmp:
        flat = Path(tmp) / "state.pt"
        dcp_to_torch_save(str(ckpt_dir / "state"), str(flat))
        state = torch.load(flat, weights_only=False)
    state["meta"] = json.loads((ckpt_dir / "meta.json").read_text())
    return state


def load_checkpoint(ckpt_dir, model, optimizer=None, scheduler=None, restore_rng: bool = True):
    """Restore a checkpoint written by `save_checkpoint`; returns (step, extra) or None if there is
    none.

    Each rank reads its own shard (the world size may differ from the saving run's: DCP reshards).
    """
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.default_planner import DefaultLoadPlanner
    from torch.distributed.checkpoint.state_dict import (
        StateDictOptions,
        get_model_state_dict,
        get_state_dict,
        set_model_state_dict,
        set_state_dict,
    )

    ckpt_dir = Path(ckpt_dir)
    old = ckpt_dir.with_name(ckpt_dir.name + ".old")
    if not (ckpt_dir / "meta.json").exists():
        if (old / "meta.json").exists():  # killed between the two renames of save_checkpoint
            ckpt_dir = old
        else:
            return None
    meta = json.loads((ckpt_dir / "meta.json").read_text())
    if optimizer is not None and meta.get("optimizer"):
        # get_state_dict gives AdamW zero state for every parameter (a step at lr 0) as the template
        # to load into; parameters that never had a gradient (a VLM's unused vision layer norm, the
        # vision tower during a text-only stage) have none in the file: load partially and drop that
        # made-up state, so they start fresh at their first gradient exactly as in the uninterrupted
        # run.
        model_sd, optim_sd = get_state_dict(model, optimizer)
        state = {"model": model_sd, "optim": optim_sd}
        dcp.load(
            state,
            checkpoint_id=str(ckpt_dir / "state"),
            planner=DefaultLoadPlanner(allow_partial_load=True),
        )
        set_state_dict(
            model,
            optimizer,
            model_state_dict=state["model"],
            optim_state_dict=state["optim"],
            options=StateDictOptions(strict=False),
        )
        keep = set(meta["params_with_optimizer_state"])
        for name, param in model.named_parameters():
            if name not in keep:
                optimizer.state.pop(param, None)
    else:
        state = {"model": get_model_state_dict(model)}
        dcp.load(state, checkpoint_id=str(ckpt_dir / "state"))
        set_model_state_dict(model, state["model"])
    if scheduler is not None and (ckpt_dir / "scheduler.pt").exists():
        scheduler.load_state_dict(torch.load(ckpt_dir / "scheduler.pt", weights_only=False))
    rank = dist.get_rank() if dist.is_initialized() else 0
    rng_file = ckpt_dir / f"rng_rank{rank}.pt"
    if restore_rng and rng_file.exists():
        _set_rng_state(torch.load(rng_file, weights_only=False))
    return meta["step"], meta["extra"]


def export_pretrained(model, tokenizer_or_processor, out_dir):
    """Write a HF folder (config + safetensors + tokenizer/processor) loadable by `load_model`."""
    state = full_state_dict(model)
    if is_main_process():
        Path(out_dir).mkdir(parents=True, exist_ok=True)
        model.save_pretrained(out_dir, state_dict=state)
        tokenizer_or_processor.save_pretrained(out_dir)
    barrier()


# --------------------------------------------------------------------------------------------------
# metrics


class MetricsLogger:
    """JSONL always (`metrics.jsonl`), TensorBoard when installed, W&B only with `track=True`.

    Only rank 0 writes. With `resume_step`, records after that step (written by the killed run after
    its last checkpoint) are dropped so the curves have no duplicates.
    """

    def __init__(
        self,
        output_dir,
        track: bool = False,
        run_name: str = "run",
        config: dict | None = None,
        resume_step: int | None = None,
    ):
        self.enabled = is_main_process()
        self.output_dir = Path(output_dir)
        self.path = self.output_dir / "metrics.jsonl"
        self.history: list[dict] = []
        self.tb = self.wandb = None
        if not self.enabled:
            return
        self.output_dir.mkdir(parents=True, exist_ok=True)
        if resume_step is not None and self.path.exists():
            for line in self.path.read_text().splitlines():
                try:
                    rec = json.loads(line)
                except json.JSONDecodeError:
                    continue  # a line cut short when the earlier run was killed
                if rec.get("step", 0) <= resume_step:
                    self.history.append(rec)
        with open(self.path, "w") as f:
            f.writelines(json.dumps(r) + "\n" for r in self.history)
        try:
            from torch.utils.tensorboard import SummaryWriter

            self.tb = SummaryWriter(str(self.output_dir / "tb"))
        except Exception:  # tensorboard is optional
            self.tb = None
        if track:
            import wandb

            self.wandb = wandb.init(name=run_name, config=config or {}, dir=str(self.output_dir))

    def log(self, metrics: dict, step: int):
        if not self.enabled:
            return
        rec = {
            "step": step,
            **{
                k: (float(v) if isinstance(v, (int, float, np.floating, torch.Tensor)) else v)
                for k, v in metrics.items()
            },
        }
        self.history.append(rec)
        write_jsonl(self.path, [rec], mode="a")
        if self.tb is not None:
            for k, v in rec.items():
                if k != "step" and isinstance(v, float) and math.isfinite(v):
                    self.tb.add_scalar(k, v, step)
        if self.wandb is not None:
            self.wandb.log(rec, step=step)

    def plot(self, keys: list[str], path=None, title: str | None = None, x: str = "step"):
        """One panel per key against `x`; records without the key are skipped."""
        if not self.enabled:
            return None
        return plot_curves(
            self.history, keys, path or self.output_dir / "curves.png", title=title, x=x
        )

    def close(self):
        if self.tb is not None:
            self.tb.close()
        if self.wandb is not None:
            self.wandb.finish()


def plot_curves(
    records: list[dict], keys: list[str], path, title: str | None = None, x: str = "step"
):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(keys), figsize=(4 * len(keys), 3.2), squeeze=False)
    for ax, key in zip(axes[0], keys):
        pts = [(r[x], r[key]) for r in records if key in r and r[key] is not None and x in r]
        if pts:
            ax.plot(*zip(*pts), marker="." if len(pts) < 40 else None)
        ax.set_title(key, fontsize=9)
        ax.set_xlabel(x)
        ax.grid(alpha=0.3)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return str(path)


def format_table(rows: list[dict], floatfmt: str = ".3f") -> str:
    """A markdown table from a list of dicts (columns in first-seen order)."""
    if not rows:
        return "(empty)"
    cols = list(dict.fromkeys(k for r in rows for k in r))
    fmt = lambda v: format(v, floatfmt) if isinstance(v, float) else str(v)  # noqa: E731
    cells = [[fmt(r.get(c, "")) for c in cols] for r in rows]
    widths = [max(len(c), *(len(row[i]) for row in cells)) for i, c in enumerate(cols)]
    line = lambda vals: "| " + " | ".join(v.ljust(w) for v, w in zip(vals, widths)) + " |"  # noqa: E731
    return "\n".join(
        [line(cols), "|" + "|".join("-" * (w + 2) for w in widths) + "|", *map(line, cells)]
    )


def sft_inputs(tokenizer, prompt_ids: list[list[int]], response_ids: list[list[int]], device="cpu"):
    """Right-padded SFT tensors with the prompt masked: (input_ids, attention_mask, loss_mask)."""
    input_ids, attention_mask, loss_mask = pad_batch(
        prompt_ids, response_ids, tokenizer.pad_token_id
    )
    return input_ids.to(device), attention_mask.to(device), loss_mask.to(device)


def sequence_logprob(model, input_ids, attention_mask, loss_mask, **model_kwargs):
    """Per-row sum of log-probs over the loss tokens, (B,): what DPO-style losses compare."""
    logps = token_logprobs(model, input_ids, attention_mask, **model_kwargs)  # (B, L-1)
    return (logps * loss_mask[:, 1:].to(logps.dtype)).sum(-1)
