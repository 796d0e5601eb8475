"""The composition root: builds every part from settings and owns the lifecycle (start, drain, stop)."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import json
import logging
import signal
import socket
import sys
from collections.abc import Generator
from dataclasses import asdict
from pathlib import Path

import uvicorn
from pydantic import ValidationError

from contract import entrypoints
from contract.repository import Repository
from gateway import tls
from gateway.core import DataPlane
from gateway.doors.admin import AdminApi
from gateway.doors.asgi import limited_http_protocol
from gateway.doors.grpc import GrpcDoor, InferenceServicer
from gateway.doors.grpc_extensions import ExtensionServicer
from gateway.doors.grpc_stream import StreamInfer
from gateway.doors.http import HttpDoor
from gateway.errors import GatewayError
from gateway.feedback import FeedbackLog
from gateway.plane.catalog import Catalog, VersionInfo
from gateway.plane.shm import SharedMemory, cuda_backend
from gateway.request_log import RequestLogWriter
from gateway.settings import GatewaySettings
from gateway.sidecar import SidecarProcess, dashboard_port
from gateway.telemetry.metrics import Metrics
from gateway.telemetry.tracing import Tracing, TracingError, build_tracing
from gateway.tenants.gate import TenantGate
from gateway.traffic.control import RepositoryDiscovery, TrafficControl
from gateway.traffic.models import ModelControl
from gateway.traffic.outcomes import OutcomeJoiner, OutcomeReporter
from gateway.workers import Endpoints, Workers

log = logging.getLogger("gateway")


class _Uvicorn(uvicorn.Server):
    """uvicorn without its own signal handlers: the gateway decides when to drain."""

    @contextlib.contextmanager
    def capture_signals(self) -> Generator[None, None, None]:
        yield


def bind_tcp(host: str, port: int) -> socket.socket:
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)  # several gateway processes may share it
    sock.bind((host, port))
    sock.listen(2048)
    sock.setblocking(False)
    return sock


class Gateway:
    def __init__(self, settings: GatewaySettings, worker: bool = False) -> None:
        """worker: an extra process of a multi-process gateway; it attaches to what the first one deployed."""
        self.settings = settings
        self.worker = worker
        self.metrics = Metrics(None)
        self.plane: DataPlane | None = None
        self.dispatcher: object | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._http: _Uvicorn | None = None
        self._grpc: GrpcDoor | None = None
        self._admin: _Uvicorn | None = None
        self.traffic: TrafficControl | None = None
        self.outcomes: OutcomeReporter | None = None
        self.request_log: RequestLogWriter | None = None
        self.feedback: FeedbackLog | None = None
        self.tracing: Tracing | None = None
        self.tenants: TenantGate | None = None
        self.stopping = asyncio.Event()

    async def start(self, progress: bool = True) -> Endpoints:
        s = self.settings
        say = (
            (lambda msg: print(msg, file=sys.stderr, flush=True))
            if progress and not self.worker
            else (lambda msg: None)
        )
        try:  # before Ray starts: a tracing setting that cannot work stops start-up at once
            self.tracing = build_tracing(s.tracing)
        except TracingError as exc:
            raise SystemExit(str(exc)) from None
        repo = Repository(s.repository)
        if s.example_models and not self.worker and not repo.scan():
            say(f"writing example models into {s.repository} (first start)...")
            await write_examples(s.repository)
        entries = repo.scan()
        if not entries:
            raise SystemExit(
                f"the model repository {s.repository} holds no models: add "
                "<model>/<version>/manifest.json folders, or leave example_models on"
            )
        from gateway.dispatch import RayDispatcher  # imports Ray; kept out of the CLI's --help path

        dispatcher = RayDispatcher(
            s.ray_address,
            s.ray_num_cpus,
            s.fpga_resource,
            s.ray_transport,
            dashboard_port(s) if not self.worker else None,
        )
        self.dispatcher = dispatcher
        say("starting Ray" + (f" (joining {s.ray_address})" if s.ray_address else " (embedded, local)") + "...")
        await asyncio.to_thread(dispatcher.start)
        say(f"Ray logs  {dispatcher.logs_dir}")
        say(f"deploying {len(entries)} model version(s) on Ray Serve...")
        await asyncio.to_thread(dispatcher.deploy, entries)
        catalog = Catalog([VersionInfo.from_manifest(e.manifest, s.batching_for(e.manifest.name)) for e in entries])
        if s.request_log.enabled:
            # Each process (workers too) locks its own folder under request_log.dir.
            self.request_log = RequestLogWriter(s.request_log, self.metrics.registry).start()
            if not self.request_log.healthy:
                log.error("request log %s is not writable: %s", s.request_log.dir, self.request_log.last_error)
            try:  # beside it, in <dir>/feedback
                self.feedback = FeedbackLog(s.request_log, self.metrics.registry).start()
            except ValueError as exc:
                raise SystemExit(str(exc)) from None
        if s.tenants.enabled:
            # Each process follows the file; with N processes each allows 1/N of a tenant's rate.
            self.tenants = TenantGate(s.tenants.file, share=1.0 / s.workers, reload_s=s.tenants.reload_s)
            self.tenants.start()
        self.plane = DataPlane(
            catalog,
            dispatcher,
            self.metrics,
            request_log=self.request_log,
            tracer=self.tracing.tracer,
            shadow=s.shadow,
            tenants=self.tenants,
            overload=s.overload,
            shared_memory=SharedMemory(s.shared_memory_regions, cuda_backend()),
        )
        if s.repository_control:
            self.plane.repository = ModelControl(
                self.plane,
                s.repository,
                dispatcher,
                lambda m: VersionInfo.from_manifest(m, s.batching_for(m.name)),
                s.ready_timeout_s,
                s.drain_s,
            )

        servicer = InferenceServicer(
            self.plane,
            s.max_tensor_elements,
            s.default_timeout_ms / 1000.0,
            routing_header=s.routing_header,
            max_rows=s.max_request_rows,
            key_header=s.tenants.key_header,
            priority_header=s.overload.priority_header,
        )
        stream = StreamInfer(servicer, s.stream_max_inflight)
        self._grpc = GrpcDoor(
            servicer,
            s.max_request_bytes,
            s.max_header_bytes,
            tls.grpc_credentials(s.tls),
            stream=stream.handle,
            extensions=ExtensionServicer(self.plane, servicer._abort, s.admin_token),
        )
        grpc_port = self._grpc.bind(s.host, s.grpc_port)
        await self._grpc.start()
        http_sock = bind_tcp(s.host, s.http_port)
        http_port = http_sock.getsockname()[1]
        door = HttpDoor(
            self.plane,
            max_body_bytes=s.max_request_bytes,
            max_elements=s.max_tensor_elements,
            default_timeout_s=s.default_timeout_ms / 1000.0,
            routing_header=s.routing_header,
            feedback=self.feedback,
            max_rows=s.max_request_rows,
            key_header=s.tenants.key_header,
            priority_header=s.overload.priority_header,
            admin_token=s.admin_token,
        )
        self._http = _Uvicorn(
            uvicorn.Config(
                door,
                http=limited_http_protocol(s.max_header_bytes),
                loop="none",
                lifespan="off",
                access_log=False,
                log_level="warning",
                backlog=2048,
                timeout_graceful_shutdown=max(1, round(s.drain_s)),
                **tls.http_options(s.tls),
            )
        )
        self._tasks.append(asyncio.create_task(self._http.serve(sockets=[http_sock])))
        # Workers write metrics to the shared multiprocess directory; the first process serves them all.
        metrics_port = s.metrics_port if self.worker else self.metrics.serve(s.host, s.metrics_port)
        self._tasks.append(asyncio.create_task(self._watch_readiness()))
        host = f"[{s.host}]" if ":" in s.host else s.host
        scheme = "https" if s.tls.doors else "http"
        return Endpoints(
            f"{scheme}://{host}:{http_port}",
            f"{host}:{grpc_port}",
            f"http://{host}:{metrics_port}/metrics",
            http_port,
            grpc_port,
            metrics_port,
        )

    async def _watch_readiness(self) -> None:
        from gateway.dispatch import RayDispatcher

        assert self.plane is not None and isinstance(self.dispatcher, RayDispatcher) and self._grpc is not None
        serving: bool | None = None
        while not self.stopping.is_set():
            try:
                states = await asyncio.to_thread(self.dispatcher.readiness)
            except Exception as exc:  # noqa: BLE001 - a controller hiccup must not kill the watcher
                log.warning("readiness poll failed: %s", exc)
                states = {}
            for (model, version), r in states.items():
                self.plane.set_version_state(model, version, r.state, r.reason)
            if self.traffic is not None:
                await self.traffic.retry_pending()
            now_serving = self.plane.server_ready()
            if now_serving != serving:
                await self._grpc.set_serving(now_serving)
                serving = now_serving
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.stopping.wait(), 0.5 if not serving else 2.0)

    async def wait_ready(self, timeout_s: float) -> bool:
        assert self.plane is not None
        loop = asyncio.get_running_loop()
        until = loop.time() + timeout_s
        while loop.time() < until and not self.plane.settled():
            await asyncio.sleep(0.25)
        return self.plane.settled() and all(v.ready for v in self.plane.versions())

    async def start_traffic(self) -> int:
        """Seeds the cluster's table from the `traffic` setting (models it has no split for), follows it from
        now on, and serves the admin API when a token is set. Returns the admin port (0: admin API off)."""
        from gateway.dispatch import RayDispatcher

        assert self.plane is not None and isinstance(self.dispatcher, RayDispatcher)
        s = self.settings
        discover = RepositoryDiscovery(
            self.plane, s.repository, self.dispatcher, lambda m: VersionInfo.from_manifest(m, s.batching_for(m.name))
        )
        self.traffic = TrafficControl(
            self.plane, self.dispatcher.traffic_store(str(s.traffic_file.resolve())), discover
        )
        try:
            stored = await self.traffic.seed({} if self.worker else s.traffic)
        except (GatewayError, ValidationError) as exc:
            message = exc.message if isinstance(exc, GatewayError) else str(exc)
            raise SystemExit(f"the 'traffic' setting cannot be applied: {message}") from None
        await self.traffic.start(stored)
        if not self.worker and s.request_log.enabled:  # one join per gateway: its workers read the same files
            joiner = OutcomeJoiner(s.request_log.dir, s.experiments.max_pending)
            self.outcomes = OutcomeReporter(
                joiner,
                self.traffic.store,
                self.traffic.gateway_id,
                s.experiments.join_interval_s,
                self.metrics.set_outcome_join,
            )
            self.outcomes.start()
        if self.worker or not s.admin_token:
            return 0
        sock = bind_tcp(s.admin_host, s.admin_port)
        admin = AdminApi(self.traffic, s.admin_token, self.tenants)
        self._admin = _Uvicorn(
            uvicorn.Config(
                admin,
                http=limited_http_protocol(s.max_header_bytes),
                loop="none",
                lifespan="off",
                access_log=False,
                log_level="warning",
                **tls.admin_options(s.tls),
            )
        )
        self._tasks.append(asyncio.create_task(self._admin.serve(sockets=[sock])))
        return int(sock.getsockname()[1])

    def summary(self, endpoints: Endpoints) -> str:
        assert self.plane is not None
        lines = [
            f"HTTP     {endpoints.http}/v2",
            f"gRPC     {endpoints.grpc}  (inference.GRPCInferenceService)",
            f"metrics  {endpoints.metrics}",
            "",
            f"{'MODEL':<20} {'VERSION':<8} {'STATE':<12} REASON",
        ]
        weights = {m: split.weights for m, split in self.plane.routing_table.models.items()}
        for v in self.plane.versions():
            share = weights.get(v.model, {}).get(v.version)
            lines.append(
                f"{v.model:<20} {v.version:<8} {v.state:<12} "
                + (f"{share}% of traffic  " if share is not None else "")
                + v.reason
            )
        return "\n".join(lines)

    async def stop(self, drain_s: float | None = None) -> None:
        drain_s = self.settings.drain_s if drain_s is None else drain_s
        self.stopping.set()
        if self.outcomes is not None:
            await self.outcomes.stop()
        if self.traffic is not None:
            await self.traffic.stop(drain_s)
        for server in (self._http, self._admin):
            if server is not None:
                server.should_exit = True  # before the gRPC drain, so HTTP stops accepting at the same moment
        if self._grpc is not None:
            await self._grpc.stop(drain_s)
        for t in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await asyncio.wait_for(t, drain_s)
        if self.plane is not None:
            await self.plane.close(drain_s)
        if self.request_log is not None:
            await self.request_log.close()  # after the doors and batchers: every answered request is written
        if self.feedback is not None:
            await self.feedback.close()
        if self.tenants is not None:
            await self.tenants.stop()
        if self.tracing is not None:
            await asyncio.to_thread(self.tracing.shutdown)  # exports the spans still buffered
        if self.dispatcher is not None:
            from gateway.dispatch import RayDispatcher

            assert isinstance(self.dispatcher, RayDispatcher)
            await asyncio.to_thread(self.dispatcher.shutdown)


async def write_examples(repository: Path) -> None:
    """Runs the serving side's example writer as a program of its own (the gateway never imports `serving`)."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        entrypoints.EXAMPLES_MODULE,
        str(repository),
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
    )
    _, err = await proc.communicate()
    if proc.returncode != 0:
        tail = err.decode(errors="replace")[-2000:]
        raise SystemExit(f"writing the example models into {repository} failed:\n{tail}")


