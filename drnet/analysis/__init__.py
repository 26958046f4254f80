"""Analysis tools: the gridding score and per-level activation maps (docs/design.md, "The
gridding score")."""

from drnet.analysis.activations import (
    STATISTIC_LABELS,
    activation_image,
    activation_values,
    collect_activations,
    level_names,
    most_active_channel,
    render_activation_grid,
)
from drnet.analysis.gridding import (
    GRIDDING_CHANCE,
    gridding_score,
    gridding_scores,
    lattice_mask,
    lattice_power_share,
    lattice_share_chance,
    power_spectrum,
)

__all__ = [
    "GRIDDING_CHANCE",
    "STATISTIC_LABELS",
    "activation_image",
    "activation_values",
    "collect_activations",
    "gridding_score",
    "gridding_scores",
    "lattice_mask",
    "lattice_power_share",
    "lattice_share_chance",
    "level_names",
    "most_active_channel",
    "power_spectrum",
    "render_activation_grid",
]
