"""Tests for fat/training/augment.py: crops/tiling, random crop starts, mixup and SpecAugment masking."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from fat.training import augment


def _clip(n_mels=3, n=10):
    """Distinct values everywhere: value = 100 * band + frame."""
    return (100 * np.arange(n_mels)[:, None] + np.arange(n)[None, :]).astype(np.float32)


# --------------------------------------------------------------------------- fit_length


@pytest.mark.parametrize("start", [0, 1, 7, 12])
def test_fit_length_crops_long_clips_at_start(start):
    x = _clip(n=20)
    out = augment.fit_length(x, 8, start)
    assert out.shape == (3, 8)
    np.testing.assert_array_equal(out, x[:, start : start + 8])


def test_fit_length_exact_length_at_zero_is_identity():
    x = _clip(n=8)
    np.testing.assert_array_equal(augment.fit_length(x, 8), x)


@pytest.mark.parametrize("n,length,start", [(3, 10, 0), (3, 10, 2), (4, 17, 3), (1, 5, 0), (7, 8, 6), (5, 5 * 4, 4)])
def test_fit_length_tiles_short_clips_from_phase(n, length, start):
    x = _clip(n=n)
    out = augment.fit_length(x, length, start)
    assert out.shape == (3, length)
    for j in range(length):
        np.testing.assert_array_equal(out[:, j], x[:, (start + j) % n])
    # periodic with the clip's period
    np.testing.assert_array_equal(out[:, n:], out[:, :-n])


def test_fit_length_rejects_empty_clip():
    with pytest.raises(ValueError, match="no frames"):
        augment.fit_length(np.zeros((3, 0), np.float32), 5)


def test_fit_length_exact_length_with_phase_returns_full_length():
    """A clip of exactly `length` frames with a phase wraps around (regression: it used to be cropped
    to length - start frames, which broke shifted TTA views)."""
    x = _clip(n=8)
    out = augment.fit_length(x, 8, 3)
    assert out.shape == (3, 8)
    np.testing.assert_array_equal(out, np.roll(x, -3, axis=1))


@pytest.mark.parametrize("n,start", [(20, 13), (20, 19), (9, 2), (20, -1), (5, -1)])
def test_fit_length_rejects_out_of_range_start(n, start):
    """A crop start that would run past the end of a longer clip (or is negative) is an error,
    never a silently shorter crop."""
    with pytest.raises(ValueError, match="out of range"):
        augment.fit_length(_clip(n=n), 8, start)


# --------------------------------------------------------------------------- random_start


@pytest.mark.parametrize("n,length", [(100, 30), (30, 30), (31, 30), (7, 30), (1, 30)])
def test_random_start_stays_in_range(n, length):
    rng = np.random.default_rng(0)
    starts = np.array([augment.random_start(rng, n, length) for _ in range(500)])
    hi = n - length if n >= length else n - 1
    assert starts.min() >= 0 and starts.max() <= hi
    # uniform over the whole admissible range: every value is reachable
    if hi < 50:
        assert set(starts.tolist()) == set(range(hi + 1))
    for s in starts[:20]:  # every start gives a full crop
        assert augment.fit_length(_clip(n=n), length, int(s)).shape == (3, length)


def test_random_start_is_deterministic_for_seed():
    a = [augment.random_start(np.random.default_rng(5), 100, 10) for _ in range(3)]
    b = np.random.default_rng(5)
    assert a[0] == augment.random_start(b, 100, 10)
    assert len(set(a)) == 1


# --------------------------------------------------------------------------- mixup


def _mix_batch(b=6, seed=0):
    """x: (B, 2, B + 3) whose first row is one-hot on the sample index (to recover the partner);
    y: soft targets in [0, 1]."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(b, 2, b + 3, generator=g, dtype=torch.float64)
    x[:, 0, :b] = torch.eye(b, dtype=torch.float64)
    y = (torch.rand(b, 4, generator=g, dtype=torch.float64) > 0.5).to(torch.float64)
    y[:, 0] = 0.3  # a soft label
    return x, y


