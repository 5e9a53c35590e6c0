"""Pruning policies against a small stand-in for the run (scripted weights and validation scores, milliseconds),
then through the real run: the compression target reached exactly, state that survives a kill, bad settings."""

import math
from dataclasses import fields

import pandas as pd
import pytest
import torch
from runs import SMOKE, compose_config, run_in_process, without_wall_time

from pruning_cli.config.schema import Freeze
from pruning_cli.errors import UserError
from pruning_cli.models import get_model_spec
from pruning_cli.policies import POLICIES, PolicyContext, Verdict, build_policy
from pruning_cli.policies import gradual as gradual_module
from pruning_cli.policies.global_magnitude import GlobalMagnitude, GlobalPruning
from pruning_cli.policies.gradual import GradualMagnitude, GradualPruning
from pruning_cli.policies.lamp import Lamp, LampPruning
from pruning_cli.run.plan import plan_run
from pruning_cli.run.pruning_run import run
from pruning_cli.training.loop import StopRequested

SIZES = {"fc1": 600, "fc2": 300, "fc3": 100}


class ScriptedRun:
    """A stand-in for PruningRun as a policy sees it: fixed weights, masks the test sets, and validation predictions
    that a script makes from the masks (no model, no data)."""

    def __init__(self, correct=lambda masks: torch.ones(10, dtype=torch.bool), sizes=SIZES, seed: int = 0) -> None:
        generator = torch.Generator().manual_seed(seed)
        self.weights = {name: torch.randn(size, generator=generator) for name, size in sizes.items()}
        self.masks = {name: torch.ones(size, dtype=torch.bool) for name, size in sizes.items()}
        self.correct, self.evaluations = correct, 0

    def validation_correct(self):
        self.evaluations += 1
        return self.correct(self.masks)

    def kept(self) -> int:
        return sum(int(mask.sum()) for mask in self.masks.values())


def _context(epochs: int = 4, sizes=SIZES) -> PolicyContext:
    return PolicyContext("lenet300", dict.fromkeys(sizes, "fc"), dict(sizes), Freeze.none, epochs, True)


@pytest.mark.parametrize(("policy", "settings"), [(GlobalMagnitude, GlobalPruning), (Lamp, LampPruning)])
def test_a_cut_policy_walks_geometrically_to_its_target_exactly(policy, settings):
    run, chosen = ScriptedRun(), policy(settings(target=12.5, iterations=3), _context())
    counts = []
    for iteration in (1, 2, 3):
        step = chosen.prune(iteration, run)
        assert all(bool((step.masks[name] <= run.masks[name]).all()) for name in SIZES)  # masks only shrink
        run.masks = step.masks
        counts.append(run.kept())
        assert chosen.verdict(iteration, run) == Verdict()  # no search: every retrained model is kept
    assert counts == [round(1000 * 12.5 ** (-i / 3)) for i in (1, 2, 3)] and counts[-1] == 80
    records = chosen.prune(3, run).records
    assert records["fc1"].kept == int(run.masks["fc1"].sum()) and records["fc1"].threshold > 0


def test_the_global_floor_keeps_every_layer():
    run = ScriptedRun()
    run.weights["fc3"] = run.weights["fc3"] * 1e-3  # the smallest layer would be cut off by one global threshold
    bare = GlobalMagnitude(GlobalPruning(target=10, iterations=1, min_kept=0.0), _context()).prune(1, run)
    floored = GlobalMagnitude(GlobalPruning(target=10, iterations=1, min_kept=0.05), _context()).prune(1, run)
    assert int(bare.masks["fc3"].sum()) == 0 and int(floored.masks["fc3"].sum()) == 5
    assert sum(int(mask.sum()) for mask in floored.masks.values()) == 100


def test_gradual_raises_sparsity_on_the_cubic_schedule_and_ends_at_the_target():
    settings = GradualPruning(target=10, scoring="lamp", start=1, end=3, frequency=10)
    run, gradual = ScriptedRun(), GradualMagnitude(settings, _context(epochs=4))
    run.masks = gradual.prune(1, run).masks
    assert run.kept() == 1000  # nothing before the phase starts
    steps, kept = 400, {}  # 100 steps an epoch: pruning from step 100 to step 300, every 10 steps
    for step in range(1, steps + 1):
        masks = gradual.during_retraining(1, step, steps, run)
        if masks is not None:
            run.masks, kept[step] = masks, sum(int(mask.sum()) for mask in masks.values())
    # The raise at step 100 is to sparsity 0, and at step 290 the schedule already rounds to the final 100 weights
    # (0.9 x (1 - 0.05^3) of 1,000 pruned): no step re-cuts masks that already hold the count asked for.
    assert list(kept) == list(range(110, 291, 10))
    assert kept[110] == round(1000 * (1 - 0.9 * (1 - (1 - 10 / 200) ** 3)))
    assert kept[290] == 100 and run.kept() == 100