def settle_heap() -> None:
    """Takes what start-up allocated (Ray's client, protobuf descriptors, the catalog) out of the cyclic
    garbage collector's reach, so its collections scan only what requests allocate. Without this the
    collector's sweeps over Ray's heap were the largest single cost on the event loop: freezing it gave
    about +17% requests/s and a third of the p99 at saturation (see docs/PERFORMANCE.md).

    The youngest generation is collected every 10,000 net allocations instead of 700: at 700 each
    collection found mostly the requests in flight alive, scanned them and moved them to older generations
    to be scanned again (about 5 us per request under load; about 1 us at 10,000). What requests allocate
    is freed by reference counting, so the bigger threshold only lets a few thousand more objects wait."""
    gc.collect()
    gc.freeze()
    _, older, oldest = gc.get_threshold()
    gc.set_threshold(10_000, older, oldest)


async def serve(settings: GatewaySettings, ready_file: Path | None = None, worker: bool = False) -> int:
    gateway = Gateway(settings, worker)
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, gateway.stopping.set)
    workers: Workers | None = None
    sidecar: SidecarProcess | None = None
    sidecar_watch: asyncio.Task[None] | None = None
    try:
        endpoints = await gateway.start()
        ready = await gateway.wait_ready(settings.ready_timeout_s)
        admin_port = await gateway.start_traffic()
        settle_heap()
        if worker:
            if ready_file is not None:  # the first process waits for this before it says it is ready
                ready_file.write_text(json.dumps({"ready": ready}))
            await gateway.stopping.wait()
            return 0
        if settings.drift.enabled:
            sidecar = SidecarProcess(settings)
            sidecar.start()
            sidecar_watch = asyncio.create_task(sidecar.watch(gateway.stopping))
        if settings.workers > 1:
            from gateway.dispatch import RayDispatcher

            assert isinstance(gateway.dispatcher, RayDispatcher)
            workers = Workers(settings, endpoints, gateway.dispatcher.cluster_address)
            listening = await workers.wait_ready(settings.ready_timeout_s)
            if listening < settings.workers - 1:
                log.warning("only %d of %d extra gateway processes started", listening, settings.workers - 1)
            watcher = asyncio.create_task(workers.watch(gateway.stopping))
        print(
            ("gateway ready" if ready else "gateway started; some model versions are not ready:")
            + (f" ({settings.workers} processes)\n" if settings.workers > 1 else "\n")
            + gateway.summary(endpoints)
            + (
                f"\nadmin    http{'s' if settings.tls.admin_cert else ''}://{settings.admin_host}:{admin_port}"
                "/admin/traffic (bearer token)"
                if admin_port
                else "\nadmin    off (set admin_token to change traffic at run time)"
            ),
            file=sys.stderr,
            flush=True,
        )
        if ready_file is not None:
            assert gateway.plane is not None
            from gateway.dispatch import RayDispatcher

            assert isinstance(gateway.dispatcher, RayDispatcher)
            info = {
                **asdict(endpoints),
                "ready": ready,
                "ray_address": gateway.dispatcher.cluster_address,
                "admin_port": admin_port,
                "models": [
                    {"name": v.model, "version": v.version, "state": v.state, "reason": v.reason}
                    for v in gateway.plane.versions()
                ],
            }
            tmp = ready_file.with_suffix(".tmp")
            tmp.write_text(json.dumps(info, indent=2))
            tmp.replace(ready_file)
        await gateway.stopping.wait()
        print("draining...", file=sys.stderr, flush=True)
        if workers is not None:
            await watcher
    finally:
        if workers is not None:
            await workers.stop(10.0)
        await gateway.stop()
        if sidecar_watch is not None:
            sidecar_watch.cancel()
        if sidecar is not None:
            await sidecar.stop()  # after the log is flushed: it reads every record up to the end
    return 0
