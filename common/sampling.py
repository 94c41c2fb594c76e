"""One sampling interface, two backends: HF `generate` (default, works under FSDP2) and vLLM
(optional).

    sampler.generate(prompts, n, temperature, top_p, max_new_tokens, stop) -> list[list[Completion]]

A prompt is a raw string (used as is) or a list of chat messages (the chat template is applied with
the generation prompt). `temperature=0` means greedy (n > 1 greedy completions are n copies of one).
Each `Completion` carries the text, the generated token ids (including the end-of-turn token when
the model stopped by itself), the model's per-token log-probs at temperature 1, and a finish reason:
"stop" (eos, end-of-turn token or a stop string) or "length" (hit max_new_tokens). Stop strings stay
in the text, as vLLM does with `include_stop_str_in_output=True`; the token ids end with the token
that completed the stop string.

Which log-probs may serve as the RL losses' "old" ones: on CPU in float32 the HF sampler's equal the
trainer's forward (a test checks it); on CUDA (bf16 kernels, batched KV-cache decoding) and with
vLLM they do not, so the trainers recompute them there (`old_logprobs_need_recompute`).

Sampling on every rank: `generate_sharded(sampler, prompts, ...)` gives each rank a contiguous share
of a global prompt list, generates it with the rank's own sampler (HF on the FSDP2 model, or the
rank's own vLLM engine) and gathers the groups back in prompt order on every rank. Ranks meet only
in the final `all_gather_object`; an FSDP2 HF sampler also needs every rank to run the same number
of forwards (`synced_gpus`), so its shares are padded to equal length with repeats that are dropped
afterwards.

vLLM runs inside the training process on every rank, as TRL's `vllm_mode="colocate"` does
(trl/generation/vllm_generation.py, `_init_vllm`):
`distributed_executor_backend="external_launcher"` (also for one process) with the torchrun
rank/world environment, so each engine sits on its own rank's GPU and its model is reachable
in-process for the weight push."""

from __future__ import annotations

import copy
import inspect
import os
import socket
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
    """A raw string is used as is; chat messages get the chat template and the generation prompt."""
    if isinstance(prompt, str):
        return prompt
    return tokenizer_or_processor.apply_chat_template(
        prompt, tokenize=False, add_generation_prompt=True
    )


def old_logprobs_need_recompute(sampler, device) -> bool:
    """True when the sampler's log-probs must not be the RL "old" log-probs: vLLM (other kernels),
    and the HF sampler on CUDA (bf16 / batched-cache numerics differ from the trainer's forward, and
    the ratio pi/pi_old would start away from 1 and clip spuriously)."""
    return isinstance(sampler, VLLMSampler) or torch.device(device).type == "cuda"


class _RecordLogprobs:
    """Logits processor (placed before the warpers) that records log p(sampled token) at temperature
    1.

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
        if not self.steps:
            return torch.zeros(sequences.shape[0], 0)
        return torch.stack(self.steps, dim=1)  # (B, T)


def _cut_text(text: str, stop) -> str:
    """Text up to and including the first stop string (tokens can run a few characters past it)."""
    ends = [text.index(s) + len(s) for s in (stop or []) if s in text]
    return text[: min(ends)] if ends else text


def _copies(groups: list[list[Completion]], n: int) -> list[list[Completion]]:
    """Greedy decoding is deterministic: n greedy completions are n copies of one (vLLM refuses
    n > 1 greedy)."""
    return [[copy.deepcopy(g[0]) for _ in range(n)] for g in groups]


class Sampler:
    lockstep = False  # True: every rank must call generate with the same number of prompts (FSDP2)

    def generate(
        self,
        prompts,
        n=1,
        temperature=1.0,
        top_p=1.0,
        max_new_tokens=128,
        stop=None,
        images=None,
        batch_size=None,
    ):
        """One list of n Completions per prompt. Checks the arguments and answers greedy with n > 1
        by copying one greedy completion (vLLM refuses it; the HF result would be n equal ones);
        the backend's `_generate` does the rest."""
        if images is not None and len(images) != len(prompts):
            raise ValueError(
                f"got {len(images)} images for {len(prompts)} prompts (one image per prompt)"
            )
        if temperature == 0 and n > 1:
            return _copies(
                self._generate(prompts, 1, 0, top_p, max_new_tokens, stop, images, batch_size), n
            )
        return self._generate(
            prompts, n, temperature, top_p, max_new_tokens, stop, images, batch_size
        )

    def _generate(self, prompts, n, temperature, top_p, max_new_tokens, stop, images, batch_size):
        raise NotImplementedError

    def sleep(self):
        """Free the sampler's GPU memory for the update (vLLM sleep mode); a no-op for HF."""

    def sync_weights(self, model):
        """Give the sampler the trainer's current weights; HF samples from the trainer's model."""