@pytest.mark.parametrize("model", ["lenet300", "lenet5"])
def test_gradual_ends_on_the_count_every_other_policy_gives_for_each_integer_target(model, monkeypatch):
    """At the schedule's last point gradual keeps round(total / target), as check_target and the cut policies do:
    1 - (1 - 1/target) in floats is not 1/target, and the count was one weight off at 80 and 176 on LeNet-300-100
    (80: 3,327 of 266,200 instead of 3,328) and at 24, 40, 120 and 200 on LeNet-5."""
    sizes = get_model_spec(model).layer_sizes()  # LeNet-300-100: 266,200 prunable weights; LeNet-5: 430,500
    total, asked = sum(sizes.values()), []

    def count_only(allocation, weights, masks, keep, *settings):
        asked.append(keep)
        return dict(masks)

    monkeypatch.setattr(gradual_module, "allocate", count_only)
    run, context = ScriptedRun(sizes=sizes), _context(sizes=sizes)
    for target in range(2, 201):  # 400 steps of 4 epochs: pruning.end=3 is step 300, the last raise
        GradualMagnitude(GradualPruning(target=target, min_kept=0.0), context).during_retraining(1, 400, 400, run)
    assert asked == [round(total / target) for target in range(2, 201)]


def test_gradual_to_80_on_lenet300_keeps_3328_weights():
    sizes = get_model_spec("lenet300").layer_sizes()
    run, context = ScriptedRun(sizes=sizes), _context(sizes=sizes)
    masks = GradualMagnitude(GradualPruning(target=80), context).during_retraining(1, 300, 400, run)
    assert sum(int(mask.sum()) for mask in masks.values()) == 3328  # round(266,200 / 80) = round(3327.5)


def test_every_policy_has_a_yaml_and_composes_with_its_own_schema():
    for name, policy in POLICIES.items():
        target = ["pruning.target=4"] if "target" in {field.name for field in fields(policy.settings)} else []
        config = compose_config(f"pruning={name}", *target)
        assert type(config.pruning) is policy.settings and config.pruning.name == name


@pytest.mark.parametrize("target", ["0", "-3", "0.5", "266201", "nan", "inf"])
def test_a_bad_target_is_refused_in_one_line(target):
    with pytest.raises(UserError) as refused:
        plan_run(compose_config("pruning=global", f"pruning.target={target}"))
    message = str(refused.value)
    assert "\n" not in message and message.startswith(f"pruning.target is {float(target)}; it must be ")
    if (
        math.isfinite(float(target)) and float(target) > 1
    ):  # in range for the schema (>= 1, finite), beyond what the model's weights allow
        assert message.endswith("and 266,200 (one weight of the 266,200 prunable weights of model=lenet300 left), "
                                "e.g. pruning.target=12")  # fmt: skip
    else:
        assert message == f"pruning.target is {float(target)}; it must be >= 1"


@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        (["pruning=gradual", "pruning.target=4", "pruning.sharing=random"], "pruning.sharing is random; choose"),
        (["pruning=gradual", "pruning.target=4", "pruning.scoring=random"], "pruning.scoring is random; choose"),
        (
            ["pruning=gradual", "pruning.target=4", "pruning.end=9"],
            "pruning.start is 0.0 and pruning.end 9.0: pruning ",
        ),
        (["pruning=global", "pruning.target=4", "pruning.min_kept=2"], "pruning.min_kept is 2.0; it must be in [0, 1]"),
        (
            ["pruning=global", "pruning.target=200"],  # the default floor, 1% of each layer, keeps 2,662 weights
            "pruning.min_kept=0.01 keeps at least 2,662 weights of model=lenet300, more than the 1,331 that pruning.",
        ),
        (["pruning=gradual", "pruning.target=50", "pruning.min_kept=0.05"], "pruning.min_kept=0.05 keeps at least"),
        (  # 266,200 / 200,000 keeps 1 weight of 3 layers: LAMP would empty two, found only after training
            ["pruning=lamp", "pruning.target=200000"],
            "LAMP keeps at least one weight of each layer (3 of model=lenet300), more than the 1 that pruning.target "
            "leaves: lower pruning.target",
        ),
        (
            ["pruning=gradual", "pruning.scoring=lamp", "pruning.min_kept=0", "pruning.target=200000"],
            "LAMP keeps at least one weight of each layer (3 of model=lenet300), more than the 1 that pruning.target ",
        ),
        (["pruning=lamp", "pruning.target=4", "retrain.distill.weight=2"], "retrain.distill.weight is 2.0; it must be"),
    ],
)
def test_bad_policy_settings_are_refused_in_one_line(overrides, expected):
    with pytest.raises(UserError) as refused:
        plan_run(compose_config(*overrides))
    assert str(refused.value).startswith(expected)


