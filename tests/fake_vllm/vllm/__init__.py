"""A fake `vllm` for tests: the surface of vLLM's offline `LLM` that common/sampling.py uses, on
CPU.

Put `tests/fake_vllm` first on PYTHONPATH and `--sampler vllm` runs against this module. It behaves
like vLLM where the sampler depends on it and refuses what vLLM refuses:
- the model is reachable in-process
  (`llm.llm_engine.model_executor.driver_worker.model_runner.model`) only with
  `distributed_executor_backend="external_launcher"`, which needs the torchrun environment;
- prompts must be token-id prompts (`{"prompt_token_ids": [...]}`, optional `multi_modal_data`);
- greedy (temperature 0) with n > 1 is refused; a sleeping engine cannot generate, and a sleeping
  engine's weights cannot be loaded before `wake_up(tags=["weights"])`. It generates with the real
  (tiny) HF model from the model path, so pushed weights change its samples. Every call is appended
  to `$FAKE_VLLM_LOG/rank{RANK}.jsonl` when FAKE_VLLM_LOG is set, and kept in `llm.calls`."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import torch

__version__ = "0.0.0+fake"


@dataclass
class SamplingParams:
    n: int = 1
    temperature: float = 1.0
    top_p: float = 1.0
    max_tokens: int | None = 16
    stop: list[str] | None = None
    stop_token_ids: list[int] | None = None
    include_stop_str_in_output: bool = False
    logprobs: int | None = None
    seed: int | None = None

    def __post_init__(self):
        if self.temperature < 1e-5 and self.n > 1:
            raise ValueError(f"n must be 1 when using greedy sampling, got {self.n}.")


@dataclass
class Logprob:
    logprob: float
    rank: int | None = None
    decoded_token: str | None = None


@dataclass
class CompletionOutput:
    index: int
    text: str
    token_ids: list[int]
    cumulative_logprob: float | None
    logprobs: list[dict] | None
    finish_reason: str | None = None


@dataclass
class RequestOutput:
    request_id: str
    prompt: str | None
    prompt_token_ids: list[int]
    outputs: list[CompletionOutput] = field(default_factory=list)


class _Runner:
    def __init__(self, model):
        self.model = model


class _Worker:
    def __init__(self, model):
        self.model_runner = _Runner(model)


class _Executor:
    def __init__(self, model):
        self.driver_worker = _Worker(model)


class _Engine:
    def __init__(self, model):
        self.model_executor = _Executor(model)


class _EngineModel(torch.nn.Module):
    """The engine's copy of the model, with vLLM's `load_weights(iterable of (name, tensor))`."""

    def __init__(self, hf_model, log):
        super().__init__()
        self.hf = hf_model
        self.log = log
        self.awake = lambda: True

    def load_weights(self, weights):
        if not self.awake():
            raise RuntimeError(
                "load_weights on sleeping weights: call wake_up(tags=['weights']) first"
            )
        params = dict(self.hf.state_dict(keep_vars=True))
        loaded = set()
        for name, tensor in weights:
            if name not in params:
                raise KeyError(f"fake vllm: no weight named {name!r}")
            if getattr(tensor, "_local_tensor", None) is not None:
                raise TypeError(f"fake vllm: {name} is a DTensor shard; push tensor.full_tensor()")
            with torch.no_grad():
                params[name].copy_(tensor.to(params[name].dtype))
            loaded.add(name)
        self.log("load_weights", names=sorted(loaded))
        return loaded


class LLM:
    def __init__(self, model: str, **kwargs):
        from common.models import load_model, load_processor, load_tokenizer

        self.calls: list[dict] = []
        self.kwargs = kwargs
        self.seed = kwargs.get("seed", 0)
        self.env = {
            k: os.environ.get(k)
            for k in ("RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")
        }
        backend = kwargs.get("distributed_executor_backend")
        if backend == "external_launcher" and None in self.env.values():
            raise RuntimeError(f"external_launcher needs the torchrun environment, got {self.env}")
        if (
            torch.distributed.is_initialized()
            and int(self.env["WORLD_SIZE"]) != torch.distributed.get_world_size()
        ):
            raise RuntimeError("WORLD_SIZE differs from the initialised process group")
        cfg = json.loads((Path(model) / "config.json").read_text())
        self.vlm = "vision_config" in cfg
        self.hf = load_model(model, vlm=self.vlm).eval()
        self.processor = load_processor(model) if self.vlm else None
        self._tokenizer = self.processor.tokenizer if self.vlm else load_tokenizer(model)
        self.asleep: set[str] = set()
        self.engine_model = _EngineModel(self.hf, self._log)
        self.engine_model.awake = lambda: "weights" not in self.asleep
        if backend == "external_launcher":  # in-process executor: the worker's model is reachable
            self.llm_engine = _Engine(self.engine_model)
        self._log(
            "init",
            model=model,
            kwargs={
                k: v
                for k, v in kwargs.items()
                if isinstance(v, (int, float, str, bool, type(None)))
            },
            env=self.env,
            device=f"cuda:{self.env['LOCAL_RANK']}",
        )

    def _log(self, event: str, **info):
        rec = {"event": event, **info}
        self.calls.append(rec)
        folder = os.environ.get("FAKE_VLLM_LOG")
        if folder:
            Path(folder).mkdir(parents=True, exist_ok=True)
            with open(Path(folder) / f"rank{os.environ.get('RANK', '0')}.jsonl", "a") as f:
                f.write(json.dumps(rec) + "\n")

    def get_tokenizer(self):
        return self._tokenizer

    def sleep(self, level: int = 1):
        self.asleep = {"weights", "kv_cache"}
        self._log("sleep", level=level)

    def wake_up(self, tags: list[str] | None = None):
        tags = tags or ["weights", "kv_cache"]
        self.asleep -= set(tags)
        self._log("wake_up", tags=list(tags))

    def reset_prefix_cache(self):
        self._log("reset_prefix_cache")
        return True

    def collective_rpc(self, method, args=(), kwargs=None):
        raise NotImplementedError("the fake engine has no workers to call")

    def _model_inputs(self, prompt: dict) -> dict:
        ids = prompt["prompt_token_ids"]
        if self.vlm and "multi_modal_data" in prompt:
            text = self._tokenizer.decode(ids)
            return dict(
                self.processor(
                    text=[text], images=[prompt["multi_modal_data"]["image"]], return_tensors="pt"
                )
            )
        return {
            "input_ids": torch.tensor([ids]),
            "attention_mask": torch.ones(1, len(ids), dtype=torch.long),
        }

    @torch.no_grad()
    def _sample(
        self, inputs: dict, params: SamplingParams, gen: torch.Generator
    ) -> CompletionOutput:
        ids, extra = (
            inputs["input_ids"],
            {k: v for k, v in inputs.items() if k not in ("input_ids", "attention_mask")},
        )
        out, lps = [], []
        reason = "length"
        for _ in range(params.max_tokens):
            seq = torch.cat([ids, torch.tensor([out], dtype=torch.long).view(1, -1)], dim=1)
            logits = (
                self.hf(input_ids=seq, attention_mask=torch.ones_like(seq), **extra)
                .logits[0, -1]
                .float()
            )
            logp = torch.log_softmax(logits, -1)
            if params.temperature < 1e-5:
                tok = int(logits.argmax())
            else:
                tok = int(
                    torch.multinomial(
                        torch.softmax(logits / params.temperature, -1), 1, generator=gen
                    )
                )
            out.append(tok)
            lps.append({tok: Logprob(float(logp[tok]))})
            if tok in (params.stop_token_ids or []):
                reason = "stop"
                break
            if params.stop and any(s in self._tokenizer.decode(out) for s in params.stop):
                reason = "stop"
                break
        text = self._tokenizer.decode(out, skip_special_tokens=True)
        return CompletionOutput(
            0, text, out, sum(next(iter(d.values())).logprob for d in lps), lps, reason
        )

    def generate(
        self, prompts, sampling_params: SamplingParams | None = None, use_tqdm: bool = True
    ):
        if self.asleep:
            raise RuntimeError(f"generate on a sleeping engine ({sorted(self.asleep)} asleep)")
        params = sampling_params or SamplingParams()
        for p in prompts:
            if not (isinstance(p, dict) and "prompt_token_ids" in p):
                raise TypeError(f"fake vllm: expected token-id prompts, got {type(p).__name__}")
        gen = torch.Generator().manual_seed(self.seed * 1_000_003 + len(self.calls))
        results = []
        for i, p in enumerate(prompts):
            inputs = self._model_inputs(p)
            outs = [self._sample(inputs, params, gen) for _ in range(params.n)]
            for j, o in enumerate(outs):
                o.index = j
            results.append(RequestOutput(str(i), None, list(p["prompt_token_ids"]), outs))
        self._log(
            "generate",
            prompts=[p["prompt_token_ids"] for p in prompts],
            n=params.n,
            temperature=params.temperature,
            stop_token_ids=params.stop_token_ids,
            stop=params.stop,
            completions=[[o.token_ids for o in r.outputs] for r in results],
        )
        return results
