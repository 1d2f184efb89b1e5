"""Post-training results of a quickstart run (issue 7), as JSON.

    dsv4 quickstart --budget 20 --out runs/quickstart          # the default-budget run
    PYTHONPATH=src python benchmarks/posttrain.py --run runs/quickstart \\
        --command "dsv4 quickstart --budget 20 --out runs/quickstart"

Reads DIR/summary.json (written by the quickstart) and writes
benchmarks/results/posttrain.json with the headline numbers: held-out task pass@1 after SFT
and after RL (in the eval's protocol, `heldout_protocol`, and greedy), validation loss of the
distilled lite model and of a lite model trained from scratch on the same compute, and the
lite/flagship single-stream decode speed ratio, plus the targets and whether each was met
(reported as measured, met or not).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
from pathlib import Path


def _plan(run: str) -> dict | None:
    """The minutes the quickstart gave each training stage (DIR/quickstart.json)."""
    p = Path(run) / "quickstart.json"
    return json.loads(p.read_text()).get("stage_min") if p.exists() else None


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--run", required=True, help="a finished quickstart directory")
    ap.add_argument("--command", required=True, help="the command that produced the run")
    ap.add_argument("--out", default="benchmarks/results/posttrain.json")
    ap.add_argument("--note", default="", help="conditions of the run (machine load, restarts)")
    args = ap.parse_args()
    summary = json.loads((Path(args.run) / "summary.json").read_text())
    h, st = summary["headline"], summary["stages"]
    result = {
        "command": args.command,
        "heldout_pass@1_sft": h["heldout_pass@1_sft"],
        "heldout_pass@1_rl": h["heldout_pass@1_rl"],
        # the headline pass@1 follows the eval's protocol (below); greedy is always recorded too
        "heldout_pass@1_greedy_sft": h.get("heldout_pass@1_greedy_sft"),
        "heldout_pass@1_greedy_rl": h.get("heldout_pass@1_greedy_rl"),
        "heldout_protocol": st["eval"]["heldout"]["rl"].get("protocol", "greedy"),
        "heldout_per_family": st["eval"]["heldout"]["rl"].get("per_family"),
        "distill_val_loss": h["distill_val_loss"],
        "scratch_val_loss": h["scratch_val_loss"],
        "lite_vs_flagship_decode_speedup": h["lite_vs_flagship_decode_speedup"],
        "humaneval_pass@1_rl": h.get("humaneval_pass@1_rl"),
        "flagship_val_bpb": h.get("flagship_val_bpb"),
        "heldout_n": st["eval"]["heldout"]["rl"]["n"],
        # {family: [passed, n]} per model: which families the held-out set holds, where passes come from
        "heldout_by_family": {m: st["eval"]["heldout"][m].get("by_family") for m in ("sft", "rl")},
        "heldout_by_family_greedy": {m: st["eval"]["heldout"][m].get("by_family_greedy")
                                     for m in ("sft", "rl")},
        "steps": {k: st[k].get("step") for k in ("pretrain", "sft", "rl", "scratch")},
        "distill_steps": {k: (st["distill"].get(k) or {}).get("step") for k in ("offpolicy", "onpolicy")},
        "stage_min": _plan(args.run),
        "decode_tok_s": st["eval"]["decode_tok_s"],
        "elapsed_min_last_session": summary["elapsed_s"] / 60,
        "budget_min": summary["budget_min"],
        "targets_met": {
            "rl_plus_0.15_over_sft": h["heldout_pass@1_rl"] - h["heldout_pass@1_sft"] >= 0.15,
            "distilled_beats_scratch": h["distill_val_loss"] < h["scratch_val_loss"],
            "lite_decodes_3x_faster": h["lite_vs_flagship_decode_speedup"] >= 3.0,
        },
        "note": args.note,
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count(),
                    "load_avg_at_write": os.getloadavg()[0]},
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
