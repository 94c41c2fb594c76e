"""AdaptVis / ScalingVis: confidence-gated scaling of the attention on image tokens (arXiv 2503.01773).

"Why Is Spatial Reasoning Hard for VLMs? An Attention Mechanism Perspective on Focus Areas" (Chen et al.,
ICML 2025). A VLM answers "where is X in relation to Y?" from the attention its last prompt token pays to
the image tokens. ScalingVis multiplies the pre-softmax attention logits of that one query row on the image
key columns by a constant alpha, in every layer and head, during prefill only: alpha > 1 sharpens the
attention over the image, alpha < 1 smooths it. AdaptVis picks alpha per sample from the model's own
confidence: generate once with alpha = 1, take the max softmax probability of the first generated token,
then regenerate with alpha_smooth if it is below the threshold beta, else with alpha_sharpen. Both are
evaluated on WhatsUp-style multiple choice and VSR yes/no, alpha and beta grid-searched on a fixed 20%
tuning split and reported on the other 80%.

Departures (vs the paper and shiqichen17/AdaptVis@3b41399):
- The intervention is a function registered in transformers' AttentionInterface (plus a pre-hook that reads
  the image positions from input_ids), not a copied modeling file; so it runs on any LLaVA or Qwen2-VL
  class of transformers 5.x. Decode steps and alpha = 1 call the model's own attention (sdpa / eager).
- The prompt is built with the processor's chat template (LLaVA-1.5: "USER: <image>\\n... ASSISTANT:"),
  not padded to 77 tokens; batches are left-padded so the last query row is the last prompt token.
- VSR confidence uses the softmax like WhatsUp (the released code reads raw logits there, a bug); VSR
  yes/no is matched case-insensitively as whole words (the code: case-sensitive substrings 'Yes'/'No').
- Beyond the README's beta = 0.3 / run.sh's 0.4 we search a beta grid (the paper tunes beta per subset and
  does not publish the grid); ties in a grid go to the setting closest to alpha = 1.
- The toy: a 2-layer tiny LLaVA is first fine-tuned (cached) on synthetic two-object scenes
  (common/spatial_scenes.py: graded backdrop as the position cue; the subject is red and the reference blue,
  since with a white backdrop (800 steps) or random colours named in the question (700-1000 steps) this
  tiny model stayed at chance).

Commands (the defaults are already the paper's settings, so the paper preset changes nothing; --print_config
shows the effective configuration without loading anything):
  CPU toy:  python adaptvis.py
  1 GPU:    python adaptvis.py --model llava-hf/llava-1.5-7b-hf --data prompts/Controlled_Images_A_with_answer_four_options.jsonl \\
              --annotations whatsup/controlled_images_dataset.json --image_root whatsup --dtype bf16
            python adaptvis.py --model llava-hf/llava-1.5-7b-hf --task vsr --data vsr/zeroshot/test.jsonl --image_root coco2017
  8 GPUs:   torchrun --nproc_per_node=8 adaptvis.py --model llava-hf/llava-1.5-7b-hf --data ...  # rows sharded
"""

from __future__ import annotations

import json
import math
import random
import re
import sys
from dataclasses import asdict, dataclass, field
from itertools import product
from pathlib import Path
from typing import Literal

import torch
from tqdm import tqdm
from transformers import AttentionInterface
from transformers.integrations.sdpa_attention import repeat_kv
from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, AttentionMaskInterface
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

from common.config import parse_config
from common.data import DataError, read_jsonl_tolerant, write_jsonl
from common.models import load_model, load_processor, make_tiny_vlm
from common.sampling import HFSampler, render_prompt
from common.spatial_scenes import make_vsr_rows, make_whatsup_rows
from common.toys import toy_model
from common.train import (
    MetricsLogger,
    all_gather_object,
    barrier,
    format_table,
    init_distributed,
    make_optimizer,
    pad_batch,
    print0,
    seed_everything,
    sft_loss,
)


