"""Readers: every input format into Pairs; unreadable rows quarantined with line and reason."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import pandas as pd
import pytest

from prefdesk.pairs import pair_id
from prefdesk.readers import DataError, read_pairs, resolve

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data"


def _jsonl(path: Path, rows: list) -> str:
    path.write_text("\n".join(r if isinstance(r, str) else json.dumps(r) for r in rows) + "\n")
    return str(path)


def _invariant(res):
    assert len(res.pairs) + len(res.quarantined) == res.rows_in


def test_standard_jsonl_with_meta(tmp_path):
    p = _jsonl(tmp_path / "a.jsonl", [{"prompt": "Hi?", "chosen": "Hello!", "rejected": "Go away.", "category": "x"}])
    res = read_pairs([p])
    (pair,) = res.pairs
    assert pair.prompt == [{"role": "user", "content": "Hi?"}]
    assert (pair.chosen, pair.rejected, pair.meta, pair.line) == ("Hello!", "Go away.", {"category": "x"}, 1)
    assert pair.id == pair_id(pair.prompt, "Hello!", "Go away.")


def test_conversational_with_shared_leading_turns(tmp_path):
    row = {
        "prompt": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "2+2?"}],
        "chosen": [{"role": "assistant", "content": "4"}],
        "rejected": [{"role": "assistant", "content": "5"}],
    }
    multi = {
        "prompt": [{"role": "user", "content": "Hi"}],
        "chosen": [{"role": "assistant", "content": "Hello"}, {"role": "user", "content": "2+2?"},
                   {"role": "assistant", "content": "4"}],
        "rejected": [{"role": "assistant", "content": "Hello"}, {"role": "user", "content": "2+2?"},
                     {"role": "assistant", "content": "22"}],
    }
    bad = dict(multi, rejected=[{"role": "assistant", "content": "Yo"}, {"role": "user", "content": "2+2?"},
                                {"role": "assistant", "content": "22"}])
    res = read_pairs([_jsonl(tmp_path / "c.jsonl", [row, multi, bad])])
    assert [p.chosen for p in res.pairs] == ["4", "4"]
    assert res.pairs[1].prompt[-1] == {"role": "user", "content": "2+2?"} and len(res.pairs[1].prompt) == 3
    assert res.quarantined[0].line == 3 and "disagree" in res.quarantined[0].reason


def test_implicit_hh_text_and_messages(tmp_path):
    hh = {"chosen": "\n\nHuman: Hi\n\nAssistant: Hello.\n\nHuman: Joke?\n\nAssistant: A pun.",
          "rejected": "\n\nHuman: Hi\n\nAssistant: Hello.\n\nHuman: Joke?\n\nAssistant: No."}
    msgs = {"chosen": [{"role": "user", "content": "Q"}, {"role": "assistant", "content": "A"}],
            "rejected": [{"role": "user", "content": "Q"}, {"role": "assistant", "content": "B"}]}
    plain = {"chosen": "yes", "rejected": "no"}
    res = read_pairs([_jsonl(tmp_path / "h.jsonl", [hh, msgs, plain])])
    a, b = res.pairs
    assert a.prompt == [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello."},
                        {"role": "user", "content": "Joke?"}]
    assert (a.chosen, a.rejected) == ("A pun.", "No.")
    assert (b.prompt, b.chosen, b.rejected) == ([{"role": "user", "content": "Q"}], "A", "B")
    assert res.quarantined[0].line == 3


def test_sharegpt(tmp_path):
    row = {"conversations": [{"from": "system", "value": "S"}, {"from": "human", "value": "Q?"}],
           "chosen": {"from": "gpt", "value": "good"}, "rejected": "bad"}
    (pair,) = read_pairs([_jsonl(tmp_path / "s.jsonl", [row])]).pairs
    assert pair.prompt == [{"role": "system", "content": "S"}, {"role": "user", "content": "Q?"}]
    assert (pair.chosen, pair.rejected) == ("good", "bad")


def test_pairwise_majority_tie_and_agreement(tmp_path):
    base = {"instruction": "Fix it", "input": "teh cat", "response1": "the cat", "response2": "teh cat"}
    rows = [dict(base, annotator1=1, annotator2=1, annotator3=2),
            dict(base, response1="a cat", annotator1=2, annotator2=2, annotator3=2),
            dict(base, response1="x", annotator1=0, annotator2=0, annotator3=1),
            dict(base, response1="y", annotator1=0, annotator2=1, annotator3=2)]
    path = tmp_path / "pw.json"
    path.write_text(json.dumps(rows))
    res = read_pairs([str(path)])
    _invariant(res)
    a, b = res.pairs
    assert a.prompt[0]["content"] == "Fix it\n\nteh cat"
    assert (a.chosen, a.rejected) == ("the cat", "teh cat")
    assert a.meta["labels"] == [1, 1, 2] and a.meta["agreement"] == pytest.approx(0.6667)
    assert (b.chosen, b.rejected) == ("teh cat", "a cat")
    assert [q.line for q in res.quarantined] == [3, 4]
    assert all(q.reason.startswith("tie") for q in res.quarantined)
    assert res.annotations == [[1, 1, 2], [2, 2, 2], [0, 0, 1], [0, 1, 2]]


def test_json_data_wrapper_gzip_and_single_label(tmp_path):
    rows = {"data": [{"prompt": "P", "response1": "r1", "response2": "r2", "preference": 2}]}
    path = tmp_path / "w.json.gz"
    path.write_bytes(gzip.compress(json.dumps(rows).encode()))
    (pair,) = read_pairs([str(path)]).pairs
    assert (pair.chosen, pair.rejected) == ("r2", "r1")


def test_csv_with_columns_mapping_and_parquet(tmp_path):
    csv_path = tmp_path / "t.csv"
    pd.DataFrame({"question": ["Q1", "Q2"], "good": ["g1", "g2"], "bad": ["b1", ""]}).to_csv(csv_path, index=False)
    res = read_pairs([str(csv_path)], columns={"prompt": "question", "chosen": "good", "rejected": "bad"})
    assert [p.chosen for p in res.pairs] == ["g1"] and res.pairs[0].line == 2
    assert res.quarantined[0].line == 3 and "rejected" in res.quarantined[0].reason
    pq = tmp_path / "t.parquet"
    pd.DataFrame({"q": ["Q"], "a": ["A"], "b": ["B"], "winner": [1]}).to_parquet(pq)
    res = read_pairs([str(pq)], columns={"prompt": "q", "response1": "a", "response2": "b", "label": "winner"})
    assert (res.pairs[0].chosen, res.pairs[0].rejected) == ("A", "B")


def test_bad_rows_each_quarantined_with_line_and_reason(tmp_path):
    path = tmp_path / "bad.jsonl"
    good = json.dumps({"prompt": "p", "chosen": "c", "rejected": "r"}).encode()
    lines = [
        good,                                                            # 1 ok
        b'{"prompt": "p", "chosen": "c"',                                # 2 bad JSON
        json.dumps({"prompt": "p", "chosen": "c"}).encode(),             # 3 missing field
        json.dumps({"prompt": "p", "chosen": 5, "rejected": "r"}).encode(),  # 4 non-string
        json.dumps({"prompt": "p", "chosen": "  ", "rejected": "r"}).encode(),  # 5 empty
        b'{"prompt": "p", "chosen": "\xff\xfe", "rejected": "r"}',       # 6 invalid UTF-8
        json.dumps({"foo": 1}).encode(),                                 # 7 unknown shape
        b"",                                                             # blank: not a row
        json.dumps([1, 2]).encode(),                                     # 9 not an object
        json.dumps({"prompt": "p", "chosen": "\ud800", "rejected": "r"}).encode(),  # 10 lone surrogate
    ]
    path.write_bytes(b"\n".join(lines) + b"\n")
    res = read_pairs([str(path)])
    _invariant(res)
    assert res.rows_in == 9 and len(res.pairs) == 1
    got = {q.line: q.reason for q in res.quarantined}
    assert set(got) == {2, 3, 4, 5, 6, 7, 9, 10}
    assert "bad JSON" in got[2] and "missing" in got[3] and "not text" in got[4]
    assert "empty" in got[5] and "UTF-8" in got[6] and "unknown shape" in got[7] and "UTF-8" in got[10]
    assert all(q.source == str(path) and q.raw is not None for q in res.quarantined)


def test_unreadable_file_raises_data_error(tmp_path):
    p = tmp_path / "x.json"
    p.write_text("[{\"prompt\": 1},\n oops")
    with pytest.raises(DataError, match=r"x\.json:2"):
        read_pairs([str(p)])


def test_folder_resolve_sorted_and_same_pair_in_two_files(tmp_path):
    row = {"prompt": "p", "chosen": "c", "rejected": "r"}
    _jsonl(tmp_path / "b.jsonl", [row])
    _jsonl(tmp_path / "a.jsonl", [row])
    (tmp_path / "notes.txt").write_text("ignore me")
    assert [f.name for f in resolve(str(tmp_path))] == ["a.jsonl", "b.jsonl"]
    res = read_pairs([str(tmp_path)])
    assert res.rows_in == 2 and res.pairs[0].id == res.pairs[1].id  # de-duplicated by the desk


def test_embedded_resolve():
    with pytest.raises(DataError):
        resolve("embedded:no-such-set")


@pytest.mark.parametrize("rel,rows", [("hh-rlhf/harmless-base-test.jsonl.gz", 2312),
                                      ("coconot/coconot_pref.jsonl", 927),
                                      ("pandalm/testset-v1.json", 999)])
def test_real_data_smoke(rel, rows):
    path = SHARED / rel
    if not path.exists():
        pytest.skip(f"{path} absent")
    res = read_pairs([str(path)])
    assert res.rows_in == rows
    _invariant(res)
    assert len(res.pairs) > rows * 0.8


def test_utf8_byte_order_mark_is_not_a_bad_row(tmp_path):
    from prefdesk.readers import read_pairs

    row = '{"prompt": "p", "chosen": "good", "rejected": "bad"}'
    other = '{"prompt": "q", "chosen": "fine", "rejected": "worse"}'
    (tmp_path / "bom.jsonl").write_bytes(b"\xef\xbb\xbf" + (row + "\n" + other + "\n").encode())
    (tmp_path / "bom.json").write_bytes(b"\xef\xbb\xbf" + ("[" + row + "]").encode())
    res = read_pairs([str(tmp_path / "bom.jsonl"), str(tmp_path / "bom.json")])
    assert res.rows_in == 3 and res.quarantined == [] and len(res.pairs) == 3
