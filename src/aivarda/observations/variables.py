"""The one mapping between observed variables in files (JEDI IODA names and units) and aivarda's
state variables (ERA5 / WeatherBench2 names and units, :mod:`aivarda.channels`).

Every file reader produces IODA names in IODA units (:class:`~aivarda.observations.table.ObsTable`);
only :meth:`ObsTable.to_obsset` / :meth:`ObsTable.from_obsset` convert, with this table::

    state value = scale × file value            (and σ_o likewise)

+-------------------------------+----------+---------------+-----------+--------------------------------+
| IODA ``ObsValue/<name>``      | units    | aivarda       | scale     | vertical coordinate            |
+===============================+==========+===============+===========+================================+
| airTemperature                | K        | t             | 1         | MetaData/pressure (Pa)         |
| windEastward                  | m s-1    | u             | 1         | MetaData/pressure              |
| windNorthward                 | m s-1    | v             | 1         | MetaData/pressure              |
| specificHumidity              | kg kg-1  | q             | 1         | MetaData/pressure              |
| geopotentialHeight            | m        | z (m² s⁻²)    | g₀        | MetaData/pressure              |
| relativeHumidity              | 1        | r (%)         | 100       | MetaData/pressure              |
| airTemperatureAt2M            | K        | t2m           | 1         | none (surface)                 |
| windEastwardAt10M             | m s-1    | u10m          | 1         | none                           |
| windNorthwardAt10M            | m s-1    | v10m          | 1         | none                           |
| pressureReducedToMeanSeaLevel | Pa       | msl           | 1         | none                           |
| stationPressure               | Pa       | sp            | 1         | none                           |
| precipitableWater             | kg m-2   | tcwv          | 1         | none                           |
+-------------------------------+----------+---------------+-----------+--------------------------------+

``g₀ = 9.80665 m s⁻²`` (the WMO standard gravity ERA5 uses, ``z = g₀ · Z``). Surface reports written by
ioda-converters (SYNOP, METAR) often name 2 m / 10 m values ``airTemperature``, ``windEastward``,
``windNorthward`` without a pressure: such an observation (missing ``MetaData/pressure``) is read as
the 2 m / 10 m variable (:data:`SURFACE_ALIASES`).
"""

from __future__ import annotations

from dataclasses import dataclass

from aivarda.errors import ObservationError

STANDARD_GRAVITY = 9.80665  # m s-2, WMO; ERA5 geopotential z = g0 · geopotential height


@dataclass(frozen=True)
class ObservedVariable:
    """An observed variable: IODA name and units, the aivarda variable, ``state = scale × file``."""

    ioda: str
    units: str
    aivarda: str
    scale: float
    upper_air: bool  # needs a pressure (MetaData/pressure); surface variables have none


OBSERVED_VARIABLES: tuple[ObservedVariable, ...] = (
    ObservedVariable("airTemperature", "K", "t", 1.0, True),
    ObservedVariable("windEastward", "m s-1", "u", 1.0, True),
    ObservedVariable("windNorthward", "m s-1", "v", 1.0, True),
    ObservedVariable("specificHumidity", "kg kg-1", "q", 1.0, True),
    ObservedVariable("geopotentialHeight", "m", "z", STANDARD_GRAVITY, True),
    ObservedVariable("relativeHumidity", "1", "r", 100.0, True),
    ObservedVariable("airTemperatureAt2M", "K", "t2m", 1.0, False),
    ObservedVariable("windEastwardAt10M", "m s-1", "u10m", 1.0, False),
    ObservedVariable("windNorthwardAt10M", "m s-1", "v10m", 1.0, False),
    ObservedVariable("pressureReducedToMeanSeaLevel", "Pa", "msl", 1.0, False),
    ObservedVariable("stationPressure", "Pa", "sp", 1.0, False),
    ObservedVariable("precipitableWater", "kg m-2", "tcwv", 1.0, False),
)

BY_IODA: dict[str, ObservedVariable] = {v.ioda: v for v in OBSERVED_VARIABLES}
BY_AIVARDA: dict[str, ObservedVariable] = {v.aivarda: v for v in OBSERVED_VARIABLES}

# IODA upper-air names read as the 2 m / 10 m variable when the observation has no pressure
SURFACE_ALIASES: dict[str, str] = {
    "airTemperature": "airTemperatureAt2M",
    "windEastward": "windEastwardAt10M",
    "windNorthward": "windNorthwardAt10M",
}


def for_aivarda(variable: str) -> ObservedVariable:
    """The observed variable of an aivarda variable (``"z"``, ``"t2m"``…); a clear error otherwise."""
    try:
        return BY_AIVARDA[variable]
    except KeyError:
        raise ObservationError(
            f"observations: aivarda variable {variable!r} has no observed (IODA) variable; "
            f"known: {sorted(BY_AIVARDA)}"
        ) from None


def resolve(ioda_name: str, has_pressure: bool) -> ObservedVariable | None:
    """The observed variable of an IODA name at an observation with/without a pressure, or
    ``None`` when aivarda has no state variable for it (e.g. ``virtualTemperature``)."""
    if not has_pressure and ioda_name in SURFACE_ALIASES:
        ioda_name = SURFACE_ALIASES[ioda_name]
    return BY_IODA.get(ioda_name)
