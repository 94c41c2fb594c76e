"""ILO: Interlingual Local Overlap; one-language fine-tuning with frozen layers (docs/ilo.md).

Paper: "High-Dimensional Interlingual Representations of Large Language Models" (Wilie,
Cahyawijaya, He, Fung; SIGTYP@ACL 2025; arXiv 2503.11280). Released code: HLTCHKUST/interlingua.

Idea: pool every sentence's mean hidden state (per layer) from many languages, look at each
point's k nearest neighbours (cosine distance), and ask, per language, how often its points sit
among other languages (Bridge) and how many other languages they reach at all (Reach); ILO is
their harmonic mean, defined over pooled neighbourhoods and language labels only. The paper finds
that fine-tuning on one language lowers ILO in the early layers, and that freezing those layers
keeps it and helps cross-lingual generalisation. This script measures ILO at every layer (0 =
embeddings) of a base model, fine-tunes it on one language without and with `--freeze_first N`,
and measures ILO and the other languages' held-out perplexity after each.

Departures:
- `--freeze_first N` (default `--freeze_style paper`) freezes the embeddings and blocks 0..N-1:
  the paper's "freezing the early layers". The released `selective_grad_freeze(model,
  n_first=8)` (src/param_freeze.py) differs twice: its docstring says "the first 8 layers, the
  token embedding, final layer normalization, and the language modeling head", and its code
  freezes blocks 0..8 (N+1 blocks) plus those three; `--freeze_style code` does what the code does.
- `--max_length` (256 tokens) cuts longer sentences for the ILO vectors and the fine-tuning, and
  the run prints how many it cut; the released get_ilo.py never cuts.
- ILO and perplexity are measured on sentences never fine-tuned on: each language's first
  `--eval_sentences` (default half; so 498 of the 997 FLORES dev sentences, the paper uses all)
  are measured, the rest fine-tune. The paper states no fine-tuning data or hyperparameters:
  steps, lr and batch are ours.
- Any number of sentences per language works (the released code assumes 997, in order); curves
  average ILO over languages (the released code writes per-language tables only).
- The offline default (common/toy_languages.py): one grammar in six made-up languages and a tiny
  8-layer LM trained on monolingual, translated and code-switched sentences, so that there is
  interlingual structure to measure; its ILO drop shows above the frozen layers (docs/ilo.md).

Commands (naming --model selects the paper preset, PAPER below; flags you pass win;
--print_config shows the effective configuration without loading anything):
    python ilo.py                                                 # CPU toy
    python ilo.py --model meta-llama/Meta-Llama-3.1-8B --data flores200_dev/ \
        --languages eng_Latn,fra_Latn,... --finetune_language ind_Latn --dtype bfloat16  # 1 GPU
    python ilo.py --model meta-llama/Meta-Llama-3.1-8B --data openlanguagedata/flores_plus \
        --languages eng_Latn,fra_Latn,ind_Latn                    # FLORES+ from the hub
    torchrun --nproc_per_node=8 ilo.py --model meta-llama/Meta-Llama-3.1-8B \
        --data flores200_dev/ --finetune_language ind_Latn        # fine-tuning with FSDP2
"""

from __future__ import annotations

import copy
import csv
import json
import math
import random
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Literal

import torch
from tqdm import tqdm

from common.claims import claim, format_claims, write_summary
from common.config import arg, parse_config, per_rank
from common.data import DataError, load_located_rows, load_rows
from common.models import load_model, load_tokenizer
from common.toy_languages import toy_base_model, toy_corpus
from common.train import (
    MetricsLogger,
    barrier,
    cleanup_distributed,
    format_table,
    full_state_dict,
    init_distributed,
    load_checkpoint,
    make_optimizer,
    make_scheduler,
    micro_batches,
    print0,
    save_checkpoint,
    seed_everything,
    sft_loss,
    shard_model,
)


