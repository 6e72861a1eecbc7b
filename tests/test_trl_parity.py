"""The engine's DPO against TRL's DPOTrainer on the same tiny model, pairs and tokens.

Both of the engine's layouts are checked: the prompt shared by both answers (one packed
row per pair, what training runs) and a row per answer (what TRL runs).
"""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("trl")

from prefdesk.plugins.dpo import dpo_loss  # noqa: E402
from prefdesk.engine.batching import collate, encode_pairs  # noqa: E402
from prefdesk.engine.logprobs import batch_logps  # noqa: E402
from prefdesk.engine.losses import PairLogps  # noqa: E402
from prefdesk.pairs import Pair  # noqa: E402

BETA = 0.1


@pytest.fixture(scope="module")
def setup(tmp_path_factory, toy_pairs):
    from datasets import Dataset
    from trl import DPOConfig, DPOTrainer

    from prefdesk.config import ModelSettings
    from prefdesk.models import build_policy

    multi = Pair(
        prompt=[{"role": "user", "content": "Hi there"}, {"role": "assistant", "content": "Hello! How can I help?"},
                {"role": "user", "content": "Name a colour."}],
        chosen="Blue, like a clear sky.", rejected="NO.",
    )
    pairs = toy_pairs[:3] + [multi]
    policy = build_policy(ModelSettings(name="tiny", dtype="fp32"))
    rows = [{"prompt": p.prompt, "chosen": [{"role": "assistant", "content": p.chosen}],
             "rejected": [{"role": "assistant", "content": p.rejected}]} for p in pairs]
    args = DPOConfig(
        output_dir=str(tmp_path_factory.mktemp("trl")), beta=BETA, loss_type=["sigmoid"], max_length=None,
        per_device_train_batch_size=len(pairs), report_to=[], use_cpu=True, bf16=False,
        precompute_ref_log_probs=False, dataloader_num_workers=0, dataset_num_proc=None,
        disable_dropout=True, logging_strategy="no", save_strategy="no",
    )
    trainer = DPOTrainer(model=policy.model, args=args, train_dataset=Dataset.from_list(rows),
                         processing_class=policy.tokenizer)
    # Move the policy away from the reference (TRL's "ref" adapter is the untouched copy = the base).
    torch.manual_seed(0)
    with torch.no_grad():
        for n, p in policy.model.named_parameters():
            if ".default." in n:
                p.add_(torch.randn_like(p) * 0.05)
    return policy, pairs, trainer


def test_same_tokens(setup):
    policy, pairs, trainer = setup
    ours = encode_pairs(policy.tokenizer, pairs, 10_000)
    for row, e in zip(trainer.train_dataset, ours):
        assert row["prompt_ids"] == e.chosen.input_ids[: e.chosen.answer_start]
        assert row["chosen_ids"] == e.chosen.input_ids[e.chosen.answer_start :]
        assert row["rejected_ids"] == e.rejected.input_ids[e.rejected.answer_start :]


@pytest.mark.parametrize("shared", [True, False], ids=["shared-prefix", "separate"])
@pytest.mark.parametrize("loss_type", ["sigmoid", "ipo", "hinge"])
def test_loss_and_rewards_match_trl(setup, loss_type, shared):
    policy, pairs, trainer = setup
    trainer.loss_types, trainer.loss_weights = [loss_type], [1.0]
    trainer._metrics["train"].clear()
    trainer.model.train()
    inputs = trainer.data_collator([trainer.train_dataset[i] for i in range(len(pairs))])
    with torch.no_grad():
        trl_loss = trainer._compute_loss(trainer.model, inputs, False).item()
    m = trainer._metrics["train"]

    enc = encode_pairs(policy.tokenizer, pairs, 10_000)
    b = collate(enc, policy.tokenizer.pad_token_id, shared=shared)
    assert b.shared == shared
    with torch.no_grad():
        s, n = batch_logps(policy.model, **b.inputs())
        with policy.reference():
            r, _ = batch_logps(policy.model, **b.inputs())
    out = dpo_loss(PairLogps(s[:, 0], s[:, 1], n[:, 0], n[:, 1], r[:, 0], r[:, 1]), beta=BETA, loss_type=loss_type)
    assert out.loss.item() == pytest.approx(trl_loss, rel=1e-4, abs=1e-6)
    assert out.reward_chosen.mean().item() == pytest.approx(m["rewards/chosen"][-1], rel=1e-4, abs=1e-6)
    assert out.reward_rejected.mean().item() == pytest.approx(m["rewards/rejected"][-1], rel=1e-4, abs=1e-6)
    assert s[:, 0].mean().item() == pytest.approx(m["logps/chosen"][-1], rel=1e-5)
    # a non-trivial comparison: the policy has left the reference
    assert abs(out.reward_chosen).max().item() > 1e-3
