from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE

from prefdesk.atomic import write_json
from prefdesk.config import home
from prefdesk.pairs import read_pairs_jsonl
from prefdesk.plugin import TrainResult
from prefdesk.tracking import Tracker
from prefdesk.training import load_prompts, train_adapter, work_dir
from prefdesk.tasks.common import config_of, tracker_of
from prefdesk.validations.generated import desk_for_generated

log = logging.getLogger("prefdesk")


def record_training(result: TrainResult, tracker: Tracker, folder: str | Path, log_adapter: bool) -> dict[str, Any]:
    """What a training run made, recorded the same way by the flow and by `prefdesk train`.

    The gated figures go to MLflow and to `train.json` (the gate task reads them there); a
    reward model is registered as a model of its own (PPO, rejection sampling and the
    `reward_model` judge find it by alias); other artifacts are attached to the run, the
    adapter only when asked (the flow's register task logs it with the candidate model).
    """
    tracker.log_metrics(result.gated)
    record: dict[str, Any] = {"artifacts": result.artifacts, "gated": result.gated, "steps": result.steps}
    for name, path in result.artifacts.items():
        if name == "reward_model":
            from prefdesk.plugins.reward_model import register_reward_model

            reg = register_reward_model(tracker.run_id, path)
            record["reward_model_registration"] = reg.__dict__
            log.info("reward model registered: %s version %s (%s)", reg.model_name, reg.version, ", ".join(reg.aliases))
        elif name != "adapter" or log_adapter:
            tracker.log_artifact(path, name)
    write_json(Path(folder) / "train.json", record)
    return record


@task(name="train", cache_policy=NO_CACHE)  # no retries: a failed step is a bug or bad data, and it resumes anyway
def train(accepted_path: str, config: dict[str, Any], run_dir: str, run_id: str) -> str:
    """Run the configured optimizer plugin; returns the adapter folder (see `record_training`)."""
    cfg = config_of(config)
    pairs = read_pairs_jsonl(accepted_path)
    out = work_dir(home() / "work", cfg, accepted_path)  # a rerun after a kill resumes here
    tracker = tracker_of(run_id)
    data_dir = Path(run_dir) / "data"
    result = train_adapter(cfg, pairs, out, tracker, prompts=load_prompts(cfg, data_dir),
                           check_pairs=desk_for_generated(cfg, tracker, data_dir))
    record_training(result, tracker, run_dir, log_adapter=False)
    if "adapter" not in result.artifacts:
        raise RuntimeError(f"optimizer {cfg.train.optimizer!r} made no policy adapter ({', '.join(result.artifacts)}), "
                           "so there is nothing to evaluate or promote; train it with `prefdesk train` instead")
    get_run_logger().info("train: %s, %d steps -> %s", cfg.train.optimizer, result.steps, result.adapter_path)
    return result.adapter_path
