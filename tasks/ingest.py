from __future__ import annotations

import hashlib
import json
from pathlib import Path

from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE

from prefdesk.readers import resolve


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


# retries: reading the inbox is I/O (a network share not yet mounted, a file still being copied)
@task(name="ingest", cache_policy=NO_CACHE, retries=2, retry_delay_seconds=10)
def ingest(inputs: list[str], run_dir: str) -> list[str]:
    """Resolve the inbox (files, folders, embedded sets) and record what tonight's data is."""
    files = [p for spec in inputs for p in resolve(spec)]
    if not files:
        raise FileNotFoundError(f"no input files found in {inputs}")
    manifest = [{"path": str(p), "bytes": p.stat().st_size, "sha256": _sha256(p)} for p in files]
    Path(run_dir).mkdir(parents=True, exist_ok=True)
    (Path(run_dir) / "inputs.json").write_text(json.dumps(manifest, indent=2))
    get_run_logger().info("ingest: %d file(s): %s", len(files), ", ".join(p.name for p in files))
    return [str(p) for p in files]
