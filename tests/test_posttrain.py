"""Post-training: SFT batches train only the answer, one GRPO step moves a real tiny model
toward the rewarded answer, KD is zero for identical models, the CLI refuses bad input,
the report draws what the metrics hold."""

from __future__ import annotations

import copy
import json

import pytest
import torch

from dsv4.cli import main
from dsv4.model.transformer import build_model
from dsv4.train.config import TrainConfig
from dsv4.train.optim import build_optimizers
from dsv4.train.rl import RLConfig, pack_completions, update_step
from dsv4.train.sft import IGNORE, SFTLoader


def test_sft_loader_masks_everything_but_the_answer_and_resumes():
    # three examples: prompt tokens (mask 0) then answer tokens (mask 1)
    ex = [([1, 2, 3, 10, 11], [0, 0, 0, 1, 1]), ([4, 5, 12, 13, 14], [0, 0, 1, 1, 1]),
          ([6, 7, 8, 15], [0, 0, 0, 1])]
    loader = SFTLoader(ex + [([9] * 50, [1] * 50)], batch_size=2, seq_len=8, seed=0, pad_id=0)
    assert loader.n_dropped == 1  # longer than a row: dropped, not cut
    x, y = loader.next_batch()
    assert x.shape == y.shape == (2, 8)
    trained = set(y[y != IGNORE].tolist())
    assert trained <= {10, 11, 12, 13, 14, 15} and trained  # answers only, never prompt or pad
    assert (x[:, 1:] == torch.where(y[:, :-1] == IGNORE, x[:, 1:], y[:, :-1])).all()  # y is x shifted
    state = loader.state_dict()
    a = [loader.next_batch() for _ in range(3)]
    again = SFTLoader(ex, batch_size=2, seq_len=8, seed=0, pad_id=0)
    again.load_state_dict(state)
    b = [again.next_batch() for _ in range(3)]
    assert all(torch.equal(p[0], q[0]) and torch.equal(p[1], q[1]) for p, q in zip(a, b, strict=True))


def test_pack_completions_masks_the_completion_positions():
    x, y, m = pack_completions([[1, 2, 3], [4]], [[7, 8], [9, 9, 9]], pad=0)
    assert x.tolist() == [[1, 2, 3, 7], [4, 9, 9, 9]]
    assert y.tolist() == [[2, 3, 7, 8], [9, 9, 9, 0]]
    assert m.tolist() == [[0, 0, 1, 1], [1, 1, 1, 0]]


def _logp_next(model, prompt, tok):
    with torch.no_grad():
        return torch.log_softmax(model(torch.tensor([prompt])).float()[0, -1], -1)[tok].item()


@pytest.mark.parametrize("kl_coef", [0.0, 0.1])
def test_one_grpo_step_moves_the_policy_toward_the_rewarded_answer(kl_coef):
    """Toy task: after the prompt, answer A earns reward 1, answer B reward 0 (a group of 4)."""
    torch.manual_seed(0)
    model = build_model("tiny", vocab_size=64)
    ref = copy.deepcopy(model).eval() if kl_coef else None
    cfg = RLConfig(init="x", max_steps=1, lr=1e-2, muon_lr=0.02, kl_coef=kl_coef, autocast=False)
    opts = build_optimizers(model, cfg)
    prompt, A, B = [5, 6, 7, 8], 20, 30
    before = _logp_next(model, prompt, A) - _logp_next(model, prompt, B)
    comps = [[A], [B], [A], [B]]
    from dsv4.train.grpo import group_advantages

    adv = group_advantages(torch.tensor([1.0, 0.0, 1.0, 0.0]), 4)
    stats = update_step(model, opts, cfg, [prompt] * 4, comps, 0, torch.device("cpu"), adv,
                        torch.zeros(4, dtype=torch.bool), ref)
    after = _logp_next(model, prompt, A) - _logp_next(model, prompt, B)
    assert after > before + 0.05, (before, after)
    assert stats["tokens"] == 4 and stats["clip_frac"] == 0.0  # ratio 1 at the first update
    assert ("kl" in stats) == bool(kl_coef)


