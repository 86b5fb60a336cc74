"""The family layer: what the rest of the library reads about a model family, never naming one.

A family (Wan, CogVideoX, ...) is a package of its own that builds one :class:`Family` and
calls :func:`register`. It declares, in its files:

- how a folder of its layout is recognised, from config files only (no weights read), and what
  that checkpoint serves (:class:`Recognised`: its modes, generation defaults, size rules);
- its table of modes, each with the inputs it needs and allows (:class:`Mode`): the CLI, the
  programmatic entry (:mod:`videox_fun.api`), and every other face read this table;
- its loader, which returns a pipeline (:class:`Pipeline`);
- its samplers, its training spec's name and its cache coefficients' home.

Runtime features (memory modes, fp8, compile, step caches, sequence parallelism) work from the
extension points that each model class declares (:mod:`videox_fun.runtime.points`), not from
attribute names of one family.

Families are found by importing the modules in :data:`FAMILY_MODULES` and the
``videox_fun.families`` entry point group, so a family added as a package of its own (or an
installed plugin) joins without an edit elsewhere.
"""

from __future__ import annotations

import importlib
import logging
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from importlib.metadata import entry_points
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from ..config import parse_timesteps

if TYPE_CHECKING:
    import torch
    from torch import nn

    from ..config import GenerationDefaults

logger = logging.getLogger(__name__)

# Every input medium a generation call can take, by keyword. A family's modes use a subset.
INPUT_NAMES = ("image", "end_image", "video", "mask", "control_video", "ref_image", "camera")

# The built-in families: each module registers its Family on import.
FAMILY_MODULES = (
    "videox_fun.families.wan",
    "videox_fun.families.cogvideox",
    "videox_fun.families.flux",
    "videox_fun.families.flux2",
    "videox_fun.families.qwenimage",
    "videox_fun.families.zimage",
)
ENTRY_POINT_GROUP = "videox_fun.families"


@dataclass(frozen=True)
class Mode:
    """One generation mode of a family: the inputs it needs and those it also reads when given.

    ``folder`` is the suffix of the default output folder (``samples/{model}-{folder}``), as
    VideoX-Fun names them; ``output`` says whether the mode makes a video or an image.
    """

    name: str
    needs: tuple[str, ...] = ()
    allows: tuple[str, ...] = ()
    folder: str = "videos"
    output: str = "video"
    description: str = ""

    @property
    def reads(self) -> tuple[str, ...]:
        """Every input the mode reads: what it needs, then what it allows."""
        return (*self.needs, *self.allows)


@dataclass(frozen=True)
class Setting:
    """A per-request setting that only some modes of a family read (``GenerationRequest.extra``, passed to the
    family's pipeline by keyword): the CLI makes a flag of each, the programmatic entry checks it before loading.

    ``modes`` read it (every mode of the family when empty); ``needed_by`` cannot run without it; ``check(value,
    mode)`` raises a one-line error on a value that cannot work (a folder missing a file), before any weight loads.
    ``kind`` says what the value is: a ``value`` the flag's ``type`` parses, or the path of an input ``file`` or of
    a ``folder`` of input files (``files``: the names it may hold). Faces that take no paths from their users (the
    REST API, the web UI) take the file or the folder's files as uploads for the last two.
    """

    name: str
    help: str = ""
    type: Callable[[str], Any] = str
    choices: tuple[Any, ...] | None = None
    aliases: tuple[str, ...] = ()  # more flag spellings (VideoX-Fun's, the release's)
    modes: tuple[str, ...] = ()
    needed_by: tuple[str, ...] = ()
    check: Callable[[Any, str], None] | None = None
    kind: str = "value"  # value | file | folder
    files: tuple[str, ...] = ()  # a folder's file names

    @property
    def flag(self) -> str:
        """The flag that gives it (``src_root_path`` -> ``--src-root-path``)."""
        return "--" + self.name.replace("_", "-")


# Flow_Distill's grid of a DMD student trained on other timesteps than the uniform ones (--denoising_step_list).
DISTILL_TIMESTEPS = Setting(
    "distill_timesteps",
    help="--sampler Flow_Distill: the timesteps the student was trained on (--denoising_step_list), e.g. "
    "1000,700,400,100, sampled when --steps is their count (default: the folder's, else the uniform grid)",
    type=parse_timesteps,
)


