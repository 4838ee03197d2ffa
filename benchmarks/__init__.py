"""tl.benchmarks: eager PyTorch vs every exported form, measured side by side in one run.

    from tl.benchmarks import BenchOptions, run
    result = run(BenchOptions(targets=["runs/x", "exports/x"], batch_sizes=(1, 8)))
    for rec in result.recommendations:   # per batch size: the fastest row with agreement >= min_agreement
        print(rec.summary(result.min_agreement), rec.python)

``targets`` finds the checkpoint and artifacts, ``matrix`` times every runner at every
batch size in interleaved rounds, ``runners`` holds one small class per backend, ``timing``
decides what a latency number means, ``recommend`` picks what to ship, ``report`` writes
bench.json/csv/md/png.
"""

__all__ = ["BACKENDS", "BenchOptions", "BenchResult", "BenchRow", "ROW_FIELDS", "Recommendation", "run"]


def __getattr__(name):  # lazy: `tl bench --help` must not import torch
    if name in ("BACKENDS", "BenchOptions"):
        from tl.benchmarks import options

        return getattr(options, name)
    if name in ("BenchResult", "BenchRow", "ROW_FIELDS", "run"):
        from tl.benchmarks import matrix

        return getattr(matrix, name)
    if name == "Recommendation":  # (tl.benchmarks.recommend is the module; recommend.recommend the function)
        from tl.benchmarks.recommend import Recommendation

        return Recommendation
    raise AttributeError(f"module 'tl.benchmarks' has no attribute {name!r}")
