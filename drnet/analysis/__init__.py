"""Analysis tools: the gridding score and per-level activation maps (DESIGN.md section 4)."""

from drnet.analysis.activations import (
    activation_image,
    collect_activations,
    level_names,
    render_activation_grid,
)
from drnet.analysis.gridding import (
    chance_score,
    gridding_score,
    gridding_scores,
    lattice_mask,
    power_spectrum,
)

__all__ = [
    "activation_image",
    "chance_score",
    "collect_activations",
    "gridding_score",
    "gridding_scores",
    "lattice_mask",
    "level_names",
    "power_spectrum",
    "render_activation_grid",
]
