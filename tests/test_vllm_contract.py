"""The vLLM API that common/sampling.py (VLLMSampler) relies on, checked against the installed vllm.

Skipped when vllm is absent (the CPU venv). On a CPU machine only the import works, so this checks
signatures, dataclass fields and the in-process path to the model, not behaviour; docs/gpu.md says
where it ran and with which version. Run it in the side venv:
    /work/vllm-venv/bin/python -m pytest -q tests/test_vllm_contract.py
"""

import dataclasses
import inspect
import typing
from pathlib import Path

import pytest

vllm = pytest.importorskip("vllm")
FAKE = Path(__file__).parent / "fake_vllm" / "vllm" / "__init__.py"


def _params(fn) -> dict:
    return dict(inspect.signature(fn).parameters)


def test_llm_constructor_keywords():
    from vllm.engine.arg_utils import EngineArgs

    direct = _params(vllm.LLM.__init__)
    for name in ("model", "seed", "gpu_memory_utilization", "tensor_parallel_size"):
        assert name in direct, f"LLM({name}=...) is gone"
    assert inspect.Parameter.VAR_KEYWORD in {
        p.kind for p in direct.values()
    }  # the rest goes to EngineArgs
    engine_fields = {f.name for f in dataclasses.fields(EngineArgs)}
    for name in (
        "max_model_len",
        "enable_prefix_caching",
        "enable_sleep_mode",
        "distributed_executor_backend",
    ):
        assert name in engine_fields, f"EngineArgs.{name} is gone"


def test_external_launcher_runs_in_process_and_reads_the_torchrun_env():
    from vllm.config import parallel
    from vllm.v1.executor import uniproc_executor

    assert "external_launcher" in typing.get_args(parallel.DistributedExecutorBackend)
    # the launcher switches V1 multiprocessing off, so LLMEngine keeps the executor in this process
    assert 'os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"' in inspect.getsource(
        parallel.ParallelConfig
    )
    source = inspect.getsource(uniproc_executor.ExecutorWithExternalLauncher)
    for var in ("RANK", "LOCAL_RANK"):
        assert f'os.environ["{var}"]' in source


def test_weight_loading_path():
    """llm.llm_engine.model_executor.driver_worker.model_runner.model.load_weights([(name, t)])."""
    from vllm.model_executor.models.qwen2 import Qwen2ForCausalLM
    from vllm.v1.engine.llm_engine import LLMEngine
    from vllm.v1.executor.uniproc_executor import UniProcExecutor
    from vllm.v1.worker import gpu_worker, worker_base

    assert "self.model_executor = self.engine_core.engine_core.model_executor" in inspect.getsource(
        LLMEngine
    )
    assert "self.driver_worker = WorkerWrapperBase(" in inspect.getsource(UniProcExecutor)
    assert "return getattr(self.worker, attr)" in inspect.getsource(
        worker_base.WorkerWrapperBase.__getattr__
    )
    assert "self.model_runner" in inspect.getsource(gpu_worker.Worker)
    assert list(_params(Qwen2ForCausalLM.load_weights)) == ["self", "weights"]


def test_llm_methods():
    gen = _params(vllm.LLM.generate)
    assert (
        list(gen)[:3] == ["self", "prompts", "sampling_params"]
        and gen["use_tqdm"].kind == inspect.Parameter.KEYWORD_ONLY
    )
    assert _params(vllm.LLM.sleep)["level"].default == 1
    assert "tags" in _params(vllm.LLM.wake_up)
    assert list(_params(vllm.LLM.reset_prefix_cache))[0] == "self"
    assert callable(vllm.LLM.get_tokenizer) and callable(vllm.LLM.collective_rpc)


def test_sampling_params_fields_and_greedy_n():
    fields = set(_params(vllm.SamplingParams))
    for name in (
        "n",
        "temperature",
        "top_p",
        "max_tokens",
        "stop",
        "stop_token_ids",
        "include_stop_str_in_output",
        "logprobs",
    ):
        assert name in fields, f"SamplingParams.{name} is gone"
    vllm.SamplingParams(
        n=4,
        temperature=1.0,
        top_p=0.9,
        max_tokens=8,
        stop=["\n"],
        stop_token_ids=[2],
        include_stop_str_in_output=True,
        logprobs=0,
    )
    with pytest.raises(
        Exception, match="greedy"
    ):  # why VLLMSampler copies one greedy completion n times
        vllm.SamplingParams(n=2, temperature=0)


def test_prompt_and_output_shapes():
    from vllm.inputs import TokensPrompt
    from vllm.logprobs import Logprob
    from vllm.outputs import CompletionOutput, RequestOutput

    keys = typing.get_type_hints(TokensPrompt)
    assert "prompt_token_ids" in keys and "multi_modal_data" in keys
    out_fields = _params(CompletionOutput)
    for name in ("text", "token_ids", "logprobs", "finish_reason"):
        assert name in out_fields
    assert "outputs" in _params(RequestOutput)
    assert "logprob" in {f.name for f in dataclasses.fields(Logprob)}


def test_the_fake_engine_matches_the_real_surface():
    """tests/fake_vllm mirrors what the sampler calls; its keywords exist on the real classes."""
    import ast

    tree = ast.parse(FAKE.read_text())
    fake = {node.name: node for node in tree.body if isinstance(node, ast.ClassDef)}
    for method in (
        "get_tokenizer",
        "sleep",
        "wake_up",
        "reset_prefix_cache",
        "generate",
        "collective_rpc",
    ):
        fn = next(
            n for n in fake["LLM"].body if isinstance(n, ast.FunctionDef) and n.name == method
        )
        real = _params(getattr(vllm.LLM, method))
        for arg in fn.args.args[1:]:
            assert arg.arg in real, f"fake LLM.{method}({arg.arg}) is not a vllm keyword"
    sp_fields = [n.target.id for n in fake["SamplingParams"].body if isinstance(n, ast.AnnAssign)]
    assert set(sp_fields) <= set(_params(vllm.SamplingParams))
