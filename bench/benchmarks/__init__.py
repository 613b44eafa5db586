"""The benchmarks, a module each. Every one starts from empty tables and an empty broker,
measures the service and its floor on the same stack in the same run, and returns a Result;
`earlier` holds the results of this run so far (the provider benchmarks' floor is their instant
twin's figure, measured again if it is not there)."""

from collections.abc import Callable

from bench.benchmarks.burst import burst
from bench.benchmarks.email_pipeline import email_pipeline, email_pipeline_provider
from bench.benchmarks.enumeration import enumeration
from bench.benchmarks.funnel import funnel_page
from bench.benchmarks.hosts import hosts
from bench.benchmarks.million import million
from bench.benchmarks.outage import outage
from bench.benchmarks.recovery import recovery
from bench.benchmarks.scale import scale
from bench.benchmarks.scale_out import scale_out, scale_out_provider
from bench.benchmarks.submit import submit
from bench.benchmarks.timer import timer_accuracy, timer_accuracy_provider
from bench.benchmarks.verify_during_send import verify_during_send
from bench.benchmarks.verify_to_welcome import verify_to_welcome, verify_to_welcome_provider
from bench.report import Result

# In the order they run; each provider benchmark right after its instant twin.
BENCHMARKS: dict[str, Callable[..., Result]] = {
    "submit": submit,
    "email_pipeline": email_pipeline,
    "email_pipeline_provider": email_pipeline_provider,
    "verify_to_welcome": verify_to_welcome,
    "verify_to_welcome_provider": verify_to_welcome_provider,
    "verify_during_send": verify_during_send,
    "timer_accuracy": timer_accuracy,
    "timer_accuracy_provider": timer_accuracy_provider,
    "recovery": recovery,
    "outage": outage,
    "burst": burst,
    "scale": scale,
    "scale_out": scale_out,
    "scale_out_provider": scale_out_provider,
    "funnel_page": funnel_page,
    "million": million,
    "enumeration": enumeration,
    "hosts": hosts,
}
