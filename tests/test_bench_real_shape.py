"""bench/real_shape.py and bench/gpu_check.py at 2 layers: the real Qwen2.5-0.5B shape (vocab
151,936, tied embeddings, GQA) through the paper-preset code path (checkpointing, chunked log-probs,
micro-batches) runs and gives finite losses; gpu_check's dry run on the CPU writes its JSON."""

import json
import sys


def test_real_shape_two_layers(run_cmd, tmp_path):
    out = tmp_path / "real_shape.json"
    proc = run_cmd(
        [
            sys.executable,
            "bench/real_shape.py",
            "--layers",
            "2",
            "--prompts",
            "1",
            "--group",
            "2",
            "--prompt_len",
            "8",
            "--response_len",
            "8",
            "--sft_batch",
            "3",
            "--json",
            str(out),
        ],
        timeout=900,
    )
    print(proc.stdout)
    result = json.loads(out.read_text())
    assert result["layers"] == 2 and result["finite"]
    assert (
        result["params"] == 151_936 * 896 + 2 * 14_912_384 + 896
    )  # tied embedding + 2 blocks + final norm
    phases = [r["phase"] for r in result["phases"]]
    assert phases == [
        "build/policy",
        "build/reference",
        "zero_rl/generate",
        "zero_rl/old_logprobs",
        "zero_rl/ref_logprobs",
        "zero_rl/forward_backward",
        "zero_rl/optimizer_step",
        "bstar/sft_step",
    ]


def test_gpu_check_dry_run_on_cpu_writes_json(run_cmd, tmp_path):
    proc = run_cmd(
        [
            sys.executable,
            "bench/gpu_check.py",
            "--device",
            "cpu",
            "--layers",
            "2",
            "--sizes",
            "0.5B",
            "--prompts",
            "1",
            "--group",
            "2",
            "--prompt_len",
            "8",
            "--response_len",
            "8",
            "--sft_batch",
            "2",
            "--micro_batch_size",
            "2",
            "--no_ref",
            "--out_dir",
            str(tmp_path),
        ],
        timeout=900,
    )
    print(proc.stdout)
    report = json.loads((tmp_path / "gpu_check-cpu.json").read_text())
    assert [r["algo"] for r in report["runs"]] == ["zero_rl", "bstar", "genius_aco"]
    assert all(
        r["tokens_per_s"] > 0 and r["mfu"] is None for r in report["runs"]
    )  # no GPU peak on the CPU
    assert all(abs(r["loss"]) < 1e6 for r in report["runs"])