class HFSampler(Sampler):
    """Batched, left-padded `model.generate` with KV cache. Works on a plain or FSDP2-wrapped model.

    With n > 1 samples per prompt the prompt is prefilled once and its KV cache copied n times
    (`share_prefill`): the first n - 1 prompt tokens go through one forward, the cache is expanded
    with `DynamicCache.batch_repeat_interleave(n)` and `generate` continues from it (transformers'
    cache reuse: `_prefill` then feeds only the tokens the cache lacks). The n samples are drawn
    exactly as with `num_return_sequences=n`; only the repeated prefill work is gone."""

    def __init__(
        self, model, tokenizer_or_processor, batch_size: int = 64, share_prefill: bool = True
    ):
        self.model = model
        self.processor = tokenizer_or_processor
        self.tokenizer = get_tokenizer(tokenizer_or_processor)
        self.tokenizer.padding_side = "left"
        self.batch_size = batch_size
        self.share_prefill = share_prefill
        self.stop_ids = stop_token_ids(self.tokenizer)
        self.lockstep = hasattr(model, "unshard")  # FSDP2 root: forwards are collectives

    def _encode(self, texts, images):
        device = next(self.model.parameters()).device
        if images is not None:
            enc = self.processor(text=texts, images=images, padding=True, return_tensors="pt")
        else:
            enc = self.tokenizer(texts, padding=True, return_tensors="pt", add_special_tokens=False)
        return {k: v.to(device) for k, v in enc.items()}

    def _cut(self, tokens: list[int], stop) -> tuple[list[int], str]:
        """Where a completion ends: first stop string, else first stop token, else max length."""
        eos_at = next((i for i, t in enumerate(tokens) if t in self.stop_ids), None)
        body = tokens if eos_at is None else tokens[:eos_at]
        if stop:
            text = self.tokenizer.decode(body)
            if any(s in text for s in stop):
                # smallest prefix whose text contains a stop string (monotone in k)
                lo, hi = 1, len(body)
                while lo < hi:
                    mid = (lo + hi) // 2
                    if any(s in self.tokenizer.decode(body[:mid]) for s in stop):
                        hi = mid
                    else:
                        lo = mid + 1
                # the last token may run past the stop string; the text is cut
                return body[:lo], "stop"
        if eos_at is not None:
            return tokens[: eos_at + 1], "stop"
        return tokens, "length"

    def _prefilled_cache(self, enc: dict, n: int):
        """KV cache of all prompt tokens but the last, computed once, repeated n times."""
        from transformers import DynamicCache

        ids, mask = enc["input_ids"], enc["attention_mask"]  # (b, P) left padded
        positions = (mask.long().cumsum(-1) - 1).clamp(min=0)  # (b, P) as generate computes them
        cache = DynamicCache(config=self.model.config)
        forward_params = inspect.signature(type(self.model).forward).parameters
        # `past_key_values` was renamed `cache` in transformers 5
        cache_kw = "cache" if "cache" in forward_params else "past_key_values"
        self.model(
            input_ids=ids[:, :-1],
            attention_mask=mask[:, :-1],
            position_ids=positions[:, :-1],
            use_cache=True,
            logits_to_keep=1,
            **{cache_kw: cache},
        )
        cache.batch_repeat_interleave(n)  # (b * n, heads, P - 1, d) per layer
        expanded = {k: v.repeat_interleave(n, dim=0) for k, v in enc.items()}  # (b * n, P)
        return expanded, {cache_kw: cache}

    @torch.no_grad()
    def _generate(self, prompts, n, temperature, top_p, max_new_tokens, stop, images, batch_size):
        from transformers import GenerationConfig, LogitsProcessorList

        greedy = temperature == 0
        texts = [render_prompt(self.processor, p) for p in prompts]
        bs = batch_size or self.batch_size
        # VLM prompts keep one prefill per sample (the image features enter at the prefill)
        shared = self.share_prefill and n > 1 and images is None
        gen_cfg = GenerationConfig(
            max_new_tokens=max_new_tokens,
            do_sample=not greedy,
            temperature=None if greedy else temperature,
            top_p=None if greedy else top_p,
            top_k=None,
            num_return_sequences=n,
            eos_token_id=self.stop_ids,
            pad_token_id=self.tokenizer.pad_token_id,
            stop_strings=stop or None,
        )
        one_each = copy.deepcopy(gen_cfg)  # for rows already expanded n times (shared prefill)
        one_each.num_return_sequences = 1
        # FSDP2 forwards are collectives: every rank runs as many as the longest (synced_gpus)
        synced = self.lockstep and dist.is_initialized() and dist.get_world_size() > 1
        was_training = self.model.training
        self.model.eval()
        # FSDP2: gather the root's own parameters (embeddings, lm_head, a VLM's projector) for the
        # whole generation; transformers 5 touches some of them outside the root forward.
        if self.lockstep:
            self.model.unshard()
        results = []
        for start in range(0, len(texts), bs):
            enc = self._encode(
                texts[start : start + bs], None if images is None else images[start : start + bs]
            )
            extra = {}
            if shared and enc["input_ids"].shape[1] > 1:
                enc, extra = self._prefilled_cache(enc, n)  # (b * n, P) and the expanded cache
            recorder = _RecordLogprobs()
            out = self.model.generate(
                **enc,
                **extra,
                generation_config=one_each if extra else gen_cfg,
                tokenizer=self.tokenizer,
                logits_processor=LogitsProcessorList([recorder]),
                synced_gpus=synced,
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
        if self.lockstep:
            self.model.reshard()
        self.model.train(was_training)
        return results


# --------------------------------------------------------------------------------------------------
# vLLM, colocated on every rank


@dataclass
class VLLMArgs:
    """The `--vllm_*` flags, spelled the same in every script: `class Args(VLLMArgs)`."""

    vllm_gpu_memory_utilization: float = field(
        default=0.3,
        metadata={
            "help": "--sampler vllm: share of each GPU's memory for vLLM's weights and KV cache "
            "(the trainer shares the GPU; with --vllm_sleep the KV cache is freed during updates)"
        },
    )
    vllm_max_model_len: int = field(
        default=None,
        metadata={
            "help": "--sampler vllm: longest prompt + completion in tokens "
            "(default: the model's context)"
        },
    )
    vllm_sleep: bool = field(
        default=True,
        metadata={
            "help": "--sampler vllm: sleep mode (level 1: weights to CPU, KV cache freed) "
            "during each update; woken before the weight push and before sampling. "
            "--no_vllm_sleep keeps it resident"
        },
    )


def vllm_options(args) -> dict:
    """make_sampler keywords from an Args that has the VLLMArgs fields."""
    return {
        "gpu_memory_utilization": args.vllm_gpu_memory_utilization,
        "max_model_len": args.vllm_max_model_len,
        "sleep": args.vllm_sleep,
    }


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launcher_env() -> tuple[int, int, int]:
    """(rank, local_rank, world) for vLLM's external launcher; a plain `python` run is rank 0 of 1.

    vLLM's external_launcher reads the torchrun variables (RANK, LOCAL_RANK, WORLD_SIZE,
    MASTER_ADDR, MASTER_PORT) and joins the default process group, or creates it from them; TRL sets
    the same ones."""
    if dist.is_initialized():
        rank, world = dist.get_rank(), dist.get_world_size()
    else:
        rank, world = int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1"))
    local_rank = int(os.environ.get("LOCAL_RANK", str(rank)))
    os.environ.update(RANK=str(rank), LOCAL_RANK=str(local_rank), WORLD_SIZE=str(world))
    os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
    if "MASTER_PORT" not in os.environ:
        os.environ["MASTER_PORT"] = str(_free_port())
    return rank, local_rank, world


class VLLMSampler(Sampler):
    """One vLLM engine per rank, in the training process (TRL colocate mode, verl's hybrid engine).

    Prompts go in as token ids (rendered and tokenized here, no special tokens added twice);
    completions stop at the tokenizer's eos and end-of-turn tokens, as the HF sampler does.
    `sync_weights(model)` pushes the trainer's weights one tensor at a time (`full_tensor()` gathers
    each FSDP2 DTensor, a collective every rank joins in the same state_dict order) into the
    engine's model, then resets the prefix cache (cached KV of the old weights is stale). With
    `sleep`, the engine sleeps at level 1 (weights to CPU, KV cache freed) while the trainer
    updates; level 2 would also drop buffers such as rotary tables that a weight push does not
    restore (vllm-project/vllm#16564, #29341)."""

    def __init__(
        self,
        model_path: str,
        gpu_memory_utilization: float = 0.3,
        max_model_len: int | None = None,
        sleep: bool = True,
        seed: int = 0,
        renderer=None,
        **llm_kwargs,
    ):
        try:
            import vllm
        except ImportError as e:
            raise ImportError(
                "--sampler vllm needs vLLM: pip install -r requirements-vllm.txt (GPU only)"
            ) from e
        rank, local_rank, _ = launcher_env()
        if torch.cuda.is_available():
            torch.cuda.set_device(local_rank)  # the engine's worker takes cuda:LOCAL_RANK
        self.llm = vllm.LLM(
            model=model_path,
            gpu_memory_utilization=gpu_memory_utilization,
            max_model_len=max_model_len,
            # distinct samples per rank (tensor_parallel_size=1: no group that must agree)
            seed=seed + rank,
            enable_prefix_caching=True,
            enable_sleep_mode=sleep,
            tensor_parallel_size=1,
            distributed_executor_backend="external_launcher",
            **llm_kwargs,
        )
        self.tokenizer = self.llm.get_tokenizer()
        # a VLM's processor holds the chat template that places the images
        self.renderer = renderer or self.tokenizer
        self.stop_ids = stop_token_ids(self.tokenizer)
        self.sleep_enabled = sleep
        self.asleep: set[str] = set()  # the sleeping parts: "weights", "kv_cache"

    def sleep(self):
        if self.sleep_enabled and not self.asleep:
            self.llm.sleep(level=1)
            self.asleep = {"weights", "kv_cache"}

    def _wake(self, tags: list[str]):
        tags = [t for t in tags if t in self.asleep]
        if tags:
            # the trainer's freed blocks back to the driver before vLLM maps its own
            torch.cuda.empty_cache()
            self.llm.wake_up(tags=tags)
            self.asleep -= set(tags)

    def _engine_model(self):
        # external_launcher: the executor runs in this process (V1 multiprocessing off), so the
        # worker's nn.Module is reachable; the path TRL's colocate push uses
        # (vllm_generation._push_param_to_vllm).
        return self.llm.llm_engine.model_executor.driver_worker.model_runner.model

    def sync_weights(self, model):
        """Push every tensor of the trainer's state dict; every rank calls it (FSDP2 gathers)."""
        self._wake(["weights"])
        engine_model = self._engine_model()
        device = (
            torch.device("cuda", torch.cuda.current_device()) if torch.cuda.is_available() else None
        )
        for name, tensor in model.state_dict().items():
            # activation checkpointing wraps blocks; vLLM knows the plain names
            name = name.replace("_checkpoint_wrapped_module.", "")
            if hasattr(tensor, "full_tensor"):
                if device is not None and tensor.device.type == "cpu":
                    tensor = tensor.to(device)  # FSDP2 CPU offload: gather on the GPU
                tensor = tensor.full_tensor()  # all-gather of this one tensor, on every rank
            engine_model.load_weights([(name, tensor)])
        self.llm.reset_prefix_cache()

    def _inputs(self, prompts, images) -> list[dict]:
        rows = []
        for i, p in enumerate(prompts):
            ids = self.tokenizer(
                render_prompt(self.renderer, p), add_special_tokens=False
            ).input_ids
            row = {"prompt_token_ids": ids}  # vLLM's TokensPrompt
            if images is not None:
                row["multi_modal_data"] = {"image": images[i]}
            rows.append(row)
        return rows

    def _generate(self, prompts, n, temperature, top_p, max_new_tokens, stop, images, batch_size):
        from vllm import SamplingParams

        greedy = temperature == 0
        if not prompts:
            return []
        self._wake(["weights", "kv_cache"])
        params = SamplingParams(
            n=n,
            temperature=temperature,
            top_p=1.0 if greedy else top_p,
            max_tokens=max_new_tokens,
            stop=stop or None,
            stop_token_ids=self.stop_ids,
            include_stop_str_in_output=True,
            logprobs=0,
        )
        outputs = self.llm.generate(self._inputs(prompts, images), params, use_tqdm=False)
        results = []
        for out in outputs:
            group = []
            for c in out.outputs:
                lps = [next(iter(d.values())).logprob if d else 0.0 for d in (c.logprobs or [])]
                reason = "length" if c.finish_reason == "length" else "stop"
                group.append(Completion(c.text, list(c.token_ids), lps, reason))
            results.append(group)
        return results


def make_sampler(
    kind: str, model=None, tokenizer=None, model_path: str | None = None, args=None, **kwargs
) -> Sampler:
    """`--sampler hf` (default) or `--sampler vllm`; for vLLM, `args` (an Args with the VLLMArgs
    fields and `seed`) supplies the `--vllm_*` flags and the seed."""
    if kind == "hf":
        return HFSampler(model, tokenizer, **kwargs)
    if kind == "vllm":
        if args is not None:
            kwargs = {**vllm_options(args), "seed": getattr(args, "seed", 0), **kwargs}
        return VLLMSampler(model_path, renderer=tokenizer, **kwargs)
    raise ValueError(f"--sampler must be 'hf' or 'vllm', got {kind!r}")


# --------------------------------------------------------------------------------------------------
# every rank samples its share


def _lockstep_round(sampler, prompts, images, **kwargs) -> tuple[list[list[Completion]], int]:
    """One lock-step round: ranks swap their prompt counts (and a spare prompt), the short ranks pad
    with repeats of a real prompt (their own, or the first of a rank that has one), every rank
    generates the longest count and drops its padding. Returns (this rank's groups, the longest
    count)."""
    out = [None] * dist.get_world_size()
    dist.all_gather_object(
        out, (len(prompts), (prompts[:1], None if images is None else images[:1]))
    )
    most = max(count for count, _ in out)
    if most == 0:
        return [], 0
    filler_prompts, filler_images = next(spare for count, spare in out if count > 0)
    pad = most - len(prompts)
    padded = list(prompts) + [prompts[-1] if prompts else filler_prompts[0]] * pad
    padded_images = None
    if images is not None or filler_images is not None:
        own = list(images or [])
        padded_images = own + [own[-1] if own else filler_images[0]] * pad
    return sampler.generate(padded, images=padded_images, **kwargs)[: len(prompts)], most


def _lockstep(sampler) -> bool:
    return sampler.lockstep and dist.is_initialized() and dist.get_world_size() > 1


def generate_local(sampler, prompts, images=None, **kwargs) -> list[list[Completion]]:
    """Generate this rank's own prompts (ranks may hold different numbers). An independent sampler
    (vLLM, HF on an unsharded model) just generates; a lock-step one (HF on FSDP2) runs one
    `_lockstep_round`, whose only collective before generating is the count exchange."""
    if not _lockstep(sampler):
        return sampler.generate(prompts, images=images, **kwargs) if prompts else []
    return _lockstep_round(sampler, prompts, images, **kwargs)[0]


def finish_local(sampler, **kwargs):
    """For loops whose number of `generate_local` calls differs across ranks (episodes that end
    early): a rank out of prompts keeps joining the others' lock-step rounds until every rank is.
    Every rank calls it once after its loop; a no-op for independent samplers."""
    if _lockstep(sampler):
        while _lockstep_round(sampler, [], None, **kwargs)[1] > 0:
            pass


def generate_sharded(sampler, prompts, images=None, **kwargs) -> list[list[Completion]]:
    """Every rank generates a contiguous share of the global `prompts` (the same list on every rank)
    and gets all groups back, in prompt order. One process: plain `sampler.generate`."""
    if not (dist.is_initialized() and dist.get_world_size() > 1):
        return sampler.generate(prompts, images=images, **kwargs) if prompts else []
    rank, world = dist.get_rank(), dist.get_world_size()
    per = -(-len(prompts) // world)  # ceil: ranks 0..world-2 take `per`, the last one the rest
    lo, hi = min(rank * per, len(prompts)), min((rank + 1) * per, len(prompts))
    mine = generate_local(
        sampler, prompts[lo:hi], None if images is None else images[lo:hi], **kwargs
    )
    gathered = [None] * world
    dist.all_gather_object(gathered, mine)
    return [group for part in gathered for group in part]
