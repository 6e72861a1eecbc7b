"""The data desk: each check with a case built to fail it and a clean set that passes;
real Great Expectations validations (no mocks)."""

from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np
import pytest

from prefdesk.config import CheckThresholds, DataSettings
from prefdesk.pairs import read_pairs_jsonl
from prefdesk.validations.desk import run_data_desk
from prefdesk.validations.features import agreement_stats, fleiss_kappa, is_refusal, normalize

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data"
WORDS = ("alpha beta gamma delta river stone cloud light paper table window garden music "
         "orange silver quick slow bright calm simple").split()


def clean_rows(n: int = 60, seed: int = 0) -> list[dict]:
    rng = random.Random(seed)

    def text() -> str:
        return " ".join(rng.choice(WORDS) for _ in range(rng.randint(4, 30))) + "."

    return [{"prompt": f"Question {i}: {text()}", "chosen": text(), "rejected": text()} for i in range(n)]


def desk(tmp_path, rows, settings=None, name="in.jsonl", **kw):
    path = tmp_path / name
    path.write_text("\n".join(r if isinstance(r, str) else json.dumps(r) for r in rows) + "\n")
    rep = run_data_desk([str(path)], settings or DataSettings(), tmp_path / "out", **kw)
    assert rep.accepted + rep.quarantined == rep.rows_in
    return rep


def test_clean_set_passes_every_gate_and_writes_outputs(tmp_path):
    rep = desk(tmp_path, clean_rows(), data_docs=True)
    assert rep.passed, rep.failed
    assert (rep.rows_in, rep.accepted, rep.quarantined) == (60, 60, 0)
    names = [c.name for c in rep.checks]
    for name in ("schema", "degenerate", "duplicates", "near_duplicates", "label_consistency", "length_bias",
                 "refusal_bias", "boilerplate", "shallow_features", "eval_leakage", "quarantined_share"):
        assert name in names
    assert "agreement" not in names  # no annotator data
    m = rep.metrics()
    assert m["data/pairs_in"] == 60 and m["data/pairs_accepted"] == 60 and m["data/pairs_quarantined"] == 0
    assert set(m) == {"data/pairs_in", "data/pairs_accepted", "data/pairs_quarantined"} | {f"data/check/{n}" for n in names}
    assert len(read_pairs_jsonl(rep.accepted_path)) == 60
    assert Path(rep.docs_dir, "index.html").exists()
    assert json.loads(json.dumps(rep.to_dict()))["accepted"] == 60
    assert "| length_bias |" in rep.to_markdown()
    from rich.console import Console

    console = Console(record=True, width=160)
    rep.render(console)
    assert "shallow_features" in console.export_text()
    assert len(rep.dataset_hash) == 16


def test_bad_input_quarantined_with_lines_and_reasons(tmp_path):
    rows = clean_rows(40)
    rows[3] = '{"prompt": "broken'
    rows[5] = {"prompt": "p", "chosen": "x"}
    rows[7] = {"prompt": "p", "chosen": "Same answer", "rejected": " Same   answer\n"}
    rows.append(rows[10])  # line 41: a duplicate
    rep = desk(tmp_path, rows)
    q = [json.loads(x) for x in Path(rep.quarantine_path).read_text().splitlines()]
    by_line = {r["line"]: r for r in q}
    assert set(by_line) == {4, 6, 8, 41}
    assert "bad JSON" in by_line[4]["reason"] and by_line[4]["check"] == "read"
    assert "missing" in by_line[6]["reason"]
    assert by_line[8]["check"] == "degenerate"
    assert by_line[41]["reason"].startswith("duplicate of ") and by_line[41]["check"] == "duplicates"
    assert all(r["file"].endswith("in.jsonl") and r["raw"] for r in q)
    assert rep.rows_in == 41 and rep.quarantined == 4


def test_degenerate_fails_gate(tmp_path):
    rows = clean_rows(30)
    rows[0]["rejected"] = rows[0]["chosen"]
    rows[1]["rejected"] = " " + rows[1]["chosen"].replace(" ", "  ") + "\n"
    rep = desk(tmp_path, rows)
    c = rep.check("degenerate")
    assert not c.passed and c.figures == {"identical": 1, "identical_after_folding": 1}
    assert rep.quarantined == 2 and not rep.passed and any(f.startswith("degenerate") for f in rep.failed)


def test_case_only_difference_is_a_finding_not_degenerate(tmp_path):
    # A capitalisation task: the answers differ only in case, and that is the point.
    rows = clean_rows(30)
    rows[0].update(prompt="Capitalise: paris is in france", chosen="Paris is in France", rejected="paris is in france")
    rows[1].update(prompt="Title case: the old man", chosen="The Old Man", rejected="the  old man ")
    rep = desk(tmp_path, rows, data_docs=False)
    assert rep.passed, rep.failed
    assert rep.quarantined == 0 and rep.check("degenerate").figure == 0.0
    case = rep.check("case_only")
    assert case.figure == 2 and not case.gate and case.figures == {"pairs": 2}
    assert rep.metrics()["data/check/case_only"] == 2


