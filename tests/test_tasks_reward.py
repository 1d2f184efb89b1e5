"""Rewards: correct, wrong, partial, timing-out and hostile completions, and the think format."""

import os
import socket
import textwrap
import threading
import time

import pytest

from dsv4.sandbox import SandboxLimits, SandboxPool
from dsv4.tasks import generate_tasks
from dsv4.tasks.reward import RewardConfig, extract_code, reward, score_batch, think_format_ok

FAST = SandboxLimits(cpu_seconds=2, wall_seconds=3, memory_mb=256, max_processes=16)
CHAT = RewardConfig(style="chat", limits=FAST)


@pytest.fixture(scope="module")
def task():
    # A deterministic task with list output, so that wrong answers are easy to write.
    return generate_tasks("train", 1, seed=0, families=["rotate_list"])[0]


def fenced(code: str) -> str:
    return f"Here you go.\n```python\n{code}\n```<|end|>"


def correct_fn(task) -> str:
    return task.prompt.splitlines()[0] + "\n" + task.solution


def with_body(task, body: str) -> str:
    """A chat answer defining the entry point with `body` (indented 4)."""
    lines = "".join("    " + ln + "\n" for ln in body.strip("\n").splitlines())
    return fenced(task.prompt.splitlines()[0] + "\n" + lines)


def test_correct_chat_and_completion(task):
    r = reward(task, fenced(correct_fn(task)), CHAT)
    assert (r.reward, r.passed, r.status) == (1.0, True, "passed")
    assert r.n_passed == r.n_tests == len(task.tests)
    # completion style: the body continues the prompt; what follows a stop sequence is cut
    r = reward(
        task,
        task.solution + "\n\nprint('trailing junk')\nraise SystemExit(3)\n",
        RewardConfig(style="completion", limits=FAST),
    )
    assert r.passed and r.reward == 1.0
    # a bare body in a chat answer is indented into the prompt's function
    r = reward(task, fenced(textwrap.dedent(task.solution)), CHAT)
    assert r.passed


def test_wrong_and_partial(task):
    wrong = with_body(task, "return nums")
    r = reward(task, wrong, CHAT)
    assert (r.reward, r.passed, r.status) == (0.0, False, "failed")
    assert 0 < r.n_passed < r.n_tests  # the identity is right only on short lists
    part = reward(task, wrong, RewardConfig(style="chat", partial_credit=True, limits=FAST))
    assert part.reward == pytest.approx(r.n_passed / r.n_tests)
    assert reward(task, "I cannot solve this.", CHAT).status == "no_code"
    r = reward(task, with_body(task, "return nums[:"), CHAT)
    assert (r.status, r.reward) == ("exception", 0.0)


def test_timeout_is_zero_and_bounded(task):
    t0 = time.monotonic()
    r = reward(task, with_body(task, "while True:\n    pass"), CHAT)
    assert (r.status, r.reward) == ("timeout", 0.0)
    assert time.monotonic() - t0 < 8


@pytest.mark.parametrize(
    "body",
    [
        "import sys\nsys.exit(0)",  # exit 0 before any test runs
        "import os\nos._exit(0)",
        "raise SystemExit(0)",
    ],
)
def test_early_exit_earns_nothing(task, body):
    r = reward(task, with_body(task, body), CHAT)
    assert r.reward == 0.0 and not r.passed
    # at module level too
    r = reward(task, fenced(body + "\n" + correct_fn(task)), CHAT)
    assert r.reward == 0.0 and not r.passed


def test_reward_hacks_fail(task):
    always_equal = (
        "class _Any(list):\n    def __eq__(self, other):\n        return True\n"
        "    def __ne__(self, other):\n        return False\n"
    )
    r = reward(task, fenced(always_equal + correct_fn(task).split("\n")[0] + "\n    return _Any()\n"), CHAT)
    assert r.reward == 0.0
    fake = (
        'print("DSV4-RESULT-00 [{\\"passed\\": 99, \\"total\\": 99, \\"error\\": null, \\"loaded\\": true}]")'
    )
    r = reward(task, fenced(fake + "\nimport os\nos._exit(0)\n"), CHAT)
    assert r.reward == 0.0
    patch = "import builtins\nbuiltins.isinstance = lambda *a: True\nbuiltins.type = lambda *a: list\n"
    r = reward(task, fenced(patch + correct_fn(task).split("\n")[0] + "\n    return 0\n"), CHAT)
    assert r.reward == 0.0


