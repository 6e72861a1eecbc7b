from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE

from prefdesk.config import home
from prefdesk.pairs import read_pairs_jsonl
from prefdesk.training import load_prompts, train_adapter, work_dir
from tasks.common import config_of, tracker_of
from validations.generated import desk_for_generated


@task(name="train", cache_policy=NO_CACHE)  # no retries: a failed step is a bug or bad data, and it resumes anyway
def train(accepted_path: str, config: dict[str, Any], run_dir: str, run_id: str) -> str:
    """Run the configured optimizer plugin; returns the adapter folder.

    What the plugin made besides the adapter (its figures for the gates, a reward model) is
    written to `train.json` in the run folder; a reward model is registered as its own model.
    """
    cfg = config_of(config)
    pairs = read_pairs_jsonl(accepted_path)
    out = work_dir(home() / "work", cfg, accepted_path)  # a rerun after a kill resumes here
    tracker = tracker_of(run_id)
    data_dir = Path(run_dir) / "data"
    result = train_adapter(cfg, pairs, out, tracker, prompts=load_prompts(cfg, data_dir),
                           check_pairs=desk_for_generated(cfg, tracker, data_dir))
    tracker.log_metrics(result.gated)
    log = get_run_logger()
    record: dict[str, Any] = {"artifacts": result.artifacts, "gated": result.gated, "steps": result.steps}
    if "reward_model" in result.artifacts:
        from plugins.reward_model import register_reward_model

        reg = register_reward_model(run_id, result.artifacts["reward_model"])
        record["reward_model_registration"] = reg.__dict__
        log.info("reward model: %s version %s, aliases %s", reg.model_name, reg.version, ", ".join(reg.aliases))
    (Path(run_dir) / "train.json").write_text(json.dumps(record, indent=2, default=str))
    if "adapter" not in result.artifacts:
        raise RuntimeError(f"optimizer {cfg.train.optimizer!r} made no policy adapter ({', '.join(result.artifacts)}), "
                           "so there is nothing to evaluate or promote; train it with `prefdesk train` instead")
    log.info("train: %s, %d steps -> %s", cfg.train.optimizer, result.steps, result.adapter_path)
    return result.adapter_path