@dataclass
class Args:
    # generic
    seed: int = arg(0, "random seed")
    output_dir: str = arg("runs/ilo", "metrics, ILO tables, checkpoints, PNG")
    model: str = arg("", "hub id or folder (the paper's: Llama-3.1-8B); '' = the toy's 8-layer LM")
    dtype: Literal["auto", "float32", "bfloat16"] = arg("auto", "dtype of the measured base model")
    data: str = arg("", "FLORES-200 / FLORES+ folder or hub id, or a rows file; '' = the toy")
    data_split: Literal["dev", "devtest"] = arg("dev", "FLORES split (997 / 1012 per language)")
    text_field: str = arg("text", "field of a rows file holding the sentence")
    lang_field: str = arg("lang", "field of a rows file holding the language")
    languages: str = arg("", "comma-separated subset; '' = all found")
    max_sentences: int = arg(0, "sentences per language for ILO; 0 = all of the evaluation set")
    eval_sentences: int = arg(
        0, "real data: first N per language measured, rest fine-tune; 0 = half"
    )
    batch_size: int = arg(32, "sentences per forward pass")
    max_length: int = arg(256, "longest sentence in tokens; longer ones are cut (and counted)")
    # ILO (released src/ilo.py)
    k: int = arg(5, "nearest neighbours per point; paper: 5 (released src/ilo.py)")
    t: int = arg(3, "other languages a point must reach to count for Bridge; paper: 3")
    # single-language fine-tuning
    finetune_language: str = arg("", "language to fine-tune on; '' = the first language")
    freeze_first: int = arg(
        2, "blocks frozen with the embeddings; toy 2; paper: 8 (released selective_grad_freeze)"
    )
    freeze_style: Literal["paper", "code"] = arg(
        "paper", "'paper' = embeddings + blocks 0..N-1 | 'code' = + block N, final norm, lm_head"
    )
    finetune_steps: int = arg(60, "fine-tuning optimizer steps per condition")
    finetune_lr: float = arg(3e-3, "constant fine-tuning LR; toy 3e-3; paper preset: 1e-5")
    finetune_batch: int = arg(16, "sentences per fine-tuning step, all ranks")
    micro_batch_size: int = arg(0, "sentences per forward per rank; 0 = all; paper preset: 1")
    gradient_checkpointing: bool = arg(False, "recompute layers in backward; paper preset: True")
    ckpt_every: int = arg(50, "checkpoint every N fine-tuning steps")
    resume: bool = arg(False, "continue the fine-tuning runs from their checkpoints")
    track: bool = arg(False, "log to Weights & Biases")


# Used with --preset paper (the default once --model is named); the defaults above are the CPU
# toy's. The paper gives no fine-tuning hyperparameters: these are ours for an 8B model.
PAPER = dict(
    freeze_first=8,  # released selective_grad_freeze(n_first=8), the README's best setting
    finetune_lr=1e-5,  # not stated in the paper: full fine-tuning of an 8B model
    gradient_checkpointing=True,  # not stated: bounds activation memory at long sequences
    micro_batch_size=1,  # not stated: bounds activation memory at long sequences
)


def derived(args, world_size: int) -> dict:
    """Per-rank sentences of a fine-tuning step; raises naming the flag."""
    n = per_rank(args.finetune_batch, world_size, "--finetune_batch")
    return dict(finetune_sentences_per_rank=n)


# ------------------------------------------------------------------------------------------------
# ILO (released src/ilo.py: compute_bridge_reach, derive_metrics)


def knn_indices(x: torch.Tensor, k: int, chunk: int = 2048) -> torch.Tensor:
    """k nearest neighbours of every row by cosine distance, self excluded: (N, k).

    Ties are broken by the lower index, so the result is deterministic. Runs on x's device (a GPU
    makes the 31 x 997-point FLORES case a matter of seconds); the indices come back on the CPU.
    """
    x = torch.nn.functional.normalize(x.float(), dim=-1)  # (N, D) cosine = dot product
    n = x.shape[0]
    out = torch.empty(n, k, dtype=torch.long)
    for start in range(0, n, chunk):
        sim = x[start : start + chunk] @ x.T  # (C, N)
        rows = torch.arange(sim.shape[0], device=sim.device)
        sim[rows, rows + start] = -math.inf  # exclude the point itself
        vals, idx = sim.topk(k, dim=-1)  # (C, k), largest cosine = smallest distance
        # a row whose k-th value is tied with a value outside the top k: redo it with a stable sort
        tied = (sim >= vals[:, -1:]).sum(-1) > k
        for r in tied.nonzero().flatten().tolist():
            idx[r] = torch.sort(-sim[r], stable=True).indices[:k]
        out[start : start + chunk] = idx.cpu()
    return out


