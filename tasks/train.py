from __future__ import annotations

from pathlib import Path
from typing import Any

from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE

from prefdesk.config import home
from prefdesk.pairs import read_pairs_jsonl
from prefdesk.training import load_prompts, train_adapter, work_dir
from tasks.common import config_of, tracker_of
from validations.generated import desk_for_generated


@task(name="train", cache_policy=NO_CACHE)
def train(accepted_path: str, config: dict[str, Any], run_dir: str, run_id: str) -> str:
    """Run the configured optimizer plugin; returns the adapter folder."""
    cfg = config_of(config)
    pairs = read_pairs_jsonl(accepted_path)
    out = work_dir(home() / "work", cfg, accepted_path)  # a rerun after a kill resumes here
    tracker = tracker_of(run_id)
    data_dir = Path(run_dir) / "data"
    result = train_adapter(cfg, pairs, out, tracker, prompts=load_prompts(cfg, data_dir),
                           check_pairs=desk_for_generated(cfg, tracker, data_dir))
    if result.gated:
        tracker.log_metrics(result.gated)
    get_run_logger().info("train: %s, %d steps -> %s", cfg.train.optimizer, result.steps, result.adapter_path)
    return result.adapter_path
