"""The warm-started toy base of guimid.py: the tiny LLaVA taught LOW-LEVEL instruction following in
the GUIMid planner format, the toy's analogue of the paper's starting point, Qwen2-VL-7B-Instruct
(arXiv 2504.10127), a model that already follows instructions on screens. Not the default
(guimid.py --base_steps; docs/guimid.md says what it did and did not change).

The data: random walks on the toy phone (common/gui_env.py). At each step the "Task" line is the
low-level instruction that names the step's own action ("Click 'Sound'.", "Open app 'Mail'."),
never a high-level goal or any task's text, and the target is the planner output for that action
(`common.gui_formats.planner_target`: a thought, then the fenced JSON). The prompt is the one the
planner sees (`planner_messages`: screenshot, app, URL, the walk's earlier actions, the
accessibility text). So the base knows the output format and how to name an on-screen element;
what a high-level goal ("Turn on airplane mode.") asks for is left to the GUI stage.

Built once and cached (`common.toys.toy_model`, keyed by the code below and its inputs).

`tokenizer="words"` (tried, not the default) starts from the tiny LLaVA with single tokens added
for every label the toy phone's screens show, the action verbs and the fixed JSON text of the
planner target (`word_vlm`), as a real tokenizer (Qwen2's) holds 'Sound' or 'Mail' as one token.
"""

from __future__ import annotations

import random
from pathlib import Path

import torch

from common.chat_sft import collate, encode
from common.gui_env import APPS, GUIAction, Task, ToyGUIEnv, instruction
from common.gui_formats import action_to_guimid, history_entry, planner_messages, planner_target
from common.models import load_model, load_processor, make_tiny_vlm
from common.sampling import get_tokenizer
from common.toys import toy_model
from common.train import make_optimizer, make_scheduler, token_logprobs

# The fixed text of the planner target around its three fields (common.gui_formats.format_guimid)
# and the action verbs (common.gui_formats.action_to_guimid): one token each with --base_tokenizer
# words.
JSON_PIECES = ['```json\n{"Element Description": "', '", "Action": "', '", "Value": "', '"}\n```']
VERBS = ["click", "long_press", "type", "enter", "scroll", "go_back", "go_home", "open_app"]
VERBS += ["wait", "stop", "completed", "infeasible"]

# Text the walk types: generic words that are no task's value (tests/test_guimid.py checks).
WORDS = ["hello", "lunch", "red", "quick test", "today", "maybe", "soon", "hi there"]


def walk_action(rng: random.Random, obs: dict) -> GUIAction:
    """One random-walk action on the current screen: mostly clicks, some typing, long presses
    and app switches (the action types the toy's tasks use)."""
    elements = obs["ui_elements"]
    clickable = [e for e in elements if e["is_clickable"] and not e["is_editable"]]
    editable = [e for e in elements if e["is_editable"]]
    r = rng.random()
    if obs["app"] == "home" or not clickable or r < 0.1:
        return GUIAction("open_app", app_name=APPS[rng.choice(list(APPS))].label)
    if editable and r < 0.3:
        return GUIAction("input_text", index=rng.choice(editable)["index"], text=rng.choice(WORDS))
    if r > 0.95:
        return GUIAction("long_press", index=rng.choice(clickable)["index"])
    return GUIAction("click", index=rng.choice(clickable)["index"])


def final_action(rng: random.Random, obs: dict) -> GUIAction:
    """A walk's last step: answer with a visible element's text, or stop as complete."""
    texts = [e["text"] for e in obs["ui_elements"] if e["text"]]
    if texts and rng.random() < 0.5:
        return GUIAction("answer", text=rng.choice(texts))
    return GUIAction("status", goal_status="complete")


def base_samples(seed: int, n_walks: int, walk_length: int, observation: str) -> list[dict]:
    """Planner samples whose Task line is the step's low-level instruction ("Click 'Sound'.").
    The history is the walk's earlier actions, as the planner keeps it."""
    samples = []
    for k in range(n_walks):
        rng = random.Random(f"guimid-base-{seed}-{k}")
        env = ToyGUIEnv(Task("base", "", ""), max_steps=10**6)
        obs, history = env.obs, []
        for step in range(walk_length):
            last = step == walk_length - 1 and rng.random() < 0.3
            action = final_action(rng, obs) if last else walk_action(rng, obs)
            triple = action_to_guimid(action, obs["ui_elements"])
            task = instruction(action, obs["ui_elements"])
            prompt = planner_messages(task, obs, history, observation)
            answer = {"role": "assistant", "content": planner_target(*triple)}
            samples.append({"messages": prompt + [answer], "image": obs["screenshot"]})
            history.append(history_entry(*triple))
            if last:
                break
            obs = env.step(action)[0]
    return samples


