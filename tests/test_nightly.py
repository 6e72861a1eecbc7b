"""Nights that follow one another: the inbox, the held store, the window, the dataset version
in MLflow, a night without new pairs, and the caches that spare work already done.

Real parts throughout: the readers and the data desk, a real Prefect flow (test harness) on
the tiny model with a real MLflow SQLite store, and the engine's on-disk reference cache.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch

from prefdesk.config import DataSettings
from prefdesk.inbox import ingest_night, version_hash
from prefdesk.readers import read_pairs

DEFAULT_PAIRS = Path(__file__).resolve().parents[1] / "prefdesk" / "data" / "default_pairs.jsonl"


def _lines(start: int, stop: int) -> str:
    return "".join(DEFAULT_PAIRS.read_text(encoding="utf-8").splitlines(keepends=True)[start:stop])


def _settings(inbox: Path, held: Path, **kw) -> DataSettings:
    return DataSettings(inbox=str(inbox), held=str(held), **kw)


# -- the inbox, on its own -------------------------------------------------------------------


def test_dedupe_across_nights_and_every_row_accounted(tmp_path):
    inbox, held = tmp_path / "inbox", tmp_path / "held"
    inbox.mkdir()
    bad = '{"prompt": "no answers here"}\n'
    (inbox / "a.jsonl").write_text(_lines(0, 10) + bad + _lines(3, 4))  # an unreadable row, a repeat
    n1 = ingest_night(_settings(inbox, held), tmp_path / "n1")
    assert (n1.night, n1.rows_in, n1.pairs_new, n1.duplicates, n1.unreadable) == (1, 12, 10, 1, 1)
    q1 = [json.loads(x) for x in Path(n1.quarantine_path).read_text().splitlines()]
    assert [q["line"] for q in q1] == [11, 12]
    assert "duplicate of pair" in q1[1]["reason"] and "a.jsonl:4" in q1[1]["reason"]

    # night 2: the same file again under another name (not read), and a file that overlaps
    (inbox / "a-copy.jsonl").write_bytes((inbox / "a.jsonl").read_bytes())
    (inbox / "b.jsonl").write_text(_lines(8, 14))
    n2 = ingest_night(_settings(inbox, held), tmp_path / "n2")
    assert n2.night == 2 and [Path(p).name for p in n2.files_seen] == ["a-copy.jsonl", "a.jsonl"]
    assert [Path(f["path"]).name for f in n2.files_new] == ["b.jsonl"]
    assert (n2.rows_in, n2.pairs_new, n2.duplicates, n2.unreadable, n2.pairs_held) == (6, 4, 2, 0, 14)
    reasons = [json.loads(x)["reason"] for x in Path(n2.quarantine_path).read_text().splitlines()]
    assert len(reasons) == 2 and all(r.startswith("duplicate of held pair") and "(night 1, " in r for r in reasons)

    # the window reads back (as the desk reads it) to exactly the held pairs, meta kept
    window = read_pairs([n2.window_path])
    expected = read_pairs([str(inbox / "a.jsonl")]).pairs[:10] + read_pairs([str(inbox / "b.jsonl")]).pairs[2:]
    assert [p.id for p in window.pairs] == [p.id for p in expected]
    assert not window.quarantined
    assert window.pairs[0].meta["theme"] == expected[0].meta["theme"]
    assert window.pairs[-1].meta["prefdesk"]["night"] == 2
    assert n2.window_hash == version_hash(p.id for p in expected)

    # night 3: nothing new
    n3 = ingest_night(_settings(inbox, held), tmp_path / "n3")
    assert (n3.night, n3.pairs_new, n3.rows_in, n3.pairs_held) == (3, 0, 0, 14)
    assert "no new pairs" in n3.says()
    nights = [json.loads(x) for x in (held / "nights.jsonl").read_text().splitlines()]
    assert [n["pairs_new"] for n in nights] == [10, 4, 0]


def test_window_last_pairs_and_last_nights(tmp_path):
    inbox, held = tmp_path / "inbox", tmp_path / "held"
    inbox.mkdir()
    for night, (a, b) in enumerate([(0, 6), (6, 10), (10, 13)], 1):
        (inbox / f"n{night}.jsonl").write_text(_lines(a, b))
        last = ingest_night(_settings(inbox, held), tmp_path / f"all{night}")
    assert last.window_pairs == 13 and last.pairs_held == 13

    later = iter(range(4, 10))

    def window(**kw) -> list[int]:
        """Tonight's window under other settings (a later night, nothing new)."""
        n = ingest_night(_settings(inbox, held, **kw), tmp_path / f"night{next(later)}")
        return [p.meta["prefdesk"]["night"] for p in read_pairs([n.window_path]).pairs]

    assert window(window_pairs=5) == [2, 2, 3, 3, 3]
    # night 5 now: the last 3 nights are 3, 4 (nothing new) and 5 (nothing new)
    assert window(window_nights=3) == [3, 3, 3]
    # night 6: the last 5 nights are 2..6; of their pairs, the last 6
    assert window(window_nights=5, window_pairs=6) == [2, 2, 2, 3, 3, 3]


