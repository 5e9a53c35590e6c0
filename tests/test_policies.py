"""Pruning policies against a small stand-in for the run (scripted weights and validation scores, milliseconds),
then through the real run: the compression target reached exactly, state that survives a kill, bad settings."""

import math
import signal
import subprocess
from dataclasses import fields, replace

import pandas as pd
import pytest
import torch
from runs import PRUNE_RUN, SMOKE, prune_run, run_in_process, without_wall_time
from test_robustness import _wait_for_retraining

from pruning_cli.cli import compose_config
from pruning_cli.config import Freeze
from pruning_cli.errors import UserError
from pruning_cli.plan import plan_run
from pruning_cli.policies import POLICIES, PolicyContext, Verdict, build_policy
from pruning_cli.policies.budgeted import AutoPruning, BudgetedSearch, Restart, next_compression
from pruning_cli.policies.global_magnitude import GlobalMagnitude, GlobalPruning
from pruning_cli.policies.gradual import GradualMagnitude, GradualPruning
from pruning_cli.policies.lamp import Lamp, LampPruning
from pruning_cli.pruning.paired import PairedDrop

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
    settings = GradualPruning(target=10, allocation="lamp", start=1, end=3, frequency=10)
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


BIG = {"fc1": 60_000, "fc2": 30_000, "fc3": 10_000}  # fine enough for a compression to 3 significant digits
IMAGES = 10_000


def _lost(compression: float) -> int:
    """The scripted frontier: nothing lost up to 16x, then 0.2% of the images per doubling."""
    return round(IMAGES * 0.002 * max(0.0, math.log2(compression / 16)))


def _predictions(masks) -> torch.Tensor:
    """The dense model gets the first 9,000 images right; a pruned one also gets 100 of the others right, and
    loses 100 of those plus its compression's share: 200 disagreements at least, as real models have."""
    kept = sum(int(mask.sum()) for mask in masks.values())
    right = torch.arange(IMAGES) < 9000
    if kept < sum(BIG.values()):
        right[: 100 + _lost(sum(BIG.values()) / kept)], right[9000:9100] = False, True
    return right


def _within(compression: float, settings: AutoPruning) -> bool:
    """The test's own verdict: the scripted predictions at `compression`, bounded as the search must."""
    drop = PairedDrop(IMAGES, 100 + _lost(compression), 100)
    return drop.upper_bound(settings.confidence) <= settings.budget / 100


def _search(search: BudgetedSearch, run: ScriptedRun, steps: int = 40, swap_at=None) -> list[tuple[float, Verdict]]:
    """Drive a search as PruningRun does: each candidate's masks fall during its retraining, then its verdict;
    a rollback restores the masks of the iteration named. At `swap_at` (iteration, step) the search is replaced by
    a new one given its state_dict, as a resumed run's is."""
    held, tried = {0: dict(run.masks)}, []
    for iteration in range(1, search.iterations + 1):
        step = search.prune(iteration, run)
        if step is None:
            break
        run.masks = step.masks
        for done in range(1, steps + 1):
            if (iteration, done) == swap_at:
                state, search = search.state_dict(), BudgetedSearch(search.config, search.context)
                search.load_state_dict(state)
            raised = search.during_retraining(iteration, done, steps, run)
            run.masks = run.masks if raised is None else raised
        held[iteration] = dict(run.masks)
        verdict = search.verdict(iteration, run)
        tried.append((sum(BIG.values()) / run.kept(), verdict))
        if verdict.rollback_to is not None:
            run.masks = held[verdict.rollback_to]
        if verdict.stop:
            break
    return tried


SEARCH = AutoPruning(budget=0.3, confidence=0.8, candidates=8, end=3, frequency=10)
FRONTIER = max(c for c in (16 * 2 ** (i / 1000) for i in range(1000)) if _within(c, SEARCH))  # the test's own scan


def test_the_search_pins_the_frontier_of_a_scripted_curve_in_the_candidates_it_is_given():
    """8x and 16x within the budget, 32x past it; then each failure halves the step from the last model kept, and
    each later model kept may try 32x again (it starts from more training). In exactly 8 candidates, each judged as
    the test judges it alone, the search keeps a compression within an eighth of an octave of the frontier."""
    run = ScriptedRun(_predictions, BIG)
    search = BudgetedSearch(SEARCH, _context(sizes=BIG))
    tried = _search(search, run)
    compressions = [round(compression, 2) for compression, _ in tried]
    assert len(tried) == 8 and compressions[:3] == [8, 16, 32]
    assert [verdict.rollback_to is None for _, verdict in tried] == [_within(c, SEARCH) for c, _ in tried]
    for (before, verdict), (after, _) in zip(tried, tried[1:], strict=False):
        assert after < before if verdict.rollback_to is not None else after > before  # back off, or go on
    assert len({round(sum(BIG.values()) / c) for c, _ in tried}) == 8  # no compression tried twice
    passed = max(c for c, verdict in tried if verdict.rollback_to is None)
    assert _within(passed, SEARCH) and FRONTIER / passed < 2 ** (1 / 8)
    assert run.kept() == round(sum(BIG.values()) / search.progress.passed)  # the run holds the highest within
    kept = max(i for i, (_, verdict) in enumerate(tried, 1) if verdict.rollback_to is None)
    assert tried[-1][1].stop and search.progress.kept == kept


