"""What the wrappers around the field's models (VAE, text and image encoders) share."""

from __future__ import annotations

import torch


class OffloadableComponent:
    """A model wrapper whose inputs go to an execution device that may differ from where its weights rest.

    Offload hooks (:mod:`videox_fun.runtime.offload`) keep weights on the CPU and move them in as
    modules run; they set ``execution_device`` so the wrapper still puts its inputs on the accelerator.
    """

    execution_device: torch.device | None = None
    model: torch.nn.Module  # the wrapped model of the field's library

    def weights_device(self) -> torch.device:
        """Where the weights are now (those of the wrapped ``model``)."""
        return next(self.model.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        """Dtype of the wrapped model's weights."""
        return next(self.model.parameters()).dtype

    @property
    def device(self) -> torch.device:
        """Where inputs are placed: the execution device when one is set, else the weights' device."""
        return self.execution_device or self.weights_device()