def test_kd_loss_is_zero_for_identical_real_models_and_positive_otherwise():
    from dsv4.train.distill import kd_loss_fn
    from dsv4.train.distill_loss import forward_kl

    torch.manual_seed(0)
    student = build_model("tiny", vocab_size=64)
    teacher = copy.deepcopy(student).eval()
    x = torch.randint(0, 64, (2, 16))
    with torch.no_grad():
        assert forward_kl(student(x), teacher(x)).item() == pytest.approx(0.0, abs=1e-6)
        loss, stats = kd_loss_fn(teacher, 1.0, 2.0)(student, x, torch.roll(x, -1, 1))
        own = student.loss(x, torch.roll(x, -1, 1))[0].item()
    assert stats["kd_loss"] == pytest.approx(0.0, abs=1e-5)
    assert loss.item() == pytest.approx(own, rel=1e-5)  # KD adds nothing; the student's loss is intact
    other = build_model("tiny", vocab_size=64)  # a different init
    with torch.no_grad():
        assert forward_kl(student(x), other(x)).item() > 1e-3


@pytest.mark.parametrize("argv, needle", [
    (["train", "rl", "--init", "/nonexistent", "--out", "OUT", "--max-steps", "1"], "/nonexistent"),
    (["train", "rl", "--init", "x", "--out", "OUT"], "--max-steps or --time-budget"),
    (["train", "sft", "--init", "/nonexistent", "--out", "OUT", "--max-steps", "1", "--n-tasks", "2"],
     "/nonexistent"),
    (["train", "distill", "--teacher", "/nonexistent", "--out", "OUT", "--max-steps", "1"], "/nonexistent"),
    (["eval", "tasks", "--ckpt", "/nonexistent", "--n", "0"], "--n"),
    (["report", "--run", "/nonexistent"], "not a directory"),
])
def test_cli_bad_input_is_one_line_error(tmp_path, capsys, argv, needle):
    argv = [a.replace("OUT", str(tmp_path / "o")) for a in argv]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("dsv4: error:") and needle in err and len(err.strip().splitlines()) == 1


def test_report_draws_the_plots_its_metrics_support(tmp_path):
    run = tmp_path / "run"
    (run / "pretrain").mkdir(parents=True)
    (run / "rl").mkdir()
    with open(run / "pretrain" / "metrics.jsonl", "w") as f:
        for s in range(1, 6):
            f.write(json.dumps({"step": s, "loss": 5.0 - s / 10, "moe_load_max_over_mean_l0": 1.2,
                                "mhc_amax_fwd": 1.0, "engram_gate_l1": 0.5}) + "\n")
        f.write(json.dumps({"step": 5, "val_loss": 4.0, "val_bpb": 2.0}) + "\n")
    with open(run / "rl" / "metrics.jsonl", "w") as f:
        for s in range(1, 4):
            rec = {"step": s, "reward": s / 3, "pass_rate": s / 4, "loss": 0.1, "sample_s": 1}
            f.write(json.dumps(rec) + "\n")
    (run / "summary.json").write_text(json.dumps({"headline": {"heldout_pass@1_rl": 0.25}}))
    assert main(["report", "--run", str(run)]) == 0
    text = (run / "report.md").read_text()
    pngs = {p.name for p in (run / "plots").glob("*.png")}
    assert {"loss.png", "val_bpb.png", "rl_reward.png", "rl_pass_rate.png"} <= pngs
    assert any(n.startswith("moe_load") for n in pngs) and any(n.startswith("engram_gate") for n in pngs)
    assert any(n.startswith("mhc_amax") for n in pngs) and "rl_kl.png" not in pngs  # no KL logged
    assert "heldout_pass@1_rl | 0.25" in text and "| pretrain | 5 |" in text
    for name in pngs:
        assert f"plots/{name}" in text and (run / "plots" / name).read_bytes()[:4] == b"\x89PNG"


