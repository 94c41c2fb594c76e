"""M-STaR: multimodal continuous self-evolving training.

Paper: "Diving into Self-Evolving Training for Multimodal Reasoning" (Liu et al., arXiv 2412.17451, ICML 2025).

Idea: a vision-language model improves its own chain-of-thought (CoT) reasoning by repeatedly sampling answers to
labelled image questions, keeping the good ones and fine-tuning on them. The paper's final recipe (§3):
1. warm-up: CoT generated with the answer given as a hint; the correct ones are the first SFT set;
2. continuous self-evolving: each iteration samples only a fraction (25%) of the queries with the current model,
   then keeps training the *same* model with the *same* optimizer state and LR schedule (iterative RFT restarts
   the optimizer every iteration, ReST-EM also restarts the weights);
3. reward = answer correctness, then a multimodal process reward model (PRM) reranks the correct responses by
   their minimum step score and only the top 2 are kept;
4. every 2 iterations the sampling temperature is re-chosen in {0.3, ..., 1.6} to maximise Reward-Pass@2 on a
   validation split. Prompt variation (unlabelled queries + weighted-vote pseudo-labels) is available but off.

Departures (the paper's pipeline code is not released, so there is no code to disagree with):
- Each iteration trains a fixed `--steps_per_iteration` on batches drawn from its kept samples, so the LR schedule
  (cosine, 5% warmup; its shape is not in the sources) has a known length; the paper trains 10K steps in total.
- PRM: `--prm <HF model>` scores steps Math-Shepherd style (P("+") vs P("-") at a step tag); the released
  `hkust-nlp/mstar-prm-8b-v1.0` needs its own remote code and is not tested here. The CPU default uses a
  STAND-IN: a rule-based checker that compares every CoT step with the drawn scene (it never sees the label).
- On the shapes world the warm-up keeps only the correct hinted responses whose every step checks out
  (`--warmup_selection threshold`): the tiny model copies a hinted answer under unrelated reasoning. With --data
  it keeps all correct ones, as the paper does (`all`).
- Toy: the tiny LLaVA is first warm-started (cached) into a weak base: toy vision pre-training, then captions and
  CoT where 60% of the demonstrations state a wrong letter/side count (a "bad habit" self-training can remove).
  The default questions need only the colour of one shape, which that model reads reliably. Sizes, lr, batch,
  K for validation are toy values (paper values in --help). alpha of `threshold` is not in the sources (0.5).

Commands (naming --model selects the paper preset, PAPER below; flags you pass win; --print_config shows
the effective configuration without loading anything):
  python mstar.py                                                    # CPU, offline, tiny VLM + shapes world
  python mstar.py --model Qwen/Qwen2-VL-2B-Instruct --data mathv360k.jsonl --image_root images/ \\
      --prm /path/to/prm                             # 1 GPU
  torchrun --nproc_per_node=8 mstar.py  <same flags>                  # FSDP2 over 8 GPUs
"""

from __future__ import annotations

import functools
import io
import math
import random
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Literal

import torch
from PIL import Image
from tqdm import tqdm

from common.config import parse_config, per_rank
from common.data import load_rows, read_jsonl_tolerant, write_jsonl
from common.models import load_model, load_processor, make_tiny_vlm
from common.rewards import extract_answer, math_equal, pass_at_k, strip_string
from common.sampling import VLLMArgs, get_tokenizer, make_sampler, render_prompt
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
    cleanup_distributed,
    clip_grad_norm,
    format_table,
    init_distributed,
    load_checkpoint,
    make_optimizer,
    make_scheduler,
    micro_batches,
    pad_batch,
    precision_policy,
    print0,
    save_checkpoint,
    seed_everything,
    sft_loss,
    shard_model,
)


