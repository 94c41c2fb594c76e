"""Spatial-relation rows for adaptvis.py: toy two-object scenes in the WhatsUp format, a tiny LLaVA
whose answer is read off its last prompt token's attention to the image (weights set by hand), and
readers that turn the released WhatsUp and VSR files into the same rows.

The scenes (64 x 64, white backdrop): a red *subject* and a blue *reference* shape, the subject left
of, right of, above or below the reference (the options of WhatsUp's COCO_QA_two_obj; Kamath et al.
2023, used by AdaptVis arXiv 2503.01773). Two styles, after the paper's two kinds of subsets:

    controlled   two faint objects on a plain backdrop, the reference fainter than the subject
                 (Controlled_A/B: the paper finds smoothing the image attention helps there)
    cluttered    two vivid objects among paler red and blue distractors
                 (COCO / VG: the paper finds sharpening helps there)
    mixed        half the rows in each style (the set AdaptVis is for: no single alpha suits both)

The toy model (`build_toy_vlm`) is a real `LlavaForConditionalGeneration` (CLIP tower, projector,
one Qwen2 layer) loaded by the same code as llava-1.5-7b, but its weights are set, not trained, so
that the attention decides the answer and a reader can see why:
- each 8 x 8 patch becomes one image token carrying its red amount r, blue amount b (0 = white,
  1 = a fully covered saturated patch) and its position (x, y) in [-1, 1];
- head A of the last prompt token scores image token j as z = S * r_j - C and head B as
  z = S * b_j - C; every text token scores 0 (the "sink" the attention falls back to);
- both heads read the patch positions, so head A returns the attention-weighted position of the red
  patches and head B that of the blue ones; the answer is the larger of -dx, dx, -dy, dy of their
  difference (left, right, above, below), and the model then ends its turn.
So the answer is right when both heads put comparable weight on their object. In a controlled scene
the faint reference scores below the text tokens, head B barely sees it, and the answer follows the
subject's absolute position (the paper's "attention on the wrong area"), with a small readout and so
a low confidence: shrinking the image logits (alpha < 1) brings the reference back. In a cluttered
scene both objects score well above the sink, the readout is large (high confidence), and the
distractors pull the positions: scaling the logits up (alpha > 1) leaves them behind.

A row: {"id", "subset", "style", "image" (PIL), "boxes": {"subject", "reference"} ([x0, y0, x1, y1]
pixels), "subject", "reference", "relation", "question", "options", "answer" (capitalised, as in
AdaptVis' prompt files), "caption_options" (the true caption first, as in WhatsUp)}. Everything is
deterministic given the seed.
"""

from __future__ import annotations

import json
import random
import re
from pathlib import Path

import torch
from PIL import Image, ImageDraw

from common.data import DataError, load_rows
from common.models import end_of_turn

IMAGE_SIZE = 64
PATCH = 4  # 16 x 16 = 256 image tokens
OPTIONS = ("left", "right", "above", "below")
CAPTION = {"left": "to the left of", "right": "to the right of", "above": "above", "below": "below"}
STYLES = {"controlled": ("controlled",), "cluttered": ("cluttered",)}
STYLES["mixed"] = ("controlled", "cluttered")
SHAPES = ("square", "circle")

# The toy model's attention scores: z = SALIENCE * (colour amount) - OFFSET for an image patch,
# 0 for a text token; READOUT scales the answer logits. A saturated patch scores +4, white -4.
SALIENCE, OFFSET, READOUT = 8.0, 4.0, 6.0
ANSWER_BIAS = 12.0  # lifts the four answer words above the rest of the vocabulary
STOP = 40.0  # after an answer word, the end-of-turn token wins
DISTRACTORS = 6  # per cluttered scene, alternately red and blue
DISTRACTOR_STRENGTH = (0.85, 0.95)  # a little paler than the objects (1.0)


def tint(color: str, strength: float) -> tuple[int, int, int]:
    """RGB of red or blue at `strength` (1 saturated, 0 white): its red (blue) amount."""
    pale = round(255 * (1 - strength))
    return (255, pale, pale) if color == "red" else (pale, pale, 255)


