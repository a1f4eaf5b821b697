"""Ray Serve: the detection service (`build_app` for serve configs, `main` for `yoloray serve`).

Importing this package does not import Ray; `yoloray.serve.app` imports it only where needed.
"""

from __future__ import annotations


def build_app(args: dict):
    from yoloray.serve.app import build_app as _build_app

    return _build_app(args)


__all__ = ["build_app"]
