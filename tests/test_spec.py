"""Spec validation: every bad input is exit code 2 with one line naming key, value and what is allowed."""

import pytest
import yaml

from harness.cli import main
from harness.errors import SpecError
from harness.spec import SweepSpec, TrialSpec, apply_overrides, load_spec


def write(tmp_path, data, name="spec.yaml"):
    path = tmp_path / name
    path.write_text(yaml.safe_dump(data))
    return path


BASE = {"workload": "fmnist_lstm", "batch_size": 1024, "method": "legw"}


@pytest.mark.parametrize("override,key,fragment", [
    ("colour=red", "colour", "allowed keys: workload"),
    ("budget.epoch=3", "budget.epoch", "allowed keys: epochs, examples"),
    ("batch_size=-4", "batch_size", "greater than 0"),
    ("batch_size=0", "batch_size", "greater than 0"),
    ("batch_size=abc", "batch_size", "integer"),
    ("micro_batch_size=300", "micro_batch_size", "a divisor of batch_size (1024)"),
    ("workload=imagenet", "workload", "fmnist_lstm"),
    ("method=cubic", "method", "legw"),
    ("optimizer=adamax", "optimizer", "lamb"),
    ("recipe.decay.kind=step", "recipe.decay", "'constant', 'poly'"),
    ("recipe.decay={kind: poly, powr: 2}", "recipe.decay.poly.powr", "allowed keys: kind, power, end_factor"),
    ("recipe.peak_lr=-1", "recipe.peak_lr", "greater than 0"),
    ("device=tpu", "device", "'auto', 'cpu' or 'cuda'"),
    ("target={metric: perplexity, value: 100}", "target.metric", "'accuracy'"),
    ("budget={epochs: 1, examples: 10}", "budget", "not both"),
    ("workload_options.hidden=3", "workload_options.hidden", "allowed keys: train_examples"),
])
def test_bad_trial_specs_exit_2_with_one_line(tmp_path, capsys, override, key, fragment):
    code = main(["schedule", str(write(tmp_path, BASE)), "--recipe-only", "--set", override])
    err = capsys.readouterr().err.strip()
    assert code == 2, err
    assert err.count("\n") == 0
    assert f"key '{key}'" in err and fragment in err
    assert err.startswith(f"batchscale: error: --set {override}: ")  # where the bad value came from


@pytest.mark.parametrize("override,key,fragment", [
    ("axes.batch_sizes=[256, -512]", "axes.batch_sizes.1", "greater than 0"),
    ("axes.methods=[legw, cubic]", "axes.methods[1]", "goyal"),
    ("axes.optimizers=[momentum, adamx]", "axes.optimizers[1]", "lars"),
    ("micro_batch_size=100", "micro_batch_size", "a divisor of axes.batch_sizes[0] (256)"),
    ("tuning.trials=0", "tuning.trials", "greater than 0"),
    ("resources.cpus=0", "resources.cpus", "greater than 0"),
    ("axes.batch_sizes=[true]", "axes.batch_sizes.0", "valid integer"),  # never coerced to B = 1
    ("axes.seeds=['1']", "axes.seeds.0", "valid integer"),
    ("axes.batch_sizes=[256, 512, 256]", "axes.batch_sizes", "each value once (repeated: 256)"),
    ("axes.methods=[legw, sqrt, legw]", "axes.methods", "each value once (repeated: legw)"),
    ("target={metric: accuracy, value: 1.5}", "target.value", "a value in (0, 1] (the range of accuracy)"),
])
def test_bad_sweep_specs(tmp_path, override, key, fragment):
    path = write(tmp_path, {"workload": "mnist1d_mlp", "axes": {"batch_sizes": [256, 512]}})
    with pytest.raises(SpecError) as e:
        load_spec(path, [override])
    assert e.value.key == key and fragment in str(e.value)