def test_a_first_candidate_past_the_frontier_costs_candidates_not_the_result():
    """From 64x, past the budget, the search halves its way down to 8x, then grows again by `growth`."""
    run = ScriptedRun(_predictions, BIG)
    search = BudgetedSearch(replace(SEARCH, first=64), _context(sizes=BIG))
    tried = _search(search, run)
    assert [round(c) for c, _ in tried[:3]] == [64, 8, 16]
    assert FRONTIER / search.progress.passed < 2 ** (1 / 8)


def test_a_step_that_rounds_onto_the_cap_is_halved_not_the_end():
    """16 x 2^(1/4) x 2^(1/4) lands a rounding error below 16 x 2^(1/2), where a candidate failed: the same count of
    weights, so the search moves halfway back instead of stopping (1,700 weights are still between them)."""
    step = 2**0.25
    candidate = next_compression(16 * step, step, 16 * 2**0.5, [16 * 2**0.5], 266_200.0, 266_200)
    assert candidate == pytest.approx(16 * 2 ** (3 / 8))
    assert next_compression(20.0, 2.0, 20.0001, [20.0001], 266_200.0, 266_200) is None  # no weight left between


def test_from_the_dense_model_each_candidate_restarts_and_the_run_ends_on_the_best():
    settings = replace(SEARCH, restart=Restart.dense, candidates=5)
    run = ScriptedRun(_predictions, BIG)
    tried = _search(BudgetedSearch(settings, _context(sizes=BIG)), run)
    assert [verdict.rollback_to for _, verdict in tried[:-1]] == [0, 0, 0, 0]  # every next one from dense
    assert tried[-1][1].stop and run.kept() == round(sum(BIG.values()) / max(
        c for c, _ in tried if _within(c, settings)))  # fmt: skip


def test_a_candidates_verdict_does_not_depend_on_what_was_tried_before():
    """The fifth candidate of a search (after four others) and the same compression tried first: one verdict."""
    run = ScriptedRun(_predictions, BIG)
    tried = _search(BudgetedSearch(replace(SEARCH, candidates=5), _context(sizes=BIG)), run)
    fifth, verdict = tried[-1]
    alone = _search(BudgetedSearch(replace(SEARCH, candidates=1, first=fifth), _context(sizes=BIG)), ScriptedRun(
        _predictions, BIG))  # fmt: skip
    assert alone[0][0] == pytest.approx(fifth, rel=1e-4)
    assert (alone[0][1].rollback_to is None) == (verdict.rollback_to is None)


def test_a_search_stopped_mid_way_continues_from_its_state_dict():
    """Replaced by a new policy given its state in the middle of the fifth candidate's retraining (a resumed run),
    the search tries the same compressions and reaches the same verdicts."""
    uninterrupted = _search(BudgetedSearch(SEARCH, _context(sizes=BIG)), ScriptedRun(_predictions, BIG))
    resumed = _search(BudgetedSearch(SEARCH, _context(sizes=BIG)), ScriptedRun(_predictions, BIG), swap_at=(5, 17))
    assert resumed == uninterrupted and len(resumed) == 8


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
        (["pruning=gradual", "pruning.target=4", "pruning.allocation=random"], "pruning.allocation is random; choose"),
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
        (["pruning=lamp", "pruning.target=4", "retrain.distill.weight=2"], "retrain.distill.weight is 2.0; it must be"),
    ],
)
def test_bad_policy_settings_are_refused_in_one_line(overrides, expected):
    with pytest.raises(UserError) as refused:
        plan_run(compose_config(*overrides))
    assert str(refused.value).startswith(expected)


def test_an_unknown_policy_name_is_refused():
    with pytest.raises(ValueError, match="pruning.name=magic is no pruning policy; choose one of iterative, "):
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
    "dataset=synthetic", "dataset.num_train=2048", "dataset.num_test=512", "train.epochs=1", "retrain.epochs=3",
    "train.batch_size=32", "retrain.batch_size=32",
]  # fmt: skip
GRADUAL = [*LONG, "pruning=gradual", "pruning.target=10", "pruning.end=2", "pruning.frequency=8"]
AUTO = [*LONG, "pruning=auto", "dataset.val_split=256", "pruning.candidates=3", "pruning.end=2", "pruning.frequency=8"]


@pytest.mark.slow
@pytest.mark.parametrize(("overrides", "step"), [(GRADUAL, 2), (AUTO, 4)], ids=["gradual", "auto"])
def test_a_run_killed_mid_policy_resumes_to_the_uninterrupted_csvs(overrides, step, tmp_path):
    """Killed one epoch into a retraining (gradual: masks raised mid-schedule; auto: one iteration judged), then
    resumed: the policy's state comes back with the run's, and the CSVs are those of an uninterrupted run."""
    uninterrupted, killed = tmp_path / "uninterrupted", tmp_path / "killed"
    run_in_process(uninterrupted, *overrides)
    killed.mkdir()
    process = subprocess.Popen(
        [PRUNE_RUN, *overrides, f"hydra.run.dir={killed}"], cwd=killed, stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    _wait_for_retraining(killed, process, step=step)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert not (killed / "model.pt").exists()
    resumed = prune_run(*overrides, f"hydra.run.dir={killed}", cwd=killed)
    assert resumed.returncode == 0, resumed.stderr
    for name in ("metrics.csv", "layers.csv", "epochs.csv"):
        pd.testing.assert_frame_equal(without_wall_time(killed / name), without_wall_time(uninterrupted / name))
