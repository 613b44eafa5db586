"""7. Scale-out: benchmark 2 with two processes of the Procfile's email line (one per core of
this host); 11. the same through the slow stand-in provider (benchmark 8 with two)."""

from bench.benchmarks.common import Sizes
from bench.benchmarks.email_pipeline import email_pipeline, email_pipeline_provider
from bench.report import Result
from bench.stack import Stack


def scale_out(stack: Stack, sizes: Sizes, earlier: dict[str, Result]) -> Result:
    return email_pipeline(stack, sizes, earlier, processes=2)


def scale_out_provider(stack: Stack, sizes: Sizes, earlier: dict[str, Result]) -> Result:
    return email_pipeline_provider(stack, sizes, earlier, processes=2)
