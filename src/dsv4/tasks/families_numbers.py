"""Arithmetic task families: digits, divisors, primes, bases and integer sequences."""

from __future__ import annotations

from dsv4.tasks.registry import NUMS, family
from dsv4.tasks.task import Spec

N = [("n", "int")]


@family("arithmetic")
def digit_op(r):
    op = r.choice(["sum", "product", "count_even", "max"])
    phrase = {
        "sum": "the sum of the decimal digits",
        "product": "the product of the decimal digits",
        "count_even": "how many decimal digits are even",
        "max": "the largest decimal digit",
    }[op]
    body = {
        "sum": "return sum(int(d) for d in str(abs(n)))",
        "product": "p = 1\nfor d in str(abs(n)):\n    p *= int(d)\nreturn p",
        "count_even": "return sum(1 for d in str(abs(n)) if int(d) % 2 == 0)",
        "max": "return max(int(d) for d in str(abs(n)))",
    }[op]
    return Spec(
        params={"op": op},
        name=f"digit_{op}",
        args=N,
        returns="int",
        doc=f"Return {phrase} of n (the sign of a negative n is ignored).",
        body=body,
        gen=lambda r: (r.choice([1, 1, -1]) * r.randint(0, 10 ** r.randint(1, 6)),),
        edge=[(0,)],
        plan="Turn abs(n) into its decimal string and combine the digits.",
    )


@family("arithmetic")
def count_digit(r):
    # A single digit, a digit string of two or three (non-overlapping, as str.count), or the
    # digits above/below a bound: the constant is in the docstring and the function name.
    kind = r.choice(["digit", "string", "string", "above", "below"])
    if kind == "digit":
        d = r.randint(0, 9)
        params, name, pat = {"d": d}, f"count_digit_{d}", str(d)
        what = f"how many times the digit {d} occurs"
        body, plan = f"return str(n).count('{d}')", f"Convert n to a string and count the character '{d}'."
    elif kind == "string":
        pat = "".join(r.choice("0123456789") for _ in range(r.randint(2, 3)))
        params, name = {"d": pat, "kind": kind}, f"count_digits_{pat}"
        what = f"how many times the digit string '{pat}' occurs (non-overlapping)"
        body, plan = f"return str(n).count('{pat}')", f"Convert n to a string and count '{pat}' in it."
    else:
        d = r.randint(0, 8) if kind == "above" else r.randint(1, 9)
        op, word = (">", "greater than") if kind == "above" else ("<", "less than")
        params, name, pat = {"d": d, "kind": kind}, f"count_digits_{kind}_{d}", str(d)
        what = f"how many digits {word} {d} there are"
        body = f"return sum(1 for c in str(n) if int(c) {op} {d})"
        plan = f"Go over the digits of str(n) and count those {word} {d}."
    return Spec(
        params=params,
        name=name,
        args=N,
        returns="int",
        doc=f"Count {what} in the decimal form of the non-negative integer n.",
        body=body,
        gen=lambda r: (int("".join(r.choice(["0123456789"[r.randint(0, 9)], pat])
                                   for _ in range(r.randint(1, 6)))),),
        edge=[(0,)],
        plan=plan,
    )


@family("arithmetic")
def primes(r):
    mode = r.choice(["is_prime", "count_below", "largest_factor", "next_prime"])
    helper = (
        "def _is_prime(m):\n    if m < 2:\n        return False\n    i = 2\n    while i * i <= m:\n"
        "        if m % i == 0:\n            return False\n        i += 1\n    return True\n"
    )
    spec = {
        "is_prime": (
            "bool",
            "Return True if n is a prime number, else False.",
            "return _is_prime(n)",
            lambda r: (r.randint(-3, 120),),
            1,
        ),
        "count_below": (
            "int",
            "Return how many prime numbers are smaller than n.",
            "return sum(1 for m in range(n) if _is_prime(m))",
            lambda r: (r.randint(0, 80),),
            2,
        ),
        "largest_factor": (
            "int",
            "Return the largest prime factor of n (n >= 2).",
            "m, f, best = n, 2, 1\nwhile f * f <= m:\n    while m % f == 0:\n        best = f\n"
            "        m //= f\n    f += 1\nreturn max(best, m) if m > 1 else best",
            lambda r: (r.randint(2, 2000),),
            3,
        ),
        "next_prime": (
            "int",
            "Return the smallest prime number strictly greater than n.",
            "m = n + 1\nwhile not _is_prime(m):\n    m += 1\nreturn m",
            lambda r: (r.randint(-5, 150),),
            2,
        ),
    }[mode]
    ret, doc, body, gen, diff = spec
    return Spec(
        params={"mode": mode},
        name=mode if mode == "is_prime" else f"prime_{mode}",
        args=N,
        returns=ret,
        doc=doc,
        body=helper + body,
        gen=gen,
        difficulty=diff,
        plan="Write a trial-division primality check and use it.",
    )


