"""Cycling experiments (``aivarda run``): configuration (:mod:`.config`), the time-lagged ensemble
store (:mod:`.ensemble`), the resumable run directory (:mod:`.state`), outputs (:mod:`.outputs`) and
the runner (:mod:`.runner`). See ``docs/cycling.md``."""
