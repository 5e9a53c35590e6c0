"""The records contract: one list of keys decides both what resumes and what the report averages."""

import json

import pytest
from runs import SMOKE, compose_config

from pruning_cli.records.contract import (
    NOT_EXPERIMENT_KEYS,
    REPEAT_KEYS,
    TrainingData,
    config_tree,
    experiment_settings,
    fingerprint,
    flatten,
)
from pruning_cli.report.collect import flat_config

HOW_IT_RUNS = ["compile=true", "deterministic=true", "device=cpu", "dataset.eval_batch_size=100", "resume=false"]


@pytest.mark.parametrize("override", HOW_IT_RUNS)
def test_how_a_run_is_executed_changes_neither_its_fingerprint_nor_its_report_group(override):
    base, other = compose_config(*SMOKE), compose_config(*SMOKE, override)
    assert fingerprint(other) == fingerprint(base)
    assert flat_config(config_tree(other)) == flat_config(config_tree(base))


def test_where_the_data_lives_changes_neither(tmp_path):
    base = compose_config("dataset=fashion_mnist")
    moved = compose_config("dataset=fashion_mnist", f"dataset.root={tmp_path}", "dataset.download=false")
    assert fingerprint(moved) == fingerprint(base)
    assert flat_config(config_tree(moved)) == flat_config(config_tree(base))


@pytest.mark.parametrize("override", ["seed=3", "train.checkpoint=/data/dense.pt"])
def test_a_repeat_resumes_apart_but_is_averaged_with_its_experiment(override):
    base, repeat = compose_config(*SMOKE), compose_config(*SMOKE, override)
    assert fingerprint(repeat) != fingerprint(base)
    assert flat_config(config_tree(repeat)) == flat_config(config_tree(base))


@pytest.mark.parametrize("override", ["retrain.epochs=3", "pruning.kept={fc1:0.1}", "dataset.val_split=64"])
def test_another_experiment_is_apart_for_both(override):
    base, other = compose_config(*SMOKE), compose_config(*SMOKE, override)
    assert fingerprint(other) != fingerprint(base)
    assert flat_config(config_tree(other)) != flat_config(config_tree(base))


def test_the_flat_settings_hold_every_schema_key_but_the_ignored_ones():
    flat = flatten(config_tree(compose_config(*SMOKE)))
    kept = experiment_settings(flat, repeats=False)
    assert set(flat) - set(kept) == {
        key for key in flat if any(key == k or key.startswith(f"{k}.") for k in NOT_EXPERIMENT_KEYS + REPEAT_KEYS)
    }
    assert {"device.name", "seed", "train.checkpoint", "dataset.eval_batch_size"} <= set(flat) - set(kept)
    assert kept["pruning.kept"] is None and kept["retrain.regularization"] == "l2"
    json.dumps(kept)  # plain values only


@pytest.mark.parametrize(
    ("trained", "validating", "overlaps"),
    [
        (TrainingData("mnist", 60_000, 0, 0), TrainingData("mnist", 60_000, 5_000, 0), True),  # trained on all
        (TrainingData("mnist", 60_000, 5_000, 0), TrainingData("mnist", 60_000, 5_000, 0), False),
        (TrainingData("mnist", 60_000, 10_000, 0), TrainingData("mnist", 60_000, 5_000, 0), False),  # held out more
        (TrainingData("mnist", 60_000, 1_000, 0), TrainingData("mnist", 60_000, 5_000, 0), True),  # held out fewer
        (TrainingData("mnist", 60_000, 5_000, 1), TrainingData("mnist", 60_000, 5_000, 0), True),  # another split
        (TrainingData("fashion_mnist", 60_000, 0, 0), TrainingData("mnist", 60_000, 5_000, 0), False),
    ],
)
def test_training_data_overlaps_a_validation_split_only_where_it_held_out_less(trained, validating, overlaps):
    assert trained.overlaps_validation_of(validating) is overlaps
