"""hsu-kernels: fused, tiled kernels for hyperspherical-uniformity regularizers (MHE and its family).

The public API: :func:`energy`, :func:`energy_many`, :func:`cross_energy`, :func:`uniformity_loss`,
:func:`align_loss`, :func:`min_separation`, the model-level :class:`MHERegularizer` and its per-layer
functions, and :mod:`hsu_kernels.distributed`; each function's docstring lists its arguments. docs/spec.md
states the numbers, docs/backends.md the backends (``backend=``), docs/porting.md the mapping from the papers'
original code.
"""

from . import distributed, reference
from ._params import POWERS
from .kinds import KINDS
from .layers import NeuronLayer, collect_layers, neuron_matrix
from .ops import (
    BACKENDS,
    align_loss,
    available_backends,
    cross_energy,
    energy,
    energy_many,
    min_separation,
    resolve_backend,
    uniformity_loss,
)
from .regularizers import (
    METHODS,
    PRESETS,
    MHERegularizer,
    Preset,
    comhe_adversarial_objective,
    comhe_angle_loss,
    comhe_random_loss,
    default_coefs,
    mgd_loss,
    mhc_loss,
    mhe_loss,
    mhp_loss,
    mhs_loss,
    neuron_uniformity,
    pole_potential,
    pole_softmin,
    rmhp_loss,
    uniformity_align_loss,
)

#: The package version, defined here only: pyproject.toml reads it statically (keep it a string literal).
__version__ = "0.1.0"

__all__ = [
    "BACKENDS",
    "METHODS",
    "PRESETS",
    "MHERegularizer",
    "Preset",
    "NeuronLayer",
    "collect_layers",
    "comhe_adversarial_objective",
    "comhe_angle_loss",
    "default_coefs",
    "neuron_uniformity",
    "pole_potential",
    "pole_softmin",
    "uniformity_align_loss",
    "comhe_random_loss",
    "distributed",
    "mgd_loss",
    "mhc_loss",
    "mhe_loss",
    "mhp_loss",
    "mhs_loss",
    "neuron_matrix",
    "rmhp_loss",
    "KINDS",
    "POWERS",
    "align_loss",
    "available_backends",
    "cross_energy",
    "energy",
    "energy_many",
    "min_separation",
    "reference",
    "resolve_backend",
    "uniformity_loss",
]
