"""Workloads for the sweep tests, registered through BATCHSCALE_WORKLOAD_MODULES=tests.plugins."""

from harness.workloads.mnist1d import Mnist1dMLP, Mnist1dOptions


class FlakyMnist1d(Mnist1dMLP):
    """MNIST-1D whose training raises at one (micro-)batch size: a trial that errors, for the
    retry-then-record path; the other trials of the sweep must not be affected."""

    name = "flaky_mnist1d"
    failing_batch_size = 512
    cpu_micro_batch_cap = 4096  # a step is one micro-batch, so the failing size is the batch size

    def loss(self, model, batch):
        if len(batch[0]) == self.failing_batch_size:
            raise RuntimeError("injected failure at batch size 512")
        return super().loss(model, batch)


import torch  # noqa: E402
from pydantic import BaseModel, ConfigDict  # noqa: E402

from harness.workloads import Dataset, Workload  # noqa: E402


class LinRegOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")
    d: int = 16
    noise_std: float = 1.0
    error_norm: float = 1.0
    n: int = 2**18


class LinearRegression(Workload):
    """y = w*.x + n, x ~ N(0, I_d), n ~ N(0, s^2), loss 1/2 (w.x - y)^2, weights w* + e with |e| fixed.

    Its per-example gradient (e.x - n) x has mean e and covariance trace (d+1)|e|^2 + d s^2, so
    B_simple = d (1 + s^2/|e|^2) + 1 exactly (McCandlish et al. 2018, appendix).
    """

    name = "linreg"
    summary = "linear regression with Gaussian inputs (exact noise scale)"
    metric = "mse"
    higher_is_better = False
    default_optimizer = "sgd"
    Options = LinRegOptions
    cpu_micro_batch_cap = 4096
    base_recipes = {"sgd": dict(base_batch_size=64, peak_lr=1e-12, epochs=1, optimizer={"name": "sgd"})}
    recipe_source = "test"

    def expected_noise_scale(self) -> float:
        o = self.options
        return o.d * (1 + o.noise_std**2 / o.error_norm**2) + 1

    def _load(self) -> Dataset:
        o = self.options
        g = torch.Generator().manual_seed(0)
        x = torch.randn(o.n, o.d, generator=g, dtype=torch.float64)
        w_star = torch.randn(o.d, generator=g, dtype=torch.float64)
        y = x @ w_star + o.noise_std * torch.randn(o.n, generator=g, dtype=torch.float64)
        return Dataset((x, y), (x[:1000], y[:1000]), {"w_star": w_star})

    def build_model(self):
        o = self.options
        model = torch.nn.Linear(o.d, 1, bias=False).double()
        w_star = self.load().info["w_star"]
        e = torch.randn(o.d, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
        with torch.no_grad():
            model.weight.copy_((w_star + o.error_norm * e / e.norm()).unsqueeze(0))
        return model

    def loss(self, model, batch):
        x, y = batch
        return 0.5 * (model(x).squeeze(1) - y).square().mean()

    def eval_sums(self, model, batch):
        x, y = batch
        se = (model(x).squeeze(1) - y).square().sum().item()
        return se, se, len(y)

    def finish_eval(self, loss_sum, metric_sum, count):
        return loss_sum / count, metric_sum / count


from harness.workloads.synthetic import TeacherOptions, TeacherRegression  # noqa: E402


class BarrierOptions(TeacherOptions):
    barrier_dir: str = ""
    parties: int = 1


class BarrierRegression(TeacherRegression):
    """The teacher regression whose trials each wait, when they build their model, until ``parties``
    trials have: a sweep finishes only if that many ran at once (else the wait times out and the
    trials error). Tests concurrency without timing luck."""

    name = "barrier_regression"
    Options = BarrierOptions

    def build_model(self):
        import os
        import time
        import uuid
        from pathlib import Path

        folder = Path(self.options.barrier_dir)
        (folder / f"{os.getpid()}-{uuid.uuid4().hex}").touch()
        deadline = time.monotonic() + 120
        while len(list(folder.iterdir())) < self.options.parties:
            if time.monotonic() > deadline:
                raise RuntimeError(f"barrier: {len(list(folder.iterdir()))} of {self.options.parties} trials started")
            time.sleep(0.05)
        return super().build_model()


class GateOptions(Mnist1dOptions):
    gate_dir: str = ""
    gate_examples: int = 0


def _in_a_ray_actor() -> bool:
    import sys

    if "ray" not in sys.modules:
        return False
    import ray

    return ray.is_initialized() and ray.get_runtime_context().get_actor_id() is not None


class GatedMnist1d(Mnist1dMLP):
    """MNIST-1D whose trials meet a gate once they have trained on ``gate_examples`` examples: the
    first trial to reach it passes, every other one waits there until a file ``open`` is in
    ``gate_dir``. A driver killed while they wait leaves one finished trial and the others running
    past a checkpoint, whatever this machine's speed: a kill mid-sweep without timing luck. Only the
    sweep's trials (Ray actors) meet it, not the steps the driver times for its estimate."""

    name = "gated_mnist1d"
    Options = GateOptions

    def loss(self, model, batch):
        import os
        import time
        from pathlib import Path

        self._seen = getattr(self, "_seen", 0) + len(batch[0])
        if (self.options.gate_dir and self._seen >= self.options.gate_examples and not getattr(self, "_met", False)
                and _in_a_ray_actor()):
            self._met, folder = True, Path(self.options.gate_dir)
            try:
                os.close(os.open(folder / "first", os.O_CREAT | os.O_EXCL))
            except FileExistsError:
                deadline = time.monotonic() + 300
                while not (folder / "open").exists():
                    if time.monotonic() > deadline:
                        raise RuntimeError("gate: not opened in 300 s") from None
                    time.sleep(0.05)
        return super().loss(model, batch)


WORKLOADS = (FlakyMnist1d, LinearRegression, BarrierRegression, GatedMnist1d)


#: An LR rule and a warmup rule from a user's module (harness.plugins): ``pow75+legw``, ``sqrt+half``.
LR_RULES = {"pow75": lambda k: k ** 0.75}
WARMUP_RULES = {"half": lambda base, k, budget_epochs: 0.5 * base.warmup_epochs * k}