def test_rl_config_validation():
    from dsv4.errors import UserError

    with pytest.raises(UserError):
        RLConfig(init="x", max_steps=1, group_size=1).validate()  # std-normalised GRPO needs G >= 2
    with pytest.raises(UserError):
        RLConfig(init="x", max_steps=1, objective="distill").validate()  # no teacher
    TrainConfig.validate(RLConfig(init="x", max_steps=1))


def test_sft_target_is_what_rl_samples_after_its_prompt_and_earns_full_reward():
    """SFT trains, RL prompts and the reward parse one format: the SFT example starts with RL's
    prompt ids, and its assistant part, decoded as RL decodes samples, passes the hidden tests
    with the format bonus."""
    from dsv4.data.tokenizer import Tokenizer
    from dsv4.tasks import generate_tasks
    from dsv4.tasks.render import chat_messages
    from dsv4.tasks.reward import RewardConfig, score_batch
    from dsv4.train.rl import prompt_ids

    tasks = generate_tasks("train", 3, seed=5)
    tok = Tokenizer.train([t.program for t in generate_tasks("train", 40)], 400)
    comps = []
    for t in tasks:
        msgs = chat_messages(t, None, True)
        full, mask = tok.encode_chat(msgs, add_generation_prompt=False, return_mask=True)
        p = prompt_ids(tok, t, True)
        assert full[:len(p)] == p and not any(mask[:len(p)]) and all(mask[len(p):])
        comps.append(tok.decode(full[len(p):]))
    res = score_batch(tasks, comps, RewardConfig(style="chat", think=True), workers=2)
    assert [r.status for r in res] == ["passed"] * 3 and all(r.reward == pytest.approx(1.1) for r in res)
    wrong = score_batch(tasks[:1], [comps[1]], RewardConfig(style="chat", think=True), workers=1)[0]
    assert not wrong.passed and wrong.reward == pytest.approx(0.1)  # format only


def test_starter_family_task_sets_keep_to_their_families_and_split():
    """The quickstart's task sources: balanced SFT tasks (repeats allowed, every family keeps a
    share however small its space), the RL stream and the held-out draw all stay inside the
    starter families, and no held-out instance is ever a training one."""
    from collections import Counter

    from dsv4.data.tokenizer import Tokenizer
    from dsv4.tasks import STARTER_FAMILIES, generate_tasks
    from dsv4.train.rl import TaskStream
    from dsv4.train.sft import sft_tasks

    fams = list(STARTER_FAMILIES)
    balanced = Counter(t.family for t in sft_tasks(n=600, seed=1, families=fams, unique=False))
    assert set(balanced) == set(fams) and min(balanced.values()) > 600 / len(fams) / 2
    unique = Counter(t.family for t in sft_tasks(n=600, seed=1, families=fams))
    assert min(unique.values()) > 600 / len(fams) / 2  # every family has hundreds of instances
    tok = Tokenizer.train([t.program for t in generate_tasks("train", 40)], 400)
    stream = TaskStream(tok, RLConfig(init="x", max_steps=1, families=fams, difficulty_max=2), 10_000)
    drawn = [stream.next()[0] for _ in range(30)]
    assert {t.family for t in drawn} <= set(fams) and all(t.split == "train" for t in drawn)
    held = generate_tasks("heldout", 60, seed=0, families=fams)
    train_keys = {(t.family, json.dumps(t.params, sort_keys=True)) for t in sft_tasks(n=3000, families=fams)}
    assert {t.family for t in held} <= set(fams)
    assert not train_keys & {(t.family, json.dumps(t.params, sort_keys=True)) for t in held}


