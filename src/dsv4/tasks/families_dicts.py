"""Dictionary task families: counting, grouping, inverting, merging and ranking."""

from __future__ import annotations

from dsv4.tasks.registry import WORDS, family, sentence, str_int_dict, text, words
from dsv4.tasks.task import Spec

D = [("d", "dict[str, int]")]


@family("dicts")
def word_count(r):
    fold = r.choice([False, True])
    w = "w.lower()" if fold else "w"
    return Spec(
        params={"fold": fold},
        name="word_counts" + ("_nocase" if fold else ""),
        args=[("sentence", "str")],
        returns="dict[str, int]",
        doc="Map each space-separated word of sentence to the number of times it occurs"
        + (", treating words that differ only in case as the same (keys lowercase)." if fold else "."),
        body="counts = {}\nfor w in sentence.split():\n"
        f"    counts[{w}] = counts.get({w}, 0) + 1\nreturn counts",
        gen=lambda r: (sentence(r, 0, 7),),
        edge=[("",)],
        difficulty=1 if not fold else 2,
        plan="Split into words and tally them in a dict with get(w, 0) + 1.",
    )


@family("dicts")
def char_positions(r):
    mode = r.choice(["first", "last", "all"])
    body = {
        "first": "out = {}\nfor i, c in enumerate(s):\n    out.setdefault(c, i)\nreturn out",
        "last": "out = {}\nfor i, c in enumerate(s):\n    out[c] = i\nreturn out",
        "all": "out = {}\nfor i, c in enumerate(s):\n    out.setdefault(c, []).append(i)\nreturn out",
    }[mode]
    what = {
        "first": "the index of its first occurrence",
        "last": "the index of its last occurrence",
        "all": "the ascending list of all indices where it occurs",
    }[mode]
    return Spec(
        params={"mode": mode},
        name=f"char_{mode}_positions",
        args=[("s", "str")],
        returns="dict[str, list[int]]" if mode == "all" else "dict[str, int]",
        doc=f"Map every character of s to {what}.",
        body=body,
        gen=lambda r: (text(r, "abcab", 0, 8),),
        edge=[("",)],
        difficulty=2,
        plan="Enumerate the string and update the dict entry for each character.",
    )


@family("dicts")
def invert_dict(r):
    mode = r.choice(["lists", "last_wins"])
    name, returns, doc, body, plan = {
        "lists": (
            "invert_to_lists",
            "dict[int, list[str]]",
            "Invert d: map each value to the alphabetically sorted list of keys that have it.",
            "out = {}\nfor k in sorted(d):\n    out.setdefault(d[k], []).append(k)\nreturn out",
            "Iterate over keys in sorted order and append each to its value's list.",
        ),
        "last_wins": (
            "invert_smallest_key",
            "dict[int, str]",
            "Invert d: map each value to a key that has it; when several keys share a value, use "
            "the alphabetically smallest of them.",
            "out = {}\nfor k in sorted(d, reverse=True):\n    out[d[k]] = k\nreturn out",
            "Visit keys from largest to smallest so the smallest key is written last.",
        ),
    }[mode]
    return Spec(
        params={"mode": mode},
        name=name,
        args=D,
        returns=returns,
        doc=doc,
        body=body,
        gen=lambda r: (str_int_dict(r, 6, 0, 3),),
        edge=[({},)],
        difficulty=2,
        plan=plan,
    )


@family("dicts")
def group_words(r):
    by = r.choice(["first_letter", "length", "last_letter"])
    key = {"first_letter": "w[0]", "length": "len(w)", "last_letter": "w[-1]"}[by]
    what = {"first_letter": "its first letter", "length": "its length", "last_letter": "its last letter"}[by]
    return Spec(
        params={"by": by},
        name=f"group_by_{by}",
        args=[("items", "list[str]")],
        returns="dict[int, list[str]]" if by == "length" else "dict[str, list[str]]",
        doc=f"Group the non-empty strings of items by {what}: map each key to the strings that "
        "have it, in their original order.",
        body=f"out = {{}}\nfor w in items:\n    out.setdefault({key}, []).append(w)\nreturn out",
        gen=lambda r: (words(r, 0, 6),),
        edge=[([],)],
        plan="Use setdefault to create each group's list and append in order.",
    )


@family("dicts")
def merge_dicts(r):
    how = r.choice(["sum", "max", "min", "right"])
    combine = {"sum": "out[k] + v", "max": "max(out[k], v)", "min": "min(out[k], v)", "right": "v"}[how]
    phrase = {
        "sum": "the sum of the two values",
        "max": "the larger value",
        "min": "the smaller value",
        "right": "the value from b",
    }[how]
    return Spec(
        params={"how": how},
        name=f"merge_{how}",
        args=[("a", "dict[str, int]"), ("b", "dict[str, int]")],
        returns="dict[str, int]",
        doc=f"Return a new dict with the keys of both a and b; a key present in both gets {phrase}. "
        "Neither input is modified.",
        body=f"out = dict(a)\nfor k, v in b.items():\n    out[k] = {combine} if k in out else v\nreturn out",
        gen=lambda r: (str_int_dict(r, 4), str_int_dict(r, 4)),
        edge=[({}, {})],
        difficulty=2,
        plan="Copy a, then fold in b's entries, combining on shared keys.",
    )


