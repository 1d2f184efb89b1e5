"""Doctest mining (self-contained only, validated in the sandbox) and the `dsv4 tasks` CLI."""

import json
import sysconfig
import textwrap
from pathlib import Path

from dsv4.cli import main
from dsv4.tasks.execute import run_many
from dsv4.tasks.mine import find_candidates, mine_doctests

MODULE = textwrap.dedent('''
    import re
    import os.path

    SCALE = 3


    def double(x):
        """Twice x.

        >>> double(4)
        8
        >>> [double(i) for i in range(3)]
        [0, 2, 4]
        """
        return 2 * x


    def words(s):
        """Split on non-letters.

        >>> words("a-b c")
        ['a', 'b', 'c']
        """
        return [w for w in re.split(r"[^a-z]+", s) if w]


    def scaled(x):
        """Uses a module constant: the constant comes along in the prompt.

        >>> scaled(2)
        6
        """
        return SCALE * x


    def lost(x):
        """Reads a name that nothing binds: not self-contained.

        >>> lost(1)
        1
        """
        return NOWHERE + x


    def liar(x):
        """The doctest is wrong: validation drops it.

        >>> liar(1)
        3
        """
        return x + 1


    def no_doctest(x):
        """Nothing to test."""
        return x


    class K:
        def method(self):
            """>>> K().method()
            1
            """
            return 1
''')


def test_mining_keeps_only_valid_self_contained(tmp_path):
    (tmp_path / "mod.py").write_text(MODULE)
    (tmp_path / "broken.py").write_text("def (:\n")
    cands = {t.entry_point for t in find_candidates([tmp_path])}
    assert cands == {"double", "words", "scaled", "liar"}
    tasks = {t.entry_point: t for t in mine_doctests([tmp_path], workers=2)}
    assert set(tasks) == {"double", "words", "scaled"}
    assert tasks["scaled"].prompt.startswith("SCALE = 3\n\n\ndef scaled(x):")
    w = tasks["words"]
    assert w.prompt.startswith("import re\n") and w.source == "doctest" and w.family == "doctest"
    assert w.split in ("train", "heldout") and len(w.tests) == 1 and w.tests[0].kind == "doctest"
    # the doctests really are the tests: a wrong body fails them
    d = tasks["double"]
    runs = run_many([(d.program, d.tests), (d.prompt + "    return x\n", d.tests)], batch=1)
    assert [r.status for r in runs] == ["passed", "failed"]


def test_mining_stdlib_files():
    std = Path(sysconfig.get_paths()["stdlib"])
    tasks = mine_doctests([std / "difflib.py", std / "statistics.py"], workers=2)
    names = {t.entry_point for t in tasks}
    assert {"IS_LINE_JUNK", "median"} <= names
    assert all(t.source == "doctest" and t.tests for t in tasks)


def test_cli_sample(capsys):
    assert main(["tasks", "sample", "--n", "3", "--seed", "1", "--split", "heldout", "--json"]) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert len(rows) == 3 and all(r["split"] == "heldout" and r["tests"] for r in rows)
    assert main(["tasks", "sample", "--n", "2", "--difficulty", "1"]) == 0
    out = capsys.readouterr().out
    assert out.count("difficulty=1") == 2 and "def " in out


def test_cli_check(capsys):
    assert main(["tasks", "check", "--n", "40", "--workers", "2"]) == 0
    out = capsys.readouterr().out
    assert "generated train       40/40" in out and "generated heldout     40/40" in out


def test_cli_bad_input(capsys):
    assert main(["tasks", "sample", "--n", "-2"]) == 2
    assert "dsv4: error:" in capsys.readouterr().err
    assert main(["tasks", "sample", "--family", "nope"]) == 2
    assert "unknown task family" in capsys.readouterr().err
