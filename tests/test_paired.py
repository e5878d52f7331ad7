"""Paired accuracy drops (lrf_optuna.paired) and the answer's checks built on them
(Resolution, OriginalCheck)."""

from __future__ import annotations

import numpy as np
import pytest

from lrf_optuna.paired import (
    PairedDrop,
    expected_standard_error,
    pack_correct,
    paired_drop,
    unpack_correct,
    z_value,
)
from lrf_optuna.study.finetune_records import FinetuneRecord, Measured, OriginalCheck, Resolution


def test_counts_only_the_disagreements() -> None:
    ref = np.array([1, 1, 0, 0, 1, 1], dtype=bool)
    cand = np.array([1, 0, 1, 0, 0, 1], dtype=bool)
    d = paired_drop(ref, cand)
    assert (d.n, d.ref_only, d.cand_only) == (6, 2, 1)
    assert d.drop == pytest.approx(ref.mean() - cand.mean())
    with pytest.raises(ValueError, match="same images"):
        paired_drop(ref, cand[:3])
    with pytest.raises(ValueError, match="zero images"):
        paired_drop(ref[:0], cand[:0])


def test_standard_error_is_that_of_the_per_image_differences() -> None:
    rng = np.random.default_rng(0)
    ref = rng.random(20_000) < 0.9
    cand = ref.copy()
    flip = rng.random(len(ref)) < 0.05
    cand[flip] = ~cand[flip]
    d = paired_drop(ref, cand)
    diff = ref.astype(float) - cand.astype(float)
    assert d.se_pp == pytest.approx(100 * diff.std() / np.sqrt(len(diff)), rel=0.01)
    # pairing is what makes it small: far below the unpaired standard error
    unpaired = 100 * np.sqrt(2 * 0.9 * 0.1 / len(ref))
    assert d.se_pp < unpaired
    # identical models still carry an uncertainty (one disagreement added)
    same = paired_drop(ref, ref)
    assert same.drop_pp == 0 and same.se_pp > 0


def test_decision_at_a_confidence() -> None:
    d = PairedDrop(n=1000, ref_only=20, cand_only=12)   # drop 0.8 pp
    assert z_value(0.5) == 0 and d.upper_pp(0.5) == pytest.approx(0.8)
    assert d.within(1.0, 0.5) and not d.within(0.7, 0.5)
    assert d.upper_pp(0.9) > d.upper_pp(0.75) > d.upper_pp(0.5)
    assert not d.within(1.0, 0.9)                        # 0.8 + 1.28 * 0.57 > 1
    lo, hi = d.interval_pp(0.95)
    assert lo < d.drop_pp < hi and hi - d.drop_pp == pytest.approx(d.drop_pp - lo)
    assert d.text() == f"+0.80 ± {d.se_pp:.2f}"
    for bad in (0.0, 1.0, 1.5):
        with pytest.raises(ValueError, match="confidence"):
            z_value(bad)


@pytest.mark.parametrize("n", [1, 7, 8, 9, 1000])
def test_correctness_round_trips_as_bits(n: int) -> None:
    bits = np.random.default_rng(n).random(n) < 0.5
    text = pack_correct(bits)
    assert len(text) == 4 * -(-((n + 7) // 8) // 3)  # base64 of ceil(n / 8) bytes
    np.testing.assert_array_equal(unpack_correct(text, n), bits)
    with pytest.raises(ValueError, match="bits"):
        unpack_correct(text, n + 9)


def test_expected_standard_error_shrinks_with_images() -> None:
    se = [expected_standard_error(n, 0.98, 1.0) for n in (400, 1000, 2000, 8000)]
    assert se == sorted(se, reverse=True)
    assert se[0] == pytest.approx(se[2] * np.sqrt(2000 / 400), rel=1e-9)  # 1 / sqrt(n)
    # the budget it is asked about: 400 images cannot resolve 1 pp, 8,000 can
    assert not Resolution(400, se[0], 1.0).resolved
    assert Resolution(8000, se[3], 1.0).resolved
    text = Resolution(400, se[0], 1.0).text()
    assert "larger validation split" in text and "--val-fraction" in text
    need = int(text.split("(about ")[1].split(" images")[0].replace(",", ""))
    assert Resolution(need, expected_standard_error(need, 0.98, 1.0), 1.0).resolved


def test_original_check_tells_stale_batchnorm_from_unconverged() -> None:
    sound = OriginalCheck(0.90, 0.905, 0.905, 0.91)
    assert sound.diagnosis is None and sound.text() is None
    stale = OriginalCheck(0.18, 0.98, 0.97, 0.59)
    assert stale.diagnosis == "stale_batchnorm"
    assert "reestimate_batchnorm" in (stale.text() or "")
    late = OriginalCheck(0.80, 0.805, 0.80, 0.86)
    assert late.diagnosis == "not_converged"
    assert "not trained to convergence" in (late.text() or "")
    assert OriginalCheck(None, None, None, 0.9).diagnosis is None


def test_records_compare_jobs_on_the_same_images() -> None:
    ref_bits = np.array([1, 1, 1, 1, 1, 0, 1, 1], dtype=bool)
    job_bits = np.array([1, 0, 1, 1, 1, 1, 0, 1], dtype=bool)

    def record(bits: np.ndarray, reference: bool = False) -> FinetuneRecord:
        m = Measured(test_acc=0.9, val_correct=pack_correct(bits), val_images=len(bits))
        return FinetuneRecord(0, 0, m, None, float(bits.mean()), None, 1, 1.0, False, {},
                              is_reference=reference)

    ref, job = record(ref_bits, True), record(job_bits)
    paired = job.paired(ref, "val")
    assert paired is not None and (paired.ref_only, paired.cand_only) == (2, 1)
    assert job.paired(ref, "test") is None          # no test bits recorded
    assert job.paired_drops(ref)["val_vs_reference"] == paired
