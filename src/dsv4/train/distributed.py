"""Scale-out with PyTorch's own engine: torchrun + FSDP2 (`fully_shard`) + DCP.

Under `torchrun --nproc_per_node=N` the environment carries RANK / WORLD_SIZE /
LOCAL_RANK; we join the process group (gloo on CPU, NCCL on GPUs), shard every block
and then the root with `fully_shard` (parameters become DTensors sharded on dim 0;
Muon's Newton-Schulz runs on them through DTensor ops), and save checkpoints with
`torch.distributed.checkpoint` (each rank writes its shards). A full
`model.safetensors` is gathered next to the shards so that inference never needs a
process group. Without torchrun everything here is a no-op.
"""

from __future__ import annotations

import os
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.distributed as dist

from dsv4.errors import UserError


@dataclass
class DistEnv:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")
    owns_group: bool = False  # we created the process group, so we destroy it

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


_joined_group = False  # this process has been a rank of a process group


def init_distributed(device: str = "auto") -> DistEnv:
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank, local = int(os.environ.get("RANK", "0")), int(os.environ.get("LOCAL_RANK", "0"))
    use_cuda = device == "cuda" or (device == "auto" and torch.cuda.is_available())
    if use_cuda and not torch.cuda.is_available():
        raise UserError("--device cuda was asked for but no CUDA device is available")
    dev = torch.device("cuda", local) if use_cuda else torch.device("cpu")
    if use_cuda:
        torch.cuda.set_device(dev)
    owns = world > 1 and not dist.is_initialized()
    if owns:
        dist.init_process_group("nccl" if use_cuda else "gloo")
    if world > 1:
        global _joined_group
        _joined_group = True
    return DistEnv(rank=rank, world_size=world, local_rank=local, device=dev, owns_group=owns)


def shutdown(env: DistEnv) -> None:
    if env.owns_group and dist.is_initialized():
        dist.barrier()  # no rank tears down while another still talks to it
        dist.destroy_process_group()


def end_worker(rc: int) -> None:
    """End a torchrun worker whose work is finished (checkpoints committed, group destroyed).

    torch 2.13's native c10d/gloo threads can abort the interpreter's final teardown, after
    all Python code has run ("terminate called without an active exception", about one run
    in ten on 2 busy cores): the worker then exits -6 and torchrun reports a failure for a
    run that succeeded. Skipping that teardown with os._exit keeps the exit status true.
    A no-op in a process that never joined a group."""
    if not _joined_group:
        return
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(rc)


def shard_model(model: torch.nn.Module) -> torch.nn.Module:
    """FSDP2: each transformer block is one all-gather unit, the root holds the rest."""
    from torch.distributed.fsdp import fully_shard, register_fsdp_forward_method

    for block in model.layers:
        fully_shard(block)
    if getattr(model, "mtp", None) is not None:
        fully_shard(model.mtp)
    fully_shard(model)
    # The loop calls model.loss(), not model(): it must gather the root's parameters too.
    register_fsdp_forward_method(model, "loss")
    return model


def mean_over_ranks(env: DistEnv, values: list[float]) -> list[float]:
    if not env.distributed:
        return values
    t = torch.tensor(values, dtype=torch.float64, device=env.device)
    dist.all_reduce(t)
    return (t / env.world_size).tolist()


def sum_over_ranks(env: DistEnv, values: list[float]) -> list[float]:
    if not env.distributed:
        return values
    t = torch.tensor(values, dtype=torch.float64, device=env.device)
    dist.all_reduce(t)
    return t.tolist()


def broadcast_object(env: DistEnv, obj):
    if not env.distributed:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def barrier(env: DistEnv) -> None:
    if env.distributed:
        dist.barrier()


# ---- distributed checkpoints ------------------------------------------------------------------


def save_sharded(
    env: DistEnv,
    out_dir: Path,
    step: int,
    model,
    optimizers: list,
    train_state: dict,
    keep: int,
    extra_files: dict[str, str] | None = None,
) -> Path:
    """Every rank writes its shards with DCP into one temp dir; rank 0 adds the full weights,
    config and train state, then commits the directory atomically (see checkpoint.py)."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import (
        StateDictOptions,
        get_model_state_dict,
        get_optimizer_state_dict,
    )

    from dsv4.train import checkpoint as ck

    tmp = broadcast_object(env, str(ck.new_temp_dir(out_dir, step)) if env.is_main else None)
    tmp = Path(tmp)
    try:
        state = {"model": get_model_state_dict(model)}
        for i, opt in enumerate(optimizers):
            state[f"optim_{i}"] = get_optimizer_state_dict(model, opt)
        dcp.save(state, checkpoint_id=str(tmp / "dcp"))
        full = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
        final = None
        if env.is_main:
            ck.write_model_files(tmp, model.config.to_json(), full, extra_files)
            torch.save(
                dict(train_state, step=step, rng=ck.rng_state(), world_size=env.world_size, optimizers=None),
                tmp / ck.TRAIN_STATE,
            )
            final = ck.commit_temp_dir(out_dir, tmp, step, keep)
        barrier(env)
        return Path(broadcast_object(env, str(final) if final else None))
    except BaseException:
        if env.is_main:
            shutil.rmtree(tmp, ignore_errors=True)
        raise


def load_sharded(env: DistEnv, ckpt: Path, model, optimizers: list) -> None:
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import (
        get_model_state_dict,
        get_optimizer_state_dict,
        set_model_state_dict,
        set_optimizer_state_dict,
    )

    if not (ckpt / "dcp").is_dir():
        raise UserError(
            f"checkpoint {ckpt} has no dcp/ shards: it was written by a single-process run; "
            f"resume it without torchrun"
        )
    state = {"model": get_model_state_dict(model)}
    for i, opt in enumerate(optimizers):
        state[f"optim_{i}"] = get_optimizer_state_dict(model, opt)
    try:
        dcp.load(state, checkpoint_id=str(ckpt / "dcp"))
    except Exception as e:  # DCP wraps per-rank failures in its own exception types
        raise UserError(
            f"checkpoint shards in {ckpt / 'dcp'} are missing or corrupt ({type(e).__name__})"
        ) from None
    set_model_state_dict(model, state["model"])
    for i, opt in enumerate(optimizers):
        set_optimizer_state_dict(model, opt, state[f"optim_{i}"])