@family("arithmetic")
def to_base(r):
    b = r.randint(2, 9)
    return Spec(
        params={"b": b},
        name=f"to_base_{b}",
        args=N,
        returns="str",
        doc=f"Return the representation of the non-negative integer n in base {b}, as a string "
        "of digits without leading zeros ('0' for zero).",
        body=f"if n == 0:\n    return '0'\ndigits = []\nwhile n > 0:\n    digits.append(str(n % {b}))\n"
        f"    n //= {b}\nreturn ''.join(reversed(digits))",
        gen=lambda r: (r.randint(0, 5000),),
        edge=[(0,), (b,)],
        difficulty=2,
        plan=f"Repeatedly take n % {b} as the next digit and divide by {b}; reverse at the end.",
    )


@family("arithmetic")
def fizz_words(r):
    a, b = sorted(r.sample([2, 3, 4, 5, 6, 7], 2))
    wa, wb = r.sample(["Fizz", "Buzz", "Ping", "Pong", "Zap", "Bop"], 2)
    return Spec(
        params={"a": a, "b": b, "wa": wa, "wb": wb},
        name=f"say_{wa.lower()}_{wb.lower()}",
        args=N,
        returns="list[str]",
        doc=f"Return a list for the numbers 1 to n: {wa + wb!r} for multiples of both {a} and {b}, "
        f"{wa!r} for other multiples of {a}, {wb!r} for other multiples of {b}, and the number "
        "itself as a string otherwise.",
        body=f"out = []\nfor i in range(1, n + 1):\n    w = ''\n    if i % {a} == 0:\n        w += {wa!r}\n"
        f"    if i % {b} == 0:\n        w += {wb!r}\n    out.append(w or str(i))\nreturn out",
        gen=lambda r: (r.randint(0, 16),),
        edge=[(0,)],
        difficulty=2,
        plan="Loop from 1 to n, build the word from the two divisibility tests, else use the number.",
    )


@family("arithmetic")
def multiples_sum(r):
    a, b = sorted(r.sample(range(2, 31), 2))
    return Spec(
        params={"a": a, "b": b},
        name=f"sum_multiples_{a}_{b}",
        args=N,
        returns="int",
        doc=f"Return the sum of the positive integers below n that are multiples of {a} or {b}.",
        body=f"return sum(i for i in range(1, n) if i % {a} == 0 or i % {b} == 0)",
        gen=lambda r: (r.randint(0, 4 * b),),
        edge=[(0,)],
        plan="Loop below n and add numbers divisible by either value.",
    )


@family("arithmetic")
def reverse_number(r):
    mode = r.choice(["reverse", "is_palindrome", "rotate"])
    spec = {
        "reverse": (
            "int",
            "Return n with its decimal digits reversed, keeping the sign (leading "
            "zeros of the result vanish).",
            "s = str(abs(n))[::-1]\nreturn -int(s) if n < 0 else int(s)",
        ),
        "is_palindrome": (
            "bool",
            "Return True if the decimal digits of the non-negative n read the same in both directions.",
            "return str(n) == str(n)[::-1]",
        ),
        "rotate": (
            "int",
            "Move the last decimal digit of the non-negative n to the front and return the resulting number.",
            "s = str(n)\nreturn int(s[-1] + s[:-1])",
        ),
    }[mode]

    def gen(r):
        n = r.randint(0, 10 ** r.randint(1, 5))
        if mode == "is_palindrome" and r.random() < 0.5:
            s = str(n)
            n = int(s + s[::-1][r.randint(0, 1) :])
        return (-n if mode == "reverse" and r.random() < 0.3 else n,)

    return Spec(
        params={"mode": mode},
        name=f"number_{mode}",
        args=N,
        returns=spec[0],
        doc=spec[1],
        body=spec[2],
        gen=gen,
        edge=[(0,)],
        plan="Work on the decimal string of the number.",
    )


@family("arithmetic")
def linear_recurrence(r):
    a, b = r.randint(0, 3), r.randint(1, 4)
    p, q = r.choice([(1, 1), (2, 1), (1, 2), (1, 3), (3, 1)])
    rec = f"s[i] = {p} * s[i - 1] + {q} * s[i - 2]"
    return Spec(
        params={"a": a, "b": b, "p": p, "q": q},
        name="sequence_term",
        args=N,
        returns="int",
        doc=f"A sequence starts s[0] = {a}, s[1] = {b} and continues {rec}. Return s[n] for n >= 0.",
        body=f"x, y = {a}, {b}\nfor _ in range(n):\n    x, y = y, {p} * y + {q} * x\nreturn x",
        gen=lambda r: (r.randint(0, 20),),
        edge=[(0,), (1,)],
        difficulty=2,
        plan="Keep the last two terms and step the recurrence n times.",
    )


