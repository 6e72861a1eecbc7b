"""Time per PPO step (rollout + update): prefdesk's rm_ppo against TRL's PPOTrainer, one run.

    python benchmarks/ppo_vs_trl.py --threads 1 --trl-path /tmp/trl-1.12.0   # all three (~27 min, see below)
    python benchmarks/ppo_vs_trl.py                                           # prefdesk and the plain loop only

Why a path: the TRL this project pins (trl>=1.0,<2; 1.16.0 installed) no longer has a
PPOTrainer. It moved to `trl.experimental.ppo` (PR #4482) and was then deleted outright
(PR #7020, "Remove PPOTrainer"); 1.15.0 lacks it too, 1.12.0 is the newest release checked
that still ships it. The benchmark therefore loads TRL 1.12.0's `trl.experimental.ppo`
from an unpacked wheel, without touching the project's environment:

    pip download trl==1.12.0 --no-deps -d /tmp/trl-whl
    python -m zipfile -e /tmp/trl-whl/trl-1.12.0-py3-none-any.whl /tmp/trl-1.12.0

Without `--trl-path` (or when that TRL fails to run) the comparison is against a plain
`model.generate` + loss loop instead, which is always measured too: generate, score the
reference, the reward and the values, then PPO epochs with full-vocabulary logits, the
same work as a step of either trainer, written the obvious way.

Same for every side: SmolLM2-135M-Instruct in the dtype prefdesk picks for this CPU, LoRA
r=16 alpha=32 on all linear layers for the policy, the reference = the policy with the
adapter off, `--batch` prompts of the embedded pairs per step, one answer each, sampling at
temperature 1 for up to `--new-tokens` tokens (stopping at the end-of-answer token),
`--ppo-epochs` passes in one minibatch, lr 1e-5, a fixed KL coefficient 0.05, an untrained
reward model (timing only). Where the designs differ, each side runs its own design:
TRL's reward and value models are full copies of the base (`AutoModelForSequenceClassification`)
and its value model trains every weight; prefdesk's reward and value models are LoRA
adapters + linear heads on the one shared base. The first step of each side is a warm-up
and is not counted. Steps whose answers are longer cost more, so the mean answer length of
each side is printed next to its time.

Measured (2026-12-01, the 2-core CPU shared with other agents' jobs, load average 6-12,
`--threads 1`, defaults otherwise: 4 prompts, 32 new tokens, 4 PPO epochs, fp32):
prefdesk 73.4 s per step (answers 32.0 tokens), plain loop 81.0 s (27.9 tokens), TRL 1.12.0
81.6 s (no answer ended early either) -> TRL / prefdesk 1.11x, plain / prefdesk 1.10x.
The step is compute-bound on the same forward and backward passes on every side; prefdesk
saves the full-vocabulary logits (LM head on answer tokens only) and TRL's full-weight
value model, and spends one extra forward+backward per minibatch on its own value adapter
(the cost of keeping the value loss out of the policy's weights; see plugins/rm_ppo.py).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

LR, KL_COEF, SEED = 1e-5, 0.05, 0


def prompts(n: int) -> list[list[dict]]:
    from prefdesk.config import EMBEDDED_PAIRS
    from prefdesk.readers import read_pairs

    seen, out = set(), []
    for p in read_pairs([EMBEDDED_PAIRS]).pairs:
        key = repr(p.prompt)
        if key not in seen:
            seen.add(key)
            out.append(p.prompt)
        if len(out) == n:
            break
    return out


def lora():
    from peft import LoraConfig

    return LoraConfig(r=16, lora_alpha=32, lora_dropout=0.0, target_modules="all-linear", task_type="CAUSAL_LM")


# -- prefdesk -----------------------------------------------------------------------------------


def run_prefdesk(rows, args) -> dict:
    from prefdesk.plugins.reward_model import ADAPTER, RewardModelJudge
    from prefdesk.plugins.rm_ppo import RMPPOOptimizer
    from prefdesk.config import ModelSettings
    from prefdesk.context import RunContext, RunSettings
    from prefdesk.models import build_policy
    from prefdesk.tracking import Tracker

    policy = build_policy(ModelSettings(), seed=SEED)
    policy.add_adapter(ADAPTER, trainable=False, seed=SEED + 1)
    head = torch.nn.Linear(policy.model.get_base_model().config.hidden_size, 1)
    judge = RewardModelJudge(policy, head.requires_grad_(False))
    marks, lengths = [], []

    def clock(info):
        marks.append(time.perf_counter())
        lengths.append(info.metrics["ppo/response_length"])

    params = RMPPOOptimizer.Params(max_steps=args.steps + 1, batch_size=args.batch, samples_per_prompt=1,
                                   minibatch_size=args.batch, ppo_epochs=args.ppo_epochs, learning_rate=LR,
                                   kl_control="fixed", kl_coef=KL_COEF, temperature=1.0)
    with tempfile.TemporaryDirectory() as tmp:
        ctx = RunContext(policy=policy, settings=RunSettings(output_dir=Path(tmp), seed=SEED, max_new_tokens=args.new_tokens,
                                                             progress=False), tracker=Tracker(), prompts=rows, judge=judge,
                         callbacks=[clock])
        t0 = time.perf_counter()
        RMPPOOptimizer().fit(ctx, params)
    steps = [b - a for a, b in zip([t0] + marks, marks)]
    return {"steps": steps[1:], "lengths": lengths[1:], "dtype": str(policy.dtype)}


# -- TRL ------------------------------------------------------------------------------------------


def run_trl(rows, args, dtype) -> dict:
    sys.path.insert(0, str(args.trl_path))
    import trl
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, TrainerCallback
    from trl.experimental.ppo import PPOConfig, PPOTrainer

    from prefdesk.engine.tokenize import encode_prompt
    from prefdesk.models import ensure_embedded, load_tokenizer

    path = ensure_embedded()
    tok = load_tokenizer("smollm2-135m-instruct")
    # TRL finds padding by the pad id; SmolLM2's pad is its end-of-turn token, which also sits
    # inside every prompt, so TRL gets the (unused, already in the vocabulary) <|endoftext|>.
    tok.pad_token, tok.padding_side = "<|endoftext|>", "left"
    data = Dataset.from_list([{"input_ids": encode_prompt(tok, p, 512)} for p in rows] * (args.steps + 1))
    policy = AutoModelForCausalLM.from_pretrained(path, dtype=dtype)
    value = AutoModelForSequenceClassification.from_pretrained(path, num_labels=1, dtype=dtype)
    reward = AutoModelForSequenceClassification.from_pretrained(path, num_labels=1, dtype=dtype)
    for m in (policy, value, reward):
        m.config.pad_token_id = tok.pad_token_id
    marks = []

    class Clock(TrainerCallback):
        def on_step_end(self, args_, state, control, **kw):
            marks.append(time.perf_counter())

    with tempfile.TemporaryDirectory() as out:
        cfg = PPOConfig(output_dir=out, per_device_train_batch_size=args.batch, gradient_accumulation_steps=1,
                        num_mini_batches=1, num_ppo_epochs=args.ppo_epochs, total_episodes=args.batch * (args.steps + 1),
                        local_rollout_forward_batch_size=args.batch, response_length=args.new_tokens, stop_token="eos",
                        temperature=1.0, kl_coef=KL_COEF, learning_rate=LR, num_sample_generations=0, use_cpu=True,
                        bf16=dtype == torch.bfloat16, report_to=[], save_strategy="no", seed=SEED, disable_tqdm=True,
                        logging_steps=1)
        trainer = PPOTrainer(args=cfg, processing_class=tok, model=policy, ref_model=None, reward_model=reward,
                             value_model=value, train_dataset=data, eval_dataset=data, peft_config=lora(),
                             callbacks=[Clock()])
        t0 = time.perf_counter()
        trainer.train()
    steps = [b - a for a, b in zip([t0] + marks, marks)]
    # TRL logs the number of end tokens, not lengths; the tokens it generated are not returned.
    return {"steps": steps[1:], "lengths": [], "version": trl.__version__}


# -- the plain loop ---------------------------------------------------------------------------------


def run_plain(rows, args, dtype) -> dict:
    """model.generate + full-logit losses: the same PPO step written without an engine."""
    from peft import get_peft_model
    from transformers import AutoModelForCausalLM

    from prefdesk.engine.tokenize import encode_prompt
    from prefdesk.models import ensure_embedded, load_tokenizer

    path = ensure_embedded()
    tok = load_tokenizer("smollm2-135m-instruct")
    torch.manual_seed(SEED)
    model = get_peft_model(AutoModelForCausalLM.from_pretrained(path, dtype=dtype), lora())
    model.add_adapter("value", lora())
    model.add_adapter("reward", lora())
    hidden = model.config.hidden_size
    v_head, r_head = torch.nn.Linear(hidden, 1), torch.nn.Linear(hidden, 1)
    pol_w = [p for n, p in model.named_parameters() if ".default." in n]
    val_w = [p for n, p in model.named_parameters() if ".value." in n] + list(v_head.parameters())
    for n, p in model.named_parameters():
        p.requires_grad_(".default." in n or ".value." in n)
    opt = torch.optim.AdamW(pol_w + val_w, lr=LR)
    enc = [encode_prompt(tok, p, 512) for p in rows]
    width = max(len(e) for e in enc)
    ids = torch.tensor([[tok.pad_token_id] * (width - len(e)) + e for e in enc])
    attn = (torch.arange(width)[None] >= torch.tensor([width - len(e) for e in enc])[:, None]).long()
    steps, lengths = [], []

    def logps_and_hidden(seq, mask, adapter):
        model.set_adapter(adapter)
        out = model(input_ids=seq, attention_mask=mask, output_hidden_states=True)
        return out.logits[:, width - 1:-1].float().log_softmax(-1), out.hidden_states[-1][:, width - 1:-1].float()

    for step in range(args.steps + 1):
        t = time.perf_counter()
        model.eval()
        with torch.no_grad():
            model.set_adapter("default")
            seq = model.generate(input_ids=ids, attention_mask=attn, do_sample=True, temperature=1.0, top_k=0,
                                 max_new_tokens=args.new_tokens, eos_token_id=tok.eos_token_id,
                                 pad_token_id=tok.pad_token_id)
            resp = seq[:, width:]
            done = (resp == tok.eos_token_id).cumsum(1)
            rmask = ((done == 0) | ((done == 1) & (resp == tok.eos_token_id))).float()
            mask = torch.cat([attn, rmask.long()], 1)
            lp, _ = logps_and_hidden(seq, mask, "default")
            old = lp.gather(-1, resp[..., None]).squeeze(-1)
            with model.disable_adapter():
                ref = model(input_ids=seq, attention_mask=mask).logits[:, width - 1:-1].float().log_softmax(-1)
            ref = ref.gather(-1, resp[..., None]).squeeze(-1)
            _, hr = logps_and_hidden(seq, mask, "reward")
            last = rmask.sum(1).long() - 1
            score = r_head(hr[torch.arange(len(rows)), last]).squeeze(-1)
            _, hv = logps_and_hidden(seq, mask, "value")
            vals = v_head(hv).squeeze(-1) * rmask
            rewards = -KL_COEF * (old - ref) * rmask
            rewards[torch.arange(len(rows)), last] += score
            from prefdesk.plugins.rm_ppo import gae, whiten

            adv, ret = gae(rewards, vals, rmask, 1.0, 0.95)
            adv = whiten(adv, rmask)
        for _ in range(args.ppo_epochs):
            lp, _ = logps_and_hidden(seq, mask, "default")
            new = lp.gather(-1, resp[..., None]).squeeze(-1)
            ratio = (new - old).exp()
            pg = torch.max(-adv * ratio, -adv * ratio.clamp(0.8, 1.2))
            _, hv = logps_and_hidden(seq, mask, "value")
            vpred = v_head(hv).squeeze(-1)
            vf = 0.5 * torch.max((vpred - ret) ** 2, (vals + (vpred - vals).clamp(-0.2, 0.2) - ret) ** 2)
            loss = ((pg + 0.1 * vf) * rmask).sum() / rmask.sum()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(pol_w + val_w, 1.0)
            opt.step()
            opt.zero_grad(set_to_none=True)
        model.set_adapter("default")
        steps.append(time.perf_counter() - t)
        lengths.append(float((rmask.sum(1) - (done[:, -1] > 0).float()).mean()))
    return {"steps": steps[1:], "lengths": lengths[1:]}


def summary(name: str, r: dict) -> str:
    mean = statistics.mean(r["steps"])
    length = f", mean answer {statistics.mean(r['lengths']):.1f} tokens" if r["lengths"] else ""
    return f"{name}: {mean:.2f} s per PPO step (steps: {', '.join(f'{s:.2f}' for s in r['steps'])}){length}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch", type=int, default=4, help="prompts per rollout (one answer each)")
    ap.add_argument("--new-tokens", type=int, default=32)
    ap.add_argument("--ppo-epochs", type=int, default=4)
    ap.add_argument("--steps", type=int, default=3, help="timed steps per side (after one warm-up step)")
    ap.add_argument("--trl-path", type=Path, help="folder with an unpacked TRL that has trl.experimental.ppo")
    ap.add_argument("--threads", type=int, help="torch threads (default: torch's); 1 on a CPU shared with other "
                    "work, where thread-pool barriers otherwise dominate")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    import logging
    import warnings

    warnings.filterwarnings("ignore")
    logging.disable(logging.WARNING)
    rows = prompts(args.batch)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; {args.batch} prompts x 1 answer, "
          f"<= {args.new_tokens} new tokens, {args.ppo_epochs} PPO epochs, {args.steps} timed steps per side")
    ours = run_prefdesk(rows, args)
    dtype = getattr(torch, ours["dtype"].replace("torch.", ""))
    print(summary(f"prefdesk rm_ppo ({ours['dtype']})", ours))
    plain = run_plain(rows, args, dtype)
    print(summary("plain generate + loss loop", plain))
    print(f"  ratio plain / prefdesk: {statistics.mean(plain['steps']) / statistics.mean(ours['steps']):.2f}x")
    if args.trl_path is None:
        print("TRL: not run. The installed TRL has no PPOTrainer (removed in PR #7020; see this file's docstring "
              "for how to point --trl-path at TRL 1.12.0's).")
        return
    try:
        theirs = run_trl(rows, args, dtype)
    except Exception as exc:  # an older TRL against this transformers: say what broke, keep the rest
        print(f"TRL from {args.trl_path} failed: {type(exc).__name__}: {exc}")
        return
    print(summary(f"TRL {theirs['version']} experimental PPOTrainer", theirs))
    print(f"  ratio TRL / prefdesk: {statistics.mean(theirs['steps']) / statistics.mean(ours['steps']):.2f}x")


if __name__ == "__main__":
    main()
