"""Issue 14 in the trial loop: adversarial augmentation (DisAdv, ConAdv), decentralized workers
(simulated, and over Ray Train exchanging with neighbours only), sharpness; their specs, plans and
sweeps."""

from __future__ import annotations

import json
import math

import pytest
import torch

from harness.errors import SpecError
from harness.trial.sharpness import top_eigenvalue
from harness.spec import TrialSpec, load_spec
from harness.trial.loop import Trial
from tests.conftest import here
from tests.test_sweep import load, write_spec

MLP = {"workload": "mnist1d_mlp", "workload_options": {"n_train": 4000, "n_test": 500}, "optimizer": "momentum",
       "threads": 1, "method": "none", "micro_batch_cap": 64}


def trial_spec(**over) -> TrialSpec:
    return TrialSpec(**{**MLP, "batch_size": 256, "budget": {"examples": 256 * 6}, "eval": {"every_examples": 256 * 3},
                        **over}).check()


def flat(trial: Trial) -> torch.Tensor:
    return torch.cat([p.detach().flatten() for p in trial.params])


class Stop(Exception):
    pass


def resumed(spec: TrialSpec, at_step: int) -> Trial:
    """A trial stopped after ``at_step`` steps, checkpointed, and continued in a new Trial."""
    first = Trial(spec)

    def stop(t):
        if t.step == at_step:
            raise Stop

    with pytest.raises(Stop):
        first.run(on_step=stop)
    state = first.state_dict()  # before the next Trial reseeds torch's RNG
    second = Trial(spec)
    second.load_state_dict(state)
    return second


def same_row(a: dict, b: dict) -> bool:
    """Equal measurements (NaN equal to NaN), the clock aside."""
    keys = set(a) | set(b)
    return all((a[k] == b[k]) or (a[k] != a[k] and b[k] != b[k]) for k in keys - {"train_seconds"})


def test_a_conadv_trial_perturbs_at_the_previous_step_s_weights_and_reports_the_clean_loss():
    """Inside the trial loop: the clean loss is what is reported, the gradient adds the adversarial
    copies (so the update differs from a plain trial's), and ConAdv's attacker is w_{t-1}."""
    plain, con = Trial(trial_spec()), Trial(trial_spec(augment={"kind": "conadv", "eps": 0.1}))
    assert torch.equal(flat(plain), flat(con))
    weights = [flat(con).clone()]  # w_0, w_1, ...
    first = [plain._train_step(), con._train_step()]
    assert first[0] == pytest.approx(first[1], rel=1e-6)  # same weights, same batch: same clean loss
    assert not torch.allclose(flat(plain), flat(con))  # but not the same update
    for _ in range(2):
        weights.append(flat(con).clone())
        con._train_step()
    attacker = con.objective.adversary.previous  # what step t = 2 (from w_2) attacked with: w_1
    assert torch.equal(torch.cat([p.detach().flatten() for p in attacker.parameters()]), weights[1])


@pytest.mark.parametrize("augment", ["conadv", "disadv"])
def test_augmented_trials_resume_from_a_checkpoint_to_identical_measurements(augment):
    spec = trial_spec(augment={"kind": augment})
    whole = Trial(spec).run().measurements
    first = Trial(spec)
    for _ in range(4):
        first._train_step()
    assert same_row(resumed(spec, 4).run().measurements[-1], whole[-1])


@pytest.mark.parametrize("recipe", [{}, {"optimizer": {"name": "momentum", "weight_decay": 0.01,
                                                       "exclude_bias_and_norm": True}}])
def test_simulated_allreduce_workers_equal_one_process(recipe):
    """K simulated all-reduce workers take the mean of their shares' gradients: the plain update
    (weight decay included, where the optimizer leaves the biases out of it)."""
    plain = Trial(trial_spec(noise_scale=False, micro_batch_size=64, recipe=recipe))
    sim = Trial(trial_spec(data_parallel={"workers": 4, "simulate": True}, recipe=recipe))
    for _ in range(3):
        assert plain._train_step() == pytest.approx(sim._train_step(), rel=1e-5)
    rel = (flat(plain) - flat(sim)).norm() / flat(plain).norm()
    assert rel < 1e-5


