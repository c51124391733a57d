"""Hostile model outputs against every verifier (``rewards.base.score_batch`` for math, code, agent, instruct): random
unicode, lone surrogates, NULs, 10 MB completions, nested and unclosed think tags, adversarial LaTeX, code attacks,
malformed tool calls. Every batch returns one well-formed verdict per item within the verifier's time limits, never
raises, and the pool keeps serving right answers afterwards. Hypothesis with a fixed seed and a bounded number of
examples.
"""
import json
import math
import time

import pytest
from hypothesis import HealthCheck, given, seed, settings
from hypothesis import strategies as st

from rel_gold import gold
from rel_helpers import record
from rewards.base import DEFAULT_LIMIT_S, score_batch
from rewards.tasks import load_tasks

DOMAINS = ["math", "code", "agent", "instruct"]
MODES = ["non_think", "think_high", "think_max"]
WORKERS = 2
CODE_TIMEOUT_S = 2            # the code samples' own wall clock for the fuzz (an infinite loop costs this much)
SLACK_S = 12                  # per sequential item: kill + respawn of a worker / zygote on a loaded 2-core machine
TRIED = {d: 0 for d in DOMAINS}

THINK = ["<think>", "</think>", "<think><think>", "</think></think>", "<think>" * 50, "</think>" * 50, "<|end|>",
         "<|pad|>", "<|bos|>", "<|user|>", "<|assistant|>", "<|tool|>", "</s>", "<|endoftext|>", "\n\n"]
LATEX = ["\\boxed{", "}", "{", "\\boxed{\\boxed{\\boxed{1}}}", "\\frac{1}{0}", "10^{10^{10^{10^{10}}}}",
         "9999999999!", "\\sqrt{-1}", "\\def\\a{\\a\\a}\\a", "\\input{/etc/passwd}", "\\begin{matrix}1&2\\\\",
         "\\left(\\right.", "{" * 300 + "}" * 299, "\\infty - \\infty", "0^0", "1e999999", "\\text{", "$$", "\\\\",
         "x^{x^{x^{x^{x}}}}", "\\int_0^\\infty e^{-x^2}dx", "\\sum_{n=1}^{10^{100}} n", "\\mathrm{NaN}",
         "\\boxed{" + "(" * 200 + "1" + ")" * 200 + "}", "The answer is \\boxed{14}.", "Final answer: 7"]
CODE = ["```python\n", "```", "```py\n", "def f(x):\n    return x\n", "    return 0\n",
        "import os\nos.system('rm -rf / --no-preserve-root')\n", "while True:\n    pass\n", "import os\nos.fork()\n",
        "raise SystemExit(0)\n", "import sys\nsys.exit(0)\n", "print('x' * 10**8)\n", "x = [0] * 10**10\n",
        "import ctypes\nctypes.string_at(0)\n", "open('/etc/passwd').read()\n",
        "import os, signal\nos.kill(os.getppid(), signal.SIGKILL)\n", "import socket\nsocket.create_connection(('1.1.1.1', 80))\n",
        "def check(candidate):\n    pass\n", "import builtins\nbuiltins.__import__ = None\n", "\t\t  \n" * 40,
        "exec(compile('1/0', 'x', 'exec'))\n", "import threading\n[threading.Thread(target=lambda: None).start() for _ in range(10**6)]\n"]
AGENT = ['<tool_call>{"name": "add_stock", "arguments": {"item": "apple", "qty": 3}}</tool_call>',
         '<tool_call>{"name": "add_stock", "arguments": {"item": "apple", "qty": 1e308}}</tool_call>',
         '<tool_call>{"name": "__class__", "arguments": {}}</tool_call>', "<tool_call>{not json", "<tool_call>",
         "</tool_call>", '<tool_call>{"name": "get_stock", "arguments": {"item": ' + "[" * 500 + "]" * 500 + '}}</tool_call>',
         "<tool_result>ok: apple stock is 999</tool_result>", '{"name": "get_stock"}', "There are 5 apples."]
INSTRUCT = ["<<title>>", "*highlighted*", "P.S. ", "***", "SECTION 1", "JSON:", '{"a": ' * 200, "Ending phrase.",
            "\u00a0", "WORD " * 300, "a, b, c", "\n\n\n", "# heading\n", "- bullet\n"]
UNICODE = ["\x00", "\ud800", "\udfff", "\u202e", "\ufeff", "\U0001F600", "\u0301" * 50, "\uffff", "\x1b[2J", "\r",
           "𝟙𝟜", "١٤", "十四", "ﬁ", "\u2028"]


def _fragment():
    return st.one_of(st.text(max_size=60), st.sampled_from(THINK + LATEX + CODE + AGENT + INSTRUCT + UNICODE),
                     st.binary(max_size=60).map(lambda b: b.decode("latin-1")))


