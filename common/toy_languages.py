"""The toy parallel corpus of ilo.py: one grammar rendered in six made-up languages, and the
cached tiny 8-layer LM warm-started on it (the CPU demo's stand-in for a multilingual LLM).

Names, numbers and nouns are written the same in every language (loanwords, as in real parallel
text), so parallel sentences share some tokens; verbs and adjectives differ in vocabulary, and word
order differs. One script only: the tiny tokenizer was trained on ASCII text, so other scripts fall
apart into byte tokens that swamp the mean-pooled vector.
"""

from __future__ import annotations

import random
from pathlib import Path

from tqdm import tqdm

from common.models import load_model, load_tokenizer, make_tiny_lm
from common.toys import toy_model
from common.train import make_optimizer, make_scheduler, sft_loss

TOY_CONCEPTS = {
    "verb": "sees likes finds takes draws helps eats holds".split(),
    "object": "apples houses rivers books stones trees breads stars doors ships".split(),
    "adjective": "red small old happy cold bright".split(),
}
TOY_NAMES = "Ana Bo Kim Lee Max Noa Oli Pia Raj Sam Tom Uma Vik Yan Zoe".split()
# (name, letters of its made-up words "consonants|vowels", word order)
TOY_LANGUAGES = [
    ("eng", None, "SVO"),
    ("sov1", "bdfgklmnprstvz|aeiou", "SOV"),
    ("vso1", "bcdgkmnprst|aeiouy", "VSO"),
    ("svo1", "fhjklmnpqrsw|aeiou", "SVO"),
    ("sov2", "bdgklmnrstvz|aeiou", "SOV"),
    ("ovs1", "bcdfghjklmnp|aeiou", "OVS"),
]


def toy_lexicon(seed: int = 0) -> dict:
    rng = random.Random(seed)
    lexicon = {}
    for name, alphabet, _ in TOY_LANGUAGES:
        words = {}
        for kind, concepts in TOY_CONCEPTS.items():
            for c in concepts:
                if alphabet is None or kind == "object":  # nouns are shared "international" words
                    words[c] = c
                else:
                    cons, vow = alphabet.split("|")
                    syllables = rng.randint(1, 2)
                    words[c] = "".join(rng.choice(cons) + rng.choice(vow) for _ in range(syllables))
        lexicon[name] = words
    return lexicon


def render(
    lexicon: dict, lang: str, order: str, who: str, verb: str, count: int, adj: str, obj: str
) -> str:
    w = lexicon[lang]
    noun_phrase = f"{count} {w[adj]} {w[obj]}" if order != "OVS" else f"{w[obj]} {w[adj]} {count}"
    parts = {"S": who, "V": w[verb], "O": noun_phrase}
    return " ".join(parts[c] for c in order) + " ."


def toy_corpus(n: int, seed: int) -> list[dict]:
    """n parallel sentences in each toy language: rows {id, lang, text}."""
    rng, lexicon = random.Random(seed), toy_lexicon()
    rows = []
    for i in range(n):
        who, count = rng.choice(TOY_NAMES), rng.randint(2, 99)
        verb, adj, obj = (rng.choice(TOY_CONCEPTS[k]) for k in ("verb", "adjective", "object"))
        for lang, _, order in TOY_LANGUAGES:
            rows.append(
                {
                    "id": i,
                    "lang": lang,
                    "text": render(lexicon, lang, order, who, verb, count, adj, obj),
                }
            )
    return rows


def toy_code_switched(n: int, seed: int) -> list[str]:
    """Code-switched sentences: one language's word order, each verb/adjective from a random
    language. Translation-equivalent words then share contexts, which gives the warm-started base
    the shared (interlingual) representations that multilingual pre-training gives a real LLM."""
    rng, lexicon = random.Random(seed), toy_lexicon()
    names = [name for name, _, _ in TOY_LANGUAGES]
    out = []
    for _ in range(n):
        who, count = rng.choice(TOY_NAMES), rng.randint(2, 99)
        verb, adj, obj = (rng.choice(TOY_CONCEPTS[k]) for k in ("verb", "adjective", "object"))
        mixed = {c: lexicon[rng.choice(names)][c] for c in (verb, adj, obj)}
        order = rng.choice(TOY_LANGUAGES)[2]
        out.append(render({"mix": mixed}, "mix", order, who, verb, count, adj, obj))
    return out


def toy_base_model(seed: int) -> str:
    """The tiny 8-layer LM trained briefly on the toy languages (monolingual, translation pairs,
    code-switched), cached."""
    spec = {"seed": seed, "steps": 200, "batch": 16}  # 8 narrow blocks: depth for early vs late

    def build(folder: Path):
        # untied input/output embeddings, as in Llama-3.1-8B: a word of another language then gets
        # no gradient from single-language fine-tuning
        path = make_tiny_lm(
            num_hidden_layers=8, hidden_size=32, intermediate_size=128, tie_word_embeddings=False
        )
        tok, model = load_tokenizer(path), load_model(path)
        rows = toy_corpus(600, seed=seed + 1000)  # never the ILO / evaluation sentences (seed 1, 2)
        by_id: dict[int, dict] = {}
        for r in rows:
            by_id.setdefault(r["id"], {})[r["lang"]] = r["text"]
        texts = [r["text"] for r in rows]
        texts += [
            f"{d['eng']} = {d[lang]}" for d in by_id.values() for lang in d if lang != "eng"
        ]  # translations
        texts += toy_code_switched(len(texts) // 2, seed=seed + 2000)
        rng = random.Random(seed)
        opt = make_optimizer(model, lr=3e-3)
        sched = make_scheduler(opt, "cosine", warmup_steps=20, total_steps=spec["steps"])
        for _ in tqdm(range(spec["steps"]), desc="warm start (toy languages)", leave=False):
            batch = [t + tok.eos_token for t in rng.sample(texts, spec["batch"])]
            enc = tok(batch, return_tensors="pt", padding=True, padding_side="right")
            loss = sft_loss(model, enc["input_ids"], enc["attention_mask"], enc["attention_mask"])
            loss.backward()
            opt.step(), sched.step(), opt.zero_grad()
        model.save_pretrained(folder)
        tok.save_pretrained(folder)

    return toy_model(
        "ilo-base", spec, build, code=[toy_corpus, toy_lexicon, toy_code_switched, render]
    )