@dataclass
class Args:
    # generic
    model: str = field(
        default="",
        metadata={
            "help": "LLaVA / Qwen2-VL hub id or folder (the paper uses llava-hf/llava-1.5-7b-hf); empty = tiny LLaVA fine-tuned on toy scenes"
        },
    )
    data: str = field(
        default="toy",
        metadata={
            "help": "'toy' or a file: for --task whatsup WhatsUp's released controlled-image JSON (image_path, "
            "caption_options) or an AdaptVis prompts JSONL (question, answer) with --annotations; for "
            "--task vsr VSR's released JSONL (image, caption, label)"
        },
    )
    task: Literal["whatsup", "vsr"] = field(
        default="whatsup",
        metadata={"help": "whatsup | vsr (real data only; the toy runs every subset in --subsets)"},
    )
    annotations: str = field(
        default="",
        metadata={
            "help": "WhatsUp annotation JSON whose row i holds the image of prompt row i (image_path, or a list starting with the file name)"
        },
    )
    image_root: str = field(
        default="", metadata={"help": "folder that relative image paths are resolved against"}
    )
    subsets: list[str] = field(
        default_factory=lambda: ["controlled_a", "controlled_b", "two_obj", "vsr"],
        metadata={"help": "toy subsets (common/spatial_scenes.py)"},
    )
    output_dir: str = field(
        default="runs/adaptvis",
        metadata={"help": "metrics.jsonl, generations.jsonl, PNGs, summary.json"},
    )
    seed: int = field(default=0, metadata={"help": "seed of the toy scenes and the toy fine-tune"})
    dtype: Literal["auto", "float32", "fp32", "bfloat16", "bf16", "float16", "fp16"] = field(
        default="auto",
        metadata={"help": "auto | fp32 | bf16 | fp16 (or float32 | bfloat16 | float16)"},
    )
    batch_size: int = field(default=32, metadata={"help": "prompts per generate call"})
    max_new_tokens: int = field(
        default=100, metadata={"help": "greedy answer length; paper: 100 (released code)"}
    )
    resume: bool = field(
        default=False,
        metadata={
            "help": "reuse generations.jsonl of an earlier run in output_dir (same model and data!)"
        },
    )
    track: bool = field(default=False, metadata={"help": "log to Weights & Biases"})
    # algorithm (§2.2)
    alphas: list[float] = field(
        default_factory=lambda: [0.5, 0.8, 1.2, 1.5, 2.0],
        metadata={"help": "ScalingVis alpha grid (README grid, §2.2)"},
    )
    thresholds: list[float] = field(
        default_factory=lambda: [0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9],
        metadata={"help": "AdaptVis beta grid (README 0.3, run.sh 0.4; wider grid is ours)"},
    )
    alpha_smooth_grid: list[float] = field(
        default_factory=lambda: [0.5, 0.8],
        metadata={"help": "low-confidence alphas (code's weight1 ∈ {0.5, 0.8}, §2.2)"},
    )
    alpha_sharpen_grid: list[float] = field(
        default_factory=lambda: [1.2, 1.5, 2.0],
        metadata={"help": "high-confidence alphas (code's weight2 ∈ {1.2, 1.5, 2.0}, §2.2)"},
    )
    threshold: float = field(
        default=0.4,
        metadata={"help": "beta of the fixed-setting AdaptVis row; paper: 0.4 (released run.sh)"},
    )
    alpha_smooth: float = field(
        default=0.5,
        metadata={
            "help": "alpha below beta in the fixed setting; paper: 0.5 (released run.sh weight1)"
        },
    )
    alpha_sharpen: float = field(
        default=1.5,
        metadata={
            "help": "alpha at/above beta in the fixed setting; paper: 1.5 (released run.sh weight2)"
        },
    )
    tune_fraction: float = field(
        default=0.2,
        metadata={"help": "tuning split; the rest is the test split; paper: 0.2 (20% for tuning)"},
    )
    split_seed: int = field(
        default=1, metadata={"help": "seed of the tuning sample; paper: 1 (released code)"}
    )
    analysis_rows: int = field(
        default=64, metadata={"help": "test rows per subset for the attention analysis"}
    )
    # toy world and toy fine-tune
    toy_eval_rows: int = field(
        default=100, metadata={"help": "toy scenes per subset to evaluate (20% tune / 80% test)"}
    )
    toy_train_rows: int = field(
        default=500, metadata={"help": "toy scenes per subset for the fine-tune (other seeds)"}
    )
    toy_train_steps: int = field(default=600, metadata={"help": "fine-tune steps of the tiny VLM"})
    toy_lr: float = field(
        default=5e-4,
        metadata={
            "help": "fine-tune learning rate (higher lrs make the tiny model ignore the image)"
        },
    )
    toy_train_batch: int = field(default=32, metadata={"help": "fine-tune batch size"})
    toy_subject_colors: list[str] = field(
        default_factory=lambda: ["red"],
        metadata={
            "help": "toy subject colours: fixed roles, since the 2-layer model does not learn to bind colour words to patches in a short fine-tune"
        },
    )
    toy_reference_colors: list[str] = field(
        default_factory=lambda: ["blue"], metadata={"help": "toy reference colours"}
    )


# Evaluation only, and every algorithm default above is already the paper's or its released code's
# (grids, beta, alphas, 100 greedy tokens, 20% tuning split with seed 1): --preset paper changes nothing.
PAPER = {}


# ----------------------------------------------------------------------------------------------------
# ALGO LOGIC: the paper's equations


def scale_image_attention(logits, image_mask, alpha, query_index: int = -1):
    """§2.1: z'[q, j] = alpha * z[q, j] for the query row q and every image key column j; all else unchanged.

    logits: (B, H, Q, K) pre-softmax scores QK^T/sqrt(d) before the causal mask; image_mask: (B, K) bool;
    alpha: float or (B,). Scaling the logits (not the probabilities) is a temperature 1/alpha on the
    image logits, so alpha > 1 *lowers* the image mass when those logits are negative (§5 check 8).
    """
    alpha = torch.as_tensor(alpha, dtype=logits.dtype, device=logits.device).reshape(
        -1, 1, 1
    )  # (B|1, 1, 1)
    row = logits[:, :, query_index, :]  # (B, H, K)
    scaled = logits.clone()
    scaled[:, :, query_index, :] = torch.where(image_mask[:, None, :].bool(), row * alpha, row)
    return scaled


def choose_alpha(
    confidence: float, threshold: float, alpha_smooth: float, alpha_sharpen: float
) -> float:
    """§2.2 AdaptVis gate: confidence w (rounded to 2 decimals, as the code does) < beta -> smooth, else sharpen.
    (The code calls the low-confidence coefficient weight1 and the high-confidence one weight2.)"""
    if not 0.0 <= confidence <= 1.0:  # also rejects NaN
        raise ValueError(f"confidence must be a probability in [0, 1], got {confidence}")
    return alpha_smooth if round(confidence, 2) < threshold else alpha_sharpen


