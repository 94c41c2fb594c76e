"""The zero_rl toy world: questions a 2-layer model can learn to answer, and its noisy teacher.

Sorting four digits 1-9 ("Sort the digits 6 9 8 6 from smallest to largest." -> `\\boxed{6689}`)
generalises in a tiny transformer, so RL on it can sharpen what a warm-started "base" already does
(a memorised task, e.g. an addition table, does not: held-out accuracy stays flat). Small
countdowns (TinyZero) run the countdown reward path; the tiny model cannot learn them.
`train_noisy_base` gives a tiny Qwen2 its "base" competence: a short SFT on `toy_demo`'s noisy
demonstrations (warm_start_base caches it with common.toys.toy_model).
"""

import random
from functools import partial

import torch
from tqdm import tqdm

from common.data import make_countdown_rows
from common.models import end_of_turn, load_model, load_tokenizer, make_tiny_lm
from common.sampling import render_prompt
from common.toys import toy_model
from common.train import make_optimizer, pad_batch, sft_loss

TOY_HELD_OUT = 512  # questions reserved for evaluation (never in warm start or RL)


def make_toy_rows(task: str, seed: int):
    """Toy prompts: sorting four digits 1-9 (answer '1347', graded by the math grader) or small
    countdowns. Returns (train_rows, held_out_rows); no held-out question is in the train rows."""
    if task == "countdown":
        rows = list({r["question"]: r for r in make_countdown_rows(4000, seed=seed)}.values())
    else:
        tuples = [
            (a, b, c, d)
            for a in range(1, 10)
            for b in range(1, 10)
            for c in range(1, 10)
            for d in range(1, 10)
        ]
        rows = [
            {
                "question": f"Sort the digits {' '.join(map(str, t))} from smallest to largest.",
                "answer": "".join(map(str, sorted(t))),
                "digits": list(t),
            }
            for t in tuples
        ]
    random.Random(seed).shuffle(rows)
    return rows[TOY_HELD_OUT:], rows[:TOY_HELD_OUT]


def toy_demo(row: dict, task: str, rng: random.Random, noise: float) -> str:
    """The response a noisy 'base' model imitates; with probability `noise` the answer is wrong."""
    wrong = rng.random() < noise
    if task == "countdown":  # wrong: the same numbers, shuffled, joined by one random operator
        expr = (
            f" {rng.choice('+-*')} ".join(map(str, rng.sample(row["nums"], len(row["nums"]))))
            if wrong
            else row["answer"]
        )
        return f" </think>\n<answer> {expr} </answer>"  # after the prompt's "\n<think>" prefill
    answer = (
        "".join(map(str, rng.sample(row["digits"], 4))) if wrong else row["answer"]
    )  # wrong: a random order
    return f"\\boxed{{{answer}}}"


def train_noisy_base(folder, rows, task, prompt_fn, steps, noise, seed):
    """Save to `folder` the tiny Qwen2 after `steps` SFT steps (32 rows a step, lr 3e-3) on
    toy_demo's answers to `rows`, each asked through `prompt_fn(question)`."""
    tiny = make_tiny_lm()
    tok, model = load_tokenizer(tiny), load_model(tiny, dtype="float32")
    rng = random.Random(seed)
    torch.manual_seed(seed)
    opt = make_optimizer(model, lr=3e-3)
    end_id = tok.convert_tokens_to_ids(end_of_turn(tok))
    encoded = {}  # question -> prompt ids: each question is rendered and tokenised once
    for _ in tqdm(range(steps), "warm start (toy base, cached)", leave=False):
        batch = rng.sample(rows, 32)
        for r in batch:
            if r["question"] not in encoded:
                text = render_prompt(tok, prompt_fn(r["question"]))
                encoded[r["question"]] = tok(text, add_special_tokens=False).input_ids
        prompts = [encoded[r["question"]] for r in batch]
        demos = [toy_demo(r, task, rng, noise) for r in batch]
        answers = [tok(d, add_special_tokens=False).input_ids + [end_id] for d in demos]
        sft_loss(model, *pad_batch(prompts, answers, tok.pad_token_id)).backward()
        opt.step()
        opt.zero_grad()
    model.save_pretrained(folder)
    tok.save_pretrained(folder)


def warm_start_base(args, train_rows, template, make_prompt) -> str:
    """zero_rl's toy base model, built once and cached (common.toys.toy_model); `args`: zero_rl's
    Args, `make_prompt`: zero_rl's prompt templates (their source is part of the cache key)."""
    spec = {
        "task": args.task,
        "template": template,
        "steps": args.warm_start_steps,
        "noise": args.warm_start_noise,
        "seed": args.seed,
        "held_out": TOY_HELD_OUT,
    }

    def build(folder):
        prompt = partial(make_prompt, template=template)
        steps, noise = args.warm_start_steps, args.warm_start_noise
        train_noisy_base(folder, train_rows, args.task, prompt, steps, noise, args.seed)

    code = [train_noisy_base, toy_demo, make_toy_rows, make_prompt]
    return toy_model("zero_rl-base", spec, build, code=code)
