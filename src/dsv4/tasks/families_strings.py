"""String task families: counting, transforming and checking text, with parameters."""

from __future__ import annotations

import string

from dsv4.tasks.registry import family, mixed_text, sentence, text, word
from dsv4.tasks.task import Spec

_CLASSES = {  # name -> (phrase, membership test source)
    "vowels": ("vowels (a, e, i, o, u in either case)", 'c.lower() in "aeiou"'),
    "consonants": ("consonants (letters other than a, e, i, o, u, in either case)",
                   'c.isalpha() and c.lower() not in "aeiou"'),
    "digits": ("decimal digits", "c.isdigit()"),
    "upper": ("uppercase letters", "c.isupper()"),
    "lower": ("lowercase letters", "c.islower()"),
    "letters": ("letters", "c.isalpha()"),
    "alnum": ("letters and digits", "c.isalnum()"),
    "spaces": ("space characters", 'c == " "'),
    "punct": ("characters from the set ',.!?-'", 'c in ",.!?-"'),
}
# Besides the named classes, an instance may count the characters of an explicit set (stated in
# the docstring), which gives the family hundreds of instances: a model must read the set.
_SET_POOL = string.ascii_letters + string.digits + ",.!?-"


@family("strings")
def count_char_class(r):
    if r.random() < 0.3:
        cls = r.choice(sorted(_CLASSES))
        phrase, test = _CLASSES[cls]
        params, name = {"cls": cls}, f"count_{cls}"
    else:
        chars = "".join(sorted(r.sample(_SET_POOL, r.randint(2, 4))))
        phrase, test = f"characters that are one of {chars!r}", f"c in {chars!r}"
        params, name = {"cls": "set", "chars": chars}, "count_chars_in_set"
    return Spec(
        params=params,
        name=name,
        args=[("s", "str")],
        returns="int",
        doc=f"Count the {phrase} in the string s.",
        body=f"return sum(1 for c in s if {test})",
        gen=lambda r: (mixed_text(r) + "".join(r.choice(_SET_POOL) for _ in range(r.randint(0, 4))),),
        edge=[("",)],
        plan=f"Walk over the characters of s and count those that are {phrase}.",
    )


# What count_letter counts: a letter ignoring case, one character exactly, or a two-letter
# substring (non-overlapping, as str.count); the constant is in the docstring and the name.
_COUNT_CHARS = string.ascii_letters + string.digits + "!?.,-#*"


@family("strings")
def count_letter(r):
    kind = r.choice(["letter", "char", "substring"])
    if kind == "letter":
        ch = r.choice(string.ascii_lowercase)
        name, what, body = f"count_letter_{ch}", f"the letter {ch!r} appears in s, ignoring case", \
            f"return s.lower().count({ch!r})"
        alphabet = string.ascii_letters[:8] + ch + ch.upper() + " "
    elif kind == "char":
        ch = r.choice(_COUNT_CHARS)
        label = ch if ch.isalnum() else f"sym{ord(ch)}"
        name, what, body = f"count_char_{label}", f"the character {ch!r} appears in s (case matters)", \
            f"return s.count({ch!r})"
        alphabet = string.ascii_letters[:6] + ch * 2 + ch.swapcase() + " "
    else:
        ch = "".join(r.choice(string.ascii_lowercase) for _ in range(2))
        what = f"the substring {ch!r} occurs in s (non-overlapping, case matters)"
        name, body = f"count_{ch}", f"return s.count({ch!r})"
        alphabet = string.ascii_lowercase[:6] + ch[0] + ch[1] + " "
    return Spec(
        # the letter kind keeps its old params, so its instances (and their split) stay the same
        params={"ch": ch} if kind == "letter" else {"ch": ch, "kind": kind},
        name=name,
        args=[("s", "str")],
        returns="int",
        doc=f"Count how many times {what}.",
        body=body,
        gen=lambda r: (text(r, alphabet, 0, 10) + ch * r.randint(0, 2) + text(r, alphabet, 0, 4),),
        edge=[("",)],
        plan=f"Count {ch!r} in s with str.count" + (" after lowercasing s." if kind == "letter" else "."),
    )


@family("strings")
def caesar(r):
    k = r.randint(1, 25)
    return Spec(
        params={"k": k},
        name=f"shift_letters_{k}",
        args=[("s", "str")],
        returns="str",
        doc=(
            f"Shift every lowercase letter of s forward by {k} places in the alphabet, wrapping "
            "from 'z' back to 'a'. Other characters stay as they are."
        ),
        body=(
            "out = []\nfor c in s:\n    if 'a' <= c <= 'z':\n"
            f"        c = chr((ord(c) - ord('a') + {k}) % 26 + ord('a'))\n"
            "    out.append(c)\nreturn ''.join(out)"
        ),
        gen=lambda r: (mixed_text(r, 0, 12),),
        edge=[("",), ("xyz",)],
        difficulty=2,
        plan=f"For each lowercase letter take its offset from 'a', add {k} modulo 26, map back.",
    )


