"""What the commands print through: one console for results, one for problems, and JSON-ready values."""

from __future__ import annotations

import math

from rich.console import Console

out = Console()
err = Console(stderr=True)


def plain(value: object) -> object:
    """JSON-ready: arrays become rounded lists, NaN becomes null."""
    import numpy as np

    if isinstance(value, np.ndarray | list):
        return [round(float(v), 4) for v in value]
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float):
        return None if math.isnan(value) else round(value, 6)
    return value
