"""Evidence for promotion: confidence bounds instead of point estimates.

A win rate of 0.5 on 32 prompts, or a pair accuracy equal to the reference's, says nothing
was learnt; yet a gate written as `win_rate >= 0.5` passes it. Every figure here comes with
an interval, and a gate compares the *lower* end of that interval with its bound, so a
candidate is promoted only when the data shows an improvement beyond chance.

Pure functions over counts and floats (no torch), so they are cheap to test with known
values and can be applied to any judge's verdicts or any per-item correctness flags.

- `wilson`: the Wilson score interval of a proportion. Chosen over the normal (Wald)
  interval because Wald collapses to a zero-width interval at 0/n and n/n and undercovers
  at the sample sizes an eval set has (tens of prompts); Wilson stays inside [0, 1] and
  keeps close to its nominal coverage there.
- `win_rate_interval`: wins, ties and losses kept apart; the rate counts a tie as half a
  win (so the reference against itself scores 0.5), its Wilson interval, and the lower
  bound a gate uses.
- `paired_comparison`: the policy and the reference are scored on the *same* held-out
  pairs, so their accuracies are paired: only the discordant pairs (one right, the other
  wrong) carry information about the difference. An exact sign test on those, and
  Newcombe's interval (method 10, Wilson-based) for the difference of paired proportions.
- `indistinguishable`: the named verdict for a run that did not measurably move: KL below
  a floor, a win-rate interval containing 0.5 and no pair-accuracy gain with confidence.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from statistics import NormalDist
from typing import Iterable

DEFAULT_LEVEL = 0.90  # two-sided; the lower end is then a one-sided 95% bound
DEFAULT_KL_FLOOR = 1e-3  # nats per token: below this the policy's answers barely differ


def z_for(level: float) -> float:
    """The two-sided normal quantile for a confidence level in (0, 1)."""
    if not 0.0 < level < 1.0:
        raise ValueError(f"confidence level must be in (0, 1), got {level}")
    return NormalDist().inv_cdf(0.5 + level / 2)


def wilson(successes: float, n: float, level: float = DEFAULT_LEVEL) -> tuple[float, float]:
    """Wilson score interval of successes / n at a two-sided level.

    With no observations (n = 0) nothing is known: the interval is the whole of [0, 1].
    `successes` may be fractional (ties counted as half).
    """
    if n < 0 or successes < 0 or successes > n:
        raise ValueError(f"need 0 <= successes <= n, got {successes}/{n}")
    if n == 0:
        return 0.0, 1.0
    z = z_for(level)
    p = successes / n
    z2n = z * z / n
    centre = (p + z2n / 2) / (1 + z2n)
    half = z * math.sqrt(p * (1 - p) / n + z2n / (4 * n)) / (1 + z2n)
    return max(0.0, centre - half), min(1.0, centre + half)


@dataclass(frozen=True)
class WinRate:
    """A win rate with its interval; ties are reported, and counted as half a win."""

    wins: int
    ties: int
    losses: int
    rate: float
    lower: float  # what a gate compares with its bound
    upper: float
    level: float

    @property
    def n(self) -> int:
        return self.wins + self.ties + self.losses

    @property
    def contains_half(self) -> bool:
        return self.lower <= 0.5 <= self.upper

    def describe(self) -> str:
        return (f"win rate {self.rate:.3f} ({self.wins} wins, {self.ties} ties, {self.losses} losses of {self.n}), "
                f"{self.level:.0%} interval [{self.lower:.3f}, {self.upper:.3f}]")

    def to_dict(self) -> dict:
        return asdict(self)


def win_rate_interval(wins: int, ties: int, losses: int, level: float = DEFAULT_LEVEL) -> WinRate:
    """Win rate (ties half) with its Wilson interval.

    Counting ties as half keeps the reference-against-itself at exactly 0.5 and makes an
    all-ties run as uninformative as it is: its interval is centred on 0.5, so it never
    clears a bound of 0.5. Treating a tie as half a success slightly narrows the interval
    compared with a multinomial treatment; with the gate on the lower bound at 90% that is
    a small, documented optimism, far smaller than the point estimate's.
    """
    if min(wins, ties, losses) < 0:
        raise ValueError(f"counts must be >= 0, got wins={wins} ties={ties} losses={losses}")
    n = wins + ties + losses
    score = wins + ties / 2
    lo, hi = wilson(score, n, level)
    return WinRate(wins, ties, losses, score / n if n else 0.5, lo, hi, level)


VERDICT_SCORES = {"policy": 1.0, "tie": 0.5, "reference": 0.0}


def win_rate_from_scores(scores: Iterable[float | str], level: float = DEFAULT_LEVEL) -> WinRate:
    """From per-prompt verdicts 1.0 (policy wins), 0.5 (tie), 0.0 (reference wins), as drift keeps
    them, or the words of samples.jsonl's `verdict` field ("policy", "tie", "reference")."""
    wins = ties = losses = 0
    for raw in scores:
        s = VERDICT_SCORES.get(raw, raw) if isinstance(raw, str) else raw
        if s == 1.0:
            wins += 1
        elif s == 0.5:
            ties += 1
        elif s == 0.0:
            losses += 1
        else:
            raise ValueError(f"a verdict must be 1.0, 0.5 or 0.0 (policy, tie, reference), got {raw!r}")
    return win_rate_interval(wins, ties, losses, level)