def test_yaml_syntax_error_names_the_line(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("workload: fmnist_lstm\nbatch_size: [1, 2\n")
    with pytest.raises(SpecError, match="not valid YAML at line"):
        load_spec(path)


def test_overrides_reach_nested_keys_and_parse_yaml_values():
    data = apply_overrides({"a": {"b": 1}}, ["a.b=2", "a.c.d=[1, 2]", "e=legw", "f=1e-3"])
    assert data == {"a": {"b": 2, "c": {"d": [1, 2]}}, "e": "legw", "f": 1e-3}
    with pytest.raises(SpecError, match="KEY=VALUE"):
        apply_overrides({}, ["novalue"])


def test_layers_workload_defaults_then_file_then_set(tmp_path):
    path = write(tmp_path, {**BASE, "recipe": {"peak_lr": 0.3, "epochs": 4}})
    spec = load_spec(path, ["recipe.epochs=2"])
    assert isinstance(spec, TrialSpec)
    base = spec.base_recipe()
    assert (base.peak_lr, base.epochs, base.base_batch_size) == (0.3, 2, 128)  # B0 from the workload


def test_trial_and_sweep_specs_are_told_apart(tmp_path):
    sweep = write(tmp_path, {"workload": "mnist1d_mlp", "axes": {}}, "sweep.yaml")
    assert isinstance(load_spec(sweep), SweepSpec) and load_spec(sweep).name == "sweep"
    with pytest.raises(SpecError, match="batchscale sweep"):
        load_spec(sweep, kind="trial")
    with pytest.raises(SpecError, match="batchscale train"):
        load_spec(write(tmp_path, BASE), kind="sweep")


def test_sweep_expands_its_grid_into_trial_specs():
    spec = load_spec("experiments/default.yaml")
    cells = spec.grid()
    assert len(cells) == len(spec.optimizers()) * len(spec.axes.methods) * len(spec.axes.batch_sizes) * len(spec.axes.seeds)
    opt, method, batch, seed = cells[-1]
    t = spec.trial_spec(opt, method, batch, seed)
    assert (t.batch_size, t.method, t.threads, t.workload) == (batch, method, spec.resources.cpus, spec.workload)


def test_missing_spec_file_is_an_error_not_a_traceback(capsys):
    assert main(["train", "no/such/spec.yaml"]) == 1
    assert "spec file not found: no/such/spec.yaml" in capsys.readouterr().err


def test_recipe_overrides_replace_a_decay_of_another_kind():
    spec = load_spec(data={**BASE, "recipe": {"decay": {"kind": "cosine"}}})
    assert spec.base_recipe().decay.kind == "cosine"
    spec = load_spec(data={**BASE, "recipe": {"decay": {"power": 3}}})
    assert (spec.base_recipe().decay.kind, spec.base_recipe().decay.power) == ("poly", 3)


def test_errors_name_where_the_bad_value_came_from_and_guess_the_name_meant(tmp_path, capsys):
    """A key set by --set names that --set, not the file; a misspelt key, method, optimizer or
    workload gets a "did you mean"; an automatic method in a schedule says why it has none."""
    path = write(tmp_path, {"workload": "fmnist_lstm", "batchsize": 512})
    with pytest.raises(SpecError, match=r"spec\.yaml: key 'batchsize'.*did you mean 'batch_size'\?"):
        load_spec(path)
    path = write(tmp_path, {"workload": "fmnist_lstm", "batch_size": 512})
    cases = [(["method=LEGW"], r"^--set method=LEGW: key 'method'.*\(did you mean 'legw'\?\)"),
             (["optimizer=lrs"], r"^--set optimizer=lrs: key 'optimizer'.*\(did you mean 'lars'\?\)"),
             (["seed=1", "workload=fmnist_lsmt"], r"^--set workload=fmnist_lsmt: .*did you mean 'fmnist_lstm'"),
             (["budget.epochs=-1"], r"^--set budget.epochs=-1: key 'budget.epochs'")]
    for overrides, pattern in cases:
        with pytest.raises(SpecError, match=pattern):
            load_spec(path, overrides)
    assert main(["schedule", str(path), "--set", "method=tuned", "--set", "peak_lr=0.1"]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "'tuned' decides its LR while training" in err and "run it in a sweep" in err, err
    assert main(["schedule", str(path), "--plot", str(tmp_path / "lr.txt")]) == 2
    err = capsys.readouterr().err.strip()
    assert "key '--plot'" in err and ".png, .svg or .pdf" in err and not (tmp_path / "lr.txt").exists()
