"""Patients and clips: the groups a frame belongs to, read from its file name.

Echo frames are exported from clips (`<patient>-<clip>.mp4-<frame>.jpg`): a view is a property
of the clip, and leakage is a property of the patient. Both ids come from the file name by a
regular expression whose first capturing group is the id; a name the pattern does not match is
its own group (its stem), so nothing is merged by accident.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from medmtl.config import DEFAULT_CLIP_REGEX, DEFAULT_PATIENT_REGEX  # the config's defaults


@lru_cache(maxsize=64)
def _compiled(pattern: str) -> re.Pattern[str]:
    try:
        return re.compile(pattern)
    except re.error as e:
        raise ValueError(f"bad group regex {pattern!r}: {e}") from None


def _match(text: str, pattern: str, fallback: str) -> str:
    m = _compiled(pattern).search(text)
    if m is None:
        return fallback
    return m.group(1) if m.groups() else m.group(0)


def patient_of(path: str | Path, regex: str = DEFAULT_PATIENT_REGEX) -> str:
    """Patient id: the regex's first group on the file name (with extension), else the stem."""
    p = Path(path)
    return _match(p.name, regex, p.stem)


def clip_of(path: str | Path, regex: str = DEFAULT_CLIP_REGEX) -> str:
    """Clip id: the regex's first group on the file stem, else the stem (a clip of one frame)."""
    stem = Path(path).stem
    return _match(stem, regex, stem)


@dataclass(frozen=True)
class GroupPattern:
    """The two patterns of a data set (`--group-regex`, `--clip-regex`)."""

    patient: str = DEFAULT_PATIENT_REGEX
    clip: str = DEFAULT_CLIP_REGEX

    def __post_init__(self) -> None:
        _compiled(self.patient), _compiled(self.clip)  # fail early, naming the pattern

    def patient_of(self, path: str | Path) -> str:
        return patient_of(path, self.patient)

    def clip_of(self, path: str | Path) -> str:
        return clip_of(path, self.clip)