def first_token_confidence(logprobs: list[float]) -> float:
    """§2.2 step 2: max softmax probability of the first generated token; greedy picks the argmax, so it is
    exp(log p(first token)). An empty completion has no evidence: confidence 0."""
    return math.exp(logprobs[0]) if logprobs else 0.0


def whatsup_correct(output: str, gold: str) -> bool:
    """§2.3: the gold option as a case-insensitive substring; gold 'On' is wrong when 'front' appears."""
    out, gold = output.lower(), gold.lower()
    return gold in out and not (gold == "on" and "front" in out)


def says(output: str, word: str) -> bool:
    return re.search(rf"\b{word}\b", output, flags=re.IGNORECASE) is not None


def vsr_counts(outputs: list[str], labels: list[int]) -> tuple[int, int, int, int]:
    """§2.3 VSR: (TP, TN, FP, FN); a true caption needs 'yes', a false one needs 'no' (as the code counts)."""
    tp = sum(1 for o, y in zip(outputs, labels) if y == 1 and says(o, "yes"))
    fn = sum(1 for y in labels if y == 1) - tp
    tn = sum(1 for o, y in zip(outputs, labels) if y == 0 and says(o, "no"))
    fp = sum(1 for y in labels if y == 0) - tn
    return tp, tn, fp, fn


def vsr_metrics(tp: int, tn: int, fp: int, fn: int) -> dict:
    """Accuracy and the code's 'F1': harmonic mean of TPR (its 'precision') and TNR (its 'recall')."""
    tpr, tnr = tp / max(tp + fn, 1), tn / max(tn + fp, 1)
    f1 = 2 * tpr * tnr / (tpr + tnr) if tpr + tnr > 0 else 0.0
    return {"acc": (tp + tn) / max(tp + tn + fp + fn, 1), "f1": f1, "tpr": tpr, "tnr": tnr}


def tune_test_split(
    n: int, tune_fraction: float = 0.2, seed: int = 1
) -> tuple[list[int], list[int]]:
    """§2.3: a fixed random 20% of the rows for tuning, the other 80% for the test report."""
    tune = sorted(random.Random(seed).sample(range(n), int(tune_fraction * n)))
    chosen = set(tune)
    return tune, [i for i in range(n) if i not in chosen]


def box_patch_mask(boxes: list[list[float]], image_size: tuple[int, int], grid: int):
    """(grid*grid,) bool: the image patches (row-major) that overlap any box [x0, y0, x1, y1] (pixels)."""
    width, height = image_size
    inside = torch.zeros(grid, grid, dtype=torch.bool)
    for x0, y0, x1, y1 in boxes:
        cols = range(max(0, int(x0 * grid / width)), min(grid, int(math.ceil(x1 * grid / width))))
        rows = range(max(0, int(y0 * grid / height)), min(grid, int(math.ceil(y1 * grid / height))))
        for r, c in product(rows, cols):
            inside[r, c] = True
    return inside.flatten()


def auroc(scores: list[float], labels: list[int]) -> float:
    """Probability that a random positive scores above a random negative (ties count 1/2); NaN if one class."""
    pos = [s for s, y in zip(scores, labels) if y]
    neg = [s for s, y in zip(scores, labels) if not y]
    if not pos or not neg:
        return float("nan")
    return sum((p > q) + 0.5 * (p == q) for p in pos for q in neg) / (len(pos) * len(neg))


# ----------------------------------------------------------------------------------------------------
# ALGO LOGIC: the intervention, as an attention function registered in transformers' AttentionInterface


@dataclass
class ImageAttentionScaling:
    """What the registered attention function reads; one object per model, shared by its text layers."""

    image_token_id: int
    base_implementation: (
        str  # the model's own attention ("sdpa" | "eager"): used for decode steps and alpha = 1
    )
    alpha: float | torch.Tensor = 1.0
    image_mask: torch.Tensor | None = (
        None  # (B, T) image positions of the current prompt, set by a pre-hook
    )
    record: list | None = (
        None  # a list -> every layer's prefill last-row attention (B, H, K) is appended
    )
    scaled_calls: int = (
        0  # attention calls that took the scaled path (tests: decode steps add none)
    )


def scaled_image_attention_forward(
    module, query, key, value, attention_mask, scaling, dropout=0.0, **kwargs
):
    """Eager attention with §2.1's scaling of the last query row on image keys; prefill only."""
    state = module.image_attention_scaling
    is_prefill = (
        query.shape[2] == key.shape[2]
    )  # the code's test: the attention matrix is square only in prefill
    untouched = isinstance(state.alpha, float) and state.alpha == 1.0 and state.record is None
    if not is_prefill or untouched:  # the model's own attention, bit for bit
        own = ALL_ATTENTION_FUNCTIONS.get_interface(
            state.base_implementation, sys.modules[type(module).__module__].eager_attention_forward
        )
        return own(
            module, query, key, value, attention_mask, scaling=scaling, dropout=dropout, **kwargs
        )
    if state.image_mask is None or state.image_mask.shape != (query.shape[0], key.shape[2]):
        raise RuntimeError(
            f"image mask {None if state.image_mask is None else tuple(state.image_mask.shape)} does not match "
            f"the prefill ({query.shape[0]} rows, {key.shape[2]} keys): call the model with input_ids"
        )
    keys = repeat_kv(key, module.num_key_value_groups)  # (B, H, K, D)
    values = repeat_kv(value, module.num_key_value_groups)
    logits = torch.matmul(query, keys.transpose(2, 3)) * scaling  # (B, H, Q, K) z = QK^T / sqrt(d)
    logits = scale_image_attention(logits, state.image_mask.to(logits.device), state.alpha)
    if (
        attention_mask is None
    ):  # sdpa's mask helper returns None when plain causal attention will do
        attention_mask = torch.full(
            logits.shape[-2:], torch.finfo(logits.dtype).min, device=logits.device
        ).triu(1)
    elif attention_mask.dtype == torch.bool:  # sdpa's boolean mask (True = attend) -> additive
        attention_mask = torch.zeros(
            attention_mask.shape, dtype=logits.dtype, device=logits.device
        ).masked_fill(~attention_mask, torch.finfo(logits.dtype).min)
    weights = torch.softmax(logits + attention_mask, dim=-1, dtype=torch.float32).to(
        query.dtype
    )  # (B, H, Q, K)
    weights = torch.nn.functional.dropout(weights, p=dropout, training=module.training)
    output = torch.matmul(weights, values).transpose(1, 2).contiguous()  # (B, Q, H, D)
    state.scaled_calls += 1
    if state.record is not None:
        state.record.append(weights[:, :, -1, :].detach().float().cpu())  # (B, H, K)
    return output, weights