def ilo_scores(embeddings: torch.Tensor, langs: list[str], k: int = 5, t: int = 3) -> dict:
    """Per-language Bridge, Reach and ILO of one layer's pooled sentence vectors (N, D).

    O(i) = languages of i's k nearest neighbours, minus lang(i).
    Bridge(a) = share of a's points with |O(i)| >= t;  Reach(a) = |U_{i in a} O(i)| / (|L| - 1);
    ILO(a) = 2 B R / (B + R), and 0 when either is 0.
    """
    names = sorted(set(langs))
    lang_id = torch.tensor([names.index(lang) for lang in langs])  # (N,)
    neighbours = knn_indices(embeddings, k)  # (N, k)
    others = torch.zeros(len(langs), len(names), dtype=torch.bool)  # (N, |L|) O(i) as a mask
    others.scatter_(1, lang_id[neighbours], True)
    others[torch.arange(len(langs)), lang_id] = False
    out = {}
    for a, name in enumerate(names):
        mine = others[lang_id == a]  # (N_a, |L|)
        bridge = (mine.sum(-1) >= t).float().mean().item()
        reach = mine.any(0).sum().item() / max(1, len(names) - 1)
        ilo = 0.0 if bridge == 0 or reach == 0 else 2 * bridge * reach / (bridge + reach)
        out[name] = {"bridge": bridge, "reach": reach, "ilo": ilo}
    return out


# ------------------------------------------------------------------------------------------------
# representations (released get_ilo.py extract_embeddings): mean of hidden_states[l] over the
# sentence's tokens, l = 0 (embeddings) .. L


def right_padded(tokenizer, texts: list[str], device, max_length: int | None = None):
    """A right-padded batch (input_ids, attention_mask: (B, T)), cut at max_length if given.
    Right padding keeps every real token's position and causal attention as in an unpadded run."""
    cut = dict(truncation=True, max_length=max_length) if max_length else {}
    enc = tokenizer(texts, return_tensors="pt", padding=True, padding_side="right", **cut)
    return enc.to(device)


@torch.no_grad()
def mean_pooled_states(model, tokenizer, sentences: list[str], batch_size=32, max_length=256):
    """(L+1, N, D) mean hidden state per layer and sentence; padding masked out. BOS is included
    when the tokenizer adds one (Llama), as in the released code."""
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    chunks = []
    for start in range(0, len(sentences), batch_size):
        enc = right_padded(tokenizer, sentences[start : start + batch_size], device, max_length)
        hidden = model(**enc, output_hidden_states=True).hidden_states  # L+1 tensors of (B, T, D)
        mask = enc["attention_mask"].unsqueeze(-1).float()  # (B, T, 1)
        pooled = [(h.float() * mask).sum(1) / mask.sum(1) for h in hidden]  # L+1 x (B, D)
        chunks.append(torch.stack(pooled).cpu())  # (L+1, B, D)
    model.train(was_training)
    return torch.cat(chunks, dim=1)


def freeze_first_layers(model, n: int, style: str = "paper") -> list[str]:
    """Freeze the embeddings and the first n decoder blocks ("paper"), or the embeddings,
    blocks 0..n, the final norm and lm_head as the released src/param_freeze.py
    `selective_grad_freeze` does ("code"; its docstring says first n blocks, its range(n_first + 1)
    freezes n + 1). Returns the frozen parameter names."""
    base = model.get_decoder() if hasattr(model, "get_decoder") else model.model
    frozen_blocks = range(n + 1 if style == "code" else n)
    modules = [base.embed_tokens, *(base.layers[i] for i in frozen_blocks if i < len(base.layers))]
    if style == "code":
        modules += [base.norm, model.get_output_embeddings()]
    for m in modules:
        for p in m.parameters():
            p.requires_grad_(False)
    return [name for name, p in model.named_parameters() if not p.requires_grad]


def count_cut(tokenizer, sentences: list[str], max_length: int) -> int:
    """How many sentences `--max_length` cuts (the released get_ilo.py never cuts, so say so)."""
    return sum(len(ids) > max_length for ids in tokenizer(sentences)["input_ids"])


@torch.no_grad()
def perplexity(model, tokenizer, sentences: list[str], batch_size: int = 32) -> float:
    """Token-level perplexity of plain sentences (the cross-lingual check)."""
    device = next(model.parameters()).device
    total_nll, total_tokens = 0.0, 0
    for start in range(0, len(sentences), batch_size):
        texts = [s + tokenizer.eos_token for s in sentences[start : start + batch_size]]
        enc = right_padded(tokenizer, texts, device)
        mask = enc["attention_mask"]
        n = mask[:, 1:].sum().item()
        total_nll += sft_loss(model, enc["input_ids"], mask, mask).item() * n
        total_tokens += n
    return math.exp(total_nll / max(1, total_tokens))


