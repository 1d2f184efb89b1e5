"""Held-out task pass@1: the post-training metric that RL is judged by (never HumanEval).

    heldout_pass_at_1(ckpt, per_family=10, samples=8) -> {"pass@1": ..., "pass@1_greedy": ..., ...}

The held-out tasks (a disjoint part of every generator family's instance space,
dsv4.tasks.generate) are answered in chat style with the same prompt as RL training, in
one batched engine run, and scored in the sandbox against their hidden tests.

Which tasks: `per_family` takes that many of each family (fewer where a family's held-out
part is smaller: `balanced_tasks`), so every family weighs the same; without it, the first
`n` of the uniform family stream (where one large family can fill most of the set).

Protocol: the answer to each task is always decoded greedily once (`pass@1_greedy`, exact).
With `samples` = k > 0, each task is also sampled k times at `temperature` / `top_p`
(DeepSeek-R1's pass@1: 0.6 / 0.95) and `pass@1` is the mean pass rate over the k samples
and the tasks (the unbiased pass@1 estimate, c/k per task); with k = 0 `pass@1` is the
greedy one. A greedy answer flips on a small change of the policy, so on a few dozen tasks
the greedy number moves in steps of one task; the sampled mean measures how much
probability the policy puts on passing answers.
"""

from __future__ import annotations

import json
from pathlib import Path


def heldout_pass_at_1(ckpt, n: int = 100, think: bool = True, max_new_tokens: int = 160, seed: int = 0,
                      difficulty: tuple[int, int] | None = None, batch: int = 32, out: str | None = None,
                      workers: int | None = None, families: list | None = None, per_family: int | None = None,
                      samples: int = 0, temperature: float = 0.6, top_p: float = 0.95) -> dict:
    from dsv4.data import specials as S
    from dsv4.eval.passk import pass_at_k
    from dsv4.infer.load import load_engine
    from dsv4.infer.sampling import SamplingParams
    from dsv4.sandbox import SandboxPool
    from dsv4.tasks.reward import RewardConfig, score_batch

    engine = load_engine(ckpt, max_batch=batch)
    tok = engine.tokenizer
    tasks, prompts = _heldout(tok, engine.max_len - max_new_tokens, n, think, seed, difficulty, families,
                              per_family)
    stop = [tok.token_id(S.END)]

    # one engine run for the greedy answers and the samples: the engine queues what does not
    # fit in `batch` slots and starts each request as a slot frees (continuous batching)
    greedy = SamplingParams(max_tokens=max_new_tokens, temperature=0.0, stop_token_ids=stop)
    # seeded per (task, sample): the same checkpoint gives the same estimate
    sp = [SamplingParams(max_tokens=max_new_tokens, temperature=temperature, top_p=top_p,
                         stop_token_ids=stop, seed=seed * 1_000_003 + i)
          for i in range(len(prompts) * samples)]
    repeated = [p for p in prompts for _ in range(samples)]
    outs = engine.generate(prompts + repeated, [greedy] * len(prompts) + sp)
    texts = [tok.decode(o.token_ids) for o in outs]
    with SandboxPool(workers) as pool:
        every = score_batch(tasks + [t for t in tasks for _ in range(samples)], texts,
                            RewardConfig(style="chat", think=think), pool=pool)
    res, sres, texts = every[:len(tasks)], every[len(tasks):], texts[:len(tasks)]
    passed = [float(r.passed) for r in res]
    rates = ([pass_at_k(samples, sum(r.passed for r in sres[i * samples:(i + 1) * samples]), 1)
              for i in range(len(tasks))] if samples else passed)
    summary = {"pass@1": _mean(rates), "pass@1_greedy": _mean(passed), "n": len(passed),
               "protocol": (f"mean pass rate of {samples} samples at temperature {temperature}, top-p {top_p}"
                            if samples else "greedy"),
               "per_family": per_family, "samples": samples,
               "format_rate": _mean([float(r.format_ok) for r in res]),
               "by_family": _by_family(tasks, rates),
               "by_family_greedy": _by_family(tasks, passed),
               "status_counts": {s: sum(r.status == s for r in res) for s in sorted({r.status for r in res})},
               "ckpt": str(ckpt)}
    if out:
        p = Path(out)
        p.mkdir(parents=True, exist_ok=True)
        with open(p / "results.jsonl", "w") as f:
            for t, text, r, rate in zip(tasks, texts, res, rates, strict=True):
                row = {"task_id": t.task_id, "completion": text, "passed": r.passed, "status": r.status,
                       "sampled_pass_rate": rate if samples else None}
                f.write(json.dumps(row) + "\n")
        (p / "summary.json").write_text(json.dumps(summary, indent=2))
    return summary


def _heldout(tok, room: int, n: int, think: bool, seed: int, difficulty, families, per_family):
    """(tasks, prompt ids) of the held-out set; a prompt must leave `max_new_tokens` of room,
    the same filter as training."""
    from dsv4.tasks import balanced_tasks, iter_tasks
    from dsv4.train.rl import prompt_ids

    ids: dict = {}  # task_id -> prompt ids, tokenised once for the filter and the prompts

    def fits(t) -> bool:
        ids[t.task_id] = prompt_ids(tok, t, think)
        return len(ids[t.task_id]) < room

    if per_family:
        tasks = balanced_tasks("heldout", per_family, seed, families, accept=fits, difficulty=difficulty)
    else:
        tasks = []
        for t in iter_tasks("heldout", seed=seed, difficulty=difficulty, families=families):
            if fits(t):
                tasks.append(t)
            if len(tasks) >= n:
                break
    return tasks, [ids[t.task_id] for t in tasks]


def _mean(xs: list) -> float:
    return sum(xs) / max(1, len(xs))


def _by_family(tasks: list, scores: list) -> dict:
    """{family: [passed, n]}: the held-out mix and where the passes come from (with sampling,
    `passed` is the sum of the tasks' sample pass rates)."""
    out: dict = {}
    for t, s in zip(tasks, scores, strict=True):
        n_pass, n = out.get(t.family, (0, 0))
        out[t.family] = (n_pass + s, n + 1)
    tidy = lambda x: int(x) if float(x).is_integer() else round(x, 4)
    return {k: [tidy(p), n] for k, (p, n) in sorted(out.items())}
