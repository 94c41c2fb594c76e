"""Shared test set-up: everything offline, scripts run as subprocesses from the repository root."""

import os
import subprocess
import sys
import warnings
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
OFFLINE_ENV = {
    "HF_HUB_OFFLINE": "1",
    "HF_DATASETS_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
    "TOKENIZERS_PARALLELISM": "false",
    # idle OpenMP threads sleep instead of spinning: on a busy 2-core machine spinning
    # threads slowed a training step about 8x (same results either way)
    "OMP_WAIT_POLICY": "PASSIVE",
}
os.environ.update(OFFLINE_ENV)
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))


def _gloo_teardown_abort(cmd: list[str], proc: subprocess.CompletedProcess) -> bool:
    """A torchrun child that std::terminate'd while the interpreter shut down, after its work:
    gloo's worker threads can outlive destroy_process_group while FSDP2 objects still hold the
    group, and abort at interpreter finalization (pytorch/pytorch PR #179291 describes it; seen
    twice in this project's two-rank runs, in CI and locally). A warning, not a test failure."""
    aborted = "terminate called without an active exception" in proc.stderr
    if not (aborted and "torch.distributed.run" in cmd):
        return False
    message = f"{' '.join(cmd)}: a rank aborted at interpreter exit (gloo teardown)"
    warnings.warn(message, stacklevel=2)
    return True


def _run(
    cmd: list[str], timeout: float = 300, env: dict | None = None
) -> subprocess.CompletedProcess:
    """Run a command from the repository root with the offline environment; fail with its output."""
    full_env = {**os.environ, **OFFLINE_ENV, "PYTHONPATH": str(ROOT), **(env or {})}
    # the timeouts catch hangs, not slowness: a cold toy-model cache on a busy 2-core machine can
    # take several times an idle run's time (NANOREASON_TIMEOUT_SCALE, default 3)
    timeout = timeout * float(os.environ.get("NANOREASON_TIMEOUT_SCALE", "3"))
    proc = subprocess.run(
        cmd, cwd=ROOT, env=full_env, capture_output=True, text=True, timeout=timeout
    )
    if proc.returncode != 0 and _gloo_teardown_abort(cmd, proc):
        return proc  # the work is done; the caller's checks of the outputs still apply
    if proc.returncode != 0:
        raise AssertionError(
            f"{' '.join(cmd)} exited {proc.returncode}\n--- stdout ---\n{proc.stdout[-4000:]}\n--- "
            f"stderr ---\n{proc.stderr[-4000:]}"
        )
    return proc


@pytest.fixture
def run_cmd():
    """run_cmd([sys.executable, "zero_rl.py", "--total-steps", "2"], timeout=...) ->
    CompletedProcess."""
    return _run


@pytest.fixture
def torchrun_cmd():
    """The command prefix for a 2-process gloo run: [*torchrun_cmd, "script.py", ...]."""
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