@family("arithmetic")
def divisors(r):
    mode = r.choice(["count", "sum_proper", "list", "is_perfect"])
    spec = {
        "count": (
            "int",
            "Return how many positive divisors the positive integer n has.",
            "return sum(1 for d in range(1, n + 1) if n % d == 0)",
        ),
        "sum_proper": (
            "int",
            "Return the sum of the positive divisors of n that are smaller than n.",
            "return sum(d for d in range(1, n) if n % d == 0)",
        ),
        "list": (
            "list[int]",
            "Return the positive divisors of the positive integer n in ascending order.",
            "return [d for d in range(1, n + 1) if n % d == 0]",
        ),
        "is_perfect": (
            "bool",
            "Return True if n equals the sum of its positive divisors smaller than n (and n > 0).",
            "return n > 0 and sum(d for d in range(1, n) if n % d == 0) == n",
        ),
    }[mode]
    return Spec(
        params={"mode": mode},
        name=f"divisors_{mode}",
        args=N,
        returns=spec[0],
        doc=spec[1],
        body=spec[2],
        gen=lambda r: (r.choice([6, 28, 12, 1]) if r.random() < 0.2 else r.randint(1, 120),),
        edge=[(1,)],
        difficulty=1 if mode != "is_perfect" else 2,
        plan="Test every candidate divisor from 1 up to n.",
    )


@family("arithmetic")
def gcd_lcm(r):
    mode = r.choice(["gcd", "lcm"])
    body = (
        "g = 0\nfor x in nums:\n    a, b = g, abs(x)\n    while b:\n"
        "        a, b = b, a % b\n    g = a\nreturn g"
        if mode == "gcd"
        else "m = 1\nfor x in nums:\n    a, b = m, x\n    while b:\n"
        "        a, b = b, a % b\n    m = m * x // a\nreturn m"
    )
    doc = (
        "Return the greatest common divisor of all numbers in nums (0 for an empty list)."
        if mode == "gcd"
        else "Return the least common multiple of the positive integers in nums (1 for an empty list)."
    )
    lo = 0 if mode == "gcd" else 1
    return Spec(
        params={"mode": mode},
        name=f"list_{mode}",
        args=NUMS,
        returns="int",
        doc=doc,
        body=body,
        gen=lambda r: ([r.randint(lo, 12) * r.choice([1, 2, 6]) for _ in range(r.randint(0, 4))],),
        edge=[([],)],
        difficulty=2,
        plan="Fold Euclid's algorithm over the list.",
    )


@family("arithmetic")
def collatz(r):
    mode = r.choice(["steps", "peak"])
    doc = (
        "Starting from the positive integer n, repeatedly halve it when even and replace it by "
        "3 * n + 1 when odd. Return "
        + (
            "how many steps it takes to reach 1."
            if mode == "steps"
            else "the largest value reached (n included)."
        )
    )
    body = (
        "steps = 0\nwhile n != 1:\n    n = n // 2 if n % 2 == 0 else 3 * n + 1\n    steps += 1\nreturn steps"
        if mode == "steps"
        else "best = n\nwhile n != 1:\n    n = n // 2 if n % 2 == 0 else 3 * n + 1\n"
        "    best = max(best, n)\nreturn best"
    )
    return Spec(
        params={"mode": mode},
        name=f"collatz_{mode}",
        args=N,
        returns="int",
        doc=doc,
        body=body,
        gen=lambda r: (r.randint(1, 60),),
        edge=[(1,)],
        difficulty=2,
        plan="Simulate the process in a while loop until n becomes 1.",
    )


@family("arithmetic")
def clock_add(r):
    m = r.choice([7, 12, 24, 60, 10])
    return Spec(
        params={"m": m},
        name=f"add_mod_{m}",
        args=[("a", "int"), ("b", "int")],
        returns="int",
        doc=f"Add a and b on a clock with {m} positions (0 to {m - 1}): return (a + b) wrapped into "
        f"that range, also for negative inputs.",
        body=f"return (a + b) % {m}",
        gen=lambda r: (r.randint(-30, 30), r.randint(-30, 30)),
        plan=f"Python's % with a positive modulus already lands in 0..{m - 1}.",
    )
