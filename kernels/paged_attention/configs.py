"""Launch configurations: ``KernelConfig``, the buckets a configuration depends on, and the table.

The table is keyed on what changes the winner (head dim, page-size class, bucketed max query
length) and never on raw per-batch lengths. The measurements behind each entry are in
``docs/triton_kernel_notes.md``, section "Why the table is what it is"; the comments here name the
subsection.
"""

from __future__ import annotations

from dataclasses import dataclass, replace


@dataclass(frozen=True)
class KernelConfig:
    """One launch configuration of the attention kernel.

    block_m: rows of a tile (``block_m // group`` queries x ``group`` heads; raised to the group
    size where that is larger); block_n: keys per inner step; split_programs_per_sm: split the keys
    until about this many programs per multiprocessor are launched; min_split_keys: never split
    below this many keys per chunk.
    """

    block_m: int
    block_n: int
    num_warps: int
    num_stages: int
    split_programs_per_sm: int = 0
    min_split_keys: int = 1 << 30
    use_tma: bool = False
    """Load K/V tiles through TMA descriptors where a tile sits inside one page (Hopper and newer)."""
    max_registers: int = 0
    """Cap on registers per thread (Triton's ``maxnreg``; 0 leaves it to the compiler): 128 lets two
    8-warp programs share a multiprocessor, at the price of some spills."""
    merge_warps: int = 4
    """Warps of the split-merge kernel, whose tile holds ``block_m x D`` fp32 values twice (the sum
    and one chunk's partial output): at D=256 four warps spill."""

    def label(self) -> str:
        return (f"M{self.block_m}-N{self.block_n}-w{self.num_warps}-s{self.num_stages}"
                f"{'-tma' if self.use_tma else ''}{f'-r{self.max_registers}' if self.max_registers else ''}"
                f"{f'-mw{self.merge_warps}' if self.merge_warps != 4 else ''}"
                f"-split{self.split_programs_per_sm}/{self.min_split_keys}")


TABLE_HEAD_DIMS = (64, 128, 256)
"""Head dims with table entries; the others use the next larger one."""


def query_bucket(max_q_len: int) -> str:
    """Bucketed max query length: the only length the config depends on."""
    if max_q_len <= 1:
        return "decode"
    if max_q_len <= 16:
        return "short"
    return "long"


def page_class(page_size: int) -> str:
    """Page sizes that behave alike: below 16 every key looks its page up; from 64 a 64-key tile
    can sit inside one page (and load through TMA)."""
    if page_size < 16:
        return "small"
    if page_size < 64:
        return "medium"
    return "large"


def config_key(head_dim: int, page_size: int, max_q_len: int) -> tuple[str, int, str]:
    """(query bucket, table head dim, page class): the key of ``CONFIG_TABLE``."""
    table_dim = next((d for d in TABLE_HEAD_DIMS if head_dim <= d), TABLE_HEAD_DIMS[-1])
    return query_bucket(max_q_len), table_dim, page_class(page_size)


# Decode splits keys until about one program per SM where key tiles sit inside pages (fewer, longer
# chunks stream better), about three per SM on smaller pages (per-key page lookups need more programs
# to hide their latency): notes, "Decode: how far to split".
_DECODE = {"large": dict(split_programs_per_sm=1, min_split_keys=256),
           "medium": dict(split_programs_per_sm=3, min_split_keys=256),
           "small": dict(split_programs_per_sm=3, min_split_keys=256)}
_SHORT = dict(split_programs_per_sm=4, min_split_keys=512)
# Long queries split only where chunks stay long (4096+ keys): notes, "Long queries: when to split".
_LONG = dict(split_programs_per_sm=2, min_split_keys=4096)


FEW_PROGRAMS_PER_SM = {"long": 2.0, "decode": 0.25}
"""A launch whose table tiles would make fewer programs than this per multiprocessor takes its
bucket's ``-few`` entry instead. Long queries: less than one wave of the two-per-SM 128-row tiles,
so smaller tiles and more programs. Decode: so few sequences that even split, each SM streams one
chunk on its own, and 128-key steps keep more bytes in flight. Notes, "Few-tile launches"."""