def test_unreadable_file_is_quarantined_whole_and_half_uploads_wait(tmp_path):
    inbox, held = tmp_path / "inbox", tmp_path / "held"
    inbox.mkdir()
    (inbox / "broken.jsonl.gz").write_bytes(b"not gzip at all")
    (inbox / ".upload.jsonl").write_text(_lines(0, 3))  # still being written: a dot-name
    n1 = ingest_night(_settings(inbox, held), tmp_path / "n1")
    assert (n1.rows_in, n1.pairs_new, n1.unreadable) == (1, 0, 1)
    [q] = [json.loads(x) for x in Path(n1.quarantine_path).read_text().splitlines()]
    assert q["source"].endswith("broken.jsonl.gz") and q["reason"].startswith("file not read: ")
    (inbox / ".upload.jsonl").rename(inbox / "upload.jsonl")  # the upload is complete
    n2 = ingest_night(_settings(inbox, held), tmp_path / "n2")
    assert (n2.rows_in, n2.pairs_new, n2.unreadable) == (3, 3, 0)
    assert [Path(p).name for p in n2.files_seen] == ["broken.jsonl.gz"]


def test_inbox_errors_name_the_setting(tmp_path):
    from prefdesk.inbox import InboxError

    with pytest.raises(InboxError, match="data.inbox: .* is not a folder"):
        ingest_night(_settings(tmp_path / "missing", tmp_path / "held"), tmp_path / "out")


# -- work not redone ---------------------------------------------------------------------------


def test_token_counts_cached_by_tokenizer_identity(tmp_path, toy_pairs):
    from prefdesk.engine.tokcache import TokenCountCache, pair_token_counts, tokenizer_identity
    from prefdesk.engine.tokenize import encode
    from prefdesk.models import load_tokenizer

    tok = load_tokenizer("tiny")
    items = [(p.prompt, p.chosen) for p in toy_pairs[:6]]
    cache = TokenCountCache(tok, tmp_path)
    first = cache.counts(items)
    assert (cache.hits, cache.misses) == (0, 6)
    assert first == [len(encode(tok, p, a, 10**9).input_ids) for p, a in items]
    again = TokenCountCache(load_tokenizer("tiny"), tmp_path)  # another run, the same tokenizer
    assert again.counts(items) == first and (again.hits, again.misses) == (6, 0)

    other = load_tokenizer("tiny")
    other.chat_template = "{% for m in messages %}<<{{ m['content'] }}>>{% endfor %}"  # another template
    assert tokenizer_identity(other) != tokenizer_identity(tok)
    changed = TokenCountCache(other, tmp_path)
    counts = changed.counts(items)
    assert (changed.hits, changed.misses) == (0, 6)
    assert counts == [len(encode(other, p, a, 10**9).input_ids) for p, a in items] != first
    c, r = pair_token_counts(tok, toy_pairs[:3], tmp_path)
    assert c == first[:3] and len(r) == 3
    blocked = tmp_path / "not-a-folder"
    blocked.write_text("")  # the cache cannot be created: the counts are still right
    assert pair_token_counts(tok, toy_pairs[:3], blocked) == (c, r)


