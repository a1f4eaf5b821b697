"""Optuna through Ray Tune, never suggesting a point twice (imported only for sweeps that use Optuna)."""

from __future__ import annotations

import json

from optuna.trial import TrialState
from ray.tune.search import Searcher
from ray.tune.search.optuna import OptunaSearch


class DistinctOptunaSearch(OptunaSearch):
    """OptunaSearch that never runs a point twice: a repeated suggestion is told to Optuna at once (with the
    value already measured, or as pruned while that trial still runs) and Optuna is asked again."""

    MAX_TRIES = 200

    def suggest(self, trial_id: str):
        seen = self.__dict__.setdefault("_points", {})  # point -> measured value (None while running)
        for _ in range(self.MAX_TRIES):
            config = super().suggest(trial_id)
            key = json.dumps(config["engine"], sort_keys=True)
            if key not in seen:
                seen[key] = None
                self.__dict__.setdefault("_keys", {})[trial_id] = key
                return config
            ot_trial = self._ot_trials.pop(trial_id)
            if seen[key] is None:
                self._ot_study.tell(ot_trial, state=TrialState.PRUNED)
            else:
                self._ot_study.tell(ot_trial, seen[key])
        return Searcher.FINISHED  # every point of the space has been suggested

    def on_trial_complete(self, trial_id: str, result=None, error: bool = False):
        key = self.__dict__.get("_keys", {}).get(trial_id)
        if key is not None and result and result.get(self.metric) is not None:
            self._points[key] = result[self.metric]
        super().on_trial_complete(trial_id, result=result, error=error)
