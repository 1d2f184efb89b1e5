"""Pretraining: next-token (+ MTP and auxiliary) loss on the token shards of a data dir.

    pretrain(TrainConfig(...)) -> summary dict

One loop serves a laptop CPU and a GPU cluster: single process by default, FSDP2
under `torchrun` (see distributed.py). Each step: lr from the warmup+decay schedule,
bf16-autocast forward/backward, global grad-norm clipping, Muon/AdamW/Adam steps, the
model's non-gradient updates (`after_optimizer_step`, e.g. MoE bias balancing). Metrics
go to DIR/metrics.jsonl one JSON object per step; validation bits-per-byte every
`eval_every` steps; atomic checkpoints every `save_every` steps and at the end. A resumed
run restores weights, optimizer states, data position and RNG states, so that it
computes exactly what an uninterrupted run would have.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import os
import random
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from dsv4.config import make_config
from dsv4.errors import UserError
from dsv4.model.engram_prefetch import EngramPrefetcher, peek_batch
from dsv4.model.load import load_config, load_weights_into, read_weights
from dsv4.model.transformer import Transformer
from dsv4.train import checkpoint as ck
from dsv4.train import distributed as D
from dsv4.train.config import RESUMABLE_OVERRIDES, TrainConfig
from dsv4.train.indexer_stage import IndexerSchedule
from dsv4.train.loader import TokenLoader, eval_batches
from dsv4.train.malloc_tune import tune_allocator
from dsv4.train.metrics import MetricsLog, flops_per_token, peak_flops
from dsv4.train.optim import build_optimizers
from dsv4.train.progress import TrainProgress
from dsv4.train.schedule import lr_multiplier, run_progress, set_lr


def open_data(
    data_dir: str | Path,
    expected_fingerprint: str | None = None,
    build_if_missing: bool = True,
    progress: bool = True,
):
    """The data dir at `data_dir`, built from the standard library first if it does not exist."""
    from dsv4.data.build import build_data
    from dsv4.data.dataset import DataDir

    path = Path(data_dir)
    if build_if_missing and not (path / "meta.json").exists():
        build_data(None, path, progress=progress)
    return DataDir.open(path, expected_fingerprint=expected_fingerprint)


def _autocast(device: torch.device, enabled: bool):
    if not enabled:
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=torch.bfloat16)


def _local(t):
    """A plain tensor from a possibly-DTensor result (FSDP2 grad norms)."""
    return t.full_tensor() if hasattr(t, "full_tensor") else t


def _scalar(v) -> bool:
    """A loggable stat: a Python number or a 0-dim tensor (left on the device until logging)."""
    return isinstance(v, (int, float)) or (torch.is_tensor(v) and v.dim() == 0)


def _to_host(values: list, device: torch.device) -> list[float]:
    """Python floats of numbers and 0-dim tensors, with one device-to-host copy for all."""
    return torch.stack([torch.as_tensor(v, dtype=torch.float64, device=device).detach()
                        for v in values]).tolist()


def train_step(
    model, optimizers: list, x: torch.Tensor, y: torch.Tensor, grad_clip: float, autocast: bool, loss_fn=None
):
    """One optimizer step: bf16-autocast forward and backward, global grad-norm clipping,
    every optimizer's step, then the model's non-gradient updates. Returns (loss, stats, grad norm).
    `loss_fn(model, x, y) -> (loss, stats)` replaces `model.loss` (e.g. distillation)."""
    with _autocast(x.device, autocast):
        loss, stats = loss_fn(model, x, y) if loss_fn is not None else model.loss(x, y)
    loss.backward()
    return loss, stats, apply_gradients(model, optimizers, grad_clip)


def apply_gradients(model, optimizers: list, grad_clip: float) -> torch.Tensor:
    """After backward: global grad-norm clipping (when grad_clip > 0), every optimizer's step,
    zeroed grads, then the model's non-gradient updates. Returns the pre-clip grad norm.
    Shared by pretraining (train_step) and the RL update (rl.update_step)."""
    params = [p for p in model.parameters() if p.grad is not None]
    if grad_clip > 0:
        gnorm = _local(torch.nn.utils.clip_grad_norm_(params, grad_clip))
    else:
        gnorm = _local(torch.nn.utils.get_total_norm([p.grad for p in params]))
    for opt in optimizers:
        opt.step()
    for opt in optimizers:
        opt.zero_grad(set_to_none=True)
    model.after_optimizer_step()
    return gnorm


@torch.no_grad()
def evaluate_bpb(model, data, seq_len: int, cfg: TrainConfig, env: D.DistEnv) -> dict:
    """Validation loss on a fixed subset, as nats/token and as bits per UTF-8 byte:
    bpb = nats/token * n_val_tokens / (ln 2 * val_bytes)."""
    was_training = model.training
    model.eval()
    total, count = torch.zeros((), dtype=torch.float64, device=env.device), 0  # one host sync, at the end
    batch = max(1, cfg.batch_size // env.world_size)
    for x, y in eval_batches(data.val, seq_len, cfg.eval_tokens, batch, env.rank, env.world_size):
        x, y = x.to(env.device), y.to(env.device)
        with _autocast(env.device, cfg.autocast):
            logits = model(x)
        total += F.cross_entropy(logits.float().flatten(0, 1), y.flatten(), reduction="sum").double()
        count += y.numel()
    total, count = D.sum_over_ranks(env, [total.item(), float(count)])
    model.train(was_training)
    nats = total / count
    meta = data.meta
    return {"val_loss": nats, "val_bpb": nats * meta["n_val_tokens"] / (math.log(2) * meta["val_bytes"])}


def _resolve_run(cfg: TrainConfig) -> tuple[TrainConfig, Path | None, dict | None]:
    """Apply --resume: the checkpoint's config, with only the per-session fields from `cfg`."""
    out = Path(cfg.out_dir)
    latest = ck.latest_checkpoint(out) if out.exists() else None
    if not cfg.resume:
        if latest is not None:
            raise UserError(
                f"{out} already holds a checkpoint ({latest.name}); pass --resume to continue "
                f"it or choose another --out"
            )
        return cfg, None, None
    if latest is None:
        raise UserError(f"--resume: no checkpoint in {out} (no `latest` file); drop --resume to start fresh")
    state = ck.read_train_state(latest)
    saved = type(cfg).from_dict(state.get("train_config", {}))  # RLConfig for rl.py
    merged = dataclasses.replace(saved, **{k: getattr(cfg, k) for k in RESUMABLE_OVERRIDES})
    return merged, latest, state


