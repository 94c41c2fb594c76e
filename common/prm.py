"""Process reward models (PRMs): one score in [0, 1] per reasoning step of a response.

Every PRM here has one method, the interface the scripts rely on (bstar.py, mstar.py):

    prm.step_scores(prompts, steps) -> list[list[float]]   # steps[i]: the steps of response i

- `ProcessRewardModel`: a trained PRM from a hub id or a folder, scored the way Math-Shepherd's
  released example does (Wang et al., arXiv 2312.08935; `peiyi9979/math-shepherd-mistral-7b-prm`):
  the input is the question, a space, then the steps, each followed by the step tag "ки" and joined
  by newlines; a step's score is read at its tag. head="token": P(good) of the softmax over the
  logits of the good and bad tokens ("+" / "-"); head="classifier": P(label 1) of a two-label
  token-classification head. A VLM PRM takes its processor's output as the prompt and
  `extra_inputs` supplies the image tensors. Memory stays bounded: `batch_size` responses per
  forward, and the token head projects only the tag positions (`logits_to_keep`), never the whole
  (B, L, V) logits.
- `RulePRM`: the stand-in of the CPU toys, which have no trained PRM: a toy world's grading
  function (one response's steps -> one score each) behind the same interface.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from common.models import load_model, load_processor, load_tokenizer
from common.train import pad_batch

# prompt, steps -> one score per step (a toy world's rule-based grader)
Grader = Callable[[object, list[str]], list[float]]


def split_steps(response: str, separator: str = "\n") -> list[str]:
    """The non-empty, stripped pieces of a response between separators: its steps."""
    return [s.strip() for s in response.split(separator) if s.strip()]


class RulePRM:
    """Stand-in PRM for a toy world (no model): `grade(prompt, steps)` scores each step."""

    def __init__(self, grade: Grader, name: str = "rule-based step checker (stand-in PRM)"):
        self.grade = grade
        self.name = name

    def step_scores(self, prompts: list, steps: list[list[str]]) -> list[list[float]]:
        return [self.grade(p, s) for p, s in zip(prompts, steps)]


class ProcessRewardModel:
    """A Math-Shepherd-style PRM loaded from `path` (a hub id or a folder).

    prompts[i] is the question as text, or (vlm=True) the processor's output for the prompt, a dict
    with input_ids (1, P) and the image tensors; `extra_inputs(prompts, L)` turns a batch of those
    into the model's other keyword arguments for a batch padded to L tokens. `processor`: an
    already loaded processor for a VLM PRM (default: loaded from `path`)."""

    def __init__(
        self,
        path: str,
        head: str = "token",
        step_tag: str = "ки",
        good: str = "+",
        bad: str = "-",
        device="cpu",
        dtype="float32",
        vlm: bool = False,
        extra_inputs: Callable[[list[dict], int], dict] | None = None,
        batch_size: int = 16,
        processor=None,
    ):
        if head not in ("token", "classifier"):
            raise ValueError(f"--prm_head must be 'token' or 'classifier', got {head!r}")
        if vlm and head != "token":
            raise ValueError("--prm_head classifier reads text PRMs only; a VLM PRM needs 'token'")
        self.head, self.step_tag, self.device = head, step_tag, device
        self.extra_inputs, self.batch_size = extra_inputs, batch_size
        # a VLM PRM: `processor` when the caller has one (the policy's family), else from `path`
        self.processor = (processor or load_processor(path)) if vlm else None
        self.tok = self.processor.tokenizer if vlm else load_tokenizer(path)
        good_ids, bad_ids = self._ids(good), self._ids(bad)
        if head == "token" and (len(good_ids) != 1 or len(bad_ids) != 1):
            raise ValueError(
                f"--prm_good_token {good!r} / --prm_bad_token {bad!r} must each be one token "
                f"of {path}"
            )
        if not self._ids(step_tag):
            raise ValueError(f"--prm_step_tag {step_tag!r} must not be empty")
        self.candidates = [good_ids[0], bad_ids[0]] if head == "token" else []
        if head == "token":
            self.model = load_model(path, vlm=vlm, dtype=dtype, device=device)
        else:
            from transformers import AutoModelForTokenClassification

            self.model = AutoModelForTokenClassification.from_pretrained(
                path, num_labels=2, dtype=dtype
            ).to(device)
        self.model.eval()
        self.name = f"model PRM {path}"

    def _ids(self, text: str) -> list[int]:
        return self.tok(text, add_special_tokens=False).input_ids

    def encode(self, prompt, steps: list[str]) -> tuple[list[int], list[int]]:
        """Token ids of the prompt then "step ки" pieces joined by newlines, and the positions of
        the tags' last tokens (where the scores are read). Each piece is tokenised alone, so a tag
        never merges with the next step's first token."""
        if isinstance(
            prompt, str
        ):  # Math-Shepherd: f"{question} {steps}", with the tokenizer's BOS
            ids = self.tok(prompt + " ").input_ids
        else:
            ids = prompt["input_ids"][0].tolist()
        positions = []
        for j, step in enumerate(steps):
            if j:
                ids = ids + self._ids("\n")
            ids = ids + self._ids(f"{step} {self.step_tag}")
            positions.append(len(ids) - 1)
        return ids, positions

    @torch.no_grad()
    def step_scores(self, prompts: list, steps: list[list[str]]) -> list[list[float]]:
        out = []
        for lo in range(0, len(prompts), self.batch_size):
            part = prompts[lo : lo + self.batch_size]
            encoded = [self.encode(p, s) for p, s in zip(part, steps[lo : lo + self.batch_size])]
            out += self._score_batch(part, encoded)
        return out

    def _score_batch(self, prompts: list, encoded) -> list[list[float]]:
        tags = sorted({p for _, positions in encoded for p in positions})
        if not tags:  # no response in the batch has a step
            return [[] for _ in encoded]
        rows = [ids for ids, _ in encoded]
        input_ids, attention_mask, _ = pad_batch(rows, [[] for _ in rows], self.tok.pad_token_id)
        kwargs = {}  # right padding: every tag keeps its position
        if self.extra_inputs is not None:
            kwargs = self.extra_inputs(prompts, input_ids.shape[1])
        if self.head == "token":  # project only the tag positions through the LM head
            kwargs["logits_to_keep"] = torch.tensor(tags)
        kwargs = {k: v.to(self.device) for k, v in kwargs.items()}
        logits = self.model(
            input_ids=input_ids.to(self.device),
            attention_mask=attention_mask.to(self.device),
            **kwargs,
        ).logits  # token: (B, len(tags), V); classifier: (B, L, 2)
        if self.head == "token":
            column = {p: k for k, p in enumerate(tags)}
            good = logits[..., self.candidates].float().softmax(-1)[..., 0]  # (B, len(tags))
        else:
            column = {p: p for p in tags}
            good = logits.float().softmax(-1)[..., 1]  # (B, L)
        good = good.cpu()
        return [
            [float(good[i, column[p]]) for p in positions]
            for i, (_, positions) in enumerate(encoded)
        ]
