"""Dispatch to Ray Serve: the only gateway module that imports Ray.

Starts or joins the Ray cluster, deploys one Serve application per model version, reports
their readiness, and turns one batch into one DeploymentHandle call, mapping Ray's failures
onto the gateway's error vocabulary.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import ray
from ray import serve
from ray.exceptions import ActorDiedError, ActorUnavailableError, RayActorError, RayTaskError
from ray.serve import context as serve_context
from ray.serve.config import ProxyLocation
from ray.serve.exceptions import BackPressureError, DeploymentUnavailableError, ReplicaUnavailableError
from ray.serve.handle import DeploymentHandle

from contract import entrypoints
from contract.placement import app_name, required_resource
from contract.ramp import PlanError
from contract.repository import VersionEntry
from contract.tensors import Arrays, RuntimeFault
from gateway.errors import Code, GatewayError, overloaded, unavailable
from gateway.raylog import RAY_LOG_FORMAT, RayLogFile, route_ray_logs

log = logging.getLogger(__name__)

# A replica that died or became unreachable before answering: no answer exists, so one retry is safe.
# Over the "grpc" transport a broken channel is an AioRpcError with status UNAVAILABLE (handled apart).
_REPLICA_LOST = (
    ActorDiedError,
    ActorUnavailableError,
    RayActorError,
    DeploymentUnavailableError,
    ReplicaUnavailableError,
)

Key = tuple[str, str]


@dataclass(frozen=True)
class Readiness:
    state: str  # READY | LOADING | UNAVAILABLE
    reason: str = ""


class RayDispatcher:
    def __init__(
        self,
        address: str | None,
        num_cpus: int | None,
        fpga_resource: str,
        transport: str = "grpc",
        dashboard_port: int | None = None,
    ) -> None:
        self.address = address
        self.dashboard_port = dashboard_port  # an embedded cluster serves the Jobs API there (drift sidecar)
        self.num_cpus = num_cpus
        self.fpga_resource = fpga_resource
        # "grpc": Ray Serve's direct gRPC channel from the handle to the replica, pickled arrays (no actor
        # task and object store per call); "actor": Ray's actor calls. See docs/ARCHITECTURE.md, "Transport".
        self._handle_options: dict[str, Any] = {"method_name": "infer"}
        if transport == "grpc":
            self._handle_options.update(
                _by_reference=False, request_serialization="pickle", response_serialization="pickle"
            )
        self._handles: dict[Key, DeploymentHandle[Any]] = {}  # as deployed, not yet set up
        self._routed: dict[Key, DeploymentHandle[Any]] = {}  # set up on the event loop, with the call options
        self._refused: dict[Key, str] = {}
        self._owns_cluster = False
        self._ray_log = RayLogFile()
        self.retries = 0  # calls sent again after their replica died mid-call

    def start(self) -> None:
        route_ray_logs(self._ray_log)
        if not ray.is_initialized():
            self._owns_cluster = self.address is None
            try:
                ray.init(
                    address=self.address,
                    num_cpus=self.num_cpus if self._owns_cluster else None,
                    include_dashboard=self.dashboard_port is not None and self._owns_cluster,
                    dashboard_host="127.0.0.1",
                    dashboard_port=self.dashboard_port or 8265,
                    # With configure_logging=False Ray would drop every handler of its logger, and its warnings
                    # would reach the terminal through Python's last-resort handler; with True it keeps them.
                    configure_logging=True,
                    logging_level=logging.INFO,
                    logging_format=RAY_LOG_FORMAT,
                    log_to_driver=False,
                    namespace="gateway",
                )
            except Exception as exc:  # every way Ray can fail to start ends start-up with one message
                raise SystemExit(self._failed("Ray did not start", exc)) from exc
        self._keep_ray_log()
        try:
            # The gateway is the front door: Ray's own HTTP proxy is not needed.
            serve.start(
                proxy_location=ProxyLocation.Disabled,
                logging_config={"enable_access_log": False, "log_level": "WARNING"},
            )
        except Exception as exc:
            raise SystemExit(self._failed("Ray Serve did not start", exc)) from exc

    @property
    def logs_dir(self) -> str:
        """This machine's folder of Ray's log files: the session's once Ray has started, else where Ray keeps
        its newest session's."""
        return _session_logs() or os.path.join(ray._common.utils.get_default_ray_temp_dir(), "session_latest", "logs")

    def _keep_ray_log(self) -> None:
        if (logs := _session_logs()) is not None:
            self._ray_log.attach(Path(logs) / f"gateway-driver-{os.getpid()}.log")

    def _failed(self, what: str, exc: BaseException) -> str:
        self._keep_ray_log()
        return f"{what}: {type(exc).__name__}: {exc}\nRay's logs: {self.logs_dir}"

    @property
    def cluster_address(self) -> str:
        address: str = ray.get_runtime_context().gcs_address
        return address

    def deploy(self, entries: list[VersionEntry]) -> None:
        """Start deploying every version a node can host; the rest are refused with a reason.

        Versions are immutable, so an application already running for (model, version) was built from
        this very manifest: it is attached to, not redeployed (a redeploy would restart its replicas).
        That is how a restarted gateway, or a second gateway process, joins without disturbing traffic.
        """
        resources = ray.cluster_resources()
        running = {name for name, app in serve.status().applications.items() if app.status in ("RUNNING", "DEPLOYING")}
        targets = []
        for e in entries:
            key = (e.manifest.name, e.manifest.version)
            if app_name(*key) in running:
                continue
            need = required_resource(e.manifest, self.fpga_resource)
            if need is not None and resources.get(need, 0) < e.manifest.accelerator.count:
                self._refused[key] = (
                    f"needs {e.manifest.accelerator.count:g} {need} per replica but the Ray cluster offers "
                    f"{resources.get(need, 0):g}; add a node with that resource"
                )
                continue
            app = entrypoints.load(entrypoints.APP_BUILDER)(e, self.fpga_resource)
            targets.append(serve.RunTarget(app, name=app_name(*key), route_prefix=None))
        if targets:
            serve.run_many(targets, wait_for_ingress_deployment_creation=True, wait_for_applications_running=False)
        for e in entries:
            key = (e.manifest.name, e.manifest.version)
            if key not in self._refused:
                # A handle of this dispatcher's own: Serve caches one per application and process, which may already
                # be set up (a version unloaded and loaded again), and this one's router is set up on first use.
                ingress = serve.get_app_handle(app_name(*key))
                self._handles[key] = DeploymentHandle(ingress.deployment_name, ingress.app_name)

    def undeploy(self, model: str, version: str) -> None:
        """Deletes the version's Serve application (blocking: call it off the event loop)."""
        self._handles.pop((model, version), None)
        self._routed.pop((model, version), None)
        self._refused.pop((model, version), None)
        serve.delete(app_name(model, version), _blocking=True)

    def readiness(self) -> dict[Key, Readiness]:
        """Blocking: asks the Serve controller; call it off the event loop.

        First the applications' states alone (a small message); the full status (replica counts, deployment
        messages), which the controller and this process take milliseconds of CPU to build, only when one of
        this gateway's applications is not RUNNING. The poll runs every few seconds on a serving gateway."""
        out = {key: Readiness("UNAVAILABLE", reason) for key, reason in self._refused.items()}
        client = serve_context._get_global_client(raise_if_no_controller_running=False)
        if client is not None:
            states = {s.name: s.app_status.status for s in client.list_serve_statuses()}
            if all(states.get(app_name(*key)) == "RUNNING" for key in self._handles):
                return out | {key: Readiness("READY") for key in self._handles}
        apps = serve.status().applications
        for key in self._handles:
            app = apps.get(app_name(*key))
            if app is None:
                out[key] = Readiness("UNAVAILABLE", "not deployed")
            elif app.status == "RUNNING":
                out[key] = Readiness("READY")
            elif (running := _running_replicas(app)) > 0:
                # A replica died (UNHEALTHY) or is being replaced (DEPLOYING) while others still serve:
                # the version can answer, so it stays ready while Serve heals it.
                out[key] = Readiness(
                    "READY", f"{app.status.lower()}: {running} replica(s) running, Serve is replacing the rest"
                )
            elif app.status in ("DEPLOYING", "NOT_STARTED"):
                out[key] = Readiness("LOADING", app.message or "replicas are starting")
            else:
                out[key] = Readiness(
                    "UNAVAILABLE",
                    failure_reason(app.message, [d.message for d in app.deployments.values()]) or app.status,
                )
        return out

    def _handle(self, key: Key) -> DeploymentHandle[Any]:
        """The version's handle, set up on its first call, on the event loop: Serve's router (replica choice,
        queue bounds, the replica channel) then runs on this loop, not on a thread and event loop of its own, so a
        call costs no hop between threads and no contention for the GIL (docs/ARCHITECTURE.md, "Transport")."""
        handle = self._routed.get(key)
        if handle is None:
            try:
                deployed = self._handles[key]
            except KeyError:
                raise unavailable(f"model '{key[0]}' version '{key[1]}' is not deployed") from None
            deployed._init(_run_router_in_separate_loop=False)
            handle = self._routed[key] = deployed.options(**self._handle_options)
        return handle

    async def infer(self, model: str, version: str, inputs: Arrays) -> Arrays:
        handle = self._handle((model, version))
        for attempt in (1, 2):
            try:
                result: Arrays = await handle.remote(inputs)
                return result
            except BackPressureError:
                raise overloaded(f"model '{model}' version '{version}'") from None
            except grpc.aio.AioRpcError as exc:
                if exc.code() != grpc.StatusCode.UNAVAILABLE:
                    # The replica answered with a status of its own (too large, deadline, internal): no retry.
                    code = exc.code()
                    mapped = {
                        grpc.StatusCode.RESOURCE_EXHAUSTED: Code.RESOURCE_EXHAUSTED,
                        grpc.StatusCode.DEADLINE_EXCEEDED: Code.DEADLINE_EXCEEDED,
                        grpc.StatusCode.INVALID_ARGUMENT: Code.INVALID_ARGUMENT,
                    }.get(code, Code.INTERNAL)
                    log.warning(
                        "model %s/%s: replica channel answered %s: %s", model, version, code.name, exc.details()
                    )
                    raise GatewayError(
                        mapped, f"model '{model}' version '{version}': the replica call failed ({code.name})"
                    ) from None
                if attempt == 1:
                    self.retries += 1
                    log.warning("model %s/%s lost a replica mid-call (gRPC UNAVAILABLE); retrying once", model, version)
                    continue
                raise unavailable(
                    f"model '{model}' version '{version}' has no healthy replica "
                    "(its channel is unavailable); retry shortly"
                ) from None
            except _REPLICA_LOST as exc:
                # The replica died before answering. Inference is idempotent, so the call goes once more,
                # to whichever replica Serve's router picks now; a second loss is the client's answer.
                if attempt == 1 and not isinstance(exc, DeploymentUnavailableError):
                    self.retries += 1
                    log.warning(
                        "model %s/%s lost a replica mid-call (%s); retrying once", model, version, type(exc).__name__
                    )
                    continue
                raise unavailable(
                    f"model '{model}' version '{version}' has no healthy replica ({type(exc).__name__}); retry shortly"
                ) from None
            except (RayTaskError, RuntimeFault) as exc:
                # Over the actor transport the runtime's exception arrives wrapped in a RayTaskError; over the
                # gRPC transport it arrives as itself.
                cause = exc.cause if isinstance(exc, RayTaskError) and exc.cause is not None else exc
                if isinstance(cause, RuntimeFault) and cause.code in Code.__members__:
                    # Already classified by the runtime (a remote server's answer): the client gets that code.
                    code, message = Code[cause.code], f"model '{model}' version '{version}': {cause.message}"
                    raise (unavailable(message) if code == Code.UNAVAILABLE else GatewayError(code, message)) from None
                log.warning("model %s/%s raised %s: %s", model, version, type(cause).__name__, cause)
                # The client learns the exception type, never the traceback or model internals.
                raise GatewayError(
                    Code.INTERNAL,
                    f"model '{model}' version '{version}' failed while running inference ({type(cause).__name__})",
                ) from None
        raise AssertionError("unreachable: the second attempt returns or raises")

    def traffic_store(self, path: str) -> RayTrafficStore:
        return RayTrafficStore(path)

    def shutdown(self) -> None:
        if not self._owns_cluster:
            return  # a cluster joined by address keeps running, and so do its applications and traffic table
        # Ends the embedded cluster whole. serve.shutdown() first would kill the Serve controller while this
        # driver still has calls pending on it, and Ray reports each as a failed task on the terminal; the
        # gateway has drained its calls by now, so the replicas have nothing left to finish.
        ray.shutdown(wait_for_processes=True)


