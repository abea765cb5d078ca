"""The alignment loss computed inside the target layers' forward hooks, its backward done there too.

`LayerCapture` keeps the image-token states of a target layer until the end of the forward pass, and the
alignment head's activations (`[B_img, N, projector_dim]` x 4) live from the head's forward until the
backward pass: both sit on the step's memory peak (the end of the forward pass). `HookedAlignmentLoss`
instead, in the hook of target layer l, gathers the image states (`[B_img, N, D]`), runs the head and the
loss, and at once differentiates that layer's loss w.r.t. the head's trainable parameters and the output
of its first linear layer (`[M, P]`, M = B_img * N, P = projector_dim). Then everything but those
gradients is freed, before the layers above l run. The gradient w.r.t. the states (`[M, D]`) is that
`[M, P]` gradient times the first layer's weight: the matmul its backward would do anyway, deferred to
the real backward pass, so what waits there is P/D of the states' size (half in the paper's 4096 / 2048).

What the hook hands back is the layer's loss as a scalar whose autograd node carries the precomputed
gradients (`PrecomputedLoss`): when the training loss `L_LM + lambda * mean_l L_VRA,l` is differentiated,
that node receives dL/dL_VRA,l = g and returns g * dL_VRA,l/dstates (scattered to the image positions of
the layer output, like the indexing it replaces) and g * dL_VRA,l/dtheta to the head's parameters. The gradients are therefore the ones
of the plain formulation, with every scaling applied later (lambda, micro-batch shares under gradient
accumulation, the DDP rank factor) still applied, and the head's parameters receive their gradient inside
the real backward pass, where DDP's reducer expects it. Nothing is saved through autograd's saved-tensor
mechanism, so gradient checkpointing (which re-runs the layer, with the hook disarmed) needs no special case.
"""

from __future__ import annotations

from typing import Callable

import torch
from torch import nn

from viral.align.capture import LayerCapture
from viral.align.losses import packed_alignment_loss
from viral.align.projector import AlignmentHead


def _keep(tensor: torch.Tensor) -> torch.Tensor:
    return tensor


class PrecomputedLoss(torch.autograd.Function):
    """A loss value whose gradients w.r.t. the head's `params` were computed already, and whose gradient
    w.r.t. `hidden` (at `mask`) is `pre_grad @ weight`: the gradient at the head's first linear layer's
    output, times that layer's weight. Deferring that one matmul to the backward pass keeps `[M, P]` instead
    of `[M, D]` (P = projector_dim, half the LLM width in the paper) and costs no extra FLOPs."""

    @staticmethod
    def forward(ctx, value, mask, pre_grad, weight, param_grads, hidden, *params):
        # value: [] the loss; mask: [B, T] image positions; pre_grad: [M, P] or None; weight: [P, D]
        ctx.mask, ctx.pre_grad, ctx.weight, ctx.param_grads = mask, pre_grad, weight, param_grads
        ctx.hidden_shape, ctx.hidden_dtype = hidden.shape, hidden.dtype
        return value.clone()

    @staticmethod
    def backward(ctx, grad):
        hidden_grad = None
        if ctx.pre_grad is not None and ctx.needs_input_grad[5]:
            hidden_grad = grad.new_zeros(ctx.hidden_shape, dtype=ctx.hidden_dtype)  # [B, T, D]
            hidden_grad[ctx.mask] = ((ctx.pre_grad @ ctx.weight) * grad).to(ctx.hidden_dtype)  # [M, D]
        param_grads = tuple(g.mul_(grad) for g in ctx.param_grads)  # in place: no second copy of the head
        ctx.pre_grad, ctx.weight, ctx.param_grads = None, None, ()
        return None, None, None, None, None, hidden_grad, *param_grads


