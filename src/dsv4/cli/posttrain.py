"""Post-training commands: `dsv4 train sft|rl|distill`, `dsv4 eval tasks`, `dsv4 report`.

`register_stages` is called by `dsv4.cli.train` (the `train` parser lives there) and
`register_eval` by `dsv4.cli.eval`; `register` (in COMMAND_MODULES) adds `dsv4 report`.
Argparse only here; the work is in dsv4.train.{sft,rl,distill}, dsv4.eval.tasks, dsv4.report.
"""

from __future__ import annotations

import argparse


def _common(s: argparse.ArgumentParser, lr: float | None = None) -> None:
    s.add_argument("--out", required=True, help="run directory: checkpoints + metrics.jsonl")
    s.add_argument("--max-steps", type=int, default=0, help="total optimizer steps of the run")
    s.add_argument("--time-budget", type=float, default=0.0, metavar="MIN", help="wall-clock minutes")
    s.add_argument("--resume", action="store_true", help="continue the run in --out")
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--batch-size", type=int, default=None, help="sequences per step")
    s.add_argument("--lr", type=float, default=lr, help="AdamW peak lr")
    s.add_argument("--muon-lr", type=float, default=None, help="Muon peak lr")
    s.add_argument("--save-every", type=int, default=None, help="steps between checkpoints")
    s.add_argument("--threads", type=int, default=None, help="torch threads (default: all cores)")
    s.add_argument("--device", choices=["auto", "cpu", "cuda"], default=None)
    s.add_argument("--no-progress", action="store_true", help="no progress bar")


def _apply(cfg, args, fields=("batch_size", "lr", "muon_lr", "save_every", "threads", "device")):
    for f in fields:
        v = getattr(args, f, None)
        if v is not None:
            setattr(cfg, f, v)
    cfg.validate()
    return cfg


