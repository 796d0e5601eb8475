"""Run configuration: the dataclass the CLI fills and the Python API takes, plus its parsers."""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from urllib.parse import urlsplit

_DURATION = re.compile(r"^\s*(\d+(?:\.\d*)?|\.\d+)\s*(ms|s|m|h)?\s*$")
_UNIT_S = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, None: 1.0}


def parse_duration(text: str) -> float:
    """Seconds from ``30``, ``30s``, ``1.5m``, ``500ms`` or ``1h``."""
    match = _DURATION.match(text)
    if not match:
        raise ValueError(f"bad duration {text!r} (examples: 30s, 2m, 500ms)")
    return float(match.group(1)) * _UNIT_S[match.group(2)]


def parse_sweep(text: str) -> list[float]:
    """Rates of a ``START:STOP:STEP`` sweep, STOP included."""
    parts = text.split(":")
    if len(parts) != 3:
        raise ValueError(f"bad sweep {text!r} (expected START:STOP:STEP, e.g. 100:2000:100)")
    start, stop, step = (float(p) for p in parts)
    if start <= 0 or step <= 0 or stop < start:
        raise ValueError(f"bad sweep {text!r}: need 0 < START <= STOP and STEP > 0")
    count = math.floor((stop - start) / step + 1e-9) + 1
    return [start + i * step for i in range(count)]


@dataclass(frozen=True)
class TrafficClass:
    """One class of a mixed profile: its share of requests, the priority it names, its deadline and API key."""

    name: str
    weight: float
    deadline_s: float | None = None  # gRPC deadline / HTTP x-timeout-ms; goodput counts answers within it
    api_key: str | None = None


def _pairs(text: str, option: str) -> dict[str, str]:
    out: dict[str, str] = {}
    for part in (p.strip() for p in text.split(",")):
        name, sep, value = part.partition("=")
        name, value = name.strip(), value.strip()
        if not sep or not name or not value:
            raise ValueError(f"bad {option} entry {part!r} (expected NAME=VALUE, comma separated)")
        if name in out:
            raise ValueError(f"{option} names class {name!r} twice")
        out[name] = value
    return out


def parse_mix(text: str, deadlines: str | None = None, keys: str | None = None) -> tuple[TrafficClass, ...]:
    """Classes from ``critical=20,default=30,batch=50`` (relative weights), with optional per-class
    deadlines (``critical=250ms,batch=2s``) and API keys (``critical=KEY`` or ``critical=@FILE``)."""
    weights: dict[str, float] = {}
    for name, value in _pairs(text, "--mix").items():
        try:
            weights[name] = float(value)
        except ValueError:
            raise ValueError(f"--mix weight of {name!r} must be a number, not {value!r}") from None
        if weights[name] <= 0:
            raise ValueError(f"--mix weight of {name!r} must be positive")
    limits = {n: parse_duration(v) for n, v in _pairs(deadlines, "--class-deadline").items()} if deadlines else {}
    secrets = _pairs(keys, "--class-key") if keys else {}
    for option, named in (("--class-deadline", limits), ("--class-key", secrets)):
        unknown = sorted(set(named) - set(weights))
        if unknown:
            raise ValueError(f"{option} names {', '.join(unknown)}, not in --mix ({', '.join(weights)})")
    if any(v <= 0 for v in limits.values()):
        raise ValueError("--class-deadline values must be positive")
    return tuple(
        TrafficClass(name, weight, limits.get(name), _read_key(secrets[name]) if name in secrets else None)
        for name, weight in weights.items()
    )


def _read_key(value: str) -> str:
    """``@PATH`` reads the key from a file (keeps it out of the process list); anything else is the key."""
    if not value.startswith("@"):
        return value
    try:
        with open(value[1:], encoding="utf-8") as f:
            key = f.read().strip()
    except OSError as exc:
        raise ValueError(f"--class-key file {value[1:]!r}: {exc.strerror}") from None
    if not key:
        raise ValueError(f"--class-key file {value[1:]!r} is empty")
    return key


@dataclass(frozen=True)
class Target:
    """Where the load goes; the only address the tool ever contacts."""

    protocol: str  # "grpc" or "http"
    host: str
    port: int
    base_path: str = ""

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    def __str__(self) -> str:
        return f"{self.protocol}://{self.address}{self.base_path}"


def parse_target(text: str) -> Target:
    """``grpc://host:port`` or ``http://host:port[/prefix]``; ports default to 8001 / 8000."""
    parts = urlsplit(text if "://" in text else f"grpc://{text}")
    scheme = parts.scheme.lower()
    if scheme not in ("grpc", "http"):
        raise ValueError(f"unsupported target scheme {scheme!r} (use grpc:// or http://)")
    if not parts.hostname:
        raise ValueError(f"target {text!r} has no host")
    port = parts.port or (8001 if scheme == "grpc" else 8000)
    base_path = parts.path.rstrip("/") if scheme == "http" else ""
    host = f"[{parts.hostname}]" if ":" in parts.hostname else parts.hostname
    return Target(scheme, host, port, base_path)