class HookedAlignmentLoss(LayerCapture):
    """Per target layer, the alignment loss `{layer: []}` computed (and differentiated) in the layer's hook.

    `arm(image_mask, targets)` before the forward pass, with `targets` a function returning the
    `[B_img, N, z_dim]` teacher (or encoder) features once they exist (`ragged`: a grid per image, packed
    `[sum N_i, z_dim]`, the loss taken per image and averaged); `collect()` after it.
    """

    def __init__(self, llava, head: AlignmentHead, loss_fn: Callable, ragged: bool = False):
        super().__init__(llava, head.target_layers, ragged)
        self.head = head
        self.loss_fn = loss_fn
        self.targets: Callable[[], torch.Tensor | None] | None = None

    def arm(self, image_mask: torch.Tensor, targets: Callable[[], torch.Tensor | None] | None = None) -> None:
        super().arm(image_mask)
        self.targets = targets

    def collect(self) -> dict[int, torch.Tensor]:
        self.targets = None
        return super().collect()

    def _keep(self, layer: int, hidden: torch.Tensor) -> None:
        if self.mask is None or layer in self.states or self.targets is None:
            return
        targets = self.targets()  # [B_img, N, z_dim]
        mask = self.mask.to(hidden.device)  # [B, T]
        if targets is None or not bool(mask.any()):
            return
        counts = mask.sum(dim=1)[mask.any(dim=1)]  # image tokens per image sample
        if self.ragged:  # a grid per image: states and targets packed, [sum N_i, D] and [sum N_i, z_dim]
            shape = (int(counts.sum()), hidden.shape[-1])
        elif bool((counts != counts[0]).any()):
            raise ValueError(f"image samples hold different numbers of image tokens: {counts.tolist()}")
        else:
            shape = (len(counts), int(counts[0]), hidden.shape[-1])
        projector = self.head.projector_for(layer)
        first, *rest = projector  # Linear(D -> P), then SiLU - Linear - SiLU - Linear
        params = [p for p in projector.parameters() if p.requires_grad]
        differentiate = torch.is_grad_enabled() and (hidden.requires_grad or bool(params))
        # identity saved-tensor hooks: gradient checkpointing's own hooks must not see the head's tensors
        with torch.autograd.graph.saved_tensors_hooks(_keep, _keep):
            states = hidden.detach()[mask].view(shape).to(first.weight.dtype)  # [B_img, N, D]
            with torch.no_grad():
                pre = first(states)  # [B_img, N, P]
            pre.requires_grad_(differentiate)
            projected = pre
            for module in rest:
                projected = module(projected)  # ends [B_img, N, z_dim]
            if self.ragged:
                loss = packed_alignment_loss(self.loss_fn, projected, targets.to(projected.dtype), counts.tolist())
            else:
                loss = self.loss_fn(projected, targets.to(projected.dtype))
            if not differentiate:
                self.states[layer] = loss
                return
            rest_params = [p for module in rest for p in module.parameters() if p.requires_grad]
            pre_grad, *rest_grads = torch.autograd.grad(loss, [pre, *rest_params])
        pre_grad = pre_grad.reshape(-1, pre.shape[-1])  # [M, P]
        grads = dict(zip(map(id, rest_params), rest_grads))
        if first.weight.requires_grad:  # the first linear layer's weight and bias gradients, as its backward
            grads[id(first.weight)] = pre_grad.T @ states.reshape(-1, shape[-1])  # [P, D]
        if first.bias is not None and first.bias.requires_grad:
            grads[id(first.bias)] = pre_grad.sum(dim=0)  # [P]
        param_grads = tuple(grads[id(p)] for p in params)
        keep_pre_grad = pre_grad if hidden.requires_grad else None
        self.states[layer] = PrecomputedLoss.apply(loss.detach(), mask, keep_pre_grad, first.weight, param_grads,
                                                   hidden, *params)


def touch(parameters: list[nn.Parameter]) -> torch.Tensor:
    """A zero that depends on every given parameter: each then gets a (zero) gradient in the backward pass,
    so DDP can run without searching for unused parameters."""
    if not parameters:
        return torch.zeros(())
    return sum(p.sum() for p in parameters) * 0.0
