"""ServeConfig validation, the shipped Serve config file, and the HTTP helpers of the service (no Ray cluster)."""

from __future__ import annotations

import inspect
from pathlib import Path

import numpy as np
import pytest
import requests
import yaml

from yoloray.config import ConfigError, Profile
from yoloray.profile import resolve_here
from yoloray.serve.settings import ServeConfig

ROOT = Path(__file__).resolve().parents[2]
DETECTOR_YAML = ROOT / "serve_configs" / "detector.yaml"


# ----------------------------------------------------------------------------------------- ServeConfig
def test_defaults_follow_the_engine():
    c = ServeConfig.parse({})
    assert c.profile == Profile()
    assert c.max_batch_size is None and c.profile.batch_size == "auto"  # set when the replica resolves the profile
    assert c.resolved(resolve_here(c.profile)).max_batch_size == 16  # the CPU's resolved batch size
    assert ServeConfig.parse({"engine": {"batch_size": 8}}).max_batch_size == 8
    assert ServeConfig.parse({"engine": {"batch_size": 8}, "max_batch_size": 4}).max_batch_size == 4
    assert c.max_image_bytes == 20 * 2**20


def test_tune_contract_round_trips():
    args = {
        "engine": {"imgsz": "384x640", "batch_size": 32, "device": "cpu"},
        "max_batch_size": 32,
        "batch_wait_timeout_s": 0.005,
    }
    c = ServeConfig.parse(args)
    assert c.profile.imgsz == (384, 640) and c.max_batch_size == 32 and c.batch_wait_timeout_s == 0.005
    assert ServeConfig.parse(c.model_dump(mode="json")) == c


@pytest.mark.parametrize(
    "args, field",
    [
        ({"bogus": 1}, "bogus"),
        ({"engine": {"imgsz": 100}}, "engine.imgsz"),
        ({"engine": {"precision": "fp8"}}, "engine.precision"),
        ({"engine": {"nope": 1}}, "profile.nope"),
        ({"max_batch_size": 0}, "max_batch_size"),
        ({"engine": {"batch_size": 4}, "max_batch_size": 8}, "max_batch_size"),
        ({"batch_wait_timeout_s": -0.1}, "batch_wait_timeout_s"),
        ({"max_image_bytes": 0}, "max_image_bytes"),
        ({"max_image_bytes": 10, "max_request_bytes": 5}, "max_request_bytes"),
        ({"max_images_per_request": 10, "max_queued_images": 5}, "max_queued_images"),
    ],
)
def test_bad_args_name_the_field(args, field):
    with pytest.raises(ConfigError, match=field.replace(".", r"\.")) as e:
        ServeConfig.parse(args, source="serve args")
    assert str(e.value).startswith("serve args: ")


def test_parse_args_rejects_non_mapping():
    from yoloray.serve.app import parse_args

    with pytest.raises(ConfigError, match="mapping"):
        parse_args([1, 2])
    assert parse_args(None) == ServeConfig()


# ----------------------------------------------------------------------------------------- config file
def test_detector_yaml_is_a_valid_serve_config():
    from ray.serve.schema import ServeDeploySchema

    data = yaml.safe_load(DETECTOR_YAML.read_text())
    schema = ServeDeploySchema.model_validate(data)
    (app,) = schema.applications
    assert app.name == "yoloray" and app.route_prefix == "/"
    assert app.import_path == "yoloray.serve.app:build_app"
    c = ServeConfig.parse(app.args)
    assert c.profile.model == Profile().model  # the bundled demo detector
    assert c.profile.device == "auto"
    (dep,) = app.deployments
    assert dep.name == "Detector"
    auto = dep.autoscaling_config
    auto = auto if isinstance(auto, dict) else auto.model_dump()
    assert auto["min_replicas"] == 1 and auto["max_replicas"] == 2 and auto["target_ongoing_requests"] > 0
    assert dep.max_ongoing_requests >= c.max_batch_size
    assert dep.ray_actor_options.num_cpus == 1


def test_import_path_is_a_one_argument_builder():
    from importlib import import_module

    module, attr = ["yoloray.serve.app", "build_app"]
    fn = getattr(import_module(module), attr)
    assert len(inspect.signature(fn).parameters) == 1  # what Serve requires of an application builder