@dataclass
class Args(VLLMArgs):
    # generic
    seed: int = field(default=0, metadata={"help": "random seed"})
    output_dir: str = field(
        default="runs/mstar", metadata={"help": "metrics, samples, checkpoints, PNG"}
    )
    model: str | None = field(
        default=None,
        metadata={
            "help": "HF VLM id/path (AutoModelForImageTextToText); default: tiny LLaVA warm-started on the shapes world"
        },
    )
    data: str | None = field(
        default=None,
        metadata={
            "help": "file/folder/hub id with question, answer, image fields; default: shapes world"
        },
    )
    image_root: str | None = field(
        default=None,
        metadata={"help": "folder that relative image paths in --data are relative to"},
    )
    question_field: str = field(
        default="question", metadata={"help": "field of --data holding the question"}
    )
    answer_field: str = field(
        default="answer", metadata={"help": "field of --data holding the gold answer"}
    )
    image_field: str = field(
        default="image", metadata={"help": "field of --data holding the image (path or PIL)"}
    )
    instruction: str = field(
        default="",
        metadata={
            "help": "text appended to every question (real models: ask for one step per line and 'The answer is X.')"
        },
    )
    toy_scene: Literal["single", "group", "mixed"] = field(
        default="single",
        metadata={
            "help": "shapes-world scenes without --data: single (one shape; what the tiny VLM learns on CPU) | group | mixed"
        },
    )
    toy_kinds: str = field(
        default="color,letters,letters_plus,letters_times",
        metadata={
            "help": "comma-separated shapes-world question kinds; empty = all kinds of --toy_scene (the default ones need only the colour, which the tiny VLM reads reliably)"
        },
    )
    num_train: int = field(
        default=512,
        metadata={
            "help": "labelled training queries; paper: 180000 (180K labelled MathV360K queries)"
        },
    )
    num_unlabeled: int = field(
        default=64,
        metadata={
            "help": "unlabelled queries for prompt variation (the paper uses the rest of MathV360K)"
        },
    )
    num_val: int = field(
        default=32, metadata={"help": "validation queries for the temperature rule; paper: 250"}
    )
    num_test: int = field(
        default=96, metadata={"help": "held-out test queries; paper: 750 (in-domain)"}
    )
    sampler: Literal["hf", "vllm"] = field(default="hf", metadata={"help": "hf | vllm"})
    max_new_tokens: int = field(
        default=48,
        metadata={
            "help": "tokens per sampled response; paper preset: 1024 (not stated in the paper)"
        },
    )
    gen_batch_size: int = field(default=64, metadata={"help": "prompts per generate call"})
    track: bool = field(default=False, metadata={"help": "log to Weights & Biases"})
    resume: bool = field(
        default=False, metadata={"help": "continue from the checkpoints in --output_dir"}
    )
    # toy base model (only when --model is not given)
    base_steps: int = field(
        default=200,
        metadata={"help": "SFT steps of the cached tiny base (captions + noisy shapes-world CoT)"},
    )
    base_noise: float = field(
        default=0.6,
        metadata={
            "help": "share of the base's side-count demonstrations that use MISCONCEPTION (and /4 of all that misperceive the scene)"
        },
    )
    base_lr: float = field(default=3e-3, metadata={"help": "lr of the tiny base warm-start"})
    base_caption_share: float = field(
        default=0.5, metadata={"help": "share of caption examples in the tiny base's SFT"}
    )
    base_vision_steps: int = field(
        default=150,
        metadata={
            "help": "toy vision pre-training steps of the tiny base (stand-in for a pretrained encoder)"
        },
    )
    # algorithm (§3)
    training: Literal["continuous", "iterative_rft", "rest_em"] = field(
        default="continuous",
        metadata={
            "help": "continuous (M-STaR) | iterative_rft (fresh optimizer each iteration) | rest_em (restart from the warm-up model each iteration), §3 Table 'training methods'"
        },
    )
    interval: float | None = field(
        default=None,
        metadata={
            "help": "fraction of queries per iteration; None: 0.25 for continuous (best in §3 interval table), 1.0 for the baselines"
        },
    )
    num_iterations: int = field(
        default=8,
        metadata={
            "help": "self-evolving iterations; paper preset: 16 (x 625 steps = the paper's 10K steps)"
        },
    )
    steps_per_iteration: int = field(
        default=8,
        metadata={
            "help": "SFT steps per iteration; paper preset: 625 (16 x 625 = the paper's 10K steps)"
        },
    )
    samples_per_query: int = field(
        default=16, metadata={"help": "responses sampled per query; paper: 16"}
    )
    batch_size: int = field(default=32, metadata={"help": "SFT batch, all ranks; paper: 128"})
    lr: float = field(default=1e-3, metadata={"help": "AdamW lr; paper: 1e-6 (8B models)"})
    lr_scheduler: str = field(
        default="cosine",
        metadata={
            "help": "transformers scheduler kind, inherited across iterations in continuous mode"
        },
    )
    warmup_ratio: float = field(default=0.05, metadata={"help": "LR warmup share of the schedule"})
    max_grad_norm: float = field(default=1.0, metadata={"help": "gradient clipping"})
    micro_batch_size: int = field(
        default=0,
        metadata={
            "help": "rows per forward/backward on one rank (gradient "
            "accumulation, same token-mean loss); 0 = the rank's whole batch; paper preset: 2 (not stated in the paper)"
        },
    )
    gradient_checkpointing: bool = field(
        default=False,
        metadata={
            "help": "recompute decoder layers in the backward pass; "
            "paper preset: True (not stated in the paper; needed for long sequences at 7B)"
        },
    )
    selection: Literal["top2", "top1", "top4", "threshold", "random2", "all"] = field(
        default="top2",
        metadata={
            "help": "H(.) over correct responses by PRM min step score: top2 (paper) | top1 | top4 | threshold | random2 | all (no PRM)"
        },
    )
    prm_threshold: float = field(
        default=0.5,
        metadata={
            "help": "alpha of the 'threshold' selection (R_p > alpha); not given in the paper"
        },
    )
    prm: str = field(
        default="rule",
        metadata={
            "help": "'rule' (stand-in: shapes-world step checker) or an HF model path scored Math-Shepherd style"
        },
    )
    prm_step_tag: str = field(
        default=" ки",
        metadata={"help": "tag appended to each step for a model PRM (Math-Shepherd)"},
    )
    prm_good_token: str = field(
        default="+", metadata={"help": "token whose probability is the step score"}
    )
    prm_bad_token: str = field(default="-", metadata={"help": "the competing token"})
    pseudo_label_share: float = field(
        default=0.0,
        metadata={
            "help": "share of training queries that are unlabelled with weighted-vote pseudo-labels ; paper: 0.0 (prompt variation off: labelled data only)"
        },
    )
    auto_temperature: bool = field(
        default=True, metadata={"help": "re-choose T by Reward-Pass@2 on the validation split (§3)"}
    )
    temperature_every: int = field(
        default=2, metadata={"help": "iterations between temperature choices; paper: 2"}
    )
    temperature_grid: str = field(
        default="0.3,0.4,0.5,0.6,0.7,0.8,0.9,1.0,1.1,1.2,1.3,1.4,1.5,1.6",
        metadata={"help": "candidate temperatures (§3)"},
    )
    temperature: float = field(
        default=1.0, metadata={"help": "T without --auto_temperature; paper: 1.0 (static runs)"}
    )
    val_samples_per_query: int = field(
        default=4, metadata={"help": "responses per validation query when scoring a temperature"}
    )
    warmup_samples: int = field(
        default=4, metadata={"help": "hinted CoT samples per training query for the warm-up set"}
    )
    warmup_selection: Literal["all", "threshold", "top2", "top1", "top4", "random2"] | None = field(
        default=None,
        metadata={
            "help": "which correct hinted responses the warm-up keeps: all (paper) | threshold | top2 | ...; None: all with --data, threshold on the shapes world (see Departures)"
        },
    )
    warmup_steps: int = field(default=16, metadata={"help": "SFT steps of the warm-up"})
    eval_k: int = field(
        default=8, metadata={"help": "K for Pass@K and Reward-Pass@2 on the test split"}
    )


