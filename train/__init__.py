"""tl.train: datasets, transforms, model building, the training loop, checkpoints.

Exports are lazy so that `tl --help` (which imports tl.train.options) never imports torch.
"""

from tl.runtime.lazy import lazy_exports

__all__ = ["fit", "TrainOptions", "TrainResult"]

_HOMES = {"fit": "tl.train.loop", "TrainResult": "tl.train.loop", "TrainOptions": "tl.train.options"}

__getattr__ = lazy_exports(__name__, _HOMES)
