"""`ServeConfig`: the `args` of the yoloray application in a Ray Serve config (validated here, before Ray).

Split out of yoloray/config.py (which keeps the profile models every path shares); imports nothing of Ray.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from yoloray.config import AUTO, PROFILE_HINT, Profile, _Model, read_mapping

# what to pass instead, said when a file given to `yoloray serve` is not there or holds no mapping
SERVE_CONFIG_HINT = (
    "; pass a Ray Serve config (a mapping with an `applications:` list), e.g. serve_configs/detector.yaml or the "
    "serve.yaml a tuning sweep wrote (runs/NAME/serve.yaml)"
)


class ServeConfig(_Model):
    """The `args` of the yoloray application in a Ray Serve config (`yoloray.serve.app:build_app`).

    `profile` is the Profile every replica builds, warms and serves: a mapping, the path of a profile file
    (read where the config is validated and on each replica), or earlier versions' flat `engine:` mapping,
    which is read as the profile; the rest shapes the HTTP service. Replica counts,
    `max_ongoing_requests`, autoscaling and GPUs are Ray's own deployment options and live in the config
    file's `deployments:` entry, not here.
    """

    profile: Profile = Field(default_factory=Profile)
    max_batch_size: int | None = Field(
        None, ge=1, le=1024, description="images per engine call of a replica (default: the profile's batch_size)"
    )  # filled from the profile's batch_size when left out (by the replica when that is auto)

    batch_wait_timeout_s: float = Field(
        0.01, ge=0.0, le=10.0, description="while the engine is idle, longest wait for a batch to fill once its first image arrived"
    )
    max_image_bytes: int = Field(20 * 2**20, ge=1, le=2**30, description="larger images are refused (413)")
    max_request_bytes: int = Field(
        100 * 2**20, ge=1, le=2**32, description="larger request bodies are refused (413) before being read"
    )
    max_images_per_request: int = Field(64, ge=1, le=4096, description="images in one multipart request")
    max_queued_images: int = Field(
        1024, ge=1, description="images admitted to one replica and not yet answered; more are refused (503)"
    )
    ingress: Literal["proxy", "haproxy"] = Field(
        "proxy",
        description="what Ray Serve puts in front of the replicas: its Python HTTP proxy, or HAProxy with "
        "direct ingress (yoloray.serve.ingress); applied by `yoloray serve` to the Ray it starts",
    )
    body_timeout_s: float = Field(
        30.0,
        gt=0.0,
        le=3600.0,
        description="a request body not complete this long after its headers is refused (408), at the "
        "ingress guard and again in the replica",
    )

    def resolved(self, profile: Profile) -> ServeConfig:
        """This config running `profile` (the replica's resolved one); max_batch_size follows it if not given."""
        return ServeConfig.parse({**self.model_dump(), "profile": profile, "max_batch_size": self.max_batch_size})

    @model_validator(mode="before")
    @classmethod
    def _default_batch(cls, data):
        if not isinstance(data, dict):
            return data
        if "engine" in data:  # earlier versions: `engine:` held the flat EngineConfig
            if "profile" in data:
                raise ValueError("give `profile:` only (`engine:` is its old name)")
            data = {"profile": data["engine"], **{k: v for k, v in data.items() if k != "engine"}}
        if isinstance(data.get("profile"), str):  # a profile file (a tune winner's or a job's profile.yaml)
            data = {**data, "profile": read_mapping(data["profile"], "profile file", PROFILE_HINT)}
        return data

    @model_validator(mode="after")
    def _batch_fits_engine(self):
        batch = self.profile.batch_size
        if self.max_batch_size is None and batch != AUTO:  # with batch_size auto: set when the replica resolves it
            object.__setattr__(self, "max_batch_size", batch)  # frozen: set once, here
        if batch != AUTO and self.max_batch_size > batch:
            raise ValueError(
                f"max_batch_size {self.max_batch_size} is larger than the profile's batch_size "
                f"{self.profile.batch_size}: every serve batch would be split into several engine calls; set "
                "max_batch_size <= batch_size (usually equal)"
            )
        if self.max_images_per_request > self.max_queued_images:
            raise ValueError(
                f"max_images_per_request {self.max_images_per_request} is larger than max_queued_images "
                f"{self.max_queued_images}: such a request could never be admitted"
            )
        if self.max_image_bytes > self.max_request_bytes:
            raise ValueError(
                f"max_image_bytes {self.max_image_bytes} is larger than max_request_bytes {self.max_request_bytes}"
            )
        return self
