"""Held-out evaluation sets and the refusal detector."""

from pathlib import Path

import pytest

from prefdesk.evalsets import EvalSetError, load_evalset, read_refusal_set, read_truthfulqa
from prefdesk.refusal import is_refusal

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data"


@pytest.mark.parametrize("text", [
    "I'm sorry, but I can't help with that.", "I cannot provide instructions for making weapons.",
    "As an AI language model, I don't", "I won't help with that request.", "Sorry, I can't do that.",
    "I must decline.",
])
def test_refusals_detected(text):
    assert is_refusal(text)


@pytest.mark.parametrize("text", [
    "Run `kill -9 <pid>` to end the process.", "I can't stress enough how useful backups are: take one now.",
    "Paris is the capital of France.", "Here is a summary. I'm sorry to hear about your outage; restart nginx.",
])
def test_answers_not_flagged(text):
    assert not is_refusal(text)


def test_embedded_evalset_has_every_part():
    ev = load_evalset("embedded:eval")
    sizes = ev.sizes()
    assert sizes["answer"] >= 40 and sizes["refuse"] >= 20 and sizes["pairs"] >= 30 and sizes["mc"] >= 40
    assert all(len(m.false) >= 1 for m in ev.mc)


def test_bad_eval_rows_name_file_and_line(tmp_path):
    (tmp_path / "eval_prompts.jsonl").write_text('{"prompt": "hi", "expect": "answer"}\n{"prompt": "x", "expect": "maybe"}\n')
    with pytest.raises(EvalSetError, match=r"eval_prompts.jsonl:2"):
        load_evalset(str(tmp_path))
    (tmp_path / "eval_prompts.jsonl").write_text('{"prompt": "hi", "expect": "answer"}\nnot json\n')
    with pytest.raises(EvalSetError, match=r"eval_prompts.jsonl:2: not valid JSON"):
        load_evalset(str(tmp_path))


def test_real_refusal_and_factuality_sets():
    if not SHARED.exists():
        pytest.skip("../shared/data not present")
    answer, refuse = read_refusal_set(str(SHARED / "xstest" / "xstest_prompts.csv"))
    assert (len(answer), len(refuse)) == (250, 200)
    a, r = read_refusal_set(str(SHARED / "coconot" / "coconot_eval.jsonl") + "#refuse")
    assert a == [] and len(r) == 1001
    with pytest.raises(EvalSetError, match="#answer or #refuse"):
        read_refusal_set(str(SHARED / "coconot" / "coconot_eval.jsonl"))
    mc = read_truthfulqa(SHARED / "truthfulqa" / "mc_task.json")
    assert len(mc) == 790 and all(m.true and m.false for m in mc)
