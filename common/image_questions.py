"""Plumbing of mstar.py around image questions for a vision-language model (VLM).

- answers: `grade` (a cheap normalised match, math-verify for the rest);
- process reward models behind one `step_scores(rows, responses)`: `ModelPRM` (a trained PRM
  through common.prm) and `RuleStepPRM` (the shapes-world STAND-IN: a step checker);
- rows and encoding: `load_splits` (--data file or the shapes world), chat prompts with the image,
  `collate_vision` (every processor output passed through), `sft_step` and `train_steps`;
- the cached toy base (`tiny_base_vlm`) and the shared state of a run (`Run`, `setup`,
  `resume_point`).
"""

from __future__ import annotations

import functools
import io
import math
import random
import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from PIL import Image
from tqdm import tqdm

from common import prm
from common.data import load_rows
from common.models import end_of_turn, load_model, load_processor, make_tiny_vlm
from common.prm import ProcessRewardModel
from common.rewards import math_equal_batch, strip_string
from common.sampling import get_tokenizer, make_sampler, render_prompt
from common.shapes_world import (
    grade_steps,
    make_shapes_rows,
    misperceive,
    pretrain_tiny_vision,
    solve,
)
from common.toys import toy_model
from common.train import (
    MetricsLogger,
    all_gather_object,
    barrier,
    clip_grad_norm,
    init_distributed,
    load_checkpoint,
    make_optimizer,
    make_scheduler,
    micro_batches,
    pad_batch,
    precision_policy,
    print0,
    seed_everything,
    sft_loss,
    shard_model,
)

if TYPE_CHECKING:
    from mstar import Args

# The toy run computes on a fixed thread count: float reductions, hence the numbers, depend on it.
# One: a model this small runs as fast on one thread as on two, and mstar's baseline runs in a
# second process on the other core.
TOY_THREADS = 1

# --------------------------------------------------------------------------------------------------
# answers, steps and process reward models


def quick_match(pred: str | None, gold: str) -> bool | None:
    """The cheap part of grading: normalised string match, numbers compared as numbers; None when
    LaTeX or an expression is involved and math-verify must decide (too slow for every word)."""
    if pred is None:
        return False
    p, g = strip_string(pred).lower(), strip_string(str(gold)).lower()
    if p == g:
        return True
    number = re.compile(r"-?\d+(\.\d+)?")
    if number.fullmatch(p) and number.fullmatch(g):
        return float(p) == float(g)
    if "\\" in p or "\\" in g or (any(c.isdigit() for c in g) and not number.fullmatch(g)):
        return None
    return False


def grade(preds: list[str | None], golds: list[str]) -> list[bool]:
    """Correctness of many answers: `quick_match`, the rest by math-verify in parallel
    (common.rewards.math_equal_batch: a process pool with a per-item timeout)."""
    verdicts = [quick_match(p, g) for p, g in zip(preds, golds)]
    slow = [i for i, v in enumerate(verdicts) if v is None]
    if slow:
        checked = math_equal_batch([preds[i] for i in slow], [str(golds[i]) for i in slow])
        for i, ok in zip(slow, checked):
            verdicts[i] = ok
    return verdicts


def split_steps(response: str) -> list[str]:
    """One step per non-empty line; the final 'The answer is' line is not a reasoning step."""
    return [s for s in prm.split_steps(response) if not s.lower().startswith("the answer is")]


STEP_VALUE = {True: 1.0, False: 0.0, None: 0.5}  # a step that agrees, contradicts, says nothing


class RuleStepPRM:
    """STAND-IN for the multimodal PRM on the shapes world: each step is checked against the drawn
    scene (1 = agrees, 0 = contradicts, 0.5 = nothing checkable). It never sees the gold answer."""

    name = "rule-based step checker (stand-in PRM)"

    def step_scores(self, rows: list[dict], responses: list[list[str]]) -> list[list[list[float]]]:
        out = []
        for row, group in zip(rows, responses):
            if "objects" not in row:
                raise ValueError(
                    "--prm rule only works on shapes-world rows (they carry 'objects'); "
                    "pass --prm <model path>"
                )
            checks = [grade_steps(row, "\n".join(split_steps(r))) for r in group]
            out.append([[STEP_VALUE[v] for v in c] for c in checks])
        return out


