"""TrainConfig: every knob of a pretraining run, in one dataclass.

The CLI fills it from flags and tests build it directly; it is saved inside each
checkpoint, so that `--resume` continues with the very same optimisation settings (only
the fields in `RESUMABLE_OVERRIDES` may change between sessions of one run).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

from dsv4.errors import UserError


@dataclass
class TrainConfig:
    # ---- what to train, on what, where -------------------------------------------------
    preset: str = "flagship"
    out_dir: str = "runs/pretrain"
    data_dir: str = "runs/data"  # built on the fly from the stdlib if missing
    overrides: dict = field(default_factory=dict)  # model config `--set key=value` (strings ok)
    seed: int = 0

    # ---- how long -------------------------------------------------------------------
    max_steps: int = 0  # total optimizer steps of the run (0: only the time budget limits)
    time_budget_min: float = 0.0  # wall-clock budget in minutes for this run (0: none)
    stop_at: int = 0  # end this session after this step (checkpointed), e.g. to split a run

    # ---- batch ------------------------------------------------------------------------
    batch_size: int = 16  # sequences per optimizer step, summed over all ranks
    seq_len: int = 0  # 0 -> the model's max_seq_len

    # ---- optimisation (SPEC 1.5) ------------------------------------------------------
    lr: float = 1e-2  # AdamW peak lr (embeddings, head, norms, scalars)
    muon_lr: float = 0.02  # Muon peak lr (2-D hidden matrices)
    engram_lr_mult: float = 5.0  # Engram tables: Adam at this multiple of `lr`, no decay
    weight_decay: float = 0.0  # AdamW decoupled weight decay
    muon_weight_decay: float = 0.0
    betas: tuple = (0.9, 0.95)
    grad_clip: float = 1.0  # global grad-norm clip (0: off)
    warmup_steps: int = 20
    decay: str = "cosine"  # cosine | linear | constant
    min_lr_frac: float = 0.1  # the schedule ends at this fraction of the peak
    # DSA stage 1: the first N steps train only the lightning indexer against the dense
    # attention (V3.2 uses 1000 steps at lr 1e-3); then the sparse stage (train/indexer_stage.py)
    indexer_warmup_steps: int = 0
    indexer_warmup_lr: float = 1e-3  # constant AdamW lr of stage 1 (Muon's is scaled alike)

    # ---- evaluation, checkpoints, logging ------------------------------------------------
    eval_every: int = 100  # steps between validation bits-per-byte (0: only at the end)
    eval_tokens: int = 16384  # validation tokens per evaluation (a fixed subset)
    save_every: int = 200  # steps between checkpoints (0: only at the end)
    keep_checkpoints: int = 2  # older step directories beyond this are deleted
    progress: bool = True  # rich progress bar

    # ---- execution --------------------------------------------------------------------
    resume: bool = False
    compile: bool = False  # torch.compile the model (see benchmarks/train_throughput.py)
    autocast: bool = True  # bf16 autocast (CPU AMX / GPU tensor cores)
    threads: int = 0  # torch intra-op threads; 0 -> os.cpu_count() (tests set 1)
    device: str = "auto"  # auto | cpu | cuda

    def validate(self) -> None:
        def need(cond: bool, msg: str) -> None:
            if not cond:
                raise UserError(f"invalid training config: {msg}")

        need(self.max_steps >= 0, "--max-steps must be >= 0")
        need(self.time_budget_min >= 0, "--time-budget must be >= 0")
        need(self.max_steps > 0 or self.time_budget_min > 0, "give --max-steps or --time-budget")
        need(self.batch_size > 0, "--batch-size must be > 0")
        need(self.seq_len >= 0, "--seq-len must be >= 0")
        need(self.lr > 0 and self.muon_lr > 0, "learning rates must be > 0")
        need(self.decay in ("cosine", "linear", "constant"), "decay must be cosine, linear or constant")
        need(0.0 <= self.min_lr_frac <= 1.0, "min_lr_frac must lie in [0, 1]")
        need(
            self.warmup_steps >= 0 and self.eval_every >= 0 and self.save_every >= 0,
            "step counts must be >= 0",
        )
        need(self.indexer_warmup_steps >= 0, "--indexer-warmup-steps must be >= 0")
        need(self.indexer_warmup_lr > 0, "--indexer-warmup-lr must be > 0")
        need(self.eval_tokens > 0, "eval_tokens must be > 0")
        need(self.keep_checkpoints >= 1, "keep_checkpoints must be >= 1")
        need(self.device in ("auto", "cpu", "cuda"), "device must be auto, cpu or cuda")

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["betas"] = list(self.betas)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> TrainConfig:
        names = {f.name for f in dataclasses.fields(cls)}
        cfg = cls(**{k: v for k, v in d.items() if k in names})
        cfg.betas = tuple(cfg.betas)
        return cfg


# Fields a resumed session may change; everything else comes from the checkpoint, so that
# the continuation is the same computation as an uninterrupted run.
RESUMABLE_OVERRIDES = (
    "max_steps",
    "time_budget_min",
    "stop_at",
    "eval_every",
    "save_every",
    "keep_checkpoints",
    "progress",
    "compile",
    "threads",
    "device",
    "data_dir",
    "out_dir",
    "resume",
)
