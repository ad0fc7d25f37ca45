"""Balanced accuracy of a discriminator's held-out messages (dial.evaluation.intervals)."""

import numpy as np
import pandas as pd
import pytest

from dial.evaluation.intervals import discriminator_balanced_accuracy


def scores(real_sessions: dict[str, list[float]], simulated_sessions: dict[str, list[float]]) -> pd.DataFrame:
    rows = []
    for is_real, sessions in ((True, real_sessions), (False, simulated_sessions)):
        for session_id, logits in sessions.items():
            rows += [{"session_id": session_id, "is_real": is_real, "status": "scored", "logit": logit} for logit in logits]
    return pd.DataFrame(rows)


def test_a_constant_guess_scores_half_whatever_the_class_sizes():
    # 30 real messages, 10 simulated, "always real": plain accuracy 0.75, balanced 0.5.
    frame = scores({f"r{i}": [1.0] * 5 for i in range(6)}, {f"s{i}": [1.0] * 2 for i in range(5)})
    values, draws = discriminator_balanced_accuracy(frame, 200, 0, "sft")
    assert (frame["logit"] >= 0).eq(frame["is_real"]).mean() == 0.75
    assert values["balanced_accuracy"] == 0.5
    assert (values["accuracy_real"], values["accuracy_simulated"]) == (1.0, 0.0)
    assert values["balanced_accuracy_ci_low"] == values["balanced_accuracy_ci_high"] == 0.5  # no session varies
    assert draws.shape == (200,)


def test_balanced_accuracy_is_the_mean_of_the_class_accuracies_with_a_session_bootstrap_interval():
    real = {"r1": [1.0, 1.0, -1.0], "r2": [1.0], "r3": [-1.0, -1.0]}  # 3 of 6 right
    simulated = {"s1": [-1.0, -1.0], "s2": [1.0], "s3": [-1.0]}  # 3 of 4 right
    frame = scores(real, simulated)
    frame.loc[len(frame)] = {"session_id": "s3", "is_real": False, "status": "over_max_tokens", "logit": np.nan}  # not scored
    values, draws = discriminator_balanced_accuracy(frame, 1000, 0, "sft")
    assert values["balanced_accuracy"] == pytest.approx((3 / 6 + 3 / 4) / 2)
    assert values["balanced_accuracy_ci_low"] < values["balanced_accuracy"] < values["balanced_accuracy_ci_high"]
    again, _ = discriminator_balanced_accuracy(frame, 1000, 0, "sft")
    assert again == values  # seeded


def test_without_both_classes_there_is_no_balanced_accuracy():
    assert discriminator_balanced_accuracy(scores({"r1": [1.0]}, {}), 100, 0, "sft") is None


def test_a_weighted_discriminator_accuracy_gets_its_wilson_interval_from_the_effective_size():
    from dial.evaluation import intervals, stats

    weighted = {"accuracy": 0.6, "n": 40, "n_effective": 25.0}
    unweighted = {"accuracy": 0.6, "n": 40}
    intervals._wilson(weighted, "accuracy")
    intervals._wilson(unweighted, "accuracy")
    assert (weighted["accuracy_ci_low"], weighted["accuracy_ci_high"]) == pytest.approx(stats.wilson_interval(15.0, 25.0))
    assert (unweighted["accuracy_ci_low"], unweighted["accuracy_ci_high"]) == pytest.approx(stats.wilson_interval(24, 40))
    assert weighted["accuracy_ci_high"] - weighted["accuracy_ci_low"] > unweighted["accuracy_ci_high"] - unweighted["accuracy_ci_low"]