def test_applications_from_applies_deployment_options():
    from yoloray.serve.app import applications_from, bound_app, load_serve_config

    (a,) = applications_from(load_serve_config(DETECTOR_YAML))
    assert a["name"] == "yoloray" and a["route_prefix"] == "/"
    dep = bound_app(a)._bound_deployment
    assert dep.name == "Detector"
    assert dep.max_ongoing_requests == 64
    assert dep._deployment_config.autoscaling_config.max_replicas == 2
    assert dep.ray_actor_options["num_cpus"] == 1


def test_profile_file_replaces_every_applications_profile(tmp_path):
    """`yoloray serve CONFIG --profile FILE`: the profile's fields (not its path) go into the app's args, so a
    replica anywhere builds exactly that profile; the config's deployment options stay."""
    from yoloray.config import ConfigError, Profile
    from yoloray.serve.app import applications_from, bound_app, load_serve_config

    winner = Profile(imgsz=(384, 640), batch_size=8, precision="fp32", conf=0.4, calls_per_actor=3)  # file: 16
    path = tmp_path / "profile.yaml"
    winner.to_yaml(path)
    (a,) = applications_from(load_serve_config(DETECTOR_YAML, path))
    assert a["config"].profile == winner and a["config"].max_batch_size in (None, 8)  # follows batch_size
    assert bound_app(a)._bound_deployment.max_ongoing_requests == 64  # the file's deployment options kept
    path.unlink()  # nothing on a replica reads the file
    assert applications_from(load_serve_config(DETECTOR_YAML, None))[0]["config"].profile != winner
    (tmp_path / "bad.yaml").write_text("batch_size: -3\n")
    with pytest.raises(ConfigError, match="batch_size"):
        load_serve_config(DETECTOR_YAML, tmp_path / "bad.yaml")


def test_main_refuses_bad_config_without_starting_ray(tmp_path, capsys):
    import ray

    from yoloray.serve.app import main

    data = yaml.safe_load(DETECTOR_YAML.read_text())
    data["applications"][0]["args"]["profile"]["imgsz"] = 650
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump(data))
    assert main([str(bad), "--no-block"]) == 2
    err = capsys.readouterr().err
    assert "engine.imgsz" in err and "multiple of the model stride" in err
    data["applications"][0]["deployments"][0]["name"] = "Other"
    data["applications"][0]["args"]["profile"]["imgsz"] = 640
    bad.write_text(yaml.safe_dump(data))
    assert main([str(bad)]) == 2
    assert "unknown deployment 'Other'" in capsys.readouterr().err
    assert main([str(tmp_path / "missing.yaml")]) == 2
    bad.write_text("applications: 3\n")
    assert main([str(bad)]) == 2
    assert "applications" in capsys.readouterr().err
    data["applications"][0]["deployments"][0]["name"] = "Detector"
    data["applications"][0]["args"]["profile"]["model"] = str(tmp_path / "gone.pt")
    bad.write_text(yaml.safe_dump(data))
    assert main([str(bad)]) == 2  # a missing weights file: one line before Ray starts, not a replica traceback
    err = capsys.readouterr().err
    assert f"model weights {tmp_path / 'gone.pt'} do not exist" in err and "Traceback" not in err
    assert not ray.is_initialized()


def _serve_yaml(tmp_path, change=None, change_top=None) -> Path:
    """serve_configs/detector.yaml, with change(application, deployment) and change_top(data) applied, written to
    tmp_path/serve.yaml."""
    data = yaml.safe_load(DETECTOR_YAML.read_text())
    if change is not None:
        change(data["applications"][0], data["applications"][0]["deployments"][0])
    if change_top is not None:
        change_top(data)
    path = tmp_path / "serve.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def _file(tmp_path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


PASS_PROFILE = "; pass the profile.yaml a tuning sweep wrote (runs/NAME/profile.yaml) or a job's OUT/_profile.yaml"
PASS_CONFIG = "; pass a Ray Serve config (a mapping with an `applications:` list), e.g. serve_configs/detector.yaml"


