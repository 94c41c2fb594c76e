"""common/sampling.py against a fake vLLM engine that records its calls (tests/fake_vllm):
in-process construction with the external launcher on the rank's device, token-id prompts, stop ids,
greedy n > 1, sleep/wake order around an update, one full per-tensor push per update; then a 2-rank
gloo run (tests/_vllm_worker.py) and 2-rank runs of bstar, mstar and genius_aco where every rank
samples its share and the gathered count is world x local."""

import json
import sys
from pathlib import Path

import pytest
import torch

from common.models import load_model, load_tokenizer, make_tiny_lm, make_tiny_vlm, stop_token_ids
from common.sampling import (
    VLLMArgs,
    generate_local,
    generate_sharded,
    make_sampler,
    old_logprobs_need_recompute,
    render_prompt,
)

FAKE = Path(__file__).parent / "fake_vllm"
LAUNCH_ENV = ("RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")


@pytest.fixture
def fake_vllm(monkeypatch):
    """Import the fake as `vllm`; start from a plain `python` environment (no torchrun env)."""
    monkeypatch.syspath_prepend(str(FAKE))
    monkeypatch.delitem(sys.modules, "vllm", raising=False)
    for key in LAUNCH_ENV:
        monkeypatch.delenv(key, raising=False)
    yield
    sys.modules.pop("vllm", None)


def _events(sampler, start=0):
    return [c["event"] for c in sampler.llm.calls[start:]]


def test_engine_is_in_process_on_the_rank_device_with_the_flags(fake_vllm):
    args = VLLMArgs(vllm_gpu_memory_utilization=0.55, vllm_max_model_len=256, vllm_sleep=True)
    sampler = make_sampler("vllm", model_path=make_tiny_lm(), args=args)
    init = sampler.llm.calls[0]
    assert init["event"] == "init" and init["device"] == "cuda:0"
    assert init["kwargs"] == {
        "gpu_memory_utilization": 0.55,
        "max_model_len": 256,
        "seed": 0,
        "enable_prefix_caching": True,
        "enable_sleep_mode": True,
        "tensor_parallel_size": 1,
        "distributed_executor_backend": "external_launcher",
    }  # also for one process
    assert (
        init["env"]["RANK"] == "0"
        and init["env"]["WORLD_SIZE"] == "1"
        and init["env"]["MASTER_PORT"]
    )
    assert (
        sampler.llm.llm_engine.model_executor.driver_worker.model_runner.model
        is sampler.llm.engine_model
    )


def test_token_id_prompts_stop_ids_and_greedy_n(fake_vllm):
    path = make_tiny_lm()
    tok = load_tokenizer(path)
    sampler = make_sampler("vllm", model_path=path, tokenizer=tok, args=VLLMArgs(vllm_sleep=False))
    chat = [{"role": "user", "content": "What is 2 + 2?"}]
    out = sampler.generate([chat, "12 + 3 ="], n=3, temperature=0, max_new_tokens=6)
    call = sampler.llm.calls[-1]
    # token ids of the rendered prompt, no special tokens added on top (no second BOS)
    assert call["prompts"] == [
        tok(render_prompt(tok, p), add_special_tokens=False).input_ids for p in (chat, "12 + 3 =")
    ]
    im_end = tok.convert_tokens_to_ids("<|im_end|>")
    assert call["stop_token_ids"] == stop_token_ids(tok) and {tok.eos_token_id, im_end} <= set(
        call["stop_token_ids"]
    )
    assert call["n"] == 1  # vLLM refuses greedy n > 1: one greedy completion, copied
    assert [len(g) for g in out] == [3, 3] and out[0][0].token_ids == out[0][2].token_ids
    assert out[0][0] is not out[0][1]  # copies, not aliases
    sampled = sampler.generate(["12 + 3 ="], n=4, temperature=1.0, max_new_tokens=6)
    assert sampler.llm.calls[-1]["n"] == 4 and len(sampled[0]) == 4
    assert all(len(c.logprobs) == len(c.token_ids) for c in sampled[0])
    assert old_logprobs_need_recompute(sampler, "cpu") and not old_logprobs_need_recompute(
        object(), "cpu"
    )
    assert old_logprobs_need_recompute(object(), "cuda")


