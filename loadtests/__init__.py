"""Load generator for any Open Inference Protocol (KServe V2 / Triton) endpoint.

Open loop with coordinated-omission-corrected latency, closed loop, and rate sweeps, over
gRPC or HTTP; ``run_load(LoadConfig(...))`` is the Python API, ``loadtests.cli`` the CLI.
"""

from loadtests.config import LoadConfig
from loadtests.report import Report, SweepReport
from loadtests.runner import run_load

__all__ = ["LoadConfig", "Report", "SweepReport", "run_load"]
