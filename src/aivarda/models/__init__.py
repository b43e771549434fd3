"""Forecast models (``ForecastModel.step``/``forecast``, each owning its normalisation; see docs/architecture.md).

- :mod:`.base` — the :class:`~aivarda.models.base.ForecastModel` protocol.
- :mod:`.normalised` — :class:`NeuralForecastModel`: any network on normalised fields as a
  differentiable, batched forecast model (residual prediction, optional activation checkpointing).
- :mod:`.registry` — architectures by name: ``fengwu`` (:mod:`.fengwu`), ``sfno`` (:mod:`.sfno`,
  torch-harmonics), ``module`` (:mod:`.wrapper`, any ``torch.nn.Module`` by import path).
- :mod:`.checkpoint` — one-file checkpoints and :func:`load_forecast_model`.
- :mod:`.config` — ``ModelConfig`` / ``TrainConfig`` / ``EvalConfig``.
- :mod:`.training` — ``aivarda train-model`` (single process or torchrun/DDP).
- :mod:`.evaluate` — ``aivarda eval-model`` (RMSE/ACC by lead vs persistence and climatology).
"""