def enable_image_attention_scaling(model) -> ImageAttentionScaling:
    """Route the text layers' attention through `scaled_image_attention_forward`; returns the control object."""
    image_token_id = getattr(model.config, "image_token_id", None)
    if image_token_id is None:
        raise ValueError(
            f"{type(model).__name__} has no config.image_token_id: AdaptVis needs a LLaVA / Qwen2-VL style VLM (--model)"
        )
    base = model.config.get_text_config()._attn_implementation
    base = (
        base if base in ("sdpa", "eager") else "sdpa"
    )  # flash kernels cannot take the additive mask
    name = f"adaptvis_{base}"  # one name per base, so the mask helper is the base's own
    AttentionInterface.register(name, scaled_image_attention_forward)
    AttentionMaskInterface.register(name, ALL_MASK_ATTENTION_FUNCTIONS[base])
    model.set_attn_implementation({"text_config": name})
    state = ImageAttentionScaling(image_token_id=image_token_id, base_implementation=base)
    layers = [
        m
        for m in model.model.language_model.modules()
        if hasattr(m, "q_proj") and hasattr(m, "layer_idx")
    ]
    if not layers:
        raise ValueError(
            f"found no attention layers in {type(model).__name__}.model.language_model"
        )
    for layer in layers:
        layer.image_attention_scaling = state

    def read_image_positions(module, args, kwargs):
        input_ids = kwargs.get("input_ids", args[0] if args else None)
        if input_ids is not None:
            state.image_mask = input_ids == image_token_id  # (B, T)

    model.register_forward_pre_hook(read_image_positions, with_kwargs=True)
    return state


# ----------------------------------------------------------------------------------------------------
# data: toy scenes or the real WhatsUp / VSR files


def toy_rows(subset: str, n: int, seed: int, args) -> list[dict]:
    colors = {
        "subject_colors": args.toy_subject_colors,
        "reference_colors": args.toy_reference_colors,
    }
    return (
        make_vsr_rows(n, seed, **colors)
        if subset == "vsr"
        else make_whatsup_rows(n, seed, subset, **colors)
    )


# WhatsUp caption phrase -> the one-word option AdaptVis asks for (prompts/Controlled_Images_*.jsonl)
WHATSUP_RELATIONS = (
    ("to the left of", "Left"),
    ("to the right of", "Right"),
    ("in front of", "Front"),
    ("behind", "Behind"),
    ("under", "Under"),
    ("on", "On"),
)


def whatsup_relation(caption: str) -> str | None:
    """'A beer bottle on a armchair' -> 'On'; 'A mug to the right of a knife' -> 'Right'."""
    text = f" {caption.lower()} "
    return next((word for phrase, word in WHATSUP_RELATIONS if f" {phrase} " in text), None)


def whatsup_release_rows(path: Path, root: Path) -> list[dict]:
    """WhatsUp's controlled-image JSON as released (whatsup_vlms: data/controlled_images_dataset.json,
    controlled_clevr_dataset.json): [{image_path, caption_options}], the true caption first, the image
    named `<subject>_<relation>_<object>.jpeg`. Each becomes AdaptVis's four-option question: "Where is
    the beer bottle in relation to the armchair? Answer with left, right, on or under." (front/behind
    for the B set), gold = the true caption's relation."""
    data = json.loads(path.read_text(encoding="utf-8"))
    rows = []
    for i, d in enumerate(data):
        options = d.get("caption_options") if isinstance(d, dict) else None
        gold = whatsup_relation(options[0]) if isinstance(options, list) and options else None
        if not isinstance(d, dict) or not isinstance(d.get("image_path"), str) or gold is None:
            raise DataError(
                f"{path} row {i}: needs 'image_path' and 'caption_options' whose first "
                f"caption names a relation ({', '.join(p for p, _ in WHATSUP_RELATIONS)})"
            )
        stem = Path(d["image_path"]).stem.split("_")
        subject, obj = stem[0].replace("-", " "), stem[-1].replace("-", " ")
        words = {whatsup_relation(c) for c in options}
        listed = "left, right, on or under"
        if words & {"Front", "Behind"}:  # the B set
            listed = "left, right, front or behind"
        rows.append(
            {
                "id": f"{path.stem}-{i}",
                "subset": path.stem,
                "image_path": str(root / d["image_path"]),
                "question": f"Where is the {subject} in relation to the {obj}? Answer with {listed}.",
                "answer": gold,
                "options": re.split(r", | or ", listed),
                "caption_options": options,
            }
        )
    return rows


