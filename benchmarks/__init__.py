"""tl.benchmarks: eager PyTorch vs every exported form, measured side by side in one run.

    from tl.benchmarks import BenchOptions, run
    result = run(BenchOptions(targets=["runs/x", "exports/x"], batch_sizes=(1, 8)))

``targets`` finds the checkpoint and artifacts, ``matrix`` times every runner at every
batch size, ``runners`` holds one small class per backend, ``timing`` decides what a
latency number means, ``report`` writes bench.json/csv/md/png.
"""

__all__ = ["BACKENDS", "BenchOptions", "BenchResult", "BenchRow", "ROW_FIELDS", "run"]


def __getattr__(name):  # lazy: `tl bench --help` must not import torch
    if name in ("BACKENDS", "BenchOptions"):
        from tl.benchmarks import options

        return getattr(options, name)
    if name in ("BenchResult", "BenchRow", "ROW_FIELDS", "run"):
        from tl.benchmarks import matrix

        return getattr(matrix, name)
    raise AttributeError(f"module 'tl.benchmarks' has no attribute {name!r}")
