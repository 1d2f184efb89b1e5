"""List task families: rotating, chunking, scanning and searching lists of integers."""

from __future__ import annotations

from dsv4.tasks.registry import NUMS, family, ints
from dsv4.tasks.task import Spec


@family("lists")
def rotate_list(r):
    k = r.randint(1, 4)
    d = r.choice(["left", "right"])
    cut = "k" if d == "left" else "len(nums) - k"
    return Spec(
        params={"k": k, "dir": d},
        name=f"rotate_list_{d}_{k}",
        args=NUMS,
        returns="list[int]",
        doc=f"Return a new list with the elements of nums rotated {k} places to the {d}, "
        "wrapping around (an empty list stays empty).",
        body=f"if not nums:\n    return []\nk = {k} % len(nums)\nreturn nums[{cut}:] + nums[:{cut}]",
        gen=lambda r: (ints(r, 0, 9),),
        edge=[([],), ([5],)],
        difficulty=2,
        plan="Reduce the shift modulo the length and concatenate two slices.",
    )


@family("lists")
def chunk_list(r):
    k = r.randint(2, 4)
    return Spec(
        params={"k": k},
        name=f"chunks_of_{k}",
        args=NUMS,
        returns="list[list[int]]",
        doc=f"Split nums into consecutive chunks of {k} elements; the last chunk may be shorter.",
        body=f"return [nums[i:i + {k}] for i in range({0}, len(nums), {k})]",
        gen=lambda r: (ints(r, 0, 9, 0, 9),),
        edge=[([],)],
        plan=f"Step through the indices {k} at a time and slice.",
    )


@family("lists")
def running(r):
    op = r.choice(["sum", "max", "min", "product"])
    update = {"sum": "acc + x", "max": "max(acc, x)", "min": "min(acc, x)", "product": "acc * x"}[op]
    return Spec(
        params={"op": op},
        name=f"running_{op}",
        args=NUMS,
        returns="list[int]",
        doc=f"Return the running {op} of nums: element i of the result is the {op} of nums[0..i].",
        body=f"out = []\nfor i, x in enumerate(nums):\n    acc = x if i == 0 else {update}\n"
        "    out.append(acc)\nreturn out",
        gen=lambda r: (ints(r, -5, 9),),
        edge=[([],)],
        difficulty=2,
        plan=f"Carry an accumulator through the list, combining with {op}, and record it each step.",
    )


@family("lists")
def kth_distinct(r):
    k = r.randint(1, 3)
    which = r.choice(["largest", "smallest"])
    order = "reverse=True" if which == "largest" else ""
    nth = {1: "", 2: "second ", 3: "third "}[k]
    return Spec(
        params={"k": k, "which": which},
        name=f"{nth.strip() or 'the'}_{which}_distinct".replace("the_", ""),
        args=NUMS,
        returns="int | None",
        doc=f"Return the {nth}{which} distinct value in nums, or None if nums has fewer than "
        f"{k} distinct values.",
        body=f"vals = sorted(set(nums){', ' + order if order else ''})\n"
        f"return vals[{k - 1}] if len(vals) >= {k} else None",
        gen=lambda r: (ints(r, 0, 6, 0, 7),),
        edge=[([],), ([4, 4],)],
        difficulty=1 if k == 1 else 2,
        plan="Remove duplicates with a set, sort, and index if there are enough values.",
    )


@family("lists")
def adjacent(r):
    op = r.choice(["diff", "sum", "max", "product"])
    expr = {"diff": "b - a", "sum": "a + b", "max": "max(a, b)", "product": "a * b"}[op]
    phrase = {
        "diff": "each element minus the one before it",
        "sum": "the sum of each pair of neighbours",
        "max": "the larger of each pair of neighbours",
        "product": "the product of each pair of neighbours",
    }[op]
    return Spec(
        params={"op": op},
        name=f"adjacent_{op}",
        args=NUMS,
        returns="list[int]",
        doc=f"Return a list with one entry per pair of neighbouring elements of nums: {phrase}.",
        body=f"return [{expr} for a, b in zip(nums, nums[1:])]",
        gen=lambda r: (ints(r, -5, 9),),
        edge=[([],), ([3],)],
        plan="Zip the list with itself shifted by one and combine each pair.",
    )


