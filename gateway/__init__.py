"""Model serving gateway: the Open Inference Protocol (KServe V2) over gRPC and HTTP in front of Ray Serve."""

__version__ = "0.1.0"
