"""The shipped package as an operator installs it: a wheel in a fresh virtualenv, no dev extras.

Slow-ish (a venv and an install from the package index or pip's cache), so one test does it all.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def _run(*cmd: str | Path, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(c) for c in cmd], cwd=cwd, capture_output=True, text=True, timeout=600, check=False
    )


@pytest.mark.timeout(900)
def test_the_wheel_installs_and_runs_without_dev_extras(tmp_path: Path) -> None:
    wheels = tmp_path / "wheels"
    built = _run(
        sys.executable, "-m", "pip", "wheel", "--no-deps",
        "-w", wheels, ROOT,
    )  # fmt: skip
    assert built.returncode == 0, built.stderr[-2000:]
    (wheel,) = wheels.glob("messenger_bridge-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert any(n.startswith("bridge/") for n in names)
    assert not [n for n in names if "/sim/" in n or n.startswith("tests/")], (
        "simulators and tests are not shipped"
    )

    venv = tmp_path / "venv"
    assert _run(sys.executable, "-m", "venv", venv).returncode == 0
    installed = _run(venv / "bin" / "python", "-m", "pip", "install", "--quiet", wheel)
    assert installed.returncode == 0, installed.stderr[-2000:]
    listed = _run(venv / "bin" / "python", "-m", "pip", "list", "--format=freeze").stdout
    for dev_tool in ("pytest", "hypothesis", "ruff", "mypy", "schemathesis"):
        assert f"{dev_tool}==" not in listed.lower(), f"{dev_tool} installed without [dev]"

    exe = venv / "bin" / "messenger-bridge"
    shown = _run(exe, "--version")
    assert shown.returncode == 0 and shown.stdout.startswith("messenger-bridge "), shown

    # check-config from anywhere, on the example config with its storage under tmp_path.
    config = tmp_path / "config.toml"
    example = (ROOT / "config.example.toml").read_text()
    config.write_text(example.replace('path = "var/', f'path = "{tmp_path}/var/'))
    checked = _run(exe, "--config", config, "check-config", cwd=tmp_path)
    assert checked.returncode == 0, checked.stderr
    assert "OK" in checked.stdout

    # The shipped systemd unit, pointed at this install, passes systemd's own checks.
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        return  # not on this machine: the rest was checked
    unit = tmp_path / "messenger-bridge.service"
    text = (ROOT / "deploy" / "messenger-bridge.service").read_text()
    unit.write_text(text.replace("/opt/messenger-bridge/bin/messenger-bridge", str(exe)))
    verified = _run(analyze, "verify", unit)
    assert verified.returncode == 0, verified.stderr
