"""`workbench.records`: the plateau rule a teacher's length is chosen by, on hand-made validation curves."""

import pytest

from workbench.errors import MissingFile
from workbench.records import plateau


def _val(points):
    return [{"epoch": e, "val/miou_full": v} for e, v in points]


def test_the_gain_over_the_last_quarter_decides():
    p = plateau(_val([(10, 30.0), (20, 40.0), (30, 44.0), (40, 44.3)]))
    assert (p.start_epoch, p.end_epoch) == (30, 40) and p.gain == pytest.approx(0.3) and p.reached
    rising = plateau(_val([(10, 30.0), (20, 40.0), (30, 44.0), (40, 46.0)]))
    assert rising.gain == pytest.approx(2.0) and not rising.reached
    assert "still rising" in rising.describe() and "plateau" in p.describe()


def test_the_stretch_starts_at_the_last_validation_before_it():
    # 10 epochs: the last quarter starts at 7.5, so epoch 6 is the reference (no validation at 7)
    p = plateau(_val([(2, 10.0), (4, 20.0), (6, 25.0), (8, 25.2), (10, 25.4)]))
    assert p.start_epoch == 6 and p.gain == pytest.approx(0.4)
    assert plateau(_val([(5, 1.0), (10, 2.0)]), epochs=20).start_epoch == 10
    with pytest.raises(MissingFile, match="val_every"):
        plateau(_val([(10, 2.0)]))