@pytest.mark.parametrize("algorithm", ["dmsgd", "decentlam"])
def test_simulated_decentralized_trials_record_consensus_and_resume_exactly(algorithm):
    spec = trial_spec(data_parallel={"workers": 4, "simulate": True, "algorithm": algorithm, "topology": "ring"},
                      augment={"kind": "conadv"}, recipe={"peak_lr": 0.5})
    whole = Trial(spec).run()
    assert whole.summary["noise_scale"] is None and "decentralized" in whole.summary["noise_note"]
    assert all(r["consensus_distance"] > 0 for r in whole.measurements)
    assert whole.summary["dp_algorithm"] == algorithm and whole.summary["augment"] == "conadv"
    assert same_row(resumed(spec, 4).run().measurements[-1], whole.measurements[-1])


# slow (~24 s, Intel 2-core VM): real Ray, 4 Ray Train gloo workers on a ring, against the 4-worker simulation
@pytest.mark.slow
@pytest.mark.ray
def test_ray_train_workers_exchanging_with_neighbours_match_the_simulation(tmp_path, shared_ray):
    """4 Ray Train workers (gloo point-to-point on a ring) against 4 simulated workers: after 3
    steps the averaged model's evaluation, the training loss and the consensus distance agree
    within 1e-5."""
    from harness.trial.distributed import fit, trainer

    fields = trial_spec(data_parallel={"workers": 4, "algorithm": "decentlam"}, recipe={"peak_lr": 0.5},
                        budget={"examples": 256 * 3}).model_dump(mode="json")
    sim = Trial(TrialSpec.model_validate({**fields, "data_parallel": {**fields["data_parallel"], "simulate": True}}))
    expected = sim.run().measurements[-1]
    # the test process's Ray (2 CPUs on the 2-core VM): four workers of half a CPU each
    result = fit(trainer(fields, 4, 0.5, 0.0, "gossip", str(tmp_path)))
    assert result.error is None
    got = json.loads(result.metrics["measurements"])[-1]
    checkpoint = sorted(p.name for p in __import__("pathlib").Path(result.checkpoint.path).iterdir())
    assert got["step"] == expected["step"] == 3
    for key in ("train_loss", "eval_loss", "metric", "consensus_distance"):
        assert got[key] == pytest.approx(expected[key], rel=1e-5, abs=1e-9), key
    assert expected["consensus_distance"] > 0
    assert checkpoint == [f"trial-rank{r}.pt" for r in range(4)]  # every worker saved its own state


def test_the_neighbour_lists_of_a_ring_and_an_exponential_graph():
    from harness.trial.decentralized import mixing_matrix

    ring, expo = mixing_matrix("ring", 8), mixing_matrix("exponential", 8)
    assert [j for j in range(8) if j != 0 and ring[0, j] > 0] == [1, 7]
    assert [j for j in range(8) if j != 0 and expo[0, j] > 0] == [4, 6, 7]  # hears from 0-1, 0-2, 0-4 (mod 8)


def test_sharpness_is_the_top_hessian_eigenvalue():
    """A quadratic 1/2 x^T A x: the power iteration finds A's largest eigenvalue; a trial records it."""
    a = torch.diag(torch.tensor([5.0, 2.0, 0.5], dtype=torch.float64))
    x = torch.nn.Parameter(torch.tensor([1.0, -1.0, 2.0], dtype=torch.float64))
    value = top_eigenvalue(lambda c: 0.5 * x @ a @ x, [x], [((), 1.0)], iterations=100, tolerance=1e-10)
    assert value == pytest.approx(5.0, rel=1e-6)
    s = Trial(trial_spec(sharpness={"examples": 500, "iterations": 5})).run().summary
    assert s["sharpness"] is not None and s["sharpness"] > 0


