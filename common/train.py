"""Training plumbing shared by every script: torchrun init, FSDP2, log-probs, SFT loss, optimizer,
schedule, checkpoints and metrics.

- `init_distributed` reads torchrun's environment (gloo on CPU, nccl on GPU); without torchrun it is a
  single process and every collective helper here is a no-op.
- `shard_model` applies FSDP2 `fully_shard` to each decoder layer, then to the root (verl's order).
  Tied input/output embeddings share one parameter, which stays with the root group.
- `token_logprobs` is the one place log-probs are computed: the samplers, the RL losses and the SFT
  loss all use it, so "old" and "new" log-probs can never disagree by construction.
- Checkpoints hold model + optimizer (full state dicts, FSDP2-aware), scheduler, step, the caller's
  `extra` (data position, ...) and every rank's RNG states. They are written to a temporary folder and
  renamed into place, so a run killed at any moment leaves the previous checkpoint intact.
"""

from __future__ import annotations

import json
import math
import os
import random
import shutil
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist

from common.data import write_jsonl

# ----------------------------------------------------------------------------------------------------
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
        device = torch.device("cuda", local_rank) if torch.cuda.is_available() else torch.device("cpu")
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


def cleanup_distributed():
    if dist.is_initialized():
        dist.destroy_process_group()


def seed_everything(seed: int):
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


# ----------------------------------------------------------------------------------------------------
# FSDP2


def shard_model(model, dist_info: Dist, bf16_compute: bool = False):
    """FSDP2: shard each transformer block, then the root. A single process just moves to the device."""
    model.to(dist_info.device)
    if dist_info.world_size == 1:
        return model
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

    mesh = init_device_mesh(dist_info.device.type, (dist_info.world_size,))
    mp = MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32) if bf16_compute else MixedPrecisionPolicy()
    block_names = set(getattr(model, "_no_split_modules", None) or [])
    for module in model.modules():
        if type(module).__name__ in block_names:
            fully_shard(module, mesh=mesh, mp_policy=mp)
    fully_shard(model, mesh=mesh, mp_policy=mp)  # root: embeddings, (tied) lm_head, final norm
    return model


# ----------------------------------------------------------------------------------------------------
# batches, log-probs, losses


def pad_batch(prompt_ids: list[list[int]], completion_ids: list[list[int]], pad_id: int):
    """Concatenate prompt + completion per row and right-pad.

    Returns input_ids (B, L), attention_mask (B, L), completion_mask (B, L) (1 on completion tokens).
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


def token_logprobs(model, input_ids, attention_mask, return_entropy: bool = False, temperature: float = 1.0, **model_kwargs):
    """Log-prob of each next token under the model: (B, L-1) for targets input_ids[:, 1:].

    With `return_entropy`, also the entropy of each predictive distribution, (B, L-1).
    """
    logits = model(input_ids=input_ids, attention_mask=attention_mask, **model_kwargs).logits  # (B, L, V)
    logits = logits[:, :-1].float() / temperature  # (B, L-1, V) position t predicts token t+1
    targets = input_ids[:, 1:]  # (B, L-1)
    logps = logits.gather(-1, targets.unsqueeze(-1)).squeeze(-1) - torch.logsumexp(logits, dim=-1)  # (B, L-1)
    if not return_entropy:
        return logps
    probs = torch.softmax(logits, dim=-1)
    entropy = torch.logsumexp(logits, dim=-1) - (probs * logits).sum(-1)  # (B, L-1)
    return logps, entropy


def sft_loss(model, input_ids, attention_mask, loss_mask, **model_kwargs):
    """Mean negative log-likelihood over the tokens where loss_mask is 1 (prompt tokens masked out)."""
    logps = token_logprobs(model, input_ids, attention_mask, **model_kwargs)  # (B, L-1)
    mask = loss_mask[:, 1:].to(logps.dtype)
    return -(logps * mask).sum() / mask.sum().clamp(min=1.0)


def make_optimizer(model, lr: float, weight_decay: float = 0.0, betas=(0.9, 0.999)):
    params = [p for p in model.parameters() if p.requires_grad]
    return torch.optim.AdamW(params, lr=lr, betas=tuple(betas), weight_decay=weight_decay)


def make_scheduler(optimizer, kind: str = "constant", warmup_steps: int = 0, total_steps: int = 1, **kind_kwargs):
    """transformers.get_scheduler: 'constant', 'constant_with_warmup', 'cosine', 'linear', ...; `kind_kwargs` go to
    the schedule itself (e.g. min_lr_rate=0.1 for 'cosine_with_min_lr')."""
    from transformers import get_scheduler

    return get_scheduler(kind, optimizer, num_warmup_steps=warmup_steps, num_training_steps=max(1, total_steps),
                         scheduler_specific_kwargs=kind_kwargs or None)


def clip_grad_norm(model, max_norm: float) -> float:
    """Gradient clipping that also works on FSDP2's DTensor parameters; returns the total norm."""
    norm = torch.nn.utils.clip_grad_norm_([p for p in model.parameters() if p.grad is not None], max_norm)
    if hasattr(norm, "full_tensor"):
        norm = norm.full_tensor()
    return float(norm)


# ----------------------------------------------------------------------------------------------------
# checkpoints


def _rng_state() -> dict:
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
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
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict, get_state_dict

    opts = StateDictOptions(full_state_dict=True, cpu_offload=True)
    if optimizer is None:
        return get_model_state_dict(model, options=opts)
    return get_state_dict(model, optimizer, options=opts)