@family("lists")
def count_steps(r):
    kind = r.choice(["up", "down", "up_or_equal", "same"])
    cmp = {"up": "b > a", "down": "b < a", "up_or_equal": "b >= a", "same": "b == a"}[kind]
    phrase = {
        "up": "is strictly greater than",
        "down": "is strictly smaller than",
        "up_or_equal": "is greater than or equal to",
        "same": "equals",
    }[kind]
    return Spec(
        params={"kind": kind},
        name=f"count_steps_{kind}",
        args=NUMS,
        returns="int",
        doc=f"Count the positions i > 0 where nums[i] {phrase} nums[i - 1].",
        body=f"return sum(1 for a, b in zip(nums, nums[1:]) if {cmp})",
        gen=lambda r: (ints(r, 0, 5),),
        edge=[([],)],
        plan="Compare each element with its predecessor and count the matches.",
    )


@family("lists")
def longest_run(r):
    kind = r.choice(["equal", "increasing", "decreasing"])
    cmp = {"equal": "==", "increasing": ">", "decreasing": "<"}[kind]
    phrase = {
        "equal": "consecutive equal elements",
        "increasing": "consecutive strictly increasing elements",
        "decreasing": "consecutive strictly decreasing elements",
    }[kind]
    return Spec(
        params={"kind": kind},
        name=f"longest_{kind}_run",
        args=NUMS,
        returns="int",
        doc=f"Return the length of the longest stretch of {phrase} in nums (0 for an empty list).",
        body=f"best = cur = 0\nfor i, x in enumerate(nums):\n    if i > 0 and x {cmp} nums[i - 1]:\n"
        "        cur += 1\n    else:\n        cur = 1\n    best = max(best, cur)\nreturn best",
        gen=lambda r: (ints(r, 0, 4, 0, 10),),
        edge=[([],), ([7],)],
        difficulty=3,
        plan="Track the current run length, reset it when the condition breaks, keep the maximum.",
    )


@family("lists")
def pair_sum_count(r):
    t = r.randint(0, 12)
    return Spec(
        params={"t": t},
        name=f"pairs_summing_to_{t}",
        args=NUMS,
        returns="int",
        doc=f"Count the index pairs (i, j) with i < j such that nums[i] + nums[j] == {t}.",
        body="n = len(nums)\nreturn sum(\n    1 for i in range(n) for j in range(i + 1, n)\n"
        f"    if nums[i] + nums[j] == {t}\n)",
        gen=lambda r: (ints(r, 0, t, 0, 8),),
        edge=[([],)],
        difficulty=2,
        plan="Check every pair with two nested loops over indices.",
    )


@family("lists")
def every_kth(r):
    k = r.randint(2, 10)
    off = r.randint(0, 14)
    end = r.choice(["start", "end"])  # positions counted from the front or from the back
    src = "nums" if end == "start" else "nums[::-1]"
    where = "" if end == "start" else ", counting positions from the end (the last element is position 0)"
    return Spec(
        params={"k": k, "offset": off} if end == "start" else {"k": k, "offset": off, "from": end},
        name=f"every_{k}th_from_{off}" if end == "start" else f"every_{k}th_from_{off}_of_reversed",
        args=NUMS,
        returns="list[int]",
        doc=f"Return the elements of nums at positions {off}, {off + k}, {off + 2 * k}, and so on{where}.",
        body=f"return {src}[{off}::{k}]",
        gen=lambda r: (ints(r, 0, 30, 0, max(10, off + k + 2)),),
        edge=[([],)],
        plan=f"Slice {src} from {off} with step {k}.",
    )


@family("lists")
def window_sums(r):
    k = r.randint(2, 4)
    op = r.choice(["sum", "max"])
    return Spec(
        params={"k": k, "op": op},
        name=f"window_{op}_{k}",
        args=NUMS,
        returns="list[int]",
        doc=f"Return the {op} of every window of {k} consecutive elements of nums, in order "
        f"(an empty list when nums has fewer than {k} elements).",
        body=f"return [{op}(nums[i:i + {k}]) for i in range(len(nums) - {k - 1})]",
        gen=lambda r: (ints(r, -3, 9, 0, 9),),
        edge=[([],), ([1] * (k - 1),)],
        difficulty=2,
        plan=f"Slide a window of size {k} over the list and apply {op} to each.",
    )


