"""LIC eval tasks: small real jobs in throwaway git repositories.

Each task gives the agent a repository (`files`) and a request (`prompt`). After the
agent finishes, `hidden` files are written over the repository (so editing the visible
tests cannot fake a pass) and `check` runs in the sandbox; exit code 0 means solved.
`solution` holds reference files: the tests check that the untouched repository fails
and the reference passes, so every task can be scored both ways.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class Task:
    name: str
    prompt: str
    files: dict[str, str]
    check: str
    hidden: dict[str, str] = field(default_factory=dict)
    solution: dict[str, str] = field(default_factory=dict)  # a reference fix: the check must pass with it


STATS = '''"""Small statistics helpers."""


def mean(xs):
    return sum(xs) // len(xs)


def median(xs):
    s = sorted(xs)
    mid = len(s) // 2
    return s[mid] if len(s) % 2 else (s[mid - 1] + s[mid]) / 2
'''

USERS = '''USERS = {1: "ada", 2: "linus"}


def get_usr(uid):
    """Return the name of user `uid`, or None."""
    return USERS.get(uid)
'''

GREET = '''"""Print a greeting."""

import argparse


def build_parser():
    p = argparse.ArgumentParser(prog="greet")
    p.add_argument("--name", default="world")
    return p


def greeting(name):
    return f"Hello, {name}!"


def main(argv=None):
    args = build_parser().parse_args(argv)
    print(greeting(args.name))


if __name__ == "__main__":
    main()
'''

INI = '''"""Parse `key = value` settings files."""


def parse(text):
    """Return a dict of settings. Lines starting with '#' are comments; blank lines are skipped;
    whitespace around keys and values is stripped; a later key overrides an earlier one."""
    out = {}
    for line in text.splitlines():
        if line.startswith("#"):
            continue
        key, value = line.split("=")
        out[key] = value
    return out
'''

# Plugin autoloading costs ~1 s of CPU per pytest start here; the checks need no plugins.
PYTEST = "PYTEST_DISABLE_PLUGIN_AUTOLOAD=1 python -m pytest -q -p no:cacheprovider"

TASKS = [
    Task(
        name="fix_failing_test",
        prompt="The test suite fails. Find the bug in the code (not in the tests) and fix it. "
        "Run the tests with `python -m pytest -q` to check.",
        files={
            "stats.py": STATS,
            "test_stats.py": "from stats import mean, median\n\n\n"
            "def test_mean():\n    assert mean([1, 2]) == 1.5\n\n\n"
            "def test_median():\n    assert median([3, 1, 2]) == 2\n",
        },
        hidden={
            "test_hidden.py": "from stats import mean, median\n\n\n"
            "def test_mean():\n    assert mean([1, 2]) == 1.5\n    assert mean([2, 2, 5]) == 3\n\n\n"
            "def test_median():\n    assert median([4, 1, 3, 2]) == 2.5\n"
        },
        solution={"stats.py": STATS.replace("sum(xs) // len(xs)", "sum(xs) / len(xs)")},
        check=f"{PYTEST} test_hidden.py",
    ),
    Task(
        name="rename_function",
        prompt="Rename the function `get_usr` to `get_user` everywhere in this repository (definition, "
        "imports and calls). Keep everything working.",
        files={
            "users.py": USERS,
            "report.py": "from users import get_usr\n\n\n"
            "def report(uid):\n    return f'user {uid}: {get_usr(uid)}'\n",
            "cli.py": "import sys\n\nimport users\n\nif __name__ == '__main__':\n"
            "    print(users.get_usr(int(sys.argv[1])))\n",
        },
        solution={
            "users.py": USERS.replace("get_usr", "get_user"),
            "report.py": "from users import get_user\n\n\n"
            "def report(uid):\n    return f'user {uid}: {get_user(uid)}'\n",
            "cli.py": "import sys\n\nimport users\n\nif __name__ == '__main__':\n"
            "    print(users.get_user(int(sys.argv[1])))\n",
        },
        check='! grep -rn get_usr --include=*.py . && python -c "from users import get_user; '
        "from report import report; assert report(1) == 'user 1: ada'\" && "
        'test "$(python cli.py 2)" = linus',
    ),
    Task(
        name="add_cli_flag",
        prompt="Add a `--shout` flag to greet.py that prints the greeting in upper case, and add a "
        "pytest test for it in test_greet.py.",
        files={
            "greet.py": GREET,
            "test_greet.py": "from greet import greeting\n\n\ndef test_greeting():\n"
            "    assert greeting('bob') == 'Hello, bob!'\n",
        },
        solution={
            "greet.py": GREET.replace(
                '    p.add_argument("--name", default="world")\n',
                '    p.add_argument("--name", default="world")\n'
                '    p.add_argument("--shout", action="store_true")\n',
            ).replace(
                "    print(greeting(args.name))",
                "    text = greeting(args.name)\n    print(text.upper() if args.shout else text)",
            ),
            "test_greet.py": "from greet import greeting, main\n\n\ndef test_shout(capsys):\n"
            "    main(['--name', 'bob', '--shout'])\n"
            "    assert capsys.readouterr().out == 'HELLO, BOB!\\n'\n",
        },
        check="test \"$(python greet.py --name bob --shout)\" = 'HELLO, BOB!' && "
        "test \"$(python greet.py --name bob)\" = 'Hello, bob!' && grep -q shout test_greet.py && "
        f"{PYTEST} test_greet.py",
    ),
    Task(
        name="fix_parser_edge_cases",
        prompt="settings.py's `parse` crashes or misbehaves on some inputs that its docstring says it "
        "supports. Make it follow its docstring.",
        files={"settings.py": INI},
        hidden={
            "test_hidden.py": "from settings import parse\n\n\ndef test_parse():\n"
            "    text = '# c\\n\\nname = demo \\n url=http://x/?a=b\\nname=final\\n'\n"
            "    assert parse(text) == {'name': 'final', 'url': 'http://x/?a=b'}\n"
        },
        solution={
            "settings.py": INI.replace(
                '        if line.startswith("#"):\n            continue\n'
                '        key, value = line.split("=")\n'
                "        out[key] = value\n",
                "        line = line.strip()\n"
                '        if not line or line.startswith("#"):\n            continue\n'
                '        key, value = line.split("=", 1)\n        out[key.strip()] = value.strip()\n',
            )
        },
        check=f"{PYTEST} test_hidden.py",
    ),
    Task(
        name="implement_from_docstring",
        prompt="Implement `slugify` in text.py according to its docstring.",
        files={
            "text.py": '"""Text helpers."""\n\n\ndef slugify(title):\n    """Lower-case `title`, turn every '
            "run of characters that are not a-z or 0-9 into one '-', and strip '-' from both ends.\n\n"
            "    slugify('Hello, World!') == 'hello-world'\n    \"\"\"\n    raise NotImplementedError\n"
        },
        hidden={
            "test_hidden.py": "from text import slugify\n\n\ndef test_slugify():\n"
            "    assert slugify('Hello, World!') == 'hello-world'\n"
            "    assert slugify('  A  B--C  ') == 'a-b-c'\n    assert slugify('--x9--') == 'x9'\n"
        },
        solution={
            "text.py": "import re\n\n\ndef slugify(title):\n"
            "    return re.sub(r'[^a-z0-9]+', '-', title.lower()).strip('-')\n"
        },
        check=f"{PYTEST} test_hidden.py",
    ),
]