def pretrain(cfg: TrainConfig, data=None, *, init=None, batches=None, loss_fn=None) -> dict:
    """Run (or resume) pretraining as configured; returns a summary dict (see `_summary`).

    Post-training reuses this loop (dsv4.train.sft, distill): `init` is a checkpoint whose
    weights and model config start a fresh run; `batches(seq_len, seed, rank, world_size)`
    builds the batch source instead of the token loader (anything with next_batch(),
    state_dict() and load_state_dict()); `loss_fn(model, x, y)` replaces `model.loss`."""
    cfg.validate()
    env = D.init_distributed(cfg.device)
    try:
        return _pretrain(cfg, env, data, init, batches, loss_fn)
    finally:
        D.shutdown(env)


def _pretrain(cfg: TrainConfig, env: D.DistEnv, data, init=None, batches=None, loss_fn=None) -> dict:
    cfg, ckpt, state = _resolve_run(cfg)
    threads = cfg.threads or max(1, (os.cpu_count() or 1) // int(os.environ.get("LOCAL_WORLD_SIZE", "1")))
    torch.set_num_threads(threads)
    tune_allocator()  # glibc keeps step buffers in the heap; DSV4_MALLOC_TUNE=0 opts out
    show = cfg.progress and env.is_main

    # ---- data ---------------------------------------------------------------------------------
    expected_fp = state.get("tokenizer_fingerprint") if state else None
    if data is None:
        if env.is_main:  # one rank builds a missing data dir, the others wait for it
            open_data(cfg.data_dir, expected_fp, progress=show)
        D.barrier(env)
        data = open_data(cfg.data_dir, expected_fp, build_if_missing=False)
    elif expected_fp is not None and data.tokenizer.fingerprint != expected_fp:
        raise UserError(
            f"the data dir was built with tokenizer {data.tokenizer.fingerprint}, but the "
            f"checkpoint in {cfg.out_dir} expects {expected_fp}; use the matching --data"
        )

    # ---- model ----------------------------------------------------------------------------------
    random.seed(cfg.seed)
    np.random.seed(cfg.seed)
    torch.manual_seed(cfg.seed)
    if ckpt is not None:
        mcfg = load_config(ckpt)
    elif init is not None:
        mcfg = load_config(init)
    else:
        overrides = dict(cfg.overrides)
        overrides["vocab_size"] = data.tokenizer.vocab_size  # the model speaks the data's tokenizer
        mcfg = make_config(cfg.preset, **overrides)
        if cfg.seq_len > mcfg.max_seq_len:
            mcfg = make_config(cfg.preset, **{**overrides, "max_seq_len": cfg.seq_len})
    if mcfg.vocab_size != data.tokenizer.vocab_size:
        raise UserError(
            f"model vocab_size {mcfg.vocab_size} != the data tokenizer's {data.tokenizer.vocab_size}"
        )
    seq_len = cfg.seq_len or mcfg.max_seq_len
    model = Transformer(mcfg)
    if ckpt is not None and not env.distributed:
        load_weights_into(model, read_weights(ckpt), str(ckpt / ck.WEIGHTS))
    elif ckpt is None and init is not None:
        load_weights_into(model, read_weights(init), str(init))
    model.to(env.device).train()
    n_params = sum(p.numel() for p in model.parameters())
    fpt = flops_per_token(model, seq_len)
    if env.distributed:
        D.shard_model(model)
    optimizers = build_optimizers(model, cfg)
    # after the optimizers: it freezes parameters
    indexer_schedule = IndexerSchedule(model, cfg.indexer_warmup_steps, cfg.indexer_warmup_lr, cfg.lr)
    if batches is not None:
        loader = batches(seq_len, cfg.seed, env.rank, env.world_size)
    else:
        loader = TokenLoader(data.train, cfg.batch_size, seq_len, cfg.seed, env.rank, env.world_size)
    prefetcher = EngramPrefetcher(model)  # host/mmap Engram rows of the next batch (issue 8)
    if ckpt is not None:
        if env.distributed:
            D.load_sharded(env, ckpt, model, optimizers)
        else:
            if state.get("optimizers") is None:
                raise UserError(
                    f"checkpoint {ckpt} was written by a {state.get('world_size', '?')}-rank run "
                    f"(optimizer states in dcp/); resume it under torchrun"
                )
            ck.load_optimizers(optimizers, state["optimizers"], ckpt / ck.TRAIN_STATE)
        loader.load_state_dict(state["loader"])
        ck.set_rng_state(state["rng"])
    if cfg.compile:
        for block in model.layers:
            block.compile()

    # ---- loop -----------------------------------------------------------------------------------
    step = int(state["step"]) if state else 0
    elapsed_before = float(state.get("elapsed_s", 0.0)) if state else 0.0
    tokens_seen = int(state.get("tokens_seen", 0)) if state else 0
    peak = peak_flops(env.device.type) * env.world_size
    out = Path(cfg.out_dir)
    log = MetricsLog(out / "metrics.jsonl", truncate_after_step=step) if env.is_main else None
    by_time = cfg.max_steps == 0
    bar = TrainProgress(
        show,
        total=cfg.max_steps or 60.0 * cfg.time_budget_min,
        start=elapsed_before if by_time else step,
        by_time=by_time,
    )
    session_start = time.perf_counter()
    tokens_per_step = cfg.batch_size * seq_len
    first_loss = last_loss = None
    last_eval: dict = dict(state.get("last_eval", {})) if state else {}
    tok_rates: list[float] = []
    mfus: list[float] = []
    last_saved = step if ckpt is not None else -1
    has_progress_hook = hasattr(model, "set_training_progress")

    def elapsed() -> float:
        return elapsed_before + time.perf_counter() - session_start

    def train_state() -> dict:
        return {
            "loader": loader.state_dict(),
            "train_config": cfg.to_dict(),
            "elapsed_s": elapsed(),
            "tokens_seen": tokens_seen,
            "tokenizer_fingerprint": data.tokenizer.fingerprint,
            "data_dir": str(Path(getattr(data, "path", cfg.data_dir)).resolve()),
            "last_eval": last_eval,
        }

    def save() -> Path:
        extra = {"tokenizer.json": data.tokenizer.to_str()}  # generate needs only the checkpoint
        if env.distributed:
            return D.save_sharded(
                env, out, step, model, optimizers, train_state(), cfg.keep_checkpoints, extra
            )
        return ck.save_checkpoint(out, step, model, optimizers, train_state(), cfg.keep_checkpoints, extra)

    def run_eval() -> None:
        nonlocal last_eval
        last_eval = {"step": step, **evaluate_bpb(model, data, seq_len, cfg, env)}
        if log is not None:
            log.write(last_eval)
        bar.log(f"step {step}: val_bpb {last_eval['val_bpb']:.4f}")

    try:
        while True:
            if cfg.max_steps and step >= cfg.max_steps:
                break
            if cfg.stop_at and step >= cfg.stop_at:
                break
            if cfg.time_budget_min and D.broadcast_object(env, elapsed() >= 60.0 * cfg.time_budget_min):
                break
            t0 = time.perf_counter()
            frac = run_progress(step, cfg.max_steps, elapsed(), cfg.time_budget_min)
            stage = indexer_schedule.update(step)
            scheduled = lr_multiplier(step, frac, cfg.warmup_steps, cfg.decay, cfg.min_lr_frac)
            lrs = set_lr(optimizers, indexer_schedule.lr_multiplier(stage, scheduled))
            if has_progress_hook:
                model.set_training_progress(frac)
            x, y = loader.next_batch()
            x, y = x.to(env.device), y.to(env.device)
            if prefetcher.layers:
                prefetcher.submit(peek_batch(loader)[0].to(env.device))
            loss, stats, gnorm = train_step(model, optimizers, x, y, cfg.grad_clip, cfg.autocast, loss_fn)
            step += 1
            tokens_seen += tokens_per_step
            if env.device.type == "cuda":
                torch.cuda.synchronize()
            dt = time.perf_counter() - t0

            names = sorted(k for k, v in stats.items() if _scalar(v))
            reduced = D.mean_over_ranks(env, _to_host([loss, gnorm] + [stats[k] for k in names], env.device))
            last_loss = reduced[0]
            if first_loss is None:
                first_loss = last_loss
            if not math.isfinite(last_loss):
                raise RuntimeError(f"loss became {last_loss} at step {step}; lower --lr or check the data")
            tok_s = tokens_per_step / dt
            mfu = fpt * tok_s / peak
            tok_rates.append(tok_s)
            mfus.append(mfu)
            if log is not None:
                log.write(
                    {
                        "step": step,
                        "loss": last_loss,
                        "lr": lrs.get("adamw", 0.0),
                        "lr_muon": lrs.get("muon", 0.0),
                        "grad_norm": reduced[1],
                        "tokens": tokens_seen,
                        "tokens_per_s": tok_s,
                        "mfu": mfu,
                        "elapsed_s": elapsed(),
                        **dict(zip(names, reduced[2:], strict=True)),
                    }
                )
            bar.update(elapsed() if by_time else step, last_loss, tok_s, mfu)
            if cfg.eval_every and step % cfg.eval_every == 0:
                run_eval()
            if cfg.save_every and step % cfg.save_every == 0:
                save()
                last_saved = step
        if last_eval.get("step") != step:
            run_eval()
        ckpt_path = save() if last_saved != step else out / ck.step_dir_name(step)
    finally:
        prefetcher.close()
        bar.close()
        if log is not None:
            log.close()

    # Steady-state throughput: skip the first steps (allocation, compilation warm-up).
    steady = slice(min(len(tok_rates) // 4, 5), None)
    return {
        "out_dir": str(out),
        "checkpoint": str(ckpt_path),
        "step": step,
        "params": n_params,
        "first_loss": first_loss,
        "final_loss": last_loss,
        "val_bpb": last_eval.get("val_bpb"),
        "val_loss": last_eval.get("val_loss"),
        "tokens_seen": tokens_seen,
        "elapsed_s": elapsed(),
        "tokens_per_s": float(np.median(tok_rates[steady])) if tok_rates else None,
        "mfu": float(np.median(mfus[steady])) if mfus else None,
        "peak_flops": peak,
        "flops_per_token": fpt,
        "world_size": env.world_size,
        "seq_len": seq_len,
        "batch_size": cfg.batch_size,
    }
