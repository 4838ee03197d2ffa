"""tl.train: datasets, transforms, model building, the training loop, checkpoints.

Exports are lazy so that `tl --help` (which imports tl.train.options) never imports torch.
"""

__all__ = ["fit", "TrainOptions", "TrainResult"]

_HOMES = {"fit": "tl.train.loop", "TrainResult": "tl.train.loop", "TrainOptions": "tl.train.options"}


def __getattr__(name):
    if name in _HOMES:
        import importlib

        return getattr(importlib.import_module(_HOMES[name]), name)
    raise AttributeError(f"module 'tl.train' has no attribute {name!r}")