def place_pair(rng: random.Random, relation: str) -> tuple[list[int], list[int]]:
    """Boxes (subject, reference) in pixels with `subject <relation> reference`, roughly aligned."""
    for _ in range(10_000):
        sa, sb = rng.randint(10, 14), rng.randint(10, 14)
        bx, by = rng.randint(0, IMAGE_SIZE - sb), rng.randint(0, IMAGE_SIZE - sb)
        gap, shift = rng.randint(4, 16), rng.randint(-4, 4) + (sb - sa) // 2
        if relation in ("left", "right"):
            ax = bx - gap - sa if relation == "left" else bx + sb + gap
            ay = by + shift
        else:
            ay = by - gap - sa if relation == "above" else by + sb + gap
            ax = bx + shift
        if 0 <= ax <= IMAGE_SIZE - sa and 0 <= ay <= IMAGE_SIZE - sa:
            return [ax, ay, ax + sa, ay + sa], [bx, by, bx + sb, by + sb]
    raise RuntimeError(f"could not place a {relation!r} pair on a {IMAGE_SIZE}px image")


def overlaps(box, others, margin: int = 2) -> bool:
    return any(
        box[0] < o[2] + margin
        and o[0] < box[2] + margin
        and box[1] < o[3] + margin
        and o[1] < box[3] + margin
        for o in others
    )


def make_scene(rng: random.Random, relation: str, style: str) -> dict:
    """One scene; `style` sets the colour strengths and the distractors (module docstring)."""
    subject_box, reference_box = place_pair(rng, relation)
    if style == "controlled":  # faint, the reference fainter: it scores below the text tokens
        strength = rng.uniform(0.5, 0.65)
        strengths = (strength, strength - rng.uniform(0.1, 0.2))
    else:
        strengths = (1.0, 1.0)
    shapes = (rng.choice(SHAPES), rng.choice(SHAPES))
    items = [("red", strengths[0], shapes[0], subject_box)]
    items.append(("blue", strengths[1], shapes[1], reference_box))
    boxes = [subject_box, reference_box]
    n_distractors = DISTRACTORS if style == "cluttered" else 0
    while len(boxes) < 2 + n_distractors:
        side = rng.randint(6, 10)
        x, y = rng.randint(0, IMAGE_SIZE - side), rng.randint(0, IMAGE_SIZE - side)
        box = [x, y, x + side, y + side]
        if not overlaps(box, boxes):
            color = ("red", "blue")[len(boxes) % 2]
            items.append((color, rng.uniform(*DISTRACTOR_STRENGTH), rng.choice(SHAPES), box))
            boxes.append(box)
    image = Image.new("RGB", (IMAGE_SIZE, IMAGE_SIZE), (255, 255, 255))
    draw = ImageDraw.Draw(image)
    for color, strength, shape, (x0, y0, x1, y1) in items:
        paint = draw.rectangle if shape == "square" else draw.ellipse
        paint([x0, y0, x1 - 1, y1 - 1], fill=tint(color, strength))
    return {
        "image": image,
        "style": style,
        "relation": relation,
        "subject": f"red {shapes[0]}",
        "reference": f"blue {shapes[1]}",
        "boxes": {"subject": subject_box, "reference": reference_box},
    }


def make_whatsup_rows(n: int, seed: int = 0, subset: str = "mixed") -> list[dict]:
    """`n` WhatsUp-style rows of one subset (controlled | cluttered | mixed), relations balanced."""
    if subset not in STYLES:
        raise ValueError(f"unknown toy subset {subset!r} (expected one of {sorted(STYLES)})")
    rng = random.Random(f"whatsup-{subset}-{seed}")
    relations = [OPTIONS[i % len(OPTIONS)] for i in range(n)]
    rng.shuffle(relations)
    rows = []
    styles = STYLES[subset]
    for i, rel in enumerate(relations):
        scene = make_scene(rng, rel, styles[i % len(styles)])
        subj, ref = scene["subject"], scene["reference"]
        others = [o for o in OPTIONS if o != rel]
        rows.append(
            {
                "id": f"{subset}-{seed}-{i}",
                "subset": subset,
                **scene,
                "question": f"Where is the {subj} in relation to the {ref}? "
                "Answer with left, right, above or below.",
                "options": list(OPTIONS),
                "answer": rel.capitalize(),
                "caption_options": [f"A {subj} {CAPTION[r]} a {ref}" for r in (rel, *others)],
            }
        )
    return rows


# --------------------------------------------------------------------------------------------------
# the toy model: a tiny LLaVA with hand-set weights (see the module docstring for what they compute)


