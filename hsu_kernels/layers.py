"""From a model's layers to neuron matrices (docs/spec.md §1).

A layer's weight becomes ``W: Tensor[N, D]``, one row per neuron (output unit):

=================================  ==========================  ================================
layer                              PyTorch weight              ``W``
=================================  ==========================  ================================
``nn.Linear``                      ``[out, in]``               ``w`` itself
``nn.ConvNd`` (any groups)         ``[out, in/groups, *k]``    ``w.reshape(out, -1)``
``nn.ConvTransposeNd`` (groups=1)  ``[in, out, *k]``           ``w.transpose(0, 1).reshape(out, -1)``
=================================  ==========================  ================================

Row ``i`` is always ``w.reshape(out, -1)[i]``, never ``w.view(-1, out)`` (which mixes neurons). Biases,
normalization layers and embeddings are not neurons and are never collected.
"""

from __future__ import annotations

import fnmatch
from dataclasses import dataclass
from typing import Iterable, List, Optional, Sequence, Tuple, Union

import torch
from torch import nn

_CONV = (nn.Conv1d, nn.Conv2d, nn.Conv3d)
_CONV_T = (nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d)
#: The layer types whose weights are neuron matrices.
NEURON_LAYERS: Tuple[type, ...] = (nn.Linear,) + _CONV + _CONV_T

Selector = Union[str, type, nn.Module]


@dataclass(frozen=True)
class NeuronLayer:
    """One collected layer.

    Attributes:
        name: the module's qualified name in the model (``""`` for the model itself).
        module: the layer.
        is_output: the output (classifier) layer, which the regularizers never treat as half-space.
    """

    name: str
    module: nn.Module
    is_output: bool = False

    @property
    def shape(self) -> Tuple[int, int]:
        """``(N, D)`` of the layer's neuron matrix."""
        return tuple(neuron_matrix(self.module).shape)  # type: ignore[return-value]


def neuron_matrix(layer: nn.Module) -> torch.Tensor:
    """The neuron matrix of one layer, a differentiable view of its weight (docs/spec.md §1).

    Args:
        layer: an ``nn.Linear``, ``nn.Conv{1,2,3}d`` or ``nn.ConvTranspose{1,2,3}d`` (groups = 1).

    Returns:
        ``Tensor[N, D]`` with ``N`` = output units; gradients flow back to ``layer.weight``.

    Raises:
        TypeError: ``layer`` is not one of the supported layer types.
        ValueError: a transposed convolution with ``groups > 1`` (its weight ``[in, out/groups, *k]`` does
            not hold one contiguous row per output unit), or a lazy layer not initialized yet.
    """
    if not isinstance(layer, NEURON_LAYERS):
        raise TypeError(f"layer must be one of {[t.__name__ for t in NEURON_LAYERS]}, got {type(layer).__name__}")
    w = layer.weight
    if isinstance(w, nn.parameter.UninitializedParameter):
        raise ValueError(f"layer {type(layer).__name__} is lazy and not initialized yet: run one forward pass first")
    if isinstance(layer, _CONV_T):
        if layer.groups != 1:
            raise ValueError(
                f"layer {type(layer).__name__} has groups={layer.groups}: only groups=1 transposed convolutions "
                "have one neuron per output channel in a [in, out, *k] weight; exclude this layer"
            )
        w = w.transpose(0, 1)
    return w.reshape(w.shape[0], -1)


def _matches(name: str, module: nn.Module, selectors: Sequence[Selector]) -> bool:
    for sel in selectors:
        if isinstance(sel, str):
            if name == sel or fnmatch.fnmatchcase(name, sel):
                return True
        elif isinstance(sel, type):
            if isinstance(module, sel):
                return True
        elif sel is module:
            return True
    return False


