"""Published TeaCache coefficients of the Wan releases, chosen by architecture (never by path).

The transformer class offers them to the step caches through ``published_cache_coefficients``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from .variants import PRESETS

# Published TeaCache coefficients for Wan2.1 (highest power first), see ARCHITECTURE.md.
TEACACHE_COEFFICIENTS: dict[str, dict[str, list[float]]] = {
    "time_embedding": {
        "Wan2.1-T2V-1.3B": [2.39676752e03, -1.31110545e03, 2.01331979e02, -8.29855975e00, 1.37887774e-01],
        "Wan2.1-T2V-14B": [-5784.54975374, 5449.50911966, -1811.16591783, 256.27178429, -13.02252404],
        "Wan2.1-I2V-14B-480P": [-3.02331670e02, 2.23948934e02, -5.25463970e01, 5.87348440e00, -2.01973289e-01],
        "Wan2.1-I2V-14B-720P": [-114.36346466, 65.26524496, -18.82220707, 4.91518089, -0.23412683],
    },
    "time_projection": {
        "Wan2.1-T2V-1.3B": [-5.21862437e04, 9.23041404e03, -5.28275948e02, 1.36987616e01, -4.99875664e-02],
        "Wan2.1-T2V-14B": [-3.03318725e05, 4.90537029e04, -2.65530556e03, 5.87365115e01, -3.15583525e-01],
        "Wan2.1-I2V-14B-480P": [2.57151496e05, -3.54229917e04, 1.40286849e03, -1.35890334e01, 1.32517977e-01],
        "Wan2.1-I2V-14B-720P": [8.10705460e03, 2.13393892e03, -3.72934672e02, 1.66203073e01, -4.17769401e-02],
        # VACE: VideoX-Fun's sets, fitted on the main (T2V) stack's modulated input: 1.3B's for VACE-1.3B,
        # the 720P / A14B one for VACE-14B (and for VACE-Fun-A14B's experts, through the two-expert set).
        "Wan2.1-VACE-1.3B": [-5.21862437e04, 9.23041404e03, -5.28275948e02, 1.36987616e01, -4.99875664e-02],
        "Wan2.1-VACE-14B": [8.10705460e03, 2.13393892e03, -3.72934672e02, 1.66203073e01, -4.17769401e-02],
    },
}
# Wan2.2 A14B: VideoX-Fun's one set for both experts, fitted on the modulated input. Its experts
# have Wan2.1-14B's architecture, so matching the config alone would hand them Wan2.1's set.
WAN22_A14B_COEFFICIENTS: dict[str, list[float]] = {
    "time_projection": [8.10705460e03, 2.13393892e03, -3.72934672e02, 1.66203073e01, -4.17769401e-02],
}
_ARCHITECTURE_FIELDS = ("model_type", "in_dim", "dim", "ffn_dim", "num_heads", "num_layers", "out_dim")


def preset_of(config: Mapping[str, Any]) -> str | None:
    """The released preset whose architecture equals ``config`` (matched on fields, not on a path)."""
    for name, preset in PRESETS.items():
        if all(preset.get(k) == config.get(k) for k in _ARCHITECTURE_FIELDS):
            return name
    return None


def published_coefficients(config: Mapping[str, Any], indicator: str = "time_embedding") -> list[float] | None:
    """TeaCache coefficients published for this architecture, if any.

    I2V-14B 480P and 720P share one architecture; the 480P fit is returned for both.
    """
    name = preset_of(config)
    return TEACACHE_COEFFICIENTS.get(indicator, {}).get(name) if name else None


def coefficients_for_architecture(
    config: Mapping[str, Any], indicator: str, two_experts: bool
) -> tuple[list[float] | None, str]:
    """The published set for a Wan transformer config and indicator, with a hint for the error when none."""
    if two_experts:
        hint = "; Wan2.2 A14B's published set is for --teacache-indicator time_projection"
        return WAN22_A14B_COEFFICIENTS.get(indicator), hint
    return published_coefficients(config, indicator), ""
