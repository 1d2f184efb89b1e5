"""On-policy training from the model's own samples: GRPO with unit-test rewards, and
on-policy distillation (per-token reverse KL to a teacher as the advantage).

    rl(RLConfig(out_dir=..., init="runs/sft", max_steps=50))

Each step: draw `tasks_per_step` train-split tasks, sample `group_size` chat completions
of each with the inference engine (one batched `Engine.generate`), then
  - grpo: score them in the sandbox (dsv4.tasks.reward: all hidden tests pass = 1, plus
    R1's format reward for `<think>..</think>` + a code block), group-normalised
    advantages, and the clipped (clip-higher) surrogate with optional k3 KL to the frozen
    init policy, DAPO token-level aggregation and truncated samples masked (grpo.py);
    groups whose rewards are all equal carry no signal and are dropped before the update;
    with `sample_rounds` > 1 (DAPO dynamic sampling) more tasks are sampled in place of
    those, and `task_sampling="learnability"` draws more tasks from the families whose
    groups keep a reward spread (dsv4.train.curriculum);
  - distill: the teacher scores the student's tokens; `onpolicy_distill_loss`.
`updates_per_batch` (GRPO's mu) optimizer updates per sampled batch, each over
`minibatches` slices of it; with mu = 1 and one minibatch the importance ratio is 1 at the
step and the clip is only a guard (on-policy GRPO); for mu > 1 the old-policy logprobs are
the ones taken before the first update, so the clip really bounds how far the later updates
move from the policy that sampled (more learning per costly rollout: sampling is most of a
step). Logs reward, pass rate, length, entropy and KL per step (and each update's loss, ratio
and clip fraction under "updates") to DIR/metrics.jsonl; atomic checkpoints with optimizer
state, the task stream's position and RNG states, so that `resume` continues the run.
"""

from __future__ import annotations

import math
import os
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from dsv4.errors import UserError
from dsv4.tasks.generate import TRAIN_PARTS
from dsv4.train import checkpoint as ck
from dsv4.train.config import TrainConfig
from dsv4.train.grpo import GRPOConfig, group_advantages, grpo_loss, token_entropy, token_logprobs


