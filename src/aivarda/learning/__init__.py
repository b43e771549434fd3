"""Commands that learn from data: ``train-model``, ``eval-model``, ``learn-b`` (NMC samples, GEN_BE).

They sit above the data layer and the engine: they read field sources (:mod:`aivarda.data`) and
build forecast models and background-error statistics (:mod:`aivarda.models`,
:mod:`aivarda.background`), which never import them.
"""
