"""The label-direction check: a real preference set with its labels flipped is caught, the
set as published is not, and the reference model's signal runs on a loaded policy."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from prefdesk.config import CheckThresholds, DataSettings
from prefdesk.validations.desk import run_data_desk
from prefdesk.validations.direction import estimate, signal, wilson

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data"
# CoCoNot preference pairs: a helpful answer (chosen) against an over-refusal (rejected),
# 927 rows, MIT (see ../shared/data/README.md).
COCONOT = SHARED / "coconot" / "coconot_pref.jsonl"


def _coconot() -> list[dict]:
    if not COCONOT.exists():
        pytest.skip(f"{COCONOT} absent (the shared data folder is not next to this checkout)")
    return [json.loads(line) for line in COCONOT.read_text(encoding="utf-8").splitlines() if line.strip()]


def _write(path: Path, rows: list[dict]) -> str:
    path.write_text("\n".join(json.dumps(r, ensure_ascii=False) for r in rows) + "\n", encoding="utf-8")
    return str(path)


def test_wilson_interval():
    lo, hi = wilson(5, 100)
    assert lo == pytest.approx(0.0215, abs=1e-3) and hi == pytest.approx(0.1118, abs=1e-3)
    assert wilson(0, 20)[0] == 0.0 and 0.0 < wilson(0, 20)[1] < 0.2
    assert all(np.isnan(wilson(0, 0)))
    s = signal("x", np.array([1, 1, -1, 0]))
    assert (s.pairs, s.decisive, s.agree) == (4, 3, 2) and s.agreement == pytest.approx(2 / 3)


def test_flipped_real_set_is_caught_and_the_published_set_is_not(tmp_path):
    rows = _coconot()
    flipped = [{**r, "chosen": r["rejected"], "rejected": r["chosen"]} for r in rows]
    settings = DataSettings()
    good = run_data_desk([_write(tmp_path / "coconot.jsonl", rows)], settings, tmp_path / "good", data_docs=False)
    bad = run_data_desk([_write(tmp_path / "flipped.jsonl", flipped)], settings, tmp_path / "bad", data_docs=False)

    g, b = good.check("label_direction"), bad.check("label_direction")
    assert g.passed and not g.figures["probably_flipped"], g.reason
    assert not b.passed and b.figures["probably_flipped"], b.reason
    assert "PROBABLY FLIPPED" in b.reason and any(f.startswith("label_direction") for f in bad.failed)
    rubric_good, rubric_bad = g.figures["signals"]["rubric"], b.figures["signals"]["rubric"]
    assert rubric_bad["decisive"] >= 20 and rubric_bad["high"] < 0.25 < rubric_good["low"]
    assert b.figure == pytest.approx(1 - g.figures["signals"][b.figures["worst"]]["agreement"], abs=1e-3)
    assert bad.metrics()["data/check/label_direction"] == b.figure
    # the same numbers, seen from the other side: flipping turns agreement a into 1 - a
    assert rubric_bad["agreement"] == pytest.approx(1 - rubric_good["agreement"], abs=1e-3)


def test_a_small_flipped_sample_is_still_caught(tmp_path):
    rows = _coconot()[:300]
    flipped = [{**r, "chosen": r["rejected"], "rejected": r["chosen"]} for r in rows]
    rep = run_data_desk([_write(tmp_path / "f.jsonl", flipped)], DataSettings(), tmp_path / "o", data_docs=False)
    assert rep.check("label_direction").figures["probably_flipped"]
    # 0 switches the gate off; the figures stay
    off = DataSettings(checks=CheckThresholds(min_label_direction=0.0))
    rep = run_data_desk([_write(tmp_path / "f.jsonl", flipped)], off, tmp_path / "o2", data_docs=False)
    assert rep.check("label_direction").passed and rep.check("label_direction").figures["signals"]["rubric"]["decisive"]


def test_too_few_decisive_pairs_is_no_verdict(tmp_path):
    rows = [{"prompt": f"Question {i}?", "chosen": f"Answer {i} is plain.", "rejected": f"Reply {i} is plain."}
            for i in range(15)]
    rep = run_data_desk([_write(tmp_path / "s.jsonl", rows)], DataSettings(), tmp_path / "o", data_docs=False)
    c = rep.check("label_direction")
    assert c.passed and not c.figures["probably_flipped"] and "too few decisive pairs" in c.reason


def test_reference_signal_on_a_loaded_policy(tiny_policy, toy_pairs):
    from prefdesk.validations.features import pair_frame, win_columns

    pairs = list(toy_pairs) * 3
    wins, _, _ = win_columns(pair_frame(pairs))
    est = estimate(pairs, wins, policy=tiny_policy(), max_length=64, sample=5)
    ref = {s.name: s for s in est.signals}["reference"]
    assert ref.pairs == 5 and 0 <= ref.agree <= ref.decisive <= 5
    assert {s.name for s in estimate(pairs, wins).signals} == {"rubric", "features"}  # no policy: no reference
