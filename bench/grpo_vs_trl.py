"""GRPO on the zero_rl toy: this repository's `zero_rl.py` against TRL's `GRPOTrainer`, same work,
CPU.

Both runs start from the same cached tiny base (zero_rl's warm start), see the same training prompts
in the same order (the digit-sorting toy through the qwen-boxed chat template), and use the same
settings: 16 prompts x 8 samples per rollout, 4 optimizer updates per rollout (32 completions each),
at most 16 new tokens (both stop at <|im_end|>), temperature 1.0, top-p 1.0, lr 1e-3 constant,
AdamW, grad clip 1.0, PPO clip 0.2, k3 KL with beta 1e-4 to a reference model, entropy bonus 0.001,
token-level loss (TRL `loss_type="dapo"`), the same reward (`common.rewards.math_reward`, SimpleRL
"mix") and the same held-out evaluation (`zero_rl.evaluate`, timed out of both). Both run in this
process with the same torch thread count.

(a) step time: median time of one rollout step (sample 128 completions, score them, 4 updates), from
    one step end to the next, evaluation excluded; TRL's rollout step is 4 optimizer steps. Reported
    as wall time and as CPU time of this process (the CPU time barely moves when other jobs load the
    machine).
(b) time to target: training time until the held-out sampled accuracy first reaches --target
    (checked every --eval_every rollout steps); median over rounds.
The runs alternate (ours, TRL, TRL, ours, ...) for --rounds rounds so that load changes hit both.

Command (the tables in docs/zero_rl.md came from this):
    python bench/grpo_vs_trl.py                        # 3 rounds x 2 runs x 16 rollout steps
    python bench/grpo_vs_trl.py --rounds 1 --steps 60 --eval_every 5
Needs `pip install -r bench/requirements.txt` (TRL).
"""

import argparse
import os
import sys
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np  # noqa: E402
import torch  # noqa: E402

import zero_rl as Z  # noqa: E402
from common import rewards  # noqa: E402
from common.models import load_model, load_tokenizer, stop_token_ids  # noqa: E402
from common.sampling import HFSampler  # noqa: E402
from common.train import Dist, MetricsLogger, format_table  # noqa: E402


class Clock:
    """Wall and process-CPU time that stand still while evaluating."""

    def __init__(self):
        self.paused_wall = self.paused_cpu = 0.0

    def now(self):
        return np.array(
            [time.perf_counter() - self.paused_wall, time.process_time() - self.paused_cpu]
        )

    @contextmanager
    def paused(self):
        wall, cpu = time.perf_counter(), time.process_time()
        yield
        self.paused_wall += time.perf_counter() - wall
        self.paused_cpu += time.process_time() - cpu


def summarise(ends, start, accuracy):
    """Per-step (wall, cpu) times from step 2 on (step 1 carries one-off set-up in both), elapsed
    per step."""
    steps = sorted(ends)
    return {
        "step_times": [ends[b] - ends[a] for a, b in zip(steps, steps[1:])],
        "elapsed": {s: ends[s] - start for s in steps},
        "accuracy": accuracy,
    }


def run_ours(args, workdir):
    """zero_rl.main in this process; step ends come from its metrics logger, evaluations are timed
    out."""
    cfg = Z.Args(
        output_dir=str(workdir),
        total_steps=args.steps,
        eval_every=args.eval_every,
        num_eval_prompts=args.eval_prompts,
        save_every=10**9,
        seed=args.seed,
    )
    clock, ends, accuracy, start = Clock(), {}, {}, []
    original_log, original_eval = MetricsLogger.log, Z.evaluate

    def log(self, metrics, step):
        if "reward" in metrics:
            ends[step] = clock.now()
        if "eval/accuracy_sampled" in metrics:
            accuracy[step] = metrics["eval/accuracy_sampled"]
        original_log(self, metrics, step)

    def timed_eval(*a, **kw):
        with clock.paused():
            out = original_eval(*a, **kw)
        if not start:  # the evaluation before step 1 has ended: training starts now
            start.append(clock.now())
        return out

    MetricsLogger.log, Z.evaluate = log, timed_eval
    try:
        Z.main(cfg)
    finally:
        MetricsLogger.log, Z.evaluate = original_log, original_eval
    return summarise(ends, start[0], accuracy)


