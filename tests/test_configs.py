"""The shipped configs compose, and the paper recipes pin the paper's compression."""

import pytest
from hydra import compose, initialize_config_module
from omegaconf import OmegaConf

from pruning_cli.cli import register_configs
from pruning_cli.config import RunConfig, StdSource
from pruning_cli.models import get_model_spec


def compose_run(*overrides: str) -> RunConfig:
    register_configs()
    with initialize_config_module(config_module="pruning_cli.configs", version_base="1.3"):
        return OmegaConf.to_object(compose(config_name="config", overrides=list(overrides)))


@pytest.mark.parametrize(("experiment", "model"), [("lenet300_paper", "lenet300"), ("lenet5_paper", "lenet5")])
def test_paper_recipes_reach_12x_by_construction(experiment, model):
    config = compose_run(f"experiment={experiment}")
    assert config.model.name == model and config.pruning.iterations >= 3
    assert config.retrain.lr == pytest.approx(config.train.lr / 10)  # the paper's 1/10 for LeNets
    spec = get_model_spec(model)
    net = spec.build(10)
    layers = spec.prunable(net)
    assert set(config.pruning.kept) == set(layers)
    total = sum(p.numel() for p in net.parameters())
    kept = sum(round(config.pruning.kept[name] * layer.weight.numel()) for name, layer in layers.items())
    assert total / (kept + total - sum(layer.weight.numel() for layer in layers.values())) >= 12


def test_defaults_and_typed_values():
    config = compose_run("pruning.sensitivity=1.2", "pruning=oneshot", "pruning.std=dense")
    assert config.pruning.iterations == 1 and config.pruning.sensitivity == 1.2
    assert config.pruning.std is StdSource.dense
    assert config.device.name == "auto" and config.dataset.name == "mnist"


def compose_launcher(name: str):
    register_configs()
    with initialize_config_module(config_module="pruning_cli.configs", version_base="1.3"):
        return compose(config_name="config", overrides=[f"hydra/launcher={name}"], return_hydra_config=True).hydra


def test_slurm_launcher_composes_with_submitit():
    launcher = compose_launcher("slurm").launcher
    assert launcher._target_ == "hydra_plugins.hydra_submitit_launcher.submitit_launcher.SlurmLauncher"
    assert (launcher.gpus_per_node, launcher.cpus_per_task, launcher.timeout_min) == (1, 8, 240)


def test_local_parallel_launcher_composes_with_joblib():
    launcher = compose_launcher("local_parallel").launcher
    assert launcher._target_ == "hydra_plugins.hydra_joblib_launcher.joblib_launcher.JoblibLauncher"
    assert launcher.n_jobs == 2
