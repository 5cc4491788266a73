"""Exact gradient accumulation: split rows into micro-batches, sum (not average) their gradients.

Recipe (what `train.micro_batches` must do so that it never changes the loss):

    denom = losses.Denominators.of(batch["mask_BT"])          # whole (mini)batch, before splitting
    loss_fn = lambda p, mb: objective(..., mb, denom=denom)   # each micro-batch's share
    loss, grads, aux = losses.summed_value_and_grad(loss_fn, params, losses.split_rows(batch, n))

Every `aggregate` mode divides by a count; with the whole batch's counts (`denom`) the
micro-batch losses are shares whose sum is the whole-batch loss, so the summed gradient is the
whole-batch gradient exactly (up to float summation order). Averaging instead would turn a
token-mean into a mean of per-micro-batch means, which weights a short micro-batch's tokens more.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp


def split_rows(tree: Any, n: int) -> Any:
    """Reshapes every leaf `[B, ...]` of `tree` to `[n, B // n, ...]` (contiguous row slices).

    Raises:
        ValueError: `n` does not divide a leaf's leading axis.
    """

    def one(x):
        x = jnp.asarray(x)
        if x.shape[0] % n:
            raise ValueError(f"micro_batches={n} does not divide the batch size {x.shape[0]}")
        return x.reshape(n, x.shape[0] // n, *x.shape[1:])

    return jax.tree.map(one, tree)


def summed_value_and_grad(
    loss_fn: Callable[[Any, Any], tuple[jax.Array, Any]], params: Any, micro_batches: Any
) -> tuple[jax.Array, Any, Any]:
    """Sum over micro-batches of `loss_fn(params, mb)` and of its gradient (a `lax.scan`).

    Equation: `L = sum_k loss_fn(params, mb_k)`, `g = sum_k grad loss_fn(params, mb_k)`. Exact
    for the whole-batch loss when `loss_fn` aggregates with the whole batch's `Denominators`.

    Args:
        loss_fn: `(params, mb) -> (loss, aux)`.
        params: the pytree differentiated.
        micro_batches: a pytree whose leaves have a leading micro-batch axis (`split_rows`).

    Returns:
        `(loss, grads, aux)`: summed loss, summed gradients, `aux` stacked over micro-batches.
    """
    grad_fn = jax.value_and_grad(loss_fn, has_aux=True)

    def step(carry, mb):
        loss_acc, g_acc = carry
        (loss, aux), g = grad_fn(params, mb)
        return (loss_acc + loss, jax.tree.map(jnp.add, g_acc, g)), aux

    zeros = jax.tree.map(jnp.zeros_like, params)
    (loss, grads), aux = jax.lax.scan(step, (jnp.zeros((), jnp.float32), zeros), micro_batches)
    return loss, grads, aux
