import math

import pytest
import torch

from pruning_lab.patterns import SparsityPattern, num_pruned
from pruning_lab.pruners import prune_layer


def tied_scores(rows=16, cols=32, levels=3, seed=0):
    """Scores drawn from only a few values: the ties a 4-bit quantised model produces."""
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, levels, (rows, cols), generator=g).float()


@pytest.mark.parametrize("ratio", [0.0, 0.3, 0.5, 0.7, 0.9])
def test_unstructured_per_layer_exact_count_with_ties(ratio):
    scores = tied_scores()
    keep = SparsityPattern("unstructured", ratio).mask(scores, per_row=False)
    assert int((~keep).sum()) == math.floor(scores.numel() * ratio + 1e-9)
    # every pruned score is <= every kept score
    if (~keep).any() and keep.any():
        assert scores[~keep].max() <= scores[keep].min()


@pytest.mark.parametrize("ratio", [0.25, 0.5, 0.6])
def test_unstructured_per_row_exact_count_with_ties(ratio):
    scores = tied_scores()
    keep = SparsityPattern("unstructured", ratio).mask(scores, per_row=True)
    assert ((~keep).sum(1) == num_pruned(scores.shape[1], ratio)).all()
    for r in range(scores.shape[0]):
        assert scores[r][~keep[r]].max() <= scores[r][keep[r]].min()


@pytest.mark.parametrize("n,m", [(2, 4), (4, 8), (1, 4)])
def test_nm_validity_every_group(n, m):
    scores = tied_scores(cols=64)
    keep = SparsityPattern("nm", n=n, m=m).mask(scores, per_row=False)
    groups = (~keep).reshape(scores.shape[0], -1, m)
    assert (groups.sum(-1) == n).all()
    s = scores.reshape(scores.shape[0], -1, m)
    k = keep.reshape(s.shape)
    pruned_max = torch.where(~k, s, torch.full_like(s, -1e9)).amax(-1)
    kept_min = torch.where(k, s, torch.full_like(s, 1e9)).amin(-1)
    assert (pruned_max <= kept_min).all()


def test_hand_solved_magnitude_and_wanda():
    w = torch.tensor([[1.0, -4.0, 2.0, 3.0], [-1.0, 0.5, 5.0, -2.0]])
    pat = SparsityPattern("unstructured", 0.5)
    # magnitude ranks the whole layer: the four smallest |w| are 0.5, 1, 1 and the first of the
    # two 2s (ties broken by position), i.e. flat indices 5, 0, 4, 2
    keep = prune_layer("magnitude", w, None, pat).mask
    assert keep.tolist() == [[False, True, False, True], [False, False, True, True]]
    # Wanda: |w| * ||x||, per row. Feature norms 4, 1, 1, 0.25 reorder the first row.
    sqnorm = torch.tensor([16.0, 1.0, 1.0, 0.0625])
    keep = prune_layer("wanda", w, sqnorm, pat).mask
    # row 0 scores 4, 4, 2, 0.75 -> prune cols 3, 2; row 1 scores 4, 0.5, 5, 0.5 -> prune cols 1, 3
    assert keep.tolist() == [[True, True, False, False], [True, False, True, False]]


def test_nm_hand_solved():
    w = torch.tensor([[4.0, -1.0, 3.0, 2.0, 0.1, 0.2, -0.3, 0.4]])
    keep = prune_layer("magnitude", w, None, SparsityPattern("nm", n=2, m=4)).mask
    assert keep.tolist() == [[True, False, True, False, False, False, True, True]]


def test_layer_shape_check():
    from pruning_lab.errors import ConfigError

    with pytest.raises(ConfigError, match="does not divide the input size 30 of layer blk.q"):
        SparsityPattern("nm", n=2, m=4).check_layer("blk.q", 30)
