"""Readers: every input format into Pairs; unreadable rows quarantined with line and reason."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import pandas as pd
import pytest

from prefdesk.pairs import pair_id
from prefdesk.labels import parse_label_map
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
    res = read_pairs([str(path)], label_map="1=first,2=second,0=tie")
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
    (pair,) = read_pairs([str(path)], label_map={1: "first", 2.0: "second"}).pairs
    assert (pair.chosen, pair.rejected) == ("r2", "r1")


def test_csv_with_columns_mapping_and_parquet(tmp_path):
    csv_path = tmp_path / "t.csv"
    pd.DataFrame({"question": ["Q1", "Q2"], "good": ["g1", "g2"], "bad": ["b1", ""]}).to_csv(csv_path, index=False)
    res = read_pairs([str(csv_path)], columns={"prompt": "question", "chosen": "good", "rejected": "bad"})
    assert [p.chosen for p in res.pairs] == ["g1"] and res.pairs[0].line == 2
    assert res.quarantined[0].line == 3 and "rejected" in res.quarantined[0].reason
    pq = tmp_path / "t.parquet"
    pd.DataFrame({"q": ["Q"], "a": ["A"], "b": ["B"], "winner": [1]}).to_parquet(pq)
    res = read_pairs([str(pq)], columns={"prompt": "q", "response1": "a", "response2": "b", "label": "winner"},
                     label_map="1=first,2=second")
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
    assert "empty" in got[5] and "UTF-8" in got[6] and "unknown row shape" in got[7] and "UTF-8" in got[10]
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


# ---------------------------------------------------------------- labels: stated, never guessed

def _coded_012(tmp_path):
    """A file coded 0 = first answer wins, 1 = second wins, 2 = tie (not PandaLM's coding)."""
    rows = [{"instruction": "Capital of France?", "response1": "Paris.", "response2": "Lyon.", "label": 0},
            {"instruction": "2+2?", "response1": "5", "response2": "4", "label": 1.0},
            {"instruction": "Hi", "response1": "Hello", "response2": "Hey", "label": "2"}]
    return _jsonl(tmp_path / "coded.jsonl", rows)


def test_ambiguous_labels_quarantined_with_the_option_to_pass(tmp_path):
    res = read_pairs([_coded_012(tmp_path)])
    _invariant(res)
    assert res.pairs == [] and res.annotations == []
    assert res.quarantined[0].reason == ("ambiguous label 0 in column 'label': pass --label-map "
                                         "(e.g. 0=first,1=second,2=tie) or set data.label_map")
    assert all(q.check == "read" for q in res.quarantined)
    (note,) = res.notes  # said once for the file
    assert "3 rows quarantined" in note and "0, 1, 2" in note and "--label-map" in note


def test_label_map_reads_the_direction_stated(tmp_path):
    res = read_pairs([_coded_012(tmp_path)], label_map="0=first,1=second,2=tie")
    _invariant(res)
    assert [(p.chosen, p.rejected) for p in res.pairs] == [("Paris.", "Lyon."), ("4", "5")]
    assert res.pairs[0].meta["labels"] == [1] and res.pairs[1].meta["chosen_response"] == 2
    (tie,) = res.quarantined
    assert tie.line == 3 and tie.reason.startswith("tie") and tie.check == "label_consistency"
    assert res.notes == [f"{tmp_path / 'coded.jsonl'}: labels read with the label map 0=first,1=second,2=tie "
                         "(first = the first response is better; 3 rows)"]
    # a label the map does not name is not guessed either
    partial = read_pairs([_coded_012(tmp_path)], label_map={0: "first", 1: "second"})
    assert "label 2 in column 'label' is not in the label map (0=first,1=second)" in partial.quarantined[0].reason


def test_parse_label_map_forms_and_errors():
    assert parse_label_map("0=first, 1=second,2=TIE") == {"0": "first", "1": "second", "2": "tie"}
    assert parse_label_map({1.0: "first", False: "second", " A ": "tie"}) == {"1": "first", "false": "second", "a": "tie"}
    assert parse_label_map(["0=first", "1=second"]) == {"0": "first", "1": "second"}
    assert parse_label_map(None) == {}
    for bad, msg in (("0=winner", "first, second or tie"), ("0first", "VALUE=first"),
                     ("0=first,0.0=second", "mapped twice")):
        with pytest.raises(ValueError, match=msg):
            parse_label_map(bad)
    with pytest.raises(DataError, match="first, second or tie"):
        read_pairs(["embedded:default"], label_map="1=best")


def test_label_map_in_config_and_cli_overrides():
    from pydantic import ValidationError

    from prefdesk.config import DataSettings, load_config

    assert DataSettings(label_map={0: "first", 1: "second", 2: "tie"}).label_map == {"0": "first", "1": "second", "2": "tie"}
    assert load_config(None, ["data.label_map=0=first,1=second"]).data.label_map == {"0": "first", "1": "second"}
    with pytest.raises(ValidationError, match="first, second or tie"):
        DataSettings(label_map={"0": "good"})


def test_labels_that_name_their_outcome_need_no_map(tmp_path):
    rows = [{"prompt": "P", "response1": "a", "response2": "b", "winner": "Response2"},
            {"prompt": "Q", "response1": "c", "response2": "d", "winner": "tie"}]
    res = read_pairs([_jsonl(tmp_path / "n.jsonl", rows)])
    assert [(p.chosen, p.rejected) for p in res.pairs] == [("b", "a")]
    assert res.quarantined[0].reason.startswith("tie")
    assert "labels read by name: response1, response2 or tie" in res.notes[0]


PANDALM_ROW = {"idx": 0, "motivation_app": "x", "cmp_key": "a_b", "instruction": "Fix: teh cat", "input": "",
               "response1": "the cat", "response2": "teh cat", "annotator1": 1, "annotator2": 1, "annotator3": 0}


def test_known_formats_by_exact_key_set(tmp_path):
    llmbar = [{"input": "75+48 in base 9?", "output_1": "123", "output_2": "134", "label": 2}]
    lb = tmp_path / "llmbar.json"
    lb.write_text(json.dumps(llmbar))
    pl = tmp_path / "pandalm.json"
    pl.write_text(json.dumps([PANDALM_ROW]))
    res = read_pairs([str(lb), str(pl)], label_map="1=second,2=first")  # a map does not override a known format
    _invariant(res)
    a, b = res.pairs
    assert (a.prompt, a.chosen, a.rejected) == ([{"role": "user", "content": "75+48 in base 9?"}], "134", "123")
    assert (b.chosen, b.rejected, b.meta["labels"]) == ("the cat", "teh cat", [1, 1, 0])
    assert res.notes[0].startswith(f"{lb}: labels read as LLMBar: 1 = output_1 better, 2 = output_2 better (known format")
    assert res.notes[1].startswith(f"{pl}: labels read as PandaLM: 1 = response1 better")
    # one more key and it is no longer the documented format: ambiguous again
    other = _jsonl(tmp_path / "o.jsonl", [dict(llmbar[0], source="x"), dict(PANDALM_ROW, extra=1)])
    res = read_pairs([other])
    assert [q.reason.split(":")[0] for q in res.quarantined] == [
        "ambiguous label 2 in column 'label'", "ambiguous label 1 in column 'annotator1'"]
    bad = read_pairs([_jsonl(tmp_path / "b.jsonl", [dict(llmbar[0], label=0)])])
    assert "label 0 in column 'label' is not a LLMBar label" in bad.quarantined[0].reason


def test_pandalm_real_file_is_a_known_format():
    path = SHARED / "pandalm" / "testset-v1.json"
    if not path.exists():
        pytest.skip(f"{path} absent")
    res = read_pairs([str(path)])
    _invariant(res)
    assert res.notes == [f"{path}: labels read as PandaLM: 1 = response1 better, 2 = response2 better, 0 = tie "
                         "(known format; 999 rows)"]
    assert not any("ambiguous" in q.reason for q in res.quarantined)
    rows = {i: r for i, r in enumerate(json.loads(path.read_text()), 1)}
    for p in res.pairs:
        row = rows[p.line]
        better = "response1" if p.meta["chosen_response"] == 1 else "response2"
        assert p.chosen == row[better] and [row[f"annotator{k}"] for k in (1, 2, 3)] == p.meta["labels"]


# ---------------------------------------------------------------- more shapes

def test_content_as_a_list_of_parts(tmp_path):
    parts = {"prompt": [{"role": "user", "content": [{"type": "text", "text": "Name "}, {"type": "text", "text": "it."}]}],
             "chosen": [{"role": "assistant", "content": [{"type": "text", "text": "A cat."}]}],
             "rejected": [{"role": "assistant", "content": "A dog."}]}
    image = dict(parts, prompt=[{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}},
                                                             {"type": "text", "text": "What is it?"}]}])
    res = read_pairs([_jsonl(tmp_path / "p.jsonl", [parts, image])])
    (pair,) = res.pairs
    assert pair.prompt == [{"role": "user", "content": "Name it."}] and pair.chosen == "A cat."
    assert res.quarantined[0].reason == ("prompt[0]: content part 0 is 'image_url', not text; "
                                         "only text parts can be trained on")


