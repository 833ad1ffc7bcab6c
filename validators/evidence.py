"""Is the held-out evidence held out? Calibration documents in it, and the model it routed.

A placement scored on documents it was fit to looks better than it is, and one scored on another
model's routing says nothing about its own. Placements record a hash of every calibration document
(or of every calibration workload, for load records; ``calibrate/fingerprints.py``); a held-out
set that shares any is refused unless the caller allows the overlap, and then every figure is
labelled in-sample. A held-out set of another model is refused unless allowed; a model name that
is not known on either side (``unknown ...``) gets a warning only.
"""

from __future__ import annotations

import dataclasses
import re

import numpy as np

from moeplace.calibrate.fingerprints import decode_hashes, document_hashes, workload_hashes
from moeplace.calibrate.stats import Statistics
from moeplace.calibrate.trace import Trace
from moeplace.errors import MoeplaceError
from moeplace.planner.placement import Placement


@dataclasses.dataclass(frozen=True)
class Evidence:
    """What a held-out set shares with a placement's calibration: ``shared`` of its ``total``
    documents (or workloads: ``unit``) are calibration ones; ``checked`` False when the placement
    records no hashes (planned before they were recorded) or the held-out set has none to compare;
    ``warnings``: what the caller should say (an unknown model name, an unchecked overlap)."""

    unit: str
    shared: int
    total: int
    checked: bool
    warnings: tuple[str, ...] = ()

    @property
    def in_sample(self) -> bool:
        return self.shared > 0

    def summary(self) -> dict:
        """The figures a validation records beside its held-out provenance."""
        return {"in_sample": self.in_sample, "shared": self.shared, "of": self.total, "unit": self.unit}


def check_evidence(
    placement: Placement,
    held: Trace | Statistics,
    allow_overlap: bool = False,
    allow_model_mismatch: bool = False,
) -> Evidence:
    """The overlap of ``held`` with ``placement``'s calibration (and with the calibration of the
    placement a re-plan moved from); see ``check_held_out``."""
    calibrations = [placement.calibration, placement.options.get("from", {}).get("calibration", {})]
    return check_held_out(calibrations, placement.model, held, allow_overlap, allow_model_mismatch)


def check_held_out(
    calibrations: list[dict],
    model: str,
    held: Trace | Statistics,
    allow_overlap: bool = False,
    allow_model_mismatch: bool = False,
) -> Evidence:
    """What ``held`` shares with the calibrations recorded as ``calibrations`` (placement files'
    ``calibration`` dicts, or ``Statistics.evidence()`` before planning) of ``model``;
    ``MoeplaceError`` when they share documents or workloads (unless ``allow_overlap``), or
    ``held`` routed another model (unless ``allow_model_mismatch``)."""
    warnings = _model_warnings(model, held.meta.model, allow_model_mismatch)
    if isinstance(held, Statistics):
        unit, key = "workloads", "workload_hashes"
        hashes = workload_hashes(held.workload_load) if held.workload_load is not None else None
    else:
        unit, key, hashes = "documents", "document_hashes", document_hashes(held)
    found = [decode_hashes(c[key]) for c in calibrations if isinstance(c, dict) and key in c]
    if hashes is None or not found:
        warnings.append(
            f"no calibration {unit} fingerprints to compare (a placement planned by an older moeplace, or "
            f"from statistics without them): the held-out set was not checked for calibration {unit}"
        )
        return Evidence(unit, 0, 0 if hashes is None else hashes.shape[0], False, tuple(warnings))
    shared, total = int(np.isin(hashes, np.concatenate(found)).sum()), int(hashes.shape[0])
    if shared and not allow_overlap:
        raise MoeplaceError(
            f"{shared} of {total} held-out {unit} are calibration {unit} of the placement: its figures would "
            "be in-sample (to score it anyway, labelled in-sample: {=allow_overlap})"
        )
    return Evidence(unit, shared, total, True, tuple(warnings))


def _model_warnings(planned: str, held: str, allow: bool) -> list[str]:
    """[] when the models agree; a warning when either is unknown or a mismatch is allowed;
    ``MoeplaceError`` for a mismatch not allowed."""
    a, b = model_key(planned), model_key(held)
    if a is None or b is None:
        unknown = planned if a is None else held
        return [f"model {unknown!r} is not known: cannot check that the held-out set routed the same model"]
    if a == b:
        return []
    message = f"the held-out set routed {held!r}, the placement was planned for {planned!r}"
    if not allow:
        raise MoeplaceError(f"{message} (to score it anyway: {{=allow_model_mismatch}})")
    return [message]


def model_key(name: str) -> str | None:
    """A model name as compared: the last path component, lower case, without a note after it
    (``"openai/gpt-oss-20b (every third document)"`` -> ``"gpt-oss-20b"``); None when unknown."""
    core = re.split(r"[\s(]", name.strip(), maxsplit=1)[0].rstrip("/").lower()
    last = core.rsplit("/", 1)[-1]
    return None if not last or last.startswith(("unknown", "synthetic")) else last
