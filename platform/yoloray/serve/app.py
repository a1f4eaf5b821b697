"""The detection service on Ray Serve: `build_app` (the serve config's import_path) and `yoloray serve`.

    serve run    serve_configs/detector.yaml       # foreground, local Ray or RAY_ADDRESS
    serve deploy serve_configs/detector.yaml       # to a running cluster (dashboard at :8265)
    yoloray serve serve_configs/detector.yaml [--address auto] [--no-block]

HTTP API (route_prefix `/` in the shipped config):

    POST /detect[?conf=&iou=&max_det=]   body: the image bytes (Content-Type image/* or
                                         application/octet-stream), or multipart/form-data with one or
                                         more image files. Answer: {"results": [{"width", "height",
                                         "detections": [{x1,y1,x2,y2,score,class_id,label}], "error"}],
                                         "engine": Profile.output_key(), "params": {conf, iou, max_det}}
    GET  /healthz                        200 {"status": "ok"} when the engine runs, else 503
    GET  /info                           model, profile and output key, version, batching, limits, stats

Query parameters can only narrow what the engine returns (it ran at its own conf/iou/max_det):
conf (0..1) filters boxes below it (a conf below the engine's returns nothing more); iou (0..1) runs a
further class-aware NMS when stricter than the engine's (looser changes nothing); max_det (1..1000) keeps
the highest-scoring boxes. `params` in the answer says what was applied.

Status codes: 400 empty, undecodable or truncated image, malformed multipart; 413 image over
max_image_bytes (or over the engine's max_pixels), body over max_request_bytes, too many images;
415 Content-Type not image/*, application/octet-stream or multipart/form-data, or data in a non-image
format (GIF, PDF, ZIP, video, text ...); 408 a body not complete within `body_timeout_s`; 422 bad or unknown
query parameters, a form field that is not a file; 503 overloaded: Serve's own back-pressure once
`max_queued_requests` requests wait for a replica, or ours once `max_queued_images` images wait on a
replica. Every error body is `{"error": "...", "status": N}`: Serve's own plain-text answers (503, 408, 500)
are rewritten by the ingress guard (yoloray.serve.ingress_guard), which `yoloray serve` installs in the Ray
it starts. A request with several images answers 200 and
reports a bad image in that image's `error`, as the batch job's Parquet rows do.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import time
from pathlib import Path
from typing import Any

from yoloray.config import PROFILE_HINT, ConfigError, read_mapping
from yoloray.serve.settings import SERVE_CONFIG_HINT, ServeConfig

IMPORT_PATH = "yoloray.serve.app:build_app"
DEPLOYMENT_NAME = "Detector"


def parse_args(args: Any, source: str = "serve config args") -> ServeConfig:
    """Validate a serve config's `args` (ConfigError naming each bad field)."""
    if isinstance(args, ServeConfig):
        return args
    if args is None:
        args = {}
    if not isinstance(args, dict):
        raise ConfigError(f"{source} must be a mapping of field: value, got {type(args).__name__}")
    return ServeConfig.parse(args, source=source)


def detector_deployment(options: dict, where: str = "deployment options"):
    """The Detector deployment with Ray deployment `options` (max_ongoing_requests, autoscaling_config,
    ray_actor_options, ...) over the defaults in yoloray.serve.deployment. Ray checks some options only here
    (e.g. autoscaling min_replicas <= max_replicas, past its config schema): a bad one is a one-line
    ConfigError that starts with `where`."""
    from pydantic import ValidationError

    from yoloray.config import format_validation_error
    from yoloray.serve.deployment import DetectorDeployment

    if not options:
        return DetectorDeployment
    try:
        return DetectorDeployment.options(**options)
    except ValidationError as e:
        raise ConfigError(f"{where}: {format_validation_error(e)}") from None
    except (ValueError, TypeError) as e:  # TypeError: an option Ray does not have
        raise ConfigError(f"{where}: {' '.join(str(e).split())}") from None


