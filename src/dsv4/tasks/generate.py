"""Sampling generated tasks, deterministically, from a train or a held-out split.

The split is a property of the instance, not of the sampling seed: an instance (family,
params) is held out iff the hash of its key falls in the held-out fraction. Any seed of
`generate_tasks(split="train")` therefore only ever yields train instances and never one
that a held-out sample can contain, and the held-out set is a disjoint set of parameter
draws of the same families (the model must generalise across parameters, not recall).
"""

from __future__ import annotations

import random
from collections.abc import Iterator

from dsv4.errors import UserError
from dsv4.tasks import families_compose, families_dicts, families_lists, families_numbers, families_strings  # noqa: F401
from dsv4.tasks.registry import FAMILIES
from dsv4.tasks.task import Task, build_task, instance_key, key_hash

SPLITS = ("train", "heldout")
HELDOUT_PER_MILLE = 200  # 20% of each family's instance space is held out

# The families a model trained for minutes can learn first: a one-line template whose only
# varying part (a letter, a digit, a bound, a slice) is stated in the docstring and the
# function name, so solving a held-out instance is "recognise the template, copy the
# constant". Each has hundreds of train instances or more (tests pin >= 200 train, >= 10
# held out): with a few dozen, SFT memorises the instances instead of learning to copy the
# constant, and held-out pass@1 measures recall. The quickstart post-trains and evaluates on
# these (its budget buys a ~20M model a few thousand SFT examples); the other families need
# more steps than that.
STARTER_FAMILIES = ("clamp_list", "count_char_class", "count_digit", "count_letter", "every_kth",
                    "filter_dict", "lookup_default", "multiples_sum", "pad_string", "remove_chars")


def split_of(family: str, params: dict) -> str:
    h = key_hash("split:" + instance_key(family, params))
    return "heldout" if h % 1000 < HELDOUT_PER_MILLE else "train"


# The train split is cut in two halves by another hash of the instance: one for SFT's
# examples, one for RL's prompts. RL on instances the policy was never shown rewards solving
# new instances of a template (what the held-out set measures), not recalling shown ones.
TRAIN_PARTS = ("sft", "rl")


def part_of(family: str, params: dict) -> str:
    """The half of the train split an instance belongs to: "sft" or "rl"."""
    return TRAIN_PARTS[key_hash("part:" + instance_key(family, params)) % 2]


def iter_tasks(
    split: str = "train",
    seed: int = 0,
    families: list[str] | None = None,
    difficulty: tuple[int, int] | None = None,
    unique: bool = True,
    max_tries: int = 200,
    part: str | None = None,
) -> Iterator[Task]:
    """An endless stream of tasks of one split; stops early when the space looks exhausted.

    Families are drawn uniformly (each draw then draws its own parameters), so small
    families do not vanish behind the large composed ones. With `unique`, no instance
    repeats; a family drops out once `max_tries` draws in a row found nothing new in it,
    and the stream ends when every family has. `part` ("sft" or "rl", train split only) keeps
    one half of the train split (`part_of`).
    """
    if split not in SPLITS:
        raise UserError(f"unknown split {split!r} (use train or heldout)")
    if part is not None and (split != "train" or part not in TRAIN_PARTS):
        raise UserError(f"part {part!r} needs the train split and one of {', '.join(TRAIN_PARTS)}")
    names = sorted(FAMILIES) if families is None else list(families)
    for n in names:
        if n not in FAMILIES:
            raise UserError(f"unknown task family {n!r}; known: {', '.join(sorted(FAMILIES))}")
    if not names:
        raise UserError("no task families selected")
    rng = random.Random(f"dsv4-tasks:{split}:{seed}")
    seen: set[str] = set()
    live = list(names)  # families not yet exhausted for this split/filter
    while live:
        fam = FAMILIES[rng.choice(live)]
        for _ in range(max_tries):
            spec = fam.draw(rng)
            key = instance_key(fam.name, spec.params)
            if unique and key in seen:
                continue
            if split_of(fam.name, spec.params) != split:
                continue
            if part is not None and part_of(fam.name, spec.params) != part:
                continue
            if difficulty is not None and not difficulty[0] <= spec.difficulty <= difficulty[1]:
                continue
            break
        else:  # nothing new in max_tries draws: treat the family as exhausted
            live.remove(fam.name)
            continue
        seen.add(key)
        yield build_task(fam.name, spec, split)


def generate_tasks(split: str = "train", n: int = 100, seed: int = 0, **kw) -> list[Task]:
    """The first `n` tasks of `iter_tasks(split, seed, ...)` (fewer if the space runs out)."""
    if n < 0:
        raise UserError(f"n must be >= 0, got {n}")
    out: list[Task] = []
    if n == 0:
        return out
    for task in iter_tasks(split, seed, **kw):
        out.append(task)
        if len(out) >= n:
            break
    return out


def balanced_tasks(split: str = "heldout", per_family: int = 10, seed: int = 0,
                   families: list[str] | None = None, accept=None, **kw) -> list[Task]:
    """Up to `per_family` tasks of each family (fewer where its part of `split` is smaller),
    family by family in sorted order.

    A stream drawn uniformly over families (`iter_tasks`) empties the small families'
    held-out parts early and then yields only the large ones, so a held-out set of n tasks
    from it measures mostly one or two families; a fixed count per family weighs each the
    same. `accept(task) -> bool` filters (e.g. the prompt must leave room to answer); only
    accepted tasks count. Instances are still split by their hash (`split_of`), so a
    held-out set never holds a train instance whatever the seed.
    """
    if per_family < 1:
        raise UserError(f"per_family must be >= 1, got {per_family}")
    names = sorted(FAMILIES) if families is None else sorted(families)
    out: list[Task] = []
    for name in names:
        got = 0
        for task in iter_tasks(split, seed, families=[name], **kw):
            if accept is None or accept(task):
                out.append(task)
                got += 1
                if got >= per_family:
                    break
    return out
