"""The running-sum arithmetic toy of genius_aco.py: queries, noisy CoT demonstrations, and the
cached warm-started tiny "base" model the CPU demo self-trains.

'What is 3 + 1 + 4 + 2 + 2?' is answered one partial sum per line ('3 + 1 = 4', ...,
'The answer is 12.'), the shape of Genius's one-line steps. The demonstrator sometimes guesses
(see `make_toy_rows`), so the base model has steps worth telling apart by foresight.
"""

from __future__ import annotations

import random
import zlib

import torch
from tqdm import tqdm

from common.models import load_model, load_tokenizer, make_tiny_lm
from common.toys import toy_model
from common.train import make_optimizer, make_scheduler, pad_batch, sft_loss


def make_toy_rows(
    n: int, seed: int, pool: str, num_terms: int = 5, max_term: int = 5, guess_rate: float = 0.0
) -> list[dict]:
    """'What is 3 + 1 + 4 + 2 + 2?' -> lines '3 + 1 = 4' ... 'The answer is 12.'. pool 'sft' /
    'heldout' split the query space by a hash, so held-out queries never appear in the warm-start.
    With guess_rate, the demonstrator is unsure when it adds the largest term (max_term): there it
    switches, with that probability, to guessing, 'a + b is about c' with c off by up to 2, and
    keeps guessing to the end. With guess_rate > 0.5 a base model learnt from it is more likely to
    guess than to compute at such a line (so greedy decoding mostly guesses there), after which the
    rest of its answer is unpredictable and usually wrong: the situation Genius's foresight is
    built to notice (a computed line leads to a predictable rest, a guess does not)."""
    rng, rows, seen = random.Random(seed), [], set()
    for _ in range(1000 * n):
        if len(rows) == n:
            break
        terms = [rng.randint(1, max_term) for _ in range(num_terms)]
        query = "What is " + " + ".join(map(str, terms)) + "?"
        if (zlib.crc32(query.encode()) % 5 == 0) != (pool == "heldout") or (
            pool == "heldout" and query in seen
        ):
            continue
        seen.add(query)
        lines, carried, guessing = [], terms[0], False
        for x in terms[1:]:
            guessing = guessing or (x == max_term and rng.random() < guess_rate)
            shown = carried + x + (rng.randint(-2, 2) if guessing else 0)
            lines.append(f"{carried} + {x} {'is about' if guessing else '='} {shown}")
            carried = shown
        rows.append(
            {
                "instruction": query,
                "answer": str(sum(terms)),
                "cot": "\n".join(lines) + f"\nThe answer is {carried}.",
            }
        )
    if len(rows) < n:
        raise ValueError(
            f"the toy's {pool} pool has fewer than {n} distinct queries (lower --num_queries)"
        )
    return rows


def toy_base_model(steps: int, prefill: str, encode) -> str:
    """Warm-start the tiny LM by a short SFT on toy CoT (sft pool only), cached by common.toys.
    `encode(tok, query, response, max_length) -> (prompt ids, response ids)` is the script's own
    pair encoding, so the base learns exactly the format the preference pairs use."""
    spec = dict(steps=steps, lr=5e-3, batch=32, guess_rate=0.6, prefill=prefill)

    def build(folder):
        path = make_tiny_lm()
        tok, model = load_tokenizer(path), load_model(path, dtype="float32")
        rows = make_toy_rows(4000, seed=1, pool="sft", guess_rate=spec["guess_rate"])
        opt = make_optimizer(model, spec["lr"])
        sched = make_scheduler(opt, "linear", spec["steps"] // 20, spec["steps"])
        rng = random.Random(0)
        for _ in tqdm(range(spec["steps"]), desc="toy warm-start (cached)"):
            batch = [
                encode(tok, r["instruction"], prefill + r["cot"], 512)
                for r in rng.sample(rows, spec["batch"])
            ]
            sft_loss(model, *pad_batch(*zip(*batch), tok.pad_token_id)).backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            sched.step()
            opt.zero_grad()
        model.save_pretrained(folder)
        tok.save_pretrained(folder)

    return toy_model("genius_aco-base", spec, build, code=[make_toy_rows, encode])
