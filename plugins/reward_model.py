"""The reward model: a Bradley–Terry scalar head on the policy's own base, a LoRA adapter of its own.

    r(x, y) = w · h_last(x ⊕ y) + b        loss = −log σ(r(x, y_w) − r(x, y_l))  [+ c·(r_w + r_l)²]

`h_last` is the base model's last hidden state, with the adapter named "reward" switched
on, at the end-of-answer token (what `prefdesk.engine.tokenize.encode` ends an answer
with; the sampler stops on the same token). The base weights are the run's frozen base:
the reward model costs one LoRA adapter and one `nn.Linear(hidden, 1)`, no second copy of
the model. The optional centring term (c = `center_rewards`, as TRL's
`center_rewards_coefficient`) keeps rewards near 0, which PPO's advantages like.

Read top to bottom: the sequences the head reads, the judge (scoring and loading), the
training (`fit_reward_model`, which PPO and rejection sampling call as a step of their own),
the held-out figures, the optimizer plugin, and registration in the MLflow Model Registry.

Held-out figures (on a seeded share of the prompts, never trained on):
    rm/pair_accuracy        share of held-out pairs whose chosen answer gets the higher reward
    rm/reward_mean, _std    of every held-out answer's reward (chosen and rejected)
    rm/margin               mean r(chosen) − r(rejected)
    rm/length_correlation   Pearson r between reward and answer length in tokens over the
                            held-out answers. Signed, so a judge that pays for length
                            (r → +1) and one that pays for brevity (r → −1) both show, and
                            scale-free, so one bound serves any reward scale; r² is the
                            share of the reward's variance a straight line in length explains
                            (logged in the summary line). This is the classic proxy failure:
                            a reward model that learnt "longer is better" from biased pairs
                            scores near 1 here whatever its pair accuracy.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import time
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

import torch
import torch.nn.functional as F
from pydantic import Field

from prefdesk.config import Gate
from prefdesk.context import RunContext
from prefdesk.engine.checkpoint import Checkpointer
from prefdesk.engine.logprobs import compute_context, decoder, hidden_states
from prefdesk.engine.loop import StepInfo, TrainingDiverged, linear_schedule, make_plan, run_key
from prefdesk.engine.refcache import base_fingerprint
from prefdesk.engine.tokenize import encode
from prefdesk.judges import JudgeError, ScoreJudge
from prefdesk.plugin import TrainParams, TrainResult

if TYPE_CHECKING:
    from prefdesk.models import Policy
    from prefdesk.pairs import Pair
    from prefdesk.registry import Registration

log = logging.getLogger("prefdesk")

ADAPTER = "reward"  # the adapter's name on the policy
HEAD_FILE = "reward_head.safetensors"
META_FILE = "reward_model.json"
REGISTERED_NAME = "prefdesk-reward"  # the MLflow registered model; `champion` is the default judge
DEFAULT_SOURCE = f"models:/{REGISTERED_NAME}@champion"


class RewardModelParams(TrainParams):
    heldout_share: float = Field(0.2, gt=0, lt=1, description="share of prompts held out for the rm/ figures")
    center_rewards: float = Field(0.0, ge=0, description="weight of (r_chosen + r_rejected)^2: keeps rewards near 0")


# -- the sequences the head reads -------------------------------------------------------------


def end_answer(answer_ids: Sequence[int], eos_id: int) -> list[int]:
    """The answer up to and including its first end token, or given one when it has none.

    The chat template may add a newline after the end token; sampler output and answers
    truncated for length have none. Either way the reward model reads the position it was
    trained on, and an unfinished sample is judged as if it ended there.
    """
    answer = list(answer_ids)
    return answer[: answer.index(eos_id) + 1] if eos_id in answer else answer + [eos_id]


def reading_ids(prompt_ids: Sequence[int], answer_ids: Sequence[int], eos_id: int, max_length: int) -> list[int]:
    """prompt + answer, ending on the end-of-answer token, which is where the head reads.
    Too long: the prompt's start is dropped, never the answer's end."""
    return (list(prompt_ids) + end_answer(answer_ids, eos_id))[-max_length:]


@dataclass(frozen=True)
class RMPair:
    """A pair as the reward model trains on it: one prompt, two ended answers."""

    pair_id: str
    prompt: list[int]
    chosen_answer: list[int]
    rejected_answer: list[int]

    @property
    def chosen(self) -> list[int]:
        return self.prompt + self.chosen_answer

    @property
    def rejected(self) -> list[int]:
        return self.prompt + self.rejected_answer

    @property
    def lengths(self) -> tuple[int, int]:
        """Answer tokens of (chosen, rejected), end token not counted: the length calibration's x."""
        return len(self.chosen_answer) - 1, len(self.rejected_answer) - 1

    @property
    def length(self) -> int:  # what one pair costs in a batch (the engine's planner buckets by it)
        return len(self.prompt) + max(len(self.chosen_answer), len(self.rejected_answer))

    def width(self, shared: bool = True) -> int:
        """The planner's sort key; `pair_rewards` always runs the prompt once, so `shared` is moot."""
        return self.length

    @property
    def key(self) -> str:
        return self.pair_id + hashlib.sha256(repr((self.chosen, self.rejected)).encode()).hexdigest()[:16]