def register_stages(tsub) -> None:
    from dsv4.tasks.generate import TRAIN_PARTS

    s = tsub.add_parser("sft", help="chat SFT on tasks with reference solutions (assistant-only loss)",
                        description="Supervised fine-tuning of --init on chat-formatted verifiable tasks "
                        "(generated train split, optional <think> plans, optional mined doctests), loss "
                        "on the assistant's tokens only; the pretraining loop (checkpoints, --resume).")
    s.add_argument("--init", required=True, metavar="CKPT", help="pretrained checkpoint (or run dir)")
    s.add_argument("--data", default="tasks", help="`tasks` (generated) or a JSONL file of tasks")
    s.add_argument("--n-tasks", type=int, default=2000, help="generated tasks (default 2000)")
    s.add_argument("--mine", nargs="*", metavar="PATH", help="also mine doctest tasks from these sources")
    s.add_argument("--no-think", action="store_true", help="answers without <think> plans")
    s.add_argument("--data-dir", default="", help="corpus data dir for val bits-per-byte (default: init's)")
    s.add_argument("--seq-len", type=int, default=None, help="tokens per row (default: model max_seq_len)")
    _common(s, lr=3e-3)
    s.set_defaults(func=_sft)

    r = tsub.add_parser("rl", help="GRPO with unit-test rewards from the sandbox",
                        description="GRPO: G samples per task from the engine, sandboxed test rewards "
                        "+ format reward, group advantages, clip-higher, optional k3 KL, DAPO token "
                        "aggregation, truncated samples masked. Logs reward/pass rate/length/entropy/KL.")
    r.add_argument("--init", required=True, metavar="CKPT", help="the SFT checkpoint")
    r.add_argument("--group-size", type=int, default=8, help="G samples per task (default 8)")
    r.add_argument("--tasks-per-step", type=int, default=4)
    r.add_argument("--max-new-tokens", type=int, default=128)
    r.add_argument("--temperature", type=float, default=1.0)
    r.add_argument("--kl-coef", type=float, default=0.0, help="k3 KL to the init policy (0: off)")
    r.add_argument("--eps-low", type=float, default=0.2)
    r.add_argument("--eps-high", type=float, default=0.28, help="clip-higher (DAPO)")
    r.add_argument("--no-std-norm", action="store_true", help="Dr.GRPO: mean-centred advantages only")
    r.add_argument("--loss-agg", default="token-mean",
                   choices=["token-mean", "seq-mean-token-mean", "seq-mean-token-sum-norm"])
    r.add_argument("--no-think", action="store_true", help="no <think> format (and no format reward)")
    r.add_argument("--difficulty", type=int, nargs=2, default=[1, 4], metavar=("MIN", "MAX"))
    r.add_argument("--sample-rounds", type=int, default=1,
                   help="DAPO dynamic sampling: up to this many sampling rounds per step, keeping only "
                   "groups with reward variance (default 1: off)")
    r.add_argument("--sandbox-batch", type=int, default=1, help="completions per sandboxed interpreter")
    r.add_argument("--task-sampling", default="uniform", choices=["uniform", "learnability"],
                   help="draw task families uniformly, or more from those whose groups still have "
                   "reward variance")
    r.add_argument("--updates-per-batch", type=int, default=1,
                   help="GRPO's mu: optimizer updates per sampled batch, clipped against the sampling "
                   "policy (default 1: on-policy)")
    r.add_argument("--minibatches", type=int, default=1, help="optimizer steps per update, one per slice")
    r.add_argument("--train-part", default="", choices=["", *TRAIN_PARTS],
                   help="train tasks from this half of the train split only (default: all of it)")
    _common(r)
    r.set_defaults(func=_rl)

    d = tsub.add_parser("distill", help="distil a teacher into a lite student (logit KD and/or on-policy)",
                        description="Off-policy logit KD on the corpus (forward KL) and/or on-policy "
                        "distillation (student samples, per-token reverse KL to the teacher).")
    d.add_argument("--teacher", required=True, metavar="CKPT")
    d.add_argument("--offpolicy-teacher", default="", metavar="CKPT",
                   help="teacher of the corpus KD (default --teacher), e.g. the pretrained model")
    d.add_argument("--student-preset", default="lite")
    d.add_argument("--mode", choices=["offpolicy", "onpolicy", "both"], default="both")
    d.add_argument("--init", metavar="CKPT", help="student to start from (--mode onpolicy)")
    d.add_argument("--data", default="", help="the corpus data dir (default: the teacher's)")
    d.add_argument("--kd-coef", type=float, default=1.0)
    d.add_argument("--kd-temperature", type=float, default=1.0)
    d.add_argument("--seq-len", type=int, default=None)
    _common(d)
    d.set_defaults(func=_distill)


def register_eval(esub) -> None:
    p = esub.add_parser("tasks", help="held-out generated-task pass@1 (greedy, or sampled; sandboxed)")
    p.add_argument("--ckpt", required=True, metavar="DIR")
    p.add_argument("--n", type=int, default=100, help="held-out tasks (default 100)")
    p.add_argument("--per-family", type=int, default=0,
                   help="take this many held-out tasks of each family instead of the first --n (0: off)")
    p.add_argument("--samples", type=int, default=0,
                   help="pass@1 = mean pass rate over this many samples per task (0: greedy only)")
    p.add_argument("--temperature", type=float, default=0.6)
    p.add_argument("--top-p", type=float, default=0.95)
    p.add_argument("--max-new-tokens", type=int, default=160)
    p.add_argument("--no-think", action="store_true")
    p.add_argument("--out", default=None, help="write results.jsonl + summary.json here")
    p.set_defaults(func=_eval_tasks)


def register(sub) -> None:
    p = sub.add_parser("report", help="markdown report card with PNG plots for a run directory")
    p.add_argument("--run", required=True, metavar="DIR", help="a quickstart or training run directory")
    p.add_argument("--out", default=None, help="report file (default DIR/report.md)")
    p.set_defaults(func=_report)


