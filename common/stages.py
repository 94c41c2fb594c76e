"""Resumable, rank-sharded JSONL stages (codeio.py's data pipeline; any script can use it).

A stage writes `<out>/<name>.jsonl`, one complete record per line, each with a key (a file name, a
function name, a prompt id). A rerun keeps the records on file and asks the stage only for the keys
that are missing, so a killed run loses at most the batch it was writing. Under torchrun every rank
holds the same records (work is gathered), rank 0 writes, and `StageRun.shared_work` splits a list
of jobs by rank (rank r takes items r, r + world, ...) and gathers the results in item order.
`generate` samples one completion per prompt, each rank its share of every batch.
`StageRun.report` adds a row to the summary table that `finish_run` prints and writes to
summary.json. `greedy_accuracy` is the held-out evaluation harness (greedy answers, a script's
checker, accuracy per kind).
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from tqdm import tqdm

from common import data
from common.claims import format_claims, write_summary
from common.sampling import generate_sharded, make_sampler
from common.train import all_gather_object, barrier, format_table, is_main_process, print0


def write_jsonl(path, rows, mode="w"):
    """Every rank holds the same records (gathered work): rank 0 writes."""
    if is_main_process():
        data.write_jsonl(path, rows, mode)


def read_jsonl(path) -> list[dict]:
    """Every rank reads rank 0's file after its writes and before rank 0 repairs a cut line."""
    barrier()
    rows = data.read_jsonl_tolerant(path)
    barrier()
    return rows


def parse_stages(text: str, names: tuple) -> list[str]:
    """--stages: a comma-separated subset of `names`."""
    stages = [s.strip() for s in text.split(",") if s.strip()]
    if unknown := set(stages) - set(names):
        raise ValueError(f"--stages: unknown {sorted(unknown)}; choose from {names}")
    return stages


def user(text: str) -> list[dict]:
    """A conversation of one user turn."""
    return [{"role": "user", "content": text}]


def generate(sampler, messages: list, args, desc: str) -> list[str]:
    """One completion per message (args: generation_batch_size, temperature, max_new_tokens) in
    batches; under torchrun each rank generates its share of every batch."""
    texts, size = [], args.generation_batch_size
    for start in tqdm(range(0, len(messages), size), desc=desc, leave=False):
        kwargs = dict(n=1, temperature=args.temperature, max_new_tokens=args.max_new_tokens)
        groups = generate_sharded(sampler, messages[start : start + size], **kwargs)
        texts += [group[0].text for group in groups]
    return texts


