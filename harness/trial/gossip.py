"""Decentralized data-parallel trials (``data_parallel.algorithm``: dmsgd, decentlam; Yuan et al.,
"DecentLaM", ICCV 2021): the trial loop's step when workers average only with their neighbours.

Two ways to run the same mathematics (harness.trial.decentralized's ``outgoing`` / ``incoming``):

* ``SimulatedWorkers`` (``data_parallel.simulate: true``): K workers in one process. Each worker's
  parameters are a row of a K x d matrix; the one model is loaded with a worker's row to take its
  gradient on its share of the step's examples (B/K, in micro-batches), and the exchange is
  mixed = W @ v. It runs all three algorithms, all-reduce included, so a CPU study compares them
  through one code path.
* ``NeighbourWorkers`` (``simulate: false``, W > 1 Ray Train workers, harness.trial.distributed): each
  worker holds its own parameters and sends its vector to the workers that listen to it and
  receives from those it listens to, by torch.distributed point-to-point (``batch_isend_irecv``),
  never an all-reduce of parameters or gradients. Only the step's scalar loss is all-reduced, so
  every worker takes the same divergence and stopping decisions.

Both evaluate the average of the workers' parameters (the model a deployment would use) and record
the consensus distance (1/K) sum_i |x_i - mean x|^2 at every evaluation. The momentum is the
recipe's (``sgd`` or ``momentum``, heavy ball, no dampening or Nesterov); weight decay is added to
each worker's gradient as torch's SGD adds it; gradient clipping applies to each worker's own
gradient. The gradient noise scale is not measured (each worker's gradient is at its own weights).
"""

from __future__ import annotations

import contextlib
from typing import TYPE_CHECKING, Any

import torch
from torch.nn.utils import parameters_to_vector, vector_to_parameters

from harness.errors import BatchscaleError
from harness.spec.trial import DECENTRALIZED_OPTIMIZERS
from harness.trial.adversarial import Objective
from harness.trial.decentralized import consensus_distance, incoming, mixing_matrix, outgoing, step

if TYPE_CHECKING:
    from harness.trial.types import TrialView

#: optimizers whose update the decentralized algorithms reproduce (momentum SGD)
OPTIMIZERS = DECENTRALIZED_OPTIMIZERS
NOTE = "noise scale not measured: the workers of a decentralized or simulated trial take gradients at their own weights"


def is_decentralized(spec) -> bool:
    """Whether the trial's step is this module's (simulated workers, or a neighbour exchange)."""
    dp = spec.data_parallel
    return dp.simulate or dp.algorithm != "allreduce"


def momentum_of(trial: "TrialView") -> float:
    """The heavy-ball momentum of the trial's recipe; refuses optimizers the algorithms do not reproduce."""
    opt = trial.recipe.optimizer
    params = trial.optimizer.param_groups[0]
    if opt.name not in OPTIMIZERS or params.get("nesterov") or params.get("dampening", 0):
        raise BatchscaleError(f"data_parallel.algorithm {trial.spec.data_parallel.algorithm!r} with optimizer "
                              f"{opt.name!r}: allowed optimizers {', '.join(OPTIMIZERS)} (heavy-ball momentum SGD, "
                              f"no dampening or Nesterov)")
    return float(params.get("momentum", 0.0))