# ------------------------------------------------------------------------------------------------
# data: FLORES-200 / FLORES+ as released, a rows file, or the toy corpus


FLORES_TEXT_SUFFIXES = (".txt", ".dev", ".devtest")  # FLORES-200: <split>/<lang>.<split>
FLORES_ROW_SUFFIXES = (".parquet", ".jsonl", ".json", ".csv")  # FLORES+: <split>/<lang>.parquet


def _flores_text(where: str, row: dict, text_field: str) -> str:
    """The sentence of a row: FLORES+ calls it `text`, facebook/flores `sentence`."""
    text = row.get(text_field, row.get("sentence"))
    if not isinstance(text, str) or not text.strip():
        raise DataError(
            f"{where}: field {text_field!r} (or 'sentence') is missing or empty (see --text_field)"
        )
    return text.strip()


def load_flores_hub(source: str, split: str, languages: list[str], text_field: str) -> list[dict]:
    """{lang, text} rows of a hub data set with one config per language, ordered by `id`."""
    if not languages:
        raise ValueError(f"--data {source}: a hub data set needs --languages (one config each)")
    import datasets

    rows = []
    for lang in languages:
        try:
            ds = datasets.load_dataset(source, lang, split=split)
        except Exception as e:  # offline, gated, unknown language or split: say which
            raise DataError(
                f"could not load {source!r} language {lang!r} split {split!r}: {e}"
            ) from e
        for i, r in enumerate(sorted(ds, key=lambda r: r.get("id", 0))):
            where = f"{source}[{lang}/{split}] row {i}"
            rows.append({"lang": lang, "text": _flores_text(where, dict(r), text_field)})
    return rows


def load_flores(source: str, split: str, languages: list[str], text_field="text") -> list[dict]:
    """{lang, text} rows of FLORES-200 / FLORES+ in their release layouts, `split` = dev or devtest:
    - a folder with one file per language, `<lang>.dev|.devtest|.txt` (FLORES-200 tarball) or
      `<lang>.parquet|.jsonl` rows with `text` (FLORES+), directly or under `<split>/`;
    - a folder with one sub-folder per language holding `<split>*.parquet` (a hub snapshot);
    - a hub id with one config per language (openlanguagedata/flores_plus: `text`; facebook/flores:
      `sentence`): `--languages` names the configs to load."""
    path = Path(source)
    if not path.is_dir():
        return load_flores_hub(source, split, languages, text_field)
    folder = path / split if (path / split).is_dir() else path
    rows = []
    for p in sorted(folder.iterdir()):
        if p.is_file() and p.suffix in FLORES_TEXT_SUFFIXES:
            lines = p.read_text(encoding="utf-8").splitlines()
            rows += [{"lang": p.stem, "text": line.strip()} for line in lines if line.strip()]
            continue
        if p.is_file() and p.suffix in FLORES_ROW_SUFFIXES:
            files, lang = [p], p.stem
        elif p.is_dir():  # a hub snapshot: <lang>/<split>*.parquet
            files, lang = sorted(f for f in p.iterdir() if is_split_file(f, split)), p.name
        else:
            continue
        for f in files:
            rows += [
                {"lang": lang, "text": _flores_text(where, r, text_field)}
                for where, r in load_located_rows(str(f))
            ]
    if not rows:
        raise DataError(
            f"--data {source}: no FLORES files (<lang>.dev/.devtest/.txt or <lang>.parquet/.jsonl, "
            f"directly or under {split}/)"
        )
    return rows


def is_split_file(f: Path, split: str) -> bool:
    return f.suffix in FLORES_ROW_SUFFIXES and (f.stem == split or f.stem.startswith(split + "-"))