@family("dicts")
def top_keys(r):
    k = r.randint(1, 3)
    order = r.choice(["high", "low"])
    sign = "-" if order == "high" else ""
    return Spec(
        params={"k": k, "order": order},
        name=f"top_{k}_{order}",
        args=D,
        returns="list[str]",
        doc=f"Return the {k} keys of d with the {'highest' if order == 'high' else 'lowest'} values, "
        "best first; ties are broken by the alphabetical order of keys. Return fewer if d is smaller.",
        body=f"return sorted(d, key=lambda key: ({sign}d[key], key))[:{k}]",
        gen=lambda r: (str_int_dict(r, 6, 0, 5),),
        edge=[({},)],
        difficulty=2,
        plan="Sort the keys by (value in the wanted direction, key) and take the first few.",
    )


_COMPARE = {">": "greater than", ">=": "at least", "<": "less than", "<=": "at most"}
_CMP_NAME = {">": "above", ">=": "at_least", "<": "below", "<=": "at_most"}


@family("dicts")
def filter_dict(r):
    t = r.randint(0, 40)
    ret = r.choice(["dict", "keys", "count"])
    cmp = r.choice(sorted(_COMPARE))
    body = {
        "dict": f"return {{k: v for k, v in d.items() if v {cmp} {t}}}",
        "keys": f"return sorted(k for k, v in d.items() if v {cmp} {t})",
        "count": f"return sum(1 for v in d.values() if v {cmp} {t})",
    }[ret]
    what = {
        "dict": "a dict of only the entries",
        "keys": "the sorted list of keys",
        "count": "how many entries there are",
    }[ret]
    return Spec(
        # "greater than" keeps its old params, so those instances (and their split) stay the same
        params={"t": t, "ret": ret} if cmp == ">" else {"t": t, "ret": ret, "cmp": cmp},
        name=f"{_CMP_NAME[cmp]}_{t}_{ret}",
        args=D,
        returns={"dict": "dict[str, int]", "keys": "list[str]", "count": "int"}[ret],
        doc=f"Return {what} of d whose value is {_COMPARE[cmp]} {t}.",
        body=body,
        gen=lambda r: (str_int_dict(r, 6, max(0, t - 12), t + 12),),
        edge=[({},)],
        plan=f"Go over the items and keep the ones with a value {_COMPARE[cmp]} {t}.",
    )


@family("dicts")
def dict_stats(r):
    stat = r.choice(["total", "argmax", "argmin", "spread"])
    spec = {
        "total": ("int", "Return the sum of the values of d (0 when d is empty).", "return sum(d.values())"),
        "argmax": (
            "str | None",
            "Return the key with the largest value (the alphabetically smallest such "
            "key on ties), or None when d is empty.",
            "if not d:\n    return None\nreturn min(d, key=lambda k: (-d[k], k))",
        ),
        "argmin": (
            "str | None",
            "Return the key with the smallest value (the alphabetically smallest such "
            "key on ties), or None when d is empty.",
            "if not d:\n    return None\nreturn min(d, key=lambda k: (d[k], k))",
        ),
        "spread": (
            "int",
            "Return the largest value of d minus the smallest (0 when d is empty).",
            "if not d:\n    return 0\nreturn max(d.values()) - min(d.values())",
        ),
    }[stat]
    return Spec(
        params={"stat": stat},
        name=f"dict_{stat}",
        args=D,
        returns=spec[0],
        doc=spec[1],
        body=spec[2],
        gen=lambda r: (str_int_dict(r, 5, 0, 6),),
        edge=[({},)],
        difficulty=1 if stat == "total" else 2,
        plan="Look at the values (and keys for ties) and reduce them.",
    )


@family("dicts")
def lookup_default(r):
    default = r.randint(-1, 5) if r.random() < 0.2 else r.randint(-99, 300)
    return Spec(
        params={"default": default},
        name="lookup_all",
        args=[("d", "dict[str, int]"), ("keys", "list[str]")],
        returns="list[int]",
        doc=f"Return the value of d for each key in keys, in order, using {default} for keys missing from d.",
        body=f"return [d.get(k, {default}) for k in keys]",
        gen=lambda r: (str_int_dict(r, 4), r.sample(WORDS, r.randint(0, 4))),
        edge=[({}, [])],
        plan=f"Use d.get(key, {default}) for each key.",
    )
