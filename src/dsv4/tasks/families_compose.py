"""Composed task families: pipelines of 2-3 parameterised steps over lists, strings, words.

This is where most of the instance space lives (thousands of distinct tasks): each step is
drawn from a catalogue with its own parameters, and the prose, the reference code and the
difficulty are assembled from the steps. Difficulty = number of steps (+1 for a final
aggregate that needs an empty-input rule).
"""

from __future__ import annotations

from dsv4.tasks.registry import NUMS, family, ints, sentence
from dsv4.tasks.task import Spec

# -- integer pipelines: filter -> map -> aggregate -------------------------------------------


def _num(k: int) -> str:
    """A number as part of an identifier: -2 -> 'neg2'."""
    return str(k) if k >= 0 else f"neg{-k}"


def _int_filter(r):
    kind = r.choice(["even", "odd", "positive", "gt", "lt", "div", "notdiv"])
    k = r.randint(2, 5) if kind in ("div", "notdiv") else r.randint(-2, 8)
    return {
        "even": ("even", "are even", "x % 2 == 0"),
        "odd": ("odd", "are odd", "x % 2 != 0"),
        "positive": ("pos", "are positive", "x > 0"),
        "gt": (f"gt{_num(k)}", f"are greater than {k}", f"x > {k}"),
        "lt": (f"lt{_num(k)}", f"are less than {k}", f"x < {k}"),
        "div": (f"div{k}", f"are divisible by {k}", f"x % {k} == 0"),
        "notdiv": (f"ndiv{k}", f"are not divisible by {k}", f"x % {k} != 0"),
    }[kind], {"filter": kind, "fk": k if kind in ("gt", "lt", "div", "notdiv") else None}


def _int_map(r):
    kind = r.choice(["square", "double", "add", "abs", "mod", "negate", "sub"])
    k = r.randint(2, 9)
    return {
        "square": ("squared", "square each of them", "x * x"),
        "double": ("doubled", "double each of them", "2 * x"),
        "add": (f"plus{k}", f"add {k} to each of them", f"x + {k}"),
        "sub": (f"minus{k}", f"subtract {k} from each of them", f"x - {k}"),
        "abs": ("abs", "take the absolute value of each of them", "abs(x)"),
        "mod": (f"mod{k}", f"replace each of them by its remainder modulo {k}", f"x % {k}"),
        "negate": ("neg", "negate each of them", "-x"),
    }[kind], {"map": kind, "mk": k if kind in ("add", "sub", "mod") else None}


_AGGS = {  # name -> (slug, phrase, code over the kept list `v`, return type)
    "sum": ("sum", "return their sum (0 if none are left)", "return sum(v)", "int"),
    "count": ("count", "return how many there are", "return len(v)", "int"),
    "max": (
        "max",
        "return the largest (None if none are left)",
        "return max(v) if v else None",
        "int | None",
    ),
    "min": (
        "min",
        "return the smallest (None if none are left)",
        "return min(v) if v else None",
        "int | None",
    ),
    "list": ("list", "return them as a list in their original order", "return v", "list[int]"),
    "sorted": ("sorted", "return them sorted in ascending order", "return sorted(v)", "list[int]"),
    "distinct": ("distinct", "return how many different values there are", "return len(set(v))", "int"),
    "first": (
        "first",
        "return the first of them (None if none are left)",
        "return v[0] if v else None",
        "int | None",
    ),
}


@family("compose")
def int_pipeline(r):
    (fslug, fphrase, fcode), fp = _int_filter(r)
    use_map = r.random() < 0.7
    (mslug, mphrase, mcode), mp = _int_map(r) if use_map else (("", "", "x"), {"map": None, "mk": None})
    agg = r.choice(sorted(_AGGS))
    aslug, aphrase, acode, ret = _AGGS[agg]
    name = "_".join(p for p in (aslug, mslug, fslug) if p)
    doc = (
        f"Take the numbers in nums that {fphrase}" + (f", {mphrase}" if use_map else "") + f", and {aphrase}."
    )
    body = f"v = [{mcode} for x in nums if {fcode}]\n{acode}"
    plan = f"Filter with `{fcode}`" + (f", map with `{mcode}`" if use_map else "") + f", then `{acode}`."
    return Spec(
        params={**fp, **mp, "agg": agg},
        name=name,
        args=NUMS,
        returns=ret,
        doc=doc,
        body=body,
        gen=lambda r: (ints(r, -9, 15, 0, 9),),
        edge=[([],)],
        difficulty=2 + use_map,
        plan=plan,
    )


# -- word pipelines over a sentence: filter words -> transform -> combine ---------------------


def _word_filter(r):
    kind = r.choice(["longer", "shorter", "starts", "contains", "all"])
    k = r.randint(2, 5)
    ch = r.choice("aeiorst")
    return {
        "longer": (f"longer{k}", f"that are longer than {k} characters", f"len(w) > {k}"),
        "shorter": (f"short{k}", f"that have at most {k} characters", f"len(w) <= {k}"),
        "starts": (f"from_{ch}", f"that start with {ch!r} (lowercase only)", f"w.startswith({ch!r})"),
        "contains": (f"with_{ch}", f"that contain the letter {ch!r}", f"{ch!r} in w"),
        "all": ("", "", "True"),
    }[kind], {
        "wfilter": kind,
        "k": k if kind in ("longer", "shorter") else None,
        "ch": ch if kind in ("starts", "contains") else None,
    }


