"""The context-dependence report separates a popularity model from one that reads the prompt."""

import torch

from benchmarks.context_dependence import context_report


def test_identical_distributions_have_zero_kl():
    log_probs = torch.log_softmax(torch.tensor([[2.0, 1.0, 0.0]]).repeat(4, 1), dim=-1)  # every user alike
    report = context_report(log_probs, log_probs, torch.tensor([0, 1, 2, 0]))

    assert abs(report["kl_user_vs_mean"]) < 1e-6
    assert report["distinct_argmax"] == 1
    assert abs(report["target_logp_own_prompt"] - report["target_logp_mean_distribution"]) < 1e-6


def test_personal_distributions_favour_the_target():
    targets = torch.tensor([0, 1, 2])
    own = torch.log_softmax(torch.eye(3) * 5.0, dim=-1)  # each user puts its mass on its own target
    shuffled = own[[1, 2, 0]]
    report = context_report(own, shuffled, targets)

    assert report["kl_user_vs_mean"] > 0.5
    assert report["distinct_argmax"] == 3
    assert report["target_logp_own_prompt"] > report["target_logp_mean_distribution"]
    assert report["target_logp_own_prompt"] > report["target_logp_other_history"]
