"""One figure that shows the leash: training curves, the final policy beside the reference,
and every gate's bound, in one PNG per run; and the same figures across a registered
model's versions.

A gate report is a list of verdicts; whether a run passed by a hair or by a mile, and
whether the reward rose while KL ran away, is seen at a glance on a picture and not in a
table. So the figure puts together what the gates judge separately: reward, KL, length,
refusal rates, factuality, win rate (with its interval), pair accuracy and sycophancy.

matplotlib with the Agg backend (no display, safe in a worker thread); a metric that was
not logged draws an empty panel that says so, never an error: a figure must not be the
reason a nightly fails.
"""

from __future__ import annotations

import json
import logging
import math
import tempfile
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

log = logging.getLogger("prefdesk")

# Training curves: panel title -> metric keys in order of preference (DPO/SFT, then PPO).
CURVES: dict[str, tuple[str, ...]] = {
    "train loss": ("train/loss", "ppo/loss", "ppo/policy_loss"),
    "reward (train)": ("train/reward_margin", "ppo/reward"),
    "KL (train)": ("train/kl", "ppo/kl"),
    "length (train)": ("ppo/response_length",),
}
# Final figures: drift metric (without the `drift/` prefix) -> panel title.
FINALS: dict[str, str] = {
    "reward_mean": "held-out reward",
    "kl_per_token": "KL per token",
    "mean_length": "mean answer tokens",
    "length_ratio": "length ratio",
    "over_refusal_rate": "over-refusal",
    "under_refusal_rate": "under-refusal",
    "factuality_mc_accuracy": "factuality (MC)",
    "win_rate": "win rate vs reference",
    "pair_accuracy": "held-out pair accuracy",
    "sycophancy_rate": "sycophancy",
}
# Gates on a derived figure of a panel's metric (a difference, not the value drawn): shown by
# the panel's title (failed or not) and a line of text, since their scale is not the panel's.
RELATED: dict[str, tuple[str, ...]] = {
    "pair_accuracy": ("drift/pair_accuracy_gain_lower",),
    "win_rate": ("drift/win_rate_lower",),
}
TABLE_WIDTH = 48  # characters per gate line: wider text would squeeze every panel
POLICY_COLOUR, REFERENCE_COLOUR = "#3b6fb6", "#9a9a9a"
PASS_COLOUR, FAIL_COLOUR = "#2e8b57", "#c0392b"


def _plt():
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def _field(g: Any, name: str) -> Any:
    return g.get(name) if isinstance(g, Mapping) else getattr(g, name, None)


def _finite(x: Any) -> bool:
    return isinstance(x, (int, float)) and math.isfinite(x)


def metric_history(run_id: str | None, keys: Iterable[str]) -> dict[str, list[tuple[int, float]]]:
    """(step, value) series of each key logged on the run; keys never logged are left out."""
    if not run_id:
        return {}
    from prefdesk.tracking import client

    c, out = client(), {}
    for key in keys:
        try:
            hist = c.get_metric_history(run_id, key)
        except Exception as exc:  # a figure never fails a run; say why the panel is empty
            log.warning("figure: cannot read %s of run %s: %s", key, run_id, exc)
            continue
        if hist:
            out[key] = sorted((m.step, m.value) for m in hist)
    return out


def _empty(ax, title: str, why: str) -> None:
    ax.set_title(title, fontsize=9)
    ax.text(0.5, 0.5, why, ha="center", va="center", fontsize=8, color="#777777", transform=ax.transAxes)
    ax.set_xticks([])
    ax.set_yticks([])


def _bounds(ax, metric: str, gate_results: Sequence[Any], horizontal: bool = True) -> None:
    """Each gate on this metric as a line at its limit: green when passed, red when not."""
    for g in gate_results:
        limit = _field(g, "limit")
        if _field(g, "metric") != metric or not _finite(limit):
            continue
        colour = PASS_COLOUR if _field(g, "passed") else FAIL_COLOUR
        label = f"{_field(g, 'name') or 'gate'} {_field(g, 'op')} {limit:.3g}"
        (ax.axhline if horizontal else ax.axvline)(limit, color=colour, ls="--", lw=1.2, label=label)


def _curve_panel(ax, title: str, keys: Sequence[str], history: Mapping[str, list[tuple[int, float]]]) -> None:
    series = [(k, history[k]) for k in keys if k in history]
    if not series:
        _empty(ax, title, "not logged for this run")
        return
    for key, points in series:
        steps, values = zip(*points)
        ax.plot(steps, values, marker="." if len(points) < 30 else None, lw=1.2, label=key)
    ax.set_title(title, fontsize=9)
    ax.set_xlabel("step", fontsize=8)
    ax.legend(fontsize=6)
    ax.tick_params(labelsize=7)