def test_duplicates_same_pair_in_two_files_is_one_pair(tmp_path):
    rows = clean_rows(20)
    (tmp_path / "a.jsonl").write_text("\n".join(json.dumps(r) for r in rows))
    (tmp_path / "b.jsonl").write_text("\n".join(json.dumps(r) for r in rows[:5]))
    rep = run_data_desk([str(tmp_path / "a.jsonl"), str(tmp_path / "b.jsonl")], DataSettings(), tmp_path / "out",
                        data_docs=False)
    assert (rep.rows_in, rep.accepted, rep.quarantined) == (25, 20, 5)
    c = rep.check("duplicates")
    assert c.figure == 0.2 and not c.passed  # 5/25 > 0.1
    assert len(set(p.id for p in read_pairs_jsonl(rep.accepted_path))) == 20


def test_contradiction_both_sides_quarantined(tmp_path):
    rows = clean_rows(40)
    rows.append({"prompt": rows[0]["prompt"], "chosen": rows[0]["rejected"], "rejected": rows[0]["chosen"]})
    rep = desk(tmp_path, rows, data_docs=False)
    c = rep.check("label_consistency")
    assert c.figures["contradictions"] == 2 and not c.passed  # 2/41 > 0.02
    assert rep.quarantined == 2 and rep.quarantine_reasons == {"contradiction": 2}


def test_near_duplicates_reported_not_gated(tmp_path):
    rows = clean_rows(30)
    for r in rows[:20]:
        r["prompt"] = "The   same PROMPT"
    rep = desk(tmp_path, rows, data_docs=False)
    c = rep.check("near_duplicates")
    assert c.figure == pytest.approx(19 / 30, abs=1e-3) and not c.gate and c.passed
    assert rep.passed


def test_length_bias_and_shallow_features_fail(tmp_path):
    rows = clean_rows(60)
    for r in rows:
        r["chosen"] = r["rejected"] + " And more words to make it longer, clearly."
    rep = desk(tmp_path, rows, data_docs=False)
    lb, sf = rep.check("length_bias"), rep.check("shallow_features")
    assert lb.figure == 1.0 and not lb.passed
    assert sf.figure == 1.0 and not sf.passed and sf.figures["accuracy"]["length_chars"] == 1.0
    # the other direction: rejected nearly always longer also fails
    for r in rows:
        r["chosen"], r["rejected"] = r["rejected"], r["chosen"]
    rep = desk(tmp_path, rows, data_docs=False)
    assert rep.check("length_bias").figure == 0.0 and not rep.check("length_bias").passed


def test_refusal_detector_and_refusal_bias(tmp_path):
    for text in ["I'm sorry, but I can't help with that.", "I cannot help with this request.",
                 "As an AI, I do not have opinions.", "I won't do that.", "I'm not able to share that.",
                 "I\u2019m sorry, but I can\u2019t assist."]:
        assert is_refusal(text), text
    for text in ["Sure! Here is the recipe.", "The answer is 4.", "You can't divide by zero, so x is undefined."]:
        assert not is_refusal(text), text
    rows = clean_rows(40)
    for r in rows[:30]:
        r["chosen"] = "I'm sorry, but I can't help with that. " + r["chosen"]
    rep = desk(tmp_path, rows, data_docs=False)
    c = rep.check("refusal_bias")
    assert c.figure == pytest.approx(0.75) and not c.passed
    assert c.figures["refusal_rate_chosen"] == pytest.approx(0.75)


def test_boilerplate_one_sided(tmp_path):
    rows = clean_rows(60)
    for r in rows[:25]:
        r["rejected"] = "As an AI language model, " + r["rejected"]
    rep = desk(tmp_path, rows, data_docs=False)
    c = rep.check("boilerplate")
    assert not c.passed and c.figure == pytest.approx(25 / 60, abs=1e-3)
    assert c.figures["phrases"][0]["phrase"].startswith("as an ai language model")
    assert c.figures["phrases"][0]["side"] == "rejected"
    rows2 = clean_rows(60)
    for r in rows2[:25]:
        r["rejected"] = "As an AI language model, " + r["rejected"]
        r["chosen"] = "As an AI language model, " + r["chosen"]
    assert desk(tmp_path, rows2, data_docs=False).check("boilerplate").figure == 0.0  # both sides: not one-sided


