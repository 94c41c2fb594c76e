"""Chat samples -> SFT tensors, for text or vision-language models (guimid.py).

A sample is {"messages": [...], "image": PIL | path | None}; `encode` puts the loss on every
assistant turn, `collate` pads a micro-batch and stacks the rows' image tensors, and `mean_nll`
scores samples by the token-mean NLL of their assistant turns.
"""

from __future__ import annotations

import torch
from PIL import Image

from common.models import end_of_turn
from common.sampling import get_tokenizer, render_prompt
from common.train import token_logprobs


def encode(processor, sample: dict, max_length: int) -> dict:
    """Token ids with the loss on every assistant turn. The first prompt segment goes through the
    processor (it expands the image placeholder, returns pixel_values etc.), the rest through the
    tokenizer; each response ends with the end-of-turn token."""
    tok = get_tokenizer(processor)
    eot = end_of_turn(tok)
    end_id = tok.convert_tokens_to_ids(eot)
    messages, image = sample["messages"], sample.get("image")
    ids, mask, extra, done = [], [], {}, ""
    for i, m in enumerate(messages):
        if m["role"] != "assistant":
            continue
        text = render_prompt(processor, messages[:i])
        if not text.startswith(done):
            raise ValueError("the chat template is not prefix-stable; cannot mask the prompts")
        if not ids and image is not None:
            img = Image.open(image).convert("RGB") if isinstance(image, str) else image
            enc = processor(text=[text], images=[img], return_tensors="pt")
            segment = enc["input_ids"][0].tolist()
            extra = {k: v for k, v in enc.items() if k not in ("input_ids", "attention_mask")}
        else:
            segment = tok(text[len(done) :], add_special_tokens=False)["input_ids"]
        response = tok(m["content"], add_special_tokens=False)["input_ids"] + [end_id]
        ids += segment + response
        mask += [0] * len(segment) + [1] * len(response)
        done = text + m["content"] + eot
    return {"ids": ids[:max_length], "mask": mask[:max_length], "extra": extra}


def collate(rows: list[dict], pad_id: int, device) -> tuple:
    """Right-padded (B, L) ids, attention and loss masks, and the rows' image tensors."""
    L = max(len(r["ids"]) for r in rows)
    input_ids = torch.full((len(rows), L), pad_id, dtype=torch.long)  # (B, L)
    attention_mask, loss_mask = torch.zeros_like(input_ids), torch.zeros_like(input_ids)  # (B, L)
    for i, r in enumerate(rows):
        input_ids[i, : len(r["ids"])] = torch.tensor(r["ids"])
        attention_mask[i, : len(r["ids"])] = 1
        loss_mask[i, : len(r["mask"])] = torch.tensor(r["mask"])
    keys = {k for r in rows for k in r["extra"]}  # image tensors of the rows that have one
    extra = {k: torch.cat([r["extra"][k] for r in rows if k in r["extra"]]) for k in keys}
    extra = {k: v.to(device) for k, v in extra.items()}
    return input_ids.to(device), attention_mask.to(device), loss_mask.to(device), extra


@torch.no_grad()
def mean_nll(model, processor, samples: list[dict], micro_batch_size: int, max_length: int, device):
    """Token-mean NLL of the samples' assistant turns (a held-out loss)."""
    pad_id, nll, tokens = get_tokenizer(processor).pad_token_id, 0.0, 0.0
    for k in range(0, len(samples), micro_batch_size):
        rows = [encode(processor, x, max_length) for x in samples[k : k + micro_batch_size]]
        input_ids, attention_mask, loss_mask, extra = collate(rows, pad_id, device)
        logps = token_logprobs(model, input_ids, attention_mask, **extra)  # (b, L-1)
        nll -= float((logps * loss_mask[:, 1:]).sum())
        tokens += float(loss_mask[:, 1:].sum())
    return nll / max(1.0, tokens)
