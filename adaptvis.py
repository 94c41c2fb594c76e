"""AdaptVis / ScalingVis: confidence-gated scaling of image attention. Docs: docs/adaptvis.md

"Why Is Spatial Reasoning Hard for VLMs? An Attention Mechanism Perspective on Focus Areas" (Chen et
al., ICML 2025; arXiv 2503.01773; code shiqichen17/AdaptVis). A VLM answers "where is X in relation
to Y?" from the attention its last prompt token pays to the image tokens. ScalingVis multiplies the
pre-softmax attention logits of that one query row on the image key columns by a constant alpha,
in every layer and head, during prefill only: alpha > 1 sharpens the attention over the image,
alpha < 1 smooths it. AdaptVis picks alpha per sample from the model's own confidence: generate with
alpha = 1, take the max softmax probability of the first generated token, then regenerate with
alpha_smooth if it is below the threshold beta, else with alpha_sharpen. Evaluated on WhatsUp
multiple choice and VSR yes/no; alpha and beta are grid-searched on a fixed 20% tuning split and
reported on the other 80%.

Departures (vs the paper and shiqichen17/AdaptVis@3b41399):
- The intervention is a function registered in transformers' AttentionInterface plus a pre-hook that
  reads the image positions from input_ids, not a copy of the release's modeling_llama_add_attn.py;
  it runs on any LLaVA or Qwen2-VL class of transformers 5. Decode steps and alpha = 1 call the
  model's own attention (sdpa / eager).
- Prompts use the processor's chat template (LLaVA-1.5: "USER: <image>\\n... ASSISTANT:") with
  dynamic left padding, not the release's padding to 77 tokens.
- VSR: the confidence goes through the softmax as for WhatsUp (the release reads raw logits there);
  yes/no are matched as whole words, case-insensitively (the release: substrings 'Yes' / 'No').
- The beta grid 0.3-0.9 is ours: the paper tunes beta per subset without publishing a grid (the
  release's README uses 0.3, its run.sh 0.4; the run.sh setting is always reported too). Grid ties
  go to the setting closest to alpha = 1.
- The tuning sample is random.Random(1).sample, so its rows differ from the release's cached
  output/sampled_idx_*.npy; the test split is also scored at every alpha of the grid.
- The attention analysis uses ground-truth boxes (toy scenes) instead of YOLO detections; real rows
  carry no boxes and get only the image attention mass.
- The toy: a 1-layer tiny LLaVA whose weights are set by hand (common/spatial_scenes.py) so that its
  last prompt token's attention to the image decides the answer, on scenes made so that some need
  smoother and some sharper attention. It shows the mechanism, not that real VLMs have it (that is
  the paper's finding). It answers left / right / above / below only, so the toy has no VSR subset.

Commands (the defaults are the paper's settings, so --preset paper changes nothing):
  CPU toy:  python adaptvis.py
  1 GPU:    python adaptvis.py --model llava-hf/llava-1.5-7b-hf --dtype bf16 \\
              --data prompts/Controlled_Images_A_with_answer_four_options.jsonl \\
              --annotations whatsup/controlled_images_dataset.json --image_root whatsup
            python adaptvis.py --model llava-hf/llava-1.5-7b-hf --dtype bf16 --task vsr \\
              --data vsr/zeroshot/test.jsonl --image_root coco2017
  8 GPUs:   torchrun --nproc_per_node=8 adaptvis.py --model llava-hf/llava-1.5-7b-hf --data ...
            # one model per rank; the rows of every pass are sharded over the ranks
"""

from __future__ import annotations

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

from common.claims import claim, format_claims, write_summary
from common.config import arg, parse_config
from common.data import read_jsonl_tolerant, write_jsonl
from common.models import load_model, load_processor
from common.sampling import HFSampler, render_prompt
from common.spatial_scenes import (
    build_toy_vlm,
    load_real_rows,
    make_whatsup_rows,
    set_toy_weights,
    toy_configs,
)
from common.toys import toy_model
from common.train import (
    MetricsLogger,
    all_gather_object,
    barrier,
    cleanup_distributed,
    format_table,
    init_distributed,
    print0,
    seed_everything,
)


