"""Presets (common/config.py): toy and paper configurations of every script, user flags winning,
config.json, parse-time validation, and every documented command parsing with batch sizes that fit
its world size."""

import dataclasses
import importlib
import json
import re
import subprocess
import sys
from dataclasses import dataclass, field
from typing import Literal

import pytest

from common.config import paper_values_in_help, parse_config, value_matches
from tests.conftest import ROOT, _run

SCRIPTS = [
    "zero_rl",
    "genius_aco",
    "bstar",
    "mstar",
    "codeio",
    "guimid",
    "os_genesis",
    "adaptvis",
    "ilo",
]
HUB_ID = "Qwen/Qwen2.5-7B"  # never downloaded: --print_config stops before anything is loaded


def config_of(module, argv, capsys, monkeypatch, world_size=None):
    """The JSON that --print_config prints for `argv`, parsed in this process."""
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    if world_size:
        monkeypatch.setenv("WORLD_SIZE", str(world_size))
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_info:
        extra = (module.EvalArgs,) if hasattr(module, "EvalArgs") else ()  # --eval_only scripts
        parse_config(
            module.Args,
            module.PAPER,
            getattr(module, "derived", None),
            [*argv, "--print_config"],
            script=module.__name__,
            extra=extra,
        )
    out = capsys.readouterr()
    assert exit_info.value.code == 0, f"{module.__name__} {argv}: {out.err}"
    return json.loads(out.out)


# Runs every script as __main__ with `--model <hub id> --print_config` in ONE offline subprocess
# (one interpreter start instead of nine); prints {script: the configuration it printed}.
RUN_ALL = """
import contextlib, io, json, runpy, sys
found, hub_id = {}, sys.argv[1]
for script in sys.argv[2:]:
    sys.argv, out = [script + ".py", "--model", hub_id, "--print_config"], io.StringIO()
    with contextlib.redirect_stdout(out):
        try:
            runpy.run_path(script + ".py", run_name="__main__")
        except SystemExit as exit:
            assert exit.code == 0, (script, exit.code)
    found[script] = json.loads(out.getvalue())
print(json.dumps(found))
"""


@pytest.fixture(scope="module")
def printed_paper_configs():
    return json.loads(_run([sys.executable, "-c", RUN_ALL, HUB_ID, *SCRIPTS], timeout=300).stdout)


@pytest.mark.parametrize("script", SCRIPTS)
def test_paper_preset_equals_the_values_the_help_strings_quote(script, printed_paper_configs):
    """`python X.py --model <hub id> --print_config` (offline; nothing is loaded) gives every field
    whose help quotes `paper: <value>` exactly that value; its help quotes every PAPER entry."""
    module = importlib.import_module(script)
    quoted = paper_values_in_help(module.Args)
    missing = sorted(set(module.PAPER) - set(quoted))
    assert not missing, f"{script}: PAPER entries not quoted as 'paper: <value>' by help: {missing}"
    config = printed_paper_configs[script]
    assert config["preset"] == "paper" and config["args"]["model"] == HUB_ID
    got = config["args"]
    wrong = {k: (v, got[k]) for k, v in quoted.items() if not value_matches(v, got[k])}
    assert not wrong, f"{script}: help quotes vs the effective paper config (quoted, got): {wrong}"


@pytest.mark.parametrize("script", SCRIPTS)
def test_toy_preset_is_the_dataclass_defaults(script, capsys, monkeypatch):
    """No model named: the toy values, i.e. exactly `Args()` (what the no-argument run used)."""
    module = importlib.import_module(script)
    config = config_of(module, [], capsys, monkeypatch)
    assert config["preset"] == "toy" and config["set_by_preset"] == []
    assert config["args"] == json.loads(json.dumps(dataclasses.asdict(module.Args())))
    same = {k for k, v in module.PAPER.items() if v == getattr(module.Args(), k)}
    assert not same, f"{script}: PAPER entries equal to the toy default (drop them): {same}"


