"""The front page and the documentation hold what they promise: the README's Python example runs
as written (on the shipped model), every `medmtl` command in the README and the usage pages names
a real command and real options, every relative link resolves (anchors included),
docs/index.md links every page of docs/, and the README's set-up stops in one line on a full disk."""

from __future__ import annotations

import contextlib
import io
import re
import shlex
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
DOCS = ROOT / "docs"
# the pages whose commands are checked against the CLI (the README's set and the usage pages)
COMMAND_PAGES = [README, *(DOCS / n for n in ("usage.md", "data.md", "training.md",
                                              "reports.md"))]
LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")


def _blocks(text: str, lang: str) -> list[str]:
    return re.findall(rf"```{lang}\n(.*?)```", text, flags=re.S)


def test_readme_python_example_runs(tmp_path: Path, one_thread: None) -> None:
    import cv2

    from medmtl.inference.loader import SHIPPED

    if not (ROOT / "weights" / SHIPPED).is_file():
        pytest.skip("the shipped model is not in this checkout")
    (code,) = _blocks(README.read_text(), "python")
    rng = np.random.default_rng(0)
    frame = rng.integers(0, 255, (240, 320, 3), dtype=np.uint8)
    cv2.imwrite(str(tmp_path / "frame.png"), frame)
    video = cv2.VideoWriter(str(tmp_path / "clip.mp4"), cv2.VideoWriter_fourcc(*"mp4v"), 10.0,
                            (320, 240))
    for i in range(3):
        video.write(np.roll(frame, 7 * i, axis=1))
    video.release()
    code = code.replace('"frame.png"', repr(str(tmp_path / "frame.png")))
    code = code.replace('"clip.mp4"', repr(str(tmp_path / "clip.mp4")))
    out = io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(io.StringIO()):
        exec(compile(code, "README.md", "exec"), {})  # noqa: S102 - the README's own example
    lines = out.getvalue().splitlines()
    assert len(lines) == 4, lines  # the image's line, then one per video frame
    assert lines[0].startswith("view ") and lines[0].endswith("]")
    assert [ln.split()[0] for ln in lines[1:]] == ["0", "1", "2"]


def _commands(page: Path) -> list[list[str]]:
    """The `medmtl ...` command lines of a page's bash blocks (continuations joined, comments
    and shell variables left out), as argument lists without the leading `medmtl`."""
    out = []
    for block in _blocks(page.read_text(), "bash"):
        for line in block.replace("\\\n", " ").splitlines():
            line = line.split(" #", 1)[0].strip()
            if line.startswith("medmtl "):
                out.append(shlex.split(line)[1:])
    return out


def test_documented_commands_name_real_commands_and_options() -> None:
    from typer.main import get_command

    from medmtl.cli import app

    group = get_command(app)
    checked = 0
    for page in COMMAND_PAGES:
        for args in _commands(page):
            cmd = group.commands.get(args[0])  # type: ignore[attr-defined]
            assert cmd is not None, f"{page.name}: medmtl {' '.join(args)}"
            known = {o for p in cmd.params for o in (*p.opts, *p.secondary_opts)}
            for tok in args[1:]:
                if tok.startswith("--"):
                    assert tok.split("=", 1)[0] in known, f"{page.name}: {tok} in medmtl " \
                                                          f"{' '.join(args)}"
            checked += 1
    assert checked >= 30  # the README's set and the usage pages' (a parse that finds none fails)


def _anchor(heading: str) -> str:
    """GitHub's anchor of a heading: lower case, punctuation dropped, spaces as hyphens."""
    text = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return text.replace(" ", "-")


def _anchors(page: Path) -> set[str]:
    text = re.sub(r"```.*?```", "", page.read_text(), flags=re.S)
    return {_anchor(m) for m in re.findall(r"^#+ (.+)$", text, flags=re.M)}


def test_every_relative_link_resolves() -> None:
    """In the pages written by hand; a `report.md` is what `medmtl report` wrote (the copy of
    docs/study-pretrained/ was committed without its plots/ folder)."""
    pages = [README, *sorted(p for p in DOCS.rglob("*.md") if p.name != "report.md")]
    bad = []
    for page in pages:
        for target in LINK.findall(page.read_text()):
            if re.match(r"^[a-z]+:", target) or target.startswith("#"):
                continue
            path, _, anchor = target.partition("#")
            dest = (page.parent / path).resolve()
            if not dest.exists():
                bad.append(f"{page.relative_to(ROOT)}: {target}")
            elif anchor and dest.suffix == ".md" and anchor not in _anchors(dest):
                bad.append(f"{page.relative_to(ROOT)}: {target} (no such heading)")
    assert not bad, bad


def test_the_index_links_every_page() -> None:
    index = DOCS / "index.md"
    linked = {(DOCS / t.partition("#")[0]).resolve() for t in LINK.findall(index.read_text())}
    pages = {p.resolve() for p in DOCS.rglob("*.md")} - {index.resolve()}
    missing = sorted(str(p.relative_to(ROOT)) for p in pages - linked)
    assert not missing, f"docs/index.md does not link {missing}"
    assert (ROOT / "weights" / "README.md").resolve() in linked


def test_readme_is_a_front_page() -> None:
    text = README.read_text()
    assert len(text.splitlines()) <= 150
    assert "make demo" in text and "make test" in text and "docs/index.md" in text
    for cmd in ("train", "val", "predict", "export", "compare"):  # your own data, first screen
        assert any(args[0] == cmd for args in _commands(README)), cmd


def test_make_refuses_a_venv_on_a_full_disk_in_one_line(tmp_path: Path) -> None:
    """The set-up the README promises checks free space before pip fills the disk (a CUDA build
    of PyTorch is ~6.5 GiB): a threshold above any disk's free space stands in for a full one."""
    import shutil
    import subprocess

    if shutil.which("make") is None:
        pytest.skip("GNU make is not installed here")
    venv = tmp_path / "venv"
    proc = subprocess.run(["make", "-s", "-C", str(ROOT), f"{venv}/.medmtl-installed",
                           f"VENV={venv}", "NEED_GIB=1000000000"],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2
    first = proc.stderr.splitlines()[0]
    assert first.startswith("make: ") and "GiB free on the disk of" in first
    assert str(venv) in first and "point VENV at a larger disk" in first
    assert not (venv / "bin").exists()  # nothing was installed