@dataclass
class Args:
    # generic
    model: str = arg("", "LLaVA / Qwen2-VL hub id or folder; '' = the hand-set tiny LLaVA (toy)")
    data: str = arg(
        "toy",
        "'toy', or --task whatsup: WhatsUp's controlled-image JSON (image_path, caption_options) "
        "or an AdaptVis prompts JSONL (question, answer) with --annotations; --task vsr: VSR's "
        "JSONL (image, caption, label)",
    )
    task: Literal["whatsup", "vsr"] = arg("whatsup", "the real data's format (the toy is whatsup)")
    annotations: str = arg("", "WhatsUp JSON whose row i holds the image of prompt row i")
    image_root: str = arg("", "folder that relative image paths are resolved against")
    output_dir: str = arg("runs/adaptvis", "metrics.jsonl, generations.jsonl, summary.json, PNG")
    seed: int = arg(0, "seed of the toy scenes")
    dtype: Literal["auto", "float32", "fp32", "bfloat16", "bf16", "float16", "fp16"] = arg(
        "auto", "model dtype"
    )
    batch_size: int = arg(32, "prompts per generate call")
    max_new_tokens: int = arg(
        100, "greedy answer length; paper: 100 (release: model_zoo/llava15.py)"
    )
    resume: bool = arg(False, "reuse generations.jsonl of an earlier run (same model and data!)")
    track: bool = arg(False, "log to Weights & Biases")
    # algorithm (the release's README and run.sh)
    alphas: list[float] = field(
        default_factory=lambda: [0.5, 0.8, 1.2, 1.5, 2.0],
        metadata={"help": "ScalingVis alpha grid (the release's README grid)"},
    )
    thresholds: list[float] = field(
        default_factory=lambda: [0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9],
        metadata={"help": "AdaptVis beta grid (README 0.3, run.sh 0.4; the wider grid is ours)"},
    )
    alpha_smooth_grid: list[float] = field(
        default_factory=lambda: [0.5, 0.8],
        metadata={"help": "low-confidence alphas (the release's weight1 values)"},
    )
    alpha_sharpen_grid: list[float] = field(
        default_factory=lambda: [1.2, 1.5, 2.0],
        metadata={"help": "high-confidence alphas (the release's weight2 values)"},
    )
    threshold: float = arg(0.4, "beta of the fixed AdaptVis row; paper: 0.4 (release: run.sh)")
    alpha_smooth: float = arg(0.5, "alpha below beta, fixed row; paper: 0.5 (run.sh weight1)")
    alpha_sharpen: float = arg(1.5, "alpha at/above beta, fixed row; paper: 1.5 (run.sh weight2)")
    tune_fraction: float = arg(
        0.2, "tuning share, the rest is the test; paper: 0.2 (release: main_aro.py)"
    )
    split_seed: int = arg(1, "seed of the tuning sample; paper: 1 (release: main_aro.py --seed)")
    analysis_rows: int = arg(64, "test rows per subset for the attention analysis")
    toy_eval_rows: int = arg(400, "toy scenes, half controlled, half cluttered")


PAPER = {}  # evaluation only, and every algorithm default is already the paper's or its release's


# --------------------------------------------------------------------------------------------------
# ALGO LOGIC: the paper's equations


