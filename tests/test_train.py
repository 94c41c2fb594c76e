"""common/train.py: checkpoint kill + resume, FSDP2 on 2 gloo ranks, log-probs, SFT loss,
metrics."""

import json
import signal
import subprocess
import sys
import time

import pytest
import torch
from conftest import OFFLINE_ENV, ROOT

from common.models import load_model, make_tiny_lm
from common.train import (
    MetricsLogger,
    format_table,
    make_scheduler,
    pad_batch,
    sft_loss,
    token_logprobs,
)


def _params_equal(a, b, atol=0.0):
    assert a.keys() == b.keys()
    for k in a:
        assert torch.allclose(a[k].float(), b[k].float(), atol=atol, rtol=0), k


def test_resume_after_sigkill_matches_uninterrupted_run(tmp_path, run_cmd):
    full, killed = tmp_path / "full", tmp_path / "killed"
    run_cmd([sys.executable, "tests/_ckpt_worker.py", str(full), "--steps", "6"])
    env = {**__import__("os").environ, **OFFLINE_ENV, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen(
        [sys.executable, "tests/_ckpt_worker.py", str(killed), "--steps", "6", "--hang-after", "4"],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        text=True,
    )
    deadline = time.time() + 120
    while time.time() < deadline and not (killed / "ckpt" / "meta.json").exists():
        time.sleep(0.2)
    time.sleep(1.0)  # now past the step-3 checkpoint and hanging after step 4
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL
    assert json.loads((killed / "ckpt" / "meta.json").read_text())["step"] == 3
    assert not (killed / "final.pt").exists()
    run_cmd([sys.executable, "tests/_ckpt_worker.py", str(killed), "--steps", "6", "--resume"])
    _params_equal(torch.load(full / "final.pt"), torch.load(killed / "final.pt"))


def test_fsdp2_two_ranks_match_single_process(tmp_path, run_cmd, torchrun_cmd):
    run_cmd([*torchrun_cmd, "tests/_fsdp_worker.py", str(tmp_path / "two.pt"), "3"], timeout=300)
    run_cmd([sys.executable, "tests/_fsdp_worker.py", str(tmp_path / "one.pt"), "3"])
    _params_equal(torch.load(tmp_path / "two.pt"), torch.load(tmp_path / "one.pt"), atol=1e-5)


@pytest.fixture(scope="module")
def tiny():
    return load_model(make_tiny_lm())


def test_pad_batch_masks_and_logprobs_align(tiny):
    ids, att, comp = pad_batch([[5, 6, 7], [8]], [[9, 10], [11, 12, 13]], pad_id=0)
    assert ids.tolist() == [[5, 6, 7, 9, 10], [8, 11, 12, 13, 0]]
    assert att.tolist() == [[1, 1, 1, 1, 1], [1, 1, 1, 1, 0]]
    assert comp.tolist() == [[0, 0, 0, 1, 1], [0, 1, 1, 1, 0]]
    lp, ent = token_logprobs(tiny, ids, att, return_entropy=True)
    assert lp.shape == ent.shape == (2, 4)
    logits = tiny(input_ids=ids, attention_mask=att).logits
    ref = torch.log_softmax(logits[0, 2].float(), -1)[9]  # position 2 predicts token 9
    assert torch.allclose(lp[0, 2], ref, atol=1e-5)
    assert (ent >= 0).all() and (
        ent <= torch.log(torch.tensor(float(logits.shape[-1]))) + 1e-4
    ).all()


def test_sft_loss_ignores_prompt_tokens(tiny):
    ids, att, comp = pad_batch([[5, 6, 7]], [[9, 10]], pad_id=0)
    lp = token_logprobs(tiny, ids, att)
    expected = -(lp[0, 2] + lp[0, 3]) / 2
    assert torch.allclose(sft_loss(tiny, ids, att, comp), expected, atol=1e-6)


def test_metrics_logger_jsonl_plot_and_resume_truncation(tmp_path):
    log = MetricsLogger(tmp_path)
    for step in range(1, 6):
        log.log({"reward": step / 10, "loss": 1.0 / step}, step=step)
    png = log.plot(["reward", "loss"])
    assert (tmp_path / "metrics.jsonl").exists() and png.endswith(".png")
    resumed = MetricsLogger(tmp_path, resume_step=3)
    assert [r["step"] for r in resumed.history] == [1, 2, 3]
    table = format_table([{"step": 1, "acc": 0.5}, {"step": 2, "acc": 0.75}])
    assert "| acc" in table and "0.750" in table


def test_make_scheduler_passes_schedule_kwargs():
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    sched = make_scheduler(
        opt, "cosine_with_min_lr", warmup_steps=0, total_steps=10, min_lr_rate=0.1
    )
    for _ in range(10):
        opt.step(), sched.step()
    assert sched.get_last_lr()[0] == pytest.approx(0.1)
