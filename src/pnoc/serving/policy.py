"""The champion policy: whether a newly registered model replaces the champion."""

from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass(frozen=True)
class Decision:
    promote: bool
    reason: str


def decide(new_value: float | None, champion_value: float | None) -> Decision:
    """Promote the new model iff its metric (higher is better) is strictly above the champion's.

    No champion (or a champion without a usable value) -> promote. A missing or non-finite new
    value -> never promote. Ties keep the champion.
    """
    if new_value is None or not math.isfinite(float(new_value)):
        return Decision(False, f"new value {new_value} is not a finite number: never promoted")
    new = float(new_value)
    if champion_value is None:
        return Decision(True, f"no champion yet: {new:.4f} becomes the champion")
    champ = float(champion_value)
    if not math.isfinite(champ):
        return Decision(True, f"champion value {champ} is not a finite number: {new:.4f} wins")
    if new > champ:
        return Decision(True, f"{new:.4f} > champion {champ:.4f}")
    if new == champ:
        return Decision(False, f"{new:.4f} ties champion {champ:.4f}: the champion stays")
    return Decision(False, f"{new:.4f} < champion {champ:.4f}: the champion stays")
