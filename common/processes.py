"""A second process for an independent part of a CPU run (mstar's and os_genesis's baselines).

The toy models are so small that a second thread barely speeds them up, while the machine has two
cores: a baseline that depends only on files already written (a checkpoint, a data file) and on
the seed can run in a second process beside the main run, on as many threads as the main process,
with the numbers it gives when it runs after it. On GPUs and under torchrun the scripts run it
after, in the same process.
"""

from __future__ import annotations

import multiprocessing
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from contextlib import redirect_stderr, redirect_stdout
from pathlib import Path

import torch


def _logged_call(log: Path, threads: int, fn: Callable, args: tuple):
    torch.set_num_threads(threads)  # float reductions, hence the toy's numbers, depend on it
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "a") as f, redirect_stdout(f), redirect_stderr(f):
        return fn(*args)


def in_second_process(log: Path, fn: Callable, *args) -> Callable[[], object]:
    """Start fn(*args) in a fresh (spawned) interpreter on this process's thread count, its output
    appended to `log`; returns a call that waits for fn's result and re-raises its error. Spawned,
    not forked: a forked child would inherit OpenMP's and torch's state mid-run."""
    print(f"{getattr(fn, '__name__', fn)}: in a second process, its output in {log}", flush=True)
    pool = ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn"))
    future = pool.submit(_logged_call, Path(log), torch.get_num_threads(), fn, args)
    pool.shutdown(wait=False)  # the submitted call goes on; the returned call waits for it
    return future.result
