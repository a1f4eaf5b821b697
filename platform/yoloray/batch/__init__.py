"""Batch inference on Ray Data: `detect(ds, config)` composes with any pipeline; `run_job` is the resumable job."""

from yoloray.batch.pipeline import ActorOptions, JobError, Summary, detect, run_job

__all__ = ["ActorOptions", "JobError", "Summary", "detect", "run_job"]