def load_parallel(args: Args) -> tuple[list[dict], list[dict]]:
    """(ILO rows, fine-tune rows) as {lang, text}. Real data: FLORES-200 / FLORES+ as released,
    from a folder or the hub (`load_flores`, --data_split), or a rows file (--lang_field,
    --text_field); both sets are all rows then (prepare_data holds the evaluation rows out)."""
    if not args.data:
        return toy_corpus(120, seed=1), toy_corpus(400, seed=2)
    wanted = args.languages.split(",") if args.languages else []
    if Path(args.data).is_file():
        rows = [
            {"lang": r[args.lang_field], "text": r[args.text_field]}
            for r in load_rows(args.data, required=(args.lang_field, args.text_field))
        ]
    else:
        rows = load_flores(args.data, args.data_split, wanted, args.text_field)
    if wanted:
        missing = sorted(set(wanted) - {r["lang"] for r in rows})
        if missing:
            raise ValueError(f"--languages: {missing} not found in {args.data}")
        rows = [r for r in rows if r["lang"] in wanted]
    return rows, rows  # main() holds out the evaluation sentences (split_held_out)


def split_held_out(rows: list[dict], n_eval: int) -> tuple[list[dict], list[dict]]:
    """(eval rows, fine-tune rows): each language's first n_eval sentences (0 = half) measure ILO
    and perplexity; the rest are for fine-tuning, so the evaluation never sees the fine-tuning text.
    Parallel files list translations at the same position, so the eval rows stay parallel."""
    by_lang: dict[str, list[dict]] = {}
    for r in rows:
        by_lang.setdefault(r["lang"], []).append(r)
    eval_rows, ft_rows = [], []
    for lang, mine in by_lang.items():
        n = n_eval or len(mine) // 2
        if n >= len(mine):
            left = f"language {lang!r} has only {len(mine)} sentences, none left to fine-tune on"
            raise ValueError(f"--eval_sentences {n}: {left}")
        eval_rows += mine[:n]
        ft_rows += mine[n:]
    return eval_rows, ft_rows


def cap_per_language(rows: list[dict], n: int) -> list[dict]:
    """Each language's first n rows (--max_sentences; 0 = all)."""
    if not n:
        return rows
    position: dict[str, int] = {}
    kept = []
    for r in rows:
        position[r["lang"]] = position.get(r["lang"], 0) + 1
        if position[r["lang"]] <= n:
            kept.append(r)
    return kept


# ------------------------------------------------------------------------------------------------
# measuring a model, fine-tuning it, the claims


def measure(model, tok, rows, args) -> list[dict]:
    """ILO per layer and language: rows {layer, lang, bridge, reach, ilo}."""
    texts = [r["text"] for r in rows]
    states = mean_pooled_states(model, tok, texts, args.batch_size, args.max_length)  # (L+1, N, D)
    langs = [r["lang"] for r in rows]
    return [
        {"layer": layer, "lang": lang, **s}
        for layer in range(states.shape[0])
        for lang, s in ilo_scores(states[layer], langs, args.k, args.t).items()
    ]


def mean_ilo_by_layer(records: list[dict]) -> dict[int, float]:
    """The model-level curve: ILO averaged over languages, per layer."""
    by_layer: dict[int, list[float]] = {}
    for r in records:
        by_layer.setdefault(r["layer"], []).append(r["ilo"])
    return {layer: sum(v) / len(v) for layer, v in sorted(by_layer.items())}


def finetune_backward(model, input_ids, attention_mask, micro_batch_size: int) -> float:
    """Causal-LM loss of one rank's batch (B, T), backpropagated in micro-batches of rows; each
    micro-batch divides by the whole batch's token count, so the gradient is the unsplit batch's
    token mean."""
    num_tokens = float(attention_mask[:, 1:].sum())
    total = 0.0
    for sl in micro_batches(input_ids.shape[0], micro_batch_size):
        mask = attention_mask[sl]
        loss = sft_loss(model, input_ids[sl], mask, mask, normalizer=num_tokens)
        loss.backward()
        total += loss.item()
    return total