class ModelPRM:
    """A trained (multimodal) PRM through common/prm.py: the prompt with its image, then the steps,
    each followed by --prm_step_tag (Math-Shepherd's layout); a step's score is P(good) at its
    tag."""

    def __init__(self, path: str, args: Args, device):
        dtype = precision_policy(torch.device(device).type).frozen_dtype  # bf16 on CUDA
        tokens = (args.prm_step_tag, args.prm_good_token, args.prm_bad_token)
        self.prm = ProcessRewardModel(
            path,
            "token",
            *tokens,
            device=device,
            dtype=dtype,
            vlm=True,
            extra_inputs=collate_vision,
            processor=load_processor(path),  # the policy family's processor (tests patch it)
        )
        self.name, self.args = self.prm.name, args

    def step_scores(self, rows: list[dict], responses: list[list[str]]) -> list[list[list[float]]]:
        out = []
        for row, group in zip(rows, responses):
            prompt = encode_prompt(self.prm.processor, row, self.args)
            steps = [split_steps(text) for text in group]
            out.append(self.prm.step_scores([prompt] * len(group), steps))
        return out


# --------------------------------------------------------------------------------------------------
# data and encoding (every processor output is passed through: LLaVA pixel_values (B, 3, H, W),
# Qwen2-VL flattened patches + image_grid_thw, ...)