class _Workers:
    """What both kinds share: each worker's gradient at its own parameters, and the bookkeeping."""

    def __init__(self, trial: "TrialView", k: int):
        self.trial, self.k = trial, k
        self.algorithm = trial.spec.data_parallel.algorithm
        self.beta = momentum_of(trial)
        decay = {id(p): float(g["weight_decay"]) for g in trial.optimizer.param_groups for p in g["params"]}
        self.decay = torch.cat([torch.full((p.numel(),), decay[id(p)], device=trial.device)  # weight decay per
                                for p in trial.params])  # parameter, as the optimizer has it, in the vector's order
        self.weights = mixing_matrix(trial.spec.data_parallel.topology, k)
        self.last_consensus = 0.0

    def _gradient(self, objective: Objective, x: torch.Tensor, idx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The mean gradient over ``idx`` at parameters ``x``, weight decay added; and the summed
        clean loss weighted by its share of the whole step."""
        t = self.trial
        vector_to_parameters(x, t.params)
        for p in t.params:
            p.grad = None
        objective.start_step(t.model)
        m, n = t.timing_micro_batch, len(idx)
        total = None
        for start in range(0, n, m):
            part = idx[start:start + m]
            loss, clean = objective(t.model, t.workload.augment(tuple(a[part] for a in t.data.train)))
            (loss * (len(part) / n)).backward()
            part_loss = clean.detach() * (len(part) / t.recipe.batch_size)
            total = part_loss if total is None else total + part_loss
        if t.recipe.grad_clip_norm:
            torch.nn.utils.clip_grad_norm_(t.params, t.recipe.grad_clip_norm)
        return parameters_to_vector([p.grad for p in t.params]) + self.decay * x, total

    def _finish(self, loss: torch.Tensor) -> float:
        t = self.trial
        t.step += 1
        value = loss.item()
        t.control.after_step(value)
        return value


class SimulatedWorkers(_Workers):
    """K workers in one process (``data_parallel.simulate``)."""

    def __init__(self, trial: "TrialView"):
        super().__init__(trial, trial.spec.data_parallel.workers)
        start = parameters_to_vector(trial.params).detach()
        self.x = start.repeat(self.k, 1)  # every worker starts from the same initialisation
        self.m = torch.zeros_like(self.x)
        self.objectives = [Objective(trial.workload.loss, **trial.spec.augment.model_dump()) for _ in range(self.k)]

    def train_step(self, idx: torch.Tensor) -> float:
        t, share = self.trial, len(idx) // self.k
        grads, total = torch.empty_like(self.x), None
        for i in range(self.k):
            grads[i], loss = self._gradient(self.objectives[i], self.x[i], idx[i * share:(i + 1) * share])
            total = loss if total is None else total + loss
        t.last_lr = lr = t.control.lr()
        with torch.no_grad():
            self.x, self.m = step(self.algorithm, self.x, self.m, grads, self.weights, lr, self.beta)
            vector_to_parameters(self.x.mean(0), t.params)  # the model between steps is the average
        return self._finish(total)

    @contextlib.contextmanager
    def averaged(self):
        with torch.no_grad():
            vector_to_parameters(self.x.mean(0), self.trial.params)
            self.last_consensus = consensus_distance(self.x.double())
        yield

    def state_dict(self) -> dict[str, Any]:
        return {"x": self.x, "m": self.m, "objectives": [o.state_dict() for o in self.objectives]}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.x, self.m = state["x"].to(self.x.device), state["m"].to(self.m.device)
        for o, s in zip(self.objectives, state["objectives"]):
            o.load_state_dict(s, self.trial.model)


class NeighbourWorkers(_Workers):
    """This process is worker ``rank`` of W Ray Train workers; it exchanges with its neighbours only."""

    def __init__(self, trial: "TrialView"):
        super().__init__(trial, trial.world_size)
        self.m = torch.zeros_like(self.decay)
        row = self.weights[trial.rank]
        self.listens_to = [j for j in range(self.k) if j != trial.rank and row[j] > 0]  # receives from
        self.heard_by = [j for j in range(self.k) if j != trial.rank and self.weights[j, trial.rank] > 0]
        self.own_weight = float(row[trial.rank])
        self.objective = trial.objective

    def _exchange(self, v: torch.Tensor) -> torch.Tensor:
        """sum_j w_ij v_j over this worker and those it listens to, by point-to-point messages."""
        import torch.distributed as dist

        t = self.trial
        received = {j: torch.empty_like(v) for j in self.listens_to}
        ops = ([dist.P2POp(dist.isend, v, j) for j in self.heard_by]
               + [dist.P2POp(dist.irecv, received[j], j) for j in self.listens_to])
        for request in dist.batch_isend_irecv(ops):
            request.wait()
        mixed = self.own_weight * v
        for j, vj in received.items():
            mixed = mixed + float(self.weights[t.rank, j]) * vj
        return mixed

    def train_step(self, idx: torch.Tensor) -> float:
        import torch.distributed as dist

        t = self.trial
        idx = idx[t.rank * t.local_batch:(t.rank + 1) * t.local_batch]
        x = parameters_to_vector(t.params).detach()
        g, loss = self._gradient(self.objective, x, idx)
        dist.all_reduce(loss)  # the step's loss only (every worker decides alike); no parameter is reduced
        t.last_lr = lr = t.control.lr()
        with torch.no_grad():
            v, self.m = outgoing(self.algorithm, x, self.m, g, lr, self.beta)
            x, self.m = incoming(self.algorithm, x, self.m, self._exchange(v), lr, self.beta)
            vector_to_parameters(x, t.params)
        return self._finish(loss)

    @contextlib.contextmanager
    def averaged(self):
        """The averaged model for an evaluation (an all-reduce off the clock), then this worker's own."""
        import torch.distributed as dist

        t = self.trial
        with torch.no_grad():
            own = parameters_to_vector(t.params).detach().clone()
            mean = own.clone()
            dist.all_reduce(mean)
            mean /= self.k
            spread = ((own - mean) ** 2).sum().double().reshape(1)
            dist.all_reduce(spread)
            self.last_consensus = float(spread) / self.k
            vector_to_parameters(mean, t.params)
        try:
            yield
        finally:
            with torch.no_grad():
                vector_to_parameters(own, t.params)

    def state_dict(self) -> dict[str, Any]:
        return {"m": self.m}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.m = state["m"].to(self.m.device)


def make_workers(trial: "TrialView") -> SimulatedWorkers | NeighbourWorkers | None:
    """The trial's decentralized step, or None for an ordinary (all-reduce or single) trial."""
    if not is_decentralized(trial.spec):
        return None
    if trial.spec.data_parallel.simulate:
        return SimulatedWorkers(trial)
    if trial.world_size == 1:
        raise BatchscaleError(f"data_parallel.algorithm {trial.spec.data_parallel.algorithm!r} needs workers: "
                              f"data_parallel.workers > 1, or data_parallel.simulate: true")
    return NeighbourWorkers(trial)
