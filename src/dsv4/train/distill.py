"""Distilling the flagship (teacher) into the lite model (student).

    distill(DistillConfig(teacher="runs/rl", out_dir="runs/distill", mode="both", ...))

- offpolicy: logit KD on the pretraining corpus (from `offpolicy_teacher` if given). The
  student is a fresh `lite` model on the teacher's tokenizer, trained by the pretraining
  loop (`pretrain(..., loss_fn=...)`) on its own next-token + MTP loss plus `kd_coef` x
  forward KL(teacher || student) at temperature T (distill_loss.forward_kl; the teacher
  runs frozen in the same bf16 forward).
- onpolicy: the student samples chat answers to train-split tasks and the teacher scores
  its tokens; the per-token reverse KL is the (negative) advantage (the RL loop of rl.py,
  objective "distill"). Starts from the off-policy student in `both` mode.
The student is always to be compared with a lite model pretrained from scratch on the
same compute (the quickstart does both).
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path

from dsv4.errors import UserError
from dsv4.train.config import TrainConfig

MODES = ("offpolicy", "onpolicy", "both")


@dataclass
class DistillConfig:
    teacher: str
    out_dir: str = "runs/distill"
    # The off-policy (corpus) teacher, default `teacher`. Chat SFT makes a flagship forget the
    # raw corpus (its val loss can end above the uniform ln V), so the quickstart distils the
    # corpus from the pretrained flagship and the chat behaviour (on-policy) from the RL one.
    offpolicy_teacher: str = ""
    mode: str = "offpolicy"
    student_preset: str = "lite"
    kd_coef: float = 1.0
    temperature: float = 1.0
    onpolicy_frac: float = 0.3  # share of the steps/time given to on-policy in `both` mode
    train: TrainConfig = field(default_factory=TrainConfig)  # data dir, budget, batch, lr ...
    onpolicy: dict = field(default_factory=dict)  # RLConfig overrides for the on-policy stage

    def validate(self) -> None:
        if self.mode not in MODES:
            raise UserError(f"--mode must be one of {', '.join(MODES)}")
        if self.kd_coef < 0 or self.temperature <= 0:
            raise UserError("--kd-coef must be >= 0 and --temperature > 0")
        if not 0 < self.onpolicy_frac < 1:
            raise UserError("onpolicy_frac must lie in (0, 1)")


def kd_loss_fn(teacher, kd_coef: float, temperature: float):
    """loss_fn(model, x, y) for the pretraining loop: the student's own loss + kd_coef * KD."""
    import torch

    from dsv4.train.distill_loss import forward_kl

    def loss_fn(model, x, y):
        # The student's logits are those of its own loss forward: catch the head's first
        # output (the MTP block calls the shared head after it) instead of a second forward.
        seen = []
        hook = model.head.register_forward_hook(lambda _m, _i, o: seen.append(o) if not seen else None)
        try:
            loss, stats = model.loss(x, y)
        finally:
            hook.remove()
        with torch.no_grad():
            t_logits = teacher(x)
        kd = forward_kl(seen[0], t_logits, temperature=temperature)
        stats = dict(stats, kd_loss=kd.detach())  # a device scalar: pretrain syncs once per step
        return loss + kd_coef * kd, stats

    return loss_fn


def _split(cfg: TrainConfig, frac: float) -> tuple[dict, dict]:
    """Steps / minutes of the off-policy and on-policy parts of a `both` run."""
    if cfg.max_steps:
        on = max(1, round(cfg.max_steps * frac))
        return {"max_steps": cfg.max_steps - on}, {"max_steps": on}
    return ({"time_budget_min": cfg.time_budget_min * (1 - frac)},
            {"time_budget_min": cfg.time_budget_min * frac})


def distill(cfg: DistillConfig) -> dict:
    """Run (or, with cfg.train.resume, continue) the distillation; returns stage summaries."""
    from dsv4.infer.load import load_tokenizer
    from dsv4.model.load import load_model, resolve_checkpoint
    from dsv4.train.checkpoint import latest_checkpoint
    from dsv4.train.pretrain import pretrain
    from dsv4.train.rl import RLConfig, rl
    from dsv4.train.sft import open_corpus, open_init

    cfg.validate()
    teacher_path, tok, data_dir = open_init(cfg.teacher)
    out = Path(cfg.out_dir)
    t = cfg.train
    off_budget, on_budget = _split(t, cfg.onpolicy_frac) if cfg.mode == "both" else ({}, {})
    result: dict = {}
    student = None
    if cfg.mode in ("offpolicy", "both"):
        need = "off-policy distillation needs the corpus: pass --data (the teacher's data dir)"
        src, data = open_corpus(t.data_dir, data_dir, tok.fingerprint, need)
        off_teacher = resolve_checkpoint(cfg.offpolicy_teacher) if cfg.offpolicy_teacher else teacher_path
        if off_teacher != teacher_path and load_tokenizer(off_teacher).fingerprint != tok.fingerprint:
            raise UserError("the off-policy teacher and the teacher must share a tokenizer")
        teacher = load_model(off_teacher).eval().requires_grad_(False)
        off_dir = out / "offpolicy" if cfg.mode == "both" else out
        done = cfg.mode == "both" and (off_dir / "summary.done").exists()
        tcfg = dataclasses.replace(t, preset=cfg.student_preset, out_dir=str(off_dir), data_dir=str(src),
                                   resume=t.resume and latest_checkpoint(off_dir) is not None
                                   if off_dir.exists() else False, **off_budget)
        if not done:
            result["offpolicy"] = pretrain(tcfg, data=data,
                                           loss_fn=kd_loss_fn(teacher, cfg.kd_coef, cfg.temperature))
            if cfg.mode == "both":
                (off_dir / "summary.done").write_text(json.dumps(result["offpolicy"], default=str) + "\n")
        else:  # a resumed `both` run: the finished part's summary (its step count sizes the baseline)
            try:
                result["offpolicy"] = json.loads((off_dir / "summary.done").read_text())
            except ValueError:  # written by an older version: no summary kept
                pass
        student = off_dir
        del teacher
    if cfg.mode in ("onpolicy", "both"):
        init = student or cfg.onpolicy.get("init")
        if not init:
            raise UserError("--mode onpolicy needs --init STUDENT (a lite checkpoint on the same tokenizer)")
        on_dir = out / "onpolicy" if cfg.mode == "both" else out
        budget = on_budget or {"max_steps": t.max_steps, "time_budget_min": t.time_budget_min}
        rcfg = RLConfig(out_dir=str(on_dir), init=str(resolve_checkpoint(init)), objective="distill",
                        teacher=str(teacher_path), seed=t.seed, threads=t.threads, progress=t.progress,
                        device=t.device, resume=latest_checkpoint(on_dir) is not None if on_dir.exists()
                        else False, **budget, **{k: v for k, v in cfg.onpolicy.items() if k != "init"})
        result["onpolicy"] = rl(rcfg)
    result["checkpoint"] = (result.get("onpolicy") or result.get("offpolicy") or {}).get("checkpoint")
    return result
