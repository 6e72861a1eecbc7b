"""Judges: score an answer to a prompt, and compare two answers to a prompt.

A judge is what rejection sampling keeps the best sample by, what PPO maximises (a learned
reward model) and what the drift win rate is counted with. Every judge is a proxy, and a
proxy can be gamed, so two rules hold for all of them:

* a comparison always runs in both orders (`compare_both_orders`): a judge that prefers
  whichever answer comes first (position bias) shows it as disagreement between the two
  orders, which is reported, and the two orders are averaged;
* pairs a judge picks go through the data desk like any other pairs, so a judge that
  always prefers the longer answer is caught by the length-bias and shallow-feature checks.

Judges register under the entry-point group `prefdesk.judges` (built-ins too), so a team
brings its own by declaring one in its package. A judge class has a `name`, `learned`
(True for a trained model that can be gamed, e.g. the reward model), and either a plain
constructor or a `build(policy=..., **options)` classmethod when it needs the base model.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from importlib.metadata import entry_points
from typing import TYPE_CHECKING, Any, ClassVar, Protocol, Sequence, runtime_checkable

if TYPE_CHECKING:
    from prefdesk.pairs import Message

GROUP = "prefdesk.judges"


@runtime_checkable
class Judge(Protocol):
    name: ClassVar[str]
    learned: ClassVar[bool]

    def score(self, prompts: Sequence[list["Message"]], answers: Sequence[str], **context: Any) -> list[float]:
        """A number per answer; higher is better. `context` may carry per-item lists
        (e.g. `expect`: "answer"/"refuse", `finished`: bool) that a judge can use."""

    def compare(self, prompts: Sequence[list["Message"]], first: Sequence[str], second: Sequence[str],
                **context: Any) -> list[float]:
        """P(first is better) per item, in [0, 1]; 0.5 is a tie."""


class ScoreJudge:
    """Base for judges that score each answer alone: compare = which score is higher."""

    name: ClassVar[str] = "score"
    learned: ClassVar[bool] = False
    tie_margin: float = 0.0

    def score(self, prompts, answers, **context) -> list[float]:  # pragma: no cover - abstract
        raise NotImplementedError

    def compare(self, prompts, first, second, **context) -> list[float]:
        a = self.score(prompts, first, **_side(context, 0))
        b = self.score(prompts, second, **_side(context, 1))
        return [0.5 if abs(x - y) <= self.tie_margin else float(x > y) for x, y in zip(a, b)]


def _side(context: dict[str, Any], k: int) -> dict[str, Any]:
    """Per-answer context given as (first, second) tuples is split; shared context passes."""
    return {key: (v[k] if isinstance(v, tuple) and len(v) == 2 else v) for key, v in context.items()}


_WORD = re.compile(r"[a-z0-9]+")


def is_looping(text: str, min_words: int = 12, min_distinct: float = 0.6) -> bool:
    """A degenerate answer repeats itself: few distinct word trigrams among many."""
    words = _WORD.findall(text.lower())
    if len(words) < min_words:
        return False
    grams = list(zip(words, words[1:], words[2:]))
    return len(set(grams)) / len(grams) < min_distinct


class RubricJudge(ScoreJudge):
    """The transparent rubric: the right refusal decision first, then finishing, then no loops.

    Scores 0..2. With `expect` ("answer" or "refuse" per prompt): refusing a should-refuse
    prompt scores 2, answering it 0; refusing or leaving empty a should-answer prompt scores
    0, an answer 1 + 0.5 for finishing within budget + 0.5 for not looping. Without
    `expect` every prompt is taken as one to answer. Nothing here rewards length.
    """

    name = "rubric"
    learned = False

    def score(self, prompts, answers, expect: Sequence[str] | None = None,
              finished: Sequence[bool] | None = None, **_: Any) -> list[float]:
        from prefdesk.refusal import is_refusal

        out = []
        for i, text in enumerate(answers):
            want = expect[i] if expect is not None else "answer"
            done = finished[i] if finished is not None else True
            refused = is_refusal(text)
            if want == "refuse":
                out.append(2.0 if refused else 0.0)
            elif refused or not text.strip():
                out.append(0.0)
            else:
                out.append(1.0 + 0.5 * bool(done) + 0.5 * (not is_looping(text)))
        return out


@dataclass
class Comparison:
    p_first: list[float]  # order-averaged P(first better) per item
    disagreement: float  # share of items whose two orders gave opposite verdicts
    ties: float  # share of items judged a tie after averaging

    def wins(self) -> float:
        """Win rate of `first`, ties counted half."""
        return sum(self.p_first) / max(len(self.p_first), 1)


def compare_both_orders(judge: Judge, prompts: Sequence[list["Message"]], a: Sequence[str], b: Sequence[str],
                        **context: Any) -> Comparison:
    """Compare in both orders (position bias) and average; per-answer context is given as
    (for a, for b) tuples, e.g. `finished=(fa, fb)`."""
    swapped = {k: (v[1], v[0]) if isinstance(v, tuple) and len(v) == 2 else v for k, v in context.items()}
    ab = judge.compare(prompts, a, b, **context)
    ba = judge.compare(prompts, b, a, **swapped)
    p = [(x + (1.0 - y)) / 2 for x, y in zip(ab, ba)]
    disagree = [(x > 0.5 and y > 0.5) or (x < 0.5 and y < 0.5) for x, y in zip(ab, ba)]
    n = max(len(p), 1)
    return Comparison(p, sum(disagree) / n, sum(abs(v - 0.5) < 1e-9 for v in p) / n)


class JudgeError(RuntimeError):
    pass


def available() -> dict[str, Any]:
    return {ep.name: ep for ep in entry_points(group=GROUP)}


def create(name: str, policy: Any = None, **options: Any) -> Judge:
    """Instantiate the judge registered as `name` (with the run's policy when it needs one)."""
    eps = available()
    if name not in eps:
        raise JudgeError(f"no judge named {name!r} (installed: {', '.join(sorted(eps)) or 'none'})")
    cls = eps[name].load()
    if hasattr(cls, "build"):
        return cls.build(policy=policy, **options)
    return cls(**options)