# The paper's setting (MiniCPM-V-2.5 on MathV360K), used with --preset paper (the default once --model
# is named); the defaults above are the CPU toy's. A flag on the command line wins.
PAPER = dict(
    num_train=180_000,  # 180K labelled MathV360K queries (the rest unlabelled)
    num_val=250,
    num_test=750,  # in-domain test
    max_new_tokens=1024,  # not stated in the paper
    num_iterations=16,  # 16 x 625 = the paper's 10K SFT steps in total
    steps_per_iteration=625,
    batch_size=128,
    lr=1e-6,
    gradient_checkpointing=True,  # not stated in the paper: bounds activation memory at long sequences
    micro_batch_size=2,  # not stated in the paper: bounds activation memory at long sequences
)


def derived(args, world_size: int) -> dict:
    """Per-rank SFT rows implied by the global batch; raises naming the flag."""
    return dict(
        sft_rows_per_rank=per_rank(args.batch_size, world_size, "--batch_size"),
        total_sft_steps=args.num_iterations * args.steps_per_iteration,
    )


# ----------------------------------------------------------------------------------------------------
# ALGO LOGIC: the paper's rules as small pure functions


def process_reward(step_scores: list[float]) -> float:
    """R_p = min_i s_i, the minimum step score of one response (§3 'reward model'); no steps -> 0."""
    return min(step_scores) if step_scores else 0.0


def select_responses(
    correct: list[bool],
    prm_scores: list[float],
    rule: str = "top2",
    threshold: float = 0.5,
    rng: random.Random | None = None,
) -> list[int]:
    """H(1[a_hat = a*] * R_p) (§3): indices of the kept responses of one query. Only correct responses compete;
    top-k keeps the k highest R_p (ties: earlier sample first), 'threshold' keeps R_p > alpha, 'random2' keeps
    2 random correct ones, 'all' keeps every correct one (the no-PRM baseline)."""
    candidates = [i for i, ok in enumerate(correct) if ok]
    if rule in ("top1", "top2", "top4"):
        return sorted(candidates, key=lambda i: -prm_scores[i])[: int(rule[3:])]
    if rule == "threshold":
        return [i for i in candidates if prm_scores[i] > threshold]
    if rule == "random2":
        return sorted((rng or random.Random(0)).sample(candidates, min(2, len(candidates))))
    if rule == "all":
        return candidates
    raise ValueError(f"--selection must be top1|top2|top4|threshold|random2|all, got {rule!r}")


def reward_pass_at_2(
    correct: list[list[bool]], prm_scores: list[list[float]], top: int = 2
) -> float:
    """Reward-Pass@2 (§3 'automatic temperature'): share of queries where at least one of the PRM's top-2
    responses (out of all samples, correct or not) is correct."""
    if not correct:
        return 0.0
    hits = 0
    for ok, scores in zip(correct, prm_scores):
        ranked = sorted(range(len(ok)), key=lambda i: -scores[i])[:top]
        hits += any(ok[i] for i in ranked)
    return hits / len(correct)


def weighted_vote(answers: list[str | None], weights: list[float]) -> str | None:
    """Pseudo-label of an unlabelled query (§3 'prompt variation'): the answer with the largest total PRM weight;
    unparsable answers (None) do not vote; ties go to the answer seen first; None if nobody voted."""
    totals: dict[str, float] = {}
    for a, w in zip(answers, weights):
        if a is not None:
            totals[a] = totals.get(a, 0.0) + w
    return (
        max(totals, key=totals.get) if totals else None
    )  # max keeps the first of equal keys (insertion order)