@dataclass(frozen=True)
class SizeRules:
    """What sizes a checkpoint can take: heights and widths are multiples of ``multiple``; frame
    counts are ``frame_factor * k + 1`` (1 for image models), at most ``max_frames`` when set."""

    multiple: int = 16
    frame_factor: int = 4
    max_frames: int | None = None

    def frame_rule(self) -> str:
        """The rule in words, for messages (``4k+1``)."""
        return f"{self.frame_factor}k+1"

    def valid_size(self, value: int) -> int:
        """The nearest multiple of :attr:`multiple` (at least one multiple)."""
        return max(self.multiple, round(value / self.multiple) * self.multiple)

    def valid_frame_count(self, frames: int) -> int:
        """The nearest count of the form ``frame_factor * k + 1``."""
        return max(1, round((frames - 1) / self.frame_factor) * self.frame_factor + 1)


@dataclass(frozen=True)
class ImageSizeRules(SizeRules):
    """Size rules of an image model: heights and widths as :class:`SizeRules`, always one frame."""

    frame_factor: int = 1
    max_frames: int | None = 1

    def frame_rule(self) -> str:
        """The rule in words, for messages."""
        return "one frame: an image model"

    def valid_frame_count(self, frames: int) -> int:
        """Always one frame."""
        return 1


@dataclass
class Recognised:
    """A model folder as its family reads it from config files, before any weight is loaded."""

    family: Family
    folder: Path
    config: Any  # the family's own typed model config
    variant: str  # a name for messages ("Fun InP", "CogVideoX-Fun V1.1 Control"...)
    modes: tuple[str, ...]  # the modes this checkpoint serves, in the family's table order
    defaults: GenerationDefaults
    sizes: SizeRules = field(default_factory=SizeRules)
    note: str = ""  # shown once when the model loads (random weights, a guessed config...)

    def mode_table(self) -> dict[str, Mode]:
        """The family's modes that this checkpoint serves."""
        return {name: self.family.modes[name] for name in self.modes}


class Pipeline(Protocol):
    """What the programmatic entry and the runtime features need of a family's pipeline."""

    device: torch.device
    dtype: torch.dtype

    @property
    def transformers(self) -> tuple[nn.Module, ...]:
        """The denoising transformers (one, or the experts of a two-expert model)."""
        ...

    def components(self) -> dict[str, tuple[nn.Module, tuple[str, ...]]]:
        """Every model of the pipeline by name, with the methods through which the pipeline calls it."""
        ...

    def __call__(self, prompt: str, **settings: Any) -> Any:
        """One generation: returns ``GenerationOutput`` (frames, latents, the settings used)."""
        ...


class Family:
    """A model family: subclass, fill the class attributes and the three methods, then :func:`register` it."""

    name: str = ""
    modes: Mapping[str, Mode] = {}
    samplers: tuple[str, ...] = ()
    training_spec: str = ""  # the name its training spec registers under (videox_fun.training.specs)
    description: str = ""
    settings: tuple[Setting, ...] = ()  # what its modes read besides the media (GenerationRequest.extra)

    def recognise(self, folder: Path, config_path: Path | None = None) -> Recognised | None:
        """The folder as this family reads it, or None when it is not of this family's layout.

        Reads config files only. ``config_path`` is a YAML the user named (``--config``).
        """
        raise NotImplementedError

    def load(self, recognised: Recognised, device: torch.device, dtype: torch.dtype) -> Pipeline:
        """Load every component of a recognised folder (weights on ``device``, as ``dtype``)."""
        raise NotImplementedError

    def needs_for_mode(self, mode: str) -> str:
        """The kind of checkpoint a user needs for ``mode``, for error messages."""
        return f"a {self.name} model that serves {mode}"

    def check_inputs(self, recognised: Recognised, mode: str, inputs: Mapping[str, Any]) -> None:
        """Fail with one line on inputs the checkpoint cannot read beyond what its mode table says (how many pictures
        an edit reads), before any weight is loaded; nothing by default."""

    def check_settings(self, mode: str, extra: Mapping[str, Any]) -> None:
        """Fail with one line on ``extra`` settings this family does not declare or ``mode`` does not read, on one
        ``mode`` needs and lacks, and on values their own check refuses."""
        declared = {setting.name: setting for setting in self.settings}
        for name in (name for name, value in extra.items() if value is not None):
            setting = declared.get(name)
            if setting is None:
                raise ValueError(f"setting {name!r} is not one the {self.name} family reads ({', '.join(declared)})")
            if setting.modes and mode not in setting.modes:
                raise ValueError(f"mode {mode!r} does not use {setting.flag} (modes {', '.join(setting.modes)} do)")
        for setting in self.settings:
            if mode in setting.needed_by and extra.get(setting.name) is None:
                raise ValueError(f"mode {mode!r} needs {setting.flag}" + (f" ({setting.help})" if setting.help else ""))
            if setting.check is not None and extra.get(setting.name) is not None:
                check_setting(setting, extra[setting.name], mode)

    def __repr__(self) -> str:
        return f"<family {self.name}>"


