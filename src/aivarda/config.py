"""YAML configuration → validated pydantic models.

Every section is a :class:`StrictModel` (unknown keys are errors). :func:`load_config` turns a
missing file, malformed YAML or a validation failure into one :class:`ConfigError` line that names
the file and the key path, e.g. ``exp.yaml: observations.error_fraction: Input should be a valid
number``.

:class:`ExperimentConfig` is the skeleton of a cycling experiment; each later component adds its
own section model here (one field per section).
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Annotated, Any, Literal, TypeVar

import yaml
from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
    model_validator,
)

from aivarda.errors import ConfigError
from aivarda.paths import expand_path

M = TypeVar("M", bound=BaseModel)


class StrictModel(BaseModel):
    """Base of every config section: unknown keys are rejected, values validated on assignment."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True, frozen=False)


def _key_path(loc: tuple[Any, ...]) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += ("." if out else "") + str(part)
    return out or "<root>"


def format_validation_error(source: str, err: ValidationError) -> str:
    """One line: ``source: key.path: message[; other.key: message]``."""
    parts = []
    for e in err.errors():
        msg = e["msg"]
        if e["type"] == "extra_forbidden":
            msg = "unknown key"
        elif e["type"] == "missing":
            msg = "required key is missing"
        parts.append(f"{_key_path(e['loc'])}: {msg}")
    return f"{source}: " + "; ".join(parts)


class _StrictLoader(yaml.SafeLoader):
    """``yaml.SafeLoader`` that refuses a key given twice in one mapping (PyYAML keeps the last)."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: set[Any] = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)  # type: ignore[no-untyped-call]
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    None, None, f"key {key!r} given twice", key_node.start_mark
                )
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


def read_yaml(path: str | Path) -> dict[str, Any]:
    """Read a YAML mapping; a missing file, malformed YAML or a key given twice raises one
    ConfigError line."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: config file not found")
    try:
        data = yaml.load(path.read_text(encoding="utf-8"), Loader=_StrictLoader)  # noqa: S506 (a SafeLoader)
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path}: not a text (UTF-8) YAML file (byte {exc.start} cannot be decoded)") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark is not None else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise ConfigError(f"{path}: malformed YAML{where}: {problem}") from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping of keys at the top level, got {type(data).__name__}")
    return data


def validate(model: type[M], data: dict[str, Any], source: str) -> M:
    """Validate a mapping against a model; failures become one ConfigError line."""
    try:
        return model.model_validate(data)
    except ValidationError as err:
        raise ConfigError(format_validation_error(source, err)) from None


OUTPUT_PATH_KEYS = frozenset({"output_dir", "output"})
"""Config keys naming what a command writes: relative to the working directory."""


def resolve_config_paths(cfg: BaseModel, base: Path) -> None:
    """One rule for every path in a config, at any depth: ``${AIVARDA_HOME}``, ``${AIVARDA_ASSETS}``
    and ``~`` are expanded; an input (a store, a checkpoint, a B file, a station list, …) given
    relative is relative to ``base``, the folder of the config file; an output (``output_dir``,
    ``output``) relative is relative to the working directory."""
    for name in type(cfg).model_fields:
        value = getattr(cfg, name)
        if isinstance(value, Path):
            path = expand_path(value)
            if not path.is_absolute():
                path = ((Path.cwd() if name in OUTPUT_PATH_KEYS else base) / path).resolve()
            if path != value:
                setattr(cfg, name, path)
        elif isinstance(value, BaseModel):
            resolve_config_paths(value, base)
        elif isinstance(value, (list, tuple, dict)):
            for item in value.values() if isinstance(value, dict) else value:
                if isinstance(item, BaseModel):
                    resolve_config_paths(item, base)


def load_config(path: str | Path, model: type[M]) -> M:
    """Load and validate a YAML file as ``model``; its paths follow :func:`resolve_config_paths`."""
    cfg = validate(model, read_yaml(path), str(path))
    try:
        resolve_config_paths(cfg, Path(path).resolve().parent)
    except ValidationError as err:  # a field that checks its resolved path (e.g. that the file exists)
        raise ConfigError(format_validation_error(str(path), err)) from None
    return cfg