@pytest.mark.parametrize(
    "argv, message",
    [  # argv and the message with {tmp} for tmp_path; files written by the lambdas
        (lambda t: [_serve_yaml(t), "--profile", t / "missing.yaml"], "profile file {tmp}/missing.yaml does not exist" + PASS_PROFILE),
        (lambda t: [_serve_yaml(t), "--profile", t], "profile file {tmp} is a folder, not a file" + PASS_PROFILE),
        (lambda t: [_serve_yaml(t), "--profile", _file(t, "p.yaml", "imgsz: [1,\n")],
         "profile file {tmp}/p.yaml is not valid YAML (line 2, column 1: expected the node content, but found '<stream end>')"),
        (lambda t: [_serve_yaml(t), "--profile", _file(t, "p.yaml", "imgsz: 640\nbogus_key: 3\n")],
         "profile file {tmp}/p.yaml: bogus_key: Extra inputs are not permitted"),
        (lambda t: [_serve_yaml(t), "--profile", _file(t, "p.yaml", "- imgsz\n")],
         "profile file {tmp}/p.yaml holds a list, not a mapping" + PASS_PROFILE),
        (lambda t: [_serve_yaml(t), "--profile", _file(t, "p.yaml", "")],
         "profile file {tmp}/p.yaml holds nothing, not a mapping" + PASS_PROFILE),
        (lambda t: [t / "missing.yaml"], "serve config {tmp}/missing.yaml does not exist" + PASS_CONFIG),
        (lambda t: [_file(t, "s.yaml", "applications:\n  - name: [x\n")], "serve config {tmp}/s.yaml is not valid YAML (line 3, column 1: "),
        (  # a profile file named in the config's args: read where the config is validated
            lambda t: [_serve_yaml(t, lambda a, d: a["args"].update(profile=str(_file(t, "p.yaml", "a: b: c\n"))))],
            "{tmp}/serve.yaml: application 'yoloray' args: profile file {tmp}/p.yaml is not valid YAML (line 1, column 5: "
            "mapping values are not allowed here)",
        ),
        (
            lambda t: [_serve_yaml(t, lambda a, d: a["args"].update(profile=str(t / "gone.yaml")))],
            "{tmp}/serve.yaml: application 'yoloray' args: profile file {tmp}/gone.yaml does not exist" + PASS_PROFILE,
        ),
        (  # Ray checks these only in Deployment.options() and serve.run(): before Ray starts here
            lambda t: [_serve_yaml(t, lambda a, d: d["autoscaling_config"].update(min_replicas=3))],
            "{tmp}/serve.yaml: application 'yoloray': deployment Detector: autoscaling_config: max_replicas (2) must "
            "be greater than or equal to min_replicas (3)!",
        ),
        (
            lambda t: [_serve_yaml(t, lambda a, d: a.update(route_prefix="detect"))],
            "{tmp}/serve.yaml: application 'yoloray': Invalid route_prefix 'detect', must start with a forward slash",
        ),
        (  # Ray's own schema fails on it with an AttributeError
            lambda t: [_serve_yaml(t, lambda a, d: a.update(deployments=[3]))],
            "{tmp}/serve.yaml: not a Ray Serve config Ray can read (AttributeError: 'int' object has no attribute "
            "'get'); `applications` and each application's `deployments` are lists of mappings",
        ),
        (  # keys Ray's schema would drop without a word: the allowed ones come from Ray's classes
            lambda t: [_serve_yaml(t, lambda a, d: d.update(num_replica=4))],
            "{tmp}/serve.yaml: application 'yoloray': deployment Detector: unknown key 'num_replica' (did you mean "
            "'num_replicas'?), which Ray would ignore; the keys Ray reads there: autoscaling_config, ",
        ),
        (
            lambda t: [_serve_yaml(t, lambda a, d: d.update(max_ongoing_request=64, zzz=1))],
            "{tmp}/serve.yaml: application 'yoloray': deployment Detector: unknown keys 'max_ongoing_request' (did "
            "you mean 'max_ongoing_requests'?), 'zzz', which Ray would ignore; the keys Ray reads there: ",
        ),
        (
            lambda t: [_serve_yaml(t, lambda a, d: d["ray_actor_options"].update(num_gpu=1))],
            "{tmp}/serve.yaml: application 'yoloray': deployment Detector: ray_actor_options: unknown key 'num_gpu' "
            "(did you mean 'num_gpus'?), which Ray would ignore; the keys Ray reads there: accelerator_type, ",
        ),
        (
            lambda t: [_serve_yaml(t, lambda a, d: d["autoscaling_config"].update(min_replica=1))],
            "{tmp}/serve.yaml: application 'yoloray': deployment Detector: autoscaling_config: unknown key "
            "'min_replica' (did you mean 'min_replicas'?), which Ray would ignore; the keys Ray reads there: ",
        ),
        (
            lambda t: [_serve_yaml(t, change_top=lambda data: data["http_options"].update(prot=8001))],
            "{tmp}/serve.yaml: http_options: unknown key 'prot' (did you mean 'port'?), which Ray would ignore; the "
            "keys Ray reads there: host, keep_alive_timeout_s, port, ",
        ),
        (
            lambda t: [_serve_yaml(t, change_top=lambda data: data.update(grpc_options={"portt": 9001}))],
            "{tmp}/serve.yaml: grpc_options: unknown key 'portt' (did you mean 'port'?), which Ray would ignore; "
            "the keys Ray reads there: enable_reflection, grpc_servicer_functions, port, request_timeout_s",
        ),
    ],
    ids=["profile-missing", "profile-folder", "profile-not-yaml", "profile-unknown-key", "profile-list",
         "profile-empty", "config-missing", "config-not-yaml", "args-profile-not-yaml", "args-profile-missing",
         "autoscaling-min-over-max", "route-prefix", "deployment-not-a-mapping", "deployment-typo",
         "deployment-two-unknown", "actor-options-typo", "autoscaling-typo", "http-options-typo",
         "grpc-options-typo"],
)
def test_serve_cli_errors_are_one_line(tmp_path, capsys, argv, message):
    """`yoloray serve` with a file that is missing, not YAML or not what it should hold: one line naming the file
    and what to pass, exit code 2, no traceback, before Ray starts."""
    import ray

    from yoloray.cli import main

    assert main(["serve", *map(str, argv(tmp_path)), "--no-block"]) == 2
    out, err = capsys.readouterr()
    assert err.startswith("yoloray serve: error: " + message.format(tmp=tmp_path)), err
    assert err.count("\n") == 1 and "Traceback" not in out + err
    assert not ray.is_initialized()


