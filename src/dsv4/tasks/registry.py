"""The family registry and the random-input helpers that families share.

A family is a function `(rng) -> Spec` registered with `@family(category)`: it draws its
parameters from `rng` (and only its parameters; test inputs come from the Spec's `gen`),
so the instance space of a family is the set of parameter dicts it can return.
"""

from __future__ import annotations

import random
import string
from collections.abc import Callable
from dataclasses import dataclass

from dsv4.tasks.task import Spec


@dataclass(frozen=True)
class Family:
    name: str
    category: str  # strings | lists | arithmetic | dicts | compose
    draw: Callable[[random.Random], Spec]


FAMILIES: dict[str, Family] = {}


def family(category: str):
    def deco(fn: Callable[[random.Random], Spec]) -> Callable[[random.Random], Spec]:
        name = fn.__name__.lstrip("_")
        if name in FAMILIES:
            raise ValueError(f"duplicate task family {name!r}")
        FAMILIES[name] = Family(name, category, fn)
        return fn

    return deco


# The argument list of the many families that take one list of integers.
NUMS = [("nums", "list[int]")]


# -- random inputs ------------------------------------------------------------------------

WORDS = (
    "apple river stone cloud tiger mango lemon violet orbit pixel rocket candle forest "
    "planet silver copper garden window marble pepper falcon harbor meadow nickel oyster "
    "puzzle quartz saddle tunnel velvet wizard yogurt zebra anchor bamboo cactus dragon "
    "ember fossil glacier hammer igloo jungle kettle ladder magnet noodle"
).split()


def ints(r: random.Random, lo: int = -9, hi: int = 20, n_min: int = 0, n_max: int = 8) -> list[int]:
    return [r.randint(lo, hi) for _ in range(r.randint(n_min, n_max))]


def word(r: random.Random) -> str:
    return r.choice(WORDS)


def words(r: random.Random, n_min: int = 0, n_max: int = 6) -> list[str]:
    return [word(r) for _ in range(r.randint(n_min, n_max))]


def sentence(r: random.Random, n_min: int = 0, n_max: int = 6, caps: bool = True) -> str:
    ws = words(r, n_min, n_max)
    if caps:
        ws = [w.capitalize() if r.random() < 0.3 else w for w in ws]
    return " ".join(ws)


def text(r: random.Random, alphabet: str = string.ascii_lowercase, n_min: int = 0, n_max: int = 12) -> str:
    return "".join(r.choice(alphabet) for _ in range(r.randint(n_min, n_max)))


def mixed_text(r: random.Random, n_min: int = 0, n_max: int = 14) -> str:
    alphabet = string.ascii_letters + string.digits + "  ,.!?-"
    return text(r, alphabet, n_min, n_max)


def str_int_dict(r: random.Random, n_max: int = 6, lo: int = 0, hi: int = 20) -> dict[str, int]:
    keys = r.sample(WORDS, r.randint(0, n_max))
    return {k: r.randint(lo, hi) for k in keys}