@dataclass(frozen=True)
class LoadConfig:
    """One load run (or one sweep); mirrors the ``loadtest`` command-line options."""

    target: str
    model: str | None = None
    model_version: str = ""
    rate: float | None = None  # open loop: requests per second
    arrival: str = "poisson"  # or "constant"
    concurrency: int | None = None  # closed loop: workers each with one request in flight
    sweep: str | None = None  # "START:STOP:STEP" rates, open loop, needs slo_p99_ms
    slo_p99_ms: float | None = None
    duration_s: float = 30.0  # measured window, per sweep step
    warmup_s: float = 0.0  # load before the window, not counted
    max_requests: int | None = None  # cap on measured requests sent
    processes: int = 1
    batch_rows: int = 1
    input_file: str | None = None
    http_binary: bool = False
    max_inflight: int = 4096  # open loop: beyond this a due request is dropped as late
    connections: int | None = None  # HTTP connections / gRPC channels; None picks one
    timeout_s: float = 30.0  # per request
    drain_timeout_s: float = 5.0  # after the window, unfinished requests become TIMEOUT
    pool_size: int = 64  # distinct pre-built random requests
    seed: int | None = None
    streaming: bool = False  # gRPC: requests on long-lived ModelStreamInfer calls instead of unary calls
    shared_memory: bool = False  # gRPC: inputs in a system shared memory region the tool registers
    progress: bool = True
    report_path: str | None = None
    plot_path: str | None = None
    mix: str | None = None  # "critical=20,default=30,batch=50": each request's class, by weight
    class_deadlines: str | None = None  # "critical=250ms,batch=2s"
    class_keys: str | None = None  # "critical=KEY,batch=@FILE"
    priority_header: str = "x-priority"  # header / gRPC metadata key naming the class
    key_header: str = "x-api-key"

    @property
    def classes(self) -> tuple[TrafficClass, ...]:
        """The mixed profile's classes; empty without --mix (every request alike)."""
        return parse_mix(self.mix, self.class_deadlines, self.class_keys) if self.mix else ()

    @property
    def mode(self) -> str:
        return "sweep" if self.sweep else ("open" if self.rate is not None else "closed")

    def validate(self) -> None:
        modes = sum(x is not None for x in (self.rate, self.concurrency, self.sweep))
        if modes != 1:
            raise ValueError("give exactly one of --rate, --concurrency or --sweep")
        if self.sweep is not None:
            parse_sweep(self.sweep)
            if self.slo_p99_ms is None or self.slo_p99_ms <= 0:
                raise ValueError("--sweep needs a positive --slo-p99-ms")
        grpc_only = [
            flag for flag, on in (("--streaming", self.streaming), ("--shared-memory", self.shared_memory)) if on
        ]
        if grpc_only and not self.target.startswith("grpc://"):
            raise ValueError(f"{' and '.join(grpc_only)} need a grpc:// target")
        if self.rate is not None and self.rate <= 0:
            raise ValueError("--rate must be positive")
        if self.concurrency is not None and self.concurrency < 1:
            raise ValueError("--concurrency must be at least 1")
        if self.arrival not in ("poisson", "constant"):
            raise ValueError("--arrival must be 'poisson' or 'constant'")
        if self.duration_s <= 0 or self.warmup_s < 0:
            raise ValueError("--duration must be positive and --warmup not negative")
        if self.processes < 1 or self.batch_rows < 1 or self.max_inflight < 1:
            raise ValueError("--processes, --batch-rows and --max-inflight must be at least 1")
        if self.max_requests is not None and self.max_requests < 1:
            raise ValueError("--max-requests must be at least 1")
        if self.concurrency is not None and self.concurrency < self.processes:
            raise ValueError("--concurrency must be at least --processes")
        if self.mix is None and (self.class_deadlines or self.class_keys):
            raise ValueError("--class-deadline and --class-key need --mix")
        if self.mix is not None:
            if self.streaming:
                # A stream's metadata (and so its priority, deadline and key) is fixed for all its messages.
                raise ValueError("--mix sends each class's headers per call; it cannot be combined with --streaming")
            self.classes  # noqa: B018 - parses, raising ValueError on a bad profile
            for header in (self.priority_header, self.key_header):
                if not header or header != header.lower() or not header.replace("-", "").isalnum():
                    raise ValueError(f"header name {header!r} must be lower case letters, digits and '-'")
        if self.model is None and self.input_file is None:
            raise ValueError("give --model (or an --input-file whose records name models)")
        parse_target(self.target)