@dataclass
class StageRun:
    """What a script's stages share: its configuration, the stages that run this time, the output
    folder, the distributed handle, the summary table they append to (with the infrastructure
    failures and each rank's share of the jobs, per stage), and the student, the sampler and the
    sandbox the stages use (None where no stage needs them)."""

    args: object
    stages: list
    out: Path
    dist_info: object
    rows: list = field(default_factory=list)
    infra: Counter = field(default_factory=Counter)  # per stage: not written, a rerun retries
    work: dict = field(default_factory=dict)  # stage -> jobs per rank
    model_path: str | None = None
    tokenizer: object = None
    model: object = None
    dtype: str | None = None
    sampler: object = None
    sandbox: object = None

    def records(self, name: str, key: str, new_records) -> list[dict]:
        """A stage's records: those an earlier run wrote (a line cut by a kill is dropped and the
        file repaired), then, if the stage runs, the batches `new_records(done keys)` yields,
        appended as they come (a kill loses one batch)."""
        path = self.out / f"{name}.jsonl"
        records = read_jsonl(path)
        if path.exists() and path.read_text(encoding="utf-8")[-1:] not in ("", "\n"):
            write_jsonl(path, records)
        if name not in self.stages:
            return records
        for batch in new_records({r[key] for r in records}):
            write_jsonl(path, batch, "a")
        return read_jsonl(path)

    def run(self, name: str, key: str, items, work, batch_size: int = 0) -> list[dict]:
        """`records` for the usual stage: `work(batch)` -> the batch's new records, on the items
        (`items()`, called only if the stage runs) whose key is not on file, `batch_size` at a
        time (0: all in one batch)."""

        def new_records(done: set):
            todo = [item for item in items() if item[key] not in done]
            size = batch_size or max(1, len(todo))
            for start in tqdm(range(0, len(todo), size), desc=name, leave=False):
                yield work(todo[start : start + size])

        return self.records(name, key, new_records)

    def shared_work(self, stage: str, work, items: list) -> list:
        """Each rank runs `work` (items -> results) on its share, the items whose index is the
        rank modulo the world size; every rank gets all results back in item order."""
        rank, world = self.dist_info.rank, self.dist_info.world_size
        parts = all_gather_object(work(items[rank::world]))
        results = [None] * len(items)
        for r, part in enumerate(parts):
            results[r::world] = part
        old = self.work.get(stage, [0] * world)
        self.work[stage] = [a + len(part) for a, part in zip(old, parts)]
        return results

    def report(self, stage: str, n_in: int, n_out: int, notes: str):
        """One row of the summary table; notes the stage's sandbox errors and per-rank shares."""
        if self.infra[stage]:
            notes += f"; {self.infra[stage]} sandbox errors (not written: a rerun retries them)"
        if self.dist_info.world_size > 1 and stage in self.work:
            notes += f"; sandbox jobs per rank {self.work[stage]}"
        self.rows.append({"stage": stage, "in": n_in, "out": n_out, "notes": notes})

    def use_sandbox(self, sandbox, workers: int):
        """The sandbox (common.sandbox, `workers` processes) for every stage that runs code; the
        table's row says how isolated it is."""
        self.sandbox, iso = sandbox, sandbox.isolation
        missing = f", missing {', '.join(iso['missing'])}" if iso["missing"] else ""
        self.report("sandbox", workers, workers, f"isolation {iso['level']}{missing}")


def greedy_accuracy(model, tokenizer, samples: list[dict], check, max_new_tokens: int) -> dict:
    """Greedy answers to each sample's `prompt`, scored by `check((sample, answer) pairs)` -> one
    dict per pair whose `correct` is None where nothing was scored (e.g. the sandbox failed):
    accuracy overall and per sample `kind`, the number scored and the first answer."""
    sampler = make_sampler("hf", model, tokenizer)
    kwargs = dict(n=1, temperature=0, max_new_tokens=max_new_tokens)
    texts = [g[0].text for g in sampler.generate([user(s["prompt"]) for s in samples], **kwargs)]
    scores = {sample["kind"]: [] for sample in samples}
    for sample, result in zip(samples, check(zip(samples, texts))):
        if result["correct"] is not None:
            scores[sample["kind"]].append(bool(result["correct"]))
    every = [score for kind_scores in scores.values() for score in kind_scores]
    per_kind = {f"accuracy_{kind}": sum(v) / max(1, len(v)) for kind, v in scores.items()}
    accuracy = sum(every) / max(1, len(every))
    return {"accuracy": accuracy, "n": len(every), "example": texts[0] if texts else "", **per_kind}


def finish_run(run: StageRun, logger, claims: list, loss_keys: tuple, title: str, **summary):
    """Close the sandbox and the metrics log (plotting the `loss_keys` it has to sft_loss.png);
    rank 0 writes summary.json (claims, the stage table, `summary`) and prints table and claims."""
    if run.sandbox is not None:
        run.sandbox.close()
    if logger is not None:
        keys = [k for k in loss_keys if any(k in r for r in logger.history)]
        if run.dist_info.is_main:
            print0(f"loss curve: {logger.plot(keys, run.out / 'sft_loss.png', title=title)}")
        logger.close()
    if run.dist_info.is_main:
        write_summary(run.out, claims, stages=run.rows, **summary)
        print0("\n" + format_table(run.rows))
        print0("\n" + format_claims(claims))
