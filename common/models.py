"""Load HF language / vision-language models, and build tiny offline ones for the CPU defaults.

`load_model` / `load_tokenizer` / `load_processor` take a hub id or a local path. `make_tiny_lm` and
`make_tiny_vlm` build, fully offline, models that go through exactly the same loading code as a real
Qwen or LLaVA checkpoint:

- a byte-level BPE tokenizer trained here with `tokenizers` (digits split one per token, as Qwen2
  does), with ChatML special tokens, a ChatML chat template, and pad/eos set;
- a tiny `Qwen2Config` causal LM (2 layers, width 64 by default);
- a tiny LLaVA (`LlavaForConditionalGeneration`: tiny CLIP vision tower + projector + tiny Qwen2)
  with a `LlavaProcessor` whose `<image>` placeholder expands to 16 image tokens (64x64 image, 16x16
  patches).

Both are written with `save_pretrained` into a cache folder (default `~/.cache/nanoreason`, override
with `NANOREASON_CACHE`) and built once: the folder name carries a hash of the config, and the build
goes to a temporary folder that is renamed into place, so concurrent builders (torchrun ranks,
tests) are safe.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path

import torch
from transformers.utils import logging as hf_logging

hf_logging.disable_progress_bar()  # weight-loading bars would drown the scripts' own tqdm output

CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' }}"
    "{% if message['content'] is string %}{{ message['content'] }}"
    "{% else %}{% for part in message['content'] %}"
    "{% if part['type'] == 'image' %}{{ '<image>' }}"
    "{% elif part['type'] == 'text' %}{{ part['text'] }}{% endif %}"
    "{% endfor %}{% endif %}"
    "{{ '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<image>"]

TINY_LM_DEFAULTS = dict(
    hidden_size=64,
    intermediate_size=256,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    max_position_embeddings=2048,
    tie_word_embeddings=True,
    rope_theta=10000.0,
)
TINY_VISION_DEFAULTS = dict(
    hidden_size=32,
    intermediate_size=64,
    num_hidden_layers=2,
    num_attention_heads=2,
    image_size=64,
    patch_size=16,
    projection_dim=32,
)
TOKENIZER_VOCAB = 1024


def cache_dir() -> Path:
    return Path(os.environ.get("NANOREASON_CACHE", Path.home() / ".cache" / "nanoreason"))


# --------------------------------------------------------------------------------------------------
# loading (hub id or local path)


def _dtype(dtype):
    if dtype in (None, "auto"):
        return "auto"
    if isinstance(dtype, torch.dtype):
        return dtype
    names = {
        "float32": torch.float32,
        "fp32": torch.float32,
        "bfloat16": torch.bfloat16,
        "bf16": torch.bfloat16,
        "float16": torch.float16,
        "fp16": torch.float16,
    }
    if dtype not in names:
        raise ValueError(f"--dtype {dtype!r} is not one of {sorted(names)} or 'auto'")
    return names[dtype]


def load_model(
    name_or_path: str, *, vlm: bool = False, dtype="auto", device="cpu", attn_implementation=None
):
    """AutoModelForCausalLM (or AutoModelForImageTextToText when `vlm`) from a hub id or local
    folder."""
    from transformers import AutoModelForCausalLM, AutoModelForImageTextToText

    auto_cls = AutoModelForImageTextToText if vlm else AutoModelForCausalLM
    kwargs = {"dtype": _dtype(dtype)}
    if attn_implementation:
        kwargs["attn_implementation"] = attn_implementation
    try:
        model = auto_cls.from_pretrained(name_or_path, **kwargs)
    except OSError as e:
        raise OSError(f"could not load model {name_or_path!r} (--model): {e}") from e
    return model.to(device)


def load_tokenizer(name_or_path: str):
    """AutoTokenizer with left padding (for batched generation) and a pad token."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(name_or_path, padding_side="left")
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    return tok


def load_processor(name_or_path: str):
    """AutoProcessor for a VLM, with its tokenizer set to left padding and a pad token."""
    from transformers import AutoProcessor

    proc = AutoProcessor.from_pretrained(name_or_path)
    proc.tokenizer.padding_side = "left"
    if proc.tokenizer.pad_token is None:
        proc.tokenizer.pad_token = proc.tokenizer.eos_token
    return proc


# End-of-turn tokens of the common chat templates: ChatML <|im_end|> (Qwen, our toys), Llama-3
# <|eot_id|>, Gemma <end_of_turn>, Phi-3 <|end|>.
END_OF_TURN_TOKENS = ("<|im_end|>", "<|eot_id|>", "<end_of_turn>", "<|end|>")


