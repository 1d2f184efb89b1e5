"""Held-out task pass@1: the post-training metric that RL is judged by (never HumanEval).

    heldout_pass_at_1(ckpt, n=100) -> {"pass@1": ..., "format_rate": ..., "n": ...}

The first `n` held-out tasks (a disjoint part of every generator family's instance space,
dsv4.tasks.generate) are answered in chat style with the same prompt as RL training,
greedily (temperature 0, so pass@1 is exact, not estimated), in one batched engine run,
and scored in the sandbox against their hidden tests.
"""

from __future__ import annotations

import json
from pathlib import Path


def heldout_pass_at_1(ckpt, n: int = 100, think: bool = True, max_new_tokens: int = 160, seed: int = 0,
                      difficulty: tuple[int, int] | None = None, batch: int = 32, out: str | None = None,
                      workers: int | None = None, families: list | None = None) -> dict:
    from dsv4.data import specials as S
    from dsv4.infer.load import load_engine
    from dsv4.infer.sampling import SamplingParams
    from dsv4.sandbox import SandboxPool
    from dsv4.tasks import iter_tasks
    from dsv4.tasks.reward import RewardConfig, score_batch
    from dsv4.train.rl import prompt_ids

    engine = load_engine(ckpt, max_batch=batch)
    tok = engine.tokenizer
    room = engine.max_len - max_new_tokens
    tasks, prompts = [], []
    for t in iter_tasks("heldout", seed=seed, difficulty=difficulty, families=families):
        ids = prompt_ids(tok, t, think)
        if len(ids) < room:  # the same filter as training: the answer must fit
            tasks.append(t)
            prompts.append(ids)
        if len(tasks) >= n:
            break
    params = SamplingParams(max_tokens=max_new_tokens, temperature=0.0, stop_token_ids=[tok.token_id(S.END)])
    texts = []
    for i in range(0, len(prompts), batch):
        texts += [tok.decode(o.token_ids) for o in engine.generate(prompts[i:i + batch], params)]
    with SandboxPool(workers) as pool:
        res = score_batch(tasks, texts, RewardConfig(style="chat", think=think), pool=pool)
    passed = [r.passed for r in res]
    summary = {"pass@1": sum(passed) / max(1, len(passed)), "n": len(passed),
               "format_rate": sum(r.format_ok for r in res) / max(1, len(res)),
               "by_family": _by_family(tasks, passed),
               "status_counts": {s: sum(r.status == s for r in res) for s in sorted({r.status for r in res})},
               "ckpt": str(ckpt)}
    if out:
        p = Path(out)
        p.mkdir(parents=True, exist_ok=True)
        with open(p / "results.jsonl", "w") as f:
            for t, text, r in zip(tasks, texts, res, strict=True):
                f.write(json.dumps({"task_id": t.task_id, "completion": text, "passed": r.passed,
                                    "status": r.status}) + "\n")
        (p / "summary.json").write_text(json.dumps(summary, indent=2))
    return summary


def _by_family(tasks: list, passed: list) -> dict:
    """{family: [passed, n]}: the held-out mix and where the passes come from."""
    out: dict = {}
    for t, p in zip(tasks, passed, strict=True):
        n_pass, n = out.get(t.family, (0, 0))
        out[t.family] = (n_pass + int(p), n + 1)
    return {k: list(v) for k, v in sorted(out.items())}