def test_chosen_messages_and_rejected_messages(tmp_path):
    row = {"chosen_messages": [{"role": "user", "content": "Q"}, {"role": "assistant", "content": "good"}],
           "rejected_messages": [{"role": "user", "content": "Q"}, {"role": "assistant", "content": "bad"}],
           "score": 3}
    (pair,) = read_pairs([_jsonl(tmp_path / "m.jsonl", [row])]).pairs
    assert (pair.prompt, pair.chosen, pair.rejected, pair.meta) == ([{"role": "user", "content": "Q"}], "good", "bad",
                                                                    {"score": 3})


def test_unknown_shape_names_fields_and_the_column_options(tmp_path):
    rows = [{"question": "Q?", "good": "yes", "bad": "no"},
            {"query": "Q?", "response_a": "x", "response_b": "y", "winner": "model_a"},
            {"foo": 1},
            {"prompt": "p", "completion": "an SFT example"}]
    res = read_pairs([_jsonl(tmp_path / "u.jsonl", rows)])
    r = [q.reason for q in res.quarantined]
    assert r[0] == ("unknown row shape: fields question, good, bad; map them with "
                    "--column prompt=question --column chosen=good --column rejected=bad")
    assert r[1].startswith("unknown row shape: fields query, response_a, response_b, winner; map them with "
                           "--column prompt=query --column response1=response_a --column response2=response_b "
                           "--column label=winner --label-map")
    assert r[2] == ("unknown row shape: fields foo; map them with "
                    "--column prompt=NAME --column chosen=NAME --column rejected=NAME")
    assert r[3].startswith("one answer without a true/false label: not a preference pair")
    # the hint, applied, reads the row
    (pair,) = read_pairs([_jsonl(tmp_path / "u1.jsonl", rows[:1])],
                         columns={"prompt": "question", "chosen": "good", "rejected": "bad"}).pairs
    assert (pair.prompt_text, pair.chosen, pair.rejected) == ("Q?", "yes", "no")