def end_of_turn(tokenizer) -> str:
    """The token that closes an assistant turn: appended to SFT targets so the model learns to stop.

    The first of END_OF_TURN_TOKENS in the vocabulary, else eos (a base model without a chat
    template ends its answer with eos)."""
    tokenizer = getattr(tokenizer, "tokenizer", tokenizer)  # a VLM processor carries its tokenizer
    vocab = tokenizer.get_vocab()
    return next((t for t in END_OF_TURN_TOKENS if t in vocab), tokenizer.eos_token)


def stop_token_ids(tokenizer) -> list[int]:
    """Token ids that end a completion: eos plus every end-of-turn token in the vocabulary (both
    samplers stop at these)."""
    tokenizer = getattr(tokenizer, "tokenizer", tokenizer)
    vocab = tokenizer.get_vocab()
    ids = {tokenizer.eos_token_id, *(vocab[t] for t in END_OF_TURN_TOKENS if t in vocab)}
    return sorted(i for i in ids if i is not None)


# --------------------------------------------------------------------------------------------------
# tiny offline models


def tokenizer_corpus() -> list[str]:
    """Text the tiny tokenizer's merges are learnt from: English, arithmetic, LaTeX, code, JSON."""
    words = (
        "the a an of to and in is it that for on with as was be by this are or from at which you "
        "one "
        "all we can has have not but what there their more if will up out so about into than then "
        "question answer let us think step by step final number numbers sum total each first "
        "second "
        "left right above below on under front behind red green blue yellow circle square triangle "
        "shape shapes image how many what color where is there yes no true false click type scroll "
        "back home open app button text settings notes mail shop search send save delete task done "
        "solve equation using create equals result check verify wait so therefore because def "
        "return "
        "print import for while range len list dict input output main solution generator problem "
        "please reason put your within boxed assistant user system helpful language sentence word"
    ).split()
    lines = [" ".join(words[i : i + 12]) for i in range(0, len(words), 12)]
    lines += [
        f"{a} + {b} = {a + b}. {a} * {b} = {a * b}. ({a} - {b}) / 2"
        for a in range(30)
        for b in range(0, 30, 7)
    ]
    lines += ["\\boxed{\\frac{1}{2}} \\sqrt{3} \\pi x^2 <answer> </answer> <think> </think>"] * 20
    lines += [
        'def main_solution(x):\n    return {"output": x}\n',
        '{"input": {"n": 3}, "output": [1, 2]}',
    ] * 20
    lines += ["Question:\nAnswer:\nLet's think step by step.\n", "The answer is 42."] * 20
    return lines


def make_tokenizer(vocab_size: int = TOKENIZER_VOCAB, texts: list[str] | None = None):
    """Train a byte-level BPE tokenizer in code and wrap it as a HF fast tokenizer with ChatML.
    `texts`: the training corpus (default: the shared toy corpus)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    # Digits one per token (as Qwen2 does), then GPT-2 style byte-level so every string is
    # encodable.
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Digits(individual_digits=True),
            pre_tokenizers.ByteLevel(add_prefix_space=False),
        ]
    )
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    corpus = tokenizer_corpus() if texts is None else texts
    tok.train_from_iterator(corpus, trainer=trainer)
    hf_tok = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        eos_token="<|endoftext|>",
        pad_token="<|endoftext|>",
        additional_special_tokens=["<|im_start|>", "<|im_end|>", "<image>"],
        padding_side="left",
    )
    hf_tok.chat_template = CHATML_TEMPLATE
    return hf_tok


# Toy bases are trained while they are built. The intra-op thread count changes the order of float
# reductions, so a base built on 1 thread is a different model from one built on 2 (mstar's: max
# weight difference 0.4 after 350 steps), and the toy's trajectory changes with it. Builds run on
# this fixed count, so `python <script>.py`, the test suite (whatever test builds a base first) and
# every machine start from the same model.
BUILD_THREADS = 2


def _cached_build(kind: str, spec: dict, path: str | None, build) -> str:
    """Build into a temp folder (on BUILD_THREADS threads) and rename it into place; reuse it if it
    is there."""
    digest = hashlib.sha1(
        json.dumps({**spec, "build_threads": BUILD_THREADS}, sort_keys=True).encode()
    ).hexdigest()[:10]
    target = Path(path) if path else cache_dir() / f"{kind}-{digest}"
    if (target / "config.json").exists():
        return str(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=target.parent))
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(BUILD_THREADS)
        build(tmp)
        try:
            os.rename(tmp, target)
        except OSError:  # another process won the race (target exists and is not empty)
            if not (target / "config.json").exists():
                raise
    finally:
        torch.set_num_threads(threads)
        shutil.rmtree(tmp, ignore_errors=True)
    return str(target)


def _digest(texts: list[str]) -> str:
    return hashlib.sha1("\n".join(texts).encode()).hexdigest()[:12]


def make_tiny_lm(
    path: str | None = None, seed: int = 0, texts: list[str] | None = None, **overrides
) -> str:
    """Build (once) a tiny Qwen2 causal LM + trained tokenizer; return the folder to load it
    from. `texts`: the tokenizer's corpus (default: the shared toy corpus)."""
    from transformers import Qwen2Config, Qwen2ForCausalLM

    spec = {**TINY_LM_DEFAULTS, **overrides, "vocab": TOKENIZER_VOCAB, "seed": seed, "v": 1}
    spec |= {"texts": _digest(texts)} if texts is not None else {}

    def build(folder: Path):
        tok = make_tokenizer(texts=texts)
        cfg = Qwen2Config(
            vocab_size=len(tok),
            bos_token_id=None,
            eos_token_id=tok.eos_token_id,
            pad_token_id=tok.pad_token_id,
            **{**TINY_LM_DEFAULTS, **overrides},
        )
        torch.manual_seed(seed)
        Qwen2ForCausalLM(cfg).save_pretrained(folder)
        tok.save_pretrained(folder)

    return _cached_build("tiny-lm", spec, path, build)


