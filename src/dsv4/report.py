"""`dsv4 report --run DIR`: a markdown report card with PNG plots for a (quickstart) run.

It walks DIR for `metrics.jsonl` files (one per training stage: pretrain, sft, rl,
distill/offpolicy, distill/onpolicy, scratch_lite, ...) and plots what they contain:
training and validation loss per stage, RL reward / pass rate / length / entropy / KL,
MoE expert load (max over mean per layer), mHC signal gain (amax forward/backward) and
Engram gate activity — each plot only when its metrics are present. The quickstart's
`summary.json` (held-out pass@1, HumanEval, val bpb, decode speed) becomes the table at
the top. matplotlib is imported lazily with the Agg backend (no display needed).
"""

from __future__ import annotations

import json
from pathlib import Path

from dsv4.errors import UserError


def _read(path: Path) -> list[dict]:
    from dsv4.train.metrics import read_metrics

    return read_metrics(path)


def find_stages(run: Path) -> dict[str, list[dict]]:
    """{stage name (its dir relative to run): metric records} for every metrics.jsonl under run."""
    stages = {}
    for p in sorted(run.rglob("metrics.jsonl")):
        rel = p.parent.relative_to(run).as_posix()
        stages[rel or run.name] = _read(p)
    return stages


def _series(records: list[dict], key: str) -> tuple[list, list]:
    xs, ys = [], []
    for r in records:
        if key in r and isinstance(r[key], (int, float)) and "step" in r:
            xs.append(r["step"])
            ys.append(r[key])
    return xs, ys


def _plot(path: Path, title: str, lines: list[tuple[str, list, list]], ylabel: str, logy: bool = False):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 3.6), dpi=100)
    for label, xs, ys in lines:
        ax.plot(xs, ys, label=label, linewidth=1.2)
    ax.set_title(title)
    ax.set_xlabel("step")
    ax.set_ylabel(ylabel)
    if logy:
        ax.set_yscale("log")
    ax.grid(alpha=0.3)
    if len(lines) > 1:
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def _smooth(ys: list, k: int = 5) -> list:
    out, acc = [], []
    for y in ys:
        acc = (acc + [y])[-k:]
        out.append(sum(acc) / len(acc))
    return out


def _on_policy(records: list[dict]) -> bool:
    return any("sample_s" in r for r in records)


def plot_specs(stages: dict[str, list[dict]]) -> list[tuple[str, str, list, str]]:
    """(file name, title, lines, y label) of every plot the metrics support."""
    specs = []

    def lines_for(key: str, smooth: bool = False, only: str | None = None) -> list:
        out = []
        for name, recs in stages.items():
            if only and only not in name:
                continue
            xs, ys = _series(recs, key)
            if xs:
                out.append((name, xs, _smooth(ys) if smooth else ys))
        return out

    for fname, title, key, ylabel, smooth in (
        ("loss.png", "training loss", "loss", "loss (nats/token)", True),
        ("val_bpb.png", "validation bits per byte", "val_bpb", "bits/byte", False),
        ("kd_loss.png", "distillation: forward KL to the teacher", "kd_loss", "KL (nats/token)", True),
    ):
        # on-policy stages' "loss" is a surrogate objective, not comparable with the LM losses
        lines = [ln for ln in lines_for(key, smooth) if not (key == "loss" and _on_policy(stages[ln[0]]))]
        if lines:
            specs.append((fname, title, lines, ylabel))
    for key, ylabel in (("reward", "mean reward"), ("pass_rate", "pass rate"), ("length", "tokens"),
                        ("entropy", "nats/token"), ("kl", "k3 KL"), ("reverse_kl", "reverse KL")):
        lines = [(f"{n} {key}", xs, ys) for n, xs, ys in lines_for(key, smooth=True)]
        if lines:
            specs.append((f"rl_{key}.png", f"on-policy: {key} (smoothed)", lines, ylabel))
    for prefix, title, ylabel in (("moe_load_max_over_mean_l", "MoE expert load (max / mean) per layer",
                                   "max/mean load"),
                                  ("engram_gate", "Engram gate activity", "gate"),
                                  ("mhc_amax", "mHC signal gain (amax)", "gain")):
        for name, recs in stages.items():
            keys = sorted({k for r in recs for k in r if k.startswith(prefix)})
            lines = [(k, *_series(recs, k)) for k in keys]
            lines = [ln for ln in lines if ln[1]]
            if lines:
                safe = name.replace("/", "_")
                specs.append((f"{prefix.rstrip('_l')}_{safe}.png", f"{title} — {name}", lines, ylabel))
    return specs


def _table(summary: dict) -> list[str]:
    rows = [(k, v) for k, v in summary.get("headline", {}).items()]
    if not rows:
        return []
    out = ["| metric | value |", "|---|---|"]
    for k, v in rows:
        out.append(f"| {k} | {v:.4g} |" if isinstance(v, float) else f"| {k} | {v} |")
    return out + [""]


def write_report(run_dir: str | Path, out: str | Path | None = None) -> Path:
    """Write DIR/report.md and DIR/plots/*.png; returns the report path."""
    run = Path(run_dir)
    if not run.is_dir():
        raise UserError(f"--run {run} is not a directory")
    stages = find_stages(run)
    if not stages:
        raise UserError(f"no metrics.jsonl under {run}: nothing to report")
    report = Path(out) if out else run / "report.md"
    plots = report.parent / "plots"
    plots.mkdir(parents=True, exist_ok=True)
    summary_path = run / "summary.json"
    summary = json.loads(summary_path.read_text()) if summary_path.exists() else {}
    lines = [f"# dsv4 report card: `{run}`", ""]
    lines += _table(summary)
    lines += ["## Stages", "", "| stage | steps | first loss | last loss | last val bpb |",
              "|---|---|---|---|---|"]
    for name, recs in stages.items():
        losses = [r["loss"] for r in recs if isinstance(r.get("loss"), (int, float))]
        bpbs = [r["val_bpb"] for r in recs if "val_bpb" in r]
        steps = max((r.get("step", 0) for r in recs), default=0)
        f = lambda v: f"{v:.4f}" if v is not None else "-"
        lines.append(f"| {name} | {steps} | {f(losses[0] if losses else None)} | "
                     f"{f(losses[-1] if losses else None)} | {f(bpbs[-1] if bpbs else None)} |")
    lines += ["", "## Plots", ""]
    for fname, title, plot_lines, ylabel in plot_specs(stages):
        _plot(plots / fname, title, plot_lines, ylabel)
        lines += [f"### {title}", "", f"![{title}](plots/{fname})", ""]
    if summary.get("next"):
        lines += ["## Next", "", "```", *summary["next"], "```", ""]
    report.write_text("\n".join(lines))
    return report