def _tcfg(args, **kw):
    from dsv4.train.config import TrainConfig

    cfg = TrainConfig(out_dir=args.out, max_steps=args.max_steps, time_budget_min=args.time_budget,
                      seed=args.seed, resume=args.resume, progress=not args.no_progress, **kw)
    if getattr(args, "seq_len", None) is not None:
        cfg.seq_len = args.seq_len
    return _apply(cfg, args)


def _sft(args) -> int:
    from dsv4.train.sft import sft, sft_tasks

    cfg = _tcfg(args, data_dir=args.data_dir or "", warmup_steps=10, eval_every=0)
    tasks = sft_tasks(args.data, n=args.n_tasks, seed=args.seed, mine_from=args.mine)
    s = sft(cfg, args.init, tasks=tasks, think=not args.no_think)
    print(f"step {s['step']}, loss {s['final_loss']:.4f}, val_bpb {s['val_bpb']:.4f} -> {s['checkpoint']}")
    return 0


def _rl(args) -> int:
    from dsv4.train.rl import RLConfig, rl

    cfg = RLConfig(out_dir=args.out, init=args.init, max_steps=args.max_steps,
                   time_budget_min=args.time_budget,
                   seed=args.seed, resume=args.resume, progress=not args.no_progress,
                   group_size=args.group_size, tasks_per_step=args.tasks_per_step,
                   max_new_tokens=args.max_new_tokens, temperature=args.temperature, kl_coef=args.kl_coef,
                   eps_low=args.eps_low, eps_high=args.eps_high, std_norm=not args.no_std_norm,
                   loss_agg=args.loss_agg, think=not args.no_think,
                   difficulty_min=args.difficulty[0], difficulty_max=args.difficulty[1],
                   sample_rounds=args.sample_rounds, sandbox_batch=args.sandbox_batch,
                   task_sampling=args.task_sampling, updates_per_batch=args.updates_per_batch,
                   minibatches=args.minibatches, train_part=args.train_part)
    s = rl(_apply(cfg, args))
    print(f"step {s['step']}, mean reward {s['mean_reward'] or 0:.3f}, "
          f"mean pass rate {s['mean_pass_rate'] or 0:.3f} -> {s['checkpoint']}")
    return 0


def _distill(args) -> int:
    from dsv4.train.distill import DistillConfig, distill

    t = _tcfg(args, data_dir=args.data or "")
    cfg = DistillConfig(teacher=args.teacher, offpolicy_teacher=args.offpolicy_teacher, out_dir=args.out,
                        mode=args.mode,
                        student_preset=args.student_preset, kd_coef=args.kd_coef,
                        temperature=args.kd_temperature, train=t,
                        onpolicy={"init": args.init} if args.init else {})
    s = distill(cfg)
    off = s.get("offpolicy") or {}
    if off.get("val_loss") is not None:
        print(f"off-policy KD: val_loss {off['val_loss']:.4f}, val_bpb {off['val_bpb']:.4f}")
    on = s.get("onpolicy") or {}
    if on.get("mean_reverse_kl") is not None:
        print(f"on-policy: mean reverse KL {on['mean_reverse_kl']:.4f}")
    print(f"student -> {s['checkpoint']}")
    return 0


def _eval_tasks(args) -> int:
    from dsv4.errors import UserError
    from dsv4.eval.tasks import heldout_pass_at_1

    if args.n < 1 or args.per_family < 0 or args.samples < 0:
        raise UserError("--n must be >= 1, --per-family and --samples >= 0")
    s = heldout_pass_at_1(args.ckpt, n=args.n, think=not args.no_think, max_new_tokens=args.max_new_tokens,
                          out=args.out, per_family=args.per_family or None, samples=args.samples,
                          temperature=args.temperature, top_p=args.top_p)
    print(f"held-out tasks: pass@1 {100 * s['pass@1']:.1f}% ({s['protocol']}; greedy "
          f"{100 * s['pass@1_greedy']:.1f}%) over {s['n']} tasks "
          f"(format {100 * s['format_rate']:.0f}%; {s['status_counts']})")
    return 0


def _report(args) -> int:
    from dsv4.report import write_report

    path = write_report(args.run, args.out)
    print(f"report -> {path}")
    return 0