@dataclass
class RLConfig(TrainConfig):
    init: str = ""  # the checkpoint to start from (SFT output); also the KL reference
    objective: str = "grpo"  # grpo | distill (on-policy distillation; needs `teacher`)
    teacher: str = ""
    group_size: int = 8  # G samples per task
    tasks_per_step: int = 4
    max_new_tokens: int = 128
    temperature: float = 1.0
    think: bool = True  # <think> format (and its format reward)
    format_weight: float = 0.1
    partial_credit: bool = False
    difficulty_min: int = 1
    difficulty_max: int = 4
    families: list | None = None  # restrict the task generator to these families (None: all)
    # "rl": only RL's half of the train split (dsv4.tasks.part_of), the instances an SFT run on
    # `sft_tasks(part="sft")` never showed; "": the whole train split
    train_part: str = ""
    eps_low: float = 0.2
    eps_high: float = 0.28
    kl_coef: float = 0.0
    std_norm: bool = True
    loss_agg: str = "token-mean"
    mask_truncated: bool = True
    sandbox_workers: int = 0  # 0 -> cpu count
    sandbox_batch: int = 1  # completions per sandboxed interpreter (dsv4.tasks.reward.score_batch)
    # GRPO only, DAPO dynamic sampling: up to this many sampling rounds per step, keeping only groups with
    # reward variance, until tasks_per_step of them are in hand (1: plain GRPO, no filter)
    sample_rounds: int = 1
    # GRPO's mu (DeepSeekMath Alg. 1): optimizer updates per sampled batch; the old-policy
    # logprobs are taken once before the first, so the clipped ratio bounds updates 2..mu
    updates_per_batch: int = 1
    minibatches: int = 1  # each update steps once per slice of the batch (1: the whole batch)
    # GRPO task sampling: "uniform" over families, or "learnability" (more tasks from the families
    # whose groups still have reward variance: dsv4.train.curriculum)
    task_sampling: str = "uniform"
    # post-training defaults: a small lr on a trained model, short warmup, constant schedule
    lr: float = 3e-4
    muon_lr: float = 3e-3
    warmup_steps: int = 0
    decay: str = "constant"
    save_every: int = 20

    def validate(self) -> None:
        super().validate()
        if not self.init:
            raise UserError("give --init CKPT (the model to train)")
        if self.objective not in ("grpo", "distill"):
            raise UserError("objective must be grpo or distill")
        if self.objective == "distill" and not self.teacher:
            raise UserError("on-policy distillation needs --teacher")
        if self.group_size < 1 or self.tasks_per_step < 1 or self.max_new_tokens < 1:
            raise UserError("--group-size, --tasks-per-step and --max-new-tokens must be >= 1")
        if self.sample_rounds < 1 or self.sandbox_batch < 1:
            raise UserError("--sample-rounds and --sandbox-batch must be >= 1")
        if self.updates_per_batch < 1 or self.minibatches < 1:
            raise UserError("--updates-per-batch and --minibatches must be >= 1")
        if self.train_part not in ("", *TRAIN_PARTS):
            raise UserError(f"--train-part must be one of {', '.join(TRAIN_PARTS)} "
                            "or empty (the whole train split)")
        if self.task_sampling not in ("uniform", "learnability"):
            raise UserError("--task-sampling must be uniform or learnability")
        if self.objective == "grpo" and self.std_norm and self.group_size < 2:
            raise UserError("GRPO needs --group-size >= 2")
        GRPOConfig(self.eps_low, self.eps_high, self.kl_coef, self.std_norm, self.loss_agg)  # checks


def _grpo_config(cfg: RLConfig) -> GRPOConfig:
    return GRPOConfig(cfg.eps_low, cfg.eps_high, cfg.kl_coef, cfg.std_norm, cfg.loss_agg,
                      max_tokens=cfg.max_new_tokens, mask_truncated=cfg.mask_truncated)


def prompt_ids(tok, task, think: bool) -> list[int]:
    """The chat prompt of a task, ending with the assistant marker (no system prompt: short)."""
    from dsv4.tasks.render import chat_prompt_messages

    return tok.encode_chat(chat_prompt_messages(task, None, think), add_generation_prompt=True)


def fitting_tasks(tok, cfg: RLConfig, max_len: int, families: list | None):
    """(task, prompt ids) of the train split in its fixed order, for the prompts that leave
    `max_new_tokens` of room within `max_len`."""
    from dsv4.tasks import iter_tasks

    for task in iter_tasks("train", seed=cfg.seed + 1, difficulty=(cfg.difficulty_min, cfg.difficulty_max),
                           families=families, part=cfg.train_part or None):
        ids = prompt_ids(tok, task, cfg.think)
        if len(ids) + cfg.max_new_tokens < max_len:
            yield task, ids


class TaskStream:
    """Train-split tasks whose prompt leaves room to answer, in a fixed order; resumable by count."""

    def __init__(self, tok, cfg: RLConfig, max_len: int, consumed: int = 0):
        self._it = fitting_tasks(tok, cfg, max_len, list(cfg.families) if cfg.families else None)
        self.consumed = 0
        for _ in range(consumed):
            self.next()

    def next(self):
        item = next(self._it, None)
        if item is None:
            raise UserError("the task stream ran out; lower the difficulty filter or the step count")
        self.consumed += 1
        return item

    def observe(self, family: str, has_signal: bool) -> None:
        """Uniform sampling ignores feedback (see curriculum.LearnableStream)."""

    def state_dict(self) -> dict | None:
        return None


