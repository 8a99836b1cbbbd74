"""SparseGPT (Frantar & Alistarh 2023): OBS pruning with lazy column blocks.

Columns are processed left to right. With U the upper Cholesky factor of H^-1 (H = X X^T, damped),
pruning or keeping column i and spreading its error over the columns to its right is the optimal
(OBS) update; blocks of `blocksize` columns defer the update of the remaining columns to one matrix
product. Masks are chosen per column block by w^2 / U_ii^2, with exact counts (see patterns.py):
unstructured over the rows x block, N:M per group as each group is reached.
"""

from __future__ import annotations

import torch

from ..patterns import SparsityPattern, num_pruned


def damped_hessian(hessian: torch.Tensor, weight: torch.Tensor, percdamp: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Inputs that never fire (zero diagonal) get unit curvature and zero weight; damping adds
    percdamp times the mean diagonal so the inverse exists. Returns (H, W) copies."""
    H = hessian.double().clone()  # float64: the Cholesky of an ill-conditioned H is where fp32 fails
    W = weight.clone()
    dead = torch.diag(H) == 0
    H[dead, dead] = 1
    W[:, dead] = 0
    H.diagonal().add_(percdamp * torch.mean(torch.diag(H)))
    return H, W


def sparsegpt_prune(weight: torch.Tensor, hessian: torch.Tensor, pattern: SparsityPattern,
                    blocksize: int = 128, percdamp: float = 0.01) -> tuple[torch.Tensor, torch.Tensor]:
    """Returns (updated weights with pruned entries exactly zero, keep-mask)."""
    H, W = damped_hessian(hessian, weight.float(), percdamp)
    rows, cols = W.shape
    U = torch.linalg.cholesky(torch.cholesky_inverse(torch.linalg.cholesky(H)), upper=True).to(W.dtype)
    mask = torch.ones_like(W, dtype=torch.bool)

    for i1 in range(0, cols, blocksize):
        i2 = min(i1 + blocksize, cols)
        W1 = W[:, i1:i2].clone()
        U1 = U[i1:i2, i1:i2]
        d = torch.diag(U1)
        Err1 = torch.zeros_like(W1)
        if pattern.kind == "unstructured":
            scores = (W1 ** 2 / d.unsqueeze(0) ** 2).reshape(1, -1)
            k = num_pruned(scores.numel(), pattern.ratio)
            keep1 = torch.ones_like(scores, dtype=torch.bool)
            keep1[0, torch.sort(scores[0], stable=True).indices[:k]] = False
            keep1 = keep1.reshape(W1.shape)
        else:
            keep1 = torch.ones_like(W1, dtype=torch.bool)
        for i in range(i2 - i1):
            if pattern.kind == "nm" and i % pattern.m == 0:
                g = slice(i, i + pattern.m)
                keep1[:, g] = pattern.mask(W1[:, g] ** 2 / d[g].unsqueeze(0) ** 2, per_row=True)
            w = W1[:, i]
            q = torch.where(keep1[:, i], w, torch.zeros_like(w))
            err = (w - q) / d[i]
            W1[:, i:] -= err.unsqueeze(1) @ U1[i, i:].unsqueeze(0)
            W1[:, i] = q  # exactly zero where pruned, exactly kept otherwise
            Err1[:, i] = err
        W[:, i1:i2] = W1
        mask[:, i1:i2] = keep1
        W[:, i2:] -= Err1 @ U[i1:i2, i2:]
    return W, mask
