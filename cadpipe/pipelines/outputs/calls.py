"""The one comparison of a probability with its operating threshold, and how the pair is written.

Every place that says whether a class is at or above its threshold asks :func:`at_or_above` (scoring's ``predicted``
column through :func:`cadpipe.pipelines.inference.thresholds.decide`, the report's findings, captions and
tables, the portal and the PDF); every place that prints the two numbers uses :func:`shown_pair`, so the printed
numbers never contradict the call:

- the comparison is made on the exact values: ``probability >= threshold`` (equal counts as "at or above");
- both numbers are printed as percentages with one decimal (``57.0%``); when that rounding would print a
  probability below its threshold as equal to it (0.2596 and 0.2604 both give ``26.0%``), more decimals are
  printed until the two differ (``25.96%`` / ``26.04%``), and past :data:`MAX_DECIMALS` the probability is printed
  as ``<26.0000%``.
"""

from __future__ import annotations

__all__ = ["at_or_above", "shown_pair", "pct", "relation", "MAX_DECIMALS"]

MAX_DECIMALS = 4


def at_or_above(probability: float, threshold: float) -> bool:
    """``True`` when ``probability >= threshold`` (the call is positive at equality)."""
    return float(probability) >= float(threshold)


def pct(value: float, decimals: int = 1) -> str:
    """``0.5704`` → ``"57.0%"``."""
    return f"{100.0 * float(value):.{decimals}f}%"


def shown_pair(probability: float, threshold: float) -> tuple[str, str]:
    """``(probability, threshold)`` as percentages whose printed values agree with :func:`at_or_above`."""
    above = at_or_above(probability, threshold)
    for d in range(1, MAX_DECIMALS + 1):
        p, t = pct(probability, d), pct(threshold, d)
        if (float(p[:-1]) >= float(t[:-1])) == above:
            return p, t
    # below by less than the last printed digit: say so rather than print two equal numbers
    return "<" + pct(threshold, MAX_DECIMALS), pct(threshold, MAX_DECIMALS)


def relation(probability: float, threshold: float) -> str:
    """``"at or above"`` or ``"below"``."""
    return "at or above" if at_or_above(probability, threshold) else "below"