def test_eval_leakage(tmp_path):
    rows = clean_rows(30)
    evals = ["  " + rows[2]["prompt"].upper() + " ", "Something never trained on"]
    rep = desk(tmp_path, rows, eval_prompts=evals, data_docs=False)
    c = rep.check("eval_leakage")
    assert c.figure == 1 and not c.passed and rep.quarantined == 1
    assert rep.quarantine_reasons == {"eval leakage": 1}
    ok = desk(tmp_path, rows, eval_prompts=["Something never trained on"], data_docs=False)
    assert ok.check("eval_leakage").passed and ok.check("eval_leakage").figure == 0


def test_too_long_quarantine_or_keep(tmp_path):
    rows = clean_rows(30)
    rows[0]["chosen"] = "word " * 1000
    rep = desk(tmp_path, rows, DataSettings(max_length=512, too_long="quarantine"), data_docs=False)
    assert rep.quarantined == 1 and rep.quarantine_reasons == {"too long": 1}
    assert rep.check("schema").figures["too_long"] == 1 and rep.check("truncation").figure == 0.0
    # the default: kept, truncated at train time, and counted
    assert DataSettings().too_long == "truncate"
    keep = desk(tmp_path, rows, DataSettings(max_length=512), data_docs=False)
    assert keep.quarantined == 0 and keep.passed and keep.check("schema").figures["too_long"] == 1
    t = keep.check("truncation")
    assert t.figures["truncated"] == 1 and t.figure == pytest.approx(1 / 30, abs=1e-3) and not t.gate
    assert "answer and the end of the prompt" in t.reason


class _CharTokenizer:
    """A stand-in HF tokenizer: one token per character, a trivial chat template."""

    eos_token = "</s>"

    def apply_chat_template(self, messages, add_generation_prompt=False, tokenize=False):
        text = "".join(f"<{m['role']}>{m['content']}" for m in messages)
        return text + ("<assistant>" if add_generation_prompt else "")

    def __call__(self, text, add_special_tokens=False):
        return {"input_ids": [ord(c) for c in text]}


def test_too_long_with_tokenizer(tmp_path):
    rows = clean_rows(10)
    rows[0]["chosen"] = "x" * 600
    rep = desk(tmp_path, rows, DataSettings(max_length=500, too_long="quarantine"), tokenizer=_CharTokenizer(),
               data_docs=False)
    assert rep.quarantine_reasons == {"too long": 1}


def test_fleiss_kappa_hand_computed():
    # 3 items x 3 raters: [1,1,1], [1,1,2], [2,2,2].
    # P_i = 1, 1/3, 1 -> P_bar = 7/9; p_1 = 4/9, p_2 = 5/9 -> P_e = 41/81
    # kappa = (7/9 - 41/81) / (1 - 41/81) = (22/81) / (40/81) = 0.55
    assert fleiss_kappa([[1, 1, 1], [1, 1, 2], [2, 2, 2]]) == pytest.approx(0.55)
    # Fleiss (1971) / Wikipedia worked example: 10 items, 14 raters, 5 categories -> 0.210
    table = np.array([[0, 0, 0, 0, 14], [0, 2, 6, 4, 2], [0, 0, 3, 5, 6], [0, 3, 9, 2, 0], [2, 2, 8, 1, 1],
                      [7, 7, 0, 0, 0], [3, 2, 6, 3, 0], [2, 5, 3, 2, 2], [6, 5, 2, 1, 0], [0, 2, 2, 3, 7]])
    assert fleiss_kappa(table) == pytest.approx(0.2099, abs=1e-4)
    st = agreement_stats([[1, 1, 1], [1, 1, 2], [2, 2, 2]])
    assert st["share_unanimous"] == pytest.approx(2 / 3, abs=1e-3)
    assert st["mean_agreement"] == pytest.approx((1 + 2 / 3 + 1) / 3, abs=1e-3)


# 1/2 = which response won, 0 = tie: one of the codings that must be stated, never guessed
JUDGED = DataSettings(label_map="1=first,2=second,0=tie")


def _judged(i, labels, r1=None, r2=None):
    d = {"instruction": f"Task {i}", "response1": r1 or f"first answer {i}", "response2": r2 or f"second reply {i}"}
    d.update({f"annotator{k + 1}": v for k, v in enumerate(labels)})
    return d


