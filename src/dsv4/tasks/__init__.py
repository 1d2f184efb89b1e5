"""Verifiable Python tasks for SFT and RL: a procedural generator and mined doctests.

    from dsv4.tasks import generate_tasks, Task
    tasks = generate_tasks("train", n=100, seed=0)     # or split="heldout"
    tasks[0].prompt, tasks[0].solution, tasks[0].tests   # HumanEval-shaped

Rewards (`dsv4.tasks.reward`) run completions against the hidden tests in the sandbox;
`dsv4.tasks.render` turns tasks into SFT chat or completion examples. Never HumanEval:
tests assert that no prompt shares a 13-gram with it. No torch here.
"""

from dsv4.tasks.generate import (
    SPLITS,
    STARTER_FAMILIES,
    TRAIN_PARTS,
    balanced_tasks,
    generate_tasks,
    iter_tasks,
    part_of,
    split_of,
)
from dsv4.tasks.registry import FAMILIES
from dsv4.tasks.task import Task, TestCase, load_tasks, save_tasks

__all__ = [
    "FAMILIES",
    "SPLITS",
    "STARTER_FAMILIES",
    "TRAIN_PARTS",
    "Task",
    "TestCase",
    "balanced_tasks",
    "generate_tasks",
    "iter_tasks",
    "load_tasks",
    "part_of",
    "save_tasks",
    "split_of",
]