def _check_selectors(arg: str, selectors) -> List[Selector]:
    if selectors is None:
        return []
    if isinstance(selectors, (str, type, nn.Module)):
        selectors = [selectors]
    if not isinstance(selectors, Iterable):
        raise TypeError(f"{arg} must be a name, a glob pattern, a layer type, a module or a list of them")
    out = list(selectors)
    for sel in out:
        if not isinstance(sel, (str, type, nn.Module)):
            raise TypeError(
                f"{arg} entries must be names/glob patterns (str), layer types or modules, got {type(sel).__name__}"
            )
    return out


def collect_layers(
    model: nn.Module,
    *,
    include: Optional[Union[Selector, Sequence[Selector]]] = None,
    exclude: Optional[Union[Selector, Sequence[Selector]]] = None,
    output_layer: Union[str, nn.Module, None] = "auto",
) -> List[NeuronLayer]:
    """The layers of ``model`` whose weights the regularizers see, in ``model.named_modules()`` order.

    Args:
        model: any ``nn.Module``.
        include: only layers matching one of these: a qualified name (``"features.0"``), a glob pattern
            (``"features.*"``), a layer type (``nn.Conv2d``) or a module object. ``None``: every
            ``Linear``/``ConvNd``/``ConvTransposeNd``.
        exclude: drop layers matching one of these (same forms); applied after ``include``.
        output_layer: the layer treated as the output (classifier) layer: ``"auto"`` (the last
            ``nn.Linear`` collected, if any), a qualified name, a module, or ``None`` (no output layer).
            The output layer is kept even when ``include``/``exclude`` would drop it.

    Returns:
        ``List[NeuronLayer]``; a weight shared by several modules is collected once (as the output layer
        when the output layer is one of them).

    Raises:
        TypeError: ``model`` is not a module, or a selector has an unsupported type.
        ValueError: nothing is collected, ``output_layer`` names no neuron layer of ``model``, or a collected
            transposed convolution has ``groups > 1``.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be an nn.Module, got {type(model).__name__}")
    inc = _check_selectors("include", include)
    exc = _check_selectors("exclude", exclude)
    named = [(n, m) for n, m in model.named_modules() if isinstance(m, NEURON_LAYERS)]

    out_module: Optional[nn.Module] = None
    if isinstance(output_layer, str) and output_layer != "auto":
        found = [m for n, m in named if n == output_layer]
        if not found:
            raise ValueError(
                f"output_layer={output_layer!r} is not a Linear/Conv/ConvTranspose layer of the model; "
                f"its neuron layers are {[n for n, _ in named]}"
            )
        out_module = found[0]
    elif isinstance(output_layer, nn.Module):
        if not any(m is output_layer for _, m in named):
            raise ValueError("output_layer is not a Linear/Conv/ConvTranspose layer of the model")
        out_module = output_layer
    elif output_layer is not None and output_layer != "auto":
        raise TypeError(
            f"output_layer must be 'auto', a layer name, a module or None, got {type(output_layer).__name__}"
        )

    kept = [m for n, m in named if (not inc or _matches(n, m, inc)) and not _matches(n, m, exc)]
    if output_layer == "auto":
        linears = [m for m in kept if isinstance(m, nn.Linear)]
        out_module = linears[-1] if linears else None
    # A weight shared by several modules is one matrix, collected once; when the output layer shares it
    # (a head tied to a hidden layer), it is the output layer's, so the others sharing it are dropped.
    seen = {id(out_module.weight)} if out_module is not None else set()
    kept_ids = {id(m) for m in kept}
    chosen: List[Tuple[str, nn.Module]] = []
    for name, m in named:
        if m is out_module:
            chosen.append((name, m))
        elif id(m) in kept_ids and id(m.weight) not in seen:
            seen.add(id(m.weight))
            chosen.append((name, m))
    if not chosen:
        raise ValueError("no Linear/Conv/ConvTranspose layer left to regularize (check include/exclude)")
    layers = [NeuronLayer(name, m, m is out_module) for name, m in chosen]
    for layer in layers:
        try:
            neuron_matrix(layer.module)
        except ValueError as exc:
            raise ValueError(f"layer {layer.name!r}: {exc}") from None
    return layers
