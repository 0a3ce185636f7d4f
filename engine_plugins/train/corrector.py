"""``engine-plugins train corrector CONFIG``: the corrector role of :mod:`engine_plugins.train.propagator`
(same trainer, config ``role`` "corrector": X + N(0, s^2) -> X, conditioned on the noisy frame)."""

from __future__ import annotations

import sys

from engine_plugins.train.propagator import main_corrector as main

__all__ = ["main"]

if __name__ == "__main__":
    sys.exit(main())
