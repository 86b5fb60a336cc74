"""An image model joined from single files (one per component) as the family layer reads it.

:func:`recognise_image_parts` checks that the parts fit (each file its family's and its kind's; the text width the
transformer reads) and says what they serve, as a folder's recognition does: the variant, its modes, the release's
generation defaults and size rules; :class:`SingleFileImageFamily` is the registered family of the parts (its modes,
samplers, settings and checks) with a loader that reads the chosen files instead of a folder. Each family's reader
(:class:`videox_fun.models.image_single_files.ImageSingleFiles`) says what differs.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from . import Family, Recognised, get_family
from .diffusers_layout import attach_named_lora_reader, recognised

if TYPE_CHECKING:
    import torch

    from ..models.image_single_files import ImageParts


class SingleFileImageFamily(Family):
    """The registered family of the parts, loading them from their files. Never registered: it recognises no
    folder."""

    def __init__(self, parts: ImageParts) -> None:
        self.parts = parts
        self.base = get_family(parts.reader.family)
        self.name = self.base.name
        self.modes = self.base.modes
        self.samplers = self.base.samplers
        self.settings = self.base.settings
        self.training_spec = self.base.training_spec
        self.description = self.base.description

    def recognise(self, folder: Path, config_path: Path | None = None) -> Recognised | None:
        """No folder is of this layout (the files were chosen one by one)."""
        return None

    def load(self, recognised: Recognised, device: torch.device, dtype: torch.dtype) -> Any:
        """The family's pipeline, every component from its file (the transformer in ``dtype``), with the LoRA reader
        of the variant's diffusers pipeline class, as a folder's."""
        pipe = self.parts.reader.load_pipeline(self.parts, recognised.config, device, dtype)
        attach_named_lora_reader(pipe, self.parts.reader.diffusers_pipeline(self.parts))
        return pipe

    def needs_for_mode(self, mode: str) -> str:
        """The registered family's words."""
        return self.base.needs_for_mode(mode)

    def check_inputs(self, recognised: Recognised, mode: str, inputs: Mapping[str, Any]) -> None:
        """The reader's check (the registered family's, unless it reads the folder)."""
        self.parts.reader.check_inputs(self, recognised, mode, inputs)

    def __repr__(self) -> str:  # a key for a held pipeline: every file and precision
        return f"<family {self.name} from single files {self.parts!r}>"


def recognise_image_parts(parts: ImageParts) -> Recognised:
    """What the family says of a model joined from single files, as of a folder holding them; the parts checked to
    fit first. Its folder is the transformer's (where a ``cache_calibration.json`` for it would be)."""
    parts.check()
    reader = parts.reader
    variant, modes = reader.variant(parts)
    family = SingleFileImageFamily(parts)
    return recognised(family, parts.transformer.path.parent, reader.model_config(parts), variant, modes, reader.sizes)
