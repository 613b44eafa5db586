"""7. Scale-out: benchmark 2 with WORKER_CONCURRENCY=2, the workers' side scaled out on this
host."""

from bench.benchmarks.common import Sizes
from bench.benchmarks.email_pipeline import email_pipeline
from bench.report import Result
from bench.stack import Stack


def scale_out(stack: Stack, sizes: Sizes, earlier: dict[str, Result]) -> Result:
    return email_pipeline(stack, sizes, earlier, processes=2)