def failure_reason(app_message: str, deployment_messages: list[str]) -> str:
    """What failed, on one line. Serve's messages open with what happened and end with the error, a traceback
    in between (that stays in Serve's logs); an application's own message only names its failed deployments,
    so theirs come first."""
    parts = []
    for message in [m for m in deployment_messages if m] or [app_message]:
        lines = [line.strip() for line in message.strip().splitlines() if line.strip()]
        if len(lines) > 1:
            parts.append(f"{lines[0].split('. ')[0].rstrip('.:')}: {lines[-1]}")
        elif lines:
            parts.append(lines[0])
    return "; ".join(parts)[:500]


def _session_logs() -> str | None:
    node = getattr(ray._private.worker, "_global_node", None)
    return None if node is None else str(node.get_logs_dir_path())


def _running_replicas(app: Any) -> int:
    """Replicas able to answer: the smallest RUNNING count over the application's deployments."""
    counts = [int(d.replica_states.get("RUNNING", 0)) for d in app.deployments.values()]
    return min(counts) if counts else 0


class RayTrafficStore:
    """The cluster's traffic table (a named Ray actor), seen from one gateway process.

    A change the table refuses (PlanError) becomes INVALID_ARGUMENT. When the actor is gone (its node
    died, Ray restarted), the next call reconnects: the table is recreated from its file."""

    def __init__(self, path: str) -> None:
        self._path = path
        self._actor = entrypoints.load(entrypoints.TRAFFIC_TABLE)(path)

    async def _call(self, method: str, *args: Any) -> Any:
        for attempt in (1, 2):
            try:
                return await getattr(self._actor, method).remote(*args)
            except PlanError as exc:  # raised in the actor; Ray hands back an exception that is also a PlanError
                cause = getattr(exc, "cause", None) or exc
                raise GatewayError(Code.INVALID_ARGUMENT, str(cause)) from None
            except (ActorDiedError, ActorUnavailableError, RayActorError):
                if attempt == 2:
                    raise
                log.warning("traffic table actor is gone; reconnecting (it reloads from %s)", self._path)
                self._actor = await asyncio.to_thread(entrypoints.load(entrypoints.TRAFFIC_TABLE), self._path)
            except RayTaskError as exc:
                cause = exc.cause if exc.cause is not None else exc
                raise GatewayError(
                    Code.INTERNAL, f"the traffic table failed ({type(cause).__name__}: {str(cause)[:300]})"
                ) from None
        raise AssertionError("unreachable")

    async def get(self) -> dict[str, Any]:
        table: dict[str, Any] = await self._call("get")
        return table

    async def set_model(self, model: str, weights: dict[str, int], who: str, reason: str) -> dict[str, Any]:
        table: dict[str, Any] = await self._call("set_model", model, weights, who, reason)
        return table

    async def set_shadows(self, model: str, shadows: dict[str, float], who: str, reason: str) -> dict[str, Any]:
        table: dict[str, Any] = await self._call("set_shadows", model, shadows, who, reason)
        return table

    async def start_ramp(self, model: str, plan: dict[str, Any], who: str, reason: str) -> dict[str, Any]:
        table: dict[str, Any] = await self._call("start_ramp", model, plan, who, reason)
        return table

    async def rollback(self, model: str, who: str, reason: str) -> dict[str, Any]:
        table: dict[str, Any] = await self._call("rollback", model, who, reason)
        return table

    async def report(self, gateway_id: str, counts: dict[str, Any]) -> None:
        await self._call("report", gateway_id, counts)

    async def start_experiment(self, model: str, plan: dict[str, Any], who: str, reason: str) -> dict[str, Any]:
        table: dict[str, Any] = await self._call("start_experiment", model, plan, who, reason)
        return table

    async def stop_experiment(self, model: str, who: str, reason: str) -> dict[str, Any]:
        table: dict[str, Any] = await self._call("stop_experiment", model, who, reason)
        return table

    async def experiment(self, model: str) -> dict[str, Any] | None:
        found: dict[str, Any] | None = await self._call("experiment", model)
        return found

    async def report_outcomes(self, gateway_id: str, snapshots: dict[str, Any]) -> None:
        await self._call("report_outcomes", gateway_id, snapshots)

    async def claim_join(self, gateway_id: str, root_id: str, lease_s: float) -> bool:
        try:
            claimed: bool = await self._call("claim_join", gateway_id, root_id, lease_s)
        except AttributeError:  # a table actor started by an older gateway: every gateway joins, as it expects
            return True
        return claimed

    async def release_join(self, gateway_id: str, root_id: str) -> None:
        with contextlib.suppress(AttributeError):
            await self._call("release_join", gateway_id, root_id)

    async def history(self, model: str) -> list[dict[str, Any]]:
        entries: list[dict[str, Any]] = await self._call("model_history", model)
        return entries

    async def wait_newer(self, revision: int, timeout_s: float) -> dict[str, Any]:
        table: dict[str, Any] = await self._call("wait_newer", revision, timeout_s)
        return table