def test_unpaired_examples_paired_by_prompt_and_leftovers_quarantined(tmp_path):
    def conv(q, a):
        return [{"role": "user", "content": q}, {"role": "assistant", "content": a}]

    rows = [{"prompt": "P1", "completion": "good 1", "label": True},
            {"prompt": "P2", "completion": "bad 2", "label": False},          # leftover: no desirable P2
            {"prompt": "P1", "completion": "bad 1", "label": False},
            {"prompt": "P1", "completion": "good 1b", "label": True},         # leftover: P1's bad is taken
            {"messages": conv("P3", "bad 3"), "label": False},
            {"messages": conv("P3", "good 3"), "label": True, "source": "s"},
            {"prompt": "P4", "completion": "x", "label": 1}]                  # not a boolean
    res = read_pairs([_jsonl(tmp_path / "kto.jsonl", rows)])
    _invariant(res)
    assert res.rows_in == 5  # 7 rows, two pairs formed from four of them
    assert [(p.prompt_text, p.chosen, p.rejected, p.line) for p in res.pairs] == [
        ("P1", "good 1", "bad 1", 1), ("P3", "good 3", "bad 3", 6)]
    assert res.pairs[0].meta == {"paired_from_lines": [1, 3]} and res.pairs[1].meta["source"] == "s"
    got = {q.line: q.reason for q in res.quarantined}
    assert set(got) == {2, 4, 7}
    assert got[2].startswith("unpaired example (undesirable): no desirable example of the same prompt")
    assert "a pairwise optimizer cannot use an unpaired example" in got[4]
    assert got[7] == "unpaired example: label 1 is not true or false (true = desirable, false = undesirable)"
    (note,) = res.notes
    assert "6 unpaired examples" in note and "2 pairs formed" in note and "2 left without a counterpart" in note
    # the same rows from a CSV (labels as text) pair the same way
    csv_path = tmp_path / "kto.csv"
    pd.DataFrame([r for r in rows if "prompt" in r][:4]).to_csv(csv_path, index=False)
    res = read_pairs([str(csv_path)])
    assert [(p.chosen, p.rejected) for p in res.pairs] == [("good 1", "bad 1")] and len(res.quarantined) == 2


