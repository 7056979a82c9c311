"""Warp-specialised prefill for Hopper (sm_90), in Gluon: the structure the single-loop Triton kernel
cannot get from Triton 3.6 (see ``docs/triton_kernel_notes.md``, "What is still short").

One program owns one tile of ``block_m`` rows, 128 or 64 (``block_m // GROUP`` queries x the ``GROUP`` query
heads of one KV head, packed as in the Triton kernel), or with ``persistent`` (the D=64 and D=128 entries) as many
programs as the multiprocessors hold loop over tiles, each taking its next from a counter of the launch as it nears
the end of the one before (``_producer_tiles``), and runs three partitions (two with one consumer):

- a **producer** warp that reads the block table and issues TMA loads of each key step's K and V tile
  (``BLOCK_N`` keys; one load per 16 keys, each piece's page looked up: ``tma_keys``) into a ring of
  ``NUM_STAGES`` shared buffers, signalling "ready" mbarriers;
- one or two **consumer** warpgroups, each owning 64 of the tile's rows: ``S = Q K^T`` and ``O += P V`` with
  asynchronous ``wgmma`` from shared memory and the online softmax in registers, in the order the config's
  ``schedule`` names: ``"step"`` waits for each product within its step, ``"paired"`` issues a step's ``Q K^T``
  behind the step before's ``P V`` and waits for both at once, ``"pingpong"`` and ``"overlap"`` are FlashAttention
  3's two schedules on top of it (``"overlap"``: the table's D=128 and D=256 entries); a tile's key steps run in
  ranges whose masks are compiled in, or with ``one_range`` (windows) in one. No product stays in flight across the
  key loop's back edge: that makes ptxas serialise every wgmma (warning C7512), which cost 10 to 20 %. Each consumer
  releases a buffer (an "empty" mbarrier that both must arrive at) once its products have read it.

Registers move to the consumers (``setmaxnreg``: the producer keeps ``PRODUCER_REGISTERS``), so the
two 64-row accumulators of a 128 x D tile and the scores fit without spilling where the single-loop
kernel runs one 8-warp program at 255 registers (D=256) or two capped at 128 (D=128); the two
warpgroups' instruction streams interleave on the SM, one's softmax beside the other's products.

Scope: causal (bottom-right) or not, bf16/fp16, head dim 64/128/256, caches contiguous with
``Hkv * D`` elements per slot (the TMA view ``[num_pages * page_size, Hkv * D]``) and page sizes that
are a multiple of 16; the Triton kernel's model features but the float8 cache, each a
constexpr switch (off, the code is the plain kernel's): a sliding window (key steps before a tile's first
visible key are skipped, its left edge masked), a soft-cap (``c * tanh(s / c)`` on each score, as the
Triton kernel computes it) and sinks (a per-head logit in each row's denominator and LSE, folded in once
per row where the tile is written). No key split or float8 cache: those run the Triton kernel
(``hopper_prefill_refusal`` says why not). Gluon has no interpreter; the kernel is checked against the
fp32 reference on the GPU (``tests/test_hopper_prefill.py``) and compiled for sm_90 on the CPU.
"""

from __future__ import annotations

import math

import torch
from triton.experimental import gluon
from triton.experimental.gluon import language as gl
from triton.experimental.gluon.language.nvidia.hopper import (fence_async_shared, mbarrier, tma, warpgroup_mma,
                                                              warpgroup_mma_init, warpgroup_mma_wait)

from .configs import (HOPPER_PREFILL_CONSUMER_ROWS, HOPPER_PREFILL_TABLE, HOPPER_PREFILL_TMA_KEYS,
                      HopperPrefillConfig, hopper_prefill_config)
from .device import LOG2E, _find_sequence, _tanh
from .plan import register_report

# Triton 3.6 names the TMA load ``async_copy_global_to_shared``; later versions ``async_load``.
_tma_load = getattr(tma, "async_load", None) or tma.async_copy_global_to_shared
# ... and the barrier of a partition's warps ``thread_barrier``; later versions ``barrier``.
_warps_barrier = getattr(gl, "thread_barrier", None) or gl.barrier

CONSUMER_ROWS = HOPPER_PREFILL_CONSUMER_ROWS
"""Rows one consumer warpgroup owns (a wgmma instruction's M is 64 per warpgroup); a tile has one or two."""
PRODUCER_REGISTERS = 24
"""Registers per thread the producer warp keeps (setmaxnreg's minimum): it holds scalars only."""
CONSUMER_REGISTERS = 240
"""Registers per thread of the second consumer warpgroup; the first (the default partition) gets what
the launch's ``maxnreg`` leaves, the same 240 with ``LAUNCH_MAXNREG``."""
LAUNCH_MAXNREG = {2: 168, 1: 128}
"""Registers per thread the launch asks for, by consumer warpgroups: 12 warps (4 + 4 consumer, 1 producer padded
to a warpgroup) x 32 threads x 168 fill the 64K registers of one multiprocessor; with one consumer 8 warps x 32 x
128 fill half of them, so that two programs can share it, and the consumer gets the 232 its producer leaves."""
TMA_PIECE = 16
"""The fewest keys one TMA load brings, and the page-size granularity the kernel needs (``tma_keys``)."""

# the same values as constexprs, for the device code (a jit function reads no plain globals)
_ROWS = gl.constexpr(CONSUMER_ROWS)
_PRODUCER_REGISTERS = gl.constexpr(PRODUCER_REGISTERS)
_CONSUMER_REGISTERS = gl.constexpr(CONSUMER_REGISTERS)
_LN2 = gl.constexpr(math.log(2.0))
_ZERO_ROWS = gl.constexpr(16)  # rows of V zeroed at once past a sequence's last key
TILE_SLOTS = 4
"""Tile numbers a persistent program's producer may hand its consumers ahead of them (``_tile_queue``): one more than
the deepest ring (3 stages), so that a run of one-step tiles does not hold the producer back."""
_TILE_SLOTS = gl.constexpr(TILE_SLOTS)


# --------------------------------------------------------------------------------------------------
# Device code
# --------------------------------------------------------------------------------------------------

