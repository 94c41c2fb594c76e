"""One way to build and cache a toy base model (the warm-started "base" of each CPU demo).

`toy_model(kind, spec, build, code=...)` builds once into `cache_dir()/<kind>-<hash>` and reuses the
folder afterwards. The hash covers the inputs (`spec`), the source of `build` and of every function
in `code` (e.g. the demo-data generator), and the training plumbing in `common/models.py` and
`common/train.py`: edit any of them and the next run builds a fresh base instead of silently reusing
a stale one. Building runs on a fixed thread count (the same weights on every machine) and restores
the caller's RNG and thread state afterwards.
"""

from __future__ import annotations

import hashlib
import inspect
import json
import random
from pathlib import Path

import numpy as np
import torch

from common import models

_PLUMBING = [Path(models.__file__), Path(models.__file__).with_name("train.py")]


def code_digest(functions=(), files=()) -> str:
    """sha1 of the source of `functions` and the text of `files`."""
    h = hashlib.sha1()
    for fn in functions:
        h.update(inspect.getsource(fn).encode())
    for path in files:
        h.update(Path(path).read_bytes())
    return h.hexdigest()


def toy_model(kind: str, spec: dict, build, code=()) -> str:
    """Return the folder of a cached toy model, building it with `build(folder)` when missing.

    `spec`: every input of the build (JSON-serialisable); `code`: the functions `build` relies on
    besides itself (data generators, demo writers), so that editing them rebuilds the model.
    """
    digest = code_digest([build, *code], _PLUMBING)
    full_spec = {**spec, "code": digest}
    key = hashlib.sha1(json.dumps(full_spec, sort_keys=True, default=str).encode()).hexdigest()[:10]
    target = models.cache_dir() / f"{kind}-{key}"
    if (target / "config.json").exists():
        print(f"reusing toy model {target}")
        return str(target)
    py_state = random.getstate()
    np_state = np.random.get_state()
    torch_state = torch.random.get_rng_state()
    try:
        return models._cached_build(kind, full_spec, str(target), build)
    finally:
        random.setstate(py_state)
        np.random.set_state(np_state)
        torch.random.set_rng_state(torch_state)
