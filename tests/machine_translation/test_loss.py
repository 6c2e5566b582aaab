import pytest
import torch
import torch.nn.functional as F

from machine_translation.training.loss import label_smoothed_cross_entropy

PAD = 0


@pytest.mark.parametrize("epsilon", [0.0, 0.1, 0.3])
def test_equals_pytorch_cross_entropy_in_value_and_gradient(epsilon):
    # 4·20 = 80 rows: a full chunk of 64 and a partial one.
    logits = torch.randn(4, 20, 50, dtype=torch.float64, requires_grad=True)
    labels = torch.randint(1, 50, (4, 20))
    labels[1, 4:] = PAD
    labels[3, :] = PAD
    ours = label_smoothed_cross_entropy(logits, labels, PAD, epsilon)
    (ours_grad,) = torch.autograd.grad(ours * 2.5, logits)
    reference = F.cross_entropy(
        logits.flatten(0, 1),
        labels.flatten(),
        ignore_index=PAD,
        label_smoothing=epsilon,
        reduction="sum",
    )
    (reference_grad,) = torch.autograd.grad(reference * 2.5, logits)
    torch.testing.assert_close(ours, reference)
    torch.testing.assert_close(ours_grad, reference_grad)
    assert ours_grad[3].abs().sum() == 0  # PAD positions get no gradient


def test_bf16_logits_give_bf16_gradients_close_to_fp32():
    logits = torch.randn(64, 300, requires_grad=True)
    labels = torch.randint(1, 300, (64,))
    low = logits.detach().bfloat16().requires_grad_()
    loss = label_smoothed_cross_entropy(low, labels, PAD, 0.1)
    loss.backward()
    reference = F.cross_entropy(logits, labels, label_smoothing=0.1, reduction="sum")
    reference.backward()
    assert low.grad.dtype == torch.bfloat16
    torch.testing.assert_close(loss, reference, atol=1e-3, rtol=1e-4)
    torch.testing.assert_close(low.grad.float(), logits.grad, atol=2e-3, rtol=2e-2)


def test_value_without_gradient_is_the_same_and_backward_runs_once():
    logits = torch.randn(70, 40, requires_grad=True)  # more rows than one chunk
    labels = torch.randint(1, 40, (70,))
    with torch.no_grad():
        evaluated = label_smoothed_cross_entropy(logits, labels, PAD, 0.1)
    trained = label_smoothed_cross_entropy(logits, labels, PAD, 0.1)
    torch.testing.assert_close(evaluated, trained)
    trained.backward(retain_graph=True)
    # The gradient is scaled in place by the first backward: a second is refused.
    with pytest.raises(RuntimeError, match="one backward"):
        trained.backward()