def choose_temperature(grid: list[float], scores: list[float]) -> float:
    """§3: the T with the highest Reward-Pass@2 on the validation split; ties go to the first in grid order."""
    if len(grid) != len(scores) or not grid:
        raise ValueError(
            f"need one score per temperature, got {len(grid)} temperatures and {len(scores)} scores"
        )
    return grid[max(range(len(grid)), key=lambda i: (scores[i], -i))]


def queries_for_iteration(
    num_queries: int, interval: float, iteration: int, seed: int
) -> list[int]:
    """Continuous self-evolving (§3): iteration i (from 1) covers the next `interval` share of a shuffled pass over
    the queries; a new shuffle starts every 1/interval iterations."""
    if not 0 < interval <= 1:
        raise ValueError(f"--interval must be in (0, 1], got {interval}")
    per_iter = math.ceil(interval * num_queries)
    chunks = math.ceil(num_queries / per_iter)
    epoch, chunk = divmod(iteration - 1, chunks)
    order = list(range(num_queries))
    random.Random(f"{seed}-pass-{epoch}").shuffle(order)
    return order[chunk * per_iter : (chunk + 1) * per_iter]


# ----------------------------------------------------------------------------------------------------
# answers, steps and process reward models


def answers_match(pred: str | None, gold: str) -> bool:
    """Normalised string match, numbers compared as numbers; math-verify only when LaTeX or an expression is
    involved (a worker round trip per call: too slow to spend on every wrong word or number)."""
    if pred is None:
        return False
    p, g = strip_string(pred).lower(), strip_string(str(gold)).lower()
    if p == g:
        return True
    number = re.compile(r"-?\d+(\.\d+)?")
    if number.fullmatch(p) and number.fullmatch(g):
        return float(p) == float(g)
    if "\\" in p or "\\" in g or (any(c.isdigit() for c in g) and not number.fullmatch(g)):
        return math_equal(pred, gold)
    return False


def split_steps(response: str) -> list[str]:
    """One step per non-empty line; the final 'The answer is' line is not a reasoning step."""
    lines = [ln.strip() for ln in response.split("\n") if ln.strip()]
    return [ln for ln in lines if not ln.lower().startswith("the answer is")]


class RuleStepPRM:
    """STAND-IN for the multimodal PRM on the shapes world: each step is checked against the drawn scene
    (1 = agrees, 0 = contradicts, 0.5 = nothing checkable). It never sees the gold answer."""

    name = "rule-based step checker (stand-in PRM)"

    def step_scores(self, rows: list[dict], responses: list[list[str]]) -> list[list[list[float]]]:
        out = []
        for row, group in zip(rows, responses):
            if "objects" not in row:
                raise ValueError(
                    "--prm rule only works on shapes-world rows (they carry 'objects'); pass --prm <model path>"
                )
            out.append(
                [
                    [
                        {True: 1.0, False: 0.0, None: 0.5}[v]
                        for v in grade_steps(row, "\n".join(split_steps(r)))
                    ]
                    for r in group
                ]
            )
        return out


class HFProcessRewardModel:
    """Math-Shepherd-style PRM from any HF (vision-)language model: each step is followed by a tag, and the step
    score is P(good) / (P(good) + P(bad)) of the next token at that tag."""

    def __init__(self, path: str, args: Args, device):
        self.processor = load_processor(path)
        frozen = precision_policy(
            torch.device(device).type
        ).frozen_dtype  # a frozen model: bf16 on CUDA
        self.model = load_model(path, vlm=True, dtype=frozen, device=device).eval()
        self.tok = get_tokenizer(self.processor)
        self.tag_ids = self.tok(args.prm_step_tag, add_special_tokens=False).input_ids
        good, bad = (
            self.tok(t, add_special_tokens=False).input_ids
            for t in (args.prm_good_token, args.prm_bad_token)
        )
        if len(good) != 1 or len(bad) != 1 or not self.tag_ids:
            raise ValueError(
                f"--prm_good_token {args.prm_good_token!r} / --prm_bad_token {args.prm_bad_token!r} must each be "
                f"one token of {path}, and --prm_step_tag {args.prm_step_tag!r} non-empty"
            )
        self.good, self.bad = good[0], bad[0]
        self.name, self.args = f"model PRM {path}", args

    @torch.no_grad()
    def step_scores(self, rows, responses):
        out = []
        for row, group in zip(rows, responses):
            prompt = encode_prompt(self.processor, row, self.args)
            ids_list, tag_positions = (
                [],
                [],
            )  # prompt ids, then each step followed by the tag; the tags' positions
            for text in group:
                ids_list.append(list(prompt["input_ids"][0].tolist()))
                tag_positions.append([])
                for step in split_steps(text):
                    ids_list[-1] += (
                        self.tok(
                            "\n" + step if tag_positions[-1] else step, add_special_tokens=False
                        ).input_ids
                        + self.tag_ids
                    )
                    tag_positions[-1].append(len(ids_list[-1]) - 1)
            input_ids, attention_mask, _ = pad_batch(
                ids_list, [[] for _ in ids_list], self.tok.pad_token_id
            )  # (n, L)
            extra = collate_vision([prompt] * len(group), input_ids.shape[1])
            device = next(self.model.parameters()).device
            logits = self.model(
                input_ids=input_ids.to(device),
                attention_mask=attention_mask.to(device),
                **{k: v.to(device) for k, v in extra.items()},
            ).logits  # (n, L, V)
            pair = logits[..., [self.good, self.bad]].float().softmax(-1)[..., 0]  # (n, L)
            out.append(
                [[float(pair[j, p]) for p in where] for j, where in enumerate(tag_positions)]
            )
        return out


