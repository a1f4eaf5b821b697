"""Ctrl-C in a `yoloray` command: one line and exit code 130, the command's own cleanup kept, other errors not
hidden (cli.main)."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import cv2
import numpy as np
import pytest

from yoloray.cli import main


def _interrupt(*args, **kwargs):
    raise KeyboardInterrupt


def test_ctrl_c_in_a_command_is_one_line(monkeypatch, capsys):
    import yoloray.demo

    monkeypatch.setattr(yoloray.demo, "run_demo", _interrupt)
    assert main(["-v", "demo", "--frames", "1"]) == 130
    out, err = capsys.readouterr()
    assert (out, err) == ("", "yoloray demo: interrupted\n")


def test_ctrl_c_while_serve_starts_ray_is_one_line(tmp_path, monkeypatch, capsys):
    """`serve` has its own parser (a delegated command): Ctrl-C while Ray starts ends the same way."""
    import ray

    import yoloray.cluster

    config = tmp_path / "serve.yaml"
    config.write_text("applications:\n  - name: yoloray\n    import_path: yoloray.serve.app:build_app\n")
    monkeypatch.setattr(yoloray.cluster, "connect", _interrupt)
    assert main(["serve", str(config), "--address", "auto", "--no-block"]) == 130
    out, err = capsys.readouterr()
    assert err == "yoloray serve: interrupted\n" and "Traceback" not in out
    assert not ray.is_initialized()


def test_other_errors_are_not_hidden(monkeypatch):
    import yoloray.demo

    def fail(*args, **kwargs):
        raise RuntimeError("a bug")

    monkeypatch.setattr(yoloray.demo, "run_demo", fail)
    with pytest.raises(RuntimeError, match="a bug"):
        main(["demo"])


def test_ctrl_c_in_infer_shuts_ray_down_and_is_one_line(tmp_path):
    """In its own process, as a terminal sees it (infer sends its stderr to the Ray log while it runs): Ctrl-C
    after Ray started (here: while the cluster's hardware is read) shuts Ray down, leaves the traceback in the
    log and prints one line naming the command, exit code 130."""
    images = tmp_path / "images"
    images.mkdir()
    cv2.imwrite(str(images / "a.jpg"), np.full((32, 32, 3), 90, np.uint8))
    script = textwrap.dedent(
        """
        import sys
        import ray
        import yoloray.cli, yoloray.profile

        def interrupt(*args, **kwargs):
            raise KeyboardInterrupt

        yoloray.cli.init_ray = lambda address: True  # as if this command had started Ray
        yoloray.profile.Hardware.cluster = staticmethod(interrupt)
        ray.shutdown = lambda: print("ray.shutdown", flush=True)
        sys.exit(yoloray.cli.main(sys.argv[1:]))
        """
    )
    env = {**os.environ, "YOLORAY_LOG_DIR": str(tmp_path / "logs"), "YOLO_OFFLINE": "true",
           "RAY_USAGE_STATS_ENABLED": "0"}
    r = subprocess.run([sys.executable, "-c", script, "infer", str(images), "--out", str(tmp_path / "out")],
                       env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 130, r.stderr
    assert r.stderr == "yoloray infer: interrupted\n"
    (log,) = (tmp_path / "logs").iterdir()
    assert "ray.shutdown" in log.read_text() and "KeyboardInterrupt" in log.read_text()
