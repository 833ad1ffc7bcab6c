"""Parsers of list-valued option values, and the check of argument order, each refusing bad
input with one ``MoeplaceError`` line that names the flag."""

from __future__ import annotations

import math
from pathlib import Path

from moeplace.cli.options import TOLERANCE_UNIT
from moeplace.errors import MoeplaceError, did_you_mean
from moeplace.planner.solvers import SOLVERS


def check_order(command: str, placement: Path, data: list[Path]) -> None:
    """Refuse ``COMMAND DATA PLACEMENT`` (arguments swapped) saying which goes where: a trace or
    statistics where the placement YAML belongs, and a YAML among the data."""
    looks_like_data = placement.is_dir() or placement.suffix == ".npz"
    yaml = [path for path in data if path.suffix in (".yaml", ".yml")]
    if looks_like_data and yaml:
        raise MoeplaceError(
            f"arguments in the wrong order: {command} takes the placement YAML first, then the traffic "
            f"(traces or load records); got {placement} first and {yaml[0]} after it"
        )


MAX_LIST = 4096  # values a list option may name: more layers or device counts than any model has


def parse_ints(text: str, what: str) -> list[int]:
    """``"2,4,8"`` -> [2, 4, 8]; ``"1-4"`` ranges allowed; every value >= 0, at most ``MAX_LIST``."""
    values = []
    try:
        for part in (x.strip() for x in text.split(",")):
            if "-" in part[1:]:
                lo, hi = (int(x) for x in part.split("-", 1))
                if hi - lo >= MAX_LIST:
                    raise MoeplaceError(f"{what}: the range {part} names more than {MAX_LIST} values")
                values.extend(range(lo, hi + 1))
            elif part:
                values.append(int(part))
            if len(values) > MAX_LIST:
                raise MoeplaceError(f"{what} names more than {MAX_LIST} values")
    except ValueError:
        raise MoeplaceError(f"{what} must be comma-separated integers or ranges, got {text!r}") from None
    if not values:
        raise MoeplaceError(f"{what} is empty")
    if min(values) < 0:
        raise MoeplaceError(f"{what} must be >= 0, got {min(values)}")
    return values


def parse_tolerances(text: str) -> list[float]:
    """``"0,0.05,0.1"`` -> [0.0, 0.05, 0.1]: load tolerances, each in [0, 1]."""
    try:
        values = [float(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise MoeplaceError(f"--load-tolerance must be comma-separated numbers, got {text!r}") from None
    if not values or not all(math.isfinite(v) and 0 <= v <= 1 for v in values):
        raise MoeplaceError(f"--load-tolerance: {TOLERANCE_UNIT}; got {text!r}")
    return values


def parse_tolerance(text: str) -> float:
    """One load tolerance (``parse_tolerances``), refusing a list where one plan is made."""
    values = parse_tolerances(text)
    if len(values) != 1:
        raise MoeplaceError(
            f"--load-tolerance takes one value here (or auto), got {text!r}; compare draws the frontier "
            "over several"
        )
    return values[0]


def parse_solvers(text: str) -> list[str]:
    names = [x.strip() for x in text.split(",") if x.strip()]
    unknown = [x for x in names if x not in SOLVERS]
    if unknown or not names:
        raise MoeplaceError(
            f"unknown solver(s) {', '.join(unknown) or '(none)'}"
            f"{did_you_mean(unknown[0], SOLVERS) if unknown else ''}; choose from {', '.join(SOLVERS)}"
        )
    return names