def train_base(model, processor, samples: list[dict], steps: int, batch_size: int, lr: float, seed):
    """SFT on the samples: `steps` AdamW steps on seeded batches, cosine LR, token-mean loss."""
    rows = [encode(processor, x, 8192) for x in samples]
    pad_id, rng = get_tokenizer(processor).pad_token_id, random.Random(seed)
    optimizer = make_optimizer(model, lr)
    scheduler = make_scheduler(optimizer, "cosine", max(1, steps // 20), steps)
    model.train()
    for _ in range(steps):
        batch = rng.sample(rows, batch_size)
        total = sum(sum(r["mask"][1:]) for r in batch)
        for k in range(0, batch_size, 4):
            input_ids, attention_mask, loss_mask, extra = collate(batch[k : k + 4], pad_id, "cpu")
            logps = token_logprobs(model, input_ids, attention_mask, **extra)  # (b, L-1)
            (-(logps * loss_mask[:, 1:]).sum() / total).backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)


def screen_labels(n_walks: int = 400, walk_length: int = 12) -> list[str]:
    """Every label the toy phone's screens show on seeded random walks (the GUI world's own
    catalogue of app and element names; typed text is left out), sorted."""
    labels = {app.label for app in APPS.values()}
    for k in range(n_walks):
        rng = random.Random(f"guimid-labels-{k}")
        env = ToyGUIEnv(Task("labels", "", ""), max_steps=10**6)
        obs = env.obs
        for _ in range(walk_length):
            labels |= {e["text"] for e in obs["ui_elements"] if e["text"] and not e["is_editable"]}
            obs = env.step(walk_action(rng, obs))[0]
    return sorted(t for t in labels if not any(w in t for w in WORDS))


def word_vlm() -> str:
    """The tiny LLaVA as built, with one added token per screen label, verb and JSON piece (new
    embedding rows drawn around the mean of the old ones, seeded); every other weight as built."""
    from tokenizers import AddedToken

    spec = dict(labels=screen_labels(), verbs=VERBS, json=JSON_PIECES)

    def build(folder: Path):
        tiny = make_tiny_vlm()
        model, processor = load_model(tiny, vlm=True, dtype="float32"), load_processor(tiny)
        words = [AddedToken(t, single_word=True, normalized=False) for t in spec["labels"]]
        words += [AddedToken(t, single_word=True, normalized=False) for t in VERBS]
        words += [AddedToken(t, normalized=False) for t in JSON_PIECES]
        processor.tokenizer.add_tokens(words)
        torch.manual_seed(0)
        model.resize_token_embeddings(len(processor.tokenizer))
        model.save_pretrained(folder)
        processor.save_pretrained(folder)

    return toy_model("guimid-words", spec, build, code=[screen_labels, walk_action])


def toy_base(seed: int, observation: str, steps: int, lr: float = 1e-2, tokenizer="toy") -> str:
    """The folder of the cached toy base (built on first use, on CPU)."""
    spec = dict(seed=seed, observation=observation, steps=steps, lr=lr, walks=100, length=6)
    spec["batch"] = 16
    spec |= dict(tokenizer=tokenizer) if tokenizer != "toy" else {}

    def build(folder: Path):
        tiny = make_tiny_vlm() if tokenizer == "toy" else word_vlm()
        model, processor = load_model(tiny, vlm=True, dtype="float32"), load_processor(tiny)
        samples = base_samples(seed, spec["walks"], spec["length"], observation)
        train_base(model, processor, samples, steps, spec["batch"], lr, seed)
        model.save_pretrained(folder)
        processor.save_pretrained(folder)

    code = [base_samples, walk_action, final_action, train_base, encode, collate, planner_messages]
    code += [planner_target, instruction]
    return toy_model("guimid-base", spec, build, code=code)