def vsr_image_path(root: Path, row: dict) -> str:
    """VSR names the COCO file (`image`) and links it (`image_link`, .../train2017/<file>); AdaptVis
    reads the link's path under its data folder. Use whichever exists under --image_root."""
    candidates = [root / row["image"]]
    if isinstance(row.get("image_link"), str) and ".org/" in row["image_link"]:
        candidates.append(root / row["image_link"].split(".org/", 1)[1])
    return str(next((c for c in candidates if c.exists()), candidates[0]))


def load_real_rows(args) -> list[dict]:
    """WhatsUp: the released controlled-image JSON alone, or AdaptVis prompt rows {question, answer}
    + the image of --annotations row i. VSR: its released JSONL rows {image, image_link, caption,
    label, ...}."""
    from common.data import load_rows

    root = Path(args.image_root)
    if args.task == "vsr":
        rows = load_rows(args.data, required=("image", "caption", "label"))
        return [
            {
                **{k: r[k] for k in ("relation", "subj", "obj") if k in r},
                "id": f"vsr-{i}",
                "subset": "vsr",
                "image_path": vsr_image_path(root, r),
                "caption": r["caption"],
                "label": int(r["label"]),
                "question": "Determine whether the description about the spatial relationship is "
                f"correct or not. Answer with yes or no: {r['caption']}",
                "answer": "Yes" if int(r["label"]) else "No",
            }
            for i, r in enumerate(rows)
        ]
    if args.task != "whatsup":
        raise ValueError(f"--task must be whatsup or vsr, got {args.task!r}")
    if Path(args.data).suffix == ".json" and not args.annotations:
        return whatsup_release_rows(Path(args.data), root)
    prompts = load_rows(args.data, required=("question", "answer"))
    if not args.annotations:
        raise ValueError(
            "--task whatsup needs --annotations (the WhatsUp JSON that holds each prompt row's image)"
        )
    images = json.loads(Path(args.annotations).read_text())
    if len(images) != len(prompts):
        raise ValueError(
            f"{args.annotations}: {len(images)} rows but {args.data} has {len(prompts)} prompts; they pair up by row"
        )
    rows = []
    for i, (p, a) in enumerate(zip(prompts, images)):
        image = a.get("image_path", a.get("image")) if isinstance(a, dict) else a[0]
        if isinstance(image, int):  # COCO / VG QA files name images by id
            image = f"{image:012d}.jpg"
        question = (
            re.sub(r"^(<image>\s*)?(USER:\s*)?", "", p["question"]).split("\nASSISTANT:")[0].strip()
        )
        gold = p["answer"][0] if isinstance(p["answer"], list) else p["answer"]
        listed = re.search(r"Answer with (.*?)\.?$", question)
        rows.append(
            {
                "id": f"{Path(args.data).stem}-{i}",
                "subset": Path(args.data).stem,
                "image_path": str(root / image),
                "question": question,
                "answer": gold,
                "options": re.split(r", | or ", listed.group(1)) if listed else [gold],
            }
        )
    return rows