def test_error_line_keeps_the_exception_of_a_remote_traceback():
    from yoloray.serve.app import error_line

    remote = RuntimeError('ray::ProxyActor.ready()\n  File "proxy.py", line 1, in ready\nModuleNotFoundError: no.such')
    assert error_line(remote) == "ModuleNotFoundError: no.such"
    assert error_line(ValueError("bad")) == "ValueError: bad"


@pytest.mark.parametrize("via", ["--profile", "args.profile"])
def test_serve_reads_each_file_once_and_builds_each_app_once(tmp_path, monkeypatch, capsys, via):
    """`yoloray serve` with `num_gpus: auto`: the config and the profile file are read once (the applications
    whose GPUs are auto come from that read), each application is validated before Ray starts and built (bound)
    once, after its replicas are packed on the cluster."""
    from collections import Counter

    from ray import serve
    from ray.serve.deployment import Deployment

    import yoloray.cluster
    from yoloray.profile import Hardware
    from yoloray.serve import app as serve_app

    profile = tmp_path / "profile.yaml"
    Profile(imgsz=256, batch_size=4, precision="fp32").to_yaml(profile)

    def change(app, deployment):
        deployment["ray_actor_options"]["num_gpus"] = "auto"
        if via == "args.profile":
            app["args"] = {"profile": str(profile)}

    config = _serve_yaml(tmp_path, change)
    reads: Counter = Counter()
    read_text, bind = Path.read_text, Deployment.bind
    monkeypatch.setattr(Path, "read_text", lambda self, *a, **k: reads.update([str(self)]) or read_text(self, *a, **k))
    binds, runs = [], []
    monkeypatch.setattr(Deployment, "bind", lambda self, *a, **k: binds.append(self) or bind(self, *a, **k))
    monkeypatch.setattr(yoloray.cluster, "connect", lambda *a, **k: False)  # a cluster this process joined
    monkeypatch.setattr(Hardware, "cluster", classmethod(lambda cls: Hardware.of_gpu(1, "L4", 24.0, 16)))
    monkeypatch.setattr(serve, "start", lambda **k: None)
    monkeypatch.setattr(serve, "run", lambda app, **k: runs.append(app))
    monkeypatch.setattr(serve_app, "replica_memory", lambda port, route: "GPU memory per replica: (not measured)")
    monkeypatch.setenv("YOLORAY_CACHE", str(tmp_path / "cache"))  # no GPU memory budget stored: one GPU each

    flags = ["--profile", str(profile)] if via == "--profile" else []
    assert serve_app.main([str(config), *flags, "--address", "auto", "--no-block"]) == 0
    assert reads[str(config)] == 1 and reads[str(profile)] == 1
    assert "yoloray: num_gpus auto: 1 (no GPU memory budget stored" in capsys.readouterr().out
    (app,) = runs
    assert len(binds) == 1  # bound once, with the packed num_gpus
    deployment = app._bound_deployment
    assert deployment.ray_actor_options == {"num_cpus": 1, "num_gpus": 1}  # packed; the file's other options kept
    assert deployment.max_ongoing_requests == 64 and deployment._deployment_config.autoscaling_config.max_replicas == 2