@pytest.mark.parametrize("over, match", [
    ({"augment": {"kind": "conadv"}, "workload": "kjv_lstm_lm", "optimizer": "sgd", "workload_options": {}},
     r"augment.kind.*conadv.*allowed: none for kjv_lstm_lm.*token ids"),
    ({"optimizer": "adam", "data_parallel": {"workers": 4, "algorithm": "dmsgd"}},
     r"data_parallel.algorithm.*dmsgd.*optimizers sgd, momentum"),
    ({"data_parallel": {"workers": 1, "algorithm": "decentlam"}}, r"data_parallel.workers.*1.*2 or more"),
    ({"data_parallel": {"workers": 4, "algorithm": "gossip"}}, r"data_parallel.algorithm.*gossip"),
    ({"method": "adascale", "data_parallel": {"workers": 2, "simulate": True}}, r"adascale"),
    ({"data_parallel": {"workers": 1, "shards": "random"}}, r"data_parallel.shards.*random.*allowed: shared with one"),
    ({"data_parallel": {"workers": 2, "shards": "label"}, "workload": "kjv_lstm_lm", "optimizer": "sgd",
      "workload_options": {}}, r"data_parallel.shards.*label.*allowed: shared, random for kjv_lstm_lm"),
])
def test_bad_arms_are_refused_in_one_line(over, match):
    fields = {**MLP, "batch_size": 256, **over}
    with pytest.raises(SpecError, match=match) as e:
        load_spec(data=fields, kind="trial")
    assert "\n" not in str(e.value)


SWEEP = {"name": "arms", **{k: v for k, v in MLP.items() if k not in ("optimizer", "method", "threads")},
         "budget": {"epochs": 1}, "eval": {"per_epoch": 1},
         "axes": {"batch_sizes": [256, 1024], "methods": ["legw"], "optimizers": ["momentum"],
                  "augment": ["none", "conadv"]}}


def test_plan_names_every_arm(tmp_path):
    spec = write_spec(tmp_path, {**SWEEP, "data_parallel": {"workers": 4, "simulate": True},
                                 "axes": {**SWEEP["axes"], "augment": ["none"], "algorithm": ["allreduce", "dmsgd"]}})
    proc = here(["plan", spec])
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "trials: 4 = legw 2, legw:dmsgd 2;" in proc.stdout
    listing = here(["list"]).stdout
    for name in ("conadv", "disadv", "dmsgd", "decentlam", "exponential"):
        assert name in listing


# slow (~18 s, Intel 2-core VM): real Ray sweep of 8 trials (augment x algorithm x batch) on 4 simulated workers
@pytest.mark.slow
@pytest.mark.ray
def test_a_sweep_with_an_augment_axis_and_decentralized_trials(tmp_path, shared_ray):
    """axes.augment [none, conadv] x axes.algorithm [allreduce, decentlam] on 4 simulated workers:
    every arm runs, the store says which, and the report names the arms as series."""
    spec = write_spec(tmp_path, {**SWEEP, "data_parallel": {"workers": 4, "simulate": True},
                                 "axes": {**SWEEP["axes"], "algorithm": ["allreduce", "decentlam"]},
                                 "sharpness": {"examples": 256, "iterations": 3}})
    proc = here(["sweep", spec, "--results", tmp_path / "results", "--quiet"])
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    _, trials, measurements = load(tmp_path / "results" / "arms")
    assert len(trials) == 8 and (trials.status == "complete").all()
    arms = set(zip(trials.augment, trials.dp_algorithm))
    assert arms == {("none", "allreduce"), ("conadv", "allreduce"), ("none", "decentlam"), ("conadv", "decentlam")}
    assert trials.sharpness.notna().all()
    dec = measurements[measurements.trial_id.str.contains("decentlam")]
    assert (dec.consensus_distance > 0).all()
    summary = json.loads((tmp_path / "results" / "arms" / "report" / "summary.json").read_text())
    text = json.dumps(summary)
    for label in ("legw:conadv", "legw:decentlam", "legw:conadv:decentlam"):
        assert label in text
    assert not math.isnan(trials.final_metric.mean())


def test_combine_mean_halves_the_summed_loss_and_keeps_the_clean_loss_reported():
    from harness.trial.adversarial import Objective

    torch.manual_seed(0)
    model = torch.nn.Linear(5, 3)
    batch = (torch.randn(16, 5), torch.randint(0, 3, (16,)))
    loss_fn = lambda m, b: torch.nn.functional.cross_entropy(m(b[0]), b[1])  # noqa: E731
    summed, clean = Objective(loss_fn, "disadv", 0.1, "linf", "sum")(model, batch)
    mean, clean2 = Objective(loss_fn, "disadv", 0.1, "linf", "mean")(model, batch)
    assert torch.allclose(mean, summed / 2) and torch.equal(clean, clean2)
    assert torch.allclose(clean, loss_fn(model, batch)) and summed > 2 * clean  # the copies are harder