def scale_image_attention(logits, image_mask, alpha, query_index: int = -1):
    """ScalingVis (the release's modeling_llama_add_attn.py): z'[q, j] = alpha * z[q, j] for the
    query row q and every image key column j; everything else unchanged.

    logits: (B, H, Q, K) pre-softmax QK^T/sqrt(d) before the causal mask; image_mask: (B, K) bool;
    alpha: float or (B,). Scaling logits (not probabilities) is a temperature 1/alpha on the image
    logits, so alpha > 1 *lowers* the image mass where those logits are negative.
    """
    alpha = torch.as_tensor(alpha, dtype=logits.dtype, device=logits.device).reshape(-1, 1, 1)
    row = logits[:, :, query_index, :]  # (B, H, K)
    scaled = logits.clone()
    scaled[:, :, query_index, :] = torch.where(image_mask[:, None, :].bool(), row * alpha, row)
    return scaled


def choose_alpha(confidence: float, threshold: float, alpha_smooth: float, alpha_sharpen: float):
    """The AdaptVis gate (release: model_zoo/llava15.py, method adapt_vis): confidence w, rounded
    to 2 decimals, below beta -> smooth (its weight1), else sharpen (its weight2)."""
    if not 0.0 <= confidence <= 1.0:  # also rejects NaN
        raise ValueError(f"confidence must be a probability in [0, 1], got {confidence}")
    return alpha_smooth if round(confidence, 2) < threshold else alpha_sharpen


def first_token_confidence(logprobs: list[float]) -> float:
    """Max softmax probability of the first generated token: greedy picks the argmax, so it is
    exp(log p(first token)). An empty completion has no evidence: confidence 0."""
    return math.exp(logprobs[0]) if logprobs else 0.0


def whatsup_correct(output: str, gold: str) -> bool:
    """WhatsUp scoring (release: model_zoo/llava15.py get_out_scores_wh_batched): the gold option
    as a case-insensitive substring; gold 'On' counts as wrong when 'front' appears."""
    out, gold = output.lower(), gold.lower()
    return gold in out and not (gold == "on" and "front" in out)


def says(output: str, word: str) -> bool:
    return re.search(rf"\b{word}\b", output, flags=re.IGNORECASE) is not None


def vsr_counts(outputs: list[str], labels: list[int]) -> tuple[int, int, int, int]:
    """VSR (TP, TN, FP, FN): a true caption needs 'yes', a false one 'no' (the release's count)."""
    tp = sum(1 for o, y in zip(outputs, labels) if y == 1 and says(o, "yes"))
    fn = sum(1 for y in labels if y == 1) - tp
    tn = sum(1 for o, y in zip(outputs, labels) if y == 0 and says(o, "no"))
    fp = sum(1 for y in labels if y == 0) - tn
    return tp, tn, fp, fn


def vsr_metrics(tp: int, tn: int, fp: int, fn: int) -> dict:
    """Accuracy and the release's 'F1': harmonic mean of TPR (its 'precision') and TNR."""
    tpr, tnr = tp / max(tp + fn, 1), tn / max(tn + fp, 1)
    f1 = 2 * tpr * tnr / (tpr + tnr) if tpr + tnr > 0 else 0.0
    return {"acc": (tp + tn) / max(tp + tn + fp + fn, 1), "f1": f1, "tpr": tpr, "tnr": tnr}


def tune_test_split(n: int, tune_fraction: float = 0.2, seed: int = 1):
    """A fixed random 20% of the rows for tuning, the other 80% for the test report (release:
    main_aro.py, random.sample after seeding with --seed 1; TEST_MODE scores the rest)."""
    tune = sorted(random.Random(seed).sample(range(n), int(tune_fraction * n)))
    chosen = set(tune)
    return tune, [i for i in range(n) if i not in chosen]


def box_patch_mask(boxes: list[list[float]], image_size: tuple[int, int], grid: int):
    """(grid*grid,) bool: the patches (row-major) that overlap any box [x0, y0, x1, y1] (pixels)."""
    width, height = image_size
    inside = torch.zeros(grid, grid, dtype=torch.bool)
    for x0, y0, x1, y1 in boxes:
        cols = range(max(0, int(x0 * grid / width)), min(grid, math.ceil(x1 * grid / width)))
        rows = range(max(0, int(y0 * grid / height)), min(grid, math.ceil(y1 * grid / height)))
        for r, c in product(rows, cols):
            inside[r, c] = True
    return inside.flatten()