@family("lists")
def flatten(r):
    mode = r.choice(["plain", "skip_empty_count"])
    if mode == "plain":
        return Spec(
            params={"mode": mode},
            name="flatten_once",
            args=[("rows", "list[list[int]]")],
            returns="list[int]",
            doc="Concatenate the inner lists of rows into one flat list.",
            body="return [x for row in rows for x in row]",
            gen=lambda r: ([ints(r, 0, 9, 0, 3) for _ in range(r.randint(0, 4))],),
            edge=[([],)],
            plan="Loop over the rows and then over each row's elements.",
        )
    return Spec(
        params={"mode": mode},
        name="count_nonempty_rows",
        args=[("rows", "list[list[int]]")],
        returns="int",
        doc="Return how many of the inner lists of rows are not empty.",
        body="return sum(1 for row in rows if row)",
        gen=lambda r: ([ints(r, 0, 9, 0, 2) for _ in range(r.randint(0, 5))],),
        edge=[([],)],
        plan="Count the rows that have at least one element.",
    )


@family("lists")
def merge_sorted(r):
    dedupe = r.choice([False, True])
    tail = "\nout = [x for i, x in enumerate(out) if i == 0 or x != out[i - 1]]" if dedupe else ""
    gen = lambda r: (sorted(ints(r, 0, 12, 0, 6)), sorted(ints(r, 0, 12, 0, 6)))
    return Spec(
        params={"dedupe": dedupe},
        name="merge_sorted_unique" if dedupe else "merge_sorted",
        args=[("a", "list[int]"), ("b", "list[int]")],
        returns="list[int]",
        doc="Merge the ascending lists a and b into one ascending list"
        + (" without repeated values." if dedupe else " (keep duplicates)."),
        body="out = []\ni = j = 0\nwhile i < len(a) and j < len(b):\n    if a[i] <= b[j]:\n"
        "        out.append(a[i])\n        i += 1\n    else:\n        out.append(b[j])\n        j += 1\n"
        "out += a[i:] + b[j:]" + tail + "\nreturn out",
        gen=gen,
        edge=[([], [])],
        difficulty=3 if dedupe else 2,
        plan="Walk both lists with two indices, always taking the smaller head.",
    )


@family("lists")
def indices_of(r):
    kind = r.choice(["equal", "greater", "even", "negative"])
    if kind in ("equal", "greater"):
        args = [("nums", "list[int]"), ("target", "int")]
        cond = "x == target" if kind == "equal" else "x > target"
        phrase = "equal to target" if kind == "equal" else "greater than target"
        gen = lambda r: (ints(r, 0, 6), r.randint(0, 6))
        edge = [([], 1)]
    else:
        args = NUMS
        cond = "x % 2 == 0" if kind == "even" else "x < 0"
        phrase = "even" if kind == "even" else "negative"
        gen = lambda r: (ints(r, -6, 9),)
        edge = [([],)]
    return Spec(
        params={"kind": kind},
        name=f"indices_{kind}",
        args=args,
        returns="list[int]",
        doc=f"Return the positions (0-based, ascending) of the elements of nums that are {phrase}.",
        body=f"return [i for i, x in enumerate(nums) if {cond}]",
        gen=gen,
        edge=edge,
        plan="Enumerate the list and keep the index of each matching element.",
    )


@family("lists")
def clamp_list(r):
    lo = r.randint(-40, 40)
    hi = lo + r.randint(1, 40)
    return Spec(
        params={"lo": lo, "hi": hi},
        name="clamp_values",
        args=NUMS,
        returns="list[int]",
        doc=f"Return nums with every value below {lo} raised to {lo} and every value above {hi} "
        f"lowered to {hi}.",
        body=f"return [min(max(x, {lo}), {hi}) for x in nums]",
        gen=lambda r: (ints(r, lo - 9, hi + 9),),
        edge=[([],)],
        plan=f"Apply max with {lo} and then min with {hi} to each element.",
    )
