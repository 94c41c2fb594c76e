"""The claims a no-argument run checks, written to `<output_dir>/summary.json`.

A claim compares a baseline with a result, both computed by the run (never typed in):
`{"name", "metric", "baseline", "result", "higher_is_better", "holds"}`. The learning tests assert
`holds`; the README's results table is built from these entries.
"""

import json
from pathlib import Path


def claim(
    name: str,
    metric: str,
    baseline: float,
    result: float,
    higher_is_better: bool = True,
    margin: float = 0.0,
) -> dict:
    """One claim; it holds when `result` beats `baseline` by more than `margin`."""
    baseline = float(baseline)
    result = float(result)
    if higher_is_better:
        holds = result > baseline + margin
    else:
        holds = result < baseline - margin
    return {
        "name": name,
        "metric": metric,
        "baseline": baseline,
        "result": result,
        "higher_is_better": higher_is_better,
        "holds": bool(holds),
    }


def format_claims(claims: list[dict]) -> str:
    """A plain-text table: claim, metric, baseline -> result, holds."""
    lines = [f"{'claim':<44} {'metric':<28} {'before':>8} {'after':>8}  holds"]
    for c in claims:
        lines.append(
            f"{c['name'][:44]:<44} {c['metric'][:28]:<28} {c['baseline']:>8.3f} "
            f"{c['result']:>8.3f}  {'yes' if c['holds'] else 'NO'}"
        )
    return "\n".join(lines)


def write_summary(output_dir, claims: list[dict], **extra) -> Path:
    """Write summary.json (claims first, then any extra JSON-serialisable fields)."""
    path = Path(output_dir) / "summary.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"claims": claims, **extra}, indent=1, default=str))
    return path