def build_application(args: Any, **deployment_options):
    """The Serve Application for `args`, with Ray deployment options (detector_deployment)."""
    parse_args(args)  # validated here so a bad config fails where it is deployed, with the field named
    # The replica re-validates the mapping itself, so `model` (the bundled demo weights when left out)
    # resolves on the node that runs it.
    raw = args.model_dump(mode="json") if isinstance(args, ServeConfig) else dict(args or {})
    return detector_deployment(deployment_options).bind(raw)


def build_app(args: dict):
    """Serve config entry point (`import_path: yoloray.serve.app:build_app`). `args` is validated with
    ServeConfig: {"profile": {Profile fields} or a profile file's path, "max_batch_size": int,
    "batch_wait_timeout_s": float, "max_image_bytes", "max_request_bytes", "max_images_per_request",
    "max_queued_images", "body_timeout_s"}."""
    return build_application(args)


# ------------------------------------------------------------------------------------ yoloray serve
def load_serve_config(path: str | Path, profile: str | Path | None = None):
    """Read and validate a Ray Serve config file; returns ray's ServeDeploySchema. `profile`: a profile file
    (a tune winner's `profile.yaml`, a job's `_profile.yaml`) whose fields replace every yoloray application's
    `args.profile` (and its max_batch_size, which then follows the profile's batch_size); they travel inside
    the config, so replicas on other nodes need no copy of the file."""
    return read_serve_config(path, profile)[0]


def read_serve_config(path: str | Path, profile: str | Path | None = None):
    """load_serve_config, and the names of the yoloray applications whose `num_gpus` is `auto` (the schema
    holds 1 for them until `yoloray serve` sees the cluster: pack_replicas). Each file is read once."""
    from pydantic import ValidationError
    from ray.serve.schema import ServeDeploySchema

    from yoloray.config import Profile, format_validation_error

    path = Path(path)
    data = read_mapping(path, "serve config", SERVE_CONFIG_HINT)
    check_known_keys(data, str(path))
    auto_gpus = auto_gpu_apps(data, replace_with=1)
    if profile is not None:
        fields = Profile.from_yaml(profile, "profile file", PROFILE_HINT).model_dump(mode="json")
        for app in data.get("applications") or []:
            if isinstance(app, dict) and app.get("import_path") == IMPORT_PATH:
                args = {k: v for k, v in (app.get("args") or {}).items() if k != "max_batch_size"}
                app["args"] = {**args, "profile": fields}  # serve batches follow the profile's batch_size
    try:
        return ServeDeploySchema.model_validate(data), auto_gpus
    except ValidationError as e:
        raise ConfigError(f"{path}: {format_validation_error(e)}") from None
    except (AttributeError, TypeError) as e:  # a validator of Ray's schema meeting a malformed part
        raise ConfigError(
            f"{path}: not a Ray Serve config Ray can read ({type(e).__name__}: {e}); `applications` and each "
            "application's `deployments` are lists of mappings"
        ) from None


def check_known_keys(data: dict, source: str = "serve config") -> None:
    """Ray's schema drops the keys it does not know in http_options, grpc_options and a deployment's options
    (its ray_actor_options and autoscaling_config too): a typo such as `num_replica: 4` would be ignored without
    a word. A ConfigError names the part, the unknown key, a close match and the keys Ray's own classes have.
    Parts that are not mappings are left to Ray's schema."""
    from ray.serve.config import AutoscalingConfig
    from ray.serve.schema import (
        DeploymentSchema,
        HTTPOptionsSchema,
        RayActorOptionsSchema,
        ServeApplicationSchema,
        gRPCOptionsSchema,
    )

    parts = [("http_options", data.get("http_options"), HTTPOptionsSchema),
             ("grpc_options", data.get("grpc_options"), gRPCOptionsSchema)]
    apps = data.get("applications")
    for app in apps if isinstance(apps, list) else []:
        deployments = app.get("deployments") if isinstance(app, dict) else None
        for d in deployments if isinstance(deployments, list) else []:
            if isinstance(d, dict):
                name = app.get("name", ServeApplicationSchema.model_fields["name"].default)
                where = f"application {name!r}: deployment {d.get('name', '(no name)')}"
                parts += [(where, d, DeploymentSchema),
                          (f"{where}: ray_actor_options", d.get("ray_actor_options"), RayActorOptionsSchema),
                          (f"{where}: autoscaling_config", d.get("autoscaling_config"), AutoscalingConfig)]
    for where, part, model in parts:
        if not isinstance(part, dict):
            continue
        known = {n for name, f in model.model_fields.items() for n in (name, f.alias) if n}
        unknown = [k for k in part if k not in known]
        if unknown:
            named = ", ".join(f"{k!r}{_close_match(str(k), known)}" for k in unknown)
            raise ConfigError(
                f"{source}: {where}: unknown key{'s' if len(unknown) > 1 else ''} {named}, which Ray would "
                f"ignore; the keys Ray reads there: {', '.join(sorted(known))}"
            )


