"""Are the labels read the right way round? Agreement with independent signals.

A file whose label coding was guessed wrong (0 = first wins read as 0 = tie, A/B swapped)
trains the exact opposite of what was meant, and every other check passes: the pairs are
well formed, just reversed. Nothing in the data says which side is chosen except the
label, so the desk asks signals that never saw the labels which side they prefer, and
counts how often they agree with the labels:

- ``rubric``: the transparent rubric judge (`prefdesk.judges.RubricJudge`), both orders.
  Decisive only where one answer refuses, is empty or loops and the other does not.
- ``features``: the shallow features with the priors of ordinary preference data: the
  chosen answer is longer and more structured (words, list items, markdown, line breaks);
  each pair votes by the sum of the four.
- ``reference``: the reference model's own preference, mean token log-prob of chosen
  against rejected (`answers_logps(..., role="reference")`), on a seeded sample of at
  most `sample` pairs, only when the caller passes a loaded policy.

Each signal gets its agreement over the pairs it decides, with a Wilson 95% interval.
No signal is right on every set: a harmlessness set prefers refusals (the rubric agrees
with only ~28% of hh-rlhf harmless-base), and a small instruct model likes refusals
better than helpful answers (SmolLM2-135M agrees with ~27% of coconot's labels). So a
signal somewhat below chance is no verdict; a set is *probably flipped* only when some
signal with enough decisive pairs sits *far* below chance: the upper end of its interval
under `min_label_direction` (0.25 by default). The measured figures for real sets are in
`benchmarks/direction_check.py`.
"""

from __future__ import annotations

import math
import random
from dataclasses import asdict, dataclass
from typing import Any, Sequence

import numpy as np
import pandas as pd

from prefdesk.pairs import Pair

Z95 = 1.959963984540054
FEATURE_PRIORS = ("length_words", "list_items", "markdown", "newlines")  # chosen higher
RUBRIC_SAMPLE = 2000  # decisive on ~15% of real pairs: a few hundred votes, about a second


def wilson(k: int, n: int, z: float = Z95) -> tuple[float, float]:
    """Wilson score interval of a proportion k/n (no nonsense at 0 or n, unlike the normal one)."""
    if n == 0:
        return float("nan"), float("nan")
    p = k / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return max(0.0, centre - half), min(1.0, centre + half)


@dataclass
class Signal:
    """One signal's agreement with the labels over the pairs it decides."""

    name: str
    pairs: int       # pairs looked at
    decisive: int    # pairs where the signal preferred a side
    agree: int       # ... and it was the labelled chosen side
    low: float
    high: float

    @property
    def agreement(self) -> float:
        return self.agree / self.decisive if self.decisive else float("nan")

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "agreement": round(self.agreement, 4) if self.decisive else None,
                "low": round(self.low, 4) if self.decisive else None,
                "high": round(self.high, 4) if self.decisive else None}

    def line(self) -> str:
        if not self.decisive:
            return f"{self.name}: no decisive pairs of {self.pairs}"
        return (f"{self.name} {self.agreement:.0%} [{self.low:.0%}, {self.high:.0%}] "
                f"of {self.decisive} decisive pairs")


def signal(name: str, votes: np.ndarray) -> Signal:
    """votes: +1 the signal prefers the labelled chosen side, -1 the rejected one, 0 no preference."""
    votes = np.asarray(votes)
    decisive, agree = int((votes != 0).sum()), int((votes > 0).sum())
    low, high = wilson(agree, decisive)
    return Signal(name, int(len(votes)), decisive, agree, low, high)


def feature_votes(wins: pd.DataFrame) -> np.ndarray:
    """Per pair: the sign of the summed votes of the length and structure features
    (`features.win_columns`: 1 chosen higher, 0 lower, 0.5 tie)."""
    if wins.empty:
        return np.zeros(0)
    return np.sign(sum(np.sign(wins[f"win_{c}"].to_numpy() - 0.5) for c in FEATURE_PRIORS))


def _sample(n: int, k: int, seed: int) -> list[int]:
    return sorted(random.Random(seed).sample(range(n), k)) if n > k else list(range(n))


def rubric_votes(pairs: Sequence[Pair], seed: int = 0, sample: int = RUBRIC_SAMPLE) -> np.ndarray:
    from prefdesk.judges import RubricJudge, compare_both_orders

    chosen = [pairs[i] for i in _sample(len(pairs), sample, seed)]
    if not chosen:
        return np.zeros(0)
    cmp = compare_both_orders(RubricJudge(), [p.prompt for p in chosen], [p.chosen for p in chosen],
                              [p.rejected for p in chosen])
    return np.sign(np.asarray(cmp.p_first) - 0.5)


def reference_votes(policy, pairs: Sequence[Pair], max_length: int, sample: int = 64, seed: int = 0,
                    batch_size: int = 8) -> np.ndarray:
    """The reference model (the policy with its adapters off) prefers the answer with the
    higher mean token log-prob; a seeded sample keeps this to seconds on a GPU."""
    import torch

    from prefdesk.engine.logprobs import answers_logps

    chosen = [pairs[i] for i in _sample(len(pairs), sample, seed)]
    if not chosen:
        return np.zeros(0)
    with torch.no_grad():
        got = answers_logps(policy, [(p.prompt, [p.chosen, p.rejected]) for p in chosen], role="reference",
                            max_length=max_length, batch_size=batch_size)
    diff = np.array([c[0] / max(c[1], 1.0) - r[0] / max(r[1], 1.0) for c, r in got])
    return np.sign(diff)


@dataclass
class Direction:
    signals: list[Signal]
    min_decisive: int
    threshold: float

    def confident(self) -> list[Signal]:
        return [s for s in self.signals if s.decisive >= self.min_decisive]

    def worst(self) -> Signal | None:
        """The confident signal whose interval reaches highest least: the strongest case for "flipped"."""
        conf = self.confident()
        return min(conf, key=lambda s: s.high) if conf else None

    @property
    def flipped(self) -> bool:
        w = self.worst()
        return w is not None and w.high < self.threshold

    def reason(self) -> str:
        lines = "; ".join(s.line() for s in self.signals)
        w = self.worst()
        if w is None:
            return f"too few decisive pairs (< {self.min_decisive}) to tell the labels' direction: {lines}"
        if self.flipped:
            return (f"PROBABLY FLIPPED: {w.name} agrees with only {w.agreement:.0%} of the labels "
                    f"(95% interval up to {w.high:.0%} < {self.threshold:.0%}); check the label coding "
                    f"(data.label_map) or swap chosen and rejected. Signals: {lines}")
        return f"no signal far below chance (every interval reaches {self.threshold:.0%}): {lines}"


def estimate(pairs: Sequence[Pair], wins: pd.DataFrame, *, policy=None, max_length: int = 512, sample: int = 64,
             seed: int = 0, min_decisive: int = 20, threshold: float = 0.25) -> Direction:
    """Agreement of the labels with each available signal (see the module docstring)."""
    signals = [signal("rubric", rubric_votes(pairs, seed)), signal("features", feature_votes(wins))]
    if policy is not None and sample > 0:
        signals.append(signal("reference", reference_votes(policy, pairs, max_length, sample, seed)))
    return Direction(signals, min_decisive, threshold)