def sign_test_p(better: int, worse: int) -> float:
    """One-sided exact sign test: P(X >= better) for X ~ Binomial(better + worse, 1/2).

    The discordant pairs alone decide whether the policy beats the reference; under "no
    difference" each is equally likely to go either way. No discordant pairs: p = 1.
    """
    if better < 0 or worse < 0:
        raise ValueError("counts must be >= 0")
    n = better + worse
    if n == 0:
        return 1.0
    return sum(math.comb(n, k) for k in range(better, n + 1)) / 2**n


@dataclass(frozen=True)
class PairedComparison:
    """Policy against reference on the same items: each item right (1) or wrong (0) for each."""

    both: int  # right for both
    policy_only: int  # right for the policy, wrong for the reference
    reference_only: int
    neither: int
    policy_rate: float
    reference_rate: float
    policy_lower: float  # Wilson interval of the policy's accuracy: compare the lower end with 0.5
    policy_upper: float
    diff: float  # policy_rate - reference_rate
    diff_lower: float  # Newcombe lower bound of the difference: > 0 means a gain with confidence
    diff_upper: float
    sign_test_p: float  # one-sided, policy better
    level: float

    @property
    def n(self) -> int:
        return self.both + self.policy_only + self.reference_only + self.neither

    @property
    def beats_reference(self) -> bool:
        return self.diff_lower > 0.0

    @property
    def above_half(self) -> bool:
        return self.policy_lower > 0.5

    def describe(self) -> str:
        return (f"pair accuracy {self.policy_rate:.3f} vs reference {self.reference_rate:.3f} on {self.n} pairs "
                f"({self.policy_only} gained, {self.reference_only} lost); difference {self.diff:+.3f}, "
                f"{self.level:.0%} interval [{self.diff_lower:+.3f}, {self.diff_upper:+.3f}], "
                f"sign test p = {self.sign_test_p:.3g}")

    def to_dict(self) -> dict:
        return asdict(self)