def _close_match(key: str, known: set[str]) -> str:
    import difflib

    match = difflib.get_close_matches(key, sorted(known), n=1)
    return f" (did you mean {match[0]!r}?)" if match else ""


def applications_from(schema, source: str = "serve config") -> list[dict]:
    """[{name, route_prefix, config, args, options, deployment}] for each yoloray application in a
    ServeDeploySchema: `config` its validated ServeConfig, `deployment` the Detector deployment with the file's
    deployment options applied (bound to the args by `bound_app` when it is deployed). Validates every
    application, and Ray's checks of its route and deployment options, before any is started."""
    from ray.serve._private.utils import validate_route_prefix

    out = []
    for a in schema.applications:
        where = f"{source}: application {a.name!r}"
        if a.import_path != IMPORT_PATH:
            raise ConfigError(
                f"{where} has import_path {a.import_path!r}; `yoloray serve` runs {IMPORT_PATH} only "
                "(use `serve run` for other applications)"
            )
        options: dict = {}
        for d in a.deployments:
            if d.name != DEPLOYMENT_NAME:
                raise ConfigError(
                    f"{where}: unknown deployment {d.name!r}; this application has one: {DEPLOYMENT_NAME}"
                )
            options = d.model_dump(exclude_unset=True, exclude={"name"})
        try:  # Ray checks it only when the application is run
            validate_route_prefix(a.route_prefix)
        except ValueError as e:
            raise ConfigError(f"{where}: {e}") from None
        out.append(
            {
                "name": a.name,
                "route_prefix": a.route_prefix,
                "config": parse_args(a.args, source=f"{where} args"),
                "args": a.args,
                "options": options,
                "deployment": detector_deployment(options, where=f"{where}: deployment {DEPLOYMENT_NAME}"),
            }
        )
    return out


def bound_app(a: dict):
    """The Serve Application of `a` (applications_from; pack_replicas first where its num_gpus is auto), built
    when it is deployed. Its args go as the file gave them: each replica validates them again."""
    return a["deployment"].bind(dict(a["args"] or {}))


def auto_gpu_apps(data: dict, replace_with: float | None = None) -> set[str]:
    """Names of the yoloray applications whose Detector deployment has `ray_actor_options: {num_gpus: auto}`
    (Ray's schema takes numbers only: with `replace_with` the `auto` is replaced in `data`)."""
    names: set[str] = set()
    apps = data.get("applications") if isinstance(data, dict) else None
    for app in apps if isinstance(apps, list) else []:  # anything malformed is Ray's schema's to name
        if not isinstance(app, dict) or app.get("import_path") != IMPORT_PATH:
            continue
        deployments = app.get("deployments")
        for d in deployments if isinstance(deployments, list) else []:
            options = d.get("ray_actor_options") if isinstance(d, dict) else None
            if isinstance(options, dict) and options.get("num_gpus") == "auto":
                names.add(app.get("name", "default"))
                if replace_with is not None:
                    options["num_gpus"] = replace_with
    return names