DECODES_APART_MIN_KEYS_PER_SM = 4096
"""A mixed batch's leading decodes run as a launch of their own (``prepare_paged_attention``'s
``num_decodes``) when they read at least this many keys per multiprocessor (their keys, each at most
what a sliding window lets it see, x KV heads / multiprocessors): then one query per tile and a split
by the batch's work save more than the second launch costs; lighter decodes fill the gaps between
prefill tiles in the long launch. H100, 32/8/128 (notes, "v3.6: decodes apart"): 8 decodes of 3001
keys beside 8 prefills (1455 keys per SM) measure the same either way; 32 decodes of 512 to 8k keys
(9.4k per SM) 4 to 8 % faster apart, at 64/8/64 5 %; 64 decodes of lognormal lengths up to 32k (12.7k
per SM) 1216 -> 712 us. Between 1455 and 9.4k the threshold is not measured."""


def _table() -> dict[tuple[str, int, str], KernelConfig]:
    """(query bucket, head dim, page class) -> config. The decode and long entries at D=128 and 256
    and the long D=64 one are the winners measured on an H100 by scripts/triton_tune.py (bf16, pages
    16 and 256; notes, "Why the table is what it is", "v3.5" and "v3.6"), as is the short D=256 one;
    the short bucket at D=64 and 128 and D=64 decode were chosen from the compiler's register and spill
    report and checked for correctness on the GPU, not timed (notes, "Untimed entries")."""
    table = {}
    for page in ("small", "medium", "large"):
        table["decode", 64, page] = KernelConfig(16, 64, 4, 3, **_DECODE[page])
        # 2 stages: fewer registers, more programs per SM (notes, "Decode: stages")
        table["decode", 128, page] = KernelConfig(16, 64, 4, 2, **_DECODE[page])
        table["decode-few", 128, page] = KernelConfig(16, 128, 4, 2, split_programs_per_sm=1, min_split_keys=128)
        if page == "medium":  # a sliding window: 32-key steps (notes, "v5.2"; measured at page 16 only)
            table["decode-window", 128, page] = KernelConfig(16, 32, 4, 2, **_DECODE[page])
        # D=256 decode: 2 stages reach the copy ceiling, 3 do not (notes, "v3.5")
        table["decode", 256, page] = KernelConfig(16, 32, 4, 2, **_DECODE[page])
        table["short", 64, page] = KernelConfig(64, 64, 4, 3, **_SHORT)
        table["short", 128, page] = KernelConfig(64, 64, 4, 3, **_SHORT)
        # D=256: 32-key steps (16 wait on shared memory), the merge at 8 warps (4 spill) (notes, "v3.6")
        table["short", 256, page] = KernelConfig(64, 32, 4, 2, merge_warps=8, **_SHORT)
        # 3 stages: 2 win on pure prefill but lose 39 % on a mixed batch's decode tiles (notes, "v3.5")
        table["long", 64, page] = KernelConfig(128, 64, 4, 3, **_LONG)
        # 128-row tiles halve the K/V traffic from L2 against 64-row ones; capped at 128 registers,
        # two 8-warp programs share a multiprocessor (notes, "Long queries: 128-row tiles")
        table["long", 128, page] = KernelConfig(128, 64, 8, 3, max_registers=128, **_LONG)
        # D=256: 64-key steps; below that the q.K^T product waits on shared memory (notes, "v3.5")
        table["long", 256, page] = KernelConfig(128, 64, 8, 2, merge_warps=16, **_LONG)
        table["long-few", 128, page] = KernelConfig(64, 64, 4, 3, **_LONG)
    # pages of 64+ keys hold a whole key tile: TMA loads win there (notes, "TMA on large pages")
    table["long", 128, "large"] = KernelConfig(128, 64, 8, 2, use_tma=True, max_registers=128, **_LONG)
    table["long-few", 128, "large"] = KernelConfig(64, 64, 4, 3, use_tma=True, **_LONG)
    table["long", 256, "large"] = KernelConfig(128, 64, 8, 2, use_tma=True, merge_warps=16, **_LONG)
    return table


CONFIG_TABLE: dict[tuple[str, int, str], KernelConfig] = _table()
"""Chosen configuration per (query bucket, head dim, page class). Head dims between the listed ones
use the next larger listed one. ``long-few`` and ``decode-few`` entries replace ``long`` and
``decode`` ones for launches with few tiles (see ``FEW_PROGRAMS_PER_SM``).

Model features (soft-cap, sinks, fp8 KV) take the entry of their key unchanged (notes, "v3.4: model
features"). A sliding window takes the ``decode-window`` entry where there is one: D=128 decodes at pages
of 16 to 63 keys, 32-key steps, H100 B64 on 16k keys with a 4096-key window 376.3 us against the 64-key
entry's 421.4 / 419.1 (cuDNN 381.2; 2 stages or 3, 4 warps or 2 within 1 us; notes, "v5.2"). With a window
the planner splits the keys a tile reads (``plan.tile_key_span``), not the whole context, with the entry's
split figures."""