def auroc(scores: list[float], labels: list[int]) -> float:
    """P(random positive scores above random negative), ties 1/2; NaN with one class only."""
    pos = [s for s, y in zip(scores, labels) if y]
    neg = [s for s, y in zip(scores, labels) if not y]
    if not pos or not neg:
        return float("nan")
    return sum((p > q) + 0.5 * (p == q) for p in pos for q in neg) / (len(pos) * len(neg))


# --------------------------------------------------------------------------------------------------
# ALGO LOGIC: the intervention, as an attention function registered in transformers


@dataclass
class ImageAttentionScaling:
    """What the registered attention function reads; one object per model, shared by its layers."""

    image_token_id: int
    base_implementation: str  # the model's own attention ("sdpa" | "eager"): decode, alpha = 1
    alpha: float | torch.Tensor = 1.0
    image_mask: torch.Tensor | None = None  # (B, T) image positions of the current prompt
    record: list | None = None  # a list -> each layer's prefill last-row attention (B, H, K)
    scaled_calls: int = 0  # calls that took the scaled path (tests: decode steps add none)

    def read_image_positions(self, module, args, kwargs):
        """Forward pre-hook on the VLM: image positions = input_ids == image_token_id."""
        input_ids = kwargs.get("input_ids", args[0] if args else None)
        if input_ids is not None:
            self.image_mask = input_ids == self.image_token_id  # (B, T)


def scaled_image_attention_forward(
    module, query, key, value, attention_mask, scaling, dropout=0.0, **kwargs
):
    """Eager attention with ScalingVis on the last query row's image keys; prefill only."""
    state = module.image_attention_scaling
    is_prefill = query.shape[2] == key.shape[2]  # the release's test: a square attention matrix
    untouched = isinstance(state.alpha, float) and state.alpha == 1.0 and state.record is None
    if not is_prefill or untouched:  # the model's own attention, bit for bit
        eager = sys.modules[type(module).__module__].eager_attention_forward
        own = ALL_ATTENTION_FUNCTIONS.get_interface(state.base_implementation, eager)
        return own(module, query, key, value, attention_mask, scaling=scaling, dropout=dropout)
    if state.image_mask is None or state.image_mask.shape != (query.shape[0], key.shape[2]):
        found = None if state.image_mask is None else tuple(state.image_mask.shape)
        raise RuntimeError(
            f"image mask {found} does not match the prefill ({query.shape[0]} rows, "
            f"{key.shape[2]} keys): call the model with input_ids"
        )
    keys = repeat_kv(key, module.num_key_value_groups)  # (B, H, K, D)
    values = repeat_kv(value, module.num_key_value_groups)
    logits = torch.matmul(query, keys.transpose(2, 3)) * scaling  # (B, H, Q, K)
    logits = scale_image_attention(logits, state.image_mask.to(logits.device), state.alpha)
    lowest = torch.finfo(logits.dtype).min
    if attention_mask is None:  # sdpa's mask helper returns None when plain causal will do
        attention_mask = torch.full(logits.shape[-2:], lowest, device=logits.device).triu(1)
    elif attention_mask.dtype == torch.bool:  # sdpa's boolean mask (True = attend) -> additive
        additive = torch.zeros(attention_mask.shape, dtype=logits.dtype, device=logits.device)
        attention_mask = additive.masked_fill(~attention_mask, lowest)
    weights = torch.softmax(logits + attention_mask, dim=-1, dtype=torch.float32)
    weights = weights.to(query.dtype)  # (B, H, Q, K)
    weights = torch.nn.functional.dropout(weights, p=dropout, training=module.training)
    output = torch.matmul(weights, values).transpose(1, 2).contiguous()  # (B, Q, H, D)
    state.scaled_calls += 1
    if state.record is not None:
        state.record.append(weights[:, :, -1, :].detach().float().cpu())  # (B, H, K)
    return output, weights


