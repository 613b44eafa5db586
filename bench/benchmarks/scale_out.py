"""7. Scale-out: benchmark 2 with one more process of the email line than the Procfile has;
11. the same through the slow stand-in provider (benchmark 8 with one more)."""

from bench.benchmarks.common import Sizes
from bench.benchmarks.email_pipeline import email_pipeline, email_pipeline_provider
from bench.report import Result
from bench.stack import Stack


def scale_out(stack: Stack, sizes: Sizes, earlier: dict[str, Result]) -> Result:
    return email_pipeline(stack, sizes, earlier, extra_email=1)


def scale_out_provider(stack: Stack, sizes: Sizes, earlier: dict[str, Result]) -> Result:
    return email_pipeline_provider(stack, sizes, earlier, extra_email=1)