def _final_panel(ax, name: str, title: str, metrics: Mapping[str, float], gate_results: Sequence[Any]) -> None:
    metric = f"drift/{name}"
    pol, ref = metrics.get(metric), metrics.get(f"reference/{metric}")
    if not _finite(pol):
        gated = [g for g in gate_results if _field(g, "metric") in (metric, f"{metric}_lower")]
        _empty(ax, title, "not measured" + (" (its gate cannot pass)" if gated else ""))
        return
    labels, values, colours = ["policy"], [pol], [POLICY_COLOUR]
    if _finite(ref):
        labels.append("reference")
        values.append(ref)
        colours.append(REFERENCE_COLOUR)
    bars = ax.bar(labels, values, color=colours, width=0.6)
    lo, hi = metrics.get(f"{metric}_lower"), metrics.get(f"{metric}_upper")
    if _finite(lo) and _finite(hi):  # the interval the evidence gate reads
        ax.errorbar([0], [pol], yerr=[[max(pol - lo, 0.0)], [max(hi - pol, 0.0)]], color="black", capsize=4, lw=1)
    for bar, v in zip(bars, values):
        ax.annotate(f"{v:.3g}", (bar.get_x() + bar.get_width() / 2, v), ha="center", va="bottom", fontsize=7)
    _bounds(ax, metric, gate_results)
    _bounds(ax, f"{metric}_lower", gate_results)
    gain_lo, gain_hi = metrics.get(f"{metric}_gain_lower"), metrics.get(f"{metric}_gain_upper")
    if _finite(gain_lo) and _finite(gain_hi):
        ax.set_xlabel(f"gain over reference, interval [{gain_lo:+.3f}, {gain_hi:+.3f}]", fontsize=7)
    related = (metric, f"{metric}_lower", *RELATED.get(name, ()))
    failed = any(_field(g, "metric") in related and not _field(g, "passed") for g in gate_results)
    ax.set_title(title + ("  (gate failed)" if failed else ""), fontsize=9, color=FAIL_COLOUR if failed else "black")
    ax.tick_params(labelsize=7)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=6, loc="lower right")


def _gate_table(ax, gate_results: Sequence[Any]) -> None:
    """The verdicts as text, for the gates whose metric has no panel of its own."""
    ax.axis("off")
    ax.set_title("gates", fontsize=9)
    lines = []
    for g in gate_results:
        value, limit = _field(g, "value"), _field(g, "limit")
        v = f"{value:.3g}" if _finite(value) else "n/a"
        lim = f"{limit:.3g}" if _finite(limit) else "n/a"
        what = f"{v} {_field(g, 'op')} {lim}" if _finite(limit) else str(_field(g, "reason") or "no bound")
        line = ("pass  " if _field(g, "passed") else "FAIL  ") + f"{_field(g, 'name') or _field(g, 'metric')}: {what}"
        lines.append(line if len(line) <= TABLE_WIDTH else line[: TABLE_WIDTH - 3] + "...")
    ax.text(0.0, 1.0, "\n".join(lines) or "no gates", va="top", ha="left", fontsize=7, family="monospace",
            transform=ax.transAxes)


def _grid(plt, n_panels: int, cols: int = 4):
    rows = max(1, math.ceil(n_panels / cols))
    fig, axes = plt.subplots(rows, cols, figsize=(4.0 * cols, 3.0 * rows), squeeze=False)
    flat = list(axes.flat)
    for ax in flat[n_panels:]:
        ax.set_visible(False)
    return fig, flat


def _save(fig, plt, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, format="png", dpi=100)
    plt.close(fig)
    return path


def leash_figure(run_id: str | None, metrics: Mapping[str, float], gate_results: Sequence[Any],
                 path: str | Path, title: str | None = None) -> Path:
    """The run's figure: training curves (from MLflow, where logged), then each drift figure
    for the policy beside the reference with its gates' bounds. Returns the PNG path.

    `gate_results`: GateResult objects or dicts with metric, op, limit, passed (and name).
    """
    plt = _plt()
    history = metric_history(run_id, [k for keys in CURVES.values() for k in keys])
    fig, axes = _grid(plt, len(CURVES) + len(FINALS) + 1)
    for ax, (t, keys) in zip(axes, CURVES.items()):
        _curve_panel(ax, t, keys, history)
    for ax, (name, t) in zip(axes[len(CURVES):], FINALS.items()):
        _final_panel(ax, name, t, metrics, gate_results)
    _gate_table(axes[len(CURVES) + len(FINALS)], gate_results)
    failed = [str(_field(g, "name") or _field(g, "metric")) for g in gate_results if not _field(g, "passed")]
    head = title or f"run {run_id or '(not tracked)'}"
    verdict = "all gates passed" if not failed else "failed: " + ", ".join(failed)
    fig.suptitle(f"{head}: {verdict}", fontsize=11, color=PASS_COLOUR if not failed else FAIL_COLOUR)
    return _save(fig, plt, path)


def _version_gates(c, run_id: str) -> list[dict]:
    """The gate results logged with a version's run (gates.json), or none."""
    with tempfile.TemporaryDirectory() as tmp:
        try:
            local = c.download_artifacts(run_id, "gates.json", tmp)
            return list(json.loads(Path(local).read_text()).get("results", []))
        except Exception:  # older runs, or a run that never reached the gates
            return []