def newcombe_paired(both: int, policy_only: int, reference_only: int, neither: int,
                    level: float = DEFAULT_LEVEL) -> tuple[float, float]:
    """Newcombe's (1998, method 10) interval for the difference of two paired proportions.

    Built from the Wilson intervals of each margin, corrected for their correlation (phi,
    with Newcombe's continuity correction; the square-and-add form of Fagerland et al.),
    so it keeps Wilson's good behaviour at small n and at 0 or 1, where the Wald interval
    for paired differences is degenerate.
    """
    a, b, c, d = both, policy_only, reference_only, neither
    n = a + b + c + d
    if n == 0:
        return -1.0, 1.0
    p1, p2 = (a + b) / n, (a + c) / n
    l1, u1 = wilson(a + b, n, level)
    l2, u2 = wilson(a + c, n, level)
    denom = (a + b) * (c + d) * (a + c) * (b + d)
    cross = a * d - b * c
    # Newcombe's continuity-corrected correlation: a small positive one counts as none.
    if denom == 0 or 0 <= cross <= n / 2:
        phi = 0.0
    else:
        phi = (cross - n / 2 if cross > 0 else cross) / math.sqrt(denom)
    diff = p1 - p2
    dl = (p1 - l1) ** 2 - 2 * phi * (p1 - l1) * (u2 - p2) + (u2 - p2) ** 2
    du = (u1 - p1) ** 2 - 2 * phi * (u1 - p1) * (p2 - l2) + (p2 - l2) ** 2
    return max(-1.0, diff - math.sqrt(max(dl, 0.0))), min(1.0, diff + math.sqrt(max(du, 0.0)))


def paired_comparison(policy_correct: Iterable[bool], reference_correct: Iterable[bool],
                      level: float = DEFAULT_LEVEL) -> PairedComparison:
    """Pair accuracy of the policy against the reference's on the same held-out pairs."""
    pol, ref = list(policy_correct), list(reference_correct)
    if len(pol) != len(ref):
        raise ValueError(f"policy and reference were scored on different items ({len(pol)} vs {len(ref)})")
    a = sum(1 for p, r in zip(pol, ref) if p and r)
    b = sum(1 for p, r in zip(pol, ref) if p and not r)
    c = sum(1 for p, r in zip(pol, ref) if r and not p)
    return paired_counts(a, b, c, len(pol) - a - b - c, level)


def paired_counts(both: int, policy_only: int, reference_only: int, neither: int,
                  level: float = DEFAULT_LEVEL) -> PairedComparison:
    """`paired_comparison` from the 2x2 table's counts."""
    if min(both, policy_only, reference_only, neither) < 0:
        raise ValueError("counts must be >= 0")
    n = both + policy_only + reference_only + neither
    pr = (both + policy_only) / n if n else 0.0
    rr = (both + reference_only) / n if n else 0.0
    lo, hi = newcombe_paired(both, policy_only, reference_only, neither, level)
    p_lo, p_hi = wilson(both + policy_only, n, level)
    return PairedComparison(
        both, policy_only, reference_only, neither, pr, rr, p_lo, p_hi,
        pr - rr, lo, hi, sign_test_p(policy_only, reference_only), level,
    )


@dataclass(frozen=True)
class Verdict:
    """A named outcome beside the gates: `indistinguishable` does not promote."""

    name: str  # "indistinguishable" | "distinguishable"
    promotes: bool
    reason: str


INDISTINGUISHABLE = "indistinguishable"


def indistinguishable(kl_per_token: float, win: WinRate, pairs: PairedComparison | None,
                      kl_floor: float = DEFAULT_KL_FLOOR, against: str = "reference") -> Verdict:
    """Whether the candidate is indistinguishable from the reference (or the champion).

    All three must hold: it barely moved (KL per token below the floor), the judge cannot
    tell it apart (the win-rate interval contains 0.5) and it does not order held-out pairs
    better with confidence. Any one sign of a real change makes it distinguishable, and the
    gates then decide whether the change is good. A run with no held-out pairs is judged on
    KL and win rate alone.
    """
    still = kl_per_token < kl_floor
    tied = win.contains_half
    no_gain = pairs is None or not pairs.beats_reference
    if still and tied and no_gain:
        pair_txt = "no held-out pairs" if pairs is None else (
            f"pair accuracy {pairs.policy_rate:.3f} vs {pairs.reference_rate:.3f}, "
            f"gain interval [{pairs.diff_lower:+.3f}, {pairs.diff_upper:+.3f}] includes 0")
        return Verdict(INDISTINGUISHABLE, False,
                       f"the candidate is indistinguishable from the {against}: KL {kl_per_token:.3g}/token "
                       f"< floor {kl_floor:g}, {win.describe()} contains 0.5, {pair_txt}; nothing significant was learnt")
    signs = [s for s, ok in ((f"KL {kl_per_token:.3g}/token >= {kl_floor:g}", not still),
                             (f"win-rate interval [{win.lower:.3f}, {win.upper:.3f}] excludes 0.5", not tied),
                             ("pair accuracy beats the " + against + " with confidence", not no_gain)) if ok]
    return Verdict("distinguishable", True, f"the candidate differs from the {against}: " + "; ".join(signs))