@family("strings")
def remove_chars(r):
    chars = "".join(sorted(r.sample(string.ascii_lowercase, r.randint(1, 4))))
    return Spec(
        params={"chars": chars},
        name=f"strip_{chars}",
        args=[("s", "str")],
        returns="str",
        doc=f"Return s with every occurrence of the characters in {chars!r} removed.",
        body=f"return ''.join(c for c in s if c not in {chars!r})",
        gen=lambda r: (text(r, string.ascii_lowercase[:10] + chars * 2 + " ", 0, 14),),
        edge=[("",)],
        plan=f"Keep only the characters of s that are not in {chars!r} and join them.",
    )


@family("strings")
def palindrome(r):
    mode = r.choice(["exact", "nocase", "alnum"])
    doc = {
        "exact": "Return True if s reads the same forwards and backwards, else False.",
        "nocase": "Return True if s reads the same forwards and backwards when case is ignored.",
        "alnum": (
            "Return True if s is a palindrome when only its letters and digits are kept and case is ignored."
        ),
    }[mode]
    body = {
        "exact": "return s == s[::-1]",
        "nocase": "t = s.lower()\nreturn t == t[::-1]",
        "alnum": "t = [c.lower() for c in s if c.isalnum()]\nreturn t == t[::-1]",
    }[mode]

    def gen(r):
        half = text(r, "abAB1 ,", 0, 5)
        mid = r.choice(["", "a", "x"])
        s = half + mid + half[::-1]
        if r.random() < 0.5:
            s = "".join(c.swapcase() if r.random() < 0.3 else c for c in s)
        if r.random() < 0.3:
            s = s + r.choice("xyz")
        return (s,)

    return Spec(
        params={"mode": mode},
        name=f"is_palindrome_{mode}",
        args=[("s", "str")],
        returns="bool",
        doc=doc,
        body=body,
        gen=gen,
        edge=[("",)],
        difficulty=1 if mode == "exact" else 2,
        plan="Normalise the string as described, then compare it with its reverse.",
    )


@family("strings")
def case_transform(r):
    mode = r.choice(["title", "swap", "alternate", "first_upper"])
    doc = {
        "title": "Capitalise the first letter of every space-separated word of s and lowercase the rest.",
        "swap": "Return s with uppercase letters made lowercase and lowercase letters made uppercase.",
        "alternate": (
            "Return s with characters at even positions (0, 2, ...) uppercased and those at odd "
            "positions lowercased."
        ),
        "first_upper": "Uppercase the first character of s and lowercase all the others.",
    }[mode]
    body = {
        "title": "return ' '.join(w[:1].upper() + w[1:].lower() for w in s.split(' '))",
        "swap": "return s.swapcase()",
        "alternate": "return ''.join(c.upper() if i % 2 == 0 else c.lower() for i, c in enumerate(s))",
        "first_upper": "return s[:1].upper() + s[1:].lower()",
    }[mode]
    return Spec(
        params={"mode": mode},
        name=f"{mode}_case",
        args=[("s", "str")],
        returns="str",
        doc=doc,
        body=body,
        gen=lambda r: (sentence(r, 0, 4),),
        edge=[("",)],
        difficulty=1 if mode in ("swap", "first_upper") else 2,
        plan="Go through the characters (or words) and change their case as asked.",
    )


@family("strings")
def run_length(r):
    fmt = r.choice(["char_count", "count_char"])
    example = "a3b1" if fmt == "char_count" else "3a1b"
    piece = "c + str(n)" if fmt == "char_count" else "str(n) + c"
    return Spec(
        params={"fmt": fmt},
        name="run_length_" + ("suffix" if fmt == "char_count" else "prefix"),
        args=[("s", "str")],
        returns="str",
        doc=(
            "Run-length encode s: each maximal run of one repeated character becomes the character "
            f"and the run length, so 'aaab' becomes {example!r}."
        ),
        body=(
            "out = []\ni = 0\nwhile i < len(s):\n    j = i\n    while j < len(s) and s[j] == s[i]:\n"
            f"        j += 1\n    c, n = s[i], j - i\n    out.append({piece})\n    i = j\n"
            "return ''.join(out)"
        ),
        gen=lambda r: ("".join(r.choice("abc") * r.randint(1, 4) for _ in range(r.randint(0, 5))),),
        edge=[("",), ("z",)],
        difficulty=3,
        plan="Scan with two indices; extend j while the character repeats, then emit one piece per run.",
    )