def finetune(model, tok, texts: list[str], args: Args, dist_info, logger, tag: str):
    """Causal-LM fine-tuning on one language's text (plain sentences ending with eos); only
    parameters with requires_grad train. Sharded with FSDP2 (fp32 masters); resumable."""
    model = shard_model(model, dist_info, gradient_checkpointing=args.gradient_checkpointing)
    opt = make_optimizer(model, lr=args.finetune_lr)
    sched = make_scheduler(opt, "constant", total_steps=args.finetune_steps)
    ckpt_dir = Path(args.output_dir) / f"ckpt_{tag}"
    start = 0
    if args.resume and (state := load_checkpoint(ckpt_dir, model, opt, sched)):
        start = state[0]
        print0(f"[{tag}] resumed at step {start}")
    rng = random.Random(args.seed)
    n = min(args.finetune_batch, len(texts))
    for _ in range(start):  # replay the data stream to the checkpoint's position
        rng.sample(texts, n)
    steps = range(start, args.finetune_steps)
    for step in tqdm(steps, desc=f"fine-tune {tag}", disable=not dist_info.is_main):
        batch = rng.sample(texts, n)
        batch = batch[dist_info.rank :: dist_info.world_size] or batch[:1]  # this rank's share
        lines = [b + tok.eos_token for b in batch]
        enc = right_padded(tok, lines, dist_info.device, args.max_length)
        ids, mask = enc["input_ids"], enc["attention_mask"]  # (B, T) each
        loss = finetune_backward(model, ids, mask, args.micro_batch_size)
        opt.step()
        sched.step()
        opt.zero_grad()
        logger.log({f"{tag}/loss": loss}, step=step + 1)
        if (step + 1) % args.ckpt_every == 0 or step + 1 == args.finetune_steps:
            save_checkpoint(ckpt_dir, model, opt, sched, step=step + 1)
    return model


def prepare_data(args: Args, tok) -> tuple[list[dict], list[str], str]:
    """(ILO rows, fine-tuning sentences, fine-tuning language). The evaluation rows are never
    fine-tuned on: real data is split per language, the toy draws its two sets from other seeds."""
    ilo_rows, ft_rows = load_parallel(args)
    if args.data:
        ilo_rows, ft_rows = split_held_out(ilo_rows, args.eval_sentences)
    ilo_rows = cap_per_language(ilo_rows, args.max_sentences)
    languages = sorted({r["lang"] for r in ilo_rows})
    ft_lang = args.finetune_language or languages[0]
    evaluated = {r["text"] for r in ilo_rows}
    ft_texts = [r["text"] for r in ft_rows if r["lang"] == ft_lang and r["text"] not in evaluated]
    if not ft_texts:
        raise ValueError(f"--finetune_language {ft_lang!r}: no sentences (languages: {languages})")
    cut = count_cut(tok, [r["text"] for r in ilo_rows] + ft_texts, args.max_length)
    if cut:
        print0(f"--max_length {args.max_length}: {cut} sentences are cut (ILO and fine-tuning)")
    print0(
        f"{len(languages)} languages x ~{len(ilo_rows) // len(languages)} sentences; fine-tune "
        f"language {ft_lang!r} ({len(ft_texts)} sentences)"
    )
    return ilo_rows, ft_texts, ft_lang


def gathered_copy(model, like):
    """A plain (unsharded) copy of an FSDP2 model for rank-0 measurement; a collective."""
    state = full_state_dict(model)
    if not state:
        return None
    plain = copy.deepcopy(like)
    plain.load_state_dict(state)
    return plain


def ilo_claims(results: dict, ppl: dict, ft_lang: str, n_frozen: int, margin=0.01) -> list:
    """The paper's findings as claims on this run: single-language fine-tuning lowers ILO, freezing
    the first n_frozen blocks keeps it, and freezing helps the other languages (held-out
    perplexity). ILO is averaged over the layers above the frozen ones (hidden states
    n_frozen+1..L): below them freezing keeps every vector identical, so only these layers can
    test it. A claim on ILO needs a difference above `margin` (one point of 120 moves a
    language's Bridge by 0.008)."""
    frozen = f"finetune_freeze{n_frozen}"
    curves = {c: mean_ilo_by_layer(recs) for c, recs in results.items()}
    upper = [layer for layer in curves["base"] if layer > n_frozen]
    ilo = {c: sum(curve[layer] for layer in upper) / len(upper) for c, curve in curves.items()}
    others = [lang for lang in ppl["base"] if lang != ft_lang]
    log_ppl = {c: sum(math.log(p[lang]) for lang in others) / len(others) for c, p in ppl.items()}
    metric = f"mean ILO, layers {upper[0]}-{upper[-1]}"
    keeps = f"freezing {n_frozen} blocks keeps ILO higher"
    helps, others_metric = "freezing helps the other languages", "log ppl, other languages"
    own_base, own_frozen = math.log(ppl["base"][ft_lang]), math.log(ppl[frozen][ft_lang])
    still = "fine-tuned language still improves (frozen)"
    return [
        claim("fine-tuning lowers ILO", metric, ilo["base"], ilo["finetune"], False, margin),
        claim(keeps, metric, ilo["finetune"], ilo[frozen], True, margin),
        claim(helps, others_metric, log_ppl["finetune"], log_ppl[frozen], False),
        claim(still, f"log ppl, {ft_lang}", own_base, own_frozen, False),
    ]


