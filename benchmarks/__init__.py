"""tl.benchmarks: eager PyTorch vs every exported form, measured side by side in one run.

    from tl.benchmarks import BenchOptions, run
    result = run(BenchOptions(targets=["runs/x", "exports/x"], batch_sizes=(1, 8)))
    for rec in result.recommendations:   # per batch size: the fastest row with agreement >= min_agreement
        print(rec.summary(result.min_agreement), rec.python)

``targets`` finds the checkpoint and artifacts, ``matrix`` times every runner at every
batch size in interleaved rounds, ``runners`` holds one small class per backend, ``timing``
decides what a latency number means, ``recommend`` picks what to ship, ``rows`` holds what a
run produces, ``environment`` the machine it ran on, and ``report`` writes bench.json/csv/md/png.
"""

from tl.runtime.lazy import lazy_exports

__all__ = ["BACKENDS", "BenchOptions", "BenchResult", "BenchRow", "ROW_FIELDS", "Recommendation", "run"]

# Lazy, so that `tl bench --help` never imports torch: each name and the module that defines it.
_HOMES = {
    "BACKENDS": "tl.benchmarks.options", "BenchOptions": "tl.benchmarks.options",
    "BenchResult": "tl.benchmarks.rows", "BenchRow": "tl.benchmarks.rows", "ROW_FIELDS": "tl.benchmarks.rows",
    "Recommendation": "tl.benchmarks.recommend", "run": "tl.benchmarks.matrix",
}

__getattr__ = lazy_exports(__name__, _HOMES)
