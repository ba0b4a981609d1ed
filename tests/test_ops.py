"""Shared ops: the sparse-target focal loss against torchvision's dense one."""
import pytest
import torch
from torchvision.ops import sigmoid_focal_loss

from public.ops.losses import focal_loss_per_location


@pytest.mark.parametrize("alpha, gamma", [(0.25, 2.0), (-1.0, 2.0), (0.5, 1.5)])
def test_focal_loss_per_location_equals_torchvision(alpha, gamma):
    generator = torch.Generator().manual_seed(0)
    logits = (torch.randn(3, 500, 7, generator=generator) * 4 - 1).requires_grad_()
    batch_idx = torch.tensor([0, 0, 1, 2, 2, 2])
    loc_idx = torch.tensor([3, 499, 0, 10, 11, 250])
    labels = torch.tensor([6, 0, 3, 3, 3, 1])
    target = torch.zeros_like(logits)
    target[batch_idx, loc_idx, labels] = 1.0
    expected = sigmoid_focal_loss(logits, target, alpha, gamma, reduction="none").sum(dim=2)   # [B, N]
    got = focal_loss_per_location(logits, batch_idx, loc_idx, labels, alpha, gamma)
    assert got.shape == (3, 500)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-6)
    weights = torch.rand(3, 500, generator=generator)
    grad_expected, = torch.autograd.grad((expected * weights).sum(), logits)
    grad_got, = torch.autograd.grad((got * weights).sum(), logits)
    torch.testing.assert_close(grad_got, grad_expected, rtol=1e-4, atol=1e-6)


def test_focal_loss_without_positives_is_all_negative():
    logits = torch.tensor([[[0.0, 2.0]]])
    empty = torch.zeros(0, dtype=torch.long)
    got = focal_loss_per_location(logits, empty, empty, empty, alpha=0.25, gamma=2.0)
    # p = 0.5: 0.75 * 0.25 * ln 2;  p = sigmoid(2): 0.75 * p^2 * softplus(2)
    p = torch.sigmoid(torch.tensor(2.0))
    expected = 0.75 * 0.25 * torch.log(torch.tensor(2.0)) + 0.75 * p ** 2 * torch.nn.functional.softplus(torch.tensor(2.0))
    torch.testing.assert_close(got, expected.reshape(1, 1))