# ---------------------------------------------------------------- input defects

def test_fields_of_only_invisible_characters_are_empty(tmp_path):
    rows = [{"prompt": "\u200b", "chosen": "c", "rejected": "r"},
            {"prompt": "p", "chosen": "\u2060\ufeff ", "rejected": "r"},
            {"prompt": [{"role": "user", "content": "\u00ad\u200d"}], "chosen": [{"role": "assistant", "content": "c"}],
             "rejected": [{"role": "assistant", "content": "r"}]},
            {"prompt": "p", "chosen": "same\u200b answer", "rejected": "same answer"},
            {"prompt": "Tea\u200bpot? \U0001F469\u200d\U0001F4BB", "chosen": "\u00a0 ok", "rejected": "no"}]
    res = read_pairs([_jsonl(tmp_path / "inv.jsonl", rows)])
    _invariant(res)
    got = {q.line: q.reason for q in res.quarantined}
    assert got == {1: "empty prompt: only invisible characters (U+200B)",
                   2: "empty chosen: only invisible characters (U+2060, U+FEFF)",
                   3: "empty prompt: only invisible characters (U+00AD, U+200D)",
                   4: "degenerate: chosen and rejected differ only in invisible characters (U+200B)"}
    (pair,) = res.pairs  # invisible characters inside real text are kept as they are
    assert pair.prompt_text == "Tea\u200bpot? \U0001F469\u200d\U0001F4BB" and pair.chosen == "\u00a0 ok"
    csv_path = tmp_path / "inv.csv"
    csv_path.write_text("prompt,chosen,rejected\n\u200b\u200c,c,r\n", encoding="utf-8")
    (q,) = read_pairs([str(csv_path)]).quarantined
    assert (q.line, q.reason) == (2, "empty prompt: only invisible characters (U+200B, U+200C)")


def test_invisible_class_follows_unicodedata():
    import sys
    import unicodedata

    from prefdesk.invisible import INVISIBLE

    visible_marks = {0x0600, 0x0601, 0x0602, 0x0603, 0x0604, 0x0605, 0x06DD, 0x070F, 0x0890, 0x0891, 0x08E2,
                     0x110BD, 0x110CD}
    for cp in range(sys.maxunicode + 1):
        ch = chr(cp)
        cat = unicodedata.category(ch)
        if cat in ("Cf", "Cc") and not ch.isspace() and cp not in visible_marks:
            assert INVISIBLE.match(ch), f"U+{cp:04X} ({cat}) is invisible"
        elif INVISIBLE.match(ch):
            assert cat in ("Cf", "Cc", "Mn", "Lo", "So", "Cn"), f"U+{cp:04X} ({cat})"