def messages(row: dict) -> list[dict]:
    return [
        {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": row["question"]}]}
    ]


def image_of(row: dict):
    from PIL import Image

    return row["image"] if "image" in row else Image.open(row["image_path"]).convert("RGB")


def row_correct(row: dict, text: str) -> bool:
    if row["subset"] == "vsr":
        return says(text, "yes") if row["label"] else says(text, "no")
    return whatsup_correct(text, row["answer"])


def score(rows: list[dict], outputs: list[dict]) -> dict:
    """acc for WhatsUp rows; acc and F1 (harmonic mean of TPR and TNR) for VSR rows."""
    texts = [o["text"] for o in outputs]
    if rows[0]["subset"] == "vsr":
        return vsr_metrics(*vsr_counts(texts, [r["label"] for r in rows]))
    return {"acc": sum(whatsup_correct(t, r["answer"]) for t, r in zip(texts, rows)) / len(rows)}


# ----------------------------------------------------------------------------------------------------
# the toy model: the tiny LLaVA fine-tuned once on toy scenes (cached)


def build_toy_base(args, dist) -> str:
    """A tiny LLaVA with some spatial skill: SFT on toy scenes from seeds the evaluation never uses."""
    spec = {
        k: v for k, v in asdict(args).items() if k.startswith("toy_") and k != "toy_eval_rows"
    } | {"seed": args.seed, "subsets": args.subsets}

    def build(folder: Path):
        tiny = make_tiny_vlm()
        model, processor = load_model(tiny, vlm=True), load_processor(tiny)
        tokenizer = processor.tokenizer
        rows = [
            r
            for s in args.subsets
            for r in toy_rows(s, args.toy_train_rows, args.seed + 10_000, args)
        ]  # never eval seeds
        prompts = [render_prompt(processor, messages(r)) for r in rows]
        prompt_ids = processor(text=prompts, images=[r["image"] for r in rows])[
            "input_ids"
        ]  # 16 image tokens expanded
        pixels = processor.image_processor([r["image"] for r in rows], return_tensors="pt")[
            "pixel_values"
        ]  # (N, 3, 64, 64)
        answer_ids = [
            tokenizer(r["answer"].lower() + "<|im_end|>", add_special_tokens=False)["input_ids"]
            for r in rows
        ]
        optimizer = make_optimizer(model, args.toy_lr)
        rng = random.Random(args.seed)
        model.train()
        for step in (bar := tqdm(range(args.toy_train_steps), desc="toy fine-tune")):
            idx = rng.sample(range(len(rows)), min(args.toy_train_batch, len(rows)))
            input_ids, attention_mask, loss_mask = pad_batch(
                [prompt_ids[i] for i in idx], [answer_ids[i] for i in idx], tokenizer.pad_token_id
            )
            loss = sft_loss(model, input_ids, attention_mask, loss_mask, pixel_values=pixels[idx])
            optimizer.zero_grad()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            bar.set_postfix(loss=f"{loss.item():.3f}")
        model.save_pretrained(folder)
        processor.save_pretrained(folder)

    path = (
        toy_model("adaptvis-base", spec, build, code=[toy_rows, messages]) if dist.is_main else None
    )
    barrier()  # rank 0 builds; the others then find it in the cache
    return path or toy_model("adaptvis-base", spec, build, code=[toy_rows, messages])


# ----------------------------------------------------------------------------------------------------
# generation: greedy answers per (alpha, row), computed once (sharded over ranks), logged, reused


class Generations:
    def __init__(self, model, processor, state, args, dist):
        self.sampler, self.state, self.args, self.dist = (
            HFSampler(model, processor),
            state,
            args,
            dist,
        )
        self.path = Path(args.output_dir) / "generations.jsonl"
        self.memo = {}
        if args.resume and self.path.exists():
            for rec in read_jsonl_tolerant(
                self.path
            ):  # a last line cut short by a killed run is dropped
                self.memo[(rec["alpha"], rec["id"])] = rec
        elif dist.is_main:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self.path.write_text("")
        self.bar = tqdm(desc="answers generated", unit="ans", disable=not dist.is_main)

    def __call__(self, rows: list[dict], alpha: float) -> list[dict]:
        todo = [r for r in rows if (alpha, r["id"]) not in self.memo]
        mine = todo[self.dist.rank :: self.dist.world_size]
        done = {}
        self.state.alpha = alpha
        self.bar.set_postfix(alpha=alpha)
        for start in range(0, len(mine), self.args.batch_size):
            chunk = mine[start : start + self.args.batch_size]
            outs = self.sampler.generate(
                [messages(r) for r in chunk],
                temperature=0,
                max_new_tokens=self.args.max_new_tokens,
                images=[image_of(r) for r in chunk],
            )
            for r, (c,) in zip(chunk, outs):
                done[r["id"]] = {
                    "id": r["id"],
                    "alpha": alpha,
                    "text": c.text,
                    "confidence": first_token_confidence(c.logprobs),
                    "finish": c.finish_reason,
                }
            self.bar.update(len(chunk) * self.dist.world_size)
        self.state.alpha = 1.0
        new = [rec for part in all_gather_object(done) for rec in part.values()]
        self.memo.update({(alpha, rec["id"]): rec for rec in new})
        if self.dist.is_main:
            write_jsonl(self.path, new, mode="a")
        return [self.memo[(alpha, r["id"])] for r in rows]


def adaptvis_generate(generate, rows, threshold, alpha_smooth, alpha_sharpen):
    """§2.2 AdaptVis: generate with alpha = 1, gate each row on its first-token confidence, regenerate."""
    first = generate(rows, 1.0)
    alphas = [choose_alpha(o["confidence"], threshold, alpha_smooth, alpha_sharpen) for o in first]
    final = [None] * len(rows)
    for alpha in sorted(set(alphas)):
        idx = [i for i, a in enumerate(alphas) if a == alpha]
        for i, out in zip(idx, generate([rows[i] for i in idx], alpha)):
            final[i] = out
    return final, alphas


def grid_search(rows, outputs_by_alpha, args):
    """Best ScalingVis alpha and AdaptVis (beta, alpha_smooth, alpha_sharpen) on the tuning rows (ties -> nearest 1)."""
    scaling = {a: score(rows, outs)["acc"] for a, outs in outputs_by_alpha.items()}
    best_alpha = max(scaling, key=lambda a: (scaling[a], -abs(a - 1)))
    confidence = [o["confidence"] for o in outputs_by_alpha[1.0]]
    adapt = {}
    for beta, smooth, sharp in product(
        args.thresholds, args.alpha_smooth_grid, args.alpha_sharpen_grid
    ):
        picks = [
            outputs_by_alpha[choose_alpha(c, beta, smooth, sharp)][i]
            for i, c in enumerate(confidence)
        ]
        adapt[(beta, smooth, sharp)] = score(rows, picks)["acc"]
    best_adapt = max(adapt, key=lambda k: (adapt[k], -abs(k[1] - 1) - abs(k[2] - 1)))
    return scaling, best_alpha, adapt, best_adapt


# ----------------------------------------------------------------------------------------------------
# analysis: where the last prompt token looks (paper: ~89% of the input is image, ~10.7% of the attention)


@torch.no_grad()
def attention_analysis(model, processor, state, rows, correct, alphas, args) -> dict:
    """Per layer and alpha: last-row attention mass on image tokens (heads averaged) and the share of the image
    attention on patches that overlap the ground-truth boxes; AUROC of that share for baseline correctness."""
    device = next(model.parameters()).device
    mass, align, patches, share, chance = (
        {a: [] for a in alphas},
        {a: [] for a in alphas},
        {},
        [],
        [],
    )
    for alpha in alphas:
        state.alpha, patches[alpha] = alpha, []
        for start in range(0, len(rows), args.batch_size):
            chunk = rows[start : start + args.batch_size]
            enc = processor(
                text=[render_prompt(processor, messages(r)) for r in chunk],
                images=[image_of(r) for r in chunk],
                padding=True,
                return_tensors="pt",
            ).to(device)
            state.record = []
            model(**enc)
            layers = torch.stack(state.record, 1)  # (b, L, H, K)
            image_mask = state.image_mask.cpu()  # (b, K)
            for b, row in enumerate(chunk):
                image_attn = layers[b][..., image_mask[b]].mean(1)  # (L, n_img) heads averaged
                mass[alpha].append(image_attn.sum(-1))  # (L,)
                patches[alpha].append(image_attn / image_attn.sum(-1, keepdim=True))
                if alpha == alphas[0]:
                    share.append(image_mask[b].sum().item() / enc["attention_mask"][b].sum().item())
                grid = math.isqrt(image_attn.shape[-1])
                if "boxes" in row and grid * grid == image_attn.shape[-1]:
                    inside = box_patch_mask(
                        list(row["boxes"].values()), image_of(row).size, grid
                    )  # (n_img,)
                    align[alpha].append((patches[alpha][-1] * inside).sum(-1))  # (L,)
                    if alpha == alphas[0]:
                        chance.append(inside.float().mean().item())
    state.alpha, state.record = 1.0, None
    out = {
        "rows": len(rows),
        "image_token_share": sum(share) / len(share),
        "image_mass": {a: torch.stack(m).mean(0).tolist() for a, m in mass.items()},
    }
    if align[alphas[0]]:
        base = torch.stack(align[alphas[0]])  # (N, L)
        out["box_alignment"] = {a: torch.stack(v).mean(0).tolist() for a, v in align.items()}
        out["box_alignment_chance"] = sum(chance) / len(chance)
        out["alignment_correct"] = [
            base[[c for c in range(len(rows)) if correct[c]], l].mean().item()
            for l in range(base.shape[1])
        ]
        out["alignment_wrong"] = [
            base[[c for c in range(len(rows)) if not correct[c]], l].mean().item()
            for l in range(base.shape[1])
        ]
        out["alignment_auroc"] = [auroc(base[:, l].tolist(), correct) for l in range(base.shape[1])]
    out["_patches"] = patches
    return out


def plot_attention(analysis, rows, alphas, path):
    """Heat maps: example scenes (boxes outlined) and their last-token attention over the image patches."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n_layers = len(analysis["image_mass"][alphas[0]])
    layers = sorted({0, n_layers // 2, n_layers - 1})
    columns = [(alphas[0], l) for l in layers] + [(a, n_layers - 1) for a in alphas[1:]]
    examples = rows[:4]
    fig, axes = plt.subplots(
        len(examples) + 1,
        len(columns) + 1,
        figsize=(2.1 * (len(columns) + 1), 2.1 * (len(examples) + 1)),
        squeeze=False,
    )
    for i, row in enumerate(examples):
        image = image_of(row)
        axes[i][0].imshow(image)
        for x0, y0, x1, y1 in row.get("boxes", {}).values():
            axes[i][0].add_patch(
                plt.Rectangle((x0, y0), x1 - x0, y1 - y0, fill=False, color="black", lw=1)
            )
        axes[i][0].set_title(row["answer"], fontsize=8)
        for j, (alpha, layer) in enumerate(columns, 1):
            attn = analysis["_patches"][alpha][i][layer]
            grid = math.isqrt(attn.numel())
            axes[i][j].imshow(image, extent=(0, 1, 1, 0))
            if grid * grid == attn.numel():
                axes[i][j].imshow(
                    attn.reshape(grid, grid), cmap="magma", alpha=0.6, extent=(0, 1, 1, 0)
                )
            axes[i][j].set_title(f"layer {layer} a={alpha}", fontsize=8)
    for ax in axes[:-1].flat:
        ax.set_xticks([])
        ax.set_yticks([])
    bottom = axes[-1]
    bottom[0].set_xlabel("layer", fontsize=7)
    for alpha, m in analysis["image_mass"].items():
        bottom[0].plot(m, marker=".", label=f"a={alpha}")
    bottom[0].set_title("image mass / layer", fontsize=8)
    bottom[0].legend(fontsize=6)
    if "box_alignment" in analysis:
        for alpha, m in analysis["box_alignment"].items():
            bottom[1].plot(m, marker=".", label=f"a={alpha}")
        bottom[1].axhline(analysis["box_alignment_chance"], color="gray", ls="--", lw=1)
        bottom[1].set_title("box alignment / layer", fontsize=8)
    for ax in bottom[2:]:
        ax.axis("off")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


# ----------------------------------------------------------------------------------------------------


def main(args: Args):
    dist = init_distributed()
    seed_everything(args.seed)
    out_dir = Path(args.output_dir)
    model_path = args.model or build_toy_base(args, dist)
    model = load_model(model_path, vlm=True, dtype=args.dtype, device=dist.device).eval()
    processor = load_processor(model_path)
    state = enable_image_attention_scaling(model)
    if args.data == "toy":
        datasets = {s: toy_rows(s, args.toy_eval_rows, args.seed, args) for s in args.subsets}
    else:
        rows = load_real_rows(args)
        datasets = {rows[0]["subset"]: rows}
    generate = Generations(model, processor, state, args, dist)
    logger = MetricsLogger(out_dir, track=args.track, run_name="adaptvis", config=asdict(args))
    grid_alphas = sorted({1.0, *args.alphas, *args.alpha_smooth_grid, *args.alpha_sharpen_grid})
    table, summary, tune_curves, analysis_rows, analysis_correct = [], {}, {}, [], []
    for name, rows in datasets.items():
        tune_idx, test_idx = tune_test_split(len(rows), args.tune_fraction, args.split_seed)
        tune, test = [rows[i] for i in tune_idx], [rows[i] for i in test_idx]
        if not tune or not test:
            raise ValueError(
                f"{name}: {len(rows)} rows give an empty tuning or test split (--tune_fraction {args.tune_fraction})"
            )
        print0(f"[{name}] {len(tune)} tuning / {len(test)} test rows")
        scaling, best_alpha, adapt, best_adapt = grid_search(
            tune, {a: generate(tune, a) for a in grid_alphas}, args
        )
        tune_curves[name] = scaling
        baseline = generate(test, 1.0)
        methods = {"baseline": baseline, "ScalingVis": generate(test, best_alpha)}
        methods["AdaptVis"], picked = adaptvis_generate(generate, test, *best_adapt)
        methods["AdaptVis (run.sh)"], _ = adaptvis_generate(
            generate, test, args.threshold, args.alpha_smooth, args.alpha_sharpen
        )
        scores = {m: score(test, outs) for m, outs in methods.items()}
        options = rows[0].get("options", ["yes", "no"])
        no_option = sum(not any(o.lower() in b["text"].lower() for o in options) for b in baseline)
        for metric in scores["baseline"]:
            if metric in ("acc", "f1"):
                table.append(
                    {
                        "subset": name,
                        "metric": metric,
                        **{m: s[metric] for m, s in scores.items()},
                        "tuned alpha": best_alpha,
                        "tuned beta, a_smooth/a_sharpen": "{}, {}/{}".format(*best_adapt),
                    }
                )
        summary[name] = {
            "n_tune": len(tune),
            "n_test": len(test),
            "test": scores,
            "tune_scalingvis": scaling,
            "best_alpha": best_alpha,
            "best_adaptvis": best_adapt,
            "tune_adaptvis_best": adapt[best_adapt],
            "adaptvis_smoothed_share": sum(a == best_adapt[1] for a in picked) / len(picked),
            "baseline_mean_confidence": sum(b["confidence"] for b in baseline) / len(baseline),
            "baseline_no_option": no_option,
        }
        analysis_rows += test[: args.analysis_rows]
        analysis_correct += [
            int(row_correct(r, b["text"])) for b, r in zip(baseline, test[: args.analysis_rows])
        ]
    for i, alpha in enumerate(grid_alphas):
        logger.log(
            {"alpha": alpha, **{f"tune_acc/{n}": c[alpha] for n, c in tune_curves.items()}}, step=i
        )
    logger.log(
        {
            f"test/{n}/{m}/{k}": v
            for n, s in summary.items()
            for m, sc in s["test"].items()
            for k, v in sc.items()
        },
        step=len(grid_alphas),
    )
    if dist.is_main:
        logger.plot(
            [f"tune_acc/{n}" for n in tune_curves],
            out_dir / "tuning_accuracy_vs_alpha.png",
            title="tuning accuracy vs alpha",
            x="alpha",
        )
        print0(
            f"\ntest split ({args.tune_fraction:.0%} tuning split used for the grid search):\n"
            + format_table(table)
        )
        alphas = [1.0, args.alpha_smooth, args.alpha_sharpen]
        analysis = attention_analysis(
            model, processor, state, analysis_rows, analysis_correct, alphas, args
        )
        plot_attention(analysis, analysis_rows, alphas, out_dir / "attention_heatmap.png")
        analysis.pop("_patches")
        layer_rows = [
            {
                "layer": l,
                **{f"image mass a={a}": m[l] for a, m in analysis["image_mass"].items()},
                **(
                    {
                        "box align a=1": analysis["box_alignment"][1.0][l],
                        "align correct": analysis["alignment_correct"][l],
                        "align wrong": analysis["alignment_wrong"][l],
                        "AUROC": analysis["alignment_auroc"][l],
                    }
                    if "box_alignment" in analysis
                    else {}
                ),
            }
            for l in range(len(analysis["image_mass"][1.0]))
        ]
        print0(
            f"\nattention analysis on {analysis['rows']} test rows: image tokens are {analysis['image_token_share']:.1%} of the prompt"
            + (
                f"; boxes cover {analysis['box_alignment_chance']:.1%} of the patches"
                if "box_alignment" in analysis
                else ""
            )
        )
        print0(format_table(layer_rows))
        summary["attention_analysis"] = {
            **analysis,
            "image_mass": {str(a): m for a, m in analysis["image_mass"].items()},
            **(
                {"box_alignment": {str(a): m for a, m in analysis["box_alignment"].items()}}
                if "box_alignment" in analysis
                else {}
            ),
        }
        (out_dir / "summary.json").write_text(
            json.dumps(
                {"args": asdict(args), "model": model_path, **{k: v for k, v in summary.items()}},
                indent=1,
                default=str,
            )
        )
        print0(
            f"\nwrote {out_dir}/summary.json, metrics.jsonl, generations.jsonl, tuning_accuracy_vs_alpha.png, attention_heatmap.png"
        )
    logger.close()
    barrier()


if __name__ == "__main__":
    main(parse_config(Args, PAPER))
