"""`dsv4 quickstart`: the whole recipe on the embedded defaults, within a time budget.

Stages (DIR = --out; each one is skipped when DIR/<stage>/stage.json says it finished,
and an interrupted training stage resumes from its last checkpoint):
  1. data      code corpus + BPE tokenizer from this Python's standard library
  2. pretrain  the preset (flagship) on it             (dsv4.train.pretrain)
  3. sft       chat SFT on generated tasks             (dsv4.train.sft)
  4. rl        GRPO with sandboxed unit-test rewards   (dsv4.train.rl)
  5. distill   the flagship into a fresh lite model: logit KD on the corpus from the
               pretrained flagship (chat SFT forgets the corpus), then on-policy from the RL one
  6. scratch   a lite model pretrained on the same compute (the distillation baseline)
  7. eval      held-out task pass@1 (SFT vs RL), HumanEval, val bits-per-byte, decode speed
  8. report    DIR/report.md with PNG plots           (dsv4.report)
The budget is split across the training stages by fixed shares (BUDGET_SHARES) at the
first run and kept in DIR/quickstart.json; the scratch baseline is sized by the
distillation's step count and the evaluation by counts (tasks, tokens), their time taken
from the reserve. SFT, RL and the held-out evaluation use the starter task families
(dsv4.tasks.STARTER_FAMILIES: one-line templates around a constant from the docstring),
the problems a model trained for minutes can learn to solve; SFT and RL draw from disjoint
halves of the train split (RL's reward is on instances SFT never showed), and the held-out
instances are a third, disjoint part of the same families (dsv4.tasks.generate), the same
number from each family
(`heldout_per_family`), and pass@1 is the mean over samples at temperature 0.6 / top-p 0.95
(DeepSeek-R1's protocol) with the greedy pass@1 beside it (dsv4.eval.tasks).
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path

from rich.console import Console

from dsv4.tasks.generate import STARTER_FAMILIES

# Shares of the budget (after the data stage) per training stage; the rest is the reserve for
# the scratch baseline (sized by the distillation's step count, not by time: see below),
# evaluation and the report. Post-training gets about half: a ~20M model pretrained for
# minutes knows little Python either way, while SFT on the starter families (chat format,
# templates, copying the constant) and RL (sharpening what SFT can nearly do) are what move
# the held-out pass rate. SFT keeps its share rather than yielding it to RL (R1's short cold
# start): on the starter families the copying of the constant appears between 100 SFT steps
# (held-out pass@1 0.045, and 20 GRPO steps after it found nothing to sharpen: 0.045) and
# the ~195 that 26% buys (0.29); benchmarks/results/posttrain_heldout_s4.json.
BUDGET_SHARES = {"pretrain": 0.32, "sft": 0.26, "rl": 0.24, "distill": 0.08}
STAGES = ("data", "pretrain", "sft", "rl", "distill", "scratch", "eval", "report")
# The lite students (distilled and scratch alike) train for a few dozen steps: a short warmup.
STUDENT_WARMUP = 5
# On-policy distillation fine-tunes the off-policy student on its own chat samples: small
# steps, so that it does not unlearn the corpus the comparison is measured on.
ONPOLICY_LR = {"lr": 1e-4, "muon_lr": 5e-4}
# GRPO as the quickstart runs it: 64 new tokens hold every starter answer; partial credit
# (the fraction of hidden tests passed) gives a group reward variance even when no sample
# passes them all; 8 tasks x 8 samples per step, since Muon and Adam take steps of a fixed
# size however noisy the gradient: on a 20M flagship after SFT, lr 1e-3 / Muon 5e-3 broke
# the answers' syntax within 9 steps of 4 tasks and 5e-4 / 2.5e-3 within 20, while Adam
# 5e-4 with Muon at 5e-4 kept them well-formed over 15 steps (no setting tried moved the
# held-out pass@1 up within 20 steps on a loaded machine). RL prompts come from RL's half of
# the train split (`train_part`), instances SFT never showed: their groups have a reward
# spread (4-7 of 8 groups per step, against 1-3 on the SFT-seen instances), and the reward
# measures solving new instances as the held-out set does. There, from one SFT checkpoint
# (held-out 0.29), 30 steps at lr 5e-4 / Muon 5e-4 reached 0.31 (greedy 0.33 -> 0.31), at
# lr 1e-3 / Muon 1e-3 0.29 (greedy 0.30), and at lr 1e-3 / Muon 1e-3 with learnability task
# sampling (dsv4.train.curriculum) 0.33 (greedy 0.36), answers well-formed throughout
# (format rate 1.0): the default, though +0.04 on 100 tasks is within about twice the noise.
# Engine slots for the held-out answers (100 balanced tasks x (1 greedy + 4 samples), queued
# and decoded 72 at a time as slots free).
HELDOUT_BATCH = 72
# RL trains on its own half of the train split (`train_part`), instances SFT never showed.
# GRPO's mu stays 1 (`updates_per_batch`): from the same SFT checkpoint, mu = 2 reached 0.32
# (greedy 0.35) after 20 sampling rounds and 0.3225 after 10 (about mu = 1's 20-round wall
# time), against mu = 1's 0.33 (greedy 0.36) after 20 (benchmarks/results/posttrain_heldout_s4.json).
RL_DEFAULTS = {"group_size": 8, "tasks_per_step": 8, "max_new_tokens": 64, "partial_credit": True,
               "lr": 1e-3, "muon_lr": 1e-3, "task_sampling": "learnability", "train_part": "rl"}


@dataclass
class QuickstartConfig:
    budget_min: float = 20.0
    out_dir: str = "runs/quickstart"
    preset: str = "flagship"
    student_preset: str = "lite"
    seed: int = 0
    prompt: str = "def fibonacci(n):\n"
    sample_tokens: int = 120
    progress: bool = True
    threads: int = 0
    # the corpus and model shape (tests shrink them)
    data_sources: list | None = None
    vocab_size: int = 8192
    batch_size: int = 16
    seq_len: int = 0  # pretraining rows (0: the preset's max_seq_len)
    max_seq_len: int = 384  # context of the models: room for chat prompts + answers
    overrides: dict | None = None
    student_overrides: dict | None = None
    # post-training sizes
    sft_tasks: int = 3000
    sft_batch_size: int = 8
    difficulty: tuple = (1, 2)
    # SFT, RL and the held-out eval draw from these families (None: all 56); see STARTER_FAMILIES
    families: tuple | None = STARTER_FAMILIES
    think: bool = False  # <think> traces: off, so answers (and RL samples) stay short
    sft_lr: float = 3e-3
    rl: dict = field(default_factory=lambda: dict(RL_DEFAULTS))
    # evaluation sizes: the held-out set takes `heldout_per_family` tasks of each family (0: the
    # first `heldout_n` of the uniform stream); pass@1 is the mean over
    # `heldout_samples` samples at DeepSeek-R1's temperature 0.6 / top-p 0.95 (0: greedy), and
    # the greedy pass@1 is always recorded beside it
    heldout_n: int = 100
    heldout_per_family: int = 10
    heldout_samples: int = 4
    humaneval_limit: int = 40
    eval_new_tokens: int = 64
    speed_tokens: int = 64


def _done(stage_dir: Path) -> dict | None:
    p = stage_dir / "stage.json"
    return json.loads(p.read_text()) if p.exists() else None


def _finish(stage_dir: Path, summary: dict) -> dict:
    from dsv4.data.atomic import atomic_write_text

    stage_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_text(stage_dir / "stage.json", json.dumps(summary, indent=2, default=str))
    return summary


def _resume(run_dir: Path) -> bool:
    from dsv4.train.checkpoint import latest_checkpoint

    return run_dir.exists() and latest_checkpoint(run_dir) is not None


def decode_speed(ckpt, n_tokens: int = 64, prompt: str = "def main():\n") -> float:
    """Greedy single-sequence decode tokens/s of a checkpoint on the engine (after a warm-up)."""
    from dsv4.infer.load import load_engine
    from dsv4.infer.sampling import SamplingParams

    engine = load_engine(ckpt, max_batch=1)
    p = SamplingParams(max_tokens=n_tokens, temperature=0.0, ignore_eos=True)
    engine.generate(prompt, SamplingParams(max_tokens=4, temperature=0.0, ignore_eos=True))
    t0 = time.perf_counter()
    out = engine.generate(prompt, p)[0]
    return len(out.token_ids) / (time.perf_counter() - t0)


def quickstart(cfg: QuickstartConfig) -> dict:
    from dsv4.config import make_config
    from dsv4.data.build import build_data
    from dsv4.data.dataset import DataDir
    from dsv4.errors import UserError
    from dsv4.train.config import TrainConfig

    if cfg.budget_min <= 0:
        raise UserError(f"--budget must be > 0 minutes (got {cfg.budget_min})")
    overrides = {"max_seq_len": cfg.max_seq_len, **(cfg.overrides or {})}
    student_overrides = {"max_seq_len": cfg.max_seq_len, **(cfg.student_overrides or {})}
    make_config(cfg.preset, **overrides)  # a bad preset fails before any work
    make_config(cfg.student_preset, **student_overrides)
    console = Console(stderr=True, quiet=not cfg.progress, log_path=False)
    out = Path(cfg.out_dir)
    t0 = time.perf_counter()
    rule = lambda i, text: console.rule(f"[bold]{i}/{len(STAGES)} {text}")

    rule(1, "data: code corpus + tokenizer (Python standard library)")
    meta = build_data(cfg.data_sources, out / "data", vocab_size=cfg.vocab_size, progress=cfg.progress)
    data = DataDir.open(out / "data")
    console.log(f"{'reused' if meta.get('reused') else 'built'}: {meta['n_train_tokens']:,} train tokens, "
                f"{meta['n_val_tokens']:,} val tokens, vocab {meta['vocab_size']}")

    plan_path = out / "quickstart.json"
    plan = json.loads(plan_path.read_text()) if plan_path.exists() else None
    if plan is None:  # first run: the stages share what the data stage left
        left = max(0.1, cfg.budget_min - (time.perf_counter() - t0) / 60.0)
        plan = {"budget_min": cfg.budget_min, "stage_min": {k: v * left for k, v in BUDGET_SHARES.items()}}
    elif cfg.budget_min > plan["budget_min"]:  # a larger budget extends every stage proportionally
        scale = cfg.budget_min / plan["budget_min"]
        stage_min = {k: v * scale for k, v in plan["stage_min"].items()}
        plan = {"budget_min": cfg.budget_min, "stage_min": stage_min}
    out.mkdir(parents=True, exist_ok=True)
    plan_path.write_text(json.dumps(plan, indent=2))
    mins = plan["stage_min"]

    def base(run_dir: Path, preset: str, ov: dict, **kw) -> TrainConfig:
        return _train_config(cfg, out, run_dir, preset, ov, **kw)

    stages: dict = {}

    # ---- 2. pretrain ----------------------------------------------------------------------
    from dsv4.train.pretrain import pretrain

    rule(2, f"pretrain {cfg.preset} ({mins['pretrain']:.1f} min)")
    d = out / "pretrain"
    stages["pretrain"] = _done(d) or _finish(
        d, pretrain(base(d, cfg.preset, overrides, time_budget_min=mins["pretrain"]), data=data))

    # ---- 3. sft ---------------------------------------------------------------------------
    rule(3, f"sft on generated tasks ({mins['sft']:.1f} min)")
    stages["sft"] = _done(out / "sft") or _finish(out / "sft", run_sft(cfg, out, data, mins["sft"]))

    # ---- 4. rl ------------------------------------------------------------------------------
    rule(4, f"rl: GRPO with unit-test rewards ({mins['rl']:.1f} min)")
    stages["rl"] = _done(out / "rl") or _finish(out / "rl", run_rl(cfg, out, mins["rl"]))

    # ---- 5. distill, 6. scratch -----------------------------------------------------------------
    from dsv4.train.distill import DistillConfig, distill

    rule(5, f"distill {cfg.preset} -> {cfg.student_preset} ({mins['distill']:.1f} min)")
    d = out / "distill"
    if not (s := _done(d)):
        tc = base(d, cfg.student_preset, student_overrides, time_budget_min=mins["distill"],
                  warmup_steps=STUDENT_WARMUP)
        dc = DistillConfig(teacher=str(out / "rl"), offpolicy_teacher=str(out / "pretrain"), out_dir=str(d),
                           mode="both", train=tc,
                           student_preset=cfg.student_preset, onpolicy_frac=0.15,
                           onpolicy={**cfg.rl, **ONPOLICY_LR,
                                     "difficulty_min": cfg.difficulty[0],
                                     "difficulty_max": cfg.difficulty[1], "families": _families(cfg),
                                     "think": cfg.think})
        s = distill(dc)
        # the student's val loss after both parts (on-policy moves it): the same measure as scratch
        s["val"] = _val(s["checkpoint"], data, tc)
        s = _finish(d, s)
    stages["distill"] = s

    # The baseline gets the student's compute: as many optimizer steps of the same batch as
    # the distillation took (off-policy + on-policy), on the corpus; not the same minutes,
    # which would buy it more steps, since it runs no teacher.
    steps = sum((stages["distill"].get(k) or {}).get("step", 0) for k in ("offpolicy", "onpolicy"))
    rule(6, f"scratch {cfg.student_preset}: the same compute, no teacher ({steps} steps)")
    d = out / "scratch"
    if not (s := _done(d)):
        tc = base(d, cfg.student_preset, student_overrides, max_steps=max(1, steps),
                  warmup_steps=STUDENT_WARMUP)
        s = pretrain(tc, data=data)
        s["val"] = _val(s["checkpoint"], data, tc)
        s = _finish(d, s)
    stages["scratch"] = s

    # ---- 7. eval ----------------------------------------------------------------------------
    rule(7, "eval: held-out tasks, HumanEval, decode speed")
    d = out / "eval"
    if not (ev := _done(d)):
        ev = _evaluate(cfg, out, console)
        ev = _finish(d, ev)
    stages["eval"] = ev

    headline = {
        "heldout_pass@1_sft": ev["heldout"]["sft"]["pass@1"],
        "heldout_pass@1_rl": ev["heldout"]["rl"]["pass@1"],
        "heldout_pass@1_greedy_sft": ev["heldout"]["sft"]["pass@1_greedy"],
        "heldout_pass@1_greedy_rl": ev["heldout"]["rl"]["pass@1_greedy"],
        "humaneval_pass@1_rl": ev.get("humaneval", {}).get("pass@1"),
        "flagship_val_bpb": stages["pretrain"].get("val_bpb"),
        "distill_val_loss": stages["distill"]["val"]["val_loss"],
        "scratch_val_loss": stages["scratch"]["val"]["val_loss"],
        "lite_vs_flagship_decode_speedup": ev["decode_tok_s"]["lite"] / ev["decode_tok_s"]["flagship"],
    }
    result = {"headline": headline, "stages": stages, "elapsed_s": time.perf_counter() - t0,
              "budget_min": cfg.budget_min, "next": next_commands(cfg.out_dir)}
    (out / "summary.json").write_text(json.dumps(result, indent=2, default=str))

    rule(8, "report")
    from dsv4.report import write_report

    result["report"] = str(write_report(out))
    return result


def _train_config(cfg: QuickstartConfig, out: Path, run_dir: Path, preset: str, ov: dict, **kw):
    from dsv4.train.config import TrainConfig

    d = dict(preset=preset, out_dir=str(run_dir), data_dir=str(out / "data"), overrides=dict(ov),
             seed=cfg.seed, batch_size=cfg.batch_size, seq_len=cfg.seq_len or 256, eval_every=200,
             save_every=50, progress=cfg.progress, threads=cfg.threads, resume=_resume(run_dir))
    d.update(kw)
    return TrainConfig(**d)


def run_sft(cfg: QuickstartConfig, out: Path, data, minutes: float, max_steps: int = 0) -> dict:
    """The SFT stage: OUT/pretrain -> OUT/sft on the starter families' train split (SFT's half
    of it when RL trains on the other half: `rl["train_part"] == "rl"`), for `minutes` (or
    `max_steps` steps)."""
    from dsv4.train.sft import sft, sft_tasks

    # unique=False: every family keeps its share, however few instances it has
    part = "sft" if cfg.rl.get("train_part") == "rl" else None
    tasks = sft_tasks(n=cfg.sft_tasks, seed=cfg.seed, difficulty=tuple(cfg.difficulty),
                      families=_families(cfg), unique=False, part=part)
    ov = {"max_seq_len": cfg.max_seq_len, **(cfg.overrides or {})}
    tc = _train_config(cfg, out, out / "sft", cfg.preset, ov, time_budget_min=0 if max_steps else minutes,
                       max_steps=max_steps, batch_size=cfg.sft_batch_size, seq_len=cfg.max_seq_len,
                       lr=cfg.sft_lr, muon_lr=cfg.sft_lr * 10 / 3, warmup_steps=10)
    return sft(tc, out / "pretrain", tasks=tasks, data=data, think=cfg.think)


def run_rl(cfg: QuickstartConfig, out: Path, minutes: float, max_steps: int = 0) -> dict:
    """The RL stage: GRPO from OUT/sft into OUT/rl with `cfg.rl`, for `minutes` (or `max_steps`)."""
    from dsv4.train.rl import RLConfig, rl

    d = out / "rl"
    rc = RLConfig(out_dir=str(d), init=str(out / "sft"), time_budget_min=0 if max_steps else minutes,
                  max_steps=max_steps, seed=cfg.seed, threads=cfg.threads, progress=cfg.progress,
                  resume=_resume(d), difficulty_min=cfg.difficulty[0], difficulty_max=cfg.difficulty[1],
                  families=_families(cfg), think=cfg.think, **cfg.rl)
    return rl(rc)


def _families(cfg: QuickstartConfig) -> list | None:
    return list(cfg.families) if cfg.families else None


def _val(ckpt, data, tc) -> dict:
    """Validation loss / bpb of a checkpoint on the corpus (pretraining's evaluator)."""
    import torch

    from dsv4.model.load import load_model
    from dsv4.train import distributed as D
    from dsv4.train.pretrain import evaluate_bpb

    model = load_model(ckpt)
    env = D.DistEnv(rank=0, world_size=1, local_rank=0, device=torch.device("cpu"))
    return evaluate_bpb(model, data, tc.seq_len or model.config.max_seq_len, tc, env)


def _evaluate(cfg: QuickstartConfig, out: Path, console) -> dict:
    from dsv4.eval.tasks import heldout_pass_at_1

    ev: dict = {"heldout": {}}
    for stage in ("sft", "rl"):
        h = ev["heldout"][stage] = heldout_pass_at_1(
            out / stage, n=cfg.heldout_n, max_new_tokens=cfg.eval_new_tokens,
            difficulty=tuple(cfg.difficulty), out=str(out / "eval" / stage), think=cfg.think,
            families=_families(cfg), per_family=cfg.heldout_per_family or None,
            samples=cfg.heldout_samples, batch=HELDOUT_BATCH)
        console.log(f"held-out pass@1 {stage}: {100 * h['pass@1']:.1f}% ({h['protocol']}; "
                    f"greedy {100 * h['pass@1_greedy']:.1f}%; {h['n']} tasks)")
    if cfg.humaneval_limit:
        ev["humaneval"] = _humaneval(out / "rl", cfg, out / "eval" / "humaneval")
        console.log(f"HumanEval pass@1 (first {cfg.humaneval_limit}): {100 * ev['humaneval']['pass@1']:.1f}%")
    ev["decode_tok_s"] = {"flagship": decode_speed(out / "rl", cfg.speed_tokens),
                          "lite": decode_speed(out / "distill" / "onpolicy", cfg.speed_tokens)}
    console.log(f"decode: flagship {ev['decode_tok_s']['flagship']:.1f} tok/s, "
                f"lite {ev['decode_tok_s']['lite']:.1f} tok/s")
    return ev


def _humaneval(ckpt: Path, cfg: QuickstartConfig, out_dir: Path) -> dict:
    """HumanEval pass@1 (greedy, the first `humaneval_limit` problems) through `dsv4 eval humaneval`'s
    checkpoint adapter."""
    import os

    from dsv4.eval.ckpt import CkptSource
    from dsv4.eval.humaneval import EvalSetup, evaluate

    setup = EvalSetup(source="ckpt", n=1, ks=[1], temperature=0.0, max_new_tokens=cfg.eval_new_tokens,
                      limit=cfg.humaneval_limit, ckpt=os.path.abspath(ckpt))
    src = CkptSource(str(ckpt), 0.0, cfg.eval_new_tokens)
    try:
        return evaluate(setup, str(out_dir), generator=src.generator, preflight=src.preflight,
                        workers=os.cpu_count() or 1, progress=False)
    finally:
        src.close()


def next_commands(out_dir: str) -> list[str]:
    return [
        f"dsv4 chat --ckpt {out_dir}/rl                      # talk to the RL model",
        f"dsv4 serve --ckpt {out_dir}/rl --port 8000         # OpenAI-compatible server",
        "lic --provider local                                # the coding agent on that server",
        f"dsv4 eval tasks --ckpt {out_dir}/rl --n 200        # held-out pass@1",
        f"dsv4 eval humaneval --ckpt {out_dir}/rl",
        f"dsv4 report --run {out_dir}                        # the report card again",
        f"dsv4 quickstart --budget 60 --out {out_dir}        # a larger budget extends every stage",
    ]


def format_summary(result: dict, out_dir: str) -> str:
    h, st = result["headline"], result["stages"]
    pre = st["pretrain"]
    f = lambda v, pct=False: "-" if v is None else (f"{100 * v:.1f}%" if pct else f"{v:.3f}")
    lines = [
        "",
        "== dsv4 quickstart: done ==",
        f"pretrain   {pre['params'] / 1e6:.2f}M params, {pre['step']} steps, {pre['tokens_seen']:,} tokens; "
        f"val {f(pre.get('val_bpb'))} bits/byte",
        f"sft        {st['sft']['step']} steps, loss {f(st['sft'].get('final_loss'))}",
        f"rl         {st['rl']['step']} steps, mean reward {f(st['rl'].get('mean_reward'))}",
        f"held-out   pass@1 SFT {f(h['heldout_pass@1_sft'], True)} -> RL {f(h['heldout_pass@1_rl'], True)}",
        f"humaneval  pass@1 {f(h['humaneval_pass@1_rl'], True)} (RL model, first problems only)",
        f"lite       distilled val loss {f(h['distill_val_loss'])} vs scratch {f(h['scratch_val_loss'])}; "
        f"decodes {h['lite_vs_flagship_decode_speedup']:.1f}x faster than the flagship",
        f"report     {result.get('report', out_dir + '/report.md')}",
        f"time       {result['elapsed_s'] / 60:.1f} min (budget {result['budget_min']:.0f})",
        "",
        "next:",
        *("  " + c for c in result["next"]),
    ]
    return "\n".join(lines)
