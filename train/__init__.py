"""tl.train: datasets, transforms, model building, the training loop, checkpoints.

Exports are lazy so that `tl --help` (which imports tl.train.cli) never imports torch.
"""

__all__ = ["fit", "TrainOptions", "TrainResult"]


def __getattr__(name):
    if name in __all__:
        from tl.train import loop

        return getattr(loop, name)
    raise AttributeError(f"module 'tl.train' has no attribute {name!r}")