def save_checkpoint(ckpt_dir, model, optimizer=None, scheduler=None, step: int = 0, extra: dict | None = None):
    """Atomically write a checkpoint folder (tmp folder + rename). Every rank must call it."""
    ckpt_dir = Path(ckpt_dir)
    tmp, old = ckpt_dir.with_name(ckpt_dir.name + ".tmp"), ckpt_dir.with_name(ckpt_dir.name + ".old")
    rank = dist.get_rank() if dist.is_initialized() else 0
    if rank == 0:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
    barrier()
    if optimizer is not None:
        model_sd, optim_sd = full_state_dict(model, optimizer)
    else:
        model_sd, optim_sd = full_state_dict(model), None
    torch.save(_rng_state(), tmp / f"rng_rank{rank}.pt")
    if rank == 0:
        torch.save(model_sd, tmp / "model.pt")
        if optim_sd is not None:
            torch.save(optim_sd, tmp / "optimizer.pt")
        if scheduler is not None:
            torch.save(scheduler.state_dict(), tmp / "scheduler.pt")
        with open(tmp / "meta.json", "w") as f:
            json.dump({"step": step, "extra": extra or {}}, f)
    barrier()
    if rank == 0:
        if ckpt_dir.exists():
            shutil.rmtree(old, ignore_errors=True)
            os.rename(ckpt_dir, old)
        os.rename(tmp, ckpt_dir)
        shutil.rmtree(old, ignore_errors=True)
    barrier()


def load_checkpoint(ckpt_dir, model, optimizer=None, scheduler=None, restore_rng: bool = True):
    """Restore a checkpoint written by `save_checkpoint`; returns (step, extra) or None if there is none."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict, set_state_dict

    ckpt_dir = Path(ckpt_dir)
    old = ckpt_dir.with_name(ckpt_dir.name + ".old")
    if not (ckpt_dir / "meta.json").exists():
        if (old / "meta.json").exists():  # killed between the two renames of save_checkpoint
            ckpt_dir = old
        else:
            return None
    opts = StateDictOptions(full_state_dict=True)
    model_sd = torch.load(ckpt_dir / "model.pt", map_location="cpu", weights_only=False)
    if optimizer is not None and (ckpt_dir / "optimizer.pt").exists():
        optim_sd = torch.load(ckpt_dir / "optimizer.pt", map_location="cpu", weights_only=False)
        # Parameters that never had a gradient (a VLM's unused vision layer norm, the vision tower during a
        # text-only stage) have no AdamW state: load leniently and drop the zero state torch makes up for
        # them, so they start fresh at their first gradient exactly as in the uninterrupted run.
        set_state_dict(model, optimizer, model_state_dict=model_sd, optim_state_dict=optim_sd,
                       options=StateDictOptions(full_state_dict=True, strict=False))
        for name, param in model.named_parameters():
            if name not in optim_sd["state"]:
                optimizer.state.pop(param, None)
    else:
        set_model_state_dict(model, model_sd, options=opts)
    if scheduler is not None and (ckpt_dir / "scheduler.pt").exists():
        scheduler.load_state_dict(torch.load(ckpt_dir / "scheduler.pt", weights_only=False))
    rank = dist.get_rank() if dist.is_initialized() else 0
    rng_file = ckpt_dir / f"rng_rank{rank}.pt"
    if restore_rng and rng_file.exists():
        _set_rng_state(torch.load(rng_file, weights_only=False))
    meta = json.loads((ckpt_dir / "meta.json").read_text())
    return meta["step"], meta["extra"]


def export_pretrained(model, tokenizer_or_processor, out_dir):
    """Write a HF folder (config + safetensors + tokenizer/processor) loadable by `load_model`."""
    state = full_state_dict(model)
    if is_main_process():
        Path(out_dir).mkdir(parents=True, exist_ok=True)
        model.save_pretrained(out_dir, state_dict=state)
        tokenizer_or_processor.save_pretrained(out_dir)
    barrier()


# ----------------------------------------------------------------------------------------------------
# metrics


class MetricsLogger:
    """JSONL always (`metrics.jsonl`), TensorBoard when installed, W&B only with `track=True`.

    Only rank 0 writes. With `resume_step`, records after that step (written by the killed run after its
    last checkpoint) are dropped so the curves have no duplicates.
    """

    def __init__(self, output_dir, track: bool = False, run_name: str = "run", config: dict | None = None, resume_step: int | None = None):
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
        rec = {"step": step, **{k: (float(v) if isinstance(v, (int, float, np.floating, torch.Tensor)) else v) for k, v in metrics.items()}}
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
        return plot_curves(self.history, keys, path or self.output_dir / "curves.png", title=title, x=x)

    def close(self):
        if self.tb is not None:
            self.tb.close()
        if self.wandb is not None:
            self.wandb.finish()


def plot_curves(records: list[dict], keys: list[str], path, title: str | None = None, x: str = "step"):
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
    return "\n".join([line(cols), "|" + "|".join("-" * (w + 2) for w in widths) + "|", *map(line, cells)])


def sft_inputs(tokenizer, prompt_ids: list[list[int]], response_ids: list[list[int]], device="cpu"):
    """Right-padded SFT tensors with the prompt masked: (input_ids, attention_mask, loss_mask)."""
    input_ids, attention_mask, loss_mask = pad_batch(prompt_ids, response_ids, tokenizer.pad_token_id)
    return input_ids.to(device), attention_mask.to(device), loss_mask.to(device)


def sequence_logprob(model, input_ids, attention_mask, loss_mask, **model_kwargs):
    """Per-row sum of log-probs over the loss tokens, (B,): what DPO-style losses compare."""
    logps = token_logprobs(model, input_ids, attention_mask, **model_kwargs)  # (B, L-1)
    return (logps * loss_mask[:, 1:].to(logps.dtype)).sum(-1)
