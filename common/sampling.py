"""One sampling interface, two backends: HF `generate` (default, works under FSDP2) and vLLM (optional).

    sampler.generate(prompts, n, temperature, top_p, max_new_tokens, stop) -> list[list[Completion]]

A prompt is a raw string (used as is) or a list of chat messages (the chat template is applied with the
generation prompt). `temperature=0` means greedy. Each `Completion` carries the text, the generated
token ids (including the end-of-turn token when the model stopped by itself), the model's per-token
log-probs at temperature 1 (what the RL losses call "old" log-probs), and a finish reason: "stop" (eos,
<|im_end|> or a stop string) or "length" (hit max_new_tokens). Stop strings stay in the text and the
text, as vLLM does with `include_stop_str_in_output=True`; the token ids end with the token that
completed the stop string.

The HF backend records log-probs during generation with a logits processor that sits before the
temperature / top-p warpers, so they are the raw model's log-probs of the sampled tokens; a test checks
they equal `common.train.token_logprobs` on the same sequences. Under torchrun with FSDP2 every rank
must call `generate` with the same number of prompts: `synced_gpus` keeps the ranks' forwards in step.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.distributed as dist

from common.models import stop_token_ids


@dataclass
class Completion:
    text: str
    token_ids: list[int]
    logprobs: list[float] = field(default_factory=list)
    finish_reason: str = "stop"  # "stop" | "length"


def get_tokenizer(tokenizer_or_processor):
    return getattr(tokenizer_or_processor, "tokenizer", tokenizer_or_processor)


def render_prompt(tokenizer_or_processor, prompt) -> str:
    """A raw string is used as is; chat messages go through the chat template with the generation prompt."""
    if isinstance(prompt, str):
        return prompt
    return tokenizer_or_processor.apply_chat_template(prompt, tokenize=False, add_generation_prompt=True)


class _RecordLogprobs:
    """Logits processor (placed before the warpers) that records log p(sampled token) at temperature 1.

    At step t it sees the logits for step t and, as input_ids[:, -1], the token sampled at step t-1,
    so it stores log_softmax of each step and gathers the chosen token one step later.
    """

    def __init__(self):
        self.prev_logprobs = None  # (B, V)
        self.steps: list[torch.Tensor] = []  # each (B,)

    def __call__(self, input_ids, scores):
        if self.prev_logprobs is not None:
            self.steps.append(self.prev_logprobs.gather(-1, input_ids[:, -1:]).squeeze(-1))
        self.prev_logprobs = torch.log_softmax(scores.float(), dim=-1)
        return scores

    def finish(self, sequences) -> torch.Tensor:
        if self.prev_logprobs is not None:
            self.steps.append(self.prev_logprobs.gather(-1, sequences[:, -1:]).squeeze(-1))
        return torch.stack(self.steps, dim=1) if self.steps else torch.zeros(sequences.shape[0], 0)  # (B, T)


def _cut_text(text: str, stop) -> str:
    """Text up to and including the first stop string (tokens can run a few characters past it)."""
    ends = [text.index(s) + len(s) for s in (stop or []) if s in text]
    return text[: min(ends)] if ends else text


class Sampler:
    def generate(self, prompts, n=1, temperature=1.0, top_p=1.0, max_new_tokens=128, stop=None, images=None, batch_size=None):
        raise NotImplementedError


class HFSampler(Sampler):
    """Batched, left-padded `model.generate` with KV cache. Works on a plain or FSDP2-wrapped model."""

    def __init__(self, model, tokenizer_or_processor, batch_size: int = 64):
        self.model = model
        self.processor = tokenizer_or_processor
        self.tokenizer = get_tokenizer(tokenizer_or_processor)
        self.tokenizer.padding_side = "left"
        self.batch_size = batch_size
        self.stop_ids = stop_token_ids(self.tokenizer)

    def _encode(self, texts, images):
        device = next(self.model.parameters()).device
        if images is not None:
            enc = self.processor(text=texts, images=images, padding=True, return_tensors="pt")
        else:
            enc = self.tokenizer(texts, padding=True, return_tensors="pt", add_special_tokens=False)
        return {k: v.to(device) for k, v in enc.items()}

    def _cut(self, tokens: list[int], stop) -> tuple[list[int], str]:
        """Where a completion ends: first stop string, else first eos/<|im_end|>, else max length."""
        eos_at = next((i for i, t in enumerate(tokens) if t in self.stop_ids), None)
        body = tokens if eos_at is None else tokens[:eos_at]
        if stop:
            text = self.tokenizer.decode(body)
            if any(s in text for s in stop):
                lo, hi = 1, len(body)  # smallest prefix whose text contains a stop string (monotone in k)
                while lo < hi:
                    mid = (lo + hi) // 2
                    if any(s in self.tokenizer.decode(body[:mid]) for s in stop):
                        hi = mid
                    else:
                        lo = mid + 1
                return body[:lo], "stop"  # the last token may run past the stop string; the text is cut
        if eos_at is not None:
            return tokens[: eos_at + 1], "stop"
        return tokens, "length"

    @torch.no_grad()
    def generate(self, prompts, n=1, temperature=1.0, top_p=1.0, max_new_tokens=128, stop=None, images=None, batch_size=None):
        from transformers import GenerationConfig, LogitsProcessorList

        if images is not None and len(images) != len(prompts):
            raise ValueError(f"got {len(images)} images for {len(prompts)} prompts (one image per prompt)")
        texts = [render_prompt(self.processor, p) for p in prompts]
        bs = batch_size or self.batch_size
        greedy = temperature == 0
        per_call = 1 if greedy else n  # HF refuses num_return_sequences > 1 without sampling: repeat instead
        if greedy and n > 1:
            texts = [t for t in texts for _ in range(n)]
            images = None if images is None else [im for im in images for _ in range(n)]
            bs *= n
        gen_cfg = GenerationConfig(
            max_new_tokens=max_new_tokens, do_sample=not greedy, temperature=None if greedy else temperature,
            top_p=None if greedy else top_p, top_k=None, num_return_sequences=per_call,
            eos_token_id=self.stop_ids, pad_token_id=self.tokenizer.pad_token_id, stop_strings=stop or None,
        )
        synced = dist.is_initialized() and dist.get_world_size() > 1
        was_training = self.model.training
        self.model.eval()
        # FSDP2: gather the root's own parameters (embeddings, lm_head, a VLM's projector) for the whole
        # generation; transformers 5 touches some of them outside the root forward (image features).
        sharded_root = hasattr(self.model, "unshard")
        if sharded_root:
            self.model.unshard()
        results = []
        for start in range(0, len(texts), bs):
            enc = self._encode(texts[start : start + bs], None if images is None else images[start : start + bs])
            recorder = _RecordLogprobs()
            out = self.model.generate(
                **enc, generation_config=gen_cfg, logits_processor=LogitsProcessorList([recorder]),
                tokenizer=self.tokenizer, synced_gpus=synced,
            )  # (b * n, P + T)
            new_tokens = out[:, enc["input_ids"].shape[1] :]  # (b * n, T)
            logprobs = recorder.finish(out).cpu()  # (b * n, T)
            new_tokens = new_tokens.cpu().tolist()
            for j, row in enumerate(new_tokens):
                ids, reason = self._cut(row, stop)
                text = _cut_text(self.tokenizer.decode(ids, skip_special_tokens=True), stop)
                if j % n == 0:
                    results.append([])
                results[-1].append(Completion(text, ids, logprobs[j, : len(ids)].tolist(), reason))
        if sharded_root:
            self.model.reshard()
        self.model.train(was_training)
        return results


class VLLMSampler(Sampler):
    """vLLM colocated with the trainer (TRL/verl style): the trainer pushes its weights after each update
    with `load_weights`, which also resets the prefix cache (cached KV of old weights is stale)."""

    def __init__(self, model_path: str, gpu_memory_utilization: float = 0.3, max_model_len: int | None = None, seed: int = 0, **llm_kwargs):
        try:
            import vllm
        except ImportError as e:
            raise ImportError("--sampler vllm needs vLLM: pip install -r requirements-vllm.txt (GPU only)") from e
        self.vllm = vllm
        self.llm = vllm.LLM(
            model=model_path, gpu_memory_utilization=gpu_memory_utilization, max_model_len=max_model_len,
            seed=seed, enable_prefix_caching=True, **llm_kwargs,
        )
        self.tokenizer = self.llm.get_tokenizer()

    def load_weights(self, named_tensors):
        """Push trainer weights (an iterable of (name, tensor), e.g. a full state dict's items())."""
        engine_model = self.llm.llm_engine.model_executor.driver_worker.model_runner.model
        engine_model.load_weights(named_tensors)
        self.llm.reset_prefix_cache()

    def generate(self, prompts, n=1, temperature=1.0, top_p=1.0, max_new_tokens=128, stop=None, images=None, batch_size=None):
        params = self.vllm.SamplingParams(
            n=n, temperature=temperature, top_p=top_p if temperature > 0 else 1.0, max_tokens=max_new_tokens,
            stop=stop, include_stop_str_in_output=True, logprobs=0,
        )
        texts = [render_prompt(self.tokenizer, p) for p in prompts]
        inputs = texts if images is None else [{"prompt": t, "multi_modal_data": {"image": im}} for t, im in zip(texts, images)]
        outputs = self.llm.generate(inputs, params, use_tqdm=False)
        results = []
        for out in outputs:
            group = []
            for c in out.outputs:
                lps = [next(iter(d.values())).logprob if d else 0.0 for d in (c.logprobs or [])]
                group.append(Completion(c.text, list(c.token_ids), lps, "length" if c.finish_reason == "length" else "stop"))
            results.append(group)
        return results


def make_sampler(kind: str, model=None, tokenizer=None, model_path: str | None = None, **kwargs) -> Sampler:
    """`--sampler hf` (default) or `--sampler vllm`."""
    if kind == "hf":
        return HFSampler(model, tokenizer, **kwargs)
    if kind == "vllm":
        return VLLMSampler(model_path, **kwargs)
    raise ValueError(f"--sampler must be 'hf' or 'vllm', got {kind!r}")