def plot_ilo(curves: dict, path: Path):
    """Mean ILO against layer, one line per condition."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 3.5))
    for cond, curve in curves.items():
        ax.plot(list(curve), list(curve.values()), marker="o", label=cond)
    ax.set(xlabel="layer (0 = embeddings)", ylabel="mean ILO", title="ILO vs layer")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def report(results: dict, ppl: dict, ft_lang: str, out: Path, seconds: float, n_frozen: int):
    """Per-layer tables (CSV, JSONL), the printed curves and perplexities, the PNG, the claims."""
    rows = [{"condition": cond, **r} for cond, recs in results.items() for r in recs]
    with open(out / "ilo_per_layer.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))  # condition, layer, lang, B, R, ILO
        writer.writeheader()
        writer.writerows(rows)
    (out / "ilo_per_layer.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    curves = {cond: mean_ilo_by_layer(recs) for cond, recs in results.items()}
    layers = list(next(iter(curves.values())))
    print0("\nMean ILO over languages, per layer (0 = embeddings):")
    print0(format_table([{"layer": i, **{c: curves[c][i] for c in curves}} for i in layers]))
    print0(f"\nPerplexity per language (fine-tuned on {ft_lang!r}; others: cross-lingual check):")
    table = [{"condition": c, **{k: round(v, 2) for k, v in p.items()}} for c, p in ppl.items()]
    print0(format_table(table))
    plot_ilo(curves, out / "ilo_vs_layer.png")
    claims = ilo_claims(results, ppl, ft_lang, n_frozen)
    write_summary(out, claims, ilo_by_layer=curves, perplexity=ppl, seconds=round(seconds))
    print0("\n" + format_claims(claims))
    print0(
        f"\nwrote {out}/ilo_per_layer.csv, ilo_per_layer.jsonl, ilo_vs_layer.png, summary.json, "
        f"metrics.jsonl ({seconds:.0f}s)"
    )


def main(args: Args):
    dist_info = init_distributed()
    seed_everything(args.seed)
    out = Path(args.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    model_path = args.model or toy_base_model(args.seed)
    tok = load_tokenizer(model_path)
    base = load_model(model_path, dtype=args.dtype, device=dist_info.device)
    ilo_rows, ft_texts, ft_lang = prepare_data(args, tok)
    languages = sorted({r["lang"] for r in ilo_rows})
    held_out = {lang: [r["text"] for r in ilo_rows if r["lang"] == lang] for lang in languages}
    logger = MetricsLogger(out, args.track, "ilo", asdict(args), 0 if args.resume else None)
    # the base model, then single-language fine-tuning without and with the first blocks frozen
    frozen_name = f"finetune_freeze{args.freeze_first}"
    conditions = {"base": None, "finetune": 0, frozen_name: args.freeze_first}
    results, ppl = {}, {}
    for name, freeze in conditions.items():
        model = base if freeze is None else copy.deepcopy(base)
        if freeze:
            frozen = freeze_first_layers(model, freeze, args.freeze_style)
            print0(f"[{name}] frozen: {len(frozen)} tensors ({args.freeze_style} style)")
        if freeze is not None:
            model = finetune(model, tok, ft_texts, args, dist_info, logger, name)
        # measuring is cheap and needs no sharding: rank 0 on the full model
        sharded = dist_info.world_size > 1 and freeze is not None
        plain = gathered_copy(model, base) if sharded else model  # a collective when sharded
        if dist_info.is_main:
            results[name] = measure(plain, tok, ilo_rows, args)
            ppl[name] = {
                lang: perplexity(plain, tok, texts, args.batch_size)
                for lang, texts in held_out.items()
            }
        barrier()
    if dist_info.is_main:
        report(results, ppl, ft_lang, out, time.time() - t0, args.freeze_first)
    logger.close()
    cleanup_distributed()
    return results, ppl


if __name__ == "__main__":
    main(parse_config(Args, PAPER, derived))
