"""Benchmark: CodeI/O-style verification executions, common.sandbox vs a naive subprocess per call.

Each execution runs a small reference function (algorithms, strings, math, numpy) on one kwargs
dict, prefixed by the import block the CodeI/O verifier puts in front of every program
(hkust-nlp/CodeIO: src/codeio_utils.py, solution_prefix; abridged), and compares the JSON result
with the expected value (computed here, in process, from the same trusted source). Both sides use
the same limits (wall timeout, CPU time, address space, output size), an empty environment, a fresh
temporary working directory, and the same number of parallel workers.

    naive:   subprocess.run([sys.executable, "-c", prefix + code + call], preexec_fn=<rlimits>,
             start_new_session=True, env={}, cwd=<fresh tmp dir>, timeout=...) per execution
             (what the release does, plus rlimits; no namespace, filesystem or network isolation)
    sandbox: Sandbox(workers=W).call_many(...): pre-forked zygotes with the imports loaded, at the
             isolation the machine allows (printed: "full" = bubblewrap namespaces + seccomp)

Command (2 workers, 500 executions, median of 3 repetitions each):
    python bench/sandbox.py
    python bench/sandbox.py --executions 500 --repeats 5 --workers 4
"""

from __future__ import annotations

import argparse
import json
import random
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from common.sandbox import Sandbox  # noqa: E402

IMPORT_PREFIX = """\
import json, math, random, re, string, heapq, bisect, copy, itertools, functools, operator
import collections, statistics, fractions, decimal, datetime, typing, dataclasses
from collections import Counter, defaultdict, deque, OrderedDict
from functools import lru_cache, reduce
from itertools import permutations, combinations, product, accumulate
from typing import List, Dict, Tuple, Optional
import numpy as np
"""

FUNCTIONS = {  # name -> (source of main_solution, kwargs generator)
    "josephus": (
        "def main_solution(n, m):\n    last = 0\n    for i in range(2, n + 1):\n"
        "        last = (last + m) % i\n    return last",
        lambda r: {"n": r.randint(1, 500), "m": r.randint(1, 20)},
    ),
    "word_stats": (
        "def main_solution(text):\n    words = re.findall(r'[a-z]+', text.lower())\n"
        "    counts = Counter(words)\n    top = sorted(counts.items(), key=lambda kv: (-kv[1], "
        "kv[0]))[:3]\n"
        "    return {'n_words': len(words), 'top': [w for w, _ in top]}",
        lambda r: {
            "text": " ".join(
                r.choice(["apple", "kiwi", "fig", "plum", "pear"]) for _ in range(r.randint(1, 30))
            )
        },
    ),
    "matrix_power_trace": (
        "def main_solution(matrix, power):\n    a = np.array(matrix, dtype=float)\n"
        "    return round(float(np.trace(np.linalg.matrix_power(a, power))), 6)",
        lambda r: {
            "matrix": [[r.randint(-3, 3) for _ in range(3)] for _ in range(3)],
            "power": r.randint(1, 5),
        },
    ),
    "collatz": (
        "def main_solution(start):\n    steps = 0\n    while start != 1:\n"
        "        start = start // 2 if start % 2 == 0 else 3 * start + 1\n        steps += 1\n    "
        "return steps",
        lambda r: {"start": r.randint(1, 10**6)},
    ),
    "roman": (
        "def main_solution(number):\n    table = [(1000, 'M'), (900, 'CM'), (500, 'D'), (400, "
        "'CD'), (100, 'C'),"
        " (90, 'XC'), (50, 'L'), (40, 'XL'), (10, 'X'), (9, 'IX'), (5, 'V'), (4, 'IV'), (1, 'I')]\n"
        "    out = ''\n    for value, letters in table:\n        while number >= value:\n"
        "            out += letters\n            number -= value\n    return out",
        lambda r: {"number": r.randint(1, 3999)},
    ),
    "dijkstra": (
        "def main_solution(edges, source, target):\n    graph = defaultdict(list)\n"
        "    for u, v, w in edges:\n        graph[u].append((v, w))\n        graph[v].append((u, "
        "w))\n"
        "    dist = {source: 0}\n    heap = [(0, source)]\n    while heap:\n        d, u = "
        "heapq.heappop(heap)\n"
        "        if d > dist.get(u, math.inf):\n            continue\n        for v, w in "
        "graph[u]:\n"
        "            if d + w < dist.get(v, math.inf):\n                dist[v] = d + w\n"
        "                heapq.heappush(heap, (d + w, v))\n    return dist.get(target, -1)",
        lambda r: {
            "edges": [[r.randint(0, 7), r.randint(0, 7), r.randint(1, 9)] for _ in range(12)],
            "source": 0,
            "target": r.randint(1, 7),
        },
    ),
    "lis_length": (
        "def main_solution(sequence):\n    tails = []\n    for x in sequence:\n"
        "        i = bisect.bisect_left(tails, x)\n        tails[i:i + 1] = [x]\n    return "
        "len(tails)",
        lambda r: {"sequence": [r.randint(0, 50) for _ in range(r.randint(1, 19))]},
    ),
    "mean_std": (
        "def main_solution(values):\n    return {'mean': round(statistics.mean(values), 4),"
        " 'std': round(statistics.pstdev(values), 4)}",
        lambda r: {"values": [round(r.uniform(-10, 10), 2) for _ in range(r.randint(1, 15))]},
    ),
}