def enable_image_attention_scaling(model) -> ImageAttentionScaling:
    """Route the text layers' attention through `scaled_image_attention_forward`."""
    image_token_id = getattr(model.config, "image_token_id", None)
    if image_token_id is None:
        raise ValueError(
            f"{type(model).__name__} has no config.image_token_id: AdaptVis needs a LLaVA / "
            "Qwen2-VL style VLM (--model)"
        )
    base = model.config.get_text_config()._attn_implementation
    base = base if base in ("sdpa", "eager") else "sdpa"  # flash kernels take no additive mask
    name = f"adaptvis_{base}"  # one name per base, so the mask helper is the base's own
    AttentionInterface.register(name, scaled_image_attention_forward)
    AttentionMaskInterface.register(name, ALL_MASK_ATTENTION_FUNCTIONS[base])
    model.set_attn_implementation({"text_config": name})
    state = ImageAttentionScaling(image_token_id=image_token_id, base_implementation=base)
    text_model = model.model.language_model
    layers = [m for m in text_model.modules() if hasattr(m, "q_proj") and hasattr(m, "layer_idx")]
    if not layers:
        raise ValueError(f"no attention layers in {type(model).__name__}.model.language_model")
    for layer in layers:
        layer.image_attention_scaling = state
    model.register_forward_pre_hook(state.read_image_positions, with_kwargs=True)
    return state


# --------------------------------------------------------------------------------------------------
# data: toy scenes or the real WhatsUp / VSR files


def load_subsets(args) -> dict[str, list[dict]]:
    """The toy: one mixed set of scenes, also scored per style (the answers are shared)."""
    if args.data != "toy":
        rows = load_real_rows(args)
        return {rows[0]["subset"]: rows}
    rows = make_whatsup_rows(args.toy_eval_rows, args.seed, "mixed")
    styles = {s: [r for r in rows if r["style"] == s] for s in ("controlled", "cluttered")}
    return {**styles, "mixed": rows}


def messages(row: dict) -> list[dict]:
    content = [{"type": "image"}, {"type": "text", "text": row["question"]}]
    return [{"role": "user", "content": content}]


def image_of(row: dict):
    from PIL import Image

    return row["image"] if "image" in row else Image.open(row["image_path"]).convert("RGB")


def score(rows: list[dict], outputs: list[dict]) -> dict:
    """acc for WhatsUp rows; acc and F1 (harmonic mean of TPR and TNR) for VSR rows."""
    texts = [o["text"] for o in outputs]
    if rows[0]["subset"] == "vsr":
        return vsr_metrics(*vsr_counts(texts, [r["label"] for r in rows]))
    return {"acc": sum(whatsup_correct(t, r["answer"]) for t, r in zip(texts, rows)) / len(rows)}


def build_toy_base(dist_info) -> str:
    """The hand-set tiny LLaVA of common/spatial_scenes.py, built once into the cache by rank 0."""
    code = [toy_configs, set_toy_weights]
    path = toy_model("adaptvis-toy", {}, build_toy_vlm, code=code) if dist_info.is_main else None
    barrier()
    return path or toy_model("adaptvis-toy", {}, build_toy_vlm, code=code)


# --------------------------------------------------------------------------------------------------
# generation: greedy answers per (alpha, row), computed once (sharded over ranks), logged, reused