def pack_replicas(a: dict, hardware) -> str:
    """Give application `a` (applications_from) the `num_gpus` per replica that its GPU memory budget, stored by
    an earlier replica or tuning trial of the same profile on this GPU model, fits (observe/budgets.py); one
    GPU per replica while none is stored, none on a cluster without GPUs. Returns the line to print."""
    from yoloray.observe.budgets import replica_gpus
    from yoloray.profile import resolve

    profile = resolve(a["config"].profile, hardware)  # as a replica resolves it (no sample)
    if not profile.device.startswith("cuda"):
        fraction, why = 0.0, f"num_gpus auto: 0 (the profile runs on the CPU: {hardware.describe()})"
    else:
        fraction, why = replica_gpus(profile, a["config"].max_batch_size or profile.batch_size, hardware)
    actor = {**a["options"].get("ray_actor_options", {}), "num_gpus": fraction}
    a["options"] = {**a["options"], "ray_actor_options": actor}
    # the deployment's other options were checked (and applied) by applications_from; only num_gpus changes
    a["deployment"] = a["deployment"].options(ray_actor_options=actor)
    return why


def _interrupt(signum, frame):
    raise KeyboardInterrupt


def replica_memory(port: int, route: str) -> str:
    """The GPU memory budget a replica measured at warmup, from its /info (observe/memory.py)."""
    import json
    import urllib.request

    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{route}/info", timeout=10) as r:
            return json.loads(r.read())["gpu_memory"]["text"]
    except Exception as e:  # the service is up; this line is informational
        return f"GPU memory per replica: unknown ({type(e).__name__}: {e})"


def error_line(e: BaseException) -> str:
    """`Type: message` on one line. Ray's errors from a remote actor (Serve's proxy, a replica) carry its
    traceback in the message: the last line is the exception it ended in."""
    lines = str(e).strip().splitlines()
    return lines[-1].strip() if len(lines) > 1 else f"{type(e).__name__}: {e}"


def deploy_failure(name: str | None) -> str:
    """Why application `name` did not start, as Serve's status has it: the last line (the exception) of each
    deployment's message, which holds a failed replica's whole traceback. "" when Serve says nothing more."""
    from ray import serve

    try:
        deployments = serve.status().applications[name].deployments
    except Exception:  # no such application (Serve did not start), or Serve unreachable: nothing to add
        return ""
    why = [f"{d}: {s.message.strip().splitlines()[-1]}" for d, s in deployments.items() if s.message.strip()]
    return f" ({'; '.join(why)}; the replica's traceback is in Ray's serve logs)" if why else ""