def chat_prompt(row: dict, args: Args, hint: bool = False) -> list[dict]:
    text = row["question"] + (f" {args.instruction}" if args.instruction else "")
    if hint:  # warm-up (paper, setup): the answer is given, the model writes the reasoning
        text += f" Hint: the answer is {row['answer']}."
    return [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": text}]}]


def encode_prompt(processor, row: dict, args: Args, hint: bool = False) -> dict:
    return processor(
        text=[render_prompt(processor, chat_prompt(row, args, hint))],
        images=[image_of(row)],
        return_tensors="pt",
    )


def collate_vision(encs: list[dict], total_len: int) -> dict:
    """Model kwargs besides input_ids/attention_mask: per-token tensors (1, P) are right-padded to
    (B, L), anything else (pixel values, grid sizes) is concatenated along dim 0."""
    extra = {}
    for key in encs[0]:
        if key in ("input_ids", "attention_mask"):
            continue
        vals = [e[key] for e in encs]
        if all(v.dim() == 2 and v.shape == e["input_ids"].shape for v, e in zip(vals, encs)):
            padded = torch.zeros(len(vals), total_len, dtype=vals[0].dtype)  # (B, L)
            for i, v in enumerate(vals):
                padded[i, : v.shape[1]] = v[0]
            extra[key] = padded
        else:
            extra[key] = torch.cat(vals, dim=0)
    return extra


def response_ids(processor, examples: list[tuple[dict, str]]) -> list[list[int]]:
    tok = get_tokenizer(processor)
    eot = end_of_turn(tok)  # the model learns to stop
    return [tok(text + eot, add_special_tokens=False).input_ids for _, text in examples]


def sft_step(
    model,
    processor,
    examples: list[tuple[dict, str]],
    args: Args,
    device,
    hint_flags=None,
    normalizer: float | None = None,
) -> torch.Tensor:
    """Loss of one batch of (row, response) pairs; prompt tokens (and image tokens) are masked out.
    A micro-batch passes its whole batch's response-token count as `normalizer`
    (common.train.sft_loss)."""
    tok = get_tokenizer(processor)
    encs = [
        encode_prompt(processor, row, args, hint=bool(hint_flags and hint_flags[i]))
        for i, (row, _) in enumerate(examples)
    ]
    resp = response_ids(processor, examples)
    input_ids, attention_mask, loss_mask = pad_batch(
        [e["input_ids"][0].tolist() for e in encs], resp, tok.pad_token_id
    )  # (B, L)
    extra = collate_vision(encs, input_ids.shape[1])
    return sft_loss(
        model,
        input_ids.to(device),
        attention_mask.to(device),
        loss_mask.to(device),
        normalizer,
        **{k: v.to(device) for k, v in extra.items()},
    )


def load_image(value, root: str, where: str):
    """A PIL image from a PIL image, a datasets Image dict ({"bytes"} or {"path"}) or a path."""
    if hasattr(value, "convert"):
        return value.convert("RGB")
    if isinstance(value, dict) and value.get("bytes"):
        return Image.open(io.BytesIO(value["bytes"])).convert("RGB")
    path = Path(value["path"] if isinstance(value, dict) else str(value))
    path = path if path.is_absolute() or not root else Path(root) / path
    if not path.exists():
        raise FileNotFoundError(f"{where}: image {path} not found (--image_field / --image_root)")
    return Image.open(path).convert("RGB")


def image_loader(value, root: str, where: str):
    """A zero-argument loader of one row's image: a missing file is reported now, decoding waits."""
    if not hasattr(value, "convert") and not (isinstance(value, dict) and value.get("bytes")):
        path = Path(value["path"] if isinstance(value, dict) else str(value))
        if not (path if path.is_absolute() or not root else Path(root) / path).exists():
            load_image(value, root, where)  # raises the FileNotFoundError that names the row
    return functools.partial(load_image, value, root, where)


def image_of(row: dict):
    """The row's PIL image. --data rows hold a loader and decode on use (not 180K decoded images on
    every rank); shapes-world rows hold their small image."""
    return row["image"]() if callable(row["image"]) else row["image"]


def toy_kinds(args: Args):
    return tuple(k for k in args.toy_kinds.split(",") if k) or None


def load_splits(args: Args) -> tuple[list, list, list, list]:
    """(labelled train, unlabelled, validation, test) rows, each with its image (or loader)."""
    sizes = [args.num_train, args.num_unlabeled, args.num_val, args.num_test]
    if not args.data:  # shapes world: train and evaluation problems are disjoint
        splits = ["train", "train", "eval", "eval"]
        return tuple(
            make_shapes_rows(
                n, seed=args.seed + i, split=s, scene=args.toy_scene, kinds=toy_kinds(args)
            )
            for i, (n, s) in enumerate(zip(sizes, splits), 1)
        )
    rows = load_rows(args.data, required=(args.question_field, args.answer_field, args.image_field))
    random.Random(args.seed).shuffle(rows)
    if len(rows) < args.num_test + args.num_val + 1:
        raise ValueError(
            f"--data {args.data}: {len(rows)} rows, fewer than --num_test + --num_val + 1"
        )
    rows = [
        {
            "id": f"row{i}",
            "question": r[args.question_field],
            "answer": str(r[args.answer_field]),
            "image": image_loader(r[args.image_field], args.image_root, f"{args.data} row {i}"),
        }
        for i, r in enumerate(rows[: sum(sizes)])
    ]
    test, rest = rows[: args.num_test], rows[args.num_test :]
    val, rest = rest[: args.num_val], rest[args.num_val :]
    return rest[: args.num_train], rest[args.num_train :], val, test


# the toy base's bad habit: wrong side counts and wrong letter counts of colour names
MISCONCEPTION = {
    "sides": {"circle": 1, "square": 3, "triangle": 4},
    "letters": {"red": 4, "green": 4, "blue": 5, "yellow": 5},
}
# questions that use those facts
FACT_KINDS = ("sides", "times", "plus", "letters", "letters_plus", "letters_times")


def tiny_base_vlm(args: Args) -> str:
    """The tiny LLaVA made a weak "pretrained" VLM, cached: `pretrain_tiny_vision`, then SFT on
    captions (LLaVA's alignment data in miniature) and CoT where `base_noise` of the fact
    demonstrations state MISCONCEPTION (greedy answers wrong, some samples right: what
    self-evolving training is for), `base_noise / 4` of all are solved on a misperceived scene and
    a quarter carry the answer as a hint. Training problems only. The build code is hashed into the
    cache key (common.toys): edit it and the next run builds a fresh base."""
    spec = {
        "steps": args.base_steps,
        "noise": args.base_noise,
        "lr": args.base_lr,
        "batch": 32,
        "hints": 0.25,
        "captions": args.base_caption_share,
        "vision_steps": args.base_vision_steps,
        "instruction": args.instruction,
        "scene": args.toy_scene,
        "kinds": args.toy_kinds,
    }

    def build(
        folder: Path,
    ):  # on a fixed thread count (common.models.BUILD_THREADS): the same base on every machine
        path = make_tiny_vlm()
        processor, model = load_processor(path), load_model(path, vlm=True)
        seed_everything(1234)
        pretrain_tiny_vision(model, processor, args.base_vision_steps, seed=4321)
        rng = random.Random(1234)
        rows = make_shapes_rows(
            args.base_steps * 32,
            seed=1234,
            split="train",
            scene=args.toy_scene,
            kinds=toy_kinds(args),
        )
        optimizer = make_optimizer(model, args.base_lr)
        scheduler = make_scheduler(
            optimizer, "constant_with_warmup", args.base_steps // 20, args.base_steps
        )
        model.train()
        for step in tqdm(range(args.base_steps), desc="tiny base warm-start (cached)"):
            examples, hints = [], []
            for r in rows[step * 32 : (step + 1) * 32]:
                if rng.random() < args.base_caption_share:
                    examples.append(
                        ({**r, "question": "Describe the image."}, r["cot"].split("\n")[0])
                    )
                    hints.append(False)
                    continue
                wrong = None
                if r["meta"]["kind"] in FACT_KINDS and rng.random() < args.base_noise:
                    wrong = solve(
                        r["objects"], r["meta"], **MISCONCEPTION
                    )  # a consistent "bad habit"
                elif rng.random() < args.base_noise / 4:
                    wrong = solve(
                        misperceive(r["objects"], rng), r["meta"]
                    )  # occasional misperception
                examples.append((r, "\n".join(wrong[1]) if wrong else r["cot"]))
                hints.append(rng.random() < 0.25)
            sft_step(model, processor, examples, args, "cpu", hints).backward()
            clip_grad_norm(model, 1.0)
            optimizer.step(), scheduler.step(), optimizer.zero_grad()
        model.save_pretrained(folder)
        processor.save_pretrained(folder)

    return toy_model(
        "mstar-base",
        spec,
        build,
        code=[sft_step, make_shapes_rows, pretrain_tiny_vision, solve, misperceive],
    )


# --------------------------------------------------------------------------------------------------
# training and the run's shared state


def train_steps(run, optimizer, scheduler, examples, num_steps, seed) -> float | None:
    """`num_steps` SFT steps on global batches drawn (shuffled, cycling) from `examples`; returns
    the mean loss."""
    if not examples:
        return None
    args, dist_info = run.args, run.dist_info
    order = list(range(len(examples)))
    random.Random(seed).shuffle(order)
    run.model.train()
    losses = []
    for step in range(num_steps):
        batch = [
            examples[order[(step * args.batch_size + i) % len(order)]]
            for i in range(args.batch_size)
        ]
        mine = batch[dist_info.rank :: dist_info.world_size]
        # the token mean runs over the rank's whole batch, also when split into micro-batches
        num_tokens = sum(map(len, response_ids(run.processor, mine)))
        loss = 0.0
        for sl in micro_batches(len(mine), args.micro_batch_size):
            micro = sft_step(
                run.model, run.processor, mine[sl], args, dist_info.device, normalizer=num_tokens
            )
            micro.backward()
            loss += micro.item()
        clip_grad_norm(run.model, args.max_grad_norm)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        losses.append(loss)
    gathered = all_gather_object(losses)
    return sum(sum(p) / len(p) for p in gathered) / dist_info.world_size


@dataclass
class Run:
    """What every stage shares: flags, ranks, the policy and its sampler, the PRM, output, table."""

    args: Args
    dist_info: object
    model: object
    processor: object
    sampler: object
    prm: object
    out: Path
    warm_ckpt: Path
    logger: MetricsLogger | None = None
    table: list | None = None

    def sync_sampler(self):  # vLLM keeps its own weights: every rank pushes into its own engine
        self.sampler.sync_weights(self.model)  # a no-op for HF, which samples from the model

    def report(self, stage: str, iteration: int, metrics: dict):
        self.logger.log({"iteration": iteration, **metrics}, step=iteration + 1)
        shown = ("temperature", "samples_kept", "loss", "accuracy", "sampled_accuracy")
        shown += (f"pass@{self.args.eval_k}", "reward_pass@2")
        self.table.append({"stage": stage, **{k: metrics[k] for k in shown if k in metrics}})
        row = self.table[-1].items()
        print0(" | ".join(f"{k} {v:.3f}" if isinstance(v, float) else f"{k} {v}" for k, v in row))


def setup(args: Args) -> Run:
    """Ranks, the (cached) toy base or --model, the policy sharded over ranks, sampler and PRM."""
    dist_info = init_distributed()
    if not args.model and dist_info.world_size == 1:
        torch.set_num_threads(TOY_THREADS)  # the same toy numbers on any machine
    if not args.model and dist_info.is_main:
        tiny_base_vlm(args)  # rank 0 builds the cached toy base once; the others wait
    barrier()
    model_path = args.model or tiny_base_vlm(args)
    processor = load_processor(model_path)
    model = load_model(model_path, vlm=True)
    model = shard_model(model, dist_info, gradient_checkpointing=args.gradient_checkpointing)
    seed_everything(args.seed)  # after the (maybe first) toy build: cold and warm caches agree
    sampler = make_sampler(args.sampler, model, processor, model_path=model_path, args=args)
    if args.prm == "rule":
        prm = RuleStepPRM()
    else:
        prm = ModelPRM(args.prm, args, dist_info.device)
    out = Path(args.output_dir)
    (out / "samples").mkdir(parents=True, exist_ok=True)
    print0(f"model {model_path} | PRM: {prm.name} | training={args.training}")
    return Run(args, dist_info, model, processor, sampler, prm, out, out / "ckpt_warmup", table=[])


def new_optimizer(run: Run, total_steps: int):
    optimizer = make_optimizer(run.model, run.args.lr)
    warmup = int(run.args.warmup_ratio * total_steps)
    return optimizer, make_scheduler(optimizer, run.args.lr_scheduler, warmup, total_steps)


def root_forward(run: Run, row: dict):
    """FSDP2 initialises on the first forward, which must enter through the root module; a VLM's
    generate() may call its vision tower first, so one root forward runs up front."""
    if run.dist_info.world_size > 1:
        enc = encode_prompt(run.processor, row, run.args)
        with torch.no_grad():
            run.model(**{k: v.to(run.dist_info.device) for k, v in enc.items()})


def resume_point(run: Run, ckpt: Path, optimizer=None, scheduler=None) -> tuple[int, float]:
    """(first iteration, temperature): after the last finished iteration with --resume and a
    checkpoint in `ckpt`, else after the warm-up (loaded from its checkpoint with --resume)."""
    state = load_checkpoint(ckpt, run.model, optimizer, scheduler) if run.args.resume else None
    if state is None and run.args.resume:
        state = load_checkpoint(run.warm_ckpt, run.model)
    if state is None:
        return 0, run.args.temperature
    run.table = state[1]["table"]
    print0(f"resumed after iteration {state[1]['iteration']} from {ckpt.parent}")
    run.sync_sampler()
    return state[1]["iteration"] + 1, state[1]["temperature"]


def shard(items: list, dist_info) -> tuple[list, int]:
    """This rank's contiguous slice, padded with copies: all ranks run as many forwards (FSDP2)."""
    size = math.ceil(len(items) / dist_info.world_size)
    mine = items[dist_info.rank * size : (dist_info.rank + 1) * size]
    return mine + [items[0]] * (size - len(mine)), len(mine)