def test_balanced_heldout_weighs_every_family_alike_and_never_holds_a_train_instance():
    """A fixed count per family (fewer only where a family's held-out part is smaller), where
    the uniform stream lets the largest family fill most of the set; still held-out instances
    only, disjoint from every train draw, and the same for the same seed."""
    from collections import Counter

    from dsv4.tasks import STARTER_FAMILIES, balanced_tasks, generate_tasks, split_of

    fams = list(STARTER_FAMILIES)
    easy = {"difficulty": (1, 2)}
    tasks = balanced_tasks("heldout", 5, seed=0, families=fams, **easy)
    counts = Counter(t.family for t in tasks)
    assert set(counts) == set(fams) and set(counts.values()) == {5}
    # palindrome has 3 instances, one of them held out: the set is short only there
    small = balanced_tasks("heldout", 5, seed=0, families=["count_letter", "palindrome"])
    assert Counter(t.family for t in small) == {"count_letter": 5, "palindrome": 1}
    for fam in fams:  # short only where the family's held-out part has fewer instances
        assert counts[fam] == min(5, len(generate_tasks("heldout", 5, families=[fam], **easy)))
    assert all(t.split == "heldout" and split_of(t.family, t.params) == "heldout" for t in tasks)
    key = lambda t: (t.family, json.dumps(t.params, sort_keys=True))
    train = {key(t) for s in range(3) for t in generate_tasks("train", 400, seed=s, families=fams)}
    assert not train & {key(t) for t in tasks}
    assert [t.task_id for t in tasks] == [t.task_id for t in balanced_tasks("heldout", 5, 0, fams, **easy)]
    # `accept` filters before counting
    short = balanced_tasks("heldout", 3, 0, ["remove_chars"], accept=lambda t: len(t.params["chars"]) == 1)
    assert len(short) == 3 and all(len(t.params["chars"]) == 1 for t in short)


def test_dynamic_sampling_keeps_only_groups_with_reward_variance():
    from dsv4.train.rl import signal_groups

    r = torch.tensor([1.0, 1, 1, 1, 0, 1, 0, 0, 0, 0, 0, 0, 0.5, 0.5, 0.5, 0.25])
    assert signal_groups(r, 4) == [1, 3]  # all-pass and all-fail groups carry no advantage
    assert signal_groups(torch.zeros(8), 4) == []


def test_learnability_stream_draws_the_families_with_signal_and_resumes():
    """Families whose groups keep reward variance get most of the draws, the rest keep a
    floor; tasks stay train-split and unrepeated; the saved state resumes the same draws."""
    from collections import Counter

    from dsv4.data.tokenizer import Tokenizer
    from dsv4.tasks import generate_tasks
    from dsv4.train.curriculum import LearnableStream
    from dsv4.train.rl import task_stream

    fams = ["count_letter", "filter_dict", "remove_chars", "clamp_list"]
    tok = Tokenizer.train([t.program for t in generate_tasks("train", 40)], 400)
    cfg = RLConfig(init="x", max_steps=1, families=fams, difficulty_max=2, task_sampling="learnability")
    stream = task_stream(tok, cfg, 10_000, None)
    assert isinstance(stream, LearnableStream)
    drawn = []
    for _ in range(80):
        task, _ = stream.next()
        drawn.append(task)
        stream.observe(task.family, task.family == "remove_chars")  # only it keeps a signal
    late = Counter(t.family for t in drawn[40:])
    assert late["remove_chars"] > 30 and set(late) - {"remove_chars"}  # most, not all
    assert all(t.split == "train" for t in drawn) and len({t.task_id for t in drawn}) == len(drawn)
    state = stream.state_dict()
    a = [stream.next()[0].task_id for _ in range(10)]
    again = task_stream(tok, cfg, 10_000, {"stream": state})
    assert again.consumed == 80 and [again.next()[0].task_id for _ in range(10)] == a


