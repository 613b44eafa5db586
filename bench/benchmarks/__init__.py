"""The benchmarks, a module each. Every one starts from empty tables and an empty broker,
measures the service and its floor on the same stack in the same run, and returns a Result;
`earlier` holds the results of this run so far (recovery's floor is the timer's figure)."""

from collections.abc import Callable

from bench.benchmarks.email_pipeline import email_pipeline
from bench.benchmarks.recovery import recovery
from bench.benchmarks.scale import scale
from bench.benchmarks.scale_out import scale_out
from bench.benchmarks.submit import submit
from bench.benchmarks.timer import timer_accuracy
from bench.benchmarks.verify_to_welcome import verify_to_welcome
from bench.report import Result

# In the order they run.
BENCHMARKS: dict[str, Callable[..., Result]] = {
    "submit": submit,
    "email_pipeline": email_pipeline,
    "verify_to_welcome": verify_to_welcome,
    "timer_accuracy": timer_accuracy,
    "recovery": recovery,
    "scale": scale,
    "scale_out": scale_out,
}
