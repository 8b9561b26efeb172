"""The ``batchscale`` command.

    batchscale train SPEC [--set KEY=VALUE ...]       one trial in this process
    batchscale schedule SPEC [--batch-size B ...]     resolved recipes and the LR at every step
    batchscale plan SPEC                              trial counts, budgets, recipes, time estimate
    batchscale sweep SPEC [--address ...]             a study on Ray Tune (see harness.sweep)
    batchscale report RESULTS_DIR                     tables, plots and the HTML report
    batchscale reproduce NAME                         a LEGW paper study, claim by claim
    batchscale list                                   workloads, methods, optimizers

Bad input prints one line ``batchscale: error: ...`` and exits non-zero (2 for a spec error).
"""

from __future__ import annotations

import argparse
import sys

from harness.errors import BatchscaleError


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value <= 0:
        raise argparse.ArgumentTypeError(f"value {text!r} is not allowed; allowed: a positive integer")
    return value


def _add_spec_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("spec", help="YAML spec file, or the name of a shipped example (batchscale list names them)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override any key of the spec (dotted, value in YAML), e.g. --set budget.epochs=2")
    p.add_argument("--data-dir", help="folder holding datasets (else BATCHSCALE_DATA_DIR, then Debian paths)")


TRACKERS = ("tensorboard", "mlflow", "wandb")


def _overrides(args) -> list[str]:
    extra = [f"data_dir={args.data_dir}"] if getattr(args, "data_dir", None) else []
    for name in filter(None, (getattr(args, "tracking", None) or "").split(",")):
        if name.strip() not in TRACKERS:
            from harness.errors import SpecError

            raise SpecError("--tracking", name, f"allowed: a comma-separated list of {', '.join(TRACKERS)}",
                            choices=list(TRACKERS))
        extra.append(f"tracking.{name.strip()}=true")
    return [*args.overrides, *extra]


def _spec(args) -> str:
    """The spec path given, or the shipped example it names (harness.spec.catalog)."""
    from harness.spec.catalog import find_spec

    return str(find_spec(args.spec))


def cmd_train(args) -> int:
    from harness.commands.train import train

    return train(_spec(args), _overrides(args), out=args.out, quiet=args.quiet)


def cmd_schedule(args) -> int:
    from harness.commands.inspect import schedule

    return schedule(_spec(args), _overrides(args), batch_sizes=args.batch_size, methods=args.method,
                    optimizer=args.optimizer, every=args.every, recipe_only=args.recipe_only, plot=args.plot)


def cmd_plan(args) -> int:
    from harness.commands.inspect import plan_sweep

    return plan_sweep(_spec(args), _overrides(args), probe_seconds=args.probe_seconds, slots=args.slots,
                      trial_overhead_s=args.trial_overhead_s)


def cmd_sweep(args) -> int:
    from harness.commands.study import sweep

    return sweep(args.spec, _overrides(args), name=args.name, address=args.address, storage=args.storage,
                 results=args.results, report=not args.no_report, quiet=args.quiet, verbose=args.verbose)


def cmd_report(args) -> int:
    from harness.commands.study import write_report

    return write_report(args.results, quiet=args.quiet, check=args.check_budgets)


def cmd_reproduce(args) -> int:
    from harness.commands.study import reproduce

    return reproduce(args.name, _overrides(args), name=args.name_override, address=args.address,
                     results=args.results, quiet=args.quiet, verbose=args.verbose)


def cmd_list(args) -> int:
    from harness.commands.inspect import list_all

    return list_all()


# --- wiring -------------------------------------------------------------------------------------


