"""leave_one_unit_out on a small synthetic-shaped record set (no audio needed)."""

import pytest

from ambig.data.folds import leave_one_unit_out
from ambig.data.records import Record


def records():
    out = []
    for s in range(1, 6):
        for sex in "FM":
            for i in range(4):
                spk = f"Ses{s:02d}{sex}"
                out.append(Record(f"{spk}_{i:04d}", f"/x/{spk}_{i}.wav", "t", (1.0, 0.0), spk, f"Ses{s:02d}"))
    return out


def groups(recs, attr):
    return {getattr(r, attr) for r in recs}


@pytest.mark.parametrize("val_unit", ["session", "speaker"])
def test_every_fold_is_a_clean_partition(val_unit):
    recs = records()
    tested = []
    for fold in range(1, 6):
        split = leave_one_unit_out(recs, fold, val_unit=val_unit, seed=3)
        ids = [[r.id for r in part] for part in (split.train, split.val, split.test)]
        assert sorted(sum(ids, [])) == sorted(r.id for r in recs)  # complete and disjoint
        assert split.train and split.val and split.test
        assert groups(split.test, "session") == {f"Ses{fold:02d}"}
        parts = (split.train, split.val, split.test)
        attrs = ("speaker", "session") if val_unit == "session" else ("speaker",)
        for attr in attrs:
            for a in range(3):
                for b in range(a + 1, 3):
                    assert not groups(parts[a], attr) & groups(parts[b], attr), (fold, attr)
        tested += ids[2]
    assert sorted(tested) == sorted(r.id for r in recs)  # each record tested exactly once


def test_deterministic_by_seed():
    recs = records()
    a = leave_one_unit_out(recs, 2, seed=7)
    assert a == leave_one_unit_out(recs, 2, seed=7)
    vals = {tuple(sorted(groups(leave_one_unit_out(recs, 2, seed=s).val, "session"))) for s in range(10)}
    assert len(vals) > 1  # the seed actually matters


def test_speaker_units_and_n_val():
    recs = records()
    split = leave_one_unit_out(recs, 10, unit="speaker", val_unit="speaker", n_val=2)
    assert groups(split.test, "speaker") == {"Ses05M"}
    assert len(groups(split.val, "speaker")) == 2


@pytest.mark.parametrize("fold", [0, 6, -1])
def test_bad_fold_raises(fold):
    with pytest.raises(ValueError, match="1..5"):
        leave_one_unit_out(records(), fold)


def test_bad_unit_raises():
    with pytest.raises(ValueError, match="unit"):
        leave_one_unit_out(records(), 1, unit="corpus")
    with pytest.raises(ValueError, match="val_unit"):
        leave_one_unit_out(records(), 1, val_unit="gender")
    with pytest.raises(ValueError, match="n_val"):
        leave_one_unit_out(records(), 1, n_val=4)