def test_sleep_wake_order_and_one_full_push_per_update(fake_vllm):
    path = make_tiny_lm()
    sampler = make_sampler("vllm", model_path=path, args=VLLMArgs())
    model = load_model(path)
    sampler.generate(["1 2"], n=2, max_new_tokens=3)  # awake at start: no wake needed
    for _ in range(2):  # two updates
        start = len(sampler.llm.calls)
        sampler.sleep()
        with torch.no_grad():  # the "update"
            model.lm_head.weight.add_(0.01)
        sampler.sync_weights(model)
        sampler.generate(["1 2"], n=2, max_new_tokens=3)
        calls = sampler.llm.calls[start:]
        events = _events(sampler, start)
        first_load, last_load = (
            events.index("load_weights"),
            len(events) - 1 - events[::-1].index("load_weights"),
        )
        assert events[:2] == ["sleep", "wake_up"] and calls[1]["tags"] == ["weights"]
        assert set(events[first_load : last_load + 1]) == {
            "load_weights"
        }  # per tensor, nothing in between
        assert events[last_load + 1 :] == ["reset_prefix_cache", "wake_up", "generate"]
        assert calls[last_load + 2]["tags"] == ["kv_cache"]
        pushed = [n for c in calls if c["event"] == "load_weights" for n in c["names"]]
        assert sorted(pushed) == sorted(model.state_dict())  # every tensor once
    engine_lm_head = sampler.llm.hf.lm_head.weight
    assert torch.equal(
        engine_lm_head, model.lm_head.weight
    )  # the engine samples from the pushed weights


def test_sleep_disabled_never_sleeps_and_the_fake_refuses_what_vllm_refuses(fake_vllm):
    path = make_tiny_lm()
    sampler = make_sampler("vllm", model_path=path, args=VLLMArgs(vllm_sleep=False))
    sampler.sleep()
    sampler.sync_weights(load_model(path))
    assert "sleep" not in _events(sampler) and "wake_up" not in _events(sampler)
    import vllm

    with pytest.raises(ValueError):
        vllm.SamplingParams(n=2, temperature=0)
    with pytest.raises(TypeError, match="token-id"):
        sampler.llm.generate(["text prompt"], vllm.SamplingParams())
    sampler.llm.sleep()
    with pytest.raises(RuntimeError, match="sleeping"):
        sampler.llm.generate([{"prompt_token_ids": [1, 2]}], vllm.SamplingParams())
    with pytest.raises(AttributeError):  # without the external launcher the model is out of reach
        _ = vllm.LLM(path).llm_engine


class _Recorder:
    """A sampler stand-in: returns one completion per prompt naming the prompt."""

    lockstep = False

    def __init__(self):
        self.calls = []

    def generate(self, prompts, images=None, **kwargs):
        from common.sampling import Completion

        self.calls.append(list(prompts))
        return [[Completion(str(p), [i])] for i, p in enumerate(prompts)]


def test_generate_sharded_and_local_in_one_process():
    rec = _Recorder()
    out = generate_sharded(rec, ["a", "b", "c"], n=1)
    assert [g[0].text for g in out] == ["a", "b", "c"] and rec.calls == [["a", "b", "c"]]
    assert generate_sharded(rec, []) == [] and generate_local(rec, []) == [] and len(rec.calls) == 1


def test_two_rank_gloo_run_pushes_on_every_rank(run_cmd, torchrun_cmd, tmp_path):
    log = tmp_path / "log"
    env = {"FAKE_VLLM_LOG": str(log), "PYTHONPATH": f"{FAKE}:{Path(__file__).parents[1]}"}
    proc = run_cmd(
        [*torchrun_cmd, "tests/_vllm_worker.py", str(tmp_path / "out.json")], timeout=240, env=env
    )
    result = json.loads((tmp_path / "out.json").read_text())
    assert result["gathered"] == 2 * result["local"] == 6, proc.stdout
    assert result["texts"] == sorted(
        set(result["texts"]), key=result["texts"].index
    )  # prompt order, no duplicates
    names = result["state_dict_names"]
    for rank in (0, 1):
        calls = [json.loads(line) for line in (log / f"rank{rank}.jsonl").read_text().splitlines()]
        init = calls[0]
        assert (
            init["env"]["RANK"] == str(rank)
            and init["env"]["WORLD_SIZE"] == "2"
            and init["device"] == f"cuda:{rank}"
        )
        assert (
            init["kwargs"]["distributed_executor_backend"] == "external_launcher"
            and init["kwargs"]["seed"] == rank
        )
        events = [c["event"] for c in calls]
        assert events.count("sleep") == 2 and events.count("reset_prefix_cache") == 2  # two updates
        pushed = [c["names"] for c in calls if c["event"] == "load_weights"]
        assert sorted(n for p in pushed for n in p) == sorted(
            names * 2
        )  # every tensor, once per update, every rank
        gens = [c for c in calls if c["event"] == "generate"]
        assert len(gens) == 3 and all(
            len(g["prompts"]) == 3 for g in gens
        )  # each rank: its 3 of the 6 prompts
    first = [
        [
            json.loads(x)
            for x in (log / f"rank{r}.jsonl").read_text().splitlines()
            if '"generate"' in x
        ][0]
        for r in (0, 1)
    ]
    assert first[0]["prompts"] != first[1]["prompts"]  # distinct shares