class Generations:
    def __init__(self, model, processor, state, args, dist_info):
        self.sampler = HFSampler(model, processor)
        self.state, self.args, self.dist_info = state, args, dist_info
        self.path = Path(args.output_dir) / "generations.jsonl"
        self.memo = {}
        if args.resume and self.path.exists():
            for rec in read_jsonl_tolerant(self.path):  # a line cut short by a kill is dropped
                self.memo[(rec["alpha"], rec["id"])] = rec
        elif dist_info.is_main:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self.path.write_text("")
        self.bar = tqdm(desc="answers generated", unit="ans", disable=not dist_info.is_main)

    def __call__(self, rows: list[dict], alpha: float) -> list[dict]:
        todo = [r for r in rows if (alpha, r["id"]) not in self.memo]
        mine = todo[self.dist_info.rank :: self.dist_info.world_size]
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
                confidence = first_token_confidence(c.logprobs)
                rec = {"id": r["id"], "alpha": alpha, "text": c.text, "confidence": confidence}
                done[r["id"]] = {**rec, "finish": c.finish_reason}
            self.bar.update(len(chunk) * self.dist_info.world_size)
        self.state.alpha = 1.0
        new = [rec for part in all_gather_object(done) for rec in part.values()]
        self.memo.update({(alpha, rec["id"]): rec for rec in new})
        if self.dist_info.is_main:
            write_jsonl(self.path, new, mode="a")
        return [self.memo[(alpha, r["id"])] for r in rows]


def adaptvis_generate(generate, rows, threshold, alpha_smooth, alpha_sharpen):
    """AdaptVis: generate at alpha = 1, gate each row on its first-token confidence, regenerate."""
    first = generate(rows, 1.0)
    alphas = [choose_alpha(o["confidence"], threshold, alpha_smooth, alpha_sharpen) for o in first]
    final = [None] * len(rows)
    for alpha in sorted(set(alphas)):
        idx = [i for i, a in enumerate(alphas) if a == alpha]
        for i, out in zip(idx, generate([rows[i] for i in idx], alpha)):
            final[i] = out
    return final, alphas


def grid_search(rows, outputs_by_alpha, args):
    """On the tuning rows: the best ScalingVis alpha and AdaptVis (beta, alpha_smooth,
    alpha_sharpen); the gated answers are combined from the cached ones."""
    scaling = {a: score(rows, outs)["acc"] for a, outs in outputs_by_alpha.items()}
    best_alpha = max(scaling, key=lambda a: (scaling[a], -abs(a - 1)))  # ties: nearest 1
    confidence = [o["confidence"] for o in outputs_by_alpha[1.0]]
    adapt = {}
    grid = product(args.thresholds, args.alpha_smooth_grid, args.alpha_sharpen_grid)
    for setting in grid:
        picks = [outputs_by_alpha[choose_alpha(c, *setting)][i] for i, c in enumerate(confidence)]
        adapt[setting] = score(rows, picks)["acc"]
    best_adapt = max(adapt, key=lambda k: (adapt[k], -abs(k[1] - 1) - abs(k[2] - 1)))
    return scaling, best_alpha, adapt, best_adapt


def evaluate_subset(name, rows, generate, args) -> tuple[dict, dict]:
    """Tune on 20%, then score every alpha, ScalingVis (tuned) and AdaptVis on the other 80%."""
    tune_idx, test_idx = tune_test_split(len(rows), args.tune_fraction, args.split_seed)
    tune, test = [rows[i] for i in tune_idx], [rows[i] for i in test_idx]
    if not tune or not test:
        raise ValueError(f"{name}: {len(rows)} rows, --tune_fraction {args.tune_fraction}: empty")
    print0(f"[{name}] {len(tune)} tuning / {len(test)} test rows")
    grid = sorted({1.0, *args.alphas, *args.alpha_smooth_grid, *args.alpha_sharpen_grid})
    scaling, best_alpha, adapt, best_adapt = grid_search(
        tune, {a: generate(tune, a) for a in grid}, args
    )
    outputs = {f"alpha={a}": generate(test, a) for a in grid}
    outputs["ScalingVis"] = outputs[f"alpha={best_alpha}"]
    outputs["AdaptVis"], picked = adaptvis_generate(generate, test, *best_adapt)
    fixed = (args.threshold, args.alpha_smooth, args.alpha_sharpen)
    outputs["AdaptVis (run.sh)"], _ = adaptvis_generate(generate, test, *fixed)
    baseline = outputs["alpha=1.0"]
    result = {
        "n_tune": len(tune),
        "n_test": len(test),
        "test": {m: score(test, outs) for m, outs in outputs.items()},
        "tune_scalingvis": scaling,
        "best_alpha": best_alpha,
        "best_adaptvis": best_adapt,
        "tune_adaptvis_best": adapt[best_adapt],
        "adaptvis_smoothed_share": sum(a == best_adapt[1] for a in picked) / len(picked),
        "baseline_mean_confidence": sum(b["confidence"] for b in baseline) / len(baseline),
    }
    analysed = test[: args.analysis_rows]
    correct = [int(score([r], [b])["acc"] == 1) for r, b in zip(analysed, baseline)]
    return result, {"rows": analysed, "correct": correct}