def main(argv: list[str] | None = None) -> int:
    """`yoloray serve CONFIG [--profile FILE] [--address auto] [--no-block]`: deploy the config's applications and block
    until Ctrl-C (then shut them down)."""
    p = argparse.ArgumentParser(
        prog="yoloray serve",
        description="Serve YOLO detection over HTTP and gRPC (Ray Serve). The config's `ingress` (proxy | haproxy) "
        "and the ingress guard are applied to the local Ray this command starts; on a cluster, export what "
        "`python -m yoloray.serve.ingress CONFIG` prints before `ray start`.",
    )
    p.add_argument("config", help="Ray Serve config file, e.g. serve_configs/detector.yaml")
    p.add_argument("--profile", metavar="FILE", help="serve this profile (a tune winner's runs/NAME/profile.yaml, "
                   "or a job's OUT/_profile.yaml) in every yoloray application of the config, in place of its "
                   "args.profile; serve batches follow its batch_size; the config's deployment options and "
                   "request limits stay")
    p.add_argument("--address", help="Ray cluster to deploy to (auto, ray://HOST:10001); default: local Ray")
    p.add_argument(
        "--blocking",
        dest="blocking",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="stay in the foreground until Ctrl-C (default); --no-blocking (or --no-block) returns once deployed",
    )
    p.add_argument("--no-block", dest="blocking", action="store_false", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    try:
        schema, auto_gpus = read_serve_config(args.config, args.profile)
        apps = applications_from(schema, source=str(args.config))
    except ConfigError as e:
        print(f"yoloray serve: error: {e}", file=sys.stderr)
        return 2

    import ray
    from ray import serve

    from yoloray.cluster import ClusterError, connect

    # Serve itself is shut down on exit only when it lives in a Ray this command started on this machine;
    # on a cluster only this config's applications are deleted.
    local = not ray.is_initialized() and not args.address and not os.environ.get("RAY_ADDRESS")
    if local:  # a missing weights file is one line here, not a replica's traceback (on a cluster it is theirs)
        from yoloray.engines.base import EngineError, check_weights_file

        try:
            for a in apps:
                check_weights_file(a["config"].profile.model)
        except EngineError as e:
            print(f"yoloray serve: error: {e}", file=sys.stderr)
            return 2
    from yoloray.serve.ingress import prepare

    try:  # Serve's processes inherit this environment; on a cluster, `ray start` must have had it
        wanted = prepare([a["config"] for a in apps], env=os.environ if local else {})
    except ConfigError as e:
        print(f"yoloray serve: error: {e}", file=sys.stderr)
        return 2
    if not local and wanted:
        print(
            f"yoloray serve: note: this config needs {', '.join(sorted(wanted))} in the cluster's environment "
            f"(`python -m yoloray.serve.ingress {args.config}` prints them for `ray start`); /info shows what "
            "the replicas run",
            flush=True,
        )
    try:  # without --address a new local Ray (yoloray/cluster.py), never one a stale file names
        started_ray = connect(args.address, namespace="serve", log_to_driver=args.blocking, include_dashboard=None)
    except ClusterError as e:
        print(f"yoloray serve: error: {e}", file=sys.stderr)
        return 2
    if auto_gpus:
        from yoloray.profile import Hardware

        hardware = Hardware.cluster()
        try:
            for a in apps:
                if a["name"] in auto_gpus:
                    print(f"yoloray serve: {a['name']}: {pack_replicas(a, hardware)}", flush=True)
        except ConfigError as e:
            print(f"yoloray serve: error: {e}", file=sys.stderr)
            if started_ray:
                ray.shutdown()
            return 2
    http = schema.http_options.model_dump(exclude_unset=True)
    grpc = schema.grpc_options.model_dump(exclude_unset=True)
    names = []
    ok = False
    try:
        serve.start(http_options=http, grpc_options=grpc or None, proxy_location=schema.proxy_location)
        for a in apps:
            serve.run(bound_app(a), name=a["name"], route_prefix=a["route_prefix"], blocking=False)
            names.append(a["name"])
            host, port = http.get("host", "127.0.0.1"), http.get("port", 8000)
            route = (a["route_prefix"] or "").rstrip("/")
            print(f"yoloray serve: {a['name']} is up at http://{host}:{port}{route}/detect", flush=True)
            print(f"yoloray serve: {a['name']}: {replica_memory(port, route)}", flush=True)
            if grpc.get("grpc_servicer_functions"):
                print(
                    f"yoloray serve: gRPC Detect at {host}:{grpc.get('port', 9000)} "
                    f"(metadata application={a['name']})",
                    flush=True,
                )
        ok = True
        if not args.blocking:
            if local:
                print(
                    "yoloray serve: --no-block on a local Ray: the service ends with this process", flush=True
                )
            return 0
        print("yoloray serve: Ctrl-C (or SIGTERM) to stop", flush=True)
        signal.signal(signal.SIGTERM, _interrupt)  # a container's stop: the same clean shutdown as Ctrl-C
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        print("yoloray serve: shutting down", flush=True)
        return 0
    except Exception as e:  # a deployment that failed to start (e.g. no GPU for device: cuda)
        failed = next((a["name"] for a in apps if a["name"] not in names), None)
        print(f"yoloray serve: error: {error_line(e)}{deploy_failure(failed)}", file=sys.stderr)
        return 1
    finally:
        if args.blocking or not ok:
            for name in names:
                serve.delete(name)
            if local:
                serve.shutdown()
            if started_ray:
                ray.shutdown()


if __name__ == "__main__":
    sys.exit(main())
