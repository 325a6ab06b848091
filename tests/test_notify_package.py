"""The built-in templates ship in the wheel: a non-editable install renders its mails from them."""

from __future__ import annotations

import shutil
import subprocess
import sys
import sysconfig
import textwrap
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).parent.parent


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A wheel built by pip from a copy of the source tree (so the tree gets no build/ directory)."""
    src = tmp_path_factory.mktemp("src")
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, src / name)
    for name in ("mailtrack", "templates"):
        shutil.copytree(ROOT / name, src / name, ignore=shutil.ignore_patterns("__pycache__"))
    out = tmp_path_factory.mktemp("wheel")
    cmd = [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-cache-dir", "-w", str(out), str(src)]
    r = subprocess.run(cmd, capture_output=True, text=True, check=False)
    assert 0 == r.returncode, r.stderr
    [whl] = out.glob("*.whl")
    return whl


@pytest.mark.slow  # ~2 s: builds a wheel (the module fixture)
def test_wheel_holds_every_module_and_template(wheel: Path) -> None:
    """Every module of mailtrack/ and every template of templates/ (as mailtrack/templates/) is in the wheel."""
    expected = {p.relative_to(ROOT).as_posix() for p in (ROOT / "mailtrack").rglob("*.py")}
    expected |= {f"mailtrack/templates/{p.name}" for p in (ROOT / "templates").glob("*.txt")}
    assert set() == expected - set(zipfile.ZipFile(wheel).namelist())


@pytest.mark.slow  # builds a wheel when run alone (the module fixture)
def test_installed_wheel_renders_templates_with_includes(wheel: Path, tmp_path: Path) -> None:
    """The package unpacked from the wheel, with no source tree or editable install in sight, renders a notification."""
    site = tmp_path / "site"
    zipfile.ZipFile(wheel).extractall(site)
    deps = sorted({sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]})
    code = textwrap.dedent(f"""
        import sys
        sys.path[:0] = [{str(site)!r}, *{deps!r}]
        from mailtrack.mail import compose as render
        assert render.__file__.startswith({str(site)!r}), render.__file__
        headers, body = render.Renderer().render(
            "notify-changed.txt", project="proj", short="d14142c", title="Printer on fire", actor_name="Dan",
            changes=[{{"line": "priority: high -> low"}}], description_changed=False, attachments=[],
            status="new", resolution="", issue_address="issues+d14142c@tracker.localhost", reason_text="you own it",
            control_address="control@tracker.localhost")
        print(headers["Subject"])
        print(body, end="")
    """)
    # -I -S: no PYTHONPATH, no current directory and no site-packages (so no editable-install finder).
    cmd = [sys.executable, "-I", "-S", "-c", code]
    r = subprocess.run(cmd, capture_output=True, text=True, cwd=tmp_path, check=False)
    assert (0, "") == (r.returncode, r.stderr)
    subject, _, text = r.stdout.partition("\n")
    assert "[proj #d14142c] Printer on fire" == subject
    assert text.startswith("Dan changed:\n\n  priority: high -> low\n\n-- \nIssue d14142c of proj: Printer on fire\n")