def test_reference_cache_reused_across_runs_and_invalidated_by_base_tokenizer_max_length(
        tiny_policy, toy_pairs, run_ctx, tmp_path):
    from prefdesk.plugins.dpo import dpo_loss
    from prefdesk.engine.loop import train
    from prefdesk.plugin import TrainParams

    root = tmp_path / "refs"
    params = TrainParams(max_steps=1, batch_size=4)

    def run(policy, max_length: int = 128, pairs=toy_pairs[:8]) -> dict:
        return train(run_ctx(policy, pairs, out=tmp_path / f"out{os.urandom(3).hex()}", max_length=max_length,
                             cache_root=root), params, dpo_loss).extra

    first = run(tiny_policy())
    assert (first["ref_cache_hits"], first["ref_cache_misses"]) == (0, 8)
    files = {p: p.stat().st_mtime_ns for p in root.rglob("*.pt")}
    assert len(files) == 8
    second = run(tiny_policy())  # the next night: same base, tokenizer, max_length
    assert (second["ref_cache_hits"], second["ref_cache_misses"]) == (8, 0)
    grown = run(tiny_policy(), pairs=toy_pairs[:10])  # two new pairs arrived
    assert (grown["ref_cache_hits"], grown["ref_cache_misses"]) == (8, 2)
    assert all(p.stat().st_mtime_ns == t for p, t in files.items()), "cached values are never rewritten"

    short = run(tiny_policy(), max_length=24)  # every toy pair is longer than 24 tokens: all new keys
    assert (short["ref_cache_hits"], short["ref_cache_misses"]) == (0, 8)

    other_tok = tiny_policy()
    other_tok.tokenizer.chat_template = "{% for m in messages %}[{{ m['role'] }}] {{ m['content'] }}\n{% endfor %}"
    changed = run(other_tok)
    assert (changed["ref_cache_hits"], changed["ref_cache_misses"]) == (0, 8)

    other_base = tiny_policy()
    with torch.no_grad():
        other_base.model.get_base_model().model.embed_tokens.weight.mul_(1.01)
    based = run(other_base)
    assert based["base_fingerprint"] != first["base_fingerprint"]
    assert (based["ref_cache_hits"], based["ref_cache_misses"]) == (0, 8)


# -- nights through the real flow --------------------------------------------------------------

TINY = [
    "model.name=tiny",
    "model.dtype=fp32",
    "train.params.max_steps=2",
    "train.params.batch_size=4",
    "eval.max_new_tokens=4",
    "eval.max_prompts=2",
    "eval.batch_size=4",
    "registry.model_name=nightly-policy",
    "registry.experiment=nightly",
]
LENIENT = [f"gates.{g}=null" for g in ("moved", "length_inflation", "length_collapse", "over_refusal",
                                        "under_refusal", "factuality", "pair_accuracy", "win_rate",
                                        "under_refusal_abs", "over_refusal_abs", "sycophancy", "distinguishable")] + [
    "gates.kl_budget.bound=100"]


@pytest.fixture(scope="module")
def harness():
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=120):
        yield