def _aliases(c, v) -> list[str]:
    """A version's aliases (search results leave them out on some stores: asked one by one)."""
    try:
        return list(c.get_model_version(v.name, v.version).aliases or [])
    except Exception:
        return list(getattr(v, "aliases", None) or [])


def version_history(model_name: str) -> list[tuple[int, dict[str, float], list[dict], list[str]]]:
    """(version, its run's final metrics, its gate results, its aliases) for every version, oldest first."""
    from prefdesk.tracking import client

    c = client()
    versions = sorted(c.search_model_versions(f"name='{model_name}'"), key=lambda v: int(v.version))
    rows = []
    for v in versions:
        try:
            run = c.get_run(v.run_id) if v.run_id else None
        except Exception as exc:
            log.warning("figure: version %s of %s has no readable run: %s", v.version, model_name, exc)
            run = None
        metrics = dict(run.data.metrics) if run else {}
        rows.append((int(v.version), metrics, _version_gates(c, v.run_id) if run else [], _aliases(c, v)))
    return rows


def history_figure(model_name: str, path: str | Path) -> Path:
    """The final figures across the registered model's versions, from each version's run:
    policy (filled when the version passed every gate, hollow when not), the reference on
    the same prompts, and each version's gate limit as a short tick."""
    plt = _plt()
    rows = version_history(model_name)
    fig, axes = _grid(plt, len(FINALS))
    for ax, (name, t) in zip(axes, FINALS.items()):
        metric = f"drift/{name}"
        pts = [(ver, m[metric], m.get("gate/all")) for ver, m, _, _ in rows if _finite(m.get(metric))]
        if not pts:
            _empty(ax, t, "not measured in any version")
            continue
        xs = [p[0] for p in pts]
        ax.plot(xs, [p[1] for p in pts], color=POLICY_COLOUR, lw=1, label="policy")
        for ver, val, ok in pts:
            ax.plot([ver], [val], "o", color=POLICY_COLOUR, mfc=POLICY_COLOUR if ok == 1.0 else "white")
        refs = [(ver, m[f"reference/{metric}"]) for ver, m, _, _ in rows if _finite(m.get(f"reference/{metric}"))]
        if refs:
            ax.plot(*zip(*refs), color=REFERENCE_COLOUR, ls=":", marker="s", ms=3, lw=1, label="reference")
        for ver, _, gates, _ in rows:
            for g in gates:
                if g.get("metric") in (metric, f"{metric}_lower") and _finite(g.get("limit")):
                    ax.hlines(g["limit"], ver - 0.3, ver + 0.3, color=PASS_COLOUR if g.get("passed") else FAIL_COLOUR,
                              ls="--", lw=1.2)
        for ver, _, _, aliases in rows:
            if aliases and ver in xs:
                ax.annotate(",".join(aliases), (ver, dict((p[0], p[1]) for p in pts)[ver]), fontsize=6,
                            xytext=(3, 3), textcoords="offset points")
        ax.set_title(t, fontsize=9)
        ax.set_xlabel("version", fontsize=8)
        ax.set_xticks(xs)
        ax.tick_params(labelsize=7)
        ax.legend(fontsize=6)
    fig.suptitle(f"{model_name}: {len(rows)} version(s); filled = passed every gate", fontsize=11)
    return _save(fig, plt, path)


FIGURE_DIR = "figures"


def log_leash_figure(run_id: str | None, metrics: Mapping[str, float], gate_results: Sequence[Any],
                     run_dir: str | Path) -> tuple[Path, str | None]:
    """Draw the run's figure into `run_dir`, log it to the MLflow run under `figures/`, and
    return (local path, artifact URI for a link). Never raises: a figure that cannot be drawn
    or logged is a warning, not a failed night."""
    path = Path(run_dir) / "leash.png"
    try:
        leash_figure(run_id, metrics, gate_results, path)
    except Exception as exc:
        log.warning("figure: cannot draw the leash figure: %s", exc)
        return path, None
    if not run_id:
        return path, None
    try:
        from prefdesk.tracking import Tracker, client

        Tracker(run_id).log_artifact(str(path), FIGURE_DIR)
        return path, f"{client().get_run(run_id).info.artifact_uri.rstrip('/')}/{FIGURE_DIR}/{path.name}"
    except Exception as exc:
        log.warning("figure: cannot log %s to run %s: %s", path, run_id, exc)
        return path, None


def log_history_figure(run_id: str | None, model_name: str, run_dir: str | Path) -> Path | None:
    """The registered model's history figure, drawn into `run_dir` and logged to the run that
    added the newest version. Never raises, as `log_leash_figure`."""
    path = Path(run_dir) / "history.png"
    try:
        history_figure(model_name, path)
        if run_id:
            from prefdesk.tracking import Tracker

            Tracker(run_id).log_artifact(str(path), FIGURE_DIR)
        return path
    except Exception as exc:
        log.warning("figure: cannot draw or log the history of %s: %s", model_name, exc)
        return None
