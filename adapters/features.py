"""The attention features of today's models beyond plain causal attention, as batch fields (torch-free).

- ``sliding_window`` W (Mistral, Gemma 2/3, gpt-oss): the model config's ``sliding_window``. The query
  at absolute position p (keys are numbered 0..kv_len-1 in cache order, the new tokens last) sees key j
  iff ``p - W < j <= p``: W keys, itself included. Libraries that take a left bound (FlashAttention's
  ``window_size[0]``, FlashInfer's ``window_left``) take ``W - 1`` (`window_left`), as vLLM passes it.
- ``softcap`` c (Gemma 2: 50): each scaled score s becomes ``c * tanh(s / c)`` before the softmax.
- ``sinks`` (gpt-oss): one learned logit per query head that enters every row's softmax denominator
  and contributes no value: ``p_j = exp(s_j) / (exp(sink_h) + sum_k exp(s_k))``. The suite's LSE is then
  ``log(exp(sink_h) + sum_k exp(s_k))``; the sink logits are drawn from the batch's seed.
- ``kv_dtype`` "fp8": the K and V caches hold float8 e4m3 (torch.float8_e4m3fn) with float32 scales,
  one per tensor (``kv_scale`` "tensor") or one per KV head ("head"); the true value is ``fp8 * scale``.

A window needs causal attention (it ends at the query's own position); a cap and sinks work either way.
"""

from __future__ import annotations

from typing import Any

FEATURES: tuple[str, ...] = ("sliding_window", "softcap", "sinks", "fp8_kv")
"""Feature names, in the order case names and reports list them."""

FEATURE_TEXT: dict[str, str] = {
    "sliding_window": "sliding-window attention",
    "softcap": "logit soft-capping",
    "sinks": "attention sinks (a learned logit per head)",
    "fp8_kv": "an fp8 (e4m3) KV cache with scales",
}
"""What each feature is, in words (refusals and reports)."""

KV_DTYPES: tuple[str, ...] = ("fp8",)
"""Cache dtypes besides the query's own (``kv_dtype``; None keeps the cache in the query's dtype)."""

KV_SCALES: tuple[str, ...] = ("tensor", "head")
"""Granularity of an fp8 cache's scales: one per tensor (K and V each), or one per KV head."""

FP8_MAX = 448.0
"""Largest finite float8 e4m3fn value: the scales map each head's largest magnitude onto it."""


def window_left(sliding_window: int) -> int:
    """The left bound libraries take (keys before the query's own position) for a window of W keys."""
    return sliding_window - 1


def features_of(fields: Any) -> tuple[str, ...]:
    """The features a spec or case asks for (anything with the four fields), in `FEATURES` order."""
    wanted = {
        "sliding_window": getattr(fields, "sliding_window", None) is not None,
        "softcap": getattr(fields, "softcap", None) is not None,
        "sinks": bool(getattr(fields, "sinks", False)),
        "fp8_kv": getattr(fields, "kv_dtype", None) == "fp8",
    }
    return tuple(name for name in FEATURES if wanted[name])


def _feature_parts(fields: dict[str, Any]) -> list[tuple[str, str]]:
    """(case-name part, words) of each feature set in ``fields``, in `FEATURES` order."""
    parts = []
    if fields.get("sliding_window") is not None:
        parts.append((f"w{fields['sliding_window']}", f"window {fields['sliding_window']}"))
    if fields.get("softcap") is not None:
        parts.append((f"cap{fields['softcap']:g}", f"soft-cap {fields['softcap']:g}"))
    if fields.get("sinks"):
        parts.append(("sinks", "sinks"))
    if fields.get("kv_dtype") is not None:
        scale = fields.get("kv_scale") or "tensor"
        parts.append((f"kv{fields['kv_dtype']}" + ("h" if scale == "head" else ""),
                      f"{fields['kv_dtype']} KV (per-{scale} scales)"))
    return parts


def feature_suffix(fields: dict[str, Any]) -> list[str]:
    """Case-name parts of the features in ``fields``: ``w{W}``, ``cap{c}``, ``sinks``, ``kvfp8`` (per-tensor
    scales) or ``kvfp8h`` (per-head)."""
    return [name for name, _ in _feature_parts(fields)]


def feature_words(fields: dict[str, Any]) -> list[str]:
    """The features in ``fields`` in words, e.g. ``["window 4096", "soft-cap 50", "sinks", "fp8 KV
    (per-head scales)"]`` (batch descriptions, the model presets' listing)."""
    return [words for _, words in _feature_parts(fields)]


def check_features(sliding_window: Any, softcap: Any, sinks: Any, kv_dtype: Any, kv_scale: Any,
                   causal: bool) -> tuple[str, str] | None:
    """(field, message) of the first invalid feature field, or None when all are valid."""
    if sliding_window is not None:
        if isinstance(sliding_window, bool) or not isinstance(sliding_window, int) or sliding_window < 1:
            return "sliding_window", f"{sliding_window!r} is not a positive number of keys"
    if softcap is not None:
        if isinstance(softcap, bool) or not isinstance(softcap, (int, float)) or not softcap > 0 \
                or softcap == float("inf"):
            return "softcap", f"{softcap!r} is not a positive, finite cap"
    if not isinstance(sinks, bool):
        return "sinks", f"{sinks!r} is not true or false"
    if kv_dtype is not None and kv_dtype not in KV_DTYPES:
        return "kv_dtype", f"{kv_dtype!r} is not one of {', '.join(KV_DTYPES)} (leave it out for the query's dtype)"
    if kv_scale not in KV_SCALES:
        return "kv_scale", f"{kv_scale!r} is not one of {', '.join(KV_SCALES)}"
    if not causal and sliding_window is not None:
        return "sliding_window", "a sliding window needs causal attention (the window ends at the query's own position)"
    return None