_WORD_MAPS = {
    "upper": ("upper", "uppercase each one", "w.upper()"),
    "reverse": ("reversed", "reverse each one", "w[::-1]"),
    "first": ("initials", "keep only each one's first character", "w[0]"),
    "cap": ("capitalised", "capitalise each one (first letter upper, rest lower)", "w.capitalize()"),
    "same": ("", "", "w"),
}
_WORD_JOINS = {
    "space": ("joined", "join them with single spaces", "return ' '.join(v)", "str"),
    "dash": ("dashed", "join them with '-'", "return '-'.join(v)", "str"),
    "concat": ("concat", "concatenate them", "return ''.join(v)", "str"),
    "count": ("count", "return how many there are", "return len(v)", "int"),
    "list": ("list", "return them as a list", "return v", "list[str]"),
    "sorted": ("sorted", "return them as an alphabetically sorted list", "return sorted(v)", "list[str]"),
    "chars": ("chars", "return their total number of characters", "return sum(len(w) for w in v)", "int"),
}


@family("compose")
def word_pipeline(r):
    (fslug, fphrase, fcode), fp = _word_filter(r)
    m = r.choice(sorted(_WORD_MAPS))
    j = r.choice(sorted(_WORD_JOINS))
    mslug, mphrase, mcode = _WORD_MAPS[m]
    jslug, jphrase, jcode, ret = _WORD_JOINS[j]
    steps = ["Take the space-separated words of sentence" + (f" {fphrase}" if fphrase else "")]
    if mphrase:
        steps.append(mphrase)
    doc = ", ".join(steps) + f", and {jphrase}."
    name = "words_" + "_".join(p for p in (fslug, mslug, jslug) if p)
    body = f"v = [{mcode} for w in sentence.split() if {fcode}]\n{jcode}"
    return Spec(
        params={**fp, "wmap": m, "join": j},
        name=name,
        args=[("sentence", "str")],
        returns=ret,
        doc=doc,
        body=body,
        gen=lambda r: (sentence(r, 0, 6, caps=False),),
        edge=[("",)],
        difficulty=1 + bool(fphrase) + bool(mphrase),
        plan=f"Split the sentence, keep words where `{fcode}`, map with `{mcode}`, then `{jcode}`.",
    )


# -- sort -> take -> aggregate ------------------------------------------------------------


@family("compose")
def sort_take(r):
    k = r.randint(1, 4)
    order = r.choice(["largest", "smallest"])
    agg = r.choice(["sum", "list", "product"])
    rev = ", reverse=True" if order == "largest" else ""
    code = {
        "sum": "return sum(v)",
        "list": "return v",
        "product": "p = 1\nfor x in v:\n    p *= x\nreturn p",
    }[agg]
    phrase = {
        "sum": "return their sum",
        "list": "return them in that order",
        "product": "return their product (1 if there are none)",
    }[agg]
    return Spec(
        params={"k": k, "order": order, "agg": agg},
        name=f"{agg}_of_{order}_{k}",
        args=NUMS,
        returns="list[int]" if agg == "list" else "int",
        doc=f"Sort nums from {order} to {'smallest' if order == 'largest' else 'largest'}, take the first "
        f"{k} values (all of them if there are fewer), and {phrase}.",
        body=f"v = sorted(nums{rev})[:{k}]\n{code}",
        gen=lambda r: (ints(r, -5, 12, 0, 7),),
        edge=[([],)],
        difficulty=2 if agg != "product" else 3,
        plan="Sort in the right direction, slice the first few, then aggregate.",
    )


# -- word frequency -> threshold -> report ----------------------------------------------------


@family("compose")
def frequent_words(r):
    k = r.randint(1, 3)
    out = r.choice(["sorted", "by_count", "count"])
    code = {
        "sorted": f"return sorted(w for w, c in counts.items() if c >= {k})",
        "by_count": f"keep = [w for w, c in counts.items() if c >= {k}]\n"
        "return sorted(keep, key=lambda w: (-counts[w], w))",
        "count": f"return sum(1 for c in counts.values() if c >= {k})",
    }[out]
    phrase = {
        "sorted": "return those words in alphabetical order",
        "by_count": "return those words ordered by count, highest first, ties alphabetically",
        "count": "return how many such distinct words there are",
    }[out]
    return Spec(
        params={"k": k, "out": out},
        name=f"words_seen_{k}_times_{out}",
        args=[("sentence", "str")],
        returns="int" if out == "count" else "list[str]",
        doc=f"Count how often each lowercase-folded, space-separated word occurs in sentence, keep the "
        f"words that occur at least {k} times, and {phrase}.",
        body="counts = {}\nfor w in sentence.lower().split():\n"
        f"    counts[w] = counts.get(w, 0) + 1\n{code}",
        gen=lambda r: (
            " ".join(r.choice(["Ant", "bee", "cat", "dog", "ant", "emu"]) for _ in range(r.randint(0, 9))),
        ),
        edge=[("",)],
        difficulty=3 if out == "by_count" else 2 + (k > 1),
        plan="Tally words in a dict, filter by the threshold, then format the answer.",
    )