# --------------------------------------------------------------------------------------------------
# analysis: where the last prompt token looks (paper: image tokens are ~89% of LLaVA-1.5's input
# and get ~10.7% of its attention; attention on the objects' boxes predicts a right answer)


@torch.no_grad()
def attention_analysis(model, processor, state, rows, correct, alphas, args) -> dict:
    """Per alpha and layer: the last prompt token's attention mass on the image tokens (heads
    averaged) and the share of its image attention on the two objects' boxes; the AUROC of that
    share (alpha = 1) for a right baseline answer."""
    device = next(model.parameters()).device
    out = {"rows": len(rows), "image_mass": {}, "box_share": {}}
    for alpha in alphas:
        state.alpha, mass, share = alpha, [], []
        for start in range(0, len(rows), args.batch_size):
            chunk = rows[start : start + args.batch_size]
            text = [render_prompt(processor, messages(r)) for r in chunk]
            images = [image_of(r) for r in chunk]
            enc = processor(text=text, images=images, padding=True, return_tensors="pt")
            state.record = []
            model(**enc.to(device))
            attention = torch.stack(state.record, 1).mean(2)  # (b, L, K) heads averaged
            image_mask = state.image_mask.cpu()  # (b, K)
            out["image_token_share"] = (image_mask.sum() / enc["attention_mask"].sum()).item()
            for b, row in enumerate(chunk):
                on_image = attention[b][:, image_mask[b]]  # (L, n_img)
                mass.append(on_image.sum(-1))  # (L,)
                grid = math.isqrt(on_image.shape[-1])
                if "boxes" in row and grid * grid == on_image.shape[-1]:
                    boxes = list(row["boxes"].values())
                    inside = box_patch_mask(boxes, images[b].size, grid)  # (n_img,)
                    share.append(on_image[:, inside].sum(-1) / on_image.sum(-1))  # (L,)
        out["image_mass"][alpha] = torch.stack(mass).mean(0).tolist()
        if share:
            out["box_share"][alpha] = torch.stack(share).mean(0).tolist()
            if alpha == 1.0:
                per_layer = torch.stack(share).T.tolist()  # (L, N)
                out["box_share_auroc"] = [auroc(s, correct) for s in per_layer]
    state.alpha, state.record = 1.0, None
    return out


def adaptvis_claims(results: dict, subsets: dict) -> list[dict]:
    """The run's claims, on the test splits. A set of one scene style: scaling the image attention
    by the tuned alpha changes the accuracy over alpha = 1 (ScalingVis). A set that mixes styles
    (the toy's `mixed`: some rows need smoothing, others sharpening): the confidence-gated AdaptVis
    beats the best single fixed alpha tuned on the same tuning split."""
    claims = []
    for name, r in results.items():
        test = r["test"]
        if len({row.get("style") for row in subsets[name]}) > 1:
            what = f"{name}: AdaptVis vs best fixed alpha={r['best_alpha']}"
            claims.append(
                claim(what, "test acc", test["ScalingVis"]["acc"], test["AdaptVis"]["acc"])
            )
        else:
            what = f"{name}: ScalingVis alpha={r['best_alpha']} vs 1"
            claims.append(
                claim(what, "test acc", test["alpha=1.0"]["acc"], test["ScalingVis"]["acc"])
            )
    return claims


