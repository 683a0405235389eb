import pytest

from pipedecode.sim.links import LINKS, Link, get_link, ring_allreduce_us, transfer_us


def test_a_transfer_pays_the_latency_and_the_bytes_at_the_achieved_bandwidth():
    pcie = LINKS["pcie5"]                                  # 50 GB/s, 5 us
    assert transfer_us(pcie, 1e6) == pytest.approx(5 + 20)
    assert transfer_us(pcie, 0) == 5.0


def test_ring_allreduce_moves_2_n_minus_1_over_n_of_the_bytes_in_2_n_minus_1_steps():
    nvlink = LINKS["nvlink4"]                              # 360 GB/s, 3 us
    # 4 GPUs, 8 MB: 6 steps of 2 MB: 6 x (2e6 / 360e9 s) + 6 x 3 us
    assert ring_allreduce_us(nvlink, 8e6, 4) == pytest.approx(6 * 2e6 / 360e9 * 1e6 + 18)
    assert ring_allreduce_us(nvlink, 8e6, 1) == 0.0
    with pytest.raises(ValueError, match=">= 1 GPU"):
        ring_allreduce_us(nvlink, 1.0, 0)


def test_links_state_their_sources_and_are_assumptions_until_calibrated():
    for link in LINKS.values():
        assert link.peak_bytes_per_s >= link.bytes_per_s and "GB/s" in link.source
        assert not link.measured and "assumed" in link.describe()
    measured = LINKS["pcie5"].calibrated(40e9, 8.0)
    assert measured.measured and measured.bytes_per_s == 40e9 and "measured" in measured.describe()


def test_bad_links_are_refused():
    with pytest.raises(ValueError, match="exceeds the peak"):
        Link("x", bytes_per_s=2e9, peak_bytes_per_s=1e9, latency_us=1.0, source="-")
    with pytest.raises(ValueError, match="latency_us"):
        Link("x", bytes_per_s=1e9, peak_bytes_per_s=1e9, latency_us=-1.0, source="-")
    with pytest.raises(ValueError, match="unknown link 'ib'"):
        get_link("ib")
