"""The default-model rule: the best reader of drawings within the serving budget."""
import pytest

from model.network import architecture_spec
from model.selection import choose_default, forward_mflop


def meta(version: str, arch: str, drawn: float, val: float, nll: float = 0.02, members: int = 0) -> dict:
    spec = architecture_spec(arch)
    if members:
        spec = {"name": "ensemble", "members": [spec] * members}
    return {"version": version, "architecture": spec, "calibration": {"nll_before": nll},
            "metrics": {"drawn_accuracy": drawn, "val_accuracy": val}}


def test_forward_cost_counts_each_product_of_the_cnn_by_hand():
    conv1 = 2 * 5 * 5 * 1 * 32 * 28 * 28
    conv2 = 2 * 5 * 5 * 32 * 64 * 14 * 14
    dense = 2 * 3136 * 256 + 2 * 256 * 10
    assert forward_mflop(architecture_spec("cnn")) == pytest.approx((conv1 + conv2 + dense) / 1e6)
    assert forward_mflop(architecture_spec("seed")) == pytest.approx(2 * (784 * 1024 + 1024 * 10) / 1e6)


def test_strided_and_valid_convolutions_shrink_the_maps_they_cost():
    # cnn_deep: 28 -> 26 -> 24 -> 12 (5x5, stride 2, same) -> 10 -> 8 -> 4 -> 1 (4x4 valid)
    expected = 2 * (9 * 1 * 32 * 26 ** 2 + 9 * 32 * 32 * 24 ** 2 + 25 * 32 * 32 * 12 ** 2
                    + 9 * 32 * 64 * 10 ** 2 + 9 * 64 * 64 * 8 ** 2 + 25 * 64 * 64 * 4 ** 2
                    + 16 * 64 * 128 * 1 + 128 * 10)
    assert forward_mflop(architecture_spec("cnn_deep")) == pytest.approx(expected / 1e6)


def test_an_ensemble_costs_its_members_together():
    one = forward_mflop(architecture_spec("cnn"))
    assert forward_mflop(meta("e", "cnn", 0.9, 0.9, members=4)["architecture"]) == pytest.approx(4 * one)


def test_the_rule_takes_the_best_drawn_reader_that_fits_the_budget():
    models = [meta("seed", "seed", 0.97, 0.99), meta("cnn", "cnn", 0.98, 0.995),
              meta("ensemble", "cnn", 0.99, 0.997, members=4)]
    assert choose_default(models)["version"] == "cnn"  # the ensemble reads better but costs 4 cnns
    assert choose_default(models, budget_mflop=1000)["version"] == "ensemble"
    assert choose_default(models, budget_mflop=5)["version"] == "seed"
    with pytest.raises(ValueError, match="no model fits the serving budget of 1 MFLOP"):
        choose_default(models, budget_mflop=1)


def test_ties_on_drawings_go_to_validation_accuracy_then_to_validation_log_loss():
    a, b = meta("a", "cnn", 0.98, 0.995, nll=0.015), meta("b", "mlp", 0.98, 0.994, nll=0.010)
    assert choose_default([b, a])["version"] == "a"
    c = meta("c", "cnn", 0.98, 0.995, nll=0.014)
    assert choose_default([a, c])["version"] == "c"