def parse_duration(value: Any) -> timedelta:
    """``"6h"``, ``"30min"``, ``"2d"``, ``"1h30min"`` or a number of hours → timedelta."""
    if isinstance(value, timedelta):
        return value
    if isinstance(value, (int, float)):
        return timedelta(hours=float(value))
    import re

    text = str(value).strip().replace(" ", "")
    units = {"d": 86400, "h": 3600, "min": 60, "m": 60, "s": 1}
    parts = re.findall(r"(\d+(?:\.\d+)?)(d|h|min|m|s)", text)
    if not parts or "".join(a + b for a, b in parts) != text:
        raise ValueError(f"expected a duration like '6h', '30min' or '2d', got {value!r}")
    return timedelta(seconds=sum(float(n) * units[u] for n, u in parts))


def duration_hours(value: Any) -> float:
    """A duration (see :func:`parse_duration`) in hours."""
    return parse_duration(value).total_seconds() / 3600.0


Duration = Annotated[timedelta, BeforeValidator(parse_duration)]
"""A config field given as ``"6h"``, ``"30min"``, ``"2d"`` or a number of hours → ``timedelta``."""


def _positive_duration(value: timedelta) -> timedelta:
    if value <= timedelta(0):
        raise ValueError("must be a positive duration, e.g. '6h'")
    return value


PositiveDuration = Annotated[timedelta, BeforeValidator(parse_duration), AfterValidator(_positive_duration)]
"""A :data:`Duration` that must be > 0 (a window spacing, a lag)."""

Hours = Annotated[float, BeforeValidator(duration_hours)]
"""A config field given like :data:`Duration` → float hours."""

def check_name(name: str) -> str:
    """``name`` if it can be used as one component of a file name, else ``ValueError``.

    Names of experiments, models, statistics and runs become parts of paths
    (``$AIVARDA_HOME/b/genbe_<name>.pt``, ``<report>/increment_<name>_z500.png``); a name with a
    path separator, ``..``, a leading dot (hidden or relative), a NUL or control character, or an
    empty name could write outside the intended folder and is refused.
    """
    if not isinstance(name, str) or not name.strip():
        raise ValueError("a name must not be empty")
    bad = [c for c in ("/", "\\", "\0") if c in name] + [c for c in name if ord(c) < 32]
    if bad:
        raise ValueError(f"name {name!r} must not contain path separators or control characters")
    if ".." in name or name.startswith("."):
        raise ValueError(f"name {name!r} must not contain '..' or start with '.' (it is used in file names)")
    return name


SafeName = Annotated[str, AfterValidator(check_name)]
"""A name that becomes part of a file name: no path separator, no ``..``, no leading dot, not empty
(:func:`check_name`)."""


class DataConfig(StrictModel):
    """Where the truth comes from: the embedded nature run or a WeatherBench2-layout Zarr store."""

    source: Literal["nature_run", "zarr"] = "nature_run"
    path: Path | None = Field(default=None, description="Zarr store (required for source: zarr)")
    variables: list[str] | None = Field(default=None, description="Channel names; default: FengWu's 69")
    start: datetime | None = Field(
        default=None, description="first time used from the store (inclusive; e.g. a WeatherBench2 store without spans)"
    )
    end: datetime | None = Field(default=None, description="last time used from the store (inclusive)")

    @model_validator(mode="after")
    def _start_before_end(self) -> DataConfig:
        for key in ("start", "end"):  # the store's time axis is UTC without a zone: compare naive UTC times
            value = getattr(self, key)
            if value is not None and value.tzinfo is not None:
                object.__setattr__(self, key, value.astimezone(UTC).replace(tzinfo=None))
        if self.start is not None and self.end is not None and self.end < self.start:
            raise ValueError(f"end ({self.end}) is before start ({self.start})")
        return self

class ExperimentConfig(StrictModel):
    """Skeleton of a cycling experiment. Sections are added by the components that own them."""

    name: SafeName = "experiment"
    seed: int = 0
    data: DataConfig = Field(
        description="required: where the truth comes from ({source: nature_run} or {source: zarr, path: ...}); "
        "an empty config must not silently start generating the nature run"
    )
    start_time: datetime | None = None
    end_time: datetime | None = None
    cycle_time: Duration = timedelta(hours=6)
    output_dir: Path = Path("runs/experiment")