def toy_configs(tokenizer):
    from transformers import CLIPVisionConfig, LlavaConfig, Qwen2Config

    text = Qwen2Config(
        vocab_size=len(tokenizer),
        hidden_size=64,
        intermediate_size=16,
        num_hidden_layers=1,
        num_attention_heads=2,  # head A reads the subject's colour, head B the reference's
        num_key_value_heads=2,
        rope_parameters={"rope_type": "default", "rope_theta": 1e6},
        tie_word_embeddings=False,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=None,
    )
    vision = CLIPVisionConfig(
        hidden_size=32,
        intermediate_size=16,
        num_hidden_layers=1,
        num_attention_heads=2,
        image_size=IMAGE_SIZE,
        patch_size=PATCH,
    )
    return LlavaConfig(
        vision_config=vision,
        text_config=text,
        image_token_index=tokenizer.convert_tokens_to_ids("<image>"),
        image_seq_length=(IMAGE_SIZE // PATCH) ** 2,
        vision_feature_select_strategy="default",
        vision_feature_layer=-1,
        tie_word_embeddings=False,
    )


@torch.no_grad()
def set_toy_weights(model, tokenizer) -> None:
    """Zero every weight, then write the few that compute the readout of the module docstring.

    Vision features (dims): 0/1 = +-r, 2/3 = +-b, 4/5 = +-x, 6/7 = +-y, 8/9 = +-20; the +- pairs
    keep the LayerNorm's mean at 0 and the constant pair its scale at 5, so it passes features on.
    Text residual (dims): 0 = 30 for every token (the RMSNorms then pass features on), 1 = is an
    image token, 2 = r, 3 = b, 4 = x, 5 = y, 6 = is an answer word, 8 / 9 = dx / dy (attention).
    """
    for p in model.parameters():
        p.zero_()
    vision = model.model.vision_tower
    grid = IMAGE_SIZE // PATCH
    conv = vision.embeddings.patch_embedding.weight  # (32, 3, P, P) on pixels in [-1, 1]
    per_pixel = 1 / (2 * PATCH * PATCH)  # r = mean (R - G) / 2, b = mean (B - G) / 2
    for dim, channel, sign in ((0, 0, 1), (1, 0, -1), (2, 2, 1), (3, 2, -1)):
        conv[dim, channel] = sign * per_pixel
        conv[dim, 1] = -sign * per_pixel
    position = vision.embeddings.position_embedding.weight  # (1 + grid^2, 32); 0 = CLS
    for index in range(grid * grid):
        x = (index % grid - (grid - 1) / 2) / ((grid - 1) / 2)
        y = (index // grid - (grid - 1) / 2) / ((grid - 1) / 2)
        position[1 + index, 4:10] = torch.tensor([x, -x, y, -y, 20.0, -20.0])
    position[0, 8:10] = torch.tensor([20.0, -20.0])
    vision.pre_layrnorm.weight.fill_(5.0)
    projector = model.model.multi_modal_projector
    for text_dim, vision_dim in ((2, 0), (3, 2), (4, 4), (5, 6)):
        projector.linear_1.weight[text_dim, vision_dim] = 1.0
        projector.linear_1.bias[text_dim] = 10.0  # GELU(10 + f) = 10 + f: the GELU is linear here
        projector.linear_2.weight[text_dim, text_dim] = 1.0
        projector.linear_2.bias[text_dim] = -10.0
    projector.linear_2.bias[0:2] = torch.tensor([30.0, 1.0])
    text = model.model.language_model
    vocab = tokenizer.get_vocab()
    answers = [vocab[f"Ġ{w}"] for w in OPTIONS]  # " left", " right", " above", " below"
    text.embed_tokens.weight[:, 0] = 30.0
    text.embed_tokens.weight[answers, 6] = 1.0
    scale = 30.0 / 64**0.5  # the RMS of a residual that is 30 in one of 64 dims
    layer = text.layers[0]
    for norm in (layer.input_layernorm, layer.post_attention_layernorm, text.norm):
        norm.weight.fill_(scale)
    attention, head_dim = layer.self_attn, 32
    for head, colour_dim in ((0, 2), (1, 3)):
        key = head * head_dim + head_dim // 2 - 1  # the slowest rotary pair: RoPE leaves it alone
        attention.q_proj.bias[key] = head_dim**0.5  # times 1/sqrt(d): logit = key
        attention.k_proj.weight[key, colour_dim] = SALIENCE
        attention.k_proj.weight[key, 1] = -OFFSET
        attention.v_proj.weight[head * head_dim, 4] = 1.0
        attention.v_proj.weight[head * head_dim + 1, 5] = 1.0
        sign = 1.0 if head == 0 else -1.0  # dx = red position - blue position
        attention.o_proj.weight[8, head * head_dim] = sign
        attention.o_proj.weight[9, head * head_dim + 1] = sign
    lm_head = model.lm_head.weight
    for token, dim, sign in zip(answers, (8, 8, 9, 9), (-1, 1, -1, 1)):
        lm_head[token, 0] = ANSWER_BIAS / 30.0
        lm_head[token, dim] = sign * READOUT
    lm_head[vocab[end_of_turn(tokenizer)], 6] = STOP  # after an answer word: end the turn


def build_toy_vlm(folder: Path) -> None:
    """Save the hand-set tiny LLaVA and its processor (the ChatML template of common.models)."""
    from transformers import LlavaForConditionalGeneration

    from common.models import make_tokenizer, tiny_llava_processor

    tokenizer = make_tokenizer()
    model = LlavaForConditionalGeneration(toy_configs(tokenizer))
    set_toy_weights(model, tokenizer)
    model.save_pretrained(folder)
    processor = tiny_llava_processor(tokenizer, IMAGE_SIZE, PATCH)
    processor.save_pretrained(folder)
    tokenizer.save_pretrained(folder)


# --------------------------------------------------------------------------------------------------
# the released WhatsUp and VSR files, read into the same row format


# WhatsUp caption phrase -> the option word of AdaptVis' prompts/Controlled_Images_*.jsonl
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
    """WhatsUp's controlled-image JSON as released (whatsup_vlms
    data/controlled_images_dataset.json, [{image_path, caption_options}]), the true caption
    first, images named `<subject>_<relation>_<object>.jpeg`. Each row becomes AdaptVis's
    four-option question ("Where is the beer bottle in relation to the armchair? Answer with left,
    right, on or under."; front / behind for the B set), gold = the true caption's relation."""
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
        listed = "left, right, on or under"
        if {whatsup_relation(c) for c in options} & {"Front", "Behind"}:  # the B set
            listed = "left, right, front or behind"
        question = f"Where is the {subject} in relation to the {obj}? Answer with {listed}."
        rows.append(
            {
                "id": f"{path.stem}-{i}",
                "subset": path.stem,
                "image_path": str(root / d["image_path"]),
                "question": question,
                "answer": gold,
                "options": re.split(r", | or ", listed),
                "caption_options": options,
            }
        )
    return rows


def vsr_image_path(root: Path, row: dict) -> str:
    """VSR names the COCO file (`image`) and links it (`image_link`, .../train2017/<file>); the
    release reads the link's path. Use whichever exists under --image_root."""
    candidates = [root / row["image"]]
    if isinstance(row.get("image_link"), str) and ".org/" in row["image_link"]:
        candidates.append(root / row["image_link"].split(".org/", 1)[1])
    return str(next((c for c in candidates if c.exists()), candidates[0]))


def vsr_rows(args) -> list[dict]:
    """VSR's released JSONL rows {image, image_link, caption, label, ...}."""
    rows = load_rows(args.data, required=("image", "caption", "label"))
    prompt = "Determine whether the description about the spatial relationship is correct or not."
    return [
        {
            **{k: r[k] for k in ("relation", "subj", "obj") if k in r},
            "id": f"vsr-{i}",
            "subset": "vsr",
            "image_path": vsr_image_path(Path(args.image_root), r),
            "caption": r["caption"],
            "label": int(r["label"]),
            "question": f"{prompt} Answer with yes or no: {r['caption']}",
            "answer": "Yes" if int(r["label"]) else "No",
        }
        for i, r in enumerate(rows)
    ]


def load_real_rows(args) -> list[dict]:
    """WhatsUp: the released controlled-image JSON alone, or AdaptVis prompt rows {question,
    answer} + the image of --annotations row i. VSR: `vsr_rows`."""
    if args.task == "vsr":
        return vsr_rows(args)
    if args.task != "whatsup":
        raise ValueError(f"--task must be whatsup or vsr, got {args.task!r}")
    root = Path(args.image_root)
    if Path(args.data).suffix == ".json" and not args.annotations:
        return whatsup_release_rows(Path(args.data), root)
    prompts = load_rows(args.data, required=("question", "answer"))
    if not args.annotations:
        raise ValueError("--task whatsup needs --annotations (the JSON with each prompt's image)")
    images = json.loads(Path(args.annotations).read_text())
    if len(images) != len(prompts):
        raise ValueError(
            f"{args.annotations}: {len(images)} rows but {args.data} has {len(prompts)} "
            "prompts; they pair up by row"
        )
    rows = []
    for i, (p, a) in enumerate(zip(prompts, images)):
        image = a.get("image_path", a.get("image")) if isinstance(a, dict) else a[0]
        if isinstance(image, int):  # COCO / VG QA files name images by id
            image = f"{image:012d}.jpg"
        question = re.sub(r"^(<image>\s*)?(USER:\s*)?", "", p["question"])
        question = question.split("\nASSISTANT:")[0].strip()
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