def task_stream(tok, cfg: RLConfig, max_len: int, state: dict | None):
    """The RL task stream of `cfg.task_sampling`, at the position a checkpoint's `state` saved.
    Learnability weighting needs rewards, so on-policy distillation always streams uniformly."""
    from dsv4.train.curriculum import LearnableStream

    if cfg.task_sampling == "learnability" and cfg.objective == "grpo":
        return LearnableStream(tok, cfg, max_len, (state or {}).get("stream"))
    return TaskStream(tok, cfg, max_len, int((state or {}).get("tasks_consumed", 0)))


def sample_groups(model, tok, prompts: list[list[int]], cfg: RLConfig, seed: int) -> list:
    """G completions per prompt from the engine, as one batch: a list of engine Outputs."""
    from dsv4.data import specials as S
    from dsv4.infer.engine import Engine
    from dsv4.infer.sampling import SamplingParams

    G = cfg.group_size
    flat = [p for p in prompts for _ in range(G)]
    engine = Engine(model, tok, max_batch=len(flat), autocast="prefill")
    params = [SamplingParams(max_tokens=cfg.max_new_tokens, temperature=cfg.temperature, top_p=1.0,
                             seed=seed * 100003 + i, stop_token_ids=[tok.token_id(S.END)])
              for i in range(len(flat))]
    try:
        return engine.generate(flat, params)
    finally:
        model.train()


def pack_completions(prompts: list[list[int]], completions: list[list[int]], pad: int):
    """(inputs, targets, completion mask) [B, L-1]: prompt + completion rows, right-padded;
    mask 1 on the positions whose target is a completion token."""
    rows = [p + c for p, c in zip(prompts, completions, strict=True)]
    L = max(len(r) for r in rows)
    ids = torch.full((len(rows), L), pad, dtype=torch.long)
    mask = torch.zeros((len(rows), L), dtype=torch.float32)
    for i, (p, r) in enumerate(zip(prompts, rows, strict=True)):
        ids[i, :len(r)] = torch.tensor(r)
        mask[i, len(p):len(r)] = 1.0
    return ids[:, :-1], ids[:, 1:], mask[:, 1:]


def policy_logprobs(model, x, y, autocast: bool, with_entropy: bool = False):
    with torch.autocast(x.device.type, dtype=torch.bfloat16, enabled=autocast):
        logits = model(x)
    logp = token_logprobs(logits, y)
    return (logp, token_entropy(logits.detach())) if with_entropy else (logp, None)


def update_step(model, optimizers: list, cfg: RLConfig, prompts: list, comps: list, pad_id: int, device,
                advantages=None, truncated=None, ref=None, teacher=None) -> dict:
    """`cfg.updates_per_batch` optimizer updates (x `cfg.minibatches` steps each) on sampled
    completions: the GRPO loss (with `advantages` [B]) or, with a `teacher`, the on-policy
    distillation loss. The old-policy (and reference / teacher) logprobs are computed once,
    before the first update. Returns the last update's stats, plus `updates`: a list of every
    update's stats (averaged over its minibatches)."""
    x, y, mask = pack_completions(prompts, comps, pad_id)
    x, y, mask = x.to(device), y.to(device), mask.to(device)
    with torch.no_grad():
        old_logp, _ = policy_logprobs(model, x, y, cfg.autocast)
        ref_logp = policy_logprobs(ref, x, y, cfg.autocast)[0] if ref is not None else None
        t_logp = policy_logprobs(teacher, x, y, cfg.autocast)[0] if teacher is not None else None
    adv = advantages.to(device) if teacher is None else None
    trunc = truncated.to(device) if truncated is not None else None
    slices = [s for s in torch.arange(len(prompts)).tensor_split(min(cfg.minibatches, len(prompts)))
              if len(s)]

    def pick(t, idx):  # one slice: the whole batch as is (mu = 1 is then exactly the old step)
        return t if t is None or len(slices) == 1 else t[idx]

    updates = []
    for _ in range(cfg.updates_per_batch):
        parts = []
        for idx in slices:
            parts.append(_one_update(model, optimizers, cfg, *(pick(t, idx) for t in (
                x, y, mask, old_logp, adv, trunc, ref_logp, t_logp))))
        updates.append({k: float(np.mean([p[k] for p in parts])) for k in parts[0]})
    return {**updates[-1], "updates": updates} if len(updates) > 1 else updates[0]


