"""asv: prefill batches, every backend x the sweep's axes (see harness.cases.sweep.SWEEP_AXES)."""

from harness.frontends import asv_suite  # a module, not its classes: asv would discover an imported base class


class Prefill(asv_suite.WorkloadBenchmark):
    workload = "prefill"
    params, param_names = asv_suite.asv_params("prefill")
    timeout = 120

    def setup_cache(self):
        return asv_suite.measure_workload("prefill")

    setup_cache.timeout = 1800