def check_setting(setting: Setting, value: Any, mode: str) -> None:
    """The setting's own check of ``value``; its one-line error names the flag when the check's own does not (so a
    face can tell which setting was refused)."""
    assert setting.check is not None
    try:
        setting.check(value, mode)
    except (ValueError, FileNotFoundError) as err:
        if setting.flag in str(err):
            raise
        # The base class: a subclass's constructor may take other arguments than the message.
        kind = FileNotFoundError if isinstance(err, FileNotFoundError) else ValueError
        raise kind(f"{setting.flag}: {err}") from err


_FAMILIES: dict[str, Family] = {}
_loaded = False


def register(family: Family) -> Family:
    """Add a family to the registry (each family's module calls this on import)."""
    if not family.name:
        raise ValueError(f"{type(family).__name__}: a family needs a name")
    _FAMILIES[family.name] = family
    return family


def families() -> dict[str, Family]:
    """Every registered family by name (built-ins and installed plugins), in registration order."""
    global _loaded
    if not _loaded:
        _loaded = True
        for module in FAMILY_MODULES:
            importlib.import_module(module)
        for entry in entry_points(group=ENTRY_POINT_GROUP):
            try:
                entry.load()
            except Exception as err:  # a broken plugin must not take the library down
                logger.warning("family plugin %s failed to load: %s", entry.name, err)
    return dict(_FAMILIES)


def get_family(name: str) -> Family:
    """A registered family by name."""
    known = families()
    if name not in known:
        raise ValueError(f"unknown model family {name!r}; known: {', '.join(known)}")
    return known[name]


def recognise(folder: str | Path, config_path: str | Path | None = None) -> Recognised:
    """The family of a model folder and what it serves; one clear error when no family takes it."""
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"model folder not found: {folder}")
    config_path = Path(config_path) if config_path is not None else None
    for family in families().values():
        found = family.recognise(folder, config_path)
        if found is not None:
            return found
    listing = ", ".join(sorted(p.name for p in folder.iterdir())[:12]) or "an empty folder"
    raise ValueError(
        f"{folder}: no model family recognises this folder ({listing}); known families: "
        f"{', '.join(families())}. A model folder holds a config.json (original layout) or a model_index.json "
        "(diffusers layout)"
    )


def all_mode_names() -> tuple[str, ...]:
    """Every mode any registered family serves, in first-seen order (for the CLI's --mode choices)."""
    names: dict[str, None] = {}
    for family in families().values():
        names.update(dict.fromkeys(family.modes))
    return tuple(names)


def all_settings() -> dict[str, Setting]:
    """Every family's per-request settings by name, first-seen (for the CLI's flags)."""
    found: dict[str, Setting] = {}
    for family in families().values():
        for setting in family.settings:
            found.setdefault(setting.name, setting)
    return found


def mode_for_settings(extra: Mapping[str, object]) -> str | None:
    """The first mode that needs one of the given settings (``src_root_path`` asks for ``animate``), else None."""
    settings = all_settings()
    for name, value in extra.items():
        if value is not None and name in settings and settings[name].needed_by:
            return settings[name].needed_by[0]
    return None


