"""One optimizer run: plugin lookup, parameter parsing, policy construction, fit.

Shared by the flow's train task and `prefdesk train`, so both run exactly the same path.
The flow also gives a stable `work_dir` per (data, config), so a nightly run that was
killed resumes from its last checkpoint when it is started again.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Sequence

from prefdesk import plugin
from prefdesk.config import PrefdeskConfig
from prefdesk.models import build_policy
from prefdesk.pairs import Pair
from prefdesk.plugin import TrainResult
from prefdesk.tracking import Tracker


def train_adapter(
    cfg: PrefdeskConfig, pairs: Sequence[Pair], output_dir: str | Path, tracker: Tracker, checkpoint_every: int = 0
) -> TrainResult:
    if cfg.data.limit:
        pairs = list(pairs)[: cfg.data.limit]
    if not pairs:
        raise ValueError("no accepted pairs to train on")
    cls = plugin.load(cfg.train.optimizer)
    raw = {"seed": cfg.seed, "max_length": cfg.data.max_length, "checkpoint_every": checkpoint_every,
           **cfg.train.params, "output_dir": str(output_dir)}
    params = plugin.parse_params(cls, raw)
    tracker.log_params({f"optimizer.{k}": v for k, v in params.model_dump().items()})
    policy = build_policy(cfg.model, seed=cfg.seed)
    tracker.set_tags({"prefdesk.optimizer": cls.name, "prefdesk.quantized": str(policy.quantized).lower(),
                      "prefdesk.dtype": str(policy.dtype).replace("torch.", "")})
    return cls().fit(policy, list(pairs), params, tracker)


def work_dir(root: Path, cfg: PrefdeskConfig, accepted_path: str | Path) -> Path:
    """Same accepted pairs and same model/train config -> same folder (and its checkpoints)."""
    h = hashlib.sha256(Path(accepted_path).read_bytes())
    h.update(json.dumps([cfg.model.model_dump(mode="json"), cfg.train.model_dump(mode="json"), cfg.data.limit],
                        sort_keys=True).encode())
    return root / f"{cfg.train.optimizer}-{h.hexdigest()[:16]}"