@family("strings")
def most_common_char(r):
    tie = r.choice(["first", "smallest"])
    tie_doc = "the one that appears first in s" if tie == "first" else "the alphabetically smallest"
    key = "(-counts[c], s.index(c))" if tie == "first" else "(-counts[c], c)"
    return Spec(
        params={"tie": tie},
        name=f"most_common_char_{tie}",
        args=[("s", "str")],
        returns="str",
        doc=f"Return the character that occurs most often in s; on a tie return {tie_doc}. "
        "Return '' for an empty string.",
        body=f"if not s:\n    return ''\ncounts = {{}}\nfor c in s:\n    counts[c] = counts.get(c, 0) + 1\n"
        f"return min(counts, key=lambda c: {key})",
        gen=lambda r: (text(r, "abcde", 0, 10),),
        edge=[("",), ("edcba",)],
        difficulty=2,
        plan="Count each character in a dict, then pick the best by (highest count, tie-break).",
    )


_PAD_CHARS = string.ascii_letters + string.digits + "*.-#_+=~@$%&!?"


def _fixed_pad_input(width: int):
    # mostly shorter than the width: the worked examples are the longest of a few draws
    return lambda r: (text(r, "abcxyz", 0, width - 1) if r.random() < 0.85
                      else text(r, "xyz", width, width + 2),)


@family("strings")
def pad_string(r):
    side = r.choice(["left", "right"])
    ch = r.choice(_PAD_CHARS)
    fixed = r.choice([0, r.randint(3, 12)])  # 0: the width is an argument; else a constant
    fn = "rjust" if side == "left" else "ljust"
    width = "width" if not fixed else str(fixed)
    return Spec(
        params={"side": side, "ch": ch} if not fixed else {"side": side, "ch": ch, "width": fixed},
        name=f"pad_{side}" if not fixed else f"pad_{side}_to_{fixed}",
        args=[("s", "str"), ("width", "int")] if not fixed else [("s", "str")],
        returns="str",
        doc=f"Pad s on the {side} with {ch!r} until it is {width} characters long. Strings already "
        "at least that long come back unchanged.",
        body=f"return s.{fn}({width}, {ch!r})",
        gen=(lambda r: (text(r, "abcxyz", 0, 6), r.randint(0, 9))) if not fixed else _fixed_pad_input(fixed),
        edge=[("", 0), ("abc", 2)] if not fixed else [("",)],
        plan=f"Add {width} - len(s) copies of {ch!r} on the {side} when that is positive.",
    )


@family("strings")
def count_long_words(r):
    k = r.randint(2, 6)
    return Spec(
        params={"k": k},
        name=f"count_words_longer_than_{k}",
        args=[("sentence", "str")],
        returns="int",
        doc=f"Count the space-separated words of sentence that have more than {k} characters.",
        body=f"return sum(1 for w in sentence.split() if len(w) > {k})",
        gen=lambda r: (sentence(r, 0, 7),),
        edge=[("",)],
        plan=f"Split on whitespace and count words whose length exceeds {k}.",
    )


@family("strings")
def longest_word(r):
    tie = r.choice(["first", "last"])
    cmp = ">" if tie == "first" else ">="
    return Spec(
        params={"tie": tie},
        name=f"longest_word_{tie}",
        args=[("sentence", "str")],
        returns="str",
        doc=f"Return the longest space-separated word of sentence; if several are equally long, "
        f"return the {tie} of them. Return '' when there are no words.",
        body=f"best = ''\nfor w in sentence.split():\n    if len(w) {cmp} len(best):\n        best = w\n"
        "return best",
        gen=lambda r: (sentence(r, 0, 6, caps=False),),
        edge=[("",)],
        difficulty=2,
        plan="Keep the best word so far and replace it when a word is "
        + ("longer." if tie == "first" else "at least as long."),
    )


@family("strings")
def acronym(r):
    sep = r.choice(["", ".", "-", " "])
    return Spec(
        params={"sep": sep},
        name="acronym" if not sep else "acronym_" + {".": "dots", "-": "dashes", " ": "spaced"}[sep],
        args=[("phrase", "str")],
        returns="str",
        doc=f"Build an acronym from the first letter of each space-separated word of phrase, "
        f"uppercased and joined by {sep!r}.",
        body=f"return {sep!r}.join(w[0].upper() for w in phrase.split())",
        gen=lambda r: (sentence(r, 0, 5),),
        edge=[("",)],
        plan="Split into words, take each word's first letter uppercased, join them.",
    )


