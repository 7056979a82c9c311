"""Session 14: re-patch the job's variant trees after the tuning (one range lost on long cells)."""
A = '''# session-14 job variant (patched after the tuning): long entries overlap in ranges, windows overlap in one range
import dataclasses as _dc
HOPPER_PREFILL_TABLE[128] = _dc.replace(HOPPER_PREFILL_TABLE[128], schedule="overlap")
HOPPER_PREFILL_TABLE[256] = _dc.replace(HOPPER_PREFILL_TABLE[256], schedule="overlap")
def hopper_prefill_config(head_dim, max_kv_len, sliding_window=None):
    config = HOPPER_PREFILL_SHORT if max_kv_len <= HOPPER_PREFILL_SHORT_KEYS else HOPPER_PREFILL_TABLE[head_dim]
    if sliding_window is not None:
        config = _dc.replace(config, schedule="overlap", one_range=True, half_step=False)
    return config
'''
B = '''# session-14 job variant (patched after the tuning): every entry overlap in ranges, windows paired in one range
import dataclasses as _dc
for _head_dim, _config in list(HOPPER_PREFILL_TABLE.items()):
    HOPPER_PREFILL_TABLE[_head_dim] = _dc.replace(_config, schedule="overlap")
HOPPER_PREFILL_SHORT = _dc.replace(HOPPER_PREFILL_SHORT, schedule="overlap")
def hopper_prefill_config(head_dim, max_kv_len, sliding_window=None):
    config = HOPPER_PREFILL_SHORT if max_kv_len <= HOPPER_PREFILL_SHORT_KEYS else HOPPER_PREFILL_TABLE[head_dim]
    if sliding_window is not None:
        config = _dc.replace(config, schedule="paired", one_range=True, half_step=False)
    return config
'''
for tree, block in (("/tmp/v-paired", A), ("/tmp/v-overlap", B)):
    p = f"{tree}/kernels/paged_attention/configs.py"
    s = open(p).read()
    s = s[:s.index("# session-14 job variant")] + block
    open(p, "w").write(s)
