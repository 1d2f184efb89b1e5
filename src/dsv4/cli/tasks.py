"""`dsv4 tasks ...`: look at generated tasks, check their reference solutions, mine doctests."""

from __future__ import annotations

import argparse


def register(sub) -> None:
    p = sub.add_parser("tasks", help="verifiable Python tasks for SFT/RL (generated and mined)")
    p.set_defaults(_parser=p)
    ts = p.add_subparsers(dest="tasks_command", metavar="SUBCOMMAND")

    s = ts.add_parser("sample", help="show generated tasks")
    s.add_argument("--split", choices=["train", "heldout"], default="train")
    s.add_argument("--n", type=int, default=3)
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--family", action="append", help="only this family (repeatable)")
    s.add_argument("--difficulty", type=int, choices=[1, 2, 3, 4], help="only this difficulty")
    s.add_argument("--json", action="store_true", help="one JSON object per line (with tests)")
    s.set_defaults(func=_sample)

    c = ts.add_parser("check", help="run every reference solution against its hidden tests in the sandbox")
    c.add_argument("--n", type=int, default=500, help="tasks per split (default 500)")
    c.add_argument("--all", action="store_true", help="the whole instance space of both splits")
    c.add_argument("--seed", type=int, default=0)
    c.add_argument("--workers", type=int, default=None)
    c.add_argument("--mine", nargs="*", metavar="PATH", help="also mine and check doctests under PATHs")
    c.set_defaults(func=_check)

    m = ts.add_parser("mine", help="mine doctested functions into validated tasks (JSON lines)")
    m.add_argument("paths", nargs="*", help="files or directories (default: the Python stdlib)")
    m.add_argument("--out", help="write JSON lines here (default: print a summary)")
    m.add_argument("--workers", type=int, default=None)
    m.set_defaults(func=_mine)


def _stdlib() -> list[str]:
    import sysconfig

    return [sysconfig.get_paths()["stdlib"]]


def _sample(args: argparse.Namespace) -> int:
    import json

    from dsv4.errors import UserError
    from dsv4.tasks import generate_tasks

    if args.n < 0:
        raise UserError("--n must be >= 0")
    diff = (args.difficulty, args.difficulty) if args.difficulty else None
    tasks = generate_tasks(args.split, args.n, seed=args.seed, families=args.family, difficulty=diff)
    for t in tasks:
        if args.json:
            print(json.dumps(t.to_dict()))
            continue
        print(
            f"# {t.task_id}  family={t.family}  difficulty={t.difficulty}  split={t.split}  "
            f"tests={len(t.tests)}"
        )
        print(t.prompt + t.solution)
    return 0


def _check(args: argparse.Namespace) -> int:
    import collections
    import time

    from dsv4.errors import UserError
    from dsv4.tasks import SPLITS, generate_tasks, iter_tasks
    from dsv4.tasks.execute import run_many
    from dsv4.tasks.mine import mine_doctests

    if args.n < 0:
        raise UserError("--n must be >= 0")
    t0 = time.monotonic()
    tasks = []
    for split in SPLITS:
        tasks += list(iter_tasks(split, args.seed)) if args.all else generate_tasks(split, args.n, args.seed)
    gen_s = time.monotonic() - t0
    mined = []
    if args.mine is not None:
        mined = mine_doctests(args.mine or _stdlib(), validate=False, workers=args.workers)
    t1 = time.monotonic()
    runs = run_many([(t.program, t.tests) for t in tasks + mined], workers=args.workers)
    run_s = time.monotonic() - t1
    by = collections.defaultdict(collections.Counter)
    failures = []
    for t, r in zip(tasks + mined, runs, strict=True):
        by[(t.source, t.split)][r.status] += 1
        if r.status != "passed":
            failures.append((t, r))
    for (source, split), c in sorted(by.items()):
        total = sum(c.values())
        print(
            f"{source:9s} {split:7s} {c['passed']:6d}/{total:<6d} passed  "
            + " ".join(f"{k}={v}" for k, v in sorted(c.items()) if k != "passed")
        )
    print(
        f"generated {len(tasks)} tasks in {gen_s:.1f}s; ran {len(runs)} reference solutions in "
        f"{run_s:.1f}s ({1000 * run_s / max(1, len(runs)):.1f} ms each)"
    )
    for t, r in failures[:10]:
        print(f"FAIL {t.task_id}: {r.status} {r.detail[:200]}")
    # Mined candidates may fail (that is what validation filters); generated ones must not.
    return 1 if any(t.source == "generated" for t, _ in failures) else 0


def _mine(args: argparse.Namespace) -> int:
    import collections
    import time

    from dsv4.tasks.mine import mine_doctests
    from dsv4.tasks.task import save_tasks

    t0 = time.monotonic()
    tasks = mine_doctests(args.paths or _stdlib(), workers=args.workers)
    splits = collections.Counter(t.split for t in tasks)
    print(
        f"mined {len(tasks)} validated tasks ({splits['train']} train, {splits['heldout']} heldout) "
        f"in {time.monotonic() - t0:.1f}s"
    )
    if args.out:
        save_tasks(args.out, tasks)
        print(f"wrote {args.out}")
    return 0