@dataclass
class Demo:
    output_dir: str = field(default="runs/demo", metadata={"help": "outputs"})
    model: str = field(default="", metadata={"help": "model"})
    lr: float = field(default=1e-3, metadata={"help": "lr; paper: 5e-7"})
    steps: int = field(default=10, metadata={"help": "steps; paper: 100 (Table 1)"})
    shuffle: bool = field(default=True, metadata={"help": "shuffle; paper: False"})
    mode: Literal["a", "b"] = field(default="a", metadata={"help": "mode; paper preset: b"})


DEMO_PAPER = {"lr": 5e-7, "steps": 100, "shuffle": False, "mode": "b"}


def demo(argv, capsys, monkeypatch):
    module = type("demo", (), {"Args": Demo, "PAPER": DEMO_PAPER, "__name__": "demo"})
    return config_of(module, argv, capsys, monkeypatch)


def test_flags_on_the_command_line_win_over_the_preset(capsys, monkeypatch):
    paper = demo(["--model", "m"], capsys, monkeypatch)
    assert paper["preset"] == "paper"
    assert paper["set_by_preset"] == ["lr", "mode", "shuffle", "steps"]
    assert [paper["args"][k] for k in ("lr", "steps", "shuffle", "mode")] == [5e-7, 100, False, "b"]
    # set explicitly, even to the toy's own value, in the spellings argparse accepts
    mine = demo(
        ["--model", "m", "--lr", "1e-3", "--steps=7", "--shuffle", "--mode", "a"],
        capsys,
        monkeypatch,
    )
    assert [mine["args"][k] for k in ("lr", "steps", "shuffle", "mode")] == [1e-3, 7, True, "a"]
    assert mine["set_by_preset"] == []
    assert mine["set_on_command_line"] == ["lr", "mode", "model", "shuffle", "steps"]
    assert demo(["--model", "m", "--no_shuffle"], capsys, monkeypatch)["args"]["shuffle"] is False
    assert demo(["--model", "m", "--shuffle", "true"], capsys, monkeypatch)["args"]["shuffle"]
    # --preset overrides auto in both directions
    assert demo(["--model", "m", "--preset", "toy"], capsys, monkeypatch)["args"]["lr"] == 1e-3
    assert demo(["--preset", "paper", "--steps", "3"], capsys, monkeypatch)["args"] == {
        "output_dir": "runs/demo",
        "model": "",
        "lr": 5e-7,
        "steps": 3,
        "shuffle": False,
        "mode": "b",
    }


def test_help_quotes_are_parsed_and_compared():
    quoted = paper_values_in_help(Demo)
    assert quoted == {"lr": "5e-7", "steps": "100", "shuffle": "False", "mode": "b"}
    assert value_matches("5e-7", 5e-7) and value_matches("5E-07", 5e-7)
    assert value_matches("25_000", 25000) and value_matches("1.0", 1)
    assert not value_matches("5e-6", 5e-7) and not value_matches("True", False)
    assert not value_matches("1", True) and not value_matches("None", 0)
    assert not value_matches("cosine", "linear") and not value_matches("Pass@32-4", 4)