def run_trl(args, workdir, base_path, train_rows, eval_rows):
    from datasets import Dataset
    from transformers import TrainerCallback
    from trl import GRPOConfig, GRPOTrainer

    cfg = Z.Args(num_eval_prompts=args.eval_prompts, seed=args.seed)
    tok = load_tokenizer(base_path)
    dataset = Dataset.from_list(
        [
            {"prompt": Z.make_prompt(r["question"], "qwen-boxed"), "answer": r["answer"]}
            for r in train_rows
        ]
    )
    per_rollout = 4  # optimizer steps per rollout batch (16 prompts / 4 prompts per update)
    config = GRPOConfig(
        output_dir=str(workdir),
        per_device_train_batch_size=32,
        steps_per_generation=per_rollout,
        gradient_accumulation_steps=1,
        num_generations=8,
        max_completion_length=16,
        temperature=1.0,
        top_p=1.0,
        learning_rate=cfg.lr,
        lr_scheduler_type="constant",
        warmup_steps=0,
        weight_decay=0.0,
        max_grad_norm=1.0,
        beta=cfg.beta,
        epsilon=cfg.clip_eps,
        loss_type="dapo",
        entropy_coef=cfg.entropy_coef,
        max_steps=per_rollout * args.steps,
        logging_steps=1,
        report_to="none",
        save_strategy="no",
        use_cpu=True,
        bf16=False,
        seed=args.seed,
        shuffle_dataset=False,
        disable_tqdm=True,
        dataloader_num_workers=0,
    )
    clock, ends, accuracy, start = Clock(), {}, {}, []

    class Timer(TrainerCallback):
        def on_train_begin(self, targs, state, control, **kw):
            start.append(clock.now())

        def on_step_end(self, targs, state, control, model=None, **kw):
            if (
                state.global_step % per_rollout == 0
            ):  # a rollout step (generation + 4 updates) is complete
                rollout = state.global_step // per_rollout
                ends[rollout] = clock.now()
                if rollout % args.eval_every == 0 or rollout == args.steps:
                    with clock.paused():
                        metrics, _ = Z.evaluate(
                            HFSampler(model, tok), eval_rows, cfg, Dist(), "qwen-boxed"
                        )
                    accuracy[rollout] = metrics["eval/accuracy_sampled"]

    model = load_model(base_path, dtype="float32")
    # stop at <|im_end|> as well as eos, as our Sampler does (a Qwen chat model's generation_config
    # lists both); without it TRL's completions run on to max_completion_length and the two runs
    # would do different work
    model.generation_config.eos_token_id = stop_token_ids(tok)
    trainer = GRPOTrainer(
        model=model,
        reward_funcs=[rewards.math_reward],
        args=config,
        train_dataset=dataset,
        processing_class=tok,
        callbacks=[Timer()],
    )
    trainer.train()
    return summarise(ends, start[0], accuracy)


