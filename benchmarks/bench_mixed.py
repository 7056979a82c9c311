"""asv: mixed batches, every backend x the sweep's axes (see harness.cases.sweep.SWEEP_AXES)."""

from harness.frontends import asv_suite  # a module, not its classes: asv would discover an imported base class


class Mixed(asv_suite.WorkloadBenchmark):
    workload = "mixed"
    params, param_names = asv_suite.asv_params("mixed")
    timeout = 120

    def setup_cache(self):
        return asv_suite.measure_workload("mixed")

    setup_cache.timeout = 1800