@family("strings")
def rotate_string(r):
    k = r.randint(1, 5)
    d = r.choice(["left", "right"])
    body = f"if not s:\n    return s\nk = {k} % len(s)\n" + (
        "return s[k:] + s[:k]" if d == "left" else "return s[len(s) - k:] + s[:len(s) - k]"
    )
    return Spec(
        params={"k": k, "dir": d},
        name=f"rotate_{d}_{k}",
        args=[("s", "str")],
        returns="str",
        doc=f"Rotate s {k} characters to the {d} (characters that fall off one end come back on "
        "the other; the rotation wraps around for short strings).",
        body=body,
        gen=lambda r: (text(r, "abcdefgh", 0, 9),),
        edge=[("",), ("a",)],
        difficulty=2,
        plan=f"Reduce {k} modulo the length, then join the two slices in swapped order.",
    )


@family("strings")
def balanced_brackets(r):
    pairs = r.choice(["()", "()[]", "()[]{}", "<>()"])
    opens, closes = pairs[0::2], pairs[1::2]
    return Spec(
        params={"pairs": pairs},
        name="balanced_"
        + "".join({"(": "round", "[": "square", "{": "curly", "<": "angle"}[o] for o in opens),
        args=[("s", "str")],
        returns="bool",
        doc=f"Return True if the brackets {' '.join(opens[i] + closes[i] for i in range(len(opens)))} "
        "in s are balanced and properly nested; other characters are ignored.",
        body=f"match = {dict(zip(closes, opens, strict=True))!r}\nstack = []\nfor c in s:\n"
        f"    if c in {opens!r}:\n        stack.append(c)\n    elif c in match:\n"
        "        if not stack or stack.pop() != match[c]:\n            return False\nreturn not stack",
        gen=lambda r: (text(r, pairs + pairs + "x", 0, 10),),
        edge=[("",), (pairs,), (pairs[::-1],)],
        difficulty=3,
        plan="Push opening brackets on a stack; a closing one must match the top; end with an empty stack.",
    )


@family("strings")
def dedupe_chars(r):
    mode = r.choice(["consecutive", "all"])
    doc = {
        "consecutive": "Collapse every run of the same character in s into one character.",
        "all": "Return s with repeated characters removed, keeping only the first occurrence of each.",
    }[mode]
    body = {
        "consecutive": "out = []\nfor c in s:\n    if not out or out[-1] != c:\n        out.append(c)\n"
        "return ''.join(out)",
        "all": "seen = set()\nout = []\nfor c in s:\n    if c not in seen:\n        seen.add(c)\n"
        "        out.append(c)\nreturn ''.join(out)",
    }[mode]
    return Spec(
        params={"mode": mode},
        name=f"dedupe_{mode}",
        args=[("s", "str")],
        returns="str",
        doc=doc,
        body=body,
        gen=lambda r: (text(r, "aabbcd", 0, 12),),
        edge=[("",)],
        difficulty=2,
        plan="Build the output one character at a time, skipping the ones that repeat.",
    )


@family("strings")
def interleave(r):
    rest = r.choice(["append", "drop"])
    tail = "out.append(a[n:] + b[n:])\n" if rest == "append" else ""
    return Spec(
        params={"rest": rest},
        name=f"interleave_{rest}",
        args=[("a", "str"), ("b", "str")],
        returns="str",
        doc="Merge a and b by alternating their characters, starting with a. "
        + (
            "Leftover characters of the longer string go at the end."
            if rest == "append"
            else "Stop when the shorter string runs out."
        ),
        body=f"n = min(len(a), len(b))\nout = [a[i] + b[i] for i in range(n)]\n{tail}return ''.join(out)",
        gen=lambda r: (text(r, "abcd", 0, 5), text(r, "WXYZ", 0, 5)),
        edge=[("", "xy")],
        difficulty=2,
        plan="Pair up characters position by position, then handle the longer string's tail.",
    )


@family("strings")
def word_lengths(r):
    sep = r.choice([" ", ",", ";"])
    return Spec(
        params={"sep": sep},
        name={" ": "word_lengths", ",": "field_lengths", ";": "item_lengths"}[sep],
        args=[("s", "str")],
        returns="list[int]",
        doc=f"Split s on {sep!r} and return the length of each piece, in order. "
        "An empty string gives an empty list.",
        body=f"if not s:\n    return []\nreturn [len(p) for p in s.split({sep!r})]",
        gen=lambda r: (sep.join(w[: r.randint(0, 6)] for w in [word(r) for _ in range(r.randint(0, 5))]),),
        edge=[("",)],
        plan=f"Split on {sep!r} and map each piece to its length.",
    )