def _rank_generations(log: Path) -> dict:
    out = {}
    for rank in (0, 1):
        calls = [json.loads(line) for line in (log / f"rank{rank}.jsonl").read_text().splitlines()]
        out[rank] = [c for c in calls if c["event"] == "generate"]
    return out


# script -> (flags, which generate call of each rank to count, prompts per local query in that call,
# the file holding one gathered record per query of that phase)
SCRIPT_RUNS = {
    "bstar": (
        [
            "--iterations",
            "1",
            "--queries_per_iteration",
            "6",
            "--samples_per_query",
            "2",
            "--sft_steps",
            "2",
            "--batch_size",
            "2",
            "--eval_queries",
            "4",
            "--max_new_tokens",
            "8",
            "--mode",
            "online_rft",
        ],
        1,
        1,
        "samples/iter_01/samples.jsonl",
    ),  # call 0: greedy eval; call 1: k samples of the 6 queries
    "mstar": (
        [
            "--num_iterations",
            "1",
            "--warmup_samples",
            "2",
            "--samples_per_query",
            "2",
            "--max_new_tokens",
            "8",
            "--steps_per_iteration",
            "1",
            "--warmup_steps",
            "1",
            "--eval_k",
            "2",
            "--num_train",
            "8",
            "--num_unlabeled",
            "4",
            "--num_val",
            "2",
            "--num_test",
            "4",
            "--batch_size",
            "4",
            "--val_samples_per_query",
            "2",
            "--temperature_grid",
            "0.5,1.0",
        ],
        2,
        1,
        "samples/warmup.jsonl",
    ),  # calls 0-1: base eval; call 2: warm-up samples of the 8 train rows
    "genius_aco": (
        [
            "--stage",
            "sample",
            "--num_queries",
            "6",
            "--max_step_tokens",
            "6",
            "--max_foresight_tokens",
            "8",
            "--max_completion_tokens",
            "8",
            "--num_steps",
            "2",
        ],
        0,
        2,
        "completions.jsonl",
    ),  # call 0: candidate steps of M=2 beams per query
}


@pytest.mark.parametrize("script", list(SCRIPT_RUNS))
def test_two_rank_scripts_sample_on_every_rank(script, run_cmd, torchrun_cmd, tmp_path):
    flags, call, per_query, records = SCRIPT_RUNS[script]
    log, out = tmp_path / "log", tmp_path / "run"
    env = {"FAKE_VLLM_LOG": str(log), "PYTHONPATH": f"{FAKE}:{Path(__file__).parents[1]}"}
    model = (
        make_tiny_vlm() if script == "mstar" else make_tiny_lm()
    )  # cached: no toy warm start to build
    run_cmd(
        [
            *torchrun_cmd,
            f"{script}.py",
            "--sampler",
            "vllm",
            "--model",
            model,
            "--output_dir",
            str(out),
            *flags,
        ],
        timeout=400,
        env=env,
    )
    gens = _rank_generations(log)
    assert gens[0] and gens[1], "both ranks generate"
    local = [len(gens[r][call]["prompts"]) // per_query for r in (0, 1)]
    assert local[0] == local[1] > 0
    assert len((out / records).read_text().splitlines()) == 2 * local[0]  # gathered = world x local
    assert gens[0][call]["prompts"] != gens[1][call]["prompts"]  # each rank its own share
    samples = {
        r: [c for g in gens[r] if g["temperature"] > 0 for group in g["completions"] for c in group]
        for r in (0, 1)
    }
    assert samples[0] and samples[1] and samples[0] != samples[1]  # distinct samples