@pytest.mark.slow
def test_rl_run_with_dynamic_sampling_and_learnability_stream_resumes(tmp_path):
    """A real (tiny, untrained) policy never passes, so no group has reward spread: dynamic
    sampling samples every round it is allowed and skips the update; the learnability
    stream's position survives a resume."""
    from dsv4.tasks import STARTER_FAMILIES
    from dsv4.train import checkpoint as ck
    from dsv4.train.pretrain import pretrain
    from dsv4.train.rl import rl
    from helpers_train import build_small_data, tiny_config

    data = build_small_data(tmp_path / "data")
    pretrain(tiny_config(tmp_path / "pre", data, max_steps=1, eval_every=0, save_every=0,
                         overrides={"max_seq_len": 384}))
    kw = dict(out_dir=str(tmp_path / "rl"), init=str(tmp_path / "pre"), group_size=2, tasks_per_step=2,
              max_new_tokens=8, sample_rounds=3, task_sampling="learnability", think=False, threads=1,
              families=list(STARTER_FAMILIES), difficulty_max=2, save_every=1, progress=False)
    rl(RLConfig(max_steps=1, **kw))
    log = [json.loads(x) for x in (tmp_path / "rl" / "metrics.jsonl").read_text().splitlines()]
    assert log[0]["sample_rounds"] == 3 and log[0]["groups_sampled"] == 6 and "loss" not in log[0]
    first = ck.read_train_state(ck.latest_checkpoint(tmp_path / "rl"))["stream"]
    assert sum(first["counts"].values()) == 6
    rl(RLConfig(max_steps=2, resume=True, **kw))
    state = ck.read_train_state(ck.latest_checkpoint(tmp_path / "rl"))
    assert state["step"] == 2 and sum(state["stream"]["counts"].values()) == 12


def test_starter_families_have_hundreds_of_train_and_enough_heldout_instances():
    """A family with a few dozen instances is memorised by SFT (and its held-out part is
    empty or tiny); the starter families must make the model read the constant from the
    docstring: >= 200 train instances and >= 10 held-out ones each, counted over parameter
    draws (the instance space is the set of parameter dicts a family returns)."""
    import random

    from dsv4.tasks import FAMILIES, STARTER_FAMILIES, split_of
    from dsv4.tasks.task import instance_key

    for name in STARTER_FAMILIES:
        rng, split = random.Random(0), {}
        for _ in range(6000):
            spec = FAMILIES[name].draw(rng)
            split[instance_key(name, spec.params)] = split_of(name, spec.params)
        n_train = sum(s == "train" for s in split.values())
        assert n_train >= 200 and len(split) - n_train >= 10, (name, n_train, len(split) - n_train)


def test_sft_and_rl_draw_from_disjoint_halves_of_the_train_split():
    """RL's prompts (train_part "rl") are instances SFT's examples (part "sft") never held, so
    the RL reward measures solving unseen instances; both halves stay in the train split."""
    from dsv4.data.tokenizer import Tokenizer
    from dsv4.errors import UserError
    from dsv4.tasks import STARTER_FAMILIES, generate_tasks, part_of, split_of
    from dsv4.train.rl import TaskStream
    from dsv4.train.sft import sft_tasks

    fams = list(STARTER_FAMILIES)
    key = lambda t: (t.family, json.dumps(t.params, sort_keys=True))
    seen = sft_tasks(n=2000, seed=0, families=fams, unique=False, part="sft")
    assert all(part_of(t.family, t.params) == "sft" and t.split == "train" for t in seen)
    assert {t.family for t in seen} == set(fams)
    tok = Tokenizer.train([t.program for t in generate_tasks("train", 40)], 400)
    cfg = RLConfig(init="x", max_steps=1, families=fams, difficulty_max=2, train_part="rl")
    stream = TaskStream(tok, cfg, 10_000)
    drawn = [stream.next()[0] for _ in range(200)]
    assert all(part_of(t.family, t.params) == "rl" and split_of(t.family, t.params) == "train" for t in drawn)
    assert not {key(t) for t in seen} & {key(t) for t in drawn}
    whole = generate_tasks("train", 400, families=fams)  # no part: both halves
    assert {part_of(t.family, t.params) for t in whole} == {"sft", "rl"}
    with pytest.raises(UserError):
        generate_tasks("heldout", 5, part="rl")
    with pytest.raises(UserError):
        RLConfig(init="x", max_steps=1, train_part="eval").validate()
