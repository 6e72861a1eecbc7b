"""Gates: named bounds on drift metrics, and the verdict that decides promotion.

A gate is absolute (`drift/length_ratio <= 1.3`), relative to the reference measured on the
same prompts (`drift/over_refusal_rate <= reference + 0.05`), or relative to the current
champion. A candidate is promoted only when every gate passes. A reward that rises while a
guard-rail gate fails is named for what it most likely is: suspected reward hacking.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

from prefdesk.config import Gate

# Gates on these metrics guard skill and behaviour; a reward gain that breaks one is suspect.
GUARD_RAILS = {
    "drift/kl_per_token",
    "drift/kl_per_response",
    "drift/length_ratio",
    "drift/mean_length",
    "drift/over_refusal_rate",
    "drift/under_refusal_rate",
    "drift/factuality_mc_accuracy",
}
REWARD_METRIC = "drift/reward_mean"
REWARD_RISE = 0.01  # nats of held-out implicit reward margin: below this it is noise, not a rise


def _guard_rail_broken(r: "GateResult") -> bool:
    """A failed upper-style bound on skill or behaviour. "KL too low" (no movement) is a
    failed run, not a sign of hacking, so lower bounds on KL do not count."""
    if r.passed or r.metric not in GUARD_RAILS:
        return False
    return not (r.metric.startswith("drift/kl") and r.op == ">=")


@dataclass
class GateResult:
    name: str
    metric: str
    op: str
    limit: float | None
    value: float | None
    passed: bool
    reason: str


@dataclass
class GateReport:
    results: list[GateResult]
    suspected_reward_hacking: bool = False
    notes: list[str] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return all(r.passed for r in self.results)

    @property
    def failed(self) -> list[GateResult]:
        return [r for r in self.results if not r.passed]

    def metrics(self) -> dict[str, float]:
        out = {f"gate/{r.name}": float(r.passed) for r in self.results}
        out["gate/all"] = float(self.passed)
        return out

    def to_dict(self) -> dict:
        return {
            "passed": self.passed,
            "suspected_reward_hacking": self.suspected_reward_hacking,
            "notes": self.notes,
            "results": [asdict(r) for r in self.results],
        }

    def write(self, path: str | Path) -> Path:
        path = Path(path)
        path.write_text(json.dumps(self.to_dict(), indent=2))
        return path

    @classmethod
    def read(cls, path: str | Path) -> "GateReport":
        d = json.loads(Path(path).read_text())
        return cls([GateResult(**r) for r in d["results"]], d["suspected_reward_hacking"], d["notes"])


def _fmt(x: float) -> str:
    return f"{x:.4g}"


def check_gate(name: str, gate: Gate, metrics: dict[str, float], champion: dict[str, float] | None) -> GateResult:
    value = metrics.get(gate.metric)
    if value is None:
        return GateResult(name, gate.metric, gate.op, None, None, False, f"{gate.metric} was not measured")
    if gate.relative_to == "absolute":
        limit, base = gate.bound, ""
    elif gate.relative_to == "reference":
        ref = metrics.get(f"reference/{gate.metric}")
        if ref is None:
            return GateResult(name, gate.metric, gate.op, None, value, False, f"no reference figure for {gate.metric}")
        limit, base = ref + gate.bound, f" (reference {_fmt(ref)} {'+' if gate.bound >= 0 else '-'} {_fmt(abs(gate.bound))})"
    else:
        if not champion or gate.metric not in champion:
            return GateResult(name, gate.metric, gate.op, None, value, True, "no champion yet: nothing to compare with")
        limit = champion[gate.metric] + gate.bound
        base = f" (champion {_fmt(champion[gate.metric])} {'+' if gate.bound >= 0 else '-'} {_fmt(abs(gate.bound))})"
    ok = value <= limit if gate.op == "<=" else value >= limit
    verdict = "within" if ok else "outside"
    reason = f"{gate.metric} = {_fmt(value)}, {verdict} {gate.op} {_fmt(limit)}{base}"
    return GateResult(name, gate.metric, gate.op, limit, value, ok, reason)


def evaluate_gates(
    gates: dict[str, Gate], metrics: dict[str, float], champion: dict[str, float] | None = None
) -> GateReport:
    results = [check_gate(name, g, metrics, champion) for name, g in gates.items()]
    report = GateReport(results)
    reward = metrics.get(REWARD_METRIC, 0.0)
    broken = [r for r in results if _guard_rail_broken(r)]
    if reward > REWARD_RISE and broken:
        report.suspected_reward_hacking = True
        report.notes.append(
            f"suspected reward hacking: reward rose ({REWARD_METRIC} = {_fmt(reward)}) while "
            + ", ".join(r.name for r in broken)
            + " left their bounds; a reward score alone is not success"
        )
    return report