def naive_limits(timeout: float, memory_mb: int, max_output: int):
    def apply():  # runs in the child before exec: the same rlimits the sandbox sets
        cpu = int(timeout) + 1
        resource.setrlimit(resource.RLIMIT_CPU, (cpu, cpu + 1))
        resource.setrlimit(
            resource.RLIMIT_AS, ((memory_mb + 512) << 20,) * 2
        )  # + interpreter & numpy
        resource.setrlimit(resource.RLIMIT_FSIZE, (max_output, max_output))
        resource.setrlimit(resource.RLIMIT_CORE, (0, 0))

    return apply


def naive_call(source: str, kwargs: dict, timeout: float, memory_mb: int, max_output: int):
    script = (
        IMPORT_PREFIX + source + "\nimport json as _json, sys as _sys\n"
        f"_sys.stdout.write(_json.dumps(main_solution(**_json.loads({json.dumps(kwargs)!r}))))\n"
    )
    workdir = tempfile.mkdtemp(prefix="naive-")
    try:
        done = subprocess.run(
            [sys.executable, "-c", script],
            cwd=workdir,
            env={},
            capture_output=True,
            timeout=timeout,
            start_new_session=True,
            preexec_fn=naive_limits(timeout, memory_mb, max_output),
        )
        return json.loads(done.stdout[:max_output]) if done.returncode == 0 else None
    except (subprocess.TimeoutExpired, ValueError):
        return None
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def make_jobs(count: int, seed: int):
    rng = random.Random(seed)
    namespace: dict = {}
    exec(IMPORT_PREFIX, namespace)  # trusted reference code: expected values computed in process
    jobs = []
    for index in range(count):
        name = list(FUNCTIONS)[index % len(FUNCTIONS)]
        source, make_kwargs = FUNCTIONS[name]
        kwargs = make_kwargs(rng)
        exec(source, namespace)
        expected = json.loads(json.dumps(namespace["main_solution"](**kwargs)))
        jobs.append((source, kwargs, expected))
    return jobs


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--executions", type=int, default=500)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--timeout", type=float, default=5.0)
    parser.add_argument("--memory_mb", type=int, default=1024)
    parser.add_argument("--max_output", type=int, default=1 << 20)
    parser.add_argument("--allow_weaker", action="store_true", help="Sandbox(allow_weaker=True)")
    args = parser.parse_args()
    jobs = make_jobs(args.executions, seed=0)
    timings = {"naive subprocess.run": [], "common.sandbox": []}
    correct = {}
    start = time.monotonic()
    sandbox = Sandbox(
        workers=args.workers,
        timeout=args.timeout,
        memory_mb=args.memory_mb,
        max_output=args.max_output,
        allow_weaker=args.allow_weaker,
    )
    startup = time.monotonic() - start
    iso = sandbox.isolation
    with sandbox:
        for repeat in range(args.repeats):
            start = time.monotonic()
            with ThreadPoolExecutor(args.workers) as pool:
                values = list(
                    pool.map(
                        lambda job: naive_call(
                            job[0], job[1], args.timeout, args.memory_mb, args.max_output
                        ),
                        jobs,
                    )
                )
            timings["naive subprocess.run"].append(time.monotonic() - start)
            correct["naive subprocess.run"] = sum(v == job[2] for v, job in zip(values, jobs))
            start = time.monotonic()
            results = sandbox.call_many(
                [(IMPORT_PREFIX + source, "main_solution", kwargs) for source, kwargs, _ in jobs]
            )
            timings["common.sandbox"].append(time.monotonic() - start)
            correct["common.sandbox"] = sum(
                r.ok and r.value == job[2] for r, job in zip(results, jobs)
            )
            print(
                f"repeat {repeat}: naive {timings['naive subprocess.run'][-1]:.2f}s, "
                f"sandbox {timings['common.sandbox'][-1]:.2f}s",
                flush=True,
            )
    print(
        f"\n{args.executions} verification executions, {args.workers} workers, median of "
        f"{args.repeats} "
        f"(sandbox start-up {startup:.2f}s, not included)"
    )
    print(
        f"sandbox isolation: {iso['level']} (namespaces {', '.join(iso['namespaces']) or 'none'}; "
        f"seccomp {'on' if iso['seccomp'] else 'off'}; missing {iso['missing'] or 'nothing'})\n"
    )
    print("| runner | median seconds | executions/s | ms per execution | correct |")
    print("|---|---|---|---|---|")
    for name, seconds in timings.items():
        median = statistics.median(seconds)
        print(
            f"| {name} | {median:.2f} | {args.executions / median:.0f} | "
            f"{1000 * median / args.executions * args.workers:.1f} | "
            f"{correct[name]}/{args.executions} |"
        )
    ratio = statistics.median(timings["naive subprocess.run"]) / statistics.median(
        timings["common.sandbox"]
    )
    print(f"\nspeed-up of common.sandbox over naive subprocess.run: {ratio:.1f}x")


if __name__ == "__main__":
    main()