def evidence_metrics(win: WinRate, pairs: PairedComparison | None) -> dict[str, float]:
    """Flat figures for MLflow and the gates (the `drift/` namespace the gates read)."""
    out = {
        "drift/win_rate_lower": win.lower,
        "drift/win_rate_upper": win.upper,
        "drift/win_ties": float(win.ties),
        "drift/win_wins": float(win.wins),
        "drift/win_losses": float(win.losses),
    }
    if pairs is not None:
        out.update({
            "drift/pair_accuracy_lower": pairs.policy_lower,
            "drift/pair_accuracy_upper": pairs.policy_upper,
            "drift/pairs_both": float(pairs.both),
            "drift/pairs_gained": float(pairs.policy_only),
            "drift/pairs_lost": float(pairs.reference_only),
            "drift/pairs_neither": float(pairs.neither),
            "drift/pair_accuracy_gain": pairs.diff,
            "drift/pair_accuracy_gain_lower": pairs.diff_lower,
            "drift/pair_accuracy_gain_upper": pairs.diff_upper,
            "drift/pair_accuracy_sign_p": pairs.sign_test_p,
        })
    return out


def from_metrics(metrics: dict[str, float], level: float = DEFAULT_LEVEL) -> tuple[WinRate | None, PairedComparison | None]:
    """The win rate and the paired comparison back from the flat figures `evidence_metrics` wrote
    (what the gate step reads from drift.json); None where they were not measured."""
    def count(key: str) -> int | None:
        v = metrics.get(key)
        return None if v is None else int(round(v))

    w, t, l = count("drift/win_wins"), count("drift/win_ties"), count("drift/win_losses")
    win = win_rate_interval(w, t, l, level) if None not in (w, t, l) else None
    cells = [count(f"drift/pairs_{k}") for k in ("both", "gained", "lost", "neither")]
    pairs = paired_counts(*cells, level=level) if None not in cells else None
    return win, pairs


def verdict_from_metrics(metrics: dict[str, float], kl_floor: float = DEFAULT_KL_FLOOR,
                         level: float = DEFAULT_LEVEL) -> Verdict | None:
    """`indistinguishable` over drift.json's figures; None when the evidence was not measured
    (a drift file from before the evidence figures), so old runs are judged as before."""
    win, pairs = from_metrics(metrics, level)
    kl = metrics.get("drift/kl_per_token")
    if win is None or kl is None:
        return None
    return indistinguishable(kl, win, pairs, kl_floor)


def evidence_notes(metrics: dict[str, float], level: float = DEFAULT_LEVEL) -> list[str]:
    """Lines for the gate report: the intervals behind the win-rate and pair-accuracy gates,
    and, when neither shows a gain, that in plain words."""
    win, pairs = from_metrics(metrics, level)
    notes = [x.describe() for x in (win, pairs) if x is not None]
    if win is not None and win.contains_half and (pairs is None or pairs.diff_lower <= 0):
        notes.append("nothing significant was learnt: the win rate's interval contains 0.5 and held-out "
                     "pair accuracy did not rise with confidence")
    return notes