def test_a_sweep_stored_before_the_arms_existed_still_resumes_and_refuses_a_changed_arm():
    """Its sweep.json lacks augment, sharpness and data_parallel's new keys: they count as their
    defaults (how it ran), so a rerun is no conflict; turning an arm on is."""
    import copy

    from harness.errors import SweepConflict
    from harness.sweep.plan import growth

    new = load_spec("experiments/default.yaml", kind="sweep").model_dump(mode="json")
    old = copy.deepcopy(new)
    for key in ("augment", "sharpness"):
        old.pop(key)
    for key in ("algorithm", "topology", "simulate"):
        old["data_parallel"].pop(key)
    assert growth(old, new) == {}
    new["augment"]["kind"] = "conadv"
    with pytest.raises(SweepConflict, match="changed: augment.kind"):
        growth(old, new)


def test_label_and_random_shards_give_each_worker_its_own_data_and_resume_exactly():
    """``data_parallel.shards``: each worker's share of a step comes from its own fixed shard (by
    class for ``label``, at random for ``random``); the shards partition the training set; a trial
    resumes at the exact position of every worker's stream; heterogeneous shards drive the workers
    of DmSGD apart (the consensus distance grows) where shared data does not."""
    dp = {"workers": 4, "simulate": True, "algorithm": "dmsgd"}
    trials = {kind: Trial(trial_spec(data_parallel={**dp, "shards": kind}, recipe={"peak_lr": 0.5}))
              for kind in ("shared", "random", "label")}
    labels = trials["label"].data.train[-1]
    for kind in ("random", "label"):
        shards = trials[kind].stream.shards
        assert torch.equal(torch.sort(torch.cat(shards)).values, torch.arange(len(labels)))  # a partition
        idx = trials[kind].stream.take(256)
        for i, shard in enumerate(shards):
            assert torch.isin(idx[i * 64:(i + 1) * 64], shard).all()  # worker i reads its own shard only
    by_class = [set(labels[s].tolist()) for s in trials["label"].stream.shards]
    assert all(len(c) <= 4 for c in by_class) and set().union(*by_class) == set(range(10))  # ~10/4 classes each
    spec = trial_spec(data_parallel={**dp, "shards": "label"}, recipe={"peak_lr": 0.5})
    whole = Trial(spec).run().measurements
    assert same_row(resumed(spec, 4).run().measurements[-1], whole[-1])
    shared = Trial(trial_spec(data_parallel={**dp, "shards": "shared"}, recipe={"peak_lr": 0.5})).run().measurements
    assert whole[-1]["consensus_distance"] > 2 * shared[-1]["consensus_distance"]


def test_adversarial_augmentation_perturbs_the_pixels_of_a_uint8_image_workload():
    """Images held as uint8 (Fashion-MNIST) reach the attack as pixels in [0, 1]."""
    s = TrialSpec(workload="fmnist_cnn", workload_options={"train_examples": 512, "eval_examples": 256},
                  batch_size=128, method="none", threads=1, noise_scale=False, budget={"examples": 256},
                  augment={"kind": "conadv", "eps": 0.1}).check()
    con = Trial(s)
    plain = Trial(s.model_copy(update={"augment": s.augment.model_copy(update={"kind": "none"})}))
    assert con.run().status == "complete" and plain.run().status == "complete"
    assert not torch.allclose(flat(con), flat(plain))  # the adversarial copies changed the updates


def test_a_state_taken_between_a_step_and_its_evaluation_resumes_with_that_evaluation():
    """Stopped in on_step at step 3, whose evaluation is due (every 3 steps), and continued: the
    evaluation at step 3 is made, and every row equals the uninterrupted run's (the last ones
    too: the training loss averaged since the evaluation before)."""
    spec = trial_spec(noise_scale=False)
    whole = Trial(spec).run().measurements
    again = resumed(spec, 3).run().measurements
    assert [m["step"] for m in whole] == [m["step"] for m in again] == [3, 6]
    assert all(same_row(a, b) for a, b in zip(whole, again))
