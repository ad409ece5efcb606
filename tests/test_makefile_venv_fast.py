"""`make install` (and so `make run`/`make test`) with a broken `python3 -m venv` says how to fix it,
and a half-made .venv (a python without a working pip, as a failed venv leaves) is rebuilt.

The project's Makefile runs in a scratch copy with a stand-in `python3` (PYTHON=...): it passes
`-c` checks to the real interpreter and either fails `-m venv` as Debian's does without
python3-venv, or makes a .venv whose python logs what it was asked to do instead of installing.
"""

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

FAKE_PYTHON = """#!/bin/sh
if [ "$1" = "-c" ]; then exec {real} "$@"; fi
if [ "$1 $2" = "-m venv" ]; then
    {venv}
fi
echo "unexpected: $*" >&2; exit 2
"""
FAILING_VENV = """mkdir -p "$3/bin"; printf '#!/bin/sh\\nexit 1\\n' > "$3/bin/python"
    chmod +x "$3/bin/python"
    echo "The virtual environment was not created successfully because ensurepip is not available." >&2
    exit 1"""
WORKING_VENV = """mkdir -p "$3/bin"
    printf '#!/bin/sh\\necho "$*" >> %s/calls\\n' "$(pwd)" > "$3/bin/python"; chmod +x "$3/bin/python"
    exit 0"""


@pytest.fixture
def project(tmp_path: Path) -> Path:
    if shutil.which("make") is None:
        pytest.skip("make is not installed")
    for name in ("Makefile", "pyproject.toml", "constraints.txt"):
        shutil.copy(ROOT / name, tmp_path / name)
    return tmp_path


def fake_python(project: Path, venv_step: str) -> Path:
    path = project / "fake-python3"
    path.write_text(FAKE_PYTHON.format(real=sys.executable, venv=venv_step))
    path.chmod(0o755)
    return path


def make_install(project: Path, python: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["make", "--no-print-directory", "install", f"PYTHON={python}"],
        cwd=project, capture_output=True, text=True, timeout=60,
    )  # fmt: skip


def half_made_venv(project: Path) -> Path:
    """What a failed `python3 -m venv` leaves: bin/python, and no pip."""
    python = project / ".venv" / "bin" / "python"
    python.parent.mkdir(parents=True)
    python.write_text("#!/bin/sh\nexit 1\n")
    python.chmod(0o755)
    return python


def test_a_failing_venv_says_what_to_install_and_leaves_no_half_made_venv(project: Path) -> None:
    result = make_install(project, fake_python(project, FAILING_VENV))
    assert result.returncode != 0
    assert "apt-get install python3-venv" in result.stdout + result.stderr
    assert not (project / ".venv").exists(), "the next run must not trust a half-made .venv"


def test_a_half_made_venv_is_rebuilt(project: Path) -> None:
    half_made_venv(project)
    result = make_install(project, fake_python(project, WORKING_VENV))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "incomplete" in result.stdout + result.stderr
    calls = (project / "calls").read_text().splitlines()  # the rebuilt venv's python did the installs
    assert any("install" in call and ".[server,dev]" in call for call in calls), calls
    assert list(project.glob(".venv/.installed-*")), "installed: the stamp is written"


def test_a_complete_venv_is_kept(project: Path) -> None:
    make_install(project, fake_python(project, WORKING_VENV))
    (project / ".venv" / "kept").touch()
    (project / "pyproject.toml").write_text((project / "pyproject.toml").read_text() + "\n")  # reinstall
    result = make_install(project, fake_python(project, FAILING_VENV))  # venv is not called again
    assert result.returncode == 0, result.stdout + result.stderr
    assert (project / ".venv" / "kept").exists()