def _split(tokenizer, prompt, answer: str, max_length: int) -> tuple[list[int], list[int]]:
    """(prompt ids, ended answer ids); the answer is cut to fit as `encode` cuts it."""
    e = encode(tokenizer, prompt, answer, max_length)
    full = encode(tokenizer, prompt, answer, 10**9)
    return full.input_ids[: full.answer_start], end_answer(e.input_ids[e.answer_start:], tokenizer.eos_token_id)


def encode_text(tokenizer, prompt, answer: str, max_length: int) -> list[int]:
    """The ids the head reads for a text answer."""
    p, a = _split(tokenizer, prompt, answer, max_length)
    return reading_ids(p, a, tokenizer.eos_token_id, max_length)


def encode_rm_pairs(tokenizer, pairs: Sequence["Pair"], max_length: int) -> list[RMPair]:
    """Both answers share the prompt (cut at its start, for the longer answer, when too long)."""
    out = []
    for p in pairs:
        prompt, chosen = _split(tokenizer, p.prompt, p.chosen, max_length)
        _, rejected = _split(tokenizer, p.prompt, p.rejected, max_length)
        keep = max(max_length - max(len(chosen), len(rejected)), 0)
        out.append(RMPair(p.id, prompt[len(prompt) - keep:], chosen, rejected))
    return out


