"""The program each function runs inside the sandbox to collect its I/O pairs (codeio.py's "io"
stage): the release's loop and size filter (hkust-nlp/CodeIO src/parse_gen_ios.py and
src/codeio_utils.py), sent as source text (`IO_HELPERS`) after `IMPORT_PREFIX` and the function's
own code, so it runs with the sandbox's isolation, never in this process.
"""

import inspect


def object_size(obj, _seen: set | None = None) -> int:
    """Bytes of obj and all it holds (pympler.asizeof stand-in: 8-byte aligned, shared once)."""
    import sys

    seen = set() if _seen is None else _seen
    if id(obj) in seen:
        return 0
    seen.add(id(obj))
    size = (sys.getsizeof(obj) + 7) // 8 * 8
    if isinstance(obj, dict):
        size += sum(object_size(k, seen) + object_size(v, seen) for k, v in obj.items())
    elif isinstance(obj, (list, tuple, set, frozenset)):
        size += sum(object_size(x, seen) for x in obj)
    return size


def strict_check_size(obj) -> bool:
    """The release's size filter (src/codeio_utils.py), on every element and dict key: < 1024 B
    in total, containers < 20 items, strings < 100 characters, any other leaf < 128 B."""
    if object_size(obj) >= 1024:
        return False
    if isinstance(obj, dict):
        items = [x for kv in obj.items() for x in kv]
        return len(obj) < 20 and all(strict_check_size(x) for x in items)
    if isinstance(obj, (list, tuple, set, frozenset)):
        return len(obj) < 20 and all(strict_check_size(x) for x in obj)
    if isinstance(obj, str):
        return len(obj) < 100
    return object_size(obj) < 128


def collect_io_pairs(max_calls: int, max_pairs: int, seed: int, recheck: bool = True) -> dict:
    """The release's I/O loop, run INSIDE the sandbox after the function's code: call
    input_generator() up to max_calls times, keep unique inputs whose input and output pass the
    size filter and whose output is not None; stop at max_pairs. Each candidate runs main_solution
    once, as in the release; with `recheck` each kept input runs once more and a changed output
    counts as "nondeterministic" (the paper's exclusion of functions that use randomness)."""
    import json
    import random

    random.seed(seed)
    np.random.seed(seed % 2**32)  # noqa: F821 (np comes from IMPORT_PREFIX in the sandbox)
    pairs, seen, stats = [], set(), {}
    for _ in range(max_calls):
        if len(pairs) >= max_pairs:
            break
        try:
            kwargs = input_generator()  # noqa: F821 (defined by the function's code)
            key = json.dumps(kwargs, sort_keys=True)
            reason = "duplicate" if key in seen else None
            seen.add(key)
            if reason is None and not (isinstance(kwargs, dict) and strict_check_size(kwargs)):
                reason = "too_large"
            if reason is None:  # a fresh copy: a function mutating its arguments keeps the input
                output = json.loads(json.dumps(main_solution(**json.loads(key))))  # noqa: F821
                if output is None:
                    reason = "none_output"
                elif not strict_check_size(output):
                    reason = "too_large"
        except Exception as error:  # generator or function raised, or a value is not JSON
            reason = type(error).__name__
        stats[reason or "kept"] = stats.get(reason or "kept", 0) + 1
        if reason is None:
            pairs.append({"input": json.loads(key), "output": output})
    for pair in pairs if recheck else []:
        try:
            again = json.dumps(main_solution(**json.loads(json.dumps(pair["input"]))))  # noqa: F821
        except Exception:
            again = None
        if again != json.dumps(pair["output"]):
            stats["nondeterministic"] = stats.get("nondeterministic", 0) + 1
    return {"pairs": pairs, "stats": stats}


IO_HELPERS = "\n\n".join(
    inspect.getsource(f) for f in (object_size, strict_check_size, collect_io_pairs)
)
IMPORT_PREFIX = """\
import json, math, random, re, string, heapq, bisect, copy, itertools, functools, operator
import collections, statistics, fractions, decimal, datetime, typing
from collections import Counter, defaultdict, deque, OrderedDict
from functools import lru_cache, reduce
from itertools import permutations, combinations, product, accumulate
from typing import List, Dict, Tuple, Optional, Any
import numpy as np"""