def test_nights_through_the_flow(harness, tmp_path):
    from prefdesk.flows.nightly import nightly
    from prefdesk.config import home
    from prefdesk.tracking import client

    inbox = tmp_path / "inbox"
    inbox.mkdir()
    over = TINY + LENIENT + [f"data.inbox={inbox}", f"data.held={tmp_path / 'held'}", "data.too_long=quarantine"]
    c = client()

    def versions() -> int:
        return len(c.search_model_versions("name='nightly-policy'"))

    refs = home() / "cache" / "refs"
    before = set(refs.rglob("*.pt")) if refs.exists() else set()

    # night 1: the first file
    (inbox / "mon.jsonl").write_text(_lines(0, 24))
    s1 = nightly(overrides=over, run_dir=str(tmp_path / "run1"))
    assert s1["inbox"]["pairs_new"] == 24 and s1["inbox"]["pairs_held"] == 24 and s1["data"]["accepted"] == 24
    assert s1["registry"]["version"] and versions() == 1
    run1 = c.get_run(s1["run_id"])
    m = run1.data.metrics
    assert (m["data/pairs_new"], m["data/pairs_held"], m["data/pairs_window"], m["data/night"]) == (24, 24, 24, 1)
    [ds] = run1.inputs.dataset_inputs
    tags = {t.key: t.value for t in ds.tags}
    assert tags["mlflow.data.context"] == "train"
    assert (tags["prefdesk.pairs_new"], tags["prefdesk.pairs_held"], tags["prefdesk.night"]) == ("24", "24", "1")
    assert ds.dataset.digest == tags["prefdesk.dataset_hash"] == run1.data.tags["prefdesk.data.hash"]
    assert json.loads(ds.dataset.profile)["num_rows"] == 24
    night1_refs = {p: p.stat().st_mtime_ns for p in set(refs.rglob("*.pt")) - before}
    assert len(night1_refs) == 24, "one reference value per pair"

    # night 2: a file with 4 pairs already held, 3 new ones and one the desk refuses (too long)
    long = {"prompt": "Tell me about rivers.", "chosen": "Rivers carry water to the sea. " * 150, "rejected": "No."}
    (inbox / "tue.jsonl").write_text(_lines(20, 27) + json.dumps(long) + "\n")
    s2 = nightly(overrides=over, run_dir=str(tmp_path / "run2"))
    assert (s2["inbox"]["pairs_new"], s2["inbox"]["duplicates"], s2["inbox"]["pairs_held"]) == (4, 4, 28)
    assert (s2["data"]["accepted"], s2["data"]["quarantined"]) == (27, 1) and versions() == 2
    [refused] = [json.loads(x) for x in Path(s2["data"]["quarantine_path"]).read_text().splitlines()]
    assert refused["reason"].startswith("too long")
    assert (refused["file"], refused["line"]) == (str(inbox / "tue.jsonl"), 8), "names the file that was sent"
    run2 = c.get_run(s2["run_id"])
    [ds2] = run2.inputs.dataset_inputs
    tags2 = {t.key: t.value for t in ds2.tags}
    assert (tags2["prefdesk.pairs_new"], tags2["prefdesk.pairs_held"], tags2["prefdesk.night"]) == ("4", "28", "2")
    assert ds2.dataset.digest != ds.dataset.digest
    quarantine = (tmp_path / "run2" / "data" / "ingest_quarantine.jsonl").read_text().splitlines()
    assert len(quarantine) == 4 and all("duplicate of held pair" in json.loads(q)["reason"] for q in quarantine)
    new_refs = set(refs.rglob("*.pt")) - before - set(night1_refs)
    assert len(new_refs) == 3, "only the new pairs were scored by the reference"
    assert all(p.stat().st_mtime_ns == t for p, t in night1_refs.items())

    # night 3: nothing arrived, skip: says so, trains and registers nothing
    s3 = nightly(overrides=over, run_dir=str(tmp_path / "run3"))
    assert s3["status"] == "skipped: no new pairs tonight, nothing trained or registered"
    assert s3["inbox"]["pairs_new"] == 0 and "no new pairs" in s3["inbox"]["says"]
    assert not s3["promoted"] and versions() == 2 and not (tmp_path / "run3" / "train.json").exists()
    run3 = c.get_run(s3["run_id"])
    assert run3.info.status == "FINISHED" and run3.data.metrics["data/pairs_new"] == 0

    # night 4: nothing arrived, retrain on the last 10 pairs by config
    s4 = nightly(overrides=over + ["data.on_no_new_pairs=retrain", "data.window_pairs=10"],
                 run_dir=str(tmp_path / "run4"))
    assert s4["inbox"]["pairs_new"] == 0 and s4["inbox"]["window_pairs"] == 10
    assert s4["data"]["accepted"] == 9 and versions() == 3  # the long pair is among the last 10
    assert set(refs.rglob("*.pt")) - before == set(night1_refs) | new_refs, "nothing scored twice"
    assert "reused_from" not in s4["data"]

    # night 5: the same window again: its validation is reused, not redone
    s5 = nightly(overrides=over + ["data.on_no_new_pairs=retrain", "data.window_pairs=10"],
                 run_dir=str(tmp_path / "run5"))
    assert s5["data"]["reused_from"] == str(tmp_path / "run4" / "data")
    assert {k: v for k, v in s5["data"].items() if k not in ("reused_from", "quarantine_path")} == \
        {k: v for k, v in s4["data"].items() if k != "quarantine_path"}
    assert (tmp_path / "run5" / "data" / "accepted_pairs.jsonl").read_bytes() == \
        (tmp_path / "run4" / "data" / "accepted_pairs.jsonl").read_bytes()
    run5 = c.get_run(s5["run_id"])
    assert run5.data.metrics["data/validation_reused"] == 1.0 and run5.data.metrics["data/pairs_accepted"] == 9
    [ds5] = run5.inputs.dataset_inputs
    assert c.get_run(s4["run_id"]).inputs.dataset_inputs[0].dataset.digest == ds5.dataset.digest