def test_config_is_printed_and_written_to_output_dir(tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    monkeypatch.delenv("RANK", raising=False)
    argv = ["--output_dir", str(tmp_path / "run"), "--model", "m"]
    args = parse_config(Demo, DEMO_PAPER, None, argv, script="demo")
    assert isinstance(args, Demo) and args.lr == 5e-7 and args.steps == 100
    written = json.loads((tmp_path / "run" / "config.json").read_text())
    assert written["preset"] == "paper" and written["args"] == dataclasses.asdict(args)
    assert "configuration (paper preset" in capsys.readouterr().out
    monkeypatch.setenv("RANK", "1")  # only rank 0 prints and writes
    parse_config(Demo, DEMO_PAPER, None, ["--output_dir", str(tmp_path / "other")], script="demo")
    assert not (tmp_path / "other").exists() and capsys.readouterr().out == ""


def test_a_bad_choice_fails_at_parse_time_before_anything_loads():
    proc = subprocess.run(
        [sys.executable, "zero_rl.py", "--model", HUB_ID, "--loss_type", "bogus"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 2, proc.stderr
    assert "argument --loss_type" in proc.stderr and "invalid choice: 'bogus'" in proc.stderr
    assert "configuration" not in proc.stdout


@pytest.mark.parametrize("script", SCRIPTS)
def test_every_choice_field_rejects_a_bad_value(script, capsys, monkeypatch):
    module = importlib.import_module(script)
    literals = [
        f.name for f in dataclasses.fields(module.Args) if "Literal[" in str(f.type)
    ]  # resolved or a string
    assert literals, f"{script}: no choice is validated at parse time"
    for name in literals:
        with pytest.raises(SystemExit) as exit_info:
            parse_config(module.Args, module.PAPER, None, [f"--{name}", "bogus", "--print_config"])
        assert exit_info.value.code == 2
        assert f"argument --{name}" in capsys.readouterr().err


def test_batch_sizes_are_checked_against_the_world_size(capsys, monkeypatch):
    import zero_rl

    monkeypatch.setenv("WORLD_SIZE", "8")
    with pytest.raises(SystemExit) as exit_info:  # the toy's 4 prompts per update on 8 ranks
        parse_config(zero_rl.Args, zero_rl.PAPER, zero_rl.derived, ["--print_config"])
    assert exit_info.value.code == 2
    assert "--mini_batch_prompts 4 is not divisible by the world size 8" in capsys.readouterr().err
    paper = config_of(zero_rl, ["--model", HUB_ID], capsys, monkeypatch, world_size=8)
    assert paper["world_size"] == 8 and paper["derived"] == {  # 256 x 8 completions / 8 ranks, by 2
        "prompts_per_rank": 128,
        "updates_per_rollout": 4,
        "completions_per_update_per_rank": 256,
        "micro_batches_per_update": 128,
    }
    shown = config_of(zero_rl, ["--model", HUB_ID, "--world_size", "2"], capsys, monkeypatch)
    assert shown["world_size"] == 2 and shown["derived"]["prompts_per_rank"] == 512


def documented_commands(script: str) -> list[tuple[int, list[str]]]:
    """(world size, argv) of every `python X.py ...` / `torchrun --nproc_per_node=N X.py ...` in the
    script's docstring and docs page. bash expands the quoting; `<the same flags>` repeats the flags
    of the command before it; other `<placeholders>` become plain words."""
    doc = importlib.import_module(script).__doc__
    text = doc + "\n" + (ROOT / "docs" / f"{script}.md").read_text()
    text = re.sub(r"\\\n", " ", text)  # continuation lines
    found, last = [], ""
    pattern = rf"(?:^|\s)(?:python|torchrun(?P<launch>[^\n]*?))\s+{script}\.py\b(?P<rest>.*)$"
    for line in text.splitlines():
        match = re.search(pattern, line)
        if not match or "`" in line:  # prose mentioning a command inline
            continue
        rest = match["rest"].replace("<the same flags>", last).replace("<same flags>", last)
        rest = re.sub(r"<([^>]*)>", lambda m: m[1].replace(" ", "_"), rest)
        last = rest.split(" #")[0]
        nproc = re.search(r"--nproc_per_node[= ](\d+)", match["launch"] or "")
        expand = f"f() {{ for a; do printf '%s\\0' \"$a\"; done; }}; f {rest}"
        words = subprocess.run(["bash", "-c", expand], capture_output=True, text=True, check=True)
        found.append((int(nproc[1]) if nproc else 1, words.stdout.split("\0")[:-1]))
    return found


@pytest.mark.parametrize("script", SCRIPTS)
def test_every_documented_command_parses_with_consistent_sizes(script, capsys, monkeypatch):
    module = importlib.import_module(script)
    commands = documented_commands(script)
    assert len(commands) >= 3, f"{script}: expected toy, 1-GPU and multi-GPU commands: {commands}"
    assert any(world > 1 for world, _ in commands), f"{script}: no torchrun command documented"
    for world, argv in commands:
        launched = world if world > 1 else None  # torchrun sets WORLD_SIZE; plain python does not
        config = config_of(module, argv, capsys, monkeypatch, world_size=launched)
        shown = argv[argv.index("--world_size") + 1] if "--world_size" in argv else world
        assert config["world_size"] == int(shown)