# ----------------------------------------------------------------------------------------- HTTP helpers
def test_multipart_round_trip_keeps_bytes():
    from yoloray.serve.http import images_from_parts, media_type, parse_multipart

    blobs = [bytes(range(256)) * 40, b"\r\n--tricky\r\n" * 10, b"\xff\xd8" + b"\x00" * 5000]
    files = [("image", (f"{i}.jpg", b, "image/jpeg")) for i, b in enumerate(blobs)]
    req = requests.Request("POST", "http://127.0.0.1/detect", files=files).prepare()
    mtype, params = media_type(req.headers["Content-Type"])
    assert mtype == "multipart/form-data"
    datas, labels, errors = images_from_parts(parse_multipart(req.body, params["boundary"]))
    assert datas == blobs and labels == ["0.jpg", "1.jpg", "2.jpg"] and errors == [None] * 3


@pytest.mark.parametrize(
    "body, status",
    [
        (b"no boundary here", 400),
        (b"--b\r\nContent-Disposition: form-data; name=x\r\n", 400),
    ],
)
def test_malformed_multipart(body, status):
    from yoloray.serve.http import ApiError, parse_multipart

    with pytest.raises(ApiError) as e:
        parse_multipart(body, "b")
    assert e.value.status == status
    with pytest.raises(ApiError):
        parse_multipart(body, None)


def test_query_params():
    from yoloray.serve.http import ApiError, DetectParams

    p = DetectParams.from_query([("conf", "0.5"), ("max_det", "10")])
    assert p.conf == 0.5 and p.max_det == 10 and p.iou is None
    for bad in (
        [("conf", "2")],
        [("iou", "x")],
        [("max_det", "1001")],
        [("max_det", "0")],
        [("top", "1")],
        [("conf", "0.1"), ("conf", "0.2")],
    ):
        with pytest.raises(ApiError) as e:
            DetectParams.from_query(bad)
        assert e.value.status == 422


def test_image_checks_pick_the_status(photos):
    from yoloray.serve.http import check_content_type, check_image

    bus = photos["bus"].read_bytes()
    assert check_image(bus, 10**8, 10**8) is None
    assert check_image(b"", 10**8, 10**8).status == 400
    assert check_image(bus, 100, 10**8).status == 413
    assert check_image(bus, 10**8, 100).status == 413  # over max_pixels
    assert check_image(b"%PDF-1.4 ...", 10**8, 10**8).status == 415
    assert check_image(b'{"image": "base64..."}', 10**8, 10**8).status == 415
    assert check_image(b"\x00\x00\x00\x18ftypmp42" + b"\x00" * 100, 10**8, 10**8).status == 415
    assert check_image(bus[:-3000], 10**8, 10**8).status == 400
    for ok in ("image/jpeg", "image/webp", "application/octet-stream", "multipart/form-data", ""):
        check_content_type(ok)


def test_narrow_only_narrows():
    from yoloray.serve.http import DetectParams, ImageResult, effective_params, narrow

    engine = {"conf": 0.25, "iou": 0.7, "max_det": 300}
    boxes = np.array([[0, 0, 10, 10], [1, 1, 11, 11], [50, 50, 60, 60], [0, 0, 10, 10]], np.float32)
    r = ImageResult(
        100, 100, boxes, np.array([0.9, 0.5, 0.3, 0.8], np.float32), np.array([0, 0, 1, 1], np.int16)
    )
    same = narrow(r, effective_params(DetectParams(), **engine), engine, False)
    assert same is r
    eff = effective_params(DetectParams(conf=0.1, iou=0.9, max_det=500), **engine)
    assert eff == engine and narrow(r, eff, engine, False) is r
    hi = narrow(r, effective_params(DetectParams(conf=0.6), **engine), engine, False)
    assert hi.scores.tolist() == pytest.approx([0.9, 0.8])
    nms = narrow(r, effective_params(DetectParams(iou=0.5), **engine), engine, False)
    assert nms.scores.tolist() == pytest.approx([0.9, 0.8, 0.3])  # box 1 overlaps box 0 (same class)
    agn = narrow(r, effective_params(DetectParams(iou=0.5), **engine), engine, True)
    assert agn.scores.tolist() == pytest.approx([0.9, 0.3])  # class-agnostic: box 3 goes too
    top = narrow(r, effective_params(DetectParams(max_det=2), **engine), engine, False)
    assert top.scores.tolist() == pytest.approx([0.9, 0.8])


