"""The batch grammar reads ASCII digits only and refuses a batch beyond its size limits from the string
alone (nothing expanded), each with one message naming the value."""

from __future__ import annotations

import time

import pytest

from adapters.grammar import MAX_SEQUENCES, MAX_TOKENS, parse_grammar, resolve_lengths


@pytest.mark.parametrize("text, odd", [("８q1c100", "８"), ("8q１c100", "１"), ("8q1c~normal(mean=٣,sd=1)", "٣")])
def test_only_ascii_digits(text, odd):
    with pytest.raises(ValueError, match="not an ASCII character") as caught:
        parse_grammar(text)
    assert odd in str(caught.value) and text in str(caught.value)


def test_a_negative_count_names_the_group():
    with pytest.raises(ValueError, match=r"group '-3q1c10' is not of the form"):
        parse_grammar("-3q1c10")


@pytest.mark.parametrize("text, needle", [
    ("100000000q1c1000000", f"at most {MAX_SEQUENCES}"),
    (f"{MAX_SEQUENCES}q1c0_1q1c0", f"at most {MAX_SEQUENCES}"),
    ("1000q1c10000000", f"at most {MAX_TOKENS}"),
    ("10000q1c~lognormal(median=1k,sigma=1,max=1000000)", f"at most {MAX_TOKENS}"),  # counted at its largest
])
def test_too_large_a_batch_is_refused_at_once(text, needle):
    started = time.monotonic()
    with pytest.raises(ValueError, match=needle):
        resolve_lengths(text, 0)
    assert time.monotonic() - started < 1.0


def test_the_limits_leave_real_batches_alone():
    q_lens, kv_lens = resolve_lengths("64q1c16k_8q2kc2k_32q1c~lognormal(median=2k,sigma=1,max=32k)", 0)
    assert len(q_lens) == 104 and max(kv_lens) <= 32 * 1024 + 1
