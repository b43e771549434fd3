"""VAE-Var background error: a variational autoencoder trained on NMC samples whose decoder is a
nonlinear control-variable transform ``δx = U(z)`` with ``J_b = ½‖z‖²`` (see ``docs/vae.md``)."""

from aivarda.background.vae.checkpoint import VaeCheckpoint
from aivarda.background.vae.network import VaeArchitecture, VaeNet, vae_loss
from aivarda.background.vae.transform import VaeConfig, VaeTransform

__all__ = ["VaeArchitecture", "VaeCheckpoint", "VaeConfig", "VaeNet", "VaeTransform", "vae_loss"]