def test_hostile_completions_harm_nothing(task, tmp_path, monkeypatch):
    canary = tmp_path / "canary.txt"
    canary.write_text("alive")
    secret = "s3cr3t-" + os.urandom(6).hex()
    monkeypatch.setenv("DSV4_TEST_SECRET", secret)
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(5)
    srv.settimeout(0.2)
    port = srv.getsockname()[1]
    accepted = []
    done = threading.Event()

    def serve():
        while not done.is_set():
            try:
                accepted.append(srv.accept())
            except OSError:
                pass

    th = threading.Thread(target=serve, daemon=True)
    th.start()
    hostile = {
        "delete": f"import os, shutil\nos.remove({str(canary)!r})\nshutil.rmtree({str(tmp_path)!r})\n",
        "fork_bomb": "import os\nwhile True:\n    os.fork()\n",
        "secrets": "import os\nraise RuntimeError(repr(dict(os.environ)))\n",
        "network": "import socket\n"
        f"socket.create_connection(('127.0.0.1', {port}), timeout=1).sendall(b'x')\n",
        "memory": "x = bytearray(2 << 30)\n",
    }
    comps = [
        fenced(code + correct_fn(task).split("\n")[0] + "\n    return []\n") for code in hostile.values()
    ]
    t0 = time.monotonic()
    with SandboxPool(2) as pool:
        res = score_batch([task] * len(comps), comps, CHAT, pool=pool)
    assert time.monotonic() - t0 < 20
    for name, r in zip(hostile, res, strict=True):
        assert r.reward == 0.0 and not r.passed, name
        assert secret not in r.detail, name
    assert canary.read_text() == "alive"
    done.set()
    th.join()
    srv.close()
    assert not accepted
    # the machine still works: the pool of a fresh batch runs a correct answer
    assert reward(task, fenced(correct_fn(task)), CHAT).passed


def test_think_format():
    good = "<think>Rotate by slicing.</think>```python\ndef f():\n    return 1\n```<|end|>"
    assert think_format_ok(good)
    # only the turn counts: think tags after its end (or after an EOS) do not spoil it
    assert think_format_ok(good + "<think>more</think>")
    assert think_format_ok(good.replace("<|end|>", "<|endoftext|>") + "</think>")
    assert not think_format_ok("```python\ndef f():\n    return 1\n```")  # no reasoning
    assert not think_format_ok("<think>  </think>```python\nx\n```")  # empty reasoning
    assert not think_format_ok("<think>a</think><think>b</think>```python\nx\n```")
    assert not think_format_ok("<think>a</think>no code here")
    assert not think_format_ok("<think>a```python\nx\n```")  # never closed
    assert think_format_ok("<think>a</think>    return 1\n", style="completion")


def test_format_reward_added_only_with_think(task):
    cfg = RewardConfig(style="chat", think=True, format_weight=0.1, limits=FAST)
    body = fenced(correct_fn(task))
    good = reward(task, "<think>Slice and join.</think>" + body, cfg)
    assert good.passed and good.format_ok and good.reward == pytest.approx(1.1)
    bare = reward(task, body, cfg)
    assert bare.passed and not bare.format_ok and bare.reward == pytest.approx(1.0)
    wrong = reward(task, "<think>Hmm.</think>" + with_body(task, "return nums"), cfg)
    assert wrong.format_ok and wrong.reward == pytest.approx(0.1)


def test_extract_code(task):
    prog = extract_code("<think>x</think>" + fenced(correct_fn(task)), task.prompt, "chat", task.entry_point)
    assert prog.startswith(task.prompt) and prog.rstrip().endswith(task.solution.strip())
    prog = extract_code(task.solution + "\ndef other():\n    pass\n", task.prompt, "completion")
    assert prog == task.prompt + task.solution
    assert extract_code("   ", task.prompt, "completion") == ""
    assert (
        extract_code(task.solution + "<|end|>garbage", task.prompt, "completion")
        == task.prompt + task.solution
    )


def test_score_batch_order_and_mismatch(task):
    comps = [fenced(correct_fn(task)), with_body(task, "return []"), fenced(correct_fn(task))]
    res = score_batch([task] * 3, comps, CHAT, workers=2)
    assert [r.passed for r in res] == [True, False, True]
    # shared interpreters give the same verdicts, also when one completion kills its batch
    comps += ["I give up.", with_body(task, "import os\nos._exit(0)"), fenced(correct_fn(task))]
    res = score_batch([task] * 6, comps, CHAT, workers=2, batch=3)
    assert [r.status for r in res] == ["passed", "failed", "passed", "no_code", "crashed", "passed"]
    assert [r.reward for r in res] == [1.0, 0.0, 1.0, 0.0, 0.0, 1.0]
    from dsv4.errors import UserError

    with pytest.raises(UserError):
        score_batch([task], [], CHAT)