def merged_mode_table() -> dict[str, Mode]:
    """One table of every family's modes (a mode of one name means the same inputs in every family)."""
    table: dict[str, Mode] = {}
    for family in families().values():
        for name, mode in family.modes.items():
            table.setdefault(name, mode)
    return table


def given_inputs(inputs: Mapping[str, object]) -> set[str]:
    """The names of the inputs that are given (not None)."""
    return {name for name in INPUT_NAMES if inputs.get(name) is not None}


def listed_images(*values: Any) -> list[Any]:
    """The images ``values`` hold, in order: each None, one image, or a list of them (``--ref-image a.png b.png``)."""
    images: list[Any] = []
    for value in values:
        if value is not None:
            images.extend(value if isinstance(value, (list, tuple)) else [value])
    return images


def infer_mode(table: Mapping[str, Mode], inputs: Mapping[str, object]) -> str:
    """The mode the given inputs ask for: of the modes whose needs are all given and that read every
    given input, the one that needs the most (the table's order breaks ties); else the one closest."""
    given = given_inputs(inputs)
    fitting = [mode for mode in table.values() if set(mode.needs) <= given and given <= set(mode.reads)]
    if fitting:
        return max(fitting, key=lambda mode: len(mode.needs)).name
    # No mode reads all of them: the one that needs the most of what was given (the error names the rest).
    return max(table.values(), key=lambda mode: (len(set(mode.needs) & given), -len(mode.needs))).name


def _served_elsewhere(family_table: Mapping[str, Mode], given: Mapping[str, object], table: Mapping[str, Mode]) -> str:
    """`` (these inputs ask for mode 'r2v', which this model does not serve)`` when a mode of the family
    outside ``table`` reads them all, else nothing."""
    if not family_table:
        return ""
    wanted = family_table[infer_mode(family_table, given)]
    inputs = given_inputs(given)
    if wanted.name in table or not (set(wanted.needs) <= inputs <= set(wanted.reads)):
        return ""
    return f" (these inputs ask for mode {wanted.name!r}, which this model does not serve)"


def flag_names(names: Iterable[str]) -> str:
    """Input names as the flags that give them (``control_video`` -> ``--control-video``)."""
    return ", ".join("--" + name.replace("_", "-") for name in names)


def require_inputs(
    table: Mapping[str, Mode],
    mode: str,
    given: Mapping[str, object],
    check_file: Callable[[str, object], None] | None = None,
    family_table: Mapping[str, Mode] | None = None,
) -> None:
    """Fail clearly when ``mode`` is not in the table, or its inputs are missing or unused.

    ``check_file(name, value)`` then checks each given input (exists, decodes) when passed.
    ``family_table``: every mode of the model's family, when ``table`` holds only the modes this model
    serves, so inputs that only another model of the family takes can be pointed there.
    """
    if mode not in table:
        raise ValueError(f"unknown mode {mode!r}; this model serves {', '.join(table)}")
    spec = table[mode]
    missing = [name for name in spec.needs if given.get(name) is None]
    if missing:
        raise ValueError(f"mode {mode!r} needs {flag_names(missing)}")
    unused = [name for name, value in given.items() if value is not None and name not in spec.reads]
    if unused:
        wanted = infer_mode(table, given)
        if wanted != mode:
            raise ValueError(f"mode {mode!r} does not use {flag_names(unused)} (these inputs ask for mode {wanted!r})")
        # No mode of the table reads all the inputs given: say which clash rather than suggest the same mode again.
        together = " and ".join(flag_names([name]) for name in INPUT_NAMES if given.get(name) is not None)
        reads = f"it reads {flag_names(spec.reads)}" if spec.reads else "it reads no input"
        raise ValueError(
            f"{together} together: none of the modes {', '.join(table)} takes them all; mode {mode!r} takes no "
            f"{flag_names(unused)} ({reads}): leave {flag_names(unused)} out, or use a model with a mode that does"
            + _served_elsewhere(family_table or {}, given, table)
        )
    if check_file is not None:
        for name, value in given.items():
            if value is not None:
                check_file(name, value)