def tiny_llava_processor(tokenizer, side: int, patch: int):
    """The LlavaProcessor of the tiny VLMs: `side` x `side` images normalised to [-1, 1] (PIL
    backend, no torchvision), one `<image>` placeholder expanded to (side / patch)^2 tokens,
    the ChatML template."""
    from transformers import CLIPImageProcessorPil, LlavaProcessor

    image_processor = CLIPImageProcessorPil(
        size={"height": side, "width": side},
        do_center_crop=False,
        image_mean=[0.5, 0.5, 0.5],
        image_std=[0.5, 0.5, 0.5],
    )
    return LlavaProcessor(
        image_processor=image_processor,
        tokenizer=tokenizer,
        patch_size=patch,
        vision_feature_select_strategy="default",
        num_additional_image_tokens=1,
        chat_template=CHATML_TEMPLATE,
        image_token="<image>",
    )


def make_tiny_vlm(
    path: str | None = None, seed: int = 0, texts: list[str] | None = None, **text_overrides
) -> str:
    """Build (once) a tiny LLaVA (CLIP vision tower + projector + Qwen2) with its processor.
    `texts`: the tokenizer's corpus (default: the shared toy corpus)."""
    from transformers import (
        CLIPVisionConfig,
        LlavaConfig,
        LlavaForConditionalGeneration,
        Qwen2Config,
    )

    spec = {**TINY_LM_DEFAULTS, **TINY_VISION_DEFAULTS, **text_overrides, "seed": seed, "v": 1}
    spec |= {"texts": _digest(texts)} if texts is not None else {}
    side, patch = TINY_VISION_DEFAULTS["image_size"], TINY_VISION_DEFAULTS["patch_size"]
    num_image_tokens = (side // patch) ** 2  # the CLS token is dropped ("default" feature strategy)

    def build(folder: Path):
        tok = make_tokenizer(texts=texts)
        text_cfg = Qwen2Config(
            vocab_size=len(tok),
            bos_token_id=None,
            eos_token_id=tok.eos_token_id,
            pad_token_id=tok.pad_token_id,
            **{**TINY_LM_DEFAULTS, **text_overrides},
        )
        cfg = LlavaConfig(
            vision_config=CLIPVisionConfig(**TINY_VISION_DEFAULTS),
            text_config=text_cfg,
            image_token_index=tok.convert_tokens_to_ids("<image>"),
            image_seq_length=num_image_tokens,
            vision_feature_select_strategy="default",
            vision_feature_layer=-1,
            tie_word_embeddings=True,
        )
        torch.manual_seed(seed)
        LlavaForConditionalGeneration(cfg).save_pretrained(folder)
        processor = tiny_llava_processor(tok, side, patch)
        processor.save_pretrained(folder)
        tok.save_pretrained(folder)

    return _cached_build("tiny-vlm", spec, path, build)