HOPPER_PREFILL_CONSUMER_ROWS = 64
"""Rows of a Gluon prefill tile that one consumer warpgroup owns (a wgmma instruction's M is 64 per warpgroup); a
tile has one or two (``HopperPrefillConfig.block_m``)."""

HOPPER_PREFILL_ONE_CONSUMER_MAX_HEAD_DIM = 128
"""The largest head dim a tile of one consumer (``block_m`` 64) runs: at D=256 ptxas needs 158 registers for the
products of a 64 x 256 accumulator, beyond the 128 that let two programs share a multiprocessor (Triton 3.6: "C7602
Insufficient registers"), and two programs' shared memory would not fit anyway."""

HOPPER_PREFILL_SHARED_BYTES = 227 * 1024
"""Shared memory one sm_90 program may hold; a multiprocessor has 228 KiB for all of its programs."""

HOPPER_PREFILL_SCHEDULES = ("step", "paired", "pingpong", "overlap")
"""The orders in which the Gluon prefill kernel's consumers may issue their products
(``HopperPrefillConfig.schedule``)."""


@dataclass(frozen=True)
class HopperPrefillConfig:
    """One launch configuration of the warp-specialised Gluon prefill kernel (``hopper_prefill.py``):
    ``block_n`` keys per step and ``num_stages`` K/V tiles in flight. Its tile is ``block_m`` rows, a consumer
    warpgroup per 64; shared memory holds Q and ``num_stages`` x (K + V) tiles."""

    block_n: int
    num_stages: int
    half_step: bool = False
    """Masked steps whose second half of keys a warpgroup's rows cannot see (the causal diagonal's overhang: a
    128-row tile holds ``128 // GROUP`` queries, so a 128-key step overhangs it by up to 96 keys at GROUP 4) run
    their products half as wide. Timed in the default sweep and left off (notes, "v5.1")."""
    persistent: bool = False
    """As many programs as the multiprocessors hold at once (``programs_per_sm``) looping over the tiles, the ring's
    slots counted on from tile to tile: the producer loads a tile's first keys while the consumers finish and store
    the one before (notes, "v5.1": where tiles are short, one program per tile leaves its prologue and epilogue
    unoverlapped). Each program's first tile is its own number, each next one taken from a counter of the launch
    (in the heaviest-first order) as the program nears the end of the one before, so that the tiles go where a
    program is free, as one-tile programs go to free multiprocessors. With each program's share fixed (programs p,
    p + programs, ...) it lost where timed (notes, "v5.2"; with 64-row tiles, "v5.4"); taken from the counter it is up
    to 8 % faster in 11 of 12 tuning cells at D=64 and D=128 (the twelfth 1 % slower), and the D=64 and D=128 entries
    and the short sequences' 64-row tiles take it (notes, "v5.8"); D=256 and windows do not
    (``HOPPER_PREFILL_WINDOW_PERSISTENT``)."""
    tma_keys: int = 0
    """Keys per TMA load of K or V; 0: ``HOPPER_PREFILL_TMA_KEYS``. A tuning option (``triton_tune.py --gluon
    128,2,tma64``)."""
    schedule: str = "step"
    """How a consumer warpgroup orders its products (``HOPPER_PREFILL_SCHEDULES``): ``"step"``, a step's ``Q K^T`` and
    ``P V`` each waited for within the step; ``"paired"``, a step's ``Q K^T`` issued right behind the step before's
    ``P V`` and both waited for at once; ``"pingpong"``, paired, with the two warpgroups taking turns to issue them
    (FlashAttention 3's schedule) so that one's softmax overlaps the other's products; ``"overlap"``, the step's
    ``Q K^T`` issued before the step before's ``P V`` and waited for alone, its softmax beside that product
    (FlashAttention 3's overlap within a warpgroup; the D=128 and D=256 entries and windows). The paired schedules run
    full-width steps only (no ``half_step``)."""
    one_range: bool = False
    """A paired schedule runs all of a tile's key steps in one range, each step's masks chosen as it runs, instead of
    a range per kind of step (a window's masked left edge, the unmasked middle, the masked diagonal) whose masks are
    compiled in: a range's first ``Q K^T`` and last ``P V`` run with nothing beside them, which cost the paired
    schedules most where tiles have few steps (windows, short sequences; notes, "v5.3"). Windows take it
    (``HOPPER_PREFILL_WINDOW_ONE_RANGE``); longer tiles lose more to each step's branch than the boundaries cost
    (notes, "v5.4")."""
    block_m: int = 128
    """Rows of a tile: 128, two consumer warpgroups sharing each K and V tile, one program per multiprocessor (the
    launch's registers); or 64, one consumer, so that two programs share a multiprocessor where their shared memory
    fits, each one's prologue and epilogue beside the other's products (short tiles; each K and V tile is loaded
    for 64 rows instead of 128): the D=128 entry of ``HOPPER_PREFILL_SHORT_TABLE`` (notes, "v5.4"). Head dims up to
    ``HOPPER_PREFILL_ONE_CONSUMER_MAX_HEAD_DIM``."""
    k_ahead: bool = False
    """The producer loads the next step's K tile before this step's V: the consumers release a step's K after its
    ``Q K^T`` but its V only after ``P V`` (with the schedule ``"overlap"``, after the next step's ``Q K^T`` too), and
    loading K then V step by step holds the next K back until that V's stage is free. The D=256 entry (and so its
    windows) takes it; at D=64 and D=128 it ties or loses (notes, "v5.6")."""
    o_in_q: bool = False
    """The consumers stage a tile's output for its coalesced store in their own Q buffer, which the tile's products
    are done with by then, instead of in shared memory the compiler sets aside for the layout change (16 KB at
    D=128): that makes room for a third K/V stage of 128-key steps at D=128 (245,888 bytes without it; cuDNN's kernel
    holds 232 KB there, notes "v5.6"). Three stages that way tie two (notes, "v5.8"); off everywhere."""
    q_ahead: bool = False
    """Persistent programs only: a consumer warpgroup loads the next tile's Q rows into registers before it writes
    this tile's output, so that their latency runs beside that store rather than between the tile's last product
    and the next one's first. It loses 1 to 5 % at D=128 (notes, "v5.8"); off everywhere."""

    def __post_init__(self):
        if self.schedule not in HOPPER_PREFILL_SCHEDULES:
            raise ValueError(f"schedule {self.schedule!r}: one of {', '.join(HOPPER_PREFILL_SCHEDULES)}")
        if self.half_step and self.schedule != "step":
            raise ValueError(f"half_step runs with the schedule 'step' only, not {self.schedule!r}")
        if self.one_range and self.schedule == "step":
            raise ValueError("one_range needs a paired schedule (paired, pingpong or overlap), not 'step'")
        if self.block_m not in (HOPPER_PREFILL_CONSUMER_ROWS, 2 * HOPPER_PREFILL_CONSUMER_ROWS):
            raise ValueError(f"block_m={self.block_m}: 64 (one consumer warpgroup) or 128 (two)")
        if self.q_ahead and not self.persistent:
            raise ValueError("q_ahead loads the next tile's Q in persistent programs only: persistent=True")
        if self.schedule == "pingpong" and self.block_m != 2 * HOPPER_PREFILL_CONSUMER_ROWS:
            raise ValueError("the schedule 'pingpong' takes turns between two consumers: block_m=128")

    @property
    def consumers(self) -> int:
        """Consumer warpgroups of a program."""
        return self.block_m // HOPPER_PREFILL_CONSUMER_ROWS

    def head_dim_refusal(self, head_dim: int) -> str | None:
        """Why this configuration cannot run ``head_dim`` (64-row tiles above
        ``HOPPER_PREFILL_ONE_CONSUMER_MAX_HEAD_DIM``), or None: the launcher's and the tuning script's check."""
        if self.consumers == 1 and head_dim > HOPPER_PREFILL_ONE_CONSUMER_MAX_HEAD_DIM:
            return f"64-row tiles run head dims up to {HOPPER_PREFILL_ONE_CONSUMER_MAX_HEAD_DIM}, not {head_dim}"
        return None

    def programs_per_sm(self, head_dim: int, element_size: int = 2) -> int:
        """Programs that share a multiprocessor: one with two consumers (their registers fill it), else as many as
        their shared memory allows, at most two (``hopper_prefill.LAUNCH_MAXNREG``)."""
        if self.consumers == 2:
            return 1
        reserved = 1024  # shared memory the hardware keeps per program
        return max(1, min(2, (HOPPER_PREFILL_SHARED_BYTES + reserved)
                          // (self.shared_bytes(head_dim, element_size) + reserved)))

    def label(self) -> str:
        return (f"gluon-ws M{self.block_m}-N{self.block_n}-s{self.num_stages}"
                + ("-half" if self.half_step else "") + ("-persistent" if self.persistent else "")
                + (f"-tma{self.tma_keys}" if self.tma_keys else "")
                + (f"-{self.schedule}" if self.schedule != "step" else "") + ("-onerange" if self.one_range else "")
                + ("-kahead" if self.k_ahead else "") + ("-oq" if self.o_in_q else "")
                + ("-qahead" if self.q_ahead else ""))

    def shared_bytes(self, head_dim: int, element_size: int = 2) -> int:
        return (self.block_m + 2 * self.num_stages * self.block_n) * head_dim * element_size


HOPPER_PREFILL_TMA_KEYS = 16
"""Keys per TMA load of K or V at every page size, where a configuration does not say (``tma_keys`` 0). At page 256
the producer once loaded a whole 128-key step at a time. H100, 32/8/128, page 256, us
(results/h100-triton-tune/twelfth-session/tune-tma-d128):
- B4 q2048 on 2048 cached keys: 729.0 with 16-key loads against 757.0 / 775.2 with whole steps (32 keys: 757.0,
  64: 776.0; cuDNN 752.6).
- B8 q2048 on 2048 keys: 1450.5 against 1550.4 / 1573.8 (cuDNN 1512.6).
- B4 q2048 with no context: 301.4 against 307.1 / 305.6. B8 q2048 with no context: 597.0 against 589.9 / 607.6, a
  tie.
In the default sweep on one machine (notes, "v5.2"), B8 q2048 on 2048 keys went from 1566.4 to 1486.7 and B4 q2048
on 2048 from 780.6 to 752.7; B1 q2048 on 2048 from 187.2 to 192.3 (slower); the cells with no context moved
within 1.5 %."""


HOPPER_PREFILL_TABLE: dict[int, HopperPrefillConfig] = {
    # H100, bf16, B4 q2048 on 2048 keys, us at page 16 (results/h100-triton-tune/ninth-session/pv-wait, the
    # kernel at 74783da): 523.5 / 520.0 (table, repeat; 2 stages 492.9 in the same run, 510.6 against 3
    # stages' 508.5 in another: a tie; cuDNN 650.0). The "paired" schedule in the default sweep (32/8/64,
    # thirteenth session, two runs): 498.8 / 500.3 against "step" 494.3 / 498.6 (FA4 467.3), the 64/8/64 mixed
    # batch 1345.6 / 1350.3 against 1382.1 / 1392.3: no clear win, so it stays "step"
    # Persistent programs taking their tiles from the launch's counter (seventeenth session, results/h100-default-rows-
    # v5.8, us at pages 256 / 16): the tuning script's B4 q2048 c2048 477.6 / 469.7 against 495.9 / 488.0, B8 q2048 c0
    # 402.5 / 401.7 against 431.7 / 437.6 (cuDNN 418.2 / 501.5); the default sweep's h32x8d64 cell 481.4 against 493.8.
    64: HopperPrefillConfig(block_n=128, num_stages=3, persistent=True),
    # 740.8 / 752.7 at pages 16 / 256 (64-key steps 773.8 / 843.7; 3 stages do not fit: 245,888 bytes of
    # shared memory, 229,728 with ``o_in_q``, not timed yet; cuDNN 844.2 / 845.7). B8 q512 with no context: 81.7 /
    # 82.8 against 64-key steps' 77.4 / 77.2 (cuDNN 76.4 / 70.3): launches of such short sequences take
    # HOPPER_PREFILL_SHORT_TABLE.
    # The "paired" schedule (thirteenth session, the default sweep twice per schedule, results/h100-default-rows-
    # v5.3): B4 q2048 c2048 716.8 / 729.4 against "step" 741.6 / 729.8 at page 16, 726.6 / 727.6 against 746.2 /
    # 750.1 at 256; B8 q2048 c0 594.4 / 598.8 against 609.1 / 613.6 at page 256 (cuDNN 574.6); B1 q2048 c2048
    # 178.1 / 177.6 against 193.5 / 191.3. Over the two runs' means, every prefill cell this entry runs is 0.7 to
    # 8.8 % faster, and every mixed batch -0.1 to 1.4 %. "pingpong" lies between the two (B4 q2048 c0 at page 256:
    # 299.6 / 300.8 against paired 293.9 / 293.9).
    # "overlap" (fourteenth session, results/h100-default-rows-v5.4: the default sweep and its prefill and mixed
    # cells again, with this entry, the D=256 one and windows "paired" / "step" and "overlap" in one job): of the 29
    # prefill and mixed cells whose configuration that changes, 27 are faster over the two runs' means, by up to
    # 2.4 % (B8 q512 c2048 288.4 to 281.4 at page 256, B4 q2048 c2048 fp16 772.9 to 759.0, the 8-decode mixed batch
    # 1702.0 to 1670.4 at page 16), 2 slower by 0.5 and 1.0 % (B1 q2048 c0, B1 q512 c2048 at page 16); the
    # tuning script's B8 q2048 c0 570.8 / 570.9 against 578.1 / 582.6 at pages 256 / 16. Its steps in one range
    # (``one_range``) lose: B4 q2048 c2048 709.7 / 784.6 against 672.0 / 727.5 (paired, in ranges).
    # k_ahead (sixteenth session, results/h100-default-rows-v5.5/kahead-all: the default sweep with it, in the same
    # job as without; two runs each): a wash. Over the 35 prefill and mixed cells at D=64 and 128, 1.004 and 1.002
    # times the time without (geomean), while the same job's rows of the landed table, whose D=128 entry is this one,
    # came out 1.006 later in the job; the tuning script's B8 q2048 c0 584.0 / 575.4 against 568.1 / 565.9 at pages
    # 256 / 16, B4 q2048 c2048 658.2 / 706.2 against 707.9 / 668.4.
    # Persistent programs taking their tiles from the launch's counter (seventeenth session, results/h100-triton-tune/
    # seventeenth-session/job20 and results/h100-default-rows-v5.8, us at pages 256 / 16): the tuning script's B8 q2048
    # c0 528.8 / 545.6 against 567.3 / 568.3 (cuDNN 542.6 / 599.4), B4 q2048 c0 275.5 / 274.5 against 291.5 / 289.0,
    # B4 q2048 c2048 637.6 against 681.5 at page 256; the default sweep's B8 q2048 c0 564.6 against 583.9 at page 256
    # (cuDNN 586.2 and 581.0 in the two runs). Their next tile's Q loaded ahead (q_ahead) loses: 554.0 and 279.9 on the
    # two c0 cells at page 256. Three stages through o_in_q, persistent, tie (the default sweep's prefill and mixed
    # cells: 569.9 on B8 q2048 c0, 727.5 against 700.8 on B4 q2048 c2048 at page 256).
    128: HopperPrefillConfig(block_n=128, num_stages=2, schedule="overlap", persistent=True),
    # Hq 16: 682.6 / 761.2 (table, repeat; one stage 1010.7, 128-key steps with one stage 946.8; cuDNN
    # 706.1); a 128-key step's ring of two does not fit beside Q in shared memory. "paired" (thirteenth
    # session, the default sweep's B4 q2048 c2048 at page 16, two runs): 678.8 / 678.6 against "step" 705.5 /
    # 706.8 (FA4 672.5, cuDNN 715.6); soft-capped at 50, 826.4 / 823.5 against 838.3 / 850.9; "pingpong" 676.7 /
    # 678.2 and 833.2 / 833.0, a tie (the tuning script's single runs, 624.3 against 667.0 at page 256, vary
    # as much as the entry's own table and repeat rows there, 646.3 / 689.9).
    # "overlap" (fourteenth session, two runs): 681.4 against "paired" 689.3 (FA4 625.1), soft-capped 834.1
    # against 836.0; the tuning script's B4 q2048 c0 254.9 / 253.7 against 255.4 / 259.8 at pages 16 / 256, and
    # in one range 269.1 / 258.2 (paired 273.0 / 266.9).
    # k_ahead (sixteenth session, results/h100-default-rows-v5.5, us, H100): the default sweep's B4 q2048 c2048 at
    # page 16 682.4 / 685.4 without it, 653.9 / 659.7 with it (cuDNN 718.2 to 759.7, FA4 684.3), with a 1024-key
    # window 290.5 / 291.7 against 285.4 / 289.5 (cuDNN 283.4 to 288.8), soft-capped 825.8 / 818.9 against 826.1 /
    # 823.1 (a tie); the tuning script's B4 q2048 c2048 607.6 / 607.0 against 649.6 / 622.0 at pages 16 / 256, B4
    # q2048 c0 249.4 / 241.4 against 252.1 / 250.8, with the window 279.0 / 278.6 against 284.2 / 283.9.
    256: HopperPrefillConfig(block_n=64, num_stages=2, schedule="overlap", k_ahead=True),
}
"""The Gluon prefill kernel's entry per head dim (64, 128, 256 only). Long-query launches (query
bucket ``long``, keys unsplit) on an sm_90 GPU take it instead of ``CONFIG_TABLE``'s entry where the
kernel can run the batch (``hopper_prefill.hopper_prefill_refusal``)."""

HOPPER_PREFILL_SHORT_KEYS = 512
"""Launches whose longest sequence has at most this many keys take ``HOPPER_PREFILL_SHORT_TABLE`` instead of
their head dim's entry: a causal tile of short sequences is mostly its diagonal, where 64-key steps waste
fewer masked keys than 128-key ones."""

_SHORT_STEPS = HopperPrefillConfig(block_n=64, num_stages=2)
HOPPER_PREFILL_SHORT_TABLE: dict[int, HopperPrefillConfig] = {
    # 64-row tiles (sixteenth session, the tuning script, results/h100-triton-tune/sixteenth-session/job18, 32/8/64
    # bf16, us at pages 256 / 16): B8 q512 52.5 / 52.0 against 128-row tiles' 55.8 / 55.1, B16 q256 42.8 / 43.4
    # against 46.7 / 47.2; with 128-key steps 54.2 / 54.7 and 47.3 / 47.2. The default sweep has no such cell.
    # Persistent (seventeenth session, job23, the 128 entry's B8 q512 below): taken for D=64 by the same rule, not timed.
    64: replace(_SHORT_STEPS, block_m=64, persistent=True),
    # 64-row tiles of one consumer, two programs a multiprocessor (fourteenth session, results/h100-default-rows-v5.4,
    # the default sweep and its prefill cells again, us): B8 q512 72.3 / 72.6 against 76.4 / 76.5 at page 256 (cuDNN
    # 72.5 / 71.5), 72.4 against 77.7 at page 16 (cuDNN 77.6); B4 q512 39.9 against 42.0 (cuDNN 47.0); B1 q512 16.4
    # against 18.4. The tuning script: B16 q256 56.7 / 57.3 against 63.0 / 64.1 at pages 256 / 16 (cuDNN 57.2 /
    # 61.2); "overlap" 71.6 against 71.9 on B8 q512 at page 256, a tie; 3 stages 107.7 (one program a
    # multiprocessor); persistent programs 84.1. Longer sequences lose (B8 q2048 c0: 637.0 against the entry's 571.7).
    # Persistent programs taking their tiles from the launch's counter (seventeenth session, results/h100-triton-tune/
    # seventeenth-session/job23, us at pages 256 / 16): the tuning script's B8 q512 68.4 / 68.8 against 71.2 / 71.5
    # (cuDNN 71.6 / 75.9), B4 q512 39.3 / 39.2 against 39.9 / 39.9, B16 q256 56.6 / 55.9 against 56.5 / 57.1; the
    # default sweep's B8 q512 at page 256 69.5 against 72.5 / 72.5 (cuDNN / Triton 1.038 against 0.986 / 0.998).
    128: replace(_SHORT_STEPS, block_m=64, persistent=True),
    # 64-row tiles do not run at D=256 (HOPPER_PREFILL_ONE_CONSUMER_MAX_HEAD_DIM)
    256: _SHORT_STEPS,
}
"""The Gluon prefill kernel's entry per head dim for launches of short sequences (``HOPPER_PREFILL_SHORT_KEYS``):
64-key steps in the schedule "step". H100, bf16, causal with no cached context, us at pages 16 / 256
(results/h100-triton-tune/eleventh-session), 128-row tiles (the D=64 and D=128 entries' 64-row tiles above). Its
schedule stays "step": with "paired" the default sweep's B8 q512 measured 78.0 / 77.9 and 77.2 / 77.0 against
76.8 / 77.8 and 76.8 / 76.6, B4 q512 43.1 / 42.8 at page 16 against 42.7 / 42.7 (thirteenth session, two runs each);
the tuning script's "pingpong" 80.4 / 80.5 against 76.5 / 76.3.
The default sweep's D=128 cells, against the 128-key entry in two runs: B8 q512 76.8 / 77.0 against 84.1, 83.8
/ 82.0, 82.7 (cuDNN 76.8 / 71.7); B4 q512 42.1 / 41.8 against 45.7, 45.2 / 44.3, 45.3; B1 q512 unchanged
(18.3). The tuning script: B8 q512 76.9 / 77.0 against 83.0 / 82.9; D=64 B8 q512 56.3 against 63.2 (page 16,
cuDNN 63.5); with the entry's half-wide steps on, B16 q256 63.8 / 63.5 against 68.3 / 68.9, B32 q512 283.9 /
285.8 against 303.1 / 304.3. At 1024 keys they tie or lose (against the half-wide entry): B8 q1024 203.2 /
202.6 against 202.8 / 203.2, B16 q1024 396.3 / 397.8 against 395.3 / 399.0, B8 q512 on 512 cached keys 136.1 /
137.7 against 132.5 / 133.2. 3 and 4 stages: slower but for B16 q256 at page 256 (62.5)."""

HOPPER_PREFILL_MIN_WINDOW = 1024
"""Launches with a sliding window of fewer keys run the Triton kernel unless the Gluon kernel is asked for
(``hopper_prefill=True``): a tile of a short window reads two or three masked key steps, and the one-tile
program's prologue and epilogue outweigh them. H100, default sweep (notes, "v5.2"): the mixed batch of 32
decodes and two 4k prefills at 64/8/64 with a 128-key window and sinks, 285.6 us with its prefills in the
Gluon kernel against 206.7 in the Triton kernel (FA4 227.9); at 1024 keys (16/8/256, B4 q2048 on 2048 cached
keys) the Gluon kernel is the faster, 294.7 against the Triton kernel's 405.7 (c1c82b4). Between the two it is not
measured."""


HOPPER_PREFILL_WINDOW_SCHEDULE = "overlap"
"""The schedule of a launch with a sliding window, whatever its entry says, with its steps in one range
(``HOPPER_PREFILL_WINDOW_ONE_RANGE``). In ranges, the paired schedules start and end each of a window's three (the
masked left edge, the unmasked middle, the masked diagonal) with a product that nothing overlaps, and a window's
tiles have few steps. H100, the default sweep's 16/8/256 B4 q2048 c2048 with a 1024-key window (thirteenth session,
two runs each): "step" 293.6 / 292.3 us, "paired" 322.0 / 322.5, "pingpong" 335.9 / 337.1 (cuDNN 284.1). Fourteenth
session: "overlap" in one range 294.2 / 294.3 against "step" 297.9 / 301.5 (cuDNN 286.7, FA4 276.7); the tuning
script at pages 16 / 256: 286.9 / 281.3 against "step" 288.8 / 292.7, "paired" in one range 286.3 / 286.8, in
ranges 323.2 / 326.2 (cuDNN 282.4 / 278.0)."""

HOPPER_PREFILL_WINDOW_ONE_RANGE = True
"""Whether a launch with a sliding window runs a tile's steps in one range (``HopperPrefillConfig.one_range``; see
``HOPPER_PREFILL_WINDOW_SCHEDULE``)."""

HOPPER_PREFILL_WINDOW_PERSISTENT = False
"""Whether a launch with a sliding window runs persistent programs (``HopperPrefillConfig.persistent``), whatever its
entry says: one program per tile. H100, the default sweep's 16/8/256 B4 q2048 c2048 with a 1024-key window
(seventeenth session, results/h100-default-rows-v5.8): 308.1 us persistent against 281.0 (cuDNN 284.1). Not timed at
D=64 or D=128, whose entries are persistent; a window's tiles have few steps each."""


def hopper_prefill_config(head_dim: int, max_kv_len: int, sliding_window: int | None = None) -> HopperPrefillConfig:
    """The Gluon prefill kernel's configuration for a launch: the head dim's ``HOPPER_PREFILL_SHORT_TABLE`` entry
    where no sequence has more than ``HOPPER_PREFILL_SHORT_KEYS`` keys, else its ``HOPPER_PREFILL_TABLE`` entry; with a
    ``sliding_window``, in ``HOPPER_PREFILL_WINDOW_SCHEDULE``, ``HOPPER_PREFILL_WINDOW_ONE_RANGE`` and
    ``HOPPER_PREFILL_WINDOW_PERSISTENT``."""
    table = HOPPER_PREFILL_SHORT_TABLE if max_kv_len <= HOPPER_PREFILL_SHORT_KEYS else HOPPER_PREFILL_TABLE
    config = table[head_dim]
    if sliding_window is not None:
        config = replace(config, schedule=HOPPER_PREFILL_WINDOW_SCHEDULE, one_range=HOPPER_PREFILL_WINDOW_ONE_RANGE,
                         persistent=HOPPER_PREFILL_WINDOW_PERSISTENT)
    return config