def test_agreement_and_low_agreement(tmp_path):
    rows = [_judged(i, [1, 1, 1] if i % 2 else [2, 2, 2]) for i in range(30)]
    rows += [_judged(100, [1, 1, 2]), _judged(101, [0, 1, 2]), _judged(102, [1, 1, 2, 2, 0]),
             _judged(103, [1, 2, 2, 0, 0, 1, 1])]
    rep = desk(tmp_path, rows, JUDGED, data_docs=False)
    ag = rep.check("agreement")
    assert ag.passed and ag.figures["items"] == 34 and ag.figure > 0.7
    # [1,1,2]: agreement 0.67 kept; [0,1,2] and [1,1,2,2,0] no majority -> tie;
    # [1,2,2,0,0,1,1]: majority 1 with 3/7 = 0.43 < 0.5 -> low agreement, quarantined
    lc = rep.check("label_consistency")
    assert lc.figures["ties"] == 2 and lc.figures["low_agreement"] == 1
    assert rep.quarantine_reasons == {"tie": 2, "low agreement": 1}
    keep = desk(tmp_path, rows, JUDGED.model_copy(update={"low_agreement": "keep"}), data_docs=False)
    assert keep.quarantine_reasons == {"tie": 2}
    # disagreeing annotators fail the kappa gate
    noisy = [_judged(i, [1, 2, 1] if i % 2 else [2, 1, 2]) for i in range(30)]
    assert not desk(tmp_path, noisy, JUDGED, data_docs=False).check("agreement").passed


def test_quarantined_share_gate(tmp_path):
    rows = clean_rows(20) + ['{"bad'] * 10
    rep = desk(tmp_path, rows, DataSettings(checks=CheckThresholds(max_schema_share=1.0)), data_docs=False)
    c = rep.check("quarantined_share")
    assert c.figure == pytest.approx(1 / 3, abs=1e-3) and not c.passed
    assert rep.failed == [f for f in rep.failed if f.startswith("quarantined_share")]


def test_normalize():
    assert normalize("  Hello\t\nWORLD  ") == "hello world"


def test_gx_not_imported_by_prefdesk_or_desk_module():
    import subprocess
    import sys

    code = ("import sys, prefdesk.readers, validations.desk, validations.features; "
            "print('great_expectations' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


@pytest.mark.parametrize("rel,rows", [("hh-rlhf/harmless-base-test.jsonl.gz", 2312),
                                      ("coconot/coconot_pref.jsonl", 927),
                                      ("pandalm/testset-v1.json", 999)])
def test_real_data_desk(tmp_path, rel, rows):
    path = SHARED / rel
    if not path.exists():
        pytest.skip(f"{path} absent")
    rep = run_data_desk([str(path)], DataSettings(), tmp_path, data_docs=False)
    assert rep.rows_in == rows
    assert rep.accepted + rep.quarantined == rows
    if "pandalm" in rel:
        ag = rep.check("agreement")
        assert 0.5 < ag.figure < 1.0 and ag.figures["items"] == 999


def test_ties_are_quarantined_but_not_counted_as_defects(tmp_path):
    # 30% ties: every tie row is quarantined (a tie is no pair), yet the input is not broken
    rows = [_judged(i, [0, 0, 0] if i < 9 else [1, 1, 1]) for i in range(30)]
    rep = desk(tmp_path, rows, JUDGED, data_docs=False)
    assert rep.quarantine_reasons == {"tie": 9} and rep.accepted == 21
    share = rep.check("quarantined_share")
    assert share.passed and share.figure == 0.0 and "9 ties" in share.reason


def test_the_gx_result_is_the_verdict_and_a_check_is_added_in_one_place(tmp_path, monkeypatch):
    from prefdesk.validations import checks as C

    rows = clean_rows(40)
    for r in rows[:30]:
        r["chosen"] = r["rejected"] + " And more words to make it longer, clearly."
    rows[0]["rejected"] = rows[0]["chosen"]

    class ShortPrompts(C.Check):
        """A new check: one class, one list entry; it quarantines, gates and reports."""

        name = "short_prompts"

        def row_expectations(self, d):
            return [C._gx().gxe.ExpectColumnValueLengthsToBeBetween(
                column="prompt_text", min_value=20, mostly=0.9, meta=C._m(self.name, "prompt_length"))]

        def quarantine(self, d):
            return ((i, "short prompt") for i in d.offending("prompt_length"))

        def report(self, d):
            return C.Outcome(figure=float(len(d.offending("prompt_length"))), threshold=0.9, reason="prompts")

    rows[1]["prompt"] = "Hi"
    monkeypatch.setattr(C, "CHECKS", [*C.CHECKS, ShortPrompts()])
    monkeypatch.setattr("prefdesk.validations.desk.CHECKS", C.CHECKS)
    rep = desk(tmp_path, rows, data_docs=True)
    for c in rep.checks:
        if c.gate:  # the gate is its expectations' success, nothing recomputed beside it
            assert c.passed == all(c.expectations.values()), c.name
    assert {"degenerate", "length_bias"} <= {f.split(":")[0] for f in rep.failed}
    assert rep.check("length_bias").expectations == {"chosen_longer_share": False}
    new = rep.check("short_prompts")
    assert new.passed and new.expectations == {"prompt_length": True} and new.quarantined == 1
    assert rep.metrics()["data/check/short_prompts"] == 1.0 and rep.quarantine_reasons["short prompt"] == 1