class _Parser(argparse.ArgumentParser):
    """Usage errors as one line (``batchscale sweep: error: ...``), exit code 2; --help stays full."""

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="batchscale", description="Large-batch training experiments.")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("train", help="run one trial in this process")
    _add_spec_args(p)
    p.add_argument("--out", help="output folder (default results/train/<workload>-<method>-b<B>-s<seed>-<time>)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("schedule", help="print resolved recipes and the LR at every step (CSV)")
    _add_spec_args(p)
    p.add_argument("--batch-size", type=_positive_int, action="append",
                   help="batch size (repeatable; default: the spec's)")
    p.add_argument("--method", action="append", help="method (repeatable; default: the spec's)")
    p.add_argument("--optimizer", help="optimizer of a sweep spec (default: its first)")
    p.add_argument("--every", type=_positive_int, default=1, help="print every N-th step (default 1)")
    p.add_argument("--recipe-only", action="store_true", help="print the recipe table only")
    p.add_argument("--plot", help="draw the schedules to this image file (PNG/SVG/PDF)")
    p.set_defaults(func=cmd_schedule)

    p = sub.add_parser("plan", help="trial counts, budgets (pilot at B0), recipes and a time estimate, without running")
    _add_spec_args(p)
    p.add_argument("--probe-seconds", type=float, default=1.5, help="length of each throughput probe (default 1.5)")
    p.add_argument("--slots", type=_positive_int, help="trials at once (default: CPU cores / resources.cpus)")
    p.add_argument("--trial-overhead-s", type=float, default=2.5,
                   help="Ray and data set-up per trial (default 2.5 s: the default sweep on a 2-core VM, "
                        "docs/protocols.md)")
    p.add_argument("--claims-only", action="store_true",
                   help="run only the cells the spec's claims read (same as --set claims_only=true)")
    p.set_defaults(func=cmd_plan)

    p = sub.add_parser("sweep", help="run a study on Ray Tune (local by default, or a cluster)")
    _add_spec_args(p)
    p.add_argument("--name", help="sweep name: results/<name>/ (default: the spec's name, or its file name)")
    p.add_argument("--address", help="Ray cluster address (host:port or ray://host:10001); default RAY_ADDRESS, "
                                     "else an embedded local Ray")
    p.add_argument("--storage", help="Ray Tune storage path: a folder all nodes share, or a cloud URL "
                                     "(default results/<name>/ray)")
    p.add_argument("--results", default="results", help="results root folder (default results/)")
    p.add_argument("--no-report", action="store_true", help="do not build the report at the end")
    p.add_argument("--quiet", action="store_true", help="no live view")
    p.add_argument("--verbose", action="store_true",
                   help="show Ray's and Tune's own output (default: in results/<name>/ray.log)")
    p.add_argument("--tracking", metavar="TOOLS", help="also send every trial to tensorboard, mlflow and/or wandb "
                                                      "(comma-separated; the spec's tracking section has options)")
    p.add_argument("--claims-only", action="store_true",
                   help="run only the cells the spec's claims read (same as --set claims_only=true)")
    p.set_defaults(func=cmd_sweep)

    p = sub.add_parser("report", help="tables, plots and the HTML report of a sweep's results")
    p.add_argument("results", help="a sweep's results folder, e.g. results/default")
    p.add_argument("--quiet", action="store_true", help="do not print the tables")
    p.add_argument("--check-budgets", action="store_true",
                   help="first run the protocol's pilot for this sweep's spec and record which batch sizes its "
                        "budget could reach the target at (for sweeps run before protocols existed)")
    p.set_defaults(func=cmd_report)

    p = sub.add_parser("reproduce", help="run (or reuse) a LEGW paper study and judge its claims")
    p.add_argument("name", help="a paper study (batchscale list names them; e.g. mnist_lstm) or a spec path")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--data-dir")
    p.add_argument("--name", dest="name_override", help="sweep name (default: the study's)")
    p.add_argument("--address", help="Ray cluster address (default: embedded local Ray)")
    p.add_argument("--results", default="results")
    p.add_argument("--quiet", action="store_true")
    p.add_argument("--verbose", action="store_true", help="show Ray's and Tune's own output")
    p.add_argument("--tracking", metavar="TOOLS", help="tensorboard, mlflow and/or wandb (comma-separated)")
    p.add_argument("--claims-only", action="store_true",
                   help="run only the cells the spec's claims read (same as --set claims_only=true)")
    p.set_defaults(func=cmd_reproduce)

    p = sub.add_parser("list", help="list workloads, methods and optimizers")
    p.set_defaults(func=cmd_list)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if getattr(args, "claims_only", False):
        args.overrides.append("claims_only=true")
    try:
        return args.func(args) or 0
    except BatchscaleError as e:
        print(f"batchscale: error: {e}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        print("batchscale: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # e.g. `batchscale schedule ... | head`
        sys.stderr.close()
        return 0


if __name__ == "__main__":
    sys.exit(main())