def right_pad(rows: Sequence[Sequence[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(ids [B, T], lengths [B]): real tokens first, so causal attention never sees the padding."""
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    for i, r in enumerate(rows):
        ids[i, : len(r)] = torch.tensor(list(r), dtype=torch.long)
    return ids, torch.tensor([len(r) for r in rows], dtype=torch.long)


def rewards(policy: "Policy", head: torch.nn.Linear, ids: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    """[B] fp32 rewards of right-padded rows (with grad when the caller allows it)."""
    with policy.use(ADAPTER), compute_context(policy.model, policy.dtype, policy.device.type):
        h = hidden_states(policy.model, ids, None)
    last = h[torch.arange(ids.shape[0], device=h.device), lengths.to(h.device) - 1]
    return head(last.float()).squeeze(-1)


def pair_rewards(policy: "Policy", head: torch.nn.Linear, items: Sequence[RMPair], pad_id: int) -> torch.Tensor:
    """[2B] rewards (chosen rows, then rejected), the shared prompt run once per pair.

    The prompt goes through the decoder once, left-padded, keeping its keys and values;
    both answers then run on top of that cache (with grad through it: the reward adapter
    acts on the prompt too). On HH-style data the prompt is over a third of a pair's
    tokens, which the usual concatenated chosen + rejected forward computes twice.
    """
    dev, b = policy.device, len(items)
    width = max(len(e.prompt) for e in items)
    p_ids = torch.full((b, width), pad_id, dtype=torch.long)
    p_mask = torch.zeros_like(p_ids)
    for i, e in enumerate(items):
        if e.prompt:
            p_ids[i, width - len(e.prompt):] = torch.tensor(e.prompt)
            p_mask[i, width - len(e.prompt):] = 1
    a_ids, a_len = right_pad([e.chosen_answer for e in items] + [e.rejected_answer for e in items], pad_id)
    a_mask = (torch.arange(a_ids.shape[1])[None] < a_len[:, None]).long()
    p_ids, p_mask, a_ids, a_mask = p_ids.to(dev), p_mask.to(dev), a_ids.to(dev), a_mask.to(dev)
    rows = torch.arange(b, device=dev).repeat(2)
    with policy.use(ADAPTER), compute_context(policy.model, policy.dtype, dev.type):
        stack = decoder(policy.model)
        cache = stack(input_ids=p_ids, attention_mask=p_mask, position_ids=(p_mask.cumsum(-1) - 1).clamp(min=0),
                      use_cache=True).past_key_values
        cache.batch_select_indices(rows)
        pos = p_mask.sum(-1)[rows, None] + torch.arange(a_ids.shape[1], device=dev)[None]
        h = stack(input_ids=a_ids, attention_mask=torch.cat([p_mask[rows], a_mask], 1), position_ids=pos,
                  past_key_values=cache, use_cache=True).last_hidden_state
    last = h[torch.arange(2 * b, device=dev), a_len.to(dev) - 1]
    return head(last.float()).squeeze(-1)


# -- the judge --------------------------------------------------------------------------------


class RewardModelJudge(ScoreJudge):
    """The learned reward model as a judge: a score per answer, P(first better) = σ(r₁ − r₂).

    Learned, hence gameable: PPO maximises it, rejection sampling keeps its picks, and its
    picks go through the data desk (length bias, shallow features) like any other pairs.
    """

    name = "reward_model"
    learned = True

    def __init__(self, policy: "Policy", head: torch.nn.Linear, max_length: int = 512, batch_size: int = 16,
                 meta: dict[str, Any] | None = None):
        self.policy, self.head = policy, head
        self.max_length, self.batch_size = max_length, batch_size
        self.meta = meta or {}
        self.eos_id = policy.tokenizer.eos_token_id
        self.pad_id = policy.tokenizer.pad_token_id if policy.tokenizer.pad_token_id is not None else self.eos_id

    # scoring

    @torch.no_grad()
    def score_ids(self, prompt_ids: Sequence[Sequence[int]], answer_ids: Sequence[Sequence[int]]) -> torch.Tensor:
        """One reward per answer (fp32, CPU, no grad), batched by length.

        `answer_ids` may end with the end-of-answer token or not (see `reading_ids`), so
        the sampler's `answer_ids` and its `scored_ids` give the same reward.
        """
        rows = [reading_ids(p, a, self.eos_id, self.max_length) for p, a in zip(prompt_ids, answer_ids)]
        return self._score_rows(rows)

    def _score_rows(self, rows: Sequence[Sequence[int]]) -> torch.Tensor:
        out = torch.zeros(len(rows), dtype=torch.float32)
        order = sorted(range(len(rows)), key=lambda i: len(rows[i]))
        model = self.policy.model
        was_training = model.training
        model.eval()
        try:
            with torch.no_grad():
                for s in range(0, len(order), self.batch_size):
                    idx = order[s:s + self.batch_size]
                    ids, lengths = right_pad([rows[i] for i in idx], self.pad_id)
                    out[idx] = rewards(self.policy, self.head, ids.to(self.policy.device), lengths).float().cpu()
        finally:
            model.train(was_training)
        return out

    def score(self, prompts, answers, **_: Any) -> list[float]:
        rows = [encode_text(self.policy.tokenizer, p, a, self.max_length) for p, a in zip(prompts, answers)]
        return self._score_rows(rows).tolist()

    def compare(self, prompts, first, second, **_: Any) -> list[float]:
        """Bradley–Terry: the probability the model was trained to express."""
        a = torch.tensor(self.score(prompts, first))
        b = torch.tensor(self.score(prompts, second))
        return torch.sigmoid(a - b).tolist()

    # saving and loading

    def save(self, folder: str | Path) -> Path:
        """The adapter (peft's files), the head (safetensors) and what it was trained on (JSON)."""
        from safetensors.torch import save_file

        folder = Path(folder)
        self.policy.save_adapter(folder, name=ADAPTER)
        save_file({k: v.detach().cpu().contiguous() for k, v in self.head.state_dict().items()}, str(folder / HEAD_FILE))
        (folder / META_FILE).write_text(json.dumps(self.meta, indent=2, default=str))
        return folder

    @classmethod
    def build(cls, policy: "Policy | None" = None, source: str | Path | None = None, **options: Any) -> "RewardModelJudge":
        """The judge-registry door: a saved reward model (a folder, or `models:/NAME@ALIAS` /
        `models:/NAME/VERSION`; by default the registered champion) on the run's policy."""
        if policy is None:
            raise JudgeError("the reward_model judge runs on the run's base model: build it with policy=...")
        return cls.load(policy, resolve_source(str(source or DEFAULT_SOURCE)), **options)

    @classmethod
    def load(cls, policy: "Policy", folder: str | Path, **options: Any) -> "RewardModelJudge":
        """Load onto `policy` as adapter "reward" (frozen): the same base, no second copy."""
        from safetensors.torch import load_file

        folder = Path(folder)
        missing = [f for f in (HEAD_FILE, META_FILE, "adapter_model.safetensors") if not (folder / f).exists()]
        if missing:
            raise JudgeError(f"{folder} is not a prefdesk reward model (missing {', '.join(missing)})")
        meta = json.loads((folder / META_FILE).read_text())
        fp = base_fingerprint(policy)
        if meta.get("base_fingerprint") not in (None, fp):
            raise JudgeError(f"the reward model in {folder} was trained on another base model "
                             f"({meta.get('base_name')}, fingerprint {meta.get('base_fingerprint')}); "
                             f"this run's base is {policy.base_name} ({fp})")
        state = load_file(str(folder / HEAD_FILE))
        head = torch.nn.Linear(state["weight"].shape[1], 1).to(policy.device)
        head.load_state_dict(state)
        head.requires_grad_(False)
        if ADAPTER in policy.adapters:
            policy.model.delete_adapter(ADAPTER)
        policy.load_adapter(ADAPTER, folder, trainable=False)
        options.setdefault("max_length", int(meta.get("max_length", 512)))
        return cls(policy, head, meta=meta, **options)


def resolve_source(source: str) -> Path:
    """A local folder as is; `models:/NAME@ALIAS` or `models:/NAME/VERSION` from the registry."""
    if not source.startswith("models:/"):
        path = Path(source)
        if not path.is_dir():
            raise JudgeError(f"reward model folder {path} does not exist")
        return path
    import mlflow.artifacts
    from mlflow.exceptions import MlflowException

    from prefdesk.tracking import client

    ref = source[len("models:/"):]
    name, alias = ref.split("@", 1) if "@" in ref else (ref.rsplit("/", 1)[0], None)
    try:
        c = client()
        mv = c.get_model_version_by_alias(name, alias) if alias else c.get_model_version(name, ref.rsplit("/", 1)[1])
    except (MlflowException, IndexError) as exc:
        raise JudgeError(f"no registered reward model {source} (train one with `prefdesk train --optimizer "
                         f"reward_model`, or set train.reward_model to a folder): {exc}") from exc
    return Path(mlflow.artifacts.download_artifacts(artifact_uri=mv.source))


# -- training ---------------------------------------------------------------------------------


def split_heldout(pairs: Sequence["Pair"], share: float, seed: int) -> tuple[list["Pair"], list["Pair"]]:
    """(train, held-out) by prompt, so no held-out prompt was seen in training; a prompt is
    held out by a seeded hash of its text, whatever order the pairs come in."""
    def rank(p: "Pair") -> str:
        return hashlib.sha256(f"{seed}|{[(m['role'], m['content']) for m in p.prompt]!r}".encode()).hexdigest()

    prompts = sorted({rank(p) for p in pairs})
    n_held = min(len(prompts) - 1, max(1, round(share * len(prompts))))
    if n_held < 1:
        raise ValueError(f"the reward model needs pairs on at least 2 distinct prompts (got {len(prompts)})")
    held = set(prompts[:n_held])
    return [p for p in pairs if rank(p) not in held], [p for p in pairs if rank(p) in held]


def fit_reward_model(ctx: RunContext, params: RewardModelParams, *,
                     metric_prefix: str = "rm/train/") -> tuple[RewardModelJudge, TrainResult]:
    """Train adapter "reward" and the head on `ctx.pairs`; returns the ready judge and the result.

    Works in `ctx.out_dir / "reward_model"` (the saved model) with its own checkpoint folder
    next to it, so a plugin that trains an RM and then a policy keeps the two stages'
    checkpoints apart; a finished RM of the same run is loaded, not retrained, so a run
    killed in a later stage resumes there. Step metrics go under `metric_prefix` (the
    plugin alone logs them as `train/...`; inside PPO or rejection sampling they must not
    mix with the policy's).
    """
    policy, run = ctx.policy, ctx.settings
    if not ctx.pairs:
        raise ValueError("the reward model needs pairs to train on")
    t_start = time.perf_counter()
    train_pairs, held_pairs = split_heldout(ctx.pairs, params.heldout_share, run.seed)
    tok = policy.tokenizer
    encoded, held = encode_rm_pairs(tok, train_pairs, run.max_length), encode_rm_pairs(tok, held_pairs, run.max_length)
    fingerprint = base_fingerprint(policy)
    key = run_key("reward_model", params, fingerprint, run.seed, [e.key for e in encoded + held])
    folder = ctx.out_dir / "reward_model"
    done = _finished(folder, key)
    if done is not None:
        log.info("reward model of this run already trained: loading %s", folder)
        judge = RewardModelJudge.load(policy, folder)
        return judge, _result(folder, judge.meta)

    # the adapter and the head, seeded apart from the global RNG
    if ADAPTER in policy.adapters:
        policy.model.delete_adapter(ADAPTER)
    policy.add_adapter(ADAPTER, trainable=True, seed=run.seed + 1)
    hidden = policy.model.get_base_model().config.hidden_size
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(run.seed + 2)
        head = torch.nn.Linear(hidden, 1).to(policy.device)
        torch.nn.init.normal_(head.weight, std=1 / math.sqrt(hidden + 1))
        torch.nn.init.zeros_(head.bias)
    adapter_weights = [p for n, p in policy.model.named_parameters() if f".{ADAPTER}." in n]
    weights = adapter_weights + list(head.parameters())
    optimizer = torch.optim.AdamW(weights, lr=params.learning_rate, weight_decay=params.weight_decay)
    plan = make_plan(encoded, params, run.seed)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, linear_schedule(params.warmup_steps, plan.total_steps))

    # resume: the RM's own checkpoint folder (a later stage's steps must not prune or overwrite these)
    ckpts = Checkpointer(ctx.out_dir / "reward_model.checkpoints")
    modules = {"model": policy.model, "head": head}  # every trainable weight: the policy's adapter is unchanged here
    start, sums, count = 0, defaultdict(float), 0
    ckpt = ckpts.latest(key) if run.resume else None
    if ckpt is not None:
        loaded = ckpts.load(ckpt, modules, {"rm": optimizer}, {"rm": scheduler})
        start, count = loaded["step"], loaded["state"]["count"]
        sums.update(loaded["state"]["sums"])
        log.info("resuming the reward model from %s (step %d of %d)", ckpt, start, plan.total_steps)

    from tqdm.auto import tqdm

    bar = tqdm(total=plan.total_steps, initial=start, desc="reward model", disable=not run.progress, leave=False)
    policy.model.train()
    for step in range(start, plan.total_steps):
        micro = plan.micro_batches(step, 0)
        acc: dict[str, float] = defaultdict(float)
        for idx in micro:
            r = pair_rewards(policy, head, [encoded[i] for i in idx], tok.pad_token_id)
            rc, rr = r[: len(idx)], r[len(idx):]
            loss = -F.logsigmoid(rc - rr).mean() + params.center_rewards * ((rc + rr) ** 2).mean()
            value = float(loss.detach())
            if not math.isfinite(value):
                raise TrainingDiverged(step + 1, "the reward model's loss", value)
            (loss / len(micro)).backward()
            for k, v in _step_figures(loss, rc, rr).items():
                acc[k] += v / len(micro)
        norm = float(torch.nn.utils.clip_grad_norm_(weights, params.max_grad_norm))
        if not math.isfinite(norm):
            raise TrainingDiverged(step + 1, "the reward model's gradient norm", norm)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        for k, v in acc.items():
            sums[k] += v
        count += 1
        ctx.tracker.log_metrics({metric_prefix + k: v for k, v in acc.items()}, step=step + 1)
        bar.set_postfix(loss=f"{acc['loss']:.4f}", acc=f"{acc['reward_accuracy']:.2f}")
        bar.update(1)
        saved = None
        if run.checkpoint_every and (step + 1) % run.checkpoint_every == 0 and step + 1 < plan.total_steps:
            saved = ckpts.save(step + 1, key, modules, {"rm": optimizer}, {"rm": scheduler},
                               {"count": count, "sums": dict(sums)})
        for cb in ctx.callbacks:  # as in the engine: a test's kill, a progress hook
            cb(StepInfo(step + 1, plan.total_steps, {metric_prefix + k: v for k, v in acc.items()}, saved))
    bar.close()
    policy.model.eval()
    for p in weights:  # from here on it is a judge: frozen, out of every later optimizer
        p.requires_grad_(False)

    judge = RewardModelJudge(policy, head, max_length=run.max_length)
    figures = heldout_figures(judge, held)
    judge.meta = {
        "run_key": key, "base_name": policy.base_name, "base_fingerprint": fingerprint, "hidden_size": hidden,
        "max_length": run.max_length, "steps": plan.total_steps, "train_pairs": len(encoded),
        "heldout_pairs": len(held), "figures": figures,
        "train": {metric_prefix + k: v / max(count, 1) for k, v in sums.items()},
        "params": params.model_dump(mode="json"), "seconds": time.perf_counter() - t_start,
    }
    judge.save(folder)
    ckpts.clear()
    ctx.tracker.log_metrics(figures)
    log.info("reward model: held-out pair accuracy %.3f on %d pairs, margin %.3f, reward %.3f ± %.3f, "
             "length correlation %+.3f (r² %.2f of the reward explained by answer length)",
             figures["rm/pair_accuracy"], len(held), figures["rm/margin"], figures["rm/reward_mean"],
             figures["rm/reward_std"], figures["rm/length_correlation"], figures["rm/length_correlation"] ** 2)
    return judge, _result(folder, judge.meta)


def _step_figures(loss: torch.Tensor, rc: torch.Tensor, rr: torch.Tensor) -> dict[str, float]:
    rc, rr = rc.detach(), rr.detach()
    return {"loss": float(loss.detach()), "reward_chosen": float(rc.mean()), "reward_rejected": float(rr.mean()),
            "reward_margin": float((rc - rr).mean()), "reward_accuracy": float((rc > rr).float().mean())}


def _finished(folder: Path, key: str) -> dict | None:
    try:
        meta = json.loads((folder / META_FILE).read_text())
    except (OSError, ValueError):
        return None
    return meta if meta.get("run_key") == key and (folder / HEAD_FILE).exists() else None


def _result(folder: Path, meta: dict) -> TrainResult:
    figures = meta["figures"]
    return TrainResult(
        artifacts={"reward_model": str(folder)},
        metrics={**meta["train"], **figures},
        steps=meta["steps"],
        gated={k: figures[k] for k in GATED},
        extra={"heldout_pairs": meta["heldout_pairs"], "train_pairs": meta["train_pairs"], "seconds": meta["seconds"]},
    )


# -- held-out figures -------------------------------------------------------------------------

GATED = ("rm/pair_accuracy", "rm/length_correlation")


def pearson(x: torch.Tensor, y: torch.Tensor) -> float:
    """Pearson r; 0 when either side does not vary (nothing is explained by a constant)."""
    x, y = x.double() - x.double().mean(), y.double() - y.double().mean()
    den = float(x.norm() * y.norm())
    return float((x * y).sum()) / den if den > 0 else 0.0


def heldout_figures(judge: RewardModelJudge, held: Sequence[RMPair]) -> dict[str, float]:
    r = judge._score_rows([e.chosen for e in held] + [e.rejected for e in held])
    rc, rr = r[: len(held)], r[len(held):]
    lengths = torch.tensor([e.lengths[0] for e in held] + [e.lengths[1] for e in held], dtype=torch.float64)
    return {
        "rm/pair_accuracy": float(((rc > rr).float() + 0.5 * (rc == rr).float()).mean()),
        "rm/reward_mean": float(r.mean()),
        "rm/reward_std": float(r.std()) if len(r) > 1 else 0.0,
        "rm/margin": float((rc - rr).mean()),
        "rm/length_correlation": pearson(r, lengths),
    }


# -- the optimizer plugin ---------------------------------------------------------------------


class RewardModelOptimizer:
    """Bradley–Terry reward model: a scalar head and a LoRA adapter of its own on the frozen base."""

    name = "reward_model"
    needs = frozenset({"pairs"})
    Params = RewardModelParams

    def fit(self, ctx: RunContext, params: RewardModelParams) -> TrainResult:
        return fit_reward_model(ctx, params, metric_prefix="train/")[1]


# -- the registry -----------------------------------------------------------------------------


def reward_gates(min_accuracy: float = 0.6, max_length_correlation: float = 0.5) -> dict[str, Gate]:
    """What a reward model must show before it becomes the default judge (`champion`).

    Pair accuracy: it learnt the preference on prompts it never saw (0.5 is chance).
    Length correlation, both ways: a judge whose reward is mostly answer length teaches
    PPO and rejection sampling to pad (or to cut), whatever its accuracy.
    """
    return {
        "rm_pair_accuracy": Gate(metric="rm/pair_accuracy", op=">=", bound=min_accuracy),
        "rm_length_bias": Gate(metric="rm/length_correlation", op="<=", bound=max_length_correlation),
        "rm_brevity_bias": Gate(metric="rm/length_correlation", op=">=", bound=-max_length_correlation),
    }


def register_reward_model(run_id: str, folder: str | Path, *, model_name: str = REGISTERED_NAME,
                          gates: dict[str, Gate] | None = None, promote: bool = True) -> "Registration":
    """Log the reward model to the run and register it as its own MLflow model.

    Every version gets `challenger`; `champion` (what `models:/prefdesk-reward@champion`
    and the `reward_model` judge load by default) only when its held-out figures pass
    `reward_gates()`. The verdicts are kept as version tags, as for the policy.
    """
    from prefdesk.gates import evaluate_gates
    from prefdesk.registry import register_artifact
    from prefdesk.tracking import Tracker

    meta = json.loads((Path(folder) / META_FILE).read_text())
    Tracker(run_id).log_artifact(str(folder), "reward_model")
    report = evaluate_gates(gates or reward_gates(), meta["figures"])
    return register_artifact(run_id, "reward_model", model_name, report, promote,
                             description="prefdesk reward models (LoRA adapter + scalar head on the base); `champion` "
                                         "passed the held-out accuracy and length-calibration gates.")