def test_an_unknown_policy_name_is_refused():
    with pytest.raises(
        ValueError,
        match="pruning.name=magic is no pruning policy; choose one of auto, global, gradual, iterative, lamp, oneshot, "
        "random$",
    ):
        build_policy(GlobalPruning(name="magic", target=2), _context())


@pytest.mark.parametrize("policy", ["global", "lamp", "gradual"])
def test_each_method_reaches_its_target_in_a_real_run(policy, tmp_path):
    schedule = ["pruning.end=1"] if policy == "gradual" else ["pruning.iterations=2"]
    metrics = run_in_process(tmp_path, *SMOKE, f"pruning={policy}", "pruning.target=8", *schedule)
    layers = pd.read_csv(tmp_path / "layers.csv")
    final = layers[(layers.iteration == metrics.iteration.max()) & (layers.phase == "retrain")]
    assert final.weights_nonzero.sum() == round(final.weights_total.sum() / 8)
    state = torch.load(tmp_path / "model.pt", weights_only=True)
    assert sum(int(torch.count_nonzero(state[f"{name}.weight"])) for name in final.layer) == final.weights_nonzero.sum()
    assert metrics.iloc[-1].phase == "retrain" and metrics.iloc[-1].top1 > 0.5


def test_distillation_changes_retraining_and_needs_no_test_data(tmp_path):
    plain = run_in_process(tmp_path / "plain", *SMOKE, "pruning=global", "pruning.target=4", "pruning.iterations=1")
    taught = run_in_process(
        tmp_path / "taught", *SMOKE, "pruning=global", "pruning.target=4", "pruning.iterations=1",
        "retrain.distill.weight=0.5",
    )  # fmt: skip
    assert taught.iloc[:2].equals(plain.iloc[:2].assign(seconds=taught.seconds.iloc[:2]))  # same dense model and cut
    assert taught.train_loss.iloc[-1] != plain.train_loss.iloc[-1]  # the teacher's soft targets enter the loss
    assert math.isfinite(taught.top1.iloc[-1]) and taught.params_nonzero.iloc[-1] == plain.params_nonzero.iloc[-1]


LONG = [
    "dataset=synthetic", "dataset.num_train=768", "dataset.num_test=128", "train.epochs=1", "retrain.epochs=3",
    "train.batch_size=32", "retrain.batch_size=32",
]  # fmt: skip
GRADUAL = [*LONG, "pruning=gradual", "pruning.target=10", "pruning.end=2", "pruning.frequency=8"]
AUTO = [*LONG, "pruning=auto", "dataset.val_split=256", "pruning.max_steps=3", "pruning.end=2", "pruning.frequency=8"]


@pytest.mark.parametrize(("overrides", "iteration"), [(GRADUAL, 1), (AUTO, 2)], ids=["gradual", "auto"])
def test_a_run_stopped_mid_policy_resumes_to_the_uninterrupted_csvs(overrides, iteration, tmp_path):
    """Stopped one epoch into a retraining (gradual: masks raised mid-schedule; auto: one walk step judged), then
    resumed: the policy's state comes back with the run's, and the CSVs are those of an uninterrupted run. (A
    process killed without warning resumes from the same files: test_robustness.py.)"""
    uninterrupted, stopped = tmp_path / "uninterrupted", tmp_path / "stopped"
    run_in_process(uninterrupted, *overrides)

    def one_epoch_into_the_retraining() -> bool:
        epochs = stopped / "epochs.csv"
        rows = pd.read_csv(epochs) if epochs.is_file() else pd.DataFrame()
        return not rows.empty and tuple(rows.iloc[-1][["iteration", "phase", "epoch"]]) == (iteration, "retrain", 1)

    with pytest.raises(StopRequested):
        run(compose_config(*overrides), stopped, stop_requested=one_epoch_into_the_retraining)
    assert not (stopped / "model.pt").exists()
    run(compose_config(*overrides), stopped)
    for name in ("metrics.csv", "layers.csv", "epochs.csv"):
        pd.testing.assert_frame_equal(without_wall_time(stopped / name), without_wall_time(uninterrupted / name))