# ----------------------------------------------------------------------------------------------------
# data and encoding (every processor output is passed through: LLaVA pixel_values (B, 3, H, W), Qwen2-VL
# flattened patches + image_grid_thw, ...)


def chat_prompt(row: dict, args: Args, hint: bool = False) -> list[dict]:
    text = row["question"] + (f" {args.instruction}" if args.instruction else "")
    if hint:  # warm-up (§3): the answer is given, the model writes the reasoning
        text += f" Hint: the answer is {row['answer']}."
    return [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": text}]}]


def encode_prompt(processor, row: dict, args: Args, hint: bool = False) -> dict:
    return processor(
        text=[render_prompt(processor, chat_prompt(row, args, hint))],
        images=[image_of(row)],
        return_tensors="pt",
    )


def collate_vision(encs: list[dict], total_len: int) -> dict:
    """Model kwargs besides input_ids/attention_mask: per-token tensors (1, P) are right-padded to (B, L),
    anything else (pixel values, grid sizes) is concatenated along dim 0."""
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


def end_of_turn(tokenizer) -> str:
    return "<|im_end|>" if "<|im_end|>" in tokenizer.get_vocab() else tokenizer.eos_token


def response_ids(processor, examples: list[tuple[dict, str]]) -> list[list[int]]:
    tok = get_tokenizer(processor)
    return [
        tok(text + end_of_turn(tok), add_special_tokens=False).input_ids for _, text in examples
    ]


def sft_step(
    model,
    processor,
    examples: list[tuple[dict, str]],
    args: Args,
    device,
    hint_flags=None,
    normalizer: float | None = None,
) -> torch.Tensor:
    """Loss of one batch of (row, response) pairs; prompt tokens (and image tokens) are masked out. A micro-batch
    passes its whole batch's response-token count as `normalizer` (common.train.sft_loss)."""
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


def load_image(value, root: str | None, where: str):
    """A PIL image from a PIL image, a datasets Image dict ({"bytes"} or {"path"}) or a path (under --image_root)."""
    if hasattr(value, "convert"):
        return value.convert("RGB")
    if isinstance(value, dict) and value.get("bytes"):
        return Image.open(io.BytesIO(value["bytes"])).convert("RGB")
    path = Path(value["path"] if isinstance(value, dict) else str(value))
    path = path if path.is_absolute() or root is None else Path(root) / path
    if not path.exists():
        raise FileNotFoundError(f"{where}: image {path} not found (--image_field / --image_root)")
    return Image.open(path).convert("RGB")


def image_loader(value, root: str | None, where: str):
    """A zero-argument loader of one row's image: a missing file is reported now, the decoding waits for image_of."""
    if not hasattr(value, "convert") and not (isinstance(value, dict) and value.get("bytes")):
        path = Path(value["path"] if isinstance(value, dict) else str(value))
        if not (path if path.is_absolute() or root is None else Path(root) / path).exists():
            load_image(value, root, where)  # raises the FileNotFoundError that names the row
    return functools.partial(load_image, value, root, where)


def image_of(row: dict):
    """The row's PIL image. Rows of --data hold a loader and decode on use (one micro-batch or generate batch at a
    time), not 180K decoded images on every rank; shapes-world rows hold their (small) image."""
    return row["image"]() if callable(row["image"]) else row["image"]


def toy_kinds(args: Args):
    return tuple(k for k in args.toy_kinds.split(",") if k) or None


def load_splits(args: Args) -> tuple[list, list, list, list]:
    """(labelled train, unlabelled, validation, test) rows, each with its image (a loader for --data: image_of)."""
    if (
        args.data is None
    ):  # shapes world; train and evaluation problems are disjoint (common.shapes_world)
        return tuple(
            make_shapes_rows(
                n, seed=args.seed + i, split=split, scene=args.toy_scene, kinds=toy_kinds(args)
            )
            for i, (n, split) in enumerate(
                [
                    (args.num_train, "train"),
                    (args.num_unlabeled, "train"),
                    (args.num_val, "eval"),
                    (args.num_test, "eval"),
                ],
                1,
            )
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
        for i, r in enumerate(
            rows[: args.num_test + args.num_val + args.num_train + args.num_unlabeled]
        )
    ]
    cut = [
        args.num_test,
        args.num_test + args.num_val,
        args.num_test + args.num_val + args.num_train,
    ]
    return (
        rows[cut[1] : cut[2]],
        rows[cut[2] :],
        rows[cut[0] : cut[1]],
        rows[: cut[0]],
    )  # train, unlabelled, val, test


# the toy base's bad habit: wrong side counts and wrong letter counts of colour names
MISCONCEPTION = {
    "sides": {"circle": 1, "square": 3, "triangle": 4},
    "letters": {"red": 4, "green": 4, "blue": 5, "yellow": 5},
}
FACT_KINDS = (
    "sides",
    "times",
    "plus",
    "letters",
    "letters_plus",
    "letters_times",
)  # questions that use those facts


def tiny_base_vlm(args: Args) -> str:
    """The tiny LLaVA made a weak "pretrained" VLM, cached: `shapes_world.pretrain_tiny_vision`, then SFT on captions
    (LLaVA's alignment data in miniature) and CoT, where `base_noise` of the letter/side-count demonstrations state
    MISCONCEPTION (greedy answers wrong, some samples right: what self-evolving training is for), `base_noise / 4`
    of all are solved on a misperceived scene and a quarter carry the answer as a hint. Training problems only."""
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


# ----------------------------------------------------------------------------------------------------
# sampling, selection, training and evaluation (rows are sharded over ranks, results gathered in order)


def shard(items: list, d) -> tuple[list, int]:
    """This rank's contiguous slice, padded with copies so every rank runs the same number of forwards (FSDP2)."""
    per_rank = math.ceil(len(items) / d.world_size)
    mine = items[d.rank * per_rank : (d.rank + 1) * per_rank]
    return mine + [items[0]] * (per_rank - len(mine)), len(mine)


def sample_and_score(
    sampler, prm, rows, n, temperature, args, d, hint=False, score=True
) -> list[dict]:
    """n responses per row, their parsed answers, correctness against row['answer'] (None if unlabelled) and
    PRM min step scores R_p; one dict per row, for all rows, on every rank."""
    if not rows:  # every rank sees the same rows, so all return here together
        return []
    mine, real = shard(rows, d)
    groups = sampler.generate(
        [chat_prompt(r, args, hint) for r in mine],
        n=n,
        temperature=temperature,
        max_new_tokens=args.max_new_tokens,
        images=[image_of(r) for r in mine],
        batch_size=args.gen_batch_size,
    )
    texts = [[c.text for c in g] for g in groups][:real]
    step_scores = prm.step_scores(mine[:real], texts) if score else [[[] for _ in t] for t in texts]
    preds = [
        [extract_answer(t) for t in group] for group in texts
    ]  # None for garbage: counted, never raised
    local = [
        {
            "query_id": row["id"],
            "responses": group,
            "preds": p,
            "prm": [process_reward(s) for s in scores],
            "correct": None
            if row.get("answer") is None
            else [answers_match(x, row["answer"]) for x in p],
        }
        for row, group, p, scores in zip(mine[:real], texts, preds, step_scores)
    ]
    return [rec for part in all_gather_object(local) for rec in part]


def collect(
    path: Path,
    rows,
    labeled: bool,
    n,
    temperature,
    args,
    d,
    sampler,
    prm,
    iteration,
    hint=False,
    rule=None,
) -> list[dict]:
    """Sample, score and select for `rows`, appending one complete JSONL record per query (flushed); a rerun
    reads the finished records back and only samples the rest."""
    done = {r["query_id"]: r for r in read_jsonl_tolerant(path)}
    todo = [r for r in rows if r["id"] not in done]
    chunk = args.gen_batch_size * d.world_size
    for start in range(0, len(todo), chunk):
        part = todo[start : start + chunk]
        if not labeled:  # prompt variation: hide the label, vote one from the samples (§3)
            part = [{**r, "answer": None} for r in part]
        new = []
        for row, rec in zip(
            part, sample_and_score(sampler, prm, part, n, temperature, args, d, hint)
        ):
            if not labeled:
                votes = [None if p is None else strip_string(p).lower() for p in rec["preds"]]
                rec["label"] = weighted_vote(votes, rec["prm"])
                rec["correct"] = [rec["label"] is not None and v == rec["label"] for v in votes]
            rng = random.Random(f"{args.seed}-{iteration}-{row['id']}")
            rec["selected"] = select_responses(
                rec["correct"], rec["prm"], rule or args.selection, args.prm_threshold, rng
            )
            rec.update(labeled=labeled, temperature=temperature)
            new.append(rec)
        if d.is_main:
            write_jsonl(path, new, mode="a")
        done.update({r["query_id"]: r for r in new})
        barrier()
    return [done[r["id"]] for r in rows]


def train_steps(
    model, processor, optimizer, scheduler, examples, num_steps, args, d, seed
) -> float | None:
    """`num_steps` SFT steps on global batches drawn (shuffled, cycling) from `examples`; returns the mean loss."""
    if not examples:
        return None
    order = list(range(len(examples)))
    random.Random(seed).shuffle(order)
    model.train()
    losses = []
    for step in range(num_steps):
        batch = [
            examples[order[(step * args.batch_size + i) % len(order)]]
            for i in range(args.batch_size)
        ]
        mine = batch[d.rank :: d.world_size]
        num_tokens = sum(
            map(len, response_ids(processor, mine))
        )  # the rank's batch: token mean over all of it
        loss = 0.0
        for sl in micro_batches(
            len(mine), args.micro_batch_size
        ):  # images are encoded per micro-batch
            micro = sft_step(model, processor, mine[sl], args, d.device, normalizer=num_tokens)
            micro.backward()
            loss += micro.item()
        clip_grad_norm(model, args.max_grad_norm)
        optimizer.step(), scheduler.step(), optimizer.zero_grad(set_to_none=True)
        losses.append(loss)
    return sum(sum(p) / len(p) for p in all_gather_object(losses)) / d.world_size


def evaluate(sampler, prm, rows, args, d) -> dict:
    """Greedy accuracy, and over K samples at T=1: sampled accuracy, Pass@K, Reward-Pass@2, unparsable share."""
    greedy = sample_and_score(sampler, prm, rows, 1, 0.0, args, d, score=False)
    sampled = sample_and_score(sampler, prm, rows, args.eval_k, 1.0, args, d)
    k = args.eval_k
    return {
        "accuracy": sum(r["correct"][0] for r in greedy) / len(rows),
        "sampled_accuracy": sum(sum(r["correct"]) for r in sampled) / (len(rows) * k),
        f"pass@{k}": sum(pass_at_k(k, sum(r["correct"]), k) for r in sampled) / len(rows),
        "reward_pass@2": reward_pass_at_2(
            [r["correct"] for r in sampled], [r["prm"] for r in sampled]
        ),
        "unparsable": sum(p is None for r in sampled for p in r["preds"]) / (len(rows) * k),
    }


def main(args: Args):
    d = init_distributed()
    for flag, value, ok in [
        ("--training", args.training, args.training in ("continuous", "iterative_rft", "rest_em")),
        ("--pseudo_label_share", args.pseudo_label_share, 0 <= args.pseudo_label_share < 1),
    ]:
        if not ok:
            raise ValueError(f"{flag} {value!r} is not allowed (see --help)")
    select_responses([], [], args.selection)  # fails early on a bad --selection
    interval = (
        args.interval
        if args.interval is not None
        else (0.25 if args.training == "continuous" else 1.0)
    )
    grid = [float(t) for t in args.temperature_grid.split(",")]
    out = Path(args.output_dir)
    (out / "samples").mkdir(parents=True, exist_ok=True)
    if args.model is None and d.is_main:
        tiny_base_vlm(args)  # rank 0 builds the cached toy base once; the others wait
    barrier()
    model_path = args.model or tiny_base_vlm(args)
    processor = load_processor(model_path)
    model = shard_model(
        load_model(model_path, vlm=True), d, gradient_checkpointing=args.gradient_checkpointing
    )
    seed_everything(
        args.seed
    )  # after the (maybe first-time) toy base build, so cold and warm caches give one run
    # vllm: one engine per rank
    sampler = make_sampler(args.sampler, model, processor, model_path=model_path, args=args)
    prm = RuleStepPRM() if args.prm == "rule" else HFProcessRewardModel(args.prm, args, d.device)
    train, unlabeled, val, test = load_splits(args)

    def new_optimizer(total_steps):
        opt = make_optimizer(model, args.lr)
        return opt, make_scheduler(
            opt, args.lr_scheduler, int(args.warmup_ratio * total_steps), total_steps
        )

    # continuous self-evolving: ONE optimizer and LR schedule for the whole run (§3). Made before the first forward:
    # under FSDP2 an optimizer first created after a forward cannot be saved (torch's state-dict FQN map misses it)
    total = (
        args.num_iterations * args.steps_per_iteration
        if args.training == "continuous"
        else args.steps_per_iteration
    )
    optimizer, scheduler = new_optimizer(total)
    if (
        d.world_size > 1
    ):  # FSDP2 initialises on the first forward, which must enter through the root module; a VLM's
        with (
            torch.no_grad()
        ):  # generate() may call its vision tower first, so do one root forward up front
            model(
                **{k: v.to(d.device) for k, v in encode_prompt(processor, train[0], args).items()}
            )
    print0(
        f"model {model_path} | PRM: {prm.name} | {len(train)} train, {len(unlabeled)} unlabelled, {len(val)} val, "
        f"{len(test)} test | training={args.training} interval={interval} selection={args.selection}"
    )

    def sync_sampler():  # vLLM keeps its own weights: every rank pushes into its own engine
        sampler.sync_weights(model)  # a no-op for HF, which samples from `model` itself

    ckpt, warm_ckpt = out / "ckpt", out / "ckpt_warmup"
    start_iter, temperature, table, val_scores = 1, args.temperature, [], None
    state = load_checkpoint(ckpt, model, optimizer, scheduler) if args.resume else None
    if state is None and args.resume:
        state = load_checkpoint(warm_ckpt, model)
    if state is not None:
        start_iter, temperature, table = (
            state[1]["iteration"] + 1,
            state[1]["temperature"],
            state[1]["table"],
        )
        print0(f"resumed after iteration {start_iter - 1} from {out}")
        sync_sampler()
    logger = MetricsLogger(
        out,
        args.track,
        "mstar",
        asdict(args),
        resume_step=start_iter if state is not None else None,
    )

    def report(stage, iteration, metrics):
        logger.log({"iteration": iteration, **metrics}, step=iteration + 1)
        shown = [
            "temperature",
            "samples_kept",
            "loss",
            "accuracy",
            "sampled_accuracy",
            f"pass@{args.eval_k}",
            "reward_pass@2",
        ]
        table.append({"stage": stage, **{k: metrics[k] for k in shown if k in metrics}})
        print0(
            " | ".join(
                f"{k} {v:.3f}" if isinstance(v, float) else f"{k} {v}" for k, v in table[-1].items()
            )
        )

    if state is None:
        # warm-up (§3): CoT sampled with the answer as a hint; the correct ones, asked WITHOUT the hint, are the SFT set
        report("base", -1, evaluate(sampler, prm, test, args, d))
        recs = collect(
            out / "samples" / "warmup.jsonl",
            train,
            True,
            args.warmup_samples,
            1.0,
            args,
            d,
            sampler,
            prm,
            0,
            hint=True,
            rule=args.warmup_selection or ("all" if args.data else "threshold"),
        )
        by_id = {r["id"]: r for r in train}
        examples = list(
            {
                (rec["query_id"], rec["responses"][i]): (
                    by_id[rec["query_id"]],
                    rec["responses"][i],
                )
                for rec in recs
                for i in rec["selected"]
            }.values()
        )  # de-duplicated
        warm_opt, warm_sched = new_optimizer(args.warmup_steps)
        sampler.sleep()  # vLLM frees its memory for the update
        loss = train_steps(
            model, processor, warm_opt, warm_sched, examples, args.warmup_steps, args, d, args.seed
        )
        sync_sampler()
        del warm_opt, warm_sched
        report(
            "warm-up",
            0,
            {
                "temperature": 1.0,
                "samples_kept": len(examples),
                "loss": loss,
                **evaluate(sampler, prm, test, args, d),
            },
        )
        save_checkpoint(
            warm_ckpt,
            model,
            step=0,
            extra={"iteration": 0, "temperature": temperature, "table": table},
        )

    by_id = {r["id"]: r for r in train + unlabeled}
    for it in tqdm(
        range(start_iter, args.num_iterations + 1), desc="self-evolving", disable=not d.is_main
    ):
        if args.training == "rest_em":  # ReST-EM: every iteration restarts from the warm-up model
            load_checkpoint(warm_ckpt, model, restore_rng=False)
            sync_sampler()
        if args.training != "continuous":  # iterative RFT / ReST-EM: fresh optimizer and schedule
            optimizer, scheduler = new_optimizer(args.steps_per_iteration)
        if args.auto_temperature and (it - 1) % args.temperature_every == 0:
            val_scores = []
            for t in grid:
                recs = sample_and_score(sampler, prm, val, args.val_samples_per_query, t, args, d)
                val_scores.append(
                    reward_pass_at_2([r["correct"] for r in recs], [r["prm"] for r in recs])
                )
            temperature = choose_temperature(grid, val_scores)
        # this iteration's queries: `interval` of the labelled pool (+ unlabelled ones at the pseudo-label share)
        qids = queries_for_iteration(len(train), interval, it, args.seed)
        n_unl = min(
            len(unlabeled),
            round(len(qids) * args.pseudo_label_share / (1 - args.pseudo_label_share)),
        )
        uids = (
            queries_for_iteration(len(unlabeled), n_unl / len(unlabeled), it, args.seed + 1)
            if n_unl
            else []
        )
        path = out / "samples" / f"iter{it:03d}.jsonl"
        recs = collect(
            path,
            [train[i] for i in qids],
            True,
            args.samples_per_query,
            temperature,
            args,
            d,
            sampler,
            prm,
            it,
        )
        urecs = collect(
            path.with_suffix(".unlabeled.jsonl"),
            [unlabeled[i] for i in uids],
            False,
            args.samples_per_query,
            temperature,
            args,
            d,
            sampler,
            prm,
            it,
        )
        examples = [
            (by_id[rec["query_id"]], rec["responses"][i])
            for rec in recs + urecs
            for i in rec["selected"]
        ]
        sampler.sleep()  # vLLM frees its memory for the update
        loss = train_steps(
            model,
            processor,
            optimizer,
            scheduler,
            examples,
            args.steps_per_iteration,
            args,
            d,
            args.seed + it,
        )
        sync_sampler()
        metrics = {
            "temperature": temperature,
            "samples_kept": len(examples),
            "loss": loss,
            "lr": scheduler.get_last_lr()[0],
            "train/correct_rate": sum(sum(r["correct"]) for r in recs)
            / max(1, sum(len(r["correct"]) for r in recs)),
            **evaluate(sampler, prm, test, args, d),
        }
        if urecs:  # the shapes world knows the hidden answers: how good are the pseudo-labels?
            gold = [by_id[r["query_id"]].get("answer") for r in urecs]
            metrics["pseudo_label_accuracy"] = sum(
                answers_match(r["label"], g) for r, g in zip(urecs, gold) if g
            ) / len(urecs)
        if val_scores is not None:
            metrics["val/reward_pass@2"] = max(val_scores)
        report(f"iter {it}", it, metrics)
        # an AdamW that has not stepped yet has no state to save (and torch segfaults initialising one on FSDP2/gloo)
        save_checkpoint(
            ckpt,
            model,
            optimizer if optimizer.state else None,
            scheduler,
            step=it,
            extra={"iteration": it, "temperature": temperature, "table": table},
        )

    if d.is_main:
        print(format_table(table))
        png = logger.plot(
            ["accuracy", f"pass@{args.eval_k}", "reward_pass@2", "temperature", "samples_kept"],
            out / "curves.png",
            x="iteration",
        )
        print(f"metrics: {logger.path} | curves: {png}")
    logger.close()
    cleanup_distributed()
    return table


if __name__ == "__main__":
    main(parse_config(Args, PAPER, derived))
