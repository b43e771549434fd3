"""Exceptions raised for bad input.

Every error a user can cause (a malformed YAML, a missing store, an unknown variable) is raised as
an :class:`AivardaError` whose message is one line naming the file/field and what was expected.
The CLI prints that line and exits with status 2; nothing is written before the input is validated.
"""

from __future__ import annotations


class AivardaError(Exception):
    """Base class: a user-facing error with a one-line message."""


class ConfigError(AivardaError):
    """A configuration file is missing, malformed, or fails validation."""


class DataError(AivardaError):
    """A data store is missing or does not hold what was asked for."""


class ObservationError(AivardaError):
    """Observations are malformed (outside the grid, NaN values, negative error std...)."""


class LeakageError(ConfigError):
    """A run would score times that a trained artefact it uses was trained or fitted on
    (:func:`aivarda.provenance.check_out_of_sample`); ``--allow-in-sample`` overrides."""
