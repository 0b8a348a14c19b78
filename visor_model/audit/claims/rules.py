"""The verdict rules: the kinds of test a claim's `test:` entry names (`TESTS`), and `judge`, a measurement's
verdict and reason under its test."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace

import numpy as np

from visor_model.audit.claims.computations import Measurement

REPRODUCED, NOT_REPRODUCED, INCONCLUSIVE = "reproduced", "not reproduced", "inconclusive"
NOT_TESTABLE = "not testable in this profile"
VERDICTS = (REPRODUCED, NOT_REPRODUCED, INCONCLUSIVE, NOT_TESTABLE)
# Why a claim is NOT_TESTABLE (the audit table's column `not_testable`, blank for the other verdicts): the
# profile or the checkpoint cannot test it (outside the claim's profiles, or fewer VISOR configurations than it
# needs), or this run's results lack the runs its computation needs (its reason then ends "in this run").
NOT_TESTABLE_IN_PROFILE, NOT_TESTABLE_IN_RUN = "in this profile", "in this run"


def _number(value) -> str:
    if value is None or (isinstance(value, float) and not np.isfinite(value)):
        return "n/a"
    return f"{value:.2f}" if abs(value) < 10 else f"{value:.1f}"


def _fmt(value, unit="") -> str:
    text = _number(value)
    if text == "n/a":
        return text
    return f"{text}{unit}" if unit in ("x", "%") else f"{text} {unit}".strip()


def format_value(value, low=float("nan"), high=float("nan"), unit="") -> str:
    """'27.4 points [17.7, 39.3]' (value with unit, then the CI); 'n/a' without a value."""
    if not (isinstance(value, (int, float)) and np.isfinite(value)):
        return "n/a"
    ci = f" [{_number(low)}, {_number(high)}]" if np.isfinite(low) and np.isfinite(high) else ""
    return _fmt(value, unit) + ci


@dataclass(frozen=True)
class Test:
    """One kind of test of a claim: the fields its `test:` entry needs, what it needs in words (to follow 'the
    claim needs') and the values that hold: `region` gives (low, high, low_open, high_open) of that range."""
    name: str
    fields: tuple[str, ...]
    describe: Callable[[dict, str], str]
    region: Callable[[dict], tuple[float, float, bool, bool]]

    def holds(self, test: dict, value: float) -> bool:
        low, high, low_open, high_open = self.region(test)
        return (value > low if low_open else value >= low) and (value < high if high_open else value <= high)

    def decide(self, test: dict, low: float, high: float) -> str:
        """The verdict on an interval [low, high]: all of it holds, none of it does, or it straddles an edge."""
        if self.holds(test, low) and self.holds(test, high):
            return REPRODUCED
        start, end, start_open, end_open = self.region(test)
        below = high < start or (start_open and high <= start)
        above = low > end or (end_open and low >= end)
        return NOT_REPRODUCED if below or above else INCONCLUSIVE

    def edges(self, test: dict, low: float, high: float) -> list[float]:
        """The edges of the range that lie inside [low, high]."""
        return [e for e in self.region(test)[:2] if np.isfinite(e) and low <= e <= high]


def _tolerance(test: dict) -> float:
    """at_least, at_most and within take an optional tolerance."""
    return test.get("tolerance", 0)


INF = float("inf")
TESTS = {test.name: test for test in (
    Test("at_least", ("target",), lambda t, unit: f"at least {_fmt(t['target'] - _tolerance(t), unit)}",
         lambda t: (t["target"] - _tolerance(t), INF, False, True)),
    Test("at_most", ("target",), lambda t, unit: f"at most {_fmt(t['target'] + _tolerance(t), unit)}",
         lambda t: (-INF, t["target"] + _tolerance(t), True, False)),
    Test("within", ("target",), lambda t, unit: f"{_number(t['target'])} ± {_fmt(_tolerance(t), unit)}",
         lambda t: (t["target"] - _tolerance(t), t["target"] + _tolerance(t), False, False)),
    Test("between", ("low", "high"), lambda t, unit: f"between {_fmt(t['low'], unit)} and {_fmt(t['high'], unit)}",
         lambda t: (t["low"], t["high"], False, False)),
    Test("greater", ("threshold",), lambda t, unit: f"more than {_fmt(t['threshold'], unit)}",
         lambda t: (t["threshold"], INF, True, True)),
    Test("less", ("threshold",), lambda t, unit: f"less than {_fmt(t['threshold'], unit)}",
         lambda t: (-INF, t["threshold"], True, True)),
    Test("no_worse_than", ("margin",), lambda t, unit: f"no worse than -{_fmt(t['margin'], unit)}",
         lambda t: (-t["margin"], INF, False, True)),
    Test("equivalent", ("margin",), lambda t, unit: f"within ±{_fmt(t['margin'], unit)}",
         lambda t: (-t["margin"], t["margin"], False, False)),
)}


def _kind(test: dict) -> Test:
    if test["type"] not in TESTS:
        raise ValueError(f"unknown test {test['type']!r}")
    return TESTS[test["type"]]


def describe_test(test: dict, unit: str = "") -> str:
    """What a test needs, to follow 'the claim needs'."""
    return _kind(test).describe(test, unit)


Z95, Z90 = 1.959964, 1.644854  # standard normal quantiles: a 95% CI's half-width; TOST's one-sided 5% tests


def tested_interval(test: dict, m: Measurement) -> Measurement:
    """The interval a test judges. For `within` {target, tolerance} with a 95% CI: an equivalence test (two
    one-sided tests at 5%, TOST) of measured - paper, where the paper's number carries the same sampling error
    as ours (the same benchmark, its full size, a similar score): SE = (CI width) / (2 x 1.96), the difference's
    SE = SE x sqrt(2), and the 90% CI of the difference, value - target +- 1.645 x sqrt(2) x SE, is shifted back
    onto the value's scale. Reproduced when it lies inside target +- tolerance; an exact reproduction passes
    only when the tolerance exceeds that half-width, so each `within` claim's tolerance is set above it at the
    benchmark's full size (config/claims.yaml) and the reason states it. Every other test judges the
    measurement's own interval."""
    if test["type"] != "within" or not (np.isfinite(m.ci_low) and np.isfinite(m.ci_high)):
        return m
    half = Z90 * np.sqrt(2) * (m.ci_high - m.ci_low) / (2 * Z95)
    note = (f"equivalence test: the 90% CI of measured - paper counts both numbers' sampling error (SE x √2; "
            f"half-width {_number(half)}), so an exact reproduction passes when the tolerance exceeds "
            f"{_number(half)}")
    return replace(m, ci_low=m.value - half, ci_high=m.value + half, interval="equivalence interval",
                   note="; ".join(n for n in (m.note, note) if n))


def judge(test: dict, m: Measurement, unit: str = "") -> tuple[str, str]:
    """(verdict, reason) of a measurement under a test: on its interval where it has one (`tested_interval`:
    reproduced, not reproduced, or inconclusive when the interval straddles an edge of what the claim needs),
    else on the point value (reproduced or not reproduced). No value (NaN): nothing was measured, so it is no
    verdict on the paper: NOT_TESTABLE, its reason ending "in this run"."""
    kind = _kind(test)
    m = tested_interval(test, m)
    value, low, high = m.value, m.ci_low, m.ci_high
    has_ci = np.isfinite(low) and np.isfinite(high)
    needs = f"the claim needs {describe_test(test, unit)}" + (f" for the whole {m.interval}" if has_ci else "")
    note = f"; {m.note}" if m.note else ""
    if not np.isfinite(value):
        return NOT_TESTABLE, f"{m.detail or 'no value could be measured'}; {needs} {NOT_TESTABLE_IN_RUN}"
    measured = f"measured {_fmt(value, unit)}" + (f" ({m.interval} {_number(low)} to {_number(high)})" if has_ci
                                                 else "")
    if not has_ci:
        return (REPRODUCED if kind.holds(test, value) else NOT_REPRODUCED), f"{measured}; {needs}{note}"
    verdict = kind.decide(test, low, high)
    if verdict == INCONCLUSIVE:
        edges = " and ".join(_fmt(e, unit) for e in kind.edges(test, low, high))
        point = ("meets the claim, but not significantly" if kind.holds(test, value)
                 else "misses the claim, but not significantly")
        return INCONCLUSIVE, (f"{measured}: the {m.interval} straddles {edges}, so the data cannot decide (the "
                              f"point value {point}); {needs}{note}")
    return verdict, f"{measured}; {needs}{note}"

