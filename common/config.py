"""Presets and the effective configuration: how every script turns its command line into `Args`.

Each script declares
- `Args`, a dataclass whose defaults are the CPU toy's values (so `Args()` and a no-argument run are
  the toy), with a help string per field that quotes the paper's value as `paper: <value> (<where>)`
  (`paper preset: <value>` where the paper states none and the preset picks one);
- `PAPER`, a dict of the paper's values for the fields whose toy value differs, each cited;
- optionally `derived(args, world_size) -> dict`, the per-rank sizes implied by the global ones; it
  raises ValueError naming the flags when they do not fit the world size.

`parse_config(Args, PAPER, derived)` adds three flags to the script's own:
- `--preset auto|toy|paper`: `auto` (default) is `toy` when no model is named, `paper` otherwise;
- `--print_config`: print the effective configuration as JSON and exit 0 before anything is
  loaded (so it works offline with a hub id);
- `--world_size N`: the world size the per-rank values are derived for (default: torchrun's
  $WORLD_SIZE, else 1); under torchrun it must agree with $WORLD_SIZE.
A flag given on the command line always wins over the preset. Choices (Literal types) are checked by
the parser, so a bad value fails before any model or data is touched. Rank 0 prints the
configuration and writes it to <output_dir>/config.json.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import re
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from transformers import HfArgumentParser


def arg(default, help: str):
    """A dataclass field with its help string (HfArgumentParser shows it in --help)."""
    return field(default=default, metadata={"help": help})


# --model values that mean "no model named": the scripts' toy defaults ("", None; bstar's "tiny")
TOY_MODEL_VALUES = ("", None, "tiny")


@dataclass
class PresetArgs:
    preset: Literal["auto", "toy", "paper"] = field(
        default="auto",
        metadata={
            "help": "auto = toy without --model, paper with one | toy = the CPU toy's values | "
            "paper = "
            "the paper's values (see --print_config); flags given on the command line win"
        },
    )
    print_config: bool = field(
        default=False,
        metadata={
            "help": "print the effective configuration as JSON and exit without loading anything"
        },
    )
    world_size: int = field(
        default=0,
        metadata={"help": "world size the per-rank values are derived for; 0 = $WORLD_SIZE or 1"},
    )


def _explicit_flags(parser: argparse.ArgumentParser, argv: list[str]) -> set[str]:
    """Field names set on the command line: parse again with every default suppressed, so only the
    given flags (also `--no_x`, `--x false`, or a value equal to the default) appear."""
    saved = [(action, action.default) for action in parser._actions]
    try:
        for action, _ in saved:
            action.default = argparse.SUPPRESS
        namespace, _ = parser.parse_known_args(argv)
    finally:
        for action, default in saved:
            action.default = default
    return set(vars(namespace))


def paper_values_in_help(args_cls) -> dict[str, str]:
    """{field: the token its help string quotes as `paper: <value>` or `paper preset: <value>`}.
    Tests compare these with PAPER and with the effective paper configuration, so a help string
    and its preset cannot drift apart."""
    found = {}
    for f in dataclasses.fields(args_cls):
        match = re.search(r"\bpaper(?: preset)?: ([^\s,;()]+)", f.metadata.get("help", ""))
        if match:
            found[f.name] = match.group(1).rstrip(".")
    return found


def value_matches(quoted: str, value) -> bool:
    """Does a quoted help token equal the value? Numbers compare as numbers (5e-7 = 5E-7)."""
    if isinstance(value, bool) or value is None:
        return quoted == str(value)
    if isinstance(value, (int, float)):
        try:
            return float(quoted.replace("_", "")) == float(value)
        except ValueError:
            return False
    return quoted.strip("'\"") == str(value)


def resolve_world_size(option: int) -> int:
    env = int(os.environ.get("WORLD_SIZE", "0") or 0)
    if option and env and option != env:
        raise ValueError(f"--world_size {option} disagrees with torchrun's WORLD_SIZE={env}")
    return option or env or 1


def per_rank(total: int, world_size: int, flag: str) -> int:
    """A global count split evenly over the ranks; the error names the flag."""
    if total % world_size:
        raise ValueError(
            f"{flag} {total} is not divisible by the world size {world_size}; pick a "
            f"multiple of {world_size} (see --print_config --world_size {world_size})"
        )
    return total // world_size


def parse_config(
    args_cls,
    paper: dict,
    derived: Callable | None = None,
    argv: list[str] | None = None,
    script: str | None = None,
    extra: tuple = (),
):
    """The script's `Args` with the chosen preset applied under the user's flags. Rank 0 prints the
    configuration and writes <output_dir>/config.json; with --print_config it prints and exits 0.
    `extra`: more dataclasses parsed from the same command line (e.g. common.evaluation.EvalArgs);
    then the result is `(args, *extra_instances)`."""
    argv = sys.argv[1:] if argv is None else list(argv)
    script = script or Path(sys.argv[0]).stem
    names = {f.name for f in dataclasses.fields(args_cls)}
    if unknown := set(paper) - names:
        raise KeyError(f"{script}: PAPER names fields {args_cls.__name__} lacks: {sorted(unknown)}")
    parser = HfArgumentParser((args_cls, *extra, PresetArgs))
    namespace = parser.parse_args(argv)  # an unknown flag or a bad choice exits 2 here
    args = args_cls(
        **{f.name: getattr(namespace, f.name) for f in dataclasses.fields(args_cls) if f.init}
    )
    options = PresetArgs(
        **{f.name: getattr(namespace, f.name) for f in dataclasses.fields(PresetArgs)}
    )
    extras = [
        cls(**{f.name: getattr(namespace, f.name) for f in dataclasses.fields(cls) if f.init})
        for cls in extra
    ]
    explicit = _explicit_flags(parser, argv) & names
    preset = options.preset
    if preset == "auto":
        preset = "toy" if getattr(args, "model", "") in TOY_MODEL_VALUES else "paper"
    from_preset = {k: v for k, v in paper.items() if k not in explicit} if preset == "paper" else {}
    for key, value in from_preset.items():
        setattr(args, key, value)
    try:
        world_size = resolve_world_size(options.world_size)
        sizes = derived(args, world_size) if derived else {}
    except ValueError as err:
        parser.exit(2, f"{script}: error: {err}\n")  # before anything is loaded
    config = {
        "script": script,
        "preset": preset,
        "world_size": world_size,
        "args": dataclasses.asdict(args),
        "derived": sizes,
        **{type(e).__name__: dataclasses.asdict(e) for e in extras},
        "set_on_command_line": sorted(explicit),
        "set_by_preset": sorted(from_preset),
    }
    text = json.dumps(config, indent=1, default=str)
    if options.print_config:
        print(text)
        sys.exit(0)
    if int(os.environ.get("RANK", "0")) == 0:
        print(
            f"configuration ({preset} preset; --print_config prints it without running):\n{text}",
            flush=True,
        )
        out = Path(args.output_dir)
        out.mkdir(parents=True, exist_ok=True)
        (out / "config.json").write_text(text + "\n")
    return (args, *extras) if extra else args