def _one_update(model, optimizers, cfg: RLConfig, x, y, mask, old_logp, adv, trunc, ref_logp, t_logp) -> dict:
    """One optimizer step of the GRPO (or, with teacher logprobs `t_logp`, distillation) loss."""
    from dsv4.train.distill_loss import onpolicy_distill_loss
    from dsv4.train.pretrain import apply_gradients

    logp, ent = policy_logprobs(model, x, y, cfg.autocast, with_entropy=True)
    if t_logp is None:
        loss, stats = grpo_loss(logp, old_logp, adv, mask, _grpo_config(cfg), ref_logp, trunc)
    else:
        loss, stats = onpolicy_distill_loss(logp, old_logp, t_logp, mask)
    loss.backward()
    gnorm = apply_gradients(model, optimizers, cfg.grad_clip)
    return {"loss": loss.item(), "entropy": float((ent * mask).sum() / mask.sum().clamp(min=1)),
            "grad_norm": float(gnorm),
            **{k: v for k, v in stats.items() if isinstance(v, (int, float))}}


def _load(path, device):
    from dsv4.model.load import load_model

    return load_model(path, device=device)


def _completions(outs, end_id: int) -> list[list[int]]:
    # The stop token closes the turn: it is part of what the policy chose.
    return [o.token_ids + ([end_id] if o.finish_reason == "stop" else []) for o in outs]


def signal_groups(rewards: torch.Tensor, group_size: int, eps: float = 1e-8) -> list[int]:
    """Indices of the groups whose rewards are not all equal (the ones with a GRPO signal)."""
    r = rewards.float().reshape(-1, group_size)
    return ((r.max(dim=1).values - r.min(dim=1).values) > eps).nonzero().flatten().tolist()


