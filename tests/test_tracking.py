"""The tracking sinks on their own (a tracked sweep end to end: tests/test_sweep.py)."""

from __future__ import annotations

from harness.sweep.tracking import MLflow, params_of


def test_a_diverged_trial_ends_as_a_failed_mlflow_run_a_complete_one_finished(tmp_path):
    from mlflow import MlflowClient

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    sink = MLflow(uri, "x")
    for trial_id, status in (("a", "complete"), ("b", "diverged"), ("c", "error"), ("d", "incomplete")):
        sink.start(trial_id, {"method": "legw"})
        sink.finish(trial_id, status, {})
    client = MlflowClient(tracking_uri=uri)
    runs = {r.info.run_name: r.info.status for r in client.search_runs([client.get_experiment_by_name("x").experiment_id])}
    assert runs == {"a": "FINISHED", "b": "FAILED", "c": "FAILED", "d": "KILLED"}


def test_params_are_the_resolved_recipe_of_every_arm():
    config = {"trial_id": "t", "trial": {"workload": "w", "optimizer": "sgd", "method": "goyal", "batch_size": 1024,
                                         "seed": 0, "recipe": {"peak_lr": 0.1, "decay": {"kind": "constant"}}}}
    resolved = {"peak_lr": 0.4, "realised_peak_lr": 0.4, "warmup_epochs": 5.0, "micro_batch_size": 256,
                "protocol_budget_steps": None}
    params = params_of(config, resolved)
    assert params["recipe.peak_lr"] == 0.1  # the spec's base LR, and the one the trial ran with
    assert params["peak_lr"] == 0.4 and params["warmup_epochs"] == 5.0 and params["micro_batch_size"] == 256
    assert "protocol_budget_steps" not in params and "recipe.decay" not in params
