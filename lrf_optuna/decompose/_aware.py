"""Shared by the activation-aware methods: the truncation that minimises the error of the
layer's *outputs* on its calibration inputs, instead of the error of its weights.

Every method here sees the layer as ``Y = Z W`` (+ bias, then the activation): ``W`` is the
``(n_in, n_out)`` matrix the method factorizes and ``Z`` holds one row per output position
-- the channel vectors the matrix multiplies (FC methods: after the strided sampling or the
depthwise convolution kept in front of it), or the unfolded ``k x k x c_in`` patches (channel
SVD of a convolution). ``Z`` is computed by the method's own first stage with an identity
factor, so it is exactly what the replacement layer multiplies; it is never kept whole, only
its Gram matrix ``G = Z^T Z``, accumulated over batches.

The rank-``r`` ``W_r`` minimising ``||Z W - Z W_r||_F^2 + d ||W - W_r||_F^2`` is, with
``G + d I = S S^T`` and the SVD ``S^T W = U diag(s) V^T``,
``W_r = S^{-T} U_r diag(s_r) V_r^T = W V_r V_r^T``: ``W`` projected on the top ``r`` right
singular vectors of the (damped) whitened matrix, computed without inverting ``S``. The
damping ``d = damping * trace(G) / n_in`` (``damping`` times the mean input energy per
feature, so it does not depend on the scale of the inputs or their number) keeps the
problem well posed when inputs are dead, constant or fewer than ``n_in``; as it grows the
result tends to the plain SVD. When every input is zero the plain SVD is used. At full rank
``W_r = W``: the factorization is exact whatever the data.

Example:
    >>> import numpy as np
    >>> rng = np.random.default_rng(0)
    >>> w, z = rng.standard_normal((6, 4)), rng.standard_normal((50, 6))
    >>> basis = output_basis(w, z.T @ z, damping=0.0)
    >>> u, s, vt = basis.truncated_svd(4)
    >>> bool(np.allclose((u * s) @ vt, w))
    True
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from lrf_optuna.decompose import _conv, _matrix
from lrf_optuna.decompose._base import DecompositionError, LayerInfo, LRFMethod, inputs_required
from lrf_optuna.decompose.layers import FactorizedLayer, Stage

__all__ = ["DEFAULT_DAMPING", "ActivationAware", "OutputBasis", "check_inputs",
           "conv_unfoldings", "input_grams", "input_rows", "output_basis", "probe"]

#: Default relative damping of the input Gram matrix (see the module docstring).
DEFAULT_DAMPING = 1e-2
#: Bytes of ``Z`` rows materialised at once while accumulating the Gram matrix.
BATCH_BYTES = 32 * 2**20


class ActivationAware(LRFMethod):
    """What the activation-aware methods share: they are data-aware (``needs_inputs``),
    their factors are stored by the cache, and :meth:`prepare` without inputs is an error.

    Put it first among the bases, before the plain method whose stages and costs are
    reused: ``class SVDAware(ActivationAware, SVD)``.

    Args:
        damping: Relative damping of the inputs' Gram matrix (the registry's instance
            uses :data:`DEFAULT_DAMPING`).
    """

    needs_inputs = True
    cache_factors = True  # fitted to calibration data, which the cache does not keep

    def __init__(self, *, damping: float = DEFAULT_DAMPING) -> None:
        self.damping = float(damping)

    def prepare(self, info: LayerInfo, weights: Mapping[str, np.ndarray]) -> Any:
        raise inputs_required(self, info)


@dataclass(frozen=True)
class OutputBasis:
    """A matrix ``w`` and the right singular vectors ``v`` (columns, by decreasing ``s``)
    of its damped whitened version ``S^T w``: every rank's truncation in one object."""

    w: np.ndarray
    v: np.ndarray
    s: np.ndarray

    def truncated_svd(self, rank: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``(u, s, vt)``, an SVD of ``W_r = w V_r V_r^T`` with ``rank`` terms.

        The factors a method builds from it, ``u s^1/2`` and ``s^1/2 vt``, are balanced
        the way the plain SVD's are.
        """
        v_r = self.v[:, :rank]
        u, s, rt = np.linalg.svd(self.w @ v_r, full_matrices=False)
        return u, s, rt @ v_r.T


def output_basis(w: np.ndarray, gram: np.ndarray, *, damping: float) -> OutputBasis:
    """The :class:`OutputBasis` of ``w`` (``n_in x n_out``) for inputs of Gram matrix
    ``gram`` (``n_in x n_in``), damped by ``damping * trace(gram) / n_in``."""
    w = np.asarray(w, dtype=np.float64)
    gram = np.asarray(gram, dtype=np.float64)
    n_in = w.shape[0]
    scale = float(np.trace(gram)) / n_in
    if not scale > 0.0:  # no input energy at all: nothing to weigh the error by
        gram, scale = np.eye(n_in), 1.0
    damped = gram + (damping * scale) * np.eye(n_in)
    # any S with S S^T = damped gives the same right singular vectors of S^T W (those are
    # the eigenvectors of W^T damped W): Cholesky is cheapest; an eigendecomposition takes
    # over when the damped matrix is singular (no damping and fewer samples than inputs)
    try:
        whitened = np.linalg.cholesky(damped).T @ w
    except np.linalg.LinAlgError:
        lam, q = np.linalg.eigh(damped)
        whitened = np.sqrt(np.clip(lam, 0.0, None))[:, None] * (q.T @ w)
    _, s, vt = np.linalg.svd(whitened, full_matrices=False)
    return OutputBasis(w, vt.T, s)


def check_inputs(info: LayerInfo, inputs: np.ndarray) -> np.ndarray:
    """The layer's inputs as a finite float32 array, channels-last; a clear error if they
    do not have the layer's input shape."""
    x = np.asarray(inputs, dtype=np.float32)
    expected = info.input_shape
    if info.data_format == "channels_first" and len(expected) > 1:
        expected = (expected[-1], *expected[:-1])
    if x.ndim != len(expected) + 1 or tuple(x.shape[1:]) != expected or len(x) == 0:
        raise DecompositionError(
            f"layer {info.name!r}: inputs must have shape (n, "
            f"{', '.join(map(str, expected))}) with n >= 1 (what the layer receives), but got "
            f"{tuple(x.shape)}")
    if not np.all(np.isfinite(x)):
        raise DecompositionError(
            f"layer {info.name!r}: its calibration inputs have NaN or Inf values")
    if info.data_format == "channels_first" and x.ndim > 2:
        x = np.moveaxis(x, 1, -1)
    return x


def conv_unfoldings(info: LayerInfo, weights: Mapping[str, np.ndarray]) -> list[np.ndarray]:
    """The ``(k^2 c_in / g) x (c_out / g)`` matrices of a conv kernel, one per group, rows in
    ``(*k, c_in)`` order (a transposed conv's kernel seen as ``(*k, c_in, c_out)``)."""
    kernel = np.asarray(weights["kernel"])
    if info.kind == "conv_transpose":  # (*k, c_out, c_in) -> (*k, c_in, c_out)
        kernel = np.swapaxes(kernel, -1, -2)
    return [w.reshape(-1, w.shape[-1]) for w in _conv.group_kernels(info, kernel)]


def probe(info: LayerInfo, weights: Mapping[str, np.ndarray]
          ) -> tuple[list[Stage], list[np.ndarray], int]:
    """``(stages, factors, width)``: the stages that turn the (channels-last) inputs into
    ``Z``, their weights, and ``Z``'s width (all groups side by side)."""
    if info.is_matrix:
        return (_matrix.prefix_stages(info), _matrix.prefix_factors(info, weights),
                info.matrix_shape[0])
    g, k = info.groups, _conv.kxk(info)
    per_group = k * info.in_channels // g
    eye = np.eye(per_group, dtype=np.float32).reshape(*info.kernel_size, -1, per_group)
    if info.kind == "conv_transpose":  # channel (t, c) of the output gathers tap t of c
        return ([_conv.spatial_stage(info, [*info.kernel_size, per_group, info.in_channels])],
                [np.swapaxes(eye, -1, -2)], per_group)
    shape = [*info.kernel_size, info.in_channels // g, g * per_group]
    return [_conv.spatial_stage(info, shape)], [np.concatenate([eye] * g, axis=-1)], \
        g * per_group


def input_rows(info: LayerInfo, weights: Mapping[str, np.ndarray], x: np.ndarray
               ) -> Iterator[np.ndarray]:
    """Batches of ``Z`` (float32, ``(rows, width)``) for channels-last inputs ``x``
    (:func:`check_inputs`)."""
    stages, factors, width = probe(info, weights)
    per_sample = max(1, info.out_positions) * width * 4
    batch = max(1, BATCH_BYTES // per_sample)
    layer = None
    if stages:
        layer = FactorizedLayer(stages, method="input_probe", rank=width, use_bias=False,
                                activation=None, name=f"{info.name}_probe", dtype="float32")
        layer.build((None, *x.shape[1:]))
        layer.set_weights([np.asarray(f, dtype=np.float32) for f in factors])
    for start in range(0, len(x), batch):
        chunk = x[start:start + batch]
        if layer is not None:
            import keras

            chunk = keras.ops.convert_to_numpy(layer(chunk))
        yield np.reshape(chunk, (-1, width))


def input_grams(info: LayerInfo, weights: Mapping[str, np.ndarray], inputs: np.ndarray
                ) -> list[np.ndarray]:
    """``Z^T Z`` (float64) of the layer on ``inputs`` (its own layout), one block per group
    (a single matrix for FC methods)."""
    x = check_inputs(info, inputs)
    groups = 1 if info.is_matrix else info.groups
    grams: list[np.ndarray] | None = None
    for z in input_rows(info, weights, x):
        blocks = np.split(z, groups, axis=1)
        if grams is None:
            grams = [np.zeros((b.shape[1],) * 2) for b in blocks]
        for gram, b in zip(grams, blocks, strict=True):
            gram += b.T @ b  # float32 per batch, summed in float64
    assert grams is not None  # check_inputs refuses an empty batch
    return grams