def _grpo_rollouts(model, tok, stream, cfg: RLConfig, rcfg, pool, end_id: int, step: int):
    """Sample and score one step's groups: (prompts, completions, truncated, rewards, stats).

    Plain GRPO samples `tasks_per_step` tasks once. With DAPO's dynamic sampling
    (`sample_rounds` > 1) a group whose G rewards are all equal (all pass or all fail) has
    zero advantage and adds nothing but noise to the token mean, so it is dropped and more
    tasks are sampled, up to `sample_rounds` rounds in all, until `tasks_per_step` groups
    with reward variance are in hand (the step then updates on those only). The stats
    (reward, pass rate) are over everything sampled, so they still track the policy.
    """
    from dsv4.tasks.reward import score_batch

    G = cfg.group_size
    kept_prompts, kept_comps, kept_trunc, kept_rewards = [], [], [], []
    all_res, all_len, all_trunc, rounds = [], [], [], 0
    while rounds < max(1, cfg.sample_rounds):
        need = cfg.tasks_per_step - len(kept_prompts)
        batch = [stream.next() for _ in range(need)]
        prompts = [p for _, p in batch]
        outs = sample_groups(model, tok, prompts, cfg, seed=cfg.seed * 7919 + step + 1_000_003 * rounds)
        rounds += 1
        comps = _completions(outs, end_id)
        res = score_batch([t for t, _ in batch for _ in range(G)], [tok.decode(c) for c in comps], rcfg,
                          pool=pool, batch=cfg.sandbox_batch)
        rewards = torch.tensor([r.reward for r in res])
        trunc = [o.finish_reason == "length" for o in outs]
        all_res += res
        all_len += [len(c) for c in comps]
        all_trunc += trunc
        signal = [False] * len(prompts)
        for g in signal_groups(rewards, G):
            signal[g] = True
        # plain GRPO keeps every group (zero-advantage ones are dropped from the loss anyway)
        groups = [g for g in range(len(prompts)) if signal[g] or cfg.sample_rounds == 1]
        for g in range(len(prompts)):
            stream.observe(batch[g][0].family, bool(signal[g]))
        for g in groups:
            sl = slice(g * G, (g + 1) * G)
            kept_prompts.append(prompts[g])
            kept_comps += comps[sl]
            kept_trunc += trunc[sl]
            kept_rewards.append(rewards[sl])
        if len(kept_prompts) >= cfg.tasks_per_step:
            break
    rewards = torch.cat(kept_rewards) if kept_rewards else torch.zeros(0)
    stats = {"length": float(np.mean(all_len)), "truncated": float(np.mean(all_trunc)),
             "reward": float(np.mean([r.reward for r in all_res])),
             "pass_rate": float(np.mean([r.passed for r in all_res])),
             "format_rate": float(np.mean([r.format_ok for r in all_res])),
             "groups_with_signal": len(signal_groups(rewards, G)) if len(rewards) else 0,
             "groups_sampled": len(all_res) // G, "sample_rounds": rounds}
    return kept_prompts, kept_comps, torch.tensor(kept_trunc, dtype=torch.bool), rewards, stats


def rl(cfg: RLConfig) -> dict:
    """Run (or resume) GRPO / on-policy distillation; returns a summary dict."""
    from dsv4.data import specials as S
    from dsv4.infer.load import load_tokenizer
    from dsv4.sandbox import SandboxPool
    from dsv4.tasks.reward import RewardConfig
    from dsv4.train.metrics import MetricsLog
    from dsv4.train.optim import build_optimizers
    from dsv4.train.progress import TrainProgress
    from dsv4.train.schedule import lr_multiplier, run_progress, set_lr

    cfg.validate()
    from dsv4.train.pretrain import _resolve_run

    cfg, latest, state = _resolve_run(cfg)
    out = Path(cfg.out_dir)
    torch.set_num_threads(cfg.threads or os.cpu_count() or 1)
    cuda = cfg.device == "cuda" or (cfg.device == "auto" and torch.cuda.is_available())
    device = torch.device("cuda" if cuda else "cpu")
    from dsv4.train.sft import open_init

    init, tok, data_dir = open_init(cfg.init)  # data_dir: passed on, for distillation's corpus
    torch.manual_seed(cfg.seed)
    model = _load(latest or init, device).train()
    ref = _load(init, device).eval() if cfg.objective == "grpo" and cfg.kl_coef > 0 else None
    teacher = _load(cfg.teacher, device).eval() if cfg.objective == "distill" else None
    if teacher is not None and load_tokenizer(cfg.teacher).fingerprint != tok.fingerprint:
        raise UserError("the teacher and the student must share a tokenizer (train both on one data dir)")
    for m in (ref, teacher):
        if m is not None:
            m.requires_grad_(False)
    optimizers = build_optimizers(model, cfg)
    step, elapsed_before = 0, 0.0
    if state is not None:
        ck.load_optimizers(optimizers, state["optimizers"] or [], latest / ck.TRAIN_STATE)
        ck.set_rng_state(state["rng"])
        step = int(state["step"])
        elapsed_before = float(state.get("elapsed_s", 0.0))
    stream = task_stream(tok, cfg, model.config.max_seq_len, state)
    rcfg = RewardConfig(style="chat", think=cfg.think, format_weight=cfg.format_weight,
                        partial_credit=cfg.partial_credit)
    end_id = tok.token_id(S.END)
    pool = SandboxPool(cfg.sandbox_workers or None) if cfg.objective == "grpo" else None
    log = MetricsLog(out / "metrics.jsonl", truncate_after_step=step)
    by_time = cfg.max_steps == 0
    bar = TrainProgress(cfg.progress, total=cfg.max_steps or 60.0 * cfg.time_budget_min,
                        start=elapsed_before if by_time else step, by_time=by_time)
    t_start = time.perf_counter()
    elapsed = lambda: elapsed_before + time.perf_counter() - t_start
    history: list[dict] = []
    last_saved = step if latest is not None else -1

    def save():
        st = {"train_config": cfg.to_dict(), "tasks_consumed": stream.consumed, "stream": stream.state_dict(),
              "elapsed_s": elapsed(),
              "tokenizer_fingerprint": tok.fingerprint, "data_dir": data_dir}
        return ck.save_checkpoint(out, step, model, optimizers, st, cfg.keep_checkpoints,
                                  {"tokenizer.json": tok.to_str()})

    try:
        while not ((cfg.max_steps and step >= cfg.max_steps) or (cfg.stop_at and step >= cfg.stop_at)
                   or (cfg.time_budget_min and elapsed() >= 60.0 * cfg.time_budget_min)):
            t0 = time.perf_counter()
            frac = run_progress(step, cfg.max_steps, elapsed(), cfg.time_budget_min)
            lrs = set_lr(optimizers, lr_multiplier(step, frac, cfg.warmup_steps, cfg.decay, cfg.min_lr_frac))
            G = cfg.group_size
            if cfg.objective == "grpo":
                prompts, comps, truncated, rewards, rec = _grpo_rollouts(model, tok, stream, cfg, rcfg, pool,
                                                                         end_id, step)
                # no group kept (dynamic sampling found no spread): no advantages, no update
                adv = group_advantages(rewards, G, cfg.std_norm) if len(rewards) else rewards
                keep = (adv.abs() > 1e-8).nonzero().flatten().tolist()
            else:
                prompts = [p for _, p in (stream.next() for _ in range(cfg.tasks_per_step))]
                outs = sample_groups(model, tok, prompts, cfg, seed=cfg.seed * 7919 + step)
                comps = _completions(outs, end_id)
                truncated = torch.tensor([o.finish_reason == "length" for o in outs])
                rec = {"length": float(np.mean([len(c) for c in comps])),
                       "truncated": float(truncated.float().mean())}
                keep = list(range(len(comps)))
                adv = None
            t_sample = time.perf_counter() - t0
            rec = {"step": step + 1, **rec}
            flat_prompts = [p for p in prompts for _ in range(G)]
            if keep and any(len(comps[i]) for i in keep):
                rec.update(update_step(model, optimizers, cfg, [flat_prompts[i] for i in keep],
                                       [comps[i] for i in keep], tok.pad_id, device,
                                       adv[keep] if adv is not None else None, truncated[keep], ref, teacher))
                if not math.isfinite(rec["loss"]):
                    raise RuntimeError(f"loss became {rec['loss']} at step {step + 1}; lower --lr")
            step += 1
            # sample_s: the rollouts (sampling, and for GRPO scoring, all rounds)
            rec.update(lr=lrs.get("adamw", 0.0), sample_s=t_sample, step_s=time.perf_counter() - t0,
                       elapsed_s=elapsed())
            log.write(rec)
            history.append(rec)
            bar.update(elapsed() if by_time else step, rec.get("loss", 0.0), 0.0, 0.0)
            if cfg.save_every and step % cfg.save_every == 0:
                save()
                last_saved = step
        ckpt_path = save() if last_saved != step else out / ck.step_dir_name(step)
    finally:
        bar.close()
        log.close()
        if pool is not None:
            pool.close()

    def mean(key):
        vals = [r[key] for r in history if key in r]
        return float(np.mean(vals)) if vals else None

    return {"out_dir": str(out), "checkpoint": str(ckpt_path), "step": step, "elapsed_s": elapsed(),
            "objective": cfg.objective, "mean_reward": mean("reward"), "mean_pass_rate": mean("pass_rate"),
            "mean_length": mean("length"), "mean_reverse_kl": mean("reverse_kl")}
