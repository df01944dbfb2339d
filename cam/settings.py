"""How maps and boxes are made: one frozen `Settings` that `localize`, `evaluate`, `label`, the
service, the CLI and the app all read, and its presets. The CLI's options and help are built from
the fields' metadata, and a labelling run's `run.json` records the fields."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, fields, replace

METHOD_NAMES = ("auto", "cam", "gradcam", "gradcam++", "layercam")  # `cam.methods.MAKERS`, and auto
BOX_SOURCES = ("auto", "cam", "detector", "both")  # where boxes come from (`Settings.boxes`)


def _option(default, help: str, flag: str | None = None, **cli):
    """A settings field: its default, its help text (README and CLI), and how the CLI takes it."""
    return field(default=default, metadata={"help": help, "flag": flag, **cli})


def check_fraction(name: str, value) -> float:
    """`value` as a float in [0, 1], or a ValueError naming `name`."""
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a number in [0, 1], got {value!r}") from None
    if not 0.0 <= number <= 1.0 or math.isnan(number):
        raise ValueError(f"{name} must be in [0, 1], got {value!r}")
    return number


@dataclass(frozen=True)
class Settings:
    """The localization settings. Defaults are the recommended setting (README, "Localization
    quality"); `PRESETS` holds the named ones. Each field is checked on creation; what depends on
    the model (its input size, its classes, which methods it can run) is checked when it runs."""

    input_size: int | None = _option(288, "square input side the network sees (None: the model's own)",
                                     "--input-size", type=int)
    flip: bool = _option(False, "average the maps of the image and its mirror", "--flip", boolean=True)
    refine: bool = _option(True, "refine the maps by the similarity of the finer features", "--refine", boolean=True)
    adapt: bool = _option(False, "adapt each map's contrast to its spread, so boxes are cut relative to its mean",
                          "--adapt", boolean=True)
    threshold: float = _option(0.2, "box threshold, a fraction of the map's maximum", "--threshold", type=float)
    all_regions: bool = _option(False, "a box for every region above the threshold, not only the largest",
                                "--all-boxes", boolean=True)
    method: str = _option("auto", "map maker: auto (CAM where it is exact for the model's head, Grad-CAM "
                          "elsewhere), cam, gradcam, gradcam++ or layercam", "--method", choices=METHOD_NAMES)
    topk: int | None = _option(None, "classes per image (default 5, or the classes ranked if fewer; `cam label`: 1)",
                               "--topk", type=int)
    classes: tuple | None = _option(None, "rank only these classes, in this order: names or indices (on the command "
                                    "line separated by commas, or a file with one a line)", "--classes")
    min_score: float = _option(0.0, "drop predictions whose probability is below this", "--min-score", type=float)
    boxes: str = _option("auto", "where boxes come from: auto (what measured best for a checkpoint with a detector, "
                         "by default both; else the maps), cam (the maps, cut at the threshold), detector (several "
                         "scored boxes per class) or both (the maps' box first, then the detector's boxes beside it)",
                         "--boxes", choices=BOX_SOURCES)
    box_score: float = _option(0.3, "detector boxes: keep those scoring at least this (objectness x the box's class "
                               "probability; the maps' box: its class probability)", "--box-score", type=float)
    box_overlap: float = _option(0.5, "detector boxes: drop a box when this share of its area lies inside a better box "
                                 "of its class (a part, or the same object boxed again); 1 keeps them all",
                                 "--box-overlap", type=float)

    def __post_init__(self):
        if self.input_size is not None and (isinstance(self.input_size, bool) or not isinstance(self.input_size, int)
                                            or not 32 <= self.input_size <= 1024):
            raise ValueError(f"input_size must be an integer between 32 and 1024 (or None), got {self.input_size!r}")
        for name in ("flip", "refine", "adapt", "all_regions"):
            object.__setattr__(self, name, bool(getattr(self, name)))
        object.__setattr__(self, "threshold", check_fraction("threshold", self.threshold))
        object.__setattr__(self, "min_score", check_fraction("min_score", self.min_score))
        object.__setattr__(self, "box_score", check_fraction("box_score", self.box_score))
        object.__setattr__(self, "box_overlap", check_fraction("box_overlap", self.box_overlap))
        if self.method not in METHOD_NAMES:
            raise ValueError(f"method must be one of {', '.join(METHOD_NAMES)}, got {self.method!r}")
        if self.boxes not in BOX_SOURCES:
            raise ValueError(f"boxes must be one of {', '.join(BOX_SOURCES)}, got {self.boxes!r}")
        if self.topk is not None and (isinstance(self.topk, bool) or not isinstance(self.topk, int) or self.topk < 1):
            raise ValueError(f"topk must be a positive integer (or None), got {self.topk!r}")
        if self.classes is not None:
            object.__setattr__(self, "classes", tuple(self.classes))

    def to_dict(self) -> dict:
        """The fields, JSON-ready (classes as a list)."""
        values = asdict(self)
        values["classes"] = None if self.classes is None else list(self.classes)
        return values


PLAIN = Settings(input_size=None, refine=False, boxes="cam")  # the paper's CAM: the model's own input, its map's box
RECOMMENDED = Settings()  # 288 px (9x9 maps instead of 7x7), refined by feature affinity
BEST = Settings(flip=True, adapt=True)  # the recommended setting averaged with the mirror image, contrast adapted
PRESETS = {"plain": PLAIN, "recommended": RECOMMENDED, "best": BEST}
NAMES = tuple(f.name for f in fields(Settings))


def settings_of(settings: Settings | str | None = None, **options) -> Settings:
    """`settings` (a Settings, a preset's name, or None: the recommended one) with `options` (field
    names) replacing its fields. `quality` names a preset too, as the keyword of earlier versions did."""
    quality = options.pop("quality", None)
    if quality is not None:
        settings = quality
    if settings is None:
        settings = RECOMMENDED
    elif isinstance(settings, str):
        if settings not in PRESETS:
            raise ValueError(f"quality must be one of {', '.join(PRESETS)} (or None), got {settings!r}")
        settings = PRESETS[settings]
    elif not isinstance(settings, Settings):
        raise TypeError(f"settings must be a cam.Settings or a preset's name, got {type(settings).__name__}")
    unknown = sorted(set(options) - set(NAMES))
    if unknown:
        raise TypeError(f"unexpected keyword argument {unknown[0]!r}; the settings are {', '.join(NAMES)}")
    return replace(settings, **options) if options else settings
