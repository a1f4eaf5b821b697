"""GPU memory budgets remembered in the artifact cache and the `auto` layout's packing from them
(observe/budgets.py), on the CPU: budgets are written to a temporary cache as a GPU actor would write them."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from yoloray.config import Profile
from yoloray.observe import budgets
from yoloray.observe.memory import GIB, MemoryBudget
from yoloray.profile import Hardware, Sample, resolve, summary

L4 = Hardware.of_gpu(1, "L4", 24.0, 16)  # as Hardware.cluster() names it: Ray's accelerator_type
JPEG = Sample(((1920, 1080),) * 4, ("jpeg",) * 4)


def measured(gib: float, name: str = "NVIDIA L4", total_gib: float = 24.0) -> MemoryBudget:
    """A budget as observe/memory.measure reads it on a GPU actor."""
    return MemoryBudget("cuda:0", int(gib * GIB), int(gib * 0.8 * GIB), int(total_gib * GIB), name)


@pytest.fixture
def profile(tmp_path):
    return Profile(cache_dir=str(tmp_path / "cache"))


def store(profile: Profile, budget: MemoryBudget, hardware: Hardware = L4) -> Profile:
    """Resolve `profile` as a job does, and store `budget` as its first actor would; returns the resolved one."""
    resolved = resolve(profile, hardware, JPEG)
    assert budgets.remember(budget, budgets.batch_fields(resolved), profile.cache_dir)
    return resolved


@pytest.mark.parametrize(("name", "model"), [("NVIDIA H200", "H200"), ("H200", "H200"),
                                             ("NVIDIA A100-SXM4-80GB", "A100"), ("A100", "A100"),
                                             ("NVIDIA GeForce RTX 4090", "GeForce-RTX-4090"),
                                             ("GeForce-RTX-4090", "GeForce-RTX-4090"), (None, "")])
def test_gpu_model_matches_rays_accelerator_type(name, model):
    assert budgets.gpu_model(name) == model


def test_no_budget_keeps_the_default_and_says_the_first_actor_measures(profile):
    p = resolve(profile, L4, JPEG)
    assert p.actors_per_gpu == 3
    text = summary(p, L4, JPEG, set(profile.auto_fields()))
    assert "no GPU memory budget stored for this profile on L4 yet: actors_per_gpu=3 stands" in text


def test_a_stored_budget_caps_auto_actors_per_gpu(profile):
    store(profile, measured(8.0))  # (24 GiB x 0.9) // (8 GiB + 0.59 GiB context) = 2
    p = resolve(profile, L4, JPEG)
    assert p.actors_per_gpu == 2
    text = summary(p, L4, JPEG, set(profile.auto_fields()))
    assert "actors_per_gpu=2*" in text
    assert "8.00 GiB per actor measured on L4" in text and "2 fit on a 24 GiB GPU; auto packs at most 2" in text
    # the driver of a cluster names the GPU as a CUDA device does on the actor: the same key
    assert resolve(profile, Hardware.of_gpu(1, "NVIDIA L4", 24.0, 16), JPEG).actors_per_gpu == 2


def test_a_budget_is_per_gpu_model_and_per_profile(profile):
    store(profile, measured(8.0))
    assert resolve(profile, Hardware.of_gpu(1, "H200", 24.0, 16), JPEG).actors_per_gpu == 3  # another GPU model
    other = profile.replace(calls_per_actor=4)  # four concurrent calls hold more buffers: not the same budget
    assert resolve(other, L4, JPEG).actors_per_gpu == 3
    assert resolve(profile.replace(batch_size=64), L4, JPEG).actors_per_gpu == 3  # another engine


def test_gpu_memory_unknown_on_the_driver_uses_the_measured_gpus(profile):
    store(profile, measured(8.0))
    no_memory = Hardware.of_gpu(1, "L4", None, 16)  # Hardware.cluster() on a head node without that GPU
    assert resolve(profile, no_memory, JPEG).actors_per_gpu == 2


def test_a_small_budget_never_raises_the_default(profile):
    store(profile, measured(1.0))  # 19 would fit: packing only caps the measured default
    assert resolve(profile, L4, JPEG).actors_per_gpu == 3


def test_an_explicit_value_wins_with_a_warning_naming_what_fits(profile):
    store(profile, measured(8.0))
    given = profile.replace(actors_per_gpu=4)
    p = resolve(given, L4, JPEG)
    assert p.actors_per_gpu == 4
    text = summary(p, L4, JPEG, set(given.auto_fields()))
    assert "warning   actors_per_gpu=4 (given)" in text and "set actors_per_gpu: 2 (or auto)" in text
    fits = resolve(profile.replace(actors_per_gpu=2), L4, JPEG)
    assert "warning" not in summary(fits, L4, JPEG, set())


def test_a_larger_measurement_replaces_a_smaller_one_only(profile):
    resolved = store(profile, measured(6.0))
    what = budgets.batch_fields(resolved)
    assert not budgets.remember(measured(5.0), what, profile.cache_dir)
    assert budgets.recall(what, "L4", profile.cache_dir).peak_reserved == 6 * GIB
    assert budgets.remember(measured(8.0), what, profile.cache_dir)
    assert budgets.recall(what, "NVIDIA L4", profile.cache_dir).peak_reserved == 8 * GIB


def test_nothing_is_stored_or_packed_on_the_cpu(profile, tmp_path):
    cpu = MemoryBudget("cpu")
    resolved = resolve(profile, L4, JPEG)
    assert not budgets.remember(cpu, budgets.batch_fields(resolved), profile.cache_dir)
    on_cpu = resolve(profile, Hardware(cpus=2), JPEG)
    assert on_cpu.actors_per_gpu == 1 and budgets.packing(on_cpu, Hardware(cpus=2), True) is None
    assert "memory" not in summary(on_cpu, Hardware(cpus=2), JPEG, set(profile.auto_fields()))
    from yoloray.observe.reports import ActorObserve

    assert ActorObserve().for_profile(on_cpu).budget_key is None  # the actors remember nothing
    assert ActorObserve().for_profile(resolved).budget_key == budgets.batch_fields(resolved)


def test_the_actor_remembers_its_first_measurement(profile, monkeypatch):
    from yoloray.observe import actor
    from yoloray.observe.reports import ActorObserve

    resolved = resolve(profile, L4, JPEG)
    monkeypatch.setattr(actor.memory, "measure", lambda device: measured(8.0))
    obs = actor.ActorObserver(ActorObserve().for_profile(resolved), "engine", "cpu")
    with obs.call():
        pass
    assert budgets.recall(budgets.batch_fields(resolved), "L4", profile.cache_dir).peak_reserved == 8 * GIB
    assert resolve(profile, L4, JPEG).actors_per_gpu == 2  # the next job packs from it


def test_after_job_warns_when_the_default_did_not_fit():
    line = budgets.after_job([measured(8.0)], 3)
    assert "3 actors per GPU x 8.00 GiB" in line and "set actors_per_gpu: 2" in line
    assert budgets.after_job([measured(8.0)], 2) is None
    assert budgets.after_job([MemoryBudget("cpu")], 3) is None
    reports = [{"kind": "memory", **measured(8.0).to_dict()}, {"kind": "trace", "table": "", "path": "x"}]
    assert budgets.budgets_of(reports) == [measured(8.0)]


def test_serve_replicas_num_gpus_auto(profile):
    hardware = L4
    resolved = resolve(profile.replace(batch_size=32), hardware)
    assert budgets.replica_gpus(resolved, 32, hardware)[0] == 1.0  # none stored: one GPU per replica
    what = budgets.detector_fields(resolved, 32)  # what a replica (or a tuning trial) stores at warmup
    assert budgets.remember(measured(8.0), what, profile.cache_dir)
    fraction, why = budgets.replica_gpus(resolved, 32, hardware)
    assert fraction == 0.5 and "num_gpus auto: 1/2" in why
    assert budgets.replica_gpus(resolved, 16, hardware)[0] == 1.0  # batches of 16: not what was measured
    assert budgets.winner_lines(resolved, hardware)[1].startswith("GPU memory per serve replica: peak 8.00 GiB")


def test_serve_config_takes_num_gpus_auto(tmp_path, monkeypatch):
    from yoloray.serve.app import applications_from, auto_gpu_apps, load_serve_config

    data = yaml.safe_load((Path(__file__).parents[2] / "serve_configs" / "detector.yaml").read_text())
    data["applications"][0]["deployments"][0]["ray_actor_options"]["num_gpus"] = "auto"
    path = tmp_path / "serve.yaml"
    path.write_text(yaml.safe_dump(data))
    assert auto_gpu_apps(data) == {"yoloray"}
    apps = applications_from(load_serve_config(path))  # Ray's schema would refuse the string
    assert apps[0]["options"]["ray_actor_options"]["num_gpus"] == 1
    # `yoloray serve` on an L4 cluster: one replica per GPU until a replica of this profile stored its budget
    from yoloray.serve.app import pack_replicas

    monkeypatch.setenv("YOLORAY_CACHE", str(tmp_path / "cache"))
    assert "num_gpus auto: 1 (no GPU memory budget stored" in pack_replicas(apps[0], L4)
    config = apps[0]["config"]
    replica = resolve(config.profile, L4)
    assert budgets.remember(measured(8.0), budgets.detector_fields(replica, config.max_batch_size))
    assert "num_gpus auto: 1/2" in pack_replicas(apps[0], L4)
    assert apps[0]["options"]["ray_actor_options"] == {"num_cpus": 1, "num_gpus": 0.5}