def results_table(results: dict) -> list[dict]:
    table = []
    for name, r in results.items():
        for metric in ("acc", "f1"):
            if metric in r["test"]["ScalingVis"]:
                scores = {m: s[metric] for m, s in r["test"].items()}
                tuned = "beta {}, {}/{}".format(*r["best_adaptvis"])
                table.append({"subset": name, "metric": metric, **scores, "tuned": tuned})
    return table


# --------------------------------------------------------------------------------------------------


def main(args: Args):
    dist_info = init_distributed()
    seed_everything(args.seed)
    out_dir = Path(args.output_dir)
    model_path = args.model or build_toy_base(dist_info)
    model = load_model(model_path, vlm=True, dtype=args.dtype, device=dist_info.device).eval()
    processor = load_processor(model_path)
    state = enable_image_attention_scaling(model)
    generate = Generations(model, processor, state, args, dist_info)
    logger = MetricsLogger(out_dir, track=args.track, run_name="adaptvis", config=asdict(args))
    subsets = load_subsets(args)

    # ALGO LOGIC: per subset, tune alpha and (beta, alpha_smooth, alpha_sharpen) on the tuning
    # split, then answer the test split at every alpha, with ScalingVis and with AdaptVis
    results, analysed, correct = {}, [], []
    for name, rows in subsets.items():
        results[name], sample = evaluate_subset(name, rows, generate, args)
        analysed += sample["rows"]
        correct += sample["correct"]

    # log: tuning accuracy against alpha, then every test metric
    alphas = list(next(iter(results.values()))["tune_scalingvis"])
    for i, alpha in enumerate(alphas):
        tune_acc = {f"tune_acc/{n}": r["tune_scalingvis"][alpha] for n, r in results.items()}
        logger.log({"alpha": alpha, **tune_acc}, step=i)
    test = {
        f"test/{n}/{m}/{k}": v
        for n, r in results.items()
        for m, scores in r["test"].items()
        for k, v in scores.items()
    }
    logger.log(test, step=len(alphas))
    if dist_info.is_main:
        curves = [f"tune_acc/{n}" for n in results]
        plot_path = out_dir / "tuning_accuracy_vs_alpha.png"
        logger.plot(curves, plot_path, title="tuning accuracy vs alpha", x="alpha")
        print0(f"\ntest split ({1 - args.tune_fraction:.0%} of each subset):")
        print0(format_table(results_table(results)))
        shown = [args.alpha_smooth, 1.0, args.alpha_sharpen]
        analysis = attention_analysis(model, processor, state, analysed, correct, shown, args)
        mass, share = analysis["image_mass"], analysis.get("box_share", {})
        attention = [
            {"alpha": a, "image mass": m[-1], "on the boxes": share.get(a, [-1])[-1]}
            for a, m in mass.items()
        ]
        print0(
            f"\nattention on {analysis['rows']} test rows (image tokens: "
            f"{analysis['image_token_share']:.0%} of the prompt), last layer:\n"
            + format_table(attention)
        )
        claims = adaptvis_claims(results, subsets)
        extra = {"args": asdict(args), "model": model_path, "subsets": results}
        write_summary(out_dir, claims, **extra, attention_analysis=analysis)
        print0("\n" + format_claims(claims))
        print0(f"\nwrote {out_dir}/summary.json, metrics.jsonl, generations.jsonl, a PNG")
    logger.close()
    cleanup_distributed()  # the ranks leave together (after rank 0's report)


if __name__ == "__main__":
    main(parse_config(Args, PAPER))