@gluon.constexpr_function
def _io_layout(head_dim):
    """Blocked layout of a 64 x D tile for global loads and stores: 8 elements (16 bytes) per thread,
    a row's threads side by side."""
    threads_d = min(32, head_dim // 8)
    return gl.BlockedLayout([1, 8], [32 // threads_d, threads_d], [4, 1], [1, 0])


@gluon.constexpr_function
def _mma_layout(width):
    """The accumulator layout of one warpgroup's 64-row wgmma products ``width`` wide: the scores' (the step's keys) or
    O's (the head dim)."""
    return gl.NVMMADistributedLayout(version=[3, 0], warps_per_cta=[4, 1], instr_shape=[16, width, 16])


@gluon.jit
def _producer(state, HEAD_DIM: gl.constexpr, PAGE_SIZE: gl.constexpr, BLOCK_N: gl.constexpr,
              NUM_STAGES: gl.constexpr, K_AHEAD: gl.constexpr):
    """One warp: TMA loads of each step's K and V tiles into the ring, K before V so that the first
    product can start while V is in flight. ``state``: the program's runtime values (``_state`` in the
    kernel); the constexprs come as arguments of their own."""
    _produce_tile(state, 0, HEAD_DIM, PAGE_SIZE, BLOCK_N, NUM_STAGES, K_AHEAD)


@gluon.jit
def _ring_stage(slot, NUM_STAGES: gl.constexpr):
    """The ring's slot ``slot`` (counted from a program's first key step) -> its stage and the phase of that stage's
    mbarriers."""
    return slot % NUM_STAGES, (slot // NUM_STAGES) & 1


@gluon.jit
def _load_tile(desc, bufs, ready_bars, empty_bars, slot, step, block_table_row_ptr, last_page, head_col,
               HEAD_DIM: gl.constexpr, PAGE_SIZE: gl.constexpr, BLOCK_N: gl.constexpr, NUM_STAGES: gl.constexpr):
    """Step ``step``'s K (or V) tile into the ring's slot ``slot``: once the consumers have released its stage, TMA
    loads of the launcher's ``tma_keys`` keys each, each piece's page clamped to the sequence's last page (keys past
    kv_len are masked later)."""
    PIECE: gl.constexpr = desc.block_shape[0]  # keys per TMA load: the launcher's choice (tma_keys)
    NUM_PIECES: gl.constexpr = BLOCK_N // PIECE
    tile_bytes: gl.constexpr = BLOCK_N * HEAD_DIM * desc.dtype.primitive_bitwidth // 8
    stage, phase = _ring_stage(slot, NUM_STAGES)
    ready = ready_bars.index(stage)
    mbarrier.wait(empty_bars.index(stage), phase ^ 1)
    mbarrier.expect(ready, tile_bytes)
    for piece in gl.static_range(NUM_PIECES):
        key = step * BLOCK_N + piece * PIECE
        page = gl.load(block_table_row_ptr + gl.minimum(key // PAGE_SIZE, last_page))
        row = page * PAGE_SIZE + key % PAGE_SIZE
        if NUM_PIECES == 1:
            dest = bufs.index(stage)
        else:
            dest = bufs.index(stage).slice(piece * PIECE, PIECE)
        _tma_load(desc, [row, head_col], ready, dest)


@gluon.jit
def _produce_tile(state, ring_base, HEAD_DIM: gl.constexpr, PAGE_SIZE: gl.constexpr, BLOCK_N: gl.constexpr,
                  NUM_STAGES: gl.constexpr, K_AHEAD: gl.constexpr):
    """The producer's loads for one tile; its first step takes the ring's slot ``ring_base`` (0 for a
    program of one tile; a persistent program counts on across its tiles). Each step's K, then its V; with
    ``K_AHEAD`` (``HopperPrefillConfig.k_ahead``) the next step's K before this step's V, so that a K tile the
    consumers want next never waits behind a V stage they have not released yet."""
    (q_ptr, out_ptr, lse_ptr, block_table_row_ptr, k_desc, v_desc, q_bufs, k_bufs, v_bufs, k_ready, v_ready,
     k_empty, v_empty, tile_start, q_start, q_len, kv_len, kv_head, num_steps, mid_steps, first_step, left_end,
     window, qk_scale, stride_q_t, stride_q_h, stride_o_t, stride_o_h, softcap_in, sinks_ptr) = state
    last_page = (kv_len - 1) // PAGE_SIZE
    head_col = kv_head * HEAD_DIM
    if K_AHEAD:
        for step in range(first_step, num_steps + 1):
            slot = ring_base + step - first_step
            if step < num_steps:
                _load_tile(k_desc, k_bufs, k_ready, k_empty, slot, step, block_table_row_ptr, last_page, head_col,
                           HEAD_DIM, PAGE_SIZE, BLOCK_N, NUM_STAGES)
            if step > first_step:
                _load_tile(v_desc, v_bufs, v_ready, v_empty, slot - 1, step - 1, block_table_row_ptr, last_page,
                           head_col, HEAD_DIM, PAGE_SIZE, BLOCK_N, NUM_STAGES)
    else:
        for step in range(first_step, num_steps):  # the ring counts from the tile's first key step
            slot = ring_base + step - first_step
            _load_tile(k_desc, k_bufs, k_ready, k_empty, slot, step, block_table_row_ptr, last_page, head_col,
                       HEAD_DIM, PAGE_SIZE, BLOCK_N, NUM_STAGES)
            _load_tile(v_desc, v_bufs, v_ready, v_empty, slot, step, block_table_row_ptr, last_page, head_col,
                       HEAD_DIM, PAGE_SIZE, BLOCK_N, NUM_STAGES)


@gluon.jit
def _online_softmax(s, m_i, l_i, step, row_limit, kv_len, qk_scale, softcap_in, window, s_layout: gl.constexpr,
                    BLOCK_N: gl.constexpr, WIDTH: gl.constexpr, MASKED: gl.constexpr, IS_CAUSAL: gl.constexpr,
                    USE_WINDOW: gl.constexpr, SOFTCAP: gl.constexpr):
    """Step ``step``'s scores ``s`` (``WIDTH`` keys from its first) -> (P in float32, alpha: the factor O takes for
    the new row maxima, m, l): the soft-cap, the masks of a ``MASKED`` step and the online softmax, as
    ``_consumer_steps`` describes them."""
    if SOFTCAP:
        s = _tanh(s * softcap_in)
    if MASKED:
        keys = step * BLOCK_N + gl.arange(0, WIDTH, layout=gl.SliceLayout(0, s_layout))
        visible = gl.expand_dims(keys < kv_len, 0)
        if IS_CAUSAL:
            visible = visible & (gl.expand_dims(keys, 0) <= gl.expand_dims(row_limit, 1))
        if USE_WINDOW:
            visible = visible & (gl.expand_dims(keys, 0) > gl.expand_dims(row_limit - window, 1))
        s = gl.where(visible, s, float("-inf"))
    m_new = gl.maximum(m_i, gl.max(s, axis=1) * qk_scale)
    p = gl.exp2(s * qk_scale - gl.expand_dims(m_new, 1))
    alpha = gl.exp2(m_i - m_new)
    l_i = l_i * alpha + gl.sum(p, axis=1)
    return p, alpha, m_new, l_i


@gluon.jit
def _online_softmax_of(s, m_i, l_i, step, mask_below, mask_from, row_limit, kv_len, qk_scale, softcap_in, window,
                       s_layout: gl.constexpr, BLOCK_N: gl.constexpr, WIDTH: gl.constexpr, MASKED: gl.constexpr,
                       PER_STEP: gl.constexpr, IS_CAUSAL: gl.constexpr, USE_WINDOW: gl.constexpr,
                       SOFTCAP: gl.constexpr):
    """``_online_softmax`` of a step whose masks are ``MASKED``'s or, with ``PER_STEP``, chosen at run time: the
    steps before ``mask_below`` (a window's left edge) and from ``mask_from`` on (the diagonal, the ragged end)
    masked, those between not."""
    if PER_STEP:
        if (step < mask_below) | (step >= mask_from):
            p, alpha, m_i, l_i = _online_softmax(s, m_i, l_i, step, row_limit, kv_len, qk_scale, softcap_in, window,
                                                 s_layout, BLOCK_N, WIDTH, True, IS_CAUSAL, USE_WINDOW, SOFTCAP)
        else:
            p, alpha, m_i, l_i = _online_softmax(s, m_i, l_i, step, row_limit, kv_len, qk_scale, softcap_in, window,
                                                 s_layout, BLOCK_N, WIDTH, False, IS_CAUSAL, USE_WINDOW, SOFTCAP)
    else:
        p, alpha, m_i, l_i = _online_softmax(s, m_i, l_i, step, row_limit, kv_len, qk_scale, softcap_in, window,
                                             s_layout, BLOCK_N, WIDTH, MASKED, IS_CAUSAL, USE_WINDOW, SOFTCAP)
    return p, alpha, m_i, l_i


@gluon.jit
def _rescale(o, alpha, o_layout: gl.constexpr):
    """O's rows times their ``alpha`` (the scores' row layout converted to O's)."""
    return o * gl.expand_dims(gl.convert_layout(alpha, gl.SliceLayout(1, o_layout)), 1)


@gluon.jit
def _p_operand(p, p_dtype: gl.constexpr, o_layout: gl.constexpr):
    """P as the ``P V`` product's register operand."""
    return gl.convert_layout(p.to(p_dtype), gl.DotOperandLayout(operand_index=0, parent=o_layout, k_width=2))


@gluon.jit
def _softmax_step(s, o, m_i, l_i, step, mask_below, mask_from, row_limit, kv_len, qk_scale, softcap_in, window,
                  p_dtype: gl.constexpr, s_layout: gl.constexpr, o_layout: gl.constexpr, BLOCK_N: gl.constexpr,
                  WIDTH: gl.constexpr, MASKED: gl.constexpr, PER_STEP: gl.constexpr, IS_CAUSAL: gl.constexpr,
                  USE_WINDOW: gl.constexpr, SOFTCAP: gl.constexpr):
    """``_online_softmax_of`` step ``step`` with O's rescale -> (P as the ``P V`` product's operand, O, m, l)."""
    p, alpha, m_i, l_i = _online_softmax_of(s, m_i, l_i, step, mask_below, mask_from, row_limit, kv_len, qk_scale,
                                            softcap_in, window, s_layout, BLOCK_N, WIDTH, MASKED, PER_STEP, IS_CAUSAL,
                                            USE_WINDOW, SOFTCAP)
    o = _rescale(o, alpha, o_layout)
    return _p_operand(p, p_dtype, o_layout), o, m_i, l_i


@gluon.jit
def _ready_v(v_bufs, v_ready, stage, phase, step, kv_len, v_load_layout: gl.constexpr, BLOCK_N: gl.constexpr,
             WIDTH: gl.constexpr, MASKED: gl.constexpr):
    """Wait for step ``step``'s V tile (ring stage ``stage``) -> its first ``WIDTH`` rows, with the rows past
    ``kv_len`` zeroed where a ``MASKED`` step reaches past the sequence's last key."""
    mbarrier.wait(v_ready.index(stage), phase)
    v_buf = v_bufs.index(stage)
    if WIDTH < BLOCK_N:
        v_buf = v_buf.slice(0, WIDTH)
    if MASKED:
        if step * BLOCK_N + WIDTH > kv_len:
            # slots past kv_len in the last page may hold anything, NaN included: P is 0 there
            # but 0 * NaN is not, so those rows of V become 0 (both warpgroups write the same).
            # _ZERO_ROWS rows at a time, only those that reach past kv_len: a whole 64 x D tile in
            # registers beside the accumulator spilled (Triton 3.6: 216 bytes at D=256, 12 at D=128)
            for chunk in gl.static_range(WIDTH // _ZERO_ROWS):
                chunk_start = step * BLOCK_N + chunk * _ZERO_ROWS
                if chunk_start + _ZERO_ROWS > kv_len:
                    v_rows = v_buf.slice(chunk * _ZERO_ROWS, _ZERO_ROWS)
                    v = v_rows.load(v_load_layout)
                    v_keys = chunk_start + gl.arange(0, _ZERO_ROWS, layout=gl.SliceLayout(1, v_load_layout))
                    v = gl.where(gl.expand_dims(v_keys < kv_len, 1), v, gl.zeros_like(v))
                    v_rows.store(v)
            fence_async_shared()
            _warps_barrier()
    return v_buf


@gluon.jit
def _ready_k(k_ready, step, first_step, ring_base, NUM_STAGES: gl.constexpr):
    """Wait for step ``step``'s K tile (the tile's ``first_step`` takes the ring's slot ``ring_base``) -> its ring
    stage and phase, which its V tile shares."""
    stage, phase = _ring_stage(ring_base + step - first_step, NUM_STAGES)
    mbarrier.wait(k_ready.index(stage), phase)
    return stage, phase


@gluon.jit
def _consumer_steps(o, m_i, l_i, q_smem, k_bufs, v_bufs, k_ready, v_ready, k_empty, v_empty,
                    row_limit, kv_len, qk_scale, softcap_in, step_lo, step_hi, first_step, ring_base, window,
                    s_layout: gl.constexpr, o_layout: gl.constexpr, v_load_layout: gl.constexpr,
                    BLOCK_N: gl.constexpr, NUM_STAGES: gl.constexpr, MASKED: gl.constexpr,
                    IS_CAUSAL: gl.constexpr, USE_WINDOW: gl.constexpr, SOFTCAP: gl.constexpr, WIDTH: gl.constexpr):
    """Key steps ``step_lo .. step_hi - 1`` of one warpgroup's 64 rows (the tile's ``first_step`` takes the
    ring's slot ``ring_base``); every product is waited for within its own step (the schedule ``"step"``; each
    step releases the V buffer of the step before, the tile's last one is released where the tile ends).
    ``MASKED`` steps drop keys past ``kv_len``, past each row's last key (causal) and, with ``USE_WINDOW``, at or
    before ``row_limit - window``. ``SOFTCAP``: each score s becomes ``c * tanh(s / c)`` as in the Triton kernel's
    ``_softmax_update``: the product's ``q . k`` is mapped to ``tanh(q . k * softcap_in)`` (``softcap_in =
    scale / c``) before the masks, and ``qk_scale`` is ``c * log2(e)``. ``WIDTH`` (``BLOCK_N`` or half of it):
    the keys of a step the products take, from its first (``s_layout`` is the scores' layout at that width)."""
    zero_s = gl.zeros([_ROWS, WIDTH], gl.float32, s_layout)
    for step in range(step_lo, step_hi):
        stage, phase = _ready_k(k_ready, step, first_step, ring_base, NUM_STAGES)
        k_buf = k_bufs.index(stage)
        if WIDTH < BLOCK_N:
            k_buf = k_buf.slice(0, WIDTH)
        s = warpgroup_mma(q_smem, k_buf.permute((1, 0)), zero_s, use_acc=False, is_async=True)
        # waits for the previous step's P V too (wgmma groups complete in order)
        s, o = warpgroup_mma_wait(num_outstanding=0, deps=(s, o))
        mbarrier.arrive(k_empty.index(stage), count=1)
        # the previous step's V buffer, counted as the ring is (a window's tiles start past key 0)
        prev = (ring_base + step - first_step + NUM_STAGES - 1) % NUM_STAGES
        mbarrier.arrive(v_empty.index(prev), count=1, pred=step > first_step)

        p_op, o, m_i, l_i = _softmax_step(s, o, m_i, l_i, step, 0, 0, row_limit, kv_len, qk_scale, softcap_in, window,
                                          q_smem.dtype, s_layout, o_layout, BLOCK_N, WIDTH, MASKED, False, IS_CAUSAL,
                                          USE_WINDOW, SOFTCAP)
        v_buf = _ready_v(v_bufs, v_ready, stage, phase, step, kv_len, v_load_layout, BLOCK_N, WIDTH, MASKED)
        o = warpgroup_mma(p_op, v_buf, o, is_async=True)
        # waited here, not at the next step: a product in flight across the loop's back edge makes ptxas
        # serialise every wgmma of the kernel (C7512: a wait after each of its k-chunks)
        o = warpgroup_mma_init(warpgroup_mma_wait(num_outstanding=0, deps=(o,)))
    return o, m_i, l_i


@gluon.jit
def _take_turn(turns, turn, WARPGROUP: gl.constexpr):
    """Wait until this warpgroup may issue its products (its ``turn``-th turn, counted from 0) -> ``turn + 1``."""
    mbarrier.wait(turns.index(WARPGROUP), turn & 1)
    return turn + 1


@gluon.jit
def _pass_turn(turns, WARPGROUP: gl.constexpr):
    """Hand the turn to the other warpgroup once this one's products are issued."""
    mbarrier.arrive(turns.index(1 - WARPGROUP), count=1)


@gluon.jit
def _consumer_steps_paired(o, m_i, l_i, turn, turns, q_smem, k_bufs, v_bufs, k_ready, v_ready, k_empty, v_empty,
                           row_limit, kv_len, qk_scale, softcap_in, step_lo, step_hi, first_step, ring_base, window,
                           mask_below, mask_from, s_layout: gl.constexpr, o_layout: gl.constexpr,
                           v_load_layout: gl.constexpr, BLOCK_N: gl.constexpr, NUM_STAGES: gl.constexpr,
                           MASKED: gl.constexpr, PER_STEP: gl.constexpr, IS_CAUSAL: gl.constexpr,
                           USE_WINDOW: gl.constexpr, SOFTCAP: gl.constexpr, PINGPONG: gl.constexpr,
                           OVERLAP: gl.constexpr, WARPGROUP: gl.constexpr):
    """``_consumer_steps`` (full-width steps) with each step's ``Q K^T`` issued right behind the step before's
    ``P V`` and both waited for at once (the schedules ``"paired"`` and ``"pingpong"``): one wait a step instead
    of two, and nothing in flight across the loop's back edge. The range releases each of its V buffers itself,
    and its first ``Q K^T`` and last ``P V`` run with nothing beside them; ``PER_STEP`` (``HopperPrefillConfig.
    one_range``: the tile's steps in one range) chooses each step's masks at run time instead of ``MASKED``'s, the
    steps before ``mask_below`` and from ``mask_from`` on masked (``_online_softmax_of``).
    ``PINGPONG``: the two warpgroups take turns to issue their products (``turns``, two mbarriers; ``turn``
    counts this warpgroup's turns and is returned), so that one's softmax runs while the other's products do
    rather than both softmaxes at once (FlashAttention 3's schedule). ``OVERLAP`` (the schedule ``"overlap"``): the
    step's ``Q K^T`` goes first and is waited for alone, so that its softmax runs while the step before's ``P V`` is
    still in flight (FlashAttention 3's overlap within a warpgroup); O takes its rescale once that product is in."""
    zero_s = gl.zeros([_ROWS, BLOCK_N], gl.float32, s_layout)
    # a per-step range may zero V rows past kv_len at any step (_ready_v checks at run time)
    V_MASKED: gl.constexpr = MASKED or PER_STEP
    if step_hi > step_lo:
        stage, phase = _ready_k(k_ready, step_lo, first_step, ring_base, NUM_STAGES)
        if PINGPONG:
            turn = _take_turn(turns, turn, WARPGROUP)
        s = warpgroup_mma(q_smem, k_bufs.index(stage).permute((1, 0)), zero_s, use_acc=False, is_async=True)
        if PINGPONG:
            _pass_turn(turns, WARPGROUP)
        s, o = warpgroup_mma_wait(num_outstanding=0, deps=(s, o))
        mbarrier.arrive(k_empty.index(stage), count=1)
        p_op, o, m_i, l_i = _softmax_step(s, o, m_i, l_i, step_lo, mask_below, mask_from, row_limit, kv_len,
                                          qk_scale, softcap_in, window, q_smem.dtype, s_layout, o_layout, BLOCK_N,
                                          BLOCK_N, MASKED, PER_STEP, IS_CAUSAL, USE_WINDOW, SOFTCAP)
        o = warpgroup_mma_init(o)
        for step in range(step_lo + 1, step_hi):
            v_buf = _ready_v(v_bufs, v_ready, stage, phase, step - 1, kv_len, v_load_layout, BLOCK_N, BLOCK_N,
                             V_MASKED)
            prev_stage = stage
            stage, phase = _ready_k(k_ready, step, first_step, ring_base, NUM_STAGES)
            if PINGPONG:
                turn = _take_turn(turns, turn, WARPGROUP)
            if OVERLAP:
                s = warpgroup_mma(q_smem, k_bufs.index(stage).permute((1, 0)), zero_s, use_acc=False, is_async=True)
                o = warpgroup_mma(p_op, v_buf, o, is_async=True)
                s = warpgroup_mma_wait(num_outstanding=1, deps=(s,))  # groups complete in order: Q K^T is in
                mbarrier.arrive(k_empty.index(stage), count=1)
                p, alpha, m_i, l_i = _online_softmax_of(s, m_i, l_i, step, mask_below, mask_from, row_limit, kv_len,
                                                        qk_scale, softcap_in, window, s_layout, BLOCK_N, BLOCK_N,
                                                        MASKED, PER_STEP, IS_CAUSAL, USE_WINDOW, SOFTCAP)
                p_next = _p_operand(p, q_smem.dtype, o_layout)
                # the step before's P stays live until its product is in (a register operand read in flight)
                o, p_op = warpgroup_mma_wait(num_outstanding=0, deps=(o, p_op))
                mbarrier.arrive(v_empty.index(prev_stage), count=1)
                o = _rescale(o, alpha, o_layout)
                p_op = p_next
            else:
                o = warpgroup_mma(p_op, v_buf, o, is_async=True)
                s = warpgroup_mma(q_smem, k_bufs.index(stage).permute((1, 0)), zero_s, use_acc=False, is_async=True)
                if PINGPONG:
                    _pass_turn(turns, WARPGROUP)
                s, o = warpgroup_mma_wait(num_outstanding=0, deps=(s, o))
                mbarrier.arrive(k_empty.index(stage), count=1)
                mbarrier.arrive(v_empty.index(prev_stage), count=1)
                p_op, o, m_i, l_i = _softmax_step(s, o, m_i, l_i, step, mask_below, mask_from, row_limit, kv_len,
                                                  qk_scale, softcap_in, window, q_smem.dtype, s_layout, o_layout,
                                                  BLOCK_N, BLOCK_N, MASKED, PER_STEP, IS_CAUSAL, USE_WINDOW, SOFTCAP)
            o = warpgroup_mma_init(o)
        # the range's last P V
        v_buf = _ready_v(v_bufs, v_ready, stage, phase, step_hi - 1, kv_len, v_load_layout, BLOCK_N, BLOCK_N,
                         V_MASKED)
        if PINGPONG:
            turn = _take_turn(turns, turn, WARPGROUP)
        o = warpgroup_mma(p_op, v_buf, o, is_async=True)
        if PINGPONG:
            _pass_turn(turns, WARPGROUP)
        o = warpgroup_mma_init(warpgroup_mma_wait(num_outstanding=0, deps=(o,)))
        mbarrier.arrive(v_empty.index(stage), count=1)
    return o, m_i, l_i, turn


@gluon.jit
def _run_steps(o, m_i, l_i, turn, turns, q_smem, k_bufs, v_bufs, k_ready, v_ready, k_empty, v_empty,
               row_limit, kv_len, qk_scale, softcap_in, step_lo, step_hi, first_step, ring_base, window, mask_below,
               mask_from, s_layout: gl.constexpr, o_layout: gl.constexpr, v_load_layout: gl.constexpr,
               BLOCK_N: gl.constexpr, NUM_STAGES: gl.constexpr, MASKED: gl.constexpr, PER_STEP: gl.constexpr,
               IS_CAUSAL: gl.constexpr, USE_WINDOW: gl.constexpr, SOFTCAP: gl.constexpr, SCHEDULE: gl.constexpr,
               WARPGROUP: gl.constexpr):
    """Full-width key steps ``step_lo .. step_hi - 1`` in the launch's ``SCHEDULE`` (``HopperPrefillConfig.schedule``)
    -> (o, m, l, turn). ``PER_STEP`` (a paired schedule only): each step's masks chosen at run time, those before
    ``mask_below`` and from ``mask_from`` on masked."""
    if SCHEDULE == "step":
        o, m_i, l_i = _consumer_steps(o, m_i, l_i, q_smem, k_bufs, v_bufs, k_ready, v_ready, k_empty, v_empty,
                                      row_limit, kv_len, qk_scale, softcap_in, step_lo, step_hi, first_step, ring_base,
                                      window, s_layout, o_layout, v_load_layout, BLOCK_N, NUM_STAGES, MASKED,
                                      IS_CAUSAL, USE_WINDOW, SOFTCAP, BLOCK_N)
    else:
        o, m_i, l_i, turn = _consumer_steps_paired(o, m_i, l_i, turn, turns, q_smem, k_bufs, v_bufs, k_ready, v_ready,
                                                   k_empty, v_empty, row_limit, kv_len, qk_scale, softcap_in, step_lo,
                                                   step_hi, first_step, ring_base, window, mask_below, mask_from,
                                                   s_layout, o_layout, v_load_layout, BLOCK_N, NUM_STAGES, MASKED,
                                                   PER_STEP, IS_CAUSAL, USE_WINDOW, SOFTCAP, SCHEDULE == "pingpong",
                                                   SCHEDULE == "overlap", WARPGROUP)
    return o, m_i, l_i, turn


@gluon.jit
def _consumer_ranges(o, m_i, l_i, turn, turns, q_smem, k_bufs, v_bufs, k_ready, v_ready, k_empty, v_empty, row_limit,
                     tile_start, q_len, kv_len, qk_scale, softcap_in, num_steps, mid_steps, first_step, left_end,
                     ring_base, window, s_layout: gl.constexpr, o_layout: gl.constexpr, v_load_layout: gl.constexpr,
                     BLOCK_N: gl.constexpr, NUM_STAGES: gl.constexpr, GROUP: gl.constexpr, IS_CAUSAL: gl.constexpr,
                     USE_WINDOW: gl.constexpr, HALF_STEP: gl.constexpr, SOFTCAP: gl.constexpr,
                     SCHEDULE: gl.constexpr, WARPGROUP: gl.constexpr):
    """A tile's key steps as ranges whose masks are known when compiled -> (o, m, l, turn): a window's masked left
    edge, the keys every row sees unmasked, then the diagonal and the ragged end masked; with ``HALF_STEP`` the
    masked steps whose second half no row of this warpgroup sees at half width."""
    if USE_WINDOW:  # the window's left edge, masked: steps first_step .. left_end - 1
        o, m_i, l_i, turn = _run_steps(o, m_i, l_i, turn, turns, q_smem, k_bufs, v_bufs, k_ready, v_ready, k_empty,
                                       v_empty, row_limit, kv_len, qk_scale, softcap_in, first_step, left_end,
                                       first_step, ring_base, window, 0, 0, s_layout, o_layout, v_load_layout, BLOCK_N,
                                       NUM_STAGES, True, False, IS_CAUSAL, True, SOFTCAP, SCHEDULE, WARPGROUP)
    # keys every row sees, unmasked; then the diagonal and the ragged end, masked
    o, m_i, l_i, turn = _run_steps(o, m_i, l_i, turn, turns, q_smem, k_bufs, v_bufs, k_ready, v_ready, k_empty,
                                   v_empty, row_limit, kv_len, qk_scale, softcap_in, left_end, mid_steps, first_step,
                                   ring_base, window, 0, 0, s_layout, o_layout, v_load_layout, BLOCK_N, NUM_STAGES,
                                   False, False, IS_CAUSAL, USE_WINDOW, SOFTCAP, SCHEDULE, WARPGROUP)
    if HALF_STEP:
        # from the step whose first half holds this warpgroup's last visible key on, half-wide products
        last_key = kv_len - 1
        if IS_CAUSAL:
            last_key = gl.minimum(tile_start + (WARPGROUP * _ROWS + _ROWS - 1) // GROUP + (kv_len - q_len), last_key)
        half_from = gl.minimum(gl.maximum((last_key + BLOCK_N // 2) // BLOCK_N, mid_steps), num_steps)
    else:
        half_from = num_steps
    o, m_i, l_i, turn = _run_steps(o, m_i, l_i, turn, turns, q_smem, k_bufs, v_bufs, k_ready, v_ready, k_empty,
                                   v_empty, row_limit, kv_len, qk_scale, softcap_in, mid_steps, half_from, first_step,
                                   ring_base, window, 0, 0, s_layout, o_layout, v_load_layout, BLOCK_N, NUM_STAGES,
                                   True, False, IS_CAUSAL, USE_WINDOW, SOFTCAP, SCHEDULE, WARPGROUP)
    if HALF_STEP:
        HALF: gl.constexpr = BLOCK_N // 2
        half_layout: gl.constexpr = _mma_layout(HALF)
        rows_half: gl.constexpr = gl.SliceLayout(1, half_layout)
        o, m_half, l_half = _consumer_steps(o, gl.convert_layout(m_i, rows_half), gl.convert_layout(l_i, rows_half),
                                            q_smem, k_bufs, v_bufs, k_ready, v_ready, k_empty, v_empty,
                                            gl.convert_layout(row_limit, rows_half), kv_len, qk_scale, softcap_in,
                                            half_from, num_steps, first_step, ring_base, window, half_layout,
                                            o_layout, v_load_layout, BLOCK_N, NUM_STAGES, True, IS_CAUSAL, USE_WINDOW,
                                            SOFTCAP, HALF)
        m_i = gl.convert_layout(m_half, gl.SliceLayout(1, s_layout))
        l_i = gl.convert_layout(l_half, gl.SliceLayout(1, s_layout))
    return o, m_i, l_i, turn


@gluon.jit
def _consumer(state, turns, GROUP: gl.constexpr, HEAD_DIM: gl.constexpr, BLOCK_N: gl.constexpr,
              NUM_STAGES: gl.constexpr, IS_CAUSAL: gl.constexpr, WRITE_LSE: gl.constexpr, NUM_Q_HEADS: gl.constexpr,
              USE_WINDOW: gl.constexpr, HALF_STEP: gl.constexpr, SOFTCAP: gl.constexpr, HAS_SINKS: gl.constexpr,
              SCHEDULE: gl.constexpr, ONE_RANGE: gl.constexpr, O_IN_Q: gl.constexpr, WARPGROUP: gl.constexpr):
    """One warpgroup's 64 rows of the tile: load Q into shared memory, run the key steps (unmasked,
    then the masked diagonal and ragged end, ``_consumer_ranges``, or with ``ONE_RANGE`` all in one range;
    ``SOFTCAP`` caps the scores), fold in the sinks (``HAS_SINKS``), write O and the log-sum-exp."""
    _consume_tile(state, 0, turns, gl.to_tensor(0), GROUP, HEAD_DIM, BLOCK_N, NUM_STAGES, IS_CAUSAL, WRITE_LSE,
                  NUM_Q_HEADS, USE_WINDOW, HALF_STEP, SOFTCAP, HAS_SINKS, SCHEDULE, ONE_RANGE, O_IN_Q, WARPGROUP)


@gluon.jit
def _consume_tile(state, ring_base, turns, turn, GROUP: gl.constexpr, HEAD_DIM: gl.constexpr, BLOCK_N: gl.constexpr,
                  NUM_STAGES: gl.constexpr, IS_CAUSAL: gl.constexpr, WRITE_LSE: gl.constexpr,
                  NUM_Q_HEADS: gl.constexpr, USE_WINDOW: gl.constexpr, HALF_STEP: gl.constexpr,
                  SOFTCAP: gl.constexpr, HAS_SINKS: gl.constexpr, SCHEDULE: gl.constexpr, ONE_RANGE: gl.constexpr,
                  O_IN_Q: gl.constexpr, WARPGROUP: gl.constexpr):
    """``_consumer``'s work on one tile, whose first key step takes the ring's slot ``ring_base`` -> the
    warpgroup's turns taken so far (``turn`` before the tile; ``SCHEDULE`` ``"pingpong"`` only)."""
    _stage_q(state, _load_q(state, GROUP, HEAD_DIM, WARPGROUP), WARPGROUP)
    o, m_i, l_i, turn = _tile_products(state, ring_base, turns, turn, GROUP, HEAD_DIM, BLOCK_N, NUM_STAGES, IS_CAUSAL,
                                       USE_WINDOW, HALF_STEP, SOFTCAP, SCHEDULE, ONE_RANGE, WARPGROUP)
    _store_tile(state, o, m_i, l_i, GROUP, HEAD_DIM, BLOCK_N, WRITE_LSE, NUM_Q_HEADS, HAS_SINKS, O_IN_Q, WARPGROUP)
    return turn


@gluon.jit
def _io_rows(tile_start, q_start, q_len, kv_head, GROUP: gl.constexpr, HEAD_DIM: gl.constexpr,
             WARPGROUP: gl.constexpr):
    """This warpgroup's 64 rows of the tile in ``_io_layout`` -> (each column's offset, each row's query head,
    whether its query is one of the sequence's, its token), for Q's load and the output's store."""
    io_layout: gl.constexpr = _io_layout(HEAD_DIM)
    r_io = WARPGROUP * _ROWS + gl.arange(0, _ROWS, layout=gl.SliceLayout(1, io_layout))
    d_io = gl.arange(0, HEAD_DIM, layout=gl.SliceLayout(0, io_layout))
    query_io = tile_start + r_io // GROUP
    head_io = kv_head * GROUP + r_io % GROUP
    valid_io = query_io < q_len
    token_io = (q_start + query_io).to(gl.int64)
    return d_io, head_io, valid_io, token_io


@gluon.jit
def _load_q(state, GROUP: gl.constexpr, HEAD_DIM: gl.constexpr, WARPGROUP: gl.constexpr):
    """This warpgroup's 64 Q rows of the tile, in registers (the store's coalesced layout; rows past the
    sequence's queries are 0)."""
    (q_ptr, out_ptr, lse_ptr, block_table_row_ptr, k_desc, v_desc, q_bufs, k_bufs, v_bufs, k_ready, v_ready,
     k_empty, v_empty, tile_start, q_start, q_len, kv_len, kv_head, num_steps, mid_steps, first_step, left_end,
     window, qk_scale, stride_q_t, stride_q_h, stride_o_t, stride_o_h, softcap_in, sinks_ptr) = state
    d_io, head_io, valid_io, token_io = _io_rows(tile_start, q_start, q_len, kv_head, GROUP, HEAD_DIM, WARPGROUP)
    q_offs = gl.expand_dims(token_io * stride_q_t + head_io * stride_q_h, 1) + gl.expand_dims(d_io, 0)
    return gl.load(q_ptr + q_offs, mask=gl.expand_dims(valid_io, 1), other=0.0)


@gluon.jit
def _stage_q(state, q_tile, WARPGROUP: gl.constexpr):
    """``q_tile`` (``_load_q``) into this warpgroup's Q buffer, for the products to read."""
    q_bufs = state[6]  # the state's q_bufs (its order: _tile_state, _hopper_prefill_kernel)
    q_smem = q_bufs.index(WARPGROUP)
    q_smem.store(q_tile)
    fence_async_shared()
    _warps_barrier()


@gluon.jit
def _tile_products(state, ring_base, turns, turn, GROUP: gl.constexpr, HEAD_DIM: gl.constexpr, BLOCK_N: gl.constexpr,
                   NUM_STAGES: gl.constexpr, IS_CAUSAL: gl.constexpr, USE_WINDOW: gl.constexpr,
                   HALF_STEP: gl.constexpr, SOFTCAP: gl.constexpr, SCHEDULE: gl.constexpr, ONE_RANGE: gl.constexpr,
                   WARPGROUP: gl.constexpr):
    """The tile's key steps for this warpgroup's 64 rows, its Q in its buffer (``_stage_q``), every product waited
    for -> (O unnormalised, m, l, turn)."""
    (q_ptr, out_ptr, lse_ptr, block_table_row_ptr, k_desc, v_desc, q_bufs, k_bufs, v_bufs, k_ready, v_ready,
     k_empty, v_empty, tile_start, q_start, q_len, kv_len, kv_head, num_steps, mid_steps, first_step, left_end,
     window, qk_scale, stride_q_t, stride_q_h, stride_o_t, stride_o_h, softcap_in, sinks_ptr) = state
    ROWS: gl.constexpr = _ROWS
    s_layout: gl.constexpr = _mma_layout(BLOCK_N)
    o_layout: gl.constexpr = _mma_layout(HEAD_DIM)
    io_layout: gl.constexpr = _io_layout(HEAD_DIM)
    q_smem = q_bufs.index(WARPGROUP)

    r_s = WARPGROUP * ROWS + gl.arange(0, ROWS, layout=gl.SliceLayout(1, s_layout))
    row_limit = tile_start + r_s // GROUP + (kv_len - q_len)  # last key each row sees (causal)

    # m starts finite so that a row with every key masked keeps p = 0 and alpha = 1 (no NaN)
    m_i = gl.full([ROWS], -1.0e30, gl.float32, gl.SliceLayout(1, s_layout))
    l_i = gl.zeros([ROWS], gl.float32, gl.SliceLayout(1, s_layout))
    o = warpgroup_mma_init(gl.zeros([ROWS, HEAD_DIM], gl.float32, o_layout))  # an accumulator, as the loop carries it
    if ONE_RANGE:  # every step in one range, each step's masks chosen as it runs (a paired schedule only)
        o, m_i, l_i, turn = _run_steps(o, m_i, l_i, turn, turns, q_smem, k_bufs, v_bufs, k_ready, v_ready, k_empty,
                                       v_empty, row_limit, kv_len, qk_scale, softcap_in, first_step, num_steps,
                                       first_step, ring_base, window, left_end, mid_steps, s_layout, o_layout,
                                       io_layout, BLOCK_N, NUM_STAGES, True, True, IS_CAUSAL, USE_WINDOW, SOFTCAP,
                                       SCHEDULE, WARPGROUP)
    else:
        o, m_i, l_i, turn = _consumer_ranges(o, m_i, l_i, turn, turns, q_smem, k_bufs, v_bufs, k_ready, v_ready,
                                             k_empty, v_empty, row_limit, tile_start, q_len, kv_len, qk_scale,
                                             softcap_in, num_steps, mid_steps, first_step, left_end, ring_base, window,
                                             s_layout, o_layout, io_layout, BLOCK_N, NUM_STAGES, GROUP, IS_CAUSAL,
                                             USE_WINDOW, HALF_STEP, SOFTCAP, SCHEDULE, WARPGROUP)
    o = warpgroup_mma_wait(num_outstanding=0, deps=(o,))
    if SCHEDULE == "step":  # the tile's last V buffer (the paired schedules release each range's own)
        mbarrier.arrive(v_empty.index((ring_base + num_steps - first_step + NUM_STAGES - 1) % NUM_STAGES), count=1,
                        pred=num_steps > first_step)
    return o, m_i, l_i, turn


@gluon.jit
def _store_tile(state, o, m_i, l_i, GROUP: gl.constexpr, HEAD_DIM: gl.constexpr, BLOCK_N: gl.constexpr,
                WRITE_LSE: gl.constexpr, NUM_Q_HEADS: gl.constexpr, HAS_SINKS: gl.constexpr, O_IN_Q: gl.constexpr,
                WARPGROUP: gl.constexpr):
    """This warpgroup's 64 rows of the tile's output (``_tile_products``' O over l, the sinks folded in where
    ``HAS_SINKS``) and, with ``WRITE_LSE``, their log-sum-exp."""
    (q_ptr, out_ptr, lse_ptr, block_table_row_ptr, k_desc, v_desc, q_bufs, k_bufs, v_bufs, k_ready, v_ready,
     k_empty, v_empty, tile_start, q_start, q_len, kv_len, kv_head, num_steps, mid_steps, first_step, left_end,
     window, qk_scale, stride_q_t, stride_q_h, stride_o_t, stride_o_h, softcap_in, sinks_ptr) = state
    ROWS: gl.constexpr = _ROWS
    s_layout: gl.constexpr = _mma_layout(BLOCK_N)
    o_layout: gl.constexpr = _mma_layout(HEAD_DIM)
    io_layout: gl.constexpr = _io_layout(HEAD_DIM)
    q_smem = q_bufs.index(WARPGROUP)
    d_io, head_io, valid_io, token_io = _io_rows(tile_start, q_start, q_len, kv_head, GROUP, HEAD_DIM, WARPGROUP)
    r_s = WARPGROUP * ROWS + gl.arange(0, ROWS, layout=gl.SliceLayout(1, s_layout))
    if HAS_SINKS:
        # the head's sink logit joins each row's denominator once, with no value (the Triton kernel's
        # _fold_sink); O's rescale by alpha joins the division, not a pass over the accumulator of its own.
        # A row that saw no key (m_i = -1e30, l_i = 0) gets alpha = 0, l = 1: output 0, LSE the sink.
        query_s = tile_start + r_s // GROUP
        # natural log -> the kernel's log2 units
        sink2 = gl.load(sinks_ptr + kv_head * GROUP + r_s % GROUP, mask=query_s < q_len, other=0.0) * LOG2E
        m_new = gl.maximum(m_i, sink2)
        alpha = gl.exp2(m_i - m_new)
        l_i = l_i * alpha + gl.exp2(sink2 - m_new)  # at least 1 where the sink is the max, else l_i >= 1
        m_i = m_new
        l_safe = l_i
        out = o * gl.expand_dims(gl.convert_layout(alpha / l_i, gl.SliceLayout(1, o_layout)), 1)
    else:
        l_safe = gl.where(l_i > 0.0, l_i, 1.0)
        out = o / gl.expand_dims(gl.convert_layout(l_safe, gl.SliceLayout(1, o_layout)), 1)
    if O_IN_Q:  # through this warpgroup's Q buffer: its products are done with Q (waited for above)
        q_smem.store(out.to(out_ptr.dtype.element_ty))
        _warps_barrier()
        out = q_smem.load(io_layout)
    else:
        out = gl.convert_layout(out.to(out_ptr.dtype.element_ty), io_layout)
    o_offs = gl.expand_dims(token_io * stride_o_t + head_io * stride_o_h, 1) + gl.expand_dims(d_io, 0)
    gl.store(out_ptr + o_offs, out, mask=gl.expand_dims(valid_io, 1))
    if WRITE_LSE:
        query_lse = tile_start + r_s // GROUP
        token_lse = (q_start + query_lse).to(gl.int64)
        lse = (m_i + gl.log2(l_safe)) * _LN2
        gl.store(lse_ptr + token_lse * NUM_Q_HEADS + kv_head * GROUP + r_s % GROUP, lse,
                 mask=query_lse < q_len)


@gluon.jit
def _tile_fields(flat_idx, cu_seqlens_q_ptr, kv_lens_ptr, window, num_seqs, num_q_blocks,
                 NUM_KV_HEADS: gl.constexpr, GROUP: gl.constexpr, BLOCK_N: gl.constexpr, IS_CAUSAL: gl.constexpr,
                 USE_WINDOW: gl.constexpr, CONSUMERS: gl.constexpr):
    """Tile ``flat_idx`` (heaviest first: the last tile of each sequence before its others) -> (seq_idx,
    tile_start, q_start, q_len, kv_len, kv_head, num_steps, mid_steps, first_step, left_end): its rows start at
    query ``tile_start`` of sequence ``seq_idx``; key steps ``first_step .. num_steps - 1``, those before
    ``left_end`` (a window's left edge) and from ``mid_steps`` on (the diagonal, the ragged end) masked. A
    padding tile (the grid counts one per sequence more than its queries fill) has ``tile_start >= q_len``."""
    BLOCK_Q: gl.constexpr = _ROWS * CONSUMERS // GROUP
    kv_head = flat_idx % NUM_KV_HEADS
    q_block = num_q_blocks - 1 - flat_idx // NUM_KV_HEADS
    seq_idx = _find_sequence(cu_seqlens_q_ptr, q_block, num_seqs, BLOCK_Q)
    q_start = gl.load(cu_seqlens_q_ptr + seq_idx)
    q_len = gl.load(cu_seqlens_q_ptr + seq_idx + 1) - q_start
    kv_len = gl.load(kv_lens_ptr + seq_idx)
    tile_start = (q_block - (q_start // BLOCK_Q + seq_idx)) * BLOCK_Q
    context = kv_len - q_len
    if IS_CAUSAL:
        kv_full = tile_start + context + 1
        kv_end = gl.minimum(tile_start + BLOCK_Q, q_len) + context
    else:
        kv_full = kv_len
        kv_end = kv_len
    num_steps = gl.cdiv(kv_end, BLOCK_N)
    if USE_WINDOW:  # steps before the first key a row sees are skipped; those before left_end masked
        last_query = gl.minimum(tile_start + BLOCK_Q, q_len) - 1
        first_step = gl.minimum(gl.maximum(tile_start + context - window + 1, 0) // BLOCK_N, num_steps)
        kv_all_lo = gl.maximum(last_query + context - window + 1, 0)  # keys in every row's window
        left_end = gl.minimum(gl.maximum(gl.cdiv(kv_all_lo, BLOCK_N), first_step), num_steps)
    else:
        first_step = 0
        left_end = 0
    mid_steps = gl.maximum(gl.minimum(gl.maximum(kv_full, 0) // BLOCK_N, num_steps), left_end)
    return seq_idx, tile_start, q_start, q_len, kv_len, kv_head, num_steps, mid_steps, first_step, left_end


@gluon.jit
def _ring(dtype: gl.constexpr, smem_layout: gl.constexpr, HEAD_DIM: gl.constexpr, BLOCK_N: gl.constexpr,
          NUM_STAGES: gl.constexpr, CONSUMERS: gl.constexpr):
    """Shared memory of a program: each consumer warpgroup's Q tile, ``NUM_STAGES`` K and V tiles and their
    ready / empty mbarriers (empty ones count every consumer warpgroup)."""
    q_bufs = gl.allocate_shared_memory(dtype, [CONSUMERS, _ROWS, HEAD_DIM], smem_layout)
    k_bufs = gl.allocate_shared_memory(dtype, [NUM_STAGES, BLOCK_N, HEAD_DIM], smem_layout)
    v_bufs = gl.allocate_shared_memory(dtype, [NUM_STAGES, BLOCK_N, HEAD_DIM], smem_layout)
    k_ready = gl.allocate_shared_memory(gl.int64, [NUM_STAGES, 1], mbarrier.MBarrierLayout())
    v_ready = gl.allocate_shared_memory(gl.int64, [NUM_STAGES, 1], mbarrier.MBarrierLayout())
    k_empty = gl.allocate_shared_memory(gl.int64, [NUM_STAGES, 1], mbarrier.MBarrierLayout())
    v_empty = gl.allocate_shared_memory(gl.int64, [NUM_STAGES, 1], mbarrier.MBarrierLayout())
    for i in gl.static_range(NUM_STAGES):
        mbarrier.init(k_ready.index(i), count=1)
        mbarrier.init(v_ready.index(i), count=1)
        mbarrier.init(k_empty.index(i), count=CONSUMERS)  # every consumer warpgroup releases a buffer
        mbarrier.init(v_empty.index(i), count=CONSUMERS)
    fence_async_shared()
    return q_bufs, k_bufs, v_bufs, k_ready, v_ready, k_empty, v_empty


@gluon.jit
def _turn_barriers():
    """The two mbarriers of the ``"pingpong"`` schedule: warpgroup w waits at ``turns.index(w)`` for its turn to issue
    products, and the other warpgroup arrives there once its own are issued; the first warpgroup's first turn is
    granted here."""
    turns = gl.allocate_shared_memory(gl.int64, [2, 1], mbarrier.MBarrierLayout())
    for i in gl.static_range(2):
        mbarrier.init(turns.index(i), count=1)
    mbarrier.arrive(turns.index(0), count=1)
    fence_async_shared()
    return turns


@gluon.jit
def _tile_state(shared, flat_idx, GROUP: gl.constexpr, BLOCK_N: gl.constexpr, IS_CAUSAL: gl.constexpr,
                NUM_Q_HEADS: gl.constexpr, USE_WINDOW: gl.constexpr, CONSUMERS: gl.constexpr):
    """A persistent program's values shared by its tiles -> tile ``flat_idx``'s ``state`` (the tuple
    ``_produce_tile`` and ``_consume_tile`` take), its key steps in the ring, and whether it holds rows."""
    (q_ptr, out_ptr, lse_ptr, block_table_ptr, cu_seqlens_q_ptr, kv_lens_ptr, k_desc, v_desc, q_bufs, k_bufs,
     v_bufs, k_ready, v_ready, k_empty, v_empty, window, qk_scale, softcap_in, sinks_ptr, num_seqs, num_q_blocks,
     stride_q_t, stride_q_h, stride_o_t, stride_o_h, stride_bt_seq) = shared
    NUM_KV_HEADS: gl.constexpr = NUM_Q_HEADS // GROUP
    (seq_idx, tile_start, q_start, q_len, kv_len, kv_head, num_steps, mid_steps, first_step,
     left_end) = _tile_fields(flat_idx, cu_seqlens_q_ptr, kv_lens_ptr, window, num_seqs, num_q_blocks,
                              NUM_KV_HEADS, GROUP, BLOCK_N, IS_CAUSAL, USE_WINDOW, CONSUMERS)
    block_table_row_ptr = block_table_ptr + seq_idx.to(gl.int64) * stride_bt_seq
    state = (q_ptr, out_ptr, lse_ptr, block_table_row_ptr, k_desc, v_desc, q_bufs, k_bufs, v_bufs, k_ready,
             v_ready, k_empty, v_empty, tile_start, q_start, q_len, kv_len, kv_head, num_steps, mid_steps,
             first_step, left_end, window, qk_scale, stride_q_t, stride_q_h, stride_o_t, stride_o_h, softcap_in,
             sinks_ptr)
    return state, num_steps - first_step, tile_start < q_len


@gluon.jit
def _tile_queue(CONSUMERS: gl.constexpr):
    """A persistent program's queue of tile numbers, from its producer to its consumers: ``TILE_SLOTS`` int32 slots
    in shared memory, each with a "ready" mbarrier (the producer arrives once the slot holds a tile number) and an
    "empty" one (every consumer warpgroup arrives once it has read it)."""
    ids = gl.allocate_shared_memory(gl.int32, [_TILE_SLOTS, 1], gl.SwizzledSharedLayout(1, 1, 1, order=[0]))
    ready = gl.allocate_shared_memory(gl.int64, [_TILE_SLOTS, 1], mbarrier.MBarrierLayout())
    empty = gl.allocate_shared_memory(gl.int64, [_TILE_SLOTS, 1], mbarrier.MBarrierLayout())
    for i in gl.static_range(_TILE_SLOTS):
        mbarrier.init(ready.index(i), count=1)
        mbarrier.init(empty.index(i), count=CONSUMERS)
    fence_async_shared()
    return ids, ready, empty


@gluon.jit
def _post_tile(queue, count, flat_idx):
    """The producer (one warp): tile ``flat_idx`` into the queue's ``count``-th slot (counted from 0), once the
    consumers have read what it held before."""
    ids, ready, empty = queue
    slot, phase = _ring_stage(count, _TILE_SLOTS)
    mbarrier.wait(empty.index(slot), phase ^ 1)
    one_warp: gl.constexpr = gl.BlockedLayout([1], [32], [1], [0])
    ids.index(slot).store(gl.full([1], flat_idx, gl.int32, one_warp))
    _warps_barrier()  # the slot written before "ready" is signalled
    mbarrier.arrive(ready.index(slot), count=1)


@gluon.jit
def _take_tile(queue, count):
    """A consumer warpgroup: the tile number in the queue's ``count``-th slot, once the producer has posted it; the
    slot is released once every warp of the warpgroup has read it (which also puts them all past the tile before,
    its products waited for and O stored, before any of them writes the next tile's Q)."""
    ids, ready, empty = queue
    slot, phase = _ring_stage(count, _TILE_SLOTS)
    mbarrier.wait(ready.index(slot), phase)
    one_warpgroup: gl.constexpr = gl.BlockedLayout([1], [32], [4], [0])
    flat_idx = gl.max(ids.index(slot).load(one_warpgroup), axis=0)
    _warps_barrier()
    mbarrier.arrive(empty.index(slot), count=1)
    return flat_idx


@gluon.jit
def _producer_tiles(shared, queue, tile_counter_ptr, num_tiles, GROUP: gl.constexpr, HEAD_DIM: gl.constexpr,
                    PAGE_SIZE: gl.constexpr, BLOCK_N: gl.constexpr, NUM_STAGES: gl.constexpr, IS_CAUSAL: gl.constexpr,
                    NUM_Q_HEADS: gl.constexpr, USE_WINDOW: gl.constexpr, CONSUMERS: gl.constexpr,
                    K_AHEAD: gl.constexpr):
    """The persistent program's producer: its first tile is its program number; each next one it takes from the
    launch's counter (``tile_counter_ptr``: tiles ``num_programs`` on, in the heaviest-first order) once it has issued
    the loads of the one before, so that the tiles go to whichever program is closest to done (with a fixed share,
    programs p, p + programs, ..., a model of the tiles' key steps puts the busiest program 13 to 18 % over the mean
    in causal batches: notes, "v5.8"). Each tile with rows
    is posted to the consumers (``_tile_queue``) and its keys loaded, the ring's slots counted on from tile to tile;
    the number ``num_tiles`` ends the consumers' loop. The launch's last take (its ``num_tiles``-th: each program
    takes one past the end) sets the counter back to 0 for the next launch."""
    ring_base = 0
    count = 0
    flat_idx = gl.program_id(0)
    while flat_idx < num_tiles:
        state, tile_steps, has_rows = _tile_state(shared, flat_idx, GROUP, BLOCK_N, IS_CAUSAL, NUM_Q_HEADS,
                                                  USE_WINDOW, CONSUMERS)
        if has_rows:
            _post_tile(queue, count, flat_idx)
            count += 1
            _produce_tile(state, ring_base, HEAD_DIM, PAGE_SIZE, BLOCK_N, NUM_STAGES, K_AHEAD)
            ring_base += tile_steps
        taken = gl.atomic_add(tile_counter_ptr, 1)
        if taken == num_tiles - 1:
            gl.store(tile_counter_ptr, 0)
        flat_idx = gl.num_programs(0) + taken
    _post_tile(queue, count, num_tiles)


@gluon.jit
def _consumer_tiles(shared, queue, turns, num_tiles, GROUP: gl.constexpr, HEAD_DIM: gl.constexpr,
                    BLOCK_N: gl.constexpr, NUM_STAGES: gl.constexpr, IS_CAUSAL: gl.constexpr, WRITE_LSE: gl.constexpr,
                    NUM_Q_HEADS: gl.constexpr, USE_WINDOW: gl.constexpr, HALF_STEP: gl.constexpr,
                    SOFTCAP: gl.constexpr, HAS_SINKS: gl.constexpr, SCHEDULE: gl.constexpr, ONE_RANGE: gl.constexpr,
                    O_IN_Q: gl.constexpr, Q_AHEAD: gl.constexpr, CONSUMERS: gl.constexpr, WARPGROUP: gl.constexpr):
    """The persistent program's consumer warpgroup: ``_consume_tile`` over the tiles its producer posts, until the
    number ``num_tiles`` (the turns of ``SCHEDULE`` ``"pingpong"`` counted on from tile to tile). ``Q_AHEAD``
    (``HopperPrefillConfig.q_ahead``): the next tile's Q rows are loaded into registers before this tile's output
    is written, so that their latency runs beside that store instead of before the next tile's first product."""
    ring_base = 0
    count = 0
    turn = gl.to_tensor(0)  # a runtime value: the loop carries it
    flat_idx = _take_tile(queue, count)
    if Q_AHEAD:
        first_state, first_steps, first_has_rows = _tile_state(shared, gl.minimum(flat_idx, num_tiles - 1), GROUP,
                                                               BLOCK_N, IS_CAUSAL, NUM_Q_HEADS, USE_WINDOW, CONSUMERS)
        q_tile = _load_q(first_state, GROUP, HEAD_DIM, WARPGROUP)
    while flat_idx < num_tiles:
        state, tile_steps, has_rows = _tile_state(shared, flat_idx, GROUP, BLOCK_N, IS_CAUSAL, NUM_Q_HEADS,
                                                  USE_WINDOW, CONSUMERS)
        if Q_AHEAD:
            # every warp of this warpgroup has read the tile before's output back from the Q buffer (O_IN_Q)
            _warps_barrier()
            _stage_q(state, q_tile, WARPGROUP)
            o, m_i, l_i, turn = _tile_products(state, ring_base, turns, turn, GROUP, HEAD_DIM, BLOCK_N, NUM_STAGES,
                                               IS_CAUSAL, USE_WINDOW, HALF_STEP, SOFTCAP, SCHEDULE, ONE_RANGE,
                                               WARPGROUP)
            count += 1
            flat_idx = _take_tile(queue, count)
            # past the last tile, the last tile's rows again (a load whose rows are never used)
            next_state, next_steps, next_has_rows = _tile_state(shared, gl.minimum(flat_idx, num_tiles - 1), GROUP,
                                                                BLOCK_N, IS_CAUSAL, NUM_Q_HEADS, USE_WINDOW, CONSUMERS)
            q_tile = _load_q(next_state, GROUP, HEAD_DIM, WARPGROUP)
            _store_tile(state, o, m_i, l_i, GROUP, HEAD_DIM, BLOCK_N, WRITE_LSE, NUM_Q_HEADS, HAS_SINKS, O_IN_Q,
                        WARPGROUP)
        else:
            turn = _consume_tile(state, ring_base, turns, turn, GROUP, HEAD_DIM, BLOCK_N, NUM_STAGES, IS_CAUSAL,
                                 WRITE_LSE, NUM_Q_HEADS, USE_WINDOW, HALF_STEP, SOFTCAP, HAS_SINKS, SCHEDULE,
                                 ONE_RANGE, O_IN_Q, WARPGROUP)
            count += 1
            flat_idx = _take_tile(queue, count)
        ring_base += tile_steps


@gluon.jit
def _or_zero(value, USED: gl.constexpr):
    """``value`` where its feature is on, else 0 (a tuple that a jit function returns may hold no None)."""
    if USED:
        return value
    else:
        return 0


@gluon.jit
def _hopper_prefill_kernel(
    out_ptr,  # [T, Hq, D], q's dtype
    lse_ptr,  # [T, Hq] fp32 (WRITE_LSE), else None
    q_ptr,  # [T, Hq, D]
    k_desc,  # TMA descriptor of k_cache viewed [num_pages * PAGE_SIZE, Hkv * D], block [PIECE, D]
    v_desc,  # the same over v_cache
    block_table_ptr,  # [B, max_pages] int32
    cu_seqlens_q_ptr,  # [B + 1] int32
    kv_lens_ptr,  # [B] int32
    sinks_ptr,  # [Hq] fp32 sink logits, natural log (HAS_SINKS), else None
    tile_counter_ptr,  # [1] int32, 0 between launches (PERSISTENT), else None
    qk_scale,  # scale * log2(e); with SOFTCAP, softcap * log2(e)
    softcap_in,  # scale / softcap (SOFTCAP only)
    window,  # keys of the sliding window (USE_WINDOW only)
    num_seqs, num_q_blocks,
    stride_q_t, stride_q_h, stride_o_t, stride_o_h, stride_bt_seq,
    NUM_KV_HEADS: gl.constexpr, GROUP: gl.constexpr, HEAD_DIM: gl.constexpr, PAGE_SIZE: gl.constexpr,
    BLOCK_N: gl.constexpr, NUM_STAGES: gl.constexpr, IS_CAUSAL: gl.constexpr, WRITE_LSE: gl.constexpr,
    USE_WINDOW: gl.constexpr, HALF_STEP: gl.constexpr, PERSISTENT: gl.constexpr, SOFTCAP: gl.constexpr,
    HAS_SINKS: gl.constexpr, SCHEDULE: gl.constexpr, ONE_RANGE: gl.constexpr, CONSUMERS: gl.constexpr,
    K_AHEAD: gl.constexpr, O_IN_Q: gl.constexpr, Q_AHEAD: gl.constexpr,
):
    """One program: one tile of ``64 * CONSUMERS`` rows (``64 * CONSUMERS // GROUP`` queries x ``GROUP`` heads of one
    KV head), a consumer warpgroup per 64, grid ``(num_q_blocks * Hkv,)``, heaviest tiles (the last of each sequence)
    first. ``PERSISTENT``: a grid of at most as many programs as share the multiprocessors, each looping over tiles
    taken in that order from ``tile_counter_ptr`` as it nears the end of the one before (``_producer_tiles``).
    Model features, constexpr switches as in the Triton kernel (off, the code is the plain kernel's):
    ``USE_WINDOW``, ``SOFTCAP`` (each score capped, ``softcap_in`` and ``qk_scale`` as its), ``HAS_SINKS``.
    ``SCHEDULE``: how a consumer warpgroup orders and waits for its products (``HopperPrefillConfig.schedule``);
    ``ONE_RANGE``: a tile's key steps in one range (``HopperPrefillConfig.one_range``); ``K_AHEAD``: the producer
    loads the next step's K before this step's V (``HopperPrefillConfig.k_ahead``); ``O_IN_Q``: the consumers stage
    their output in their Q buffer (``HopperPrefillConfig.o_in_q``); ``Q_AHEAD`` (persistent only): the consumers
    load the next tile's Q before storing this one's output (``HopperPrefillConfig.q_ahead``)."""
    dtype: gl.constexpr = k_desc.dtype
    smem_layout: gl.constexpr = k_desc.layout  # the TMA loads' swizzle, which the products read too
    NUM_Q_HEADS: gl.constexpr = NUM_KV_HEADS * GROUP
    if SCHEDULE == "pingpong":
        turns = _turn_barriers()
    else:
        turns = 0  # unused (a partition's argument may not be None)
    if PERSISTENT:
        q_bufs, k_bufs, v_bufs, k_ready, v_ready, k_empty, v_empty = _ring(dtype, smem_layout, HEAD_DIM, BLOCK_N,
                                                                          NUM_STAGES, CONSUMERS)
        # no None in the tuple: Triton 3.6 cannot return one from a jit function (_tile_state does)
        shared = (q_ptr, out_ptr, _or_zero(lse_ptr, WRITE_LSE), block_table_ptr, cu_seqlens_q_ptr, kv_lens_ptr,
                  k_desc, v_desc, q_bufs, k_bufs, v_bufs, k_ready, v_ready, k_empty, v_empty,
                  _or_zero(window, USE_WINDOW), qk_scale, _or_zero(softcap_in, SOFTCAP), _or_zero(sinks_ptr, HAS_SINKS),
                  num_seqs, num_q_blocks, stride_q_t, stride_q_h, stride_o_t, stride_o_h, stride_bt_seq)
        num_tiles = num_q_blocks * NUM_KV_HEADS  # padding tiles included
        queue = _tile_queue(CONSUMERS)
        if CONSUMERS == 2:
            gl.warp_specialize([
                (_consumer_tiles, (shared, queue, turns, num_tiles, GROUP, HEAD_DIM, BLOCK_N, NUM_STAGES, IS_CAUSAL,
                                   WRITE_LSE, NUM_Q_HEADS, USE_WINDOW, HALF_STEP, SOFTCAP, HAS_SINKS, SCHEDULE,
                                   ONE_RANGE, O_IN_Q, Q_AHEAD, CONSUMERS, 0)),
                (_consumer_tiles, (shared, queue, turns, num_tiles, GROUP, HEAD_DIM, BLOCK_N, NUM_STAGES, IS_CAUSAL,
                                   WRITE_LSE, NUM_Q_HEADS, USE_WINDOW, HALF_STEP, SOFTCAP, HAS_SINKS, SCHEDULE,
                                   ONE_RANGE, O_IN_Q, Q_AHEAD, CONSUMERS, 1)),
                (_producer_tiles, (shared, queue, tile_counter_ptr, num_tiles, GROUP, HEAD_DIM, PAGE_SIZE, BLOCK_N,
                                   NUM_STAGES, IS_CAUSAL, NUM_Q_HEADS, USE_WINDOW, CONSUMERS, K_AHEAD)),
            ], [4, 1], [_CONSUMER_REGISTERS, _PRODUCER_REGISTERS])
        else:
            gl.warp_specialize([
                (_consumer_tiles, (shared, queue, turns, num_tiles, GROUP, HEAD_DIM, BLOCK_N, NUM_STAGES, IS_CAUSAL,
                                   WRITE_LSE, NUM_Q_HEADS, USE_WINDOW, HALF_STEP, SOFTCAP, HAS_SINKS, SCHEDULE,
                                   ONE_RANGE, O_IN_Q, Q_AHEAD, CONSUMERS, 0)),
                (_producer_tiles, (shared, queue, tile_counter_ptr, num_tiles, GROUP, HEAD_DIM, PAGE_SIZE, BLOCK_N,
                                   NUM_STAGES, IS_CAUSAL, NUM_Q_HEADS, USE_WINDOW, CONSUMERS, K_AHEAD)),
            ], [1], [_PRODUCER_REGISTERS])
    else:
        (seq_idx, tile_start, q_start, q_len, kv_len, kv_head, num_steps, mid_steps, first_step,
         left_end) = _tile_fields(gl.program_id(0), cu_seqlens_q_ptr, kv_lens_ptr, window, num_seqs, num_q_blocks,
                                  NUM_KV_HEADS, GROUP, BLOCK_N, IS_CAUSAL, USE_WINDOW, CONSUMERS)
        if tile_start < q_len:
            q_bufs, k_bufs, v_bufs, k_ready, v_ready, k_empty, v_empty = _ring(dtype, smem_layout, HEAD_DIM,
                                                                              BLOCK_N, NUM_STAGES, CONSUMERS)
            block_table_row_ptr = block_table_ptr + seq_idx.to(gl.int64) * stride_bt_seq
            # runtime values travel as one tuple; constexprs as arguments of their own (inside a tuple Gluon 3.6
            # hands them over as runtime values)
            state = (q_ptr, out_ptr, lse_ptr, block_table_row_ptr, k_desc, v_desc, q_bufs, k_bufs, v_bufs, k_ready,
                     v_ready, k_empty, v_empty, tile_start, q_start, q_len, kv_len, kv_head, num_steps, mid_steps,
                     first_step, left_end, window, qk_scale, stride_q_t, stride_q_h, stride_o_t, stride_o_h,
                     softcap_in, sinks_ptr)
            if CONSUMERS == 2:
                gl.warp_specialize([
                    (_consumer, (state, turns, GROUP, HEAD_DIM, BLOCK_N, NUM_STAGES, IS_CAUSAL, WRITE_LSE,
                                 NUM_Q_HEADS, USE_WINDOW, HALF_STEP, SOFTCAP, HAS_SINKS, SCHEDULE, ONE_RANGE, O_IN_Q, 0)),
                    (_consumer, (state, turns, GROUP, HEAD_DIM, BLOCK_N, NUM_STAGES, IS_CAUSAL, WRITE_LSE,
                                 NUM_Q_HEADS, USE_WINDOW, HALF_STEP, SOFTCAP, HAS_SINKS, SCHEDULE, ONE_RANGE, O_IN_Q, 1)),
                    (_producer, (state, HEAD_DIM, PAGE_SIZE, BLOCK_N, NUM_STAGES, K_AHEAD)),
                ], [4, 1], [_CONSUMER_REGISTERS, _PRODUCER_REGISTERS])
            else:  # one consumer: the default partition, with the registers the producer leaves
                gl.warp_specialize([
                    (_consumer, (state, turns, GROUP, HEAD_DIM, BLOCK_N, NUM_STAGES, IS_CAUSAL, WRITE_LSE,
                                 NUM_Q_HEADS, USE_WINDOW, HALF_STEP, SOFTCAP, HAS_SINKS, SCHEDULE, ONE_RANGE, O_IN_Q, 0)),
                    (_producer, (state, HEAD_DIM, PAGE_SIZE, BLOCK_N, NUM_STAGES, K_AHEAD)),
                ], [1], [_PRODUCER_REGISTERS])


# --------------------------------------------------------------------------------------------------
# Host side
# --------------------------------------------------------------------------------------------------

def hopper_prefill_refusal(q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor, *,
                           sliding_window: int | None = None, softcap: float | None = None,
                           sinks: torch.Tensor | None = None, k_scale: torch.Tensor | None = None) -> str | None:
    """None where this kernel can run the batch, else why not (one line): a Hopper GPU (sm_90 exactly:
    its wgmma and setmaxnreg), bf16/fp16 caches of q's dtype (no float8 cache), head dim 64/128/256, caches
    contiguous and 16-byte aligned with page sizes that are a multiple of 16. A sliding window, soft-cap
    and sinks run here; ``sliding_window``, ``softcap`` and ``sinks`` are taken for the call's symmetry."""
    if q.device.type != "cuda" or torch.cuda.get_device_capability(q.device) != (9, 0):
        return "needs an sm_90 GPU"
    if k_scale is not None or k_cache.dtype == torch.float8_e4m3fn:
        return "fp8 caches run the Triton kernel"
    if q.dtype not in (torch.bfloat16, torch.float16) or k_cache.dtype != q.dtype:
        return f"dtype {q.dtype} / cache {k_cache.dtype}: bf16 or fp16 only"
    head_dim = q.shape[2]
    if head_dim not in HOPPER_PREFILL_TABLE:
        return f"head dim {head_dim} not in {tuple(HOPPER_PREFILL_TABLE)}"
    page_size, num_kv_heads = k_cache.shape[1], k_cache.shape[2]
    if page_size % TMA_PIECE:
        return f"page size {page_size} is not a multiple of {TMA_PIECE}"
    group = q.shape[1] // num_kv_heads
    if group > CONSUMER_ROWS or CONSUMER_ROWS % group:
        return f"{group} query heads per KV head do not pack into a tile's {CONSUMER_ROWS}-row parts"
    if not all(c.is_contiguous() and c.data_ptr() % 16 == 0 for c in (k_cache, v_cache)):
        return "caches must be contiguous and 16-byte aligned"
    if k_cache.shape[0] * page_size >= 2 ** 31:
        return "cache rows do not fit int32 TMA coordinates"
    return None


def tma_keys(config: HopperPrefillConfig, page_size: int) -> int:
    """Keys per TMA load (the descriptors' box rows): ``config.tma_keys``, or ``HOPPER_PREFILL_TMA_KEYS`` where it
    is 0; a multiple of ``TMA_PIECE`` that divides the key step and the page (else a ValueError saying so)."""
    keys = config.tma_keys or HOPPER_PREFILL_TMA_KEYS
    if config.block_n % keys or page_size % keys or keys % TMA_PIECE:
        raise ValueError(f"tma_keys={keys} must be a multiple of {TMA_PIECE} dividing the step "
                         f"({config.block_n} keys) and the page size ({page_size})")
    return keys


class HopperPrefillLauncher:
    """Bound arguments of one batch for ``_hopper_prefill_kernel`` (same call interface as the Triton
    kernel's launcher: ``__call__`` returns ``out`` or ``(out, lse)``). Model features as the Triton
    kernel's launcher takes them: ``sliding_window``, ``softcap`` c (each score s becomes ``c * tanh(s / c)``)
    and ``sinks`` (``[Hq]`` float32 logits in each row's denominator and LSE, with no value)."""

    def __init__(self, q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor, block_table: torch.Tensor,
                 cu_seqlens_q: torch.Tensor, kv_lens: torch.Tensor, out: torch.Tensor, lse: torch.Tensor | None, *,
                 causal: bool, scale: float, config: HopperPrefillConfig, sliding_window: int | None = None,
                 softcap: float | None = None, sinks: torch.Tensor | None = None):
        from triton.experimental.gluon.nvidia.hopper import TensorDescriptor

        from .launch import multiprocessor_count, score_scales  # (launch imports this module)

        num_tokens, num_q_heads, head_dim = q.shape
        num_pages, page_size, num_kv_heads, _ = k_cache.shape
        num_seqs = block_table.shape[0]
        self.config = config  # launch.py's choice (configs.hopper_prefill_config) or the caller's
        block_n = self.config.block_n
        piece = tma_keys(config, page_size)
        refusal = config.head_dim_refusal(head_dim)
        if refusal is not None:
            raise ValueError(f"{config.label()}: one consumer's {refusal} (ptxas needs more than the launch's "
                             f"{LAUNCH_MAXNREG[1]} registers for a 64 x {head_dim} accumulator's products)")
        layout = gl.NVMMASharedLayout(swizzle_byte_width=128, element_bitwidth=16, rank=2)
        descs = []
        for cache in (k_cache, v_cache):
            rows = cache.view(num_pages * page_size, num_kv_heads * head_dim)
            descs.append(TensorDescriptor(rows, list(rows.shape), list(rows.stride()), [piece, head_dim], layout))
        group = num_q_heads // num_kv_heads
        self.block_q = config.block_m // group
        self.num_q_blocks = num_tokens // self.block_q + num_seqs
        self.out, self.lse = out, lse
        self.plan = None  # the Triton kernel's LaunchPlan has no counterpart here: describe() gives the figures
        self._empty = num_tokens == 0
        num_tiles = self.num_q_blocks * num_kv_heads
        self.tile_counter = None
        if self.config.persistent:  # as many programs as the multiprocessors hold at once, at most
            num_tiles = min(num_tiles, multiprocessor_count(q.device) * config.programs_per_sm(head_dim,
                                                                                              q.element_size()))
            # the programs' next tiles, taken from 0 on by each launch (the launch's last take sets it back to 0);
            # one counter per launcher: its launches must not run at the same time on two streams
            self.tile_counter = torch.zeros(1, dtype=torch.int32, device=q.device)
        self._grid = (num_tiles,)
        self._args = dict(
            out_ptr=out, lse_ptr=lse, q_ptr=q, k_desc=descs[0], v_desc=descs[1], block_table_ptr=block_table,
            cu_seqlens_q_ptr=cu_seqlens_q, kv_lens_ptr=kv_lens, sinks_ptr=sinks, HAS_SINKS=sinks is not None,
            tile_counter_ptr=self.tile_counter,
            **score_scales(scale, softcap),  # as the Triton kernel's launcher binds them
            window=int(sliding_window) if sliding_window is not None else None, USE_WINDOW=sliding_window is not None,
            num_seqs=num_seqs, num_q_blocks=self.num_q_blocks,
            stride_q_t=q.stride(0), stride_q_h=q.stride(1), stride_o_t=out.stride(0), stride_o_h=out.stride(1),
            stride_bt_seq=block_table.stride(0),
            NUM_KV_HEADS=num_kv_heads, GROUP=group, HEAD_DIM=head_dim, PAGE_SIZE=page_size,
            BLOCK_N=block_n, NUM_STAGES=self.config.num_stages, IS_CAUSAL=bool(causal), WRITE_LSE=lse is not None,
            HALF_STEP=self.config.half_step, PERSISTENT=self.config.persistent, SCHEDULE=self.config.schedule,
            ONE_RANGE=self.config.one_range, CONSUMERS=self.config.consumers, K_AHEAD=self.config.k_ahead,
            O_IN_Q=self.config.o_in_q, Q_AHEAD=self.config.q_ahead,
            num_warps=4, maxnreg=LAUNCH_MAXNREG[self.config.consumers],
        )

    def describe(self) -> dict:
        return {"config": self.config.label(), "num_q_blocks": self.num_q_blocks, "block_q": self.block_q,
                "num_splits": 1, "programs": self._grid[0], "kernel": "gluon warp-specialised (sm_90)"}

    def register_report(self) -> dict:
        """The kernel's registers and spills as compiled (`plan.register_report`; after the first call)."""
        return register_report(getattr(self, "_compiled", None))

    def __call__(self):
        if not self._empty:
            self._compiled = _hopper_prefill_kernel[self._grid](**self._args)
        return self.out if self.lse is None else (self.out, self.lse)


def compile_sm90(head_dim: int, page_size: int, group: int = 4, dtype: torch.dtype = torch.bfloat16,
                 causal: bool = True, write_lse: bool = True, config: HopperPrefillConfig | None = None,
                 sliding_window: int | None = None, softcap: float | None = None, sinks: bool = False):
    """Compile the kernel for sm_90 without a GPU (Triton's own compiler and ptxas, on CPU tensors'
    signatures; ``config`` defaults to what a launch of long sequences takes, ``configs.hopper_prefill_config``, the
    window's schedule included; ``sinks``: a CPU float32 ``[Hq]`` tensor
    stands in for the logits) -> Triton's compiled kernel (``.asm["ptx"]``, ``.metadata.shared``): the CPU's
    check of the Gluon code, which Triton's interpreter does not run. Needs TRITON_INTERPRET unset when this
    module was imported (``tests/test_hopper_prefill.py`` runs it in a subprocess)."""
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.experimental.gluon._runtime import GluonASTSource
    from triton.runtime.jit import mangle_type

    num_kv_heads = 2
    q = torch.empty(8, num_kv_heads * group, head_dim, dtype=dtype)
    k_cache = torch.empty(4, page_size, num_kv_heads, head_dim, dtype=dtype)
    block_table = torch.zeros(2, 4, dtype=torch.int32)
    launcher = HopperPrefillLauncher(q, k_cache, k_cache.clone(), block_table, torch.zeros(3, dtype=torch.int32),
                                     torch.zeros(2, dtype=torch.int32), torch.empty_like(q),
                                     torch.empty(8, q.shape[1]) if write_lse else None, causal=causal, scale=0.1,
                                     config=config or hopper_prefill_config(head_dim, 2 ** 31 - 1, sliding_window),
                                     sliding_window=sliding_window,
                                     softcap=softcap, sinks=torch.zeros(q.shape[1]) if sinks else None)
    args = dict(launcher._args)
    options = {key: args.pop(key) for key in ("num_warps", "maxnreg")}
    kernel = _hopper_prefill_kernel
    signature, constexprs = {}, {}
    for index, param in enumerate(kernel.params):
        value = args[param.name]
        if param.is_constexpr or value is None:
            signature[param.name], constexprs[(index,)] = "constexpr", value
        else:
            signature[param.name] = mangle_type(value)
    return triton.compile(GluonASTSource(kernel, signature, constexprs), target=GPUTarget("cuda", 90, 32),
                          options=options)