def test_mixup_alpha_zero_is_identity():
    x, y = _mix_batch()
    rng = np.random.default_rng(0)
    state = rng.bit_generator.state
    ox, oy = augment.mixup(x, y, 0.0, rng)
    assert torch.equal(ox, x) and torch.equal(oy, y)
    assert rng.bit_generator.state == state  # no randomness consumed


def test_mixup_rejects_a_negative_alpha():
    x, y = torch.ones(4, 1, 2, 3), torch.ones(4, 5)
    with pytest.raises(ValueError, match="alpha must be >= 0"):
        augment.mixup(x, y, -0.2, np.random.default_rng(0))


def test_mixup_single_sample_is_identity():
    x, y = _mix_batch(b=1)
    ox, oy = augment.mixup(x, y, 0.4, np.random.default_rng(0))
    assert torch.equal(ox, x) and torch.equal(oy, y)


@pytest.mark.parametrize("alpha", [0.2, 1.0, 4.0])
def test_mixup_is_per_sample_convex_combination_with_shared_lambda(alpha):
    b = 8
    x, y = _mix_batch(b, seed=int(alpha * 10))
    ox, oy = augment.mixup(x, y, alpha, np.random.default_rng(42))
    assert ox.shape == x.shape and oy.shape == y.shape
    assert ox.dtype == x.dtype and oy.dtype == y.dtype
    assert (oy >= 0).all() and (oy <= 1).all()

    changed = 0
    for i in range(b):
        w = ox[i, 0, :b].clone()  # = lam * e_i + (1 - lam) * e_partner
        assert w.min() >= -1e-12 and abs(w.sum().item() - 1) < 1e-9
        others = w.clone()
        others[i] = 0
        if others.abs().max() < 1e-12:  # partner is itself (or lam == 1): unchanged
            torch.testing.assert_close(ox[i], x[i])
            torch.testing.assert_close(oy[i], y[i])
            continue
        j = int(others.argmax())
        assert torch.count_nonzero(others.abs() > 1e-12) == 1
        lam = w[i].item()
        assert 0 <= lam <= 1
        torch.testing.assert_close(ox[i], lam * x[i] + (1 - lam) * x[j], rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(oy[i], lam * y[i] + (1 - lam) * y[j], rtol=1e-12, atol=1e-12)
        changed += lam < 1 - 1e-6
    assert changed >= b // 2


def test_mixup_partners_form_a_permutation():
    b = 10
    x, y = _mix_batch(b, seed=3)
    ox, _ = augment.mixup(x, y, 1.0, np.random.default_rng(9))
    w = ox[:, 0, :b]
    # column sums of the mixing matrix: each sample appears once as "self" and once as a partner
    partner_of = []
    for i in range(b):
        others = w[i].clone()
        others[i] = 0
        partner_of.append(int(others.argmax()) if others.max() > 1e-12 else i)
    assert sorted(partner_of) == list(range(b))


def test_mixup_is_deterministic_for_seeded_generator():
    x, y = _mix_batch(8)
    a = augment.mixup(x, y, 0.4, np.random.default_rng(123))
    b = augment.mixup(x, y, 0.4, np.random.default_rng(123))
    c = augment.mixup(x, y, 0.4, np.random.default_rng(124))
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert not torch.equal(a[0], c[0])


def test_mixup_float32_keeps_dtype():
    x, y = _mix_batch(4)
    ox, oy = augment.mixup(x.float(), y.float(), 0.5, np.random.default_rng(0))
    assert ox.dtype == torch.float32 and oy.dtype == torch.float32


# --------------------------------------------------------------------------- spec_augment


def _spec_batch(b=4, f=20, t=50, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(b, f, t, generator=g) * 10 - 30


def _masked(x, out):
    return out != x  # random continuous inputs never equal their mean by chance


def test_spec_augment_no_masks_is_identity():
    x = _spec_batch()
    out = augment.spec_augment(x, np.random.default_rng(0), freq_masks=0, time_masks=0)
    assert torch.equal(out, x)


def test_spec_augment_fills_with_per_sample_mean_and_masks_whole_bands_and_spans():
    x = _spec_batch(b=8, f=20, t=50)
    out = augment.spec_augment(x, np.random.default_rng(1), freq_masks=2, freq_frac=0.2, time_masks=2,
                               time_frac=0.2)
    assert out.shape == x.shape
    m = _masked(x, out)
    assert m.any()
    mean = x.mean(dim=(1, 2))
    for b in range(len(x)):
        torch.testing.assert_close(out[b][m[b]], mean[b].expand(int(m[b].sum())))
        assert torch.equal(out[b][~m[b]], x[b][~m[b]])
        rows = m[b].all(dim=1)  # fully masked mel bands
        cols = m[b].all(dim=0)  # fully masked time spans
        # every masked entry lies in a fully masked band or a fully masked span
        assert torch.equal(m[b], rows[:, None] | cols[None, :])


@pytest.mark.parametrize("dim", ["freq", "time"])
def test_spec_augment_single_mask_is_contiguous_and_bounded(dim):
    f, t, frac = 20, 50, 0.15
    kw = dict(freq_masks=1, freq_frac=frac, time_masks=0, time_frac=frac) if dim == "freq" else \
        dict(freq_masks=0, freq_frac=frac, time_masks=1, time_frac=frac)
    size = f if dim == "freq" else t
    seen_widths = set()
    for seed in range(30):
        x = _spec_batch(b=4, f=f, t=t, seed=seed)
        m = _masked(x, augment.spec_augment(x, np.random.default_rng(seed), **kw))
        for b in range(len(x)):
            hit = m[b].all(dim=1) if dim == "freq" else m[b].all(dim=0)
            # only whole bands/spans, no stray entries
            assert torch.equal(m[b], hit[:, None].expand(f, t) if dim == "freq" else hit[None, :].expand(f, t))
            idx = torch.nonzero(hit).flatten()
            w = len(idx)
            assert w <= int(frac * size)
            if w:
                assert torch.equal(idx, torch.arange(idx[0], idx[0] + w))  # one contiguous span
            seen_widths.add(w)
    assert max(seen_widths) > 0


def test_spec_augment_masked_share_is_bounded_by_fractions():
    x = _spec_batch(b=16, f=20, t=50, seed=4)
    out = augment.spec_augment(x, np.random.default_rng(4), freq_masks=2, freq_frac=0.1, time_masks=3,
                               time_frac=0.1)
    m = _masked(x, out)
    for b in range(len(x)):
        assert int(m[b].all(dim=1).sum()) <= 2 * int(0.1 * 20)
        assert int(m[b].all(dim=0).sum()) <= 3 * int(0.1 * 50)


def test_spec_augment_is_deterministic_for_seed_and_does_not_modify_input():
    x = _spec_batch()
    x0 = x.clone()
    kw = dict(freq_masks=2, freq_frac=0.2, time_masks=2, time_frac=0.2)
    a = augment.spec_augment(x, np.random.default_rng(7), **kw)
    b = augment.spec_augment(x, np.random.default_rng(7), **kw)
    c = augment.spec_augment(x, np.random.default_rng(8), **kw)
    assert torch.equal(a, b)
    assert not torch.equal(a, c)
    assert torch.equal(x, x0)


def test_spec_augment_masks_differ_between_samples():
    x = _spec_batch(b=8)
    m = _masked(x, augment.spec_augment(x, np.random.default_rng(0), freq_masks=1, freq_frac=0.3,
                                        time_masks=1, time_frac=0.3))
    assert any(not torch.equal(m[0], m[b]) for b in range(1, 8))