def time_to_target(run, target):
    step = next(
        (s for s in sorted(run["accuracy"]) if s > 0 and run["accuracy"][s] >= target), None
    )
    return None if step is None else (step, run["elapsed"][step])


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--rounds", type=int, default=3, help="runs of each trainer, alternating")
    p.add_argument("--steps", type=int, default=16, help="rollout steps per run")
    p.add_argument("--eval_every", type=int, default=2, help="evaluate every N rollout steps")
    p.add_argument("--eval_prompts", type=int, default=64, help="held-out prompts per evaluation")
    p.add_argument(
        "--target",
        type=float,
        default=0.5,
        help="held-out sampled accuracy to reach (the base: ~0.2)",
    )
    p.add_argument(
        "--threads", type=int, default=0, help="torch threads for both (0 = torch's default)"
    )
    p.add_argument("--seed", type=int, default=1)
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    cfg = Z.Args(seed=args.seed, num_eval_prompts=args.eval_prompts)
    train_rows, eval_rows = Z.P.load_task_rows(cfg)
    base_path = Z.warm_start_base(cfg, train_rows, "qwen-boxed", Z.make_prompt)
    order = np.random.RandomState(cfg.seed + 0).permutation(
        len(train_rows)
    )  # zero_rl's first-epoch prompt order
    ordered = [train_rows[i] for i in order][: 16 * args.steps]
    print(f"torch threads {torch.get_num_threads()}, load average {os.getloadavg()}", flush=True)
    runs = {"ours": [], "trl": []}
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(args.rounds):
            for name in ("ours", "trl") if r % 2 == 0 else ("trl", "ours"):
                workdir = Path(tmp) / f"{name}{r}"
                run = (
                    run_ours(args, workdir)
                    if name == "ours"
                    else run_trl(args, workdir, base_path, ordered, eval_rows)
                )
                runs[name].append(run)
                med = np.median(run["step_times"], axis=0)
                print(
                    f"[round {r}] {name}: median step {med[0]:.3f} s wall, {med[1]:.3f} s CPU; "
                    f"accuracy "
                    f"{ {k: round(v, 3) for k, v in sorted(run['accuracy'].items())} }",
                    flush=True,
                )
    print(f"load average after: {os.getloadavg()}")
    step = {
        n: np.median([t for run in rs for t in run["step_times"]], axis=0) for n, rs in runs.items()
    }  # (wall, cpu)
    hits = {n: [time_to_target(run, args.target) for run in rs] for n, rs in runs.items()}
    reach = {
        n: np.median([h[1] for h in hs], axis=0) if all(hs) else None for n, hs in hits.items()
    }
    steps_to = {n: sorted(h[0] for h in hs if h) for n, hs in hits.items()}
    final = {n: np.mean([run["accuracy"][args.steps] for run in rs]) for n, rs in runs.items()}
    ratio = lambda a, b: f"{a / b:.2f}"  # noqa: E731
    rows = [
        {
            "": "median step time, wall (s)",
            "zero_rl.py": f"{step['ours'][0]:.3f}",
            "TRL GRPOTrainer": f"{step['trl'][0]:.3f}",
            "ours / TRL": ratio(step["ours"][0], step["trl"][0]),
        },
        {
            "": "median step time, CPU (s)",
            "zero_rl.py": f"{step['ours'][1]:.3f}",
            "TRL GRPOTrainer": f"{step['trl'][1]:.3f}",
            "ours / TRL": ratio(step["ours"][1], step["trl"][1]),
        },
    ]
    for i, clock in enumerate(("wall", "CPU")):
        if reach["ours"] is not None and reach["trl"] is not None:
            rows.append(
                {
                    "": f"time to sampled acc >= {args.target}, {clock} (s)",
                    "zero_rl.py": f"{reach['ours'][i]:.1f}",
                    "TRL GRPOTrainer": f"{reach['trl'][i]:.1f}",
                    "ours / TRL": ratio(reach["ours"][i], reach["trl"][i]),
                }
            )
    rows.append(
        {
            "": f"rollout steps to reach {args.target}",
            "zero_rl.py": str(steps_to["ours"]),
            "TRL GRPOTrainer": str(steps_to["trl"]),
            "ours / TRL": "",
        }
    )
    rows.append(
        {
            "": f"held-out sampled acc at step {args.steps}",
            "zero_rl.py": f"{final['ours']:.3f}",
            "TRL GRPOTrainer": f"{final['trl']:.3f}",
            "ours / TRL": "",
        }
    )
    print("\n" + format_table(rows))


if __name__ == "__main__":
    main()
