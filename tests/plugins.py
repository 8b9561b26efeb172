"""Workloads for the sweep tests, registered through BATCHSCALE_WORKLOAD_MODULES=tests.plugins."""

from harness.workloads.mnist1d import Mnist1dMLP


class FlakyMnist1d(Mnist1dMLP):
    """MNIST-1D whose training raises at one (micro-)batch size: a trial that errors, for the
    retry-then-record path; the other trials of the sweep must not be affected."""

    name = "flaky_mnist1d"
    failing_batch_size = 512

    def loss(self, model, batch):
        if len(batch[0]) == self.failing_batch_size:
            raise RuntimeError("injected failure at batch size 512")
        return super().loss(model, batch)


WORKLOADS = (FlakyMnist1d,)