def test_a_failing_image_does_not_fail_its_batch():
    from yoloray.results import Detections
    from yoloray.serve.batcher import detect_isolated

    class Fake:
        names = {0: "a"}

        def __init__(self, broken_engine=False):
            self.broken = broken_engine

        def detect(self, datas):
            if self.broken or b"poison" in datas:
                raise RuntimeError("boom")
            d = Detections.empty(len(datas), self.names)
            d.widths[:] = 7
            return d

    out = detect_isolated(Fake(), [b"x", b"poison", b"y"], b"probe")
    assert [r.error is None for r in out] == [True, False, True]
    assert "RuntimeError: boom" in out[1].error and out[0].width == 7
    with pytest.raises(
        RuntimeError, match="boom"
    ):  # the engine itself fails: a server error, not the images'
        detect_isolated(Fake(broken_engine=True), [b"x"], b"probe")


def test_warmup_covers_every_batch_shape():
    from yoloray.serve.batcher import batch_shapes

    assert batch_shapes(4, 4, None) == [1, 2, 3, 4]
    assert batch_shapes(8, 4, None) == [1, 2, 3, 4]  # the Detector splits larger batches at its batch_size
    assert batch_shapes(32, 32, 8) == [8, 16, 24, 32]  # a static engine pads to multiples of its batch
    assert batch_shapes(32, 32, 32) == [32]


def test_ingress_prepare_and_report(tmp_path):
    from yoloray.serve.ingress import PORT_ENV, active_ingress, prepare
    from yoloray.serve.ingress_guard import HOOK, HOOK_ENV

    env = {"RAY_TMPDIR": str(tmp_path)}
    fast = ServeConfig.parse({"ingress": "haproxy", "body_timeout_s": 45, "max_request_bytes": 2**30})
    with pytest.raises(ConfigError, match="different ingresses"):
        prepare([fast, ServeConfig()], env={})
    changed = prepare([fast, ServeConfig(max_request_bytes=2**30, body_timeout_s=5, ingress="haproxy")], env=env, ports={"stats": 18599})
    assert env[HOOK_ENV] == HOOK and env["YOLORAY_SERVE_BODY_TIMEOUT_S"] == "45"
    assert env["YOLORAY_SERVE_MAX_BODY_BYTES"] == str(2**30)
    assert env["RAY_SERVE_ENABLE_HA_PROXY"] == "1" and env[PORT_ENV["stats"]] == "18599"
    assert env["RAY_SERVE_HAPROXY_TIMEOUT_CLIENT_S"] == "90"
    assert len(env["RAY_SERVE_HAPROXY_SOCKET_PATH"]) + 57 <= 97  # Ray adds a hash folder; a socket path's limit
    assert "RAY_TMPDIR" not in changed and HOOK_ENV in changed
    assert active_ingress(env) == {"mode": "haproxy", "guard": {"body_timeout_s": 45.0, "max_body_bytes": 2**30}}
    assert active_ingress({}) == {"mode": "proxy", "guard": None}
    plain: dict = {}
    prepare([ServeConfig()], env=plain)
    assert "RAY_SERVE_ENABLE_HA_PROXY" not in plain and active_ingress(plain)["mode"] == "proxy"


def test_detector_fast_yaml_asks_for_haproxy_and_grpc():
    from yoloray.serve.app import applications_from, load_serve_config
    from yoloray.serve.grpc_api import SERVICER

    schema = load_serve_config(ROOT / "serve_configs" / "detector_fast.yaml")
    assert schema.grpc_options.grpc_servicer_functions == [SERVICER]
    (a,) = applications_from(schema)
    assert a["config"].ingress == "haproxy"
    assert a["config"].model_dump(exclude={"ingress"}) == ServeConfig.parse(
        yaml.safe_load(DETECTOR_YAML.read_text())["applications"][0]["args"]
    ).model_dump(exclude={"ingress"})