def test_duplicate_keys_quarantined_in_every_format(tmp_path):
    good = '{"prompt": "p", "chosen": "c", "rejected": "r"}'
    jl = tmp_path / "d.jsonl"
    jl.write_text("\n".join([good, '{"prompt": "p", "chosen": "c", "rejected": "r", "chosen": "x"}',
                             '{"prompt": [{"role": "user", "role": "system", "content": "q"}], "chosen": "c", "rejected": "r"}'])
                  + "\n")
    js = tmp_path / "d.json"
    js.write_text(f'[{good}, {{"prompt": "p", "prompt": "q", "chosen": "c", "rejected": "r"}}]')
    cs = tmp_path / "d.csv"
    cs.write_text("prompt,chosen,rejected,chosen\np,c,r,x\n")
    import pyarrow as pa
    import pyarrow.parquet as pq

    pa_path = tmp_path / "d.parquet"
    pq.write_table(pa.table([pa.array(["p"]), pa.array(["c"]), pa.array(["r"]), pa.array(["x"])],
                            names=["prompt", "chosen", "rejected", "chosen"]), pa_path)
    res = read_pairs([str(jl), str(js), str(cs), str(pa_path)])
    _invariant(res)
    assert len(res.pairs) == 2
    got = [(Path(q.source).name, q.line, q.reason) for q in res.quarantined]
    assert got == [
        ("d.jsonl", 2, "duplicate key 'chosen' in the JSON object on line 2: a JSON parser keeps only the last value"),
        ("d.jsonl", 3, "duplicate key 'role' in the JSON object on line 3: a JSON parser keeps only the last value"),
        ("d.json", 2, "duplicate key 'prompt' in the JSON object of item 2: a JSON parser keeps only the last value"),
        ("d.csv", 2, "duplicate column 'chosen' in the CSV header (line 1): a reader keeps only one of its values"),
        ("d.parquet", 1, "duplicate column 'chosen' in the Parquet schema: a reader keeps only one of its values")]
    assert '"chosen": "x"' in res.quarantined[0].raw  # the raw line as written
    wrapped = tmp_path / "w.json"
    wrapped.write_text(f'{{"data": [{good}], "data": []}}')
    with pytest.raises(DataError, match=r"w\.json:1: the top-level key 'data' appears twice"):
        read_pairs([str(wrapped)])


def test_cli_validate_label_map_end_to_end(tmp_path):
    from typer.testing import CliRunner

    from prefdesk.cli import app

    data = _coded_012(tmp_path)
    res = CliRunner().invoke(app, ["validate", data, "--label-map", "0=first,1=second,2=tie", "--json",
                                   "--out", str(tmp_path / "out")])
    report = json.loads(res.stdout.strip().splitlines()[-1])
    assert (report["rows_in"], report["accepted"]) == (3, 2), (
        f"the data desk must pass data.label_map to read_pairs: {report['quarantine_reasons']}")
    accepted = [json.loads(x) for x in (tmp_path / "out" / "accepted_pairs.jsonl").read_text().splitlines()]
    assert {(p["chosen"], p["rejected"]) for p in accepted} == {("Paris.", "Lyon."), ("4", "5")}
    bad = CliRunner().invoke(app, ["validate", data, "--label-map", "0=winner"])
    assert bad.exit_code == 1 and "first, second or tie" in " ".join(bad.output.split())


def test_prompt_files_every_row_accounted(tmp_path):
    from prefdesk.readers import read_prompts

    f = tmp_path / "prompts.jsonl"
    f.write_text("\n".join([
        '{"prompt": "Name a colour."}',
        '{"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"}]}',
        '{"instruction": "Translate", "input": "bonjour"}',
        '{"prompt": "Name a colour."}',
        '{"prompt": "\\u200b"}',
        '{"title": "no prompt here"}',
        '{"prompt": "x", "chosen": "a", "rejected": "b"}',
        'not json',
    ]) + "\n")
    res = read_prompts([str(f)])
    assert [p[-1]["content"] for p in res.prompts] == ["Name a colour.", "Hi", "Translate\n\nbonjour", "x"]
    assert res.duplicates == 1
    assert sorted(q.line for q in res.quarantined) == [5, 6, 8]
    assert res.rows_in == len(res.prompts) + len(res.quarantined) + res.duplicates
    reasons = {q.line: q.reason for q in res.quarantined}
    assert "invisible" in reasons[5] and "no prompt field: fields title" in reasons[6]