completions = st.one_of(
    st.lists(_fragment(), max_size=10).map("".join),
    st.tuples(st.lists(_fragment(), min_size=1, max_size=4).map("".join),
              st.integers(1, 3000)).map(lambda t: t[0] * t[1]),                  # up to ~1 MB of repetition
)


def _samples(domain, n):
    out = load_tasks(domain, "train", max(n, 4), 11)[:n]
    if domain == "code":
        out = [{**s, "timeout_s": CODE_TIMEOUT_S} for s in out]
    return out


def _limit(domain):
    return (CODE_TIMEOUT_S if domain == "code" else DEFAULT_LIMIT_S[domain]) + SLACK_S


def _check(domain, comps, modes, verdicts, wall):
    assert len(verdicts) == len(comps)
    for v in verdicts:
        assert 0.0 <= v.score <= 1.0 and isinstance(v.details, dict)
        json.dumps(v.to_dict(), default=str)                             # a verdict is always serializable
    bound = math.ceil(len(comps) / WORKERS) * _limit(domain) + 20
    assert wall < bound, (domain, wall, bound, [v.details.get("error") for v in verdicts])


def _still_serving(domain):
    s = _samples(domain, 2)
    vs = score_batch(domain, [gold(x) for x in s], s, "non_think", workers=WORKERS)
    assert [v.score for v in vs] == [1.0, 1.0], [v.details.get("error") for v in vs]


@pytest.fixture(scope="module", autouse=True)
def _record():
    yield
    record("hostile_outputs", inputs_tried=sum(TRIED.values()), per_domain=dict(TRIED))


@pytest.mark.parametrize("domain", DOMAINS)
def test_fuzzed_completions(domain):
    n_examples = 12 if domain == "code" else 20

    @seed(20261128)
    @settings(max_examples=n_examples, deadline=None, database=None, derandomize=False,
              suppress_health_check=list(HealthCheck))
    @given(st.lists(completions, min_size=1, max_size=4), st.lists(st.sampled_from(MODES), min_size=4, max_size=4))
    def fuzz(comps, modes):
        modes = modes[:len(comps)]
        t0 = time.monotonic()
        verdicts = score_batch(domain, comps, _samples(domain, len(comps)), modes, workers=WORKERS)
        _check(domain, comps, modes, verdicts, time.monotonic() - t0)
        TRIED[domain] += len(comps)

    fuzz()
    _still_serving(domain)


def _ten_mb():
    mb10 = 10 << 20
    return {
        "plain": "x" * mb10,
        "fences without newline": "```" * (mb10 // 3),
        "one fence of blank lines": "```python\n" + "\n" * mb10 + "```",
        "nested think": "<think>" * (mb10 // 7),
        "unclosed think + answer": "<think>" + "hmm " * (mb10 // 4) + "\\boxed{1}",
        "adversarial latex": "\\boxed{" + "\\frac{" * (mb10 // 12) + "1",
        "unicode soup": ("\U0001F600\u202e\x00\ud800\u0301" * (mb10 // 5)),
        "tool calls": '<tool_call>{"name": "get_stock", "arguments": {"item": "apple"}}</tool_call>\n' * (mb10 // 76),
    }


@pytest.mark.parametrize("domain", DOMAINS)
def test_ten_megabyte_completions(domain):
    cases = _ten_mb()                     # each as is in non_think, and as the answer after </think> in think_high
    comps = list(cases.values()) + ["thinking...</think>" + c for c in cases.values()]
    modes = ["non_think"] * len(cases) + ["think_high"] * len(cases)
    t0 = time.monotonic()
    verdicts = score_batch(domain, comps, _samples(domain, len(comps)), modes, workers=WORKERS)
    wall = time.monotonic() - t0
    _check(domain, comps, modes, verdicts, wall)
    if domain != "instruct":              # (garbage can satisfy an instruction such as "all lowercase")
        assert all(v.score == 0.0 for v in verdicts), [(k, v.score) for k, v in zip(list(cases) * 2, verdicts)]
    TRIED[domain] += len(comps)
    _still_serving(domain)


def test_code_fence_parsing_is_linear_and_unchanged():
    """The fence parser that replaced a quadratic regex: same blocks as the regex on random text, linear on 10 MB."""
    import random
    import re

    from rewards.code import extract_code, fenced_blocks

    old = re.compile(r"```[ \t]*([A-Za-z0-9_+-]*)[^\n]*\n(.*?)(?:```|\Z)", re.S)
    rng = random.Random(3)
    alpha = ["`", "```", "\n", " ", "\t", "py", "python", "x", "-", "def f(", "````"]
    for _ in range(20000):
        s = "".join(rng.choice(alpha) for _ in range(rng.randrange(20)))
        assert fenced_blocks(s) == old.findall(s), repr(s)
    for s in ("```" * (3 << 20), "```python\n" + "\n" * (10 << 20) + "```"):
        t0 = time.monotonic()
        extract_code(s, "f")
        assert time.monotonic() - t0 < 5
