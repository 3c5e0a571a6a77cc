"""Patient and clip ids from echo file names."""

import pytest

from medmtl.data.groups import GroupPattern, clip_of, patient_of
from medmtl.data.splits import group_of


@pytest.mark.parametrize("name, patient, clip", [
    ("Z2liwqVnacKV-unnamed_1_1.mp4-12.jpg", "Z2liwqVnacKV", "Z2liwqVnacKV-unnamed_1_1"),
    ("ZmhmwqduY8KU-Mmode+2D+Doppler_Echo_color_1_1.mp4-7.jpg", "ZmhmwqduY8KU",
     "ZmhmwqduY8KU-Mmode+2D+Doppler_Echo_color_1_1"),
    ("p01-clipA-3.png", "p01", "p01-clipA"),          # no video extension
    ("labels/p01-a.b-c.avi-30.txt", "p01", "p01-a.b-c"),  # dots inside the clip name
    ("lonely.jpg", "lonely", "lonely"),                # no match: its own patient and clip
    ("Zmpjwqtla8Kawpg=-unnamed_1_2.mp4-16(1).jpg", "Zmpjwqtla8Kawpg=",  # a copy, in the real data
     "Zmpjwqtla8Kawpg=-unnamed_1_2"),
])
def test_default_patterns(name, patient, clip):
    assert patient_of(name) == patient == group_of(name)
    assert clip_of(name) == clip
    assert GroupPattern().clip_of(name) == clip


def test_custom_pattern_and_bad_regex():
    g = GroupPattern(patient=r"^(\d+)_", clip=r"^(\d+_\w)_f\d+$")
    assert g.patient_of("12_b_f3.jpg") == "12" and g.clip_of("12_b_f3.jpg") == "12_b"
    assert g.clip_of("other.jpg") == "other"
    with pytest.raises(ValueError, match=r"bad group regex '\('"):
        GroupPattern(clip="(")


def test_train_config_default_clip_regex_is_the_groups_default():
    from medmtl.config import TrainConfig
    from medmtl.data.groups import DEFAULT_CLIP_REGEX

    assert TrainConfig().clip_regex == DEFAULT_CLIP_REGEX
