"""asv: every case of the sweep outside the decode / prefill / mixed axes (other head configurations,
dtypes, speculative decoding, serving-sized pools, a sweep file's own cases), by name."""

from harness.frontends import asv_suite  # a module, not its classes: asv would discover an imported base class


class Cases(asv_suite.WorkloadBenchmark):
    workload = asv_suite.CASES
    params, param_names = asv_suite.asv_params(asv_suite.CASES)
    timeout = 120

    def setup_cache(self):
        return asv_suite.measure_workload(asv_suite.CASES)

    setup_cache.timeout = 1800
