"""SimChannel runs every primitive step of a Program: ends, record rules, resume, state, noise."""

from __future__ import annotations

import asyncio
import dataclasses
import math

import numpy as np
import pytest

from cyclerctl.channel import Channel, StepStart
from cyclerctl.clock import VirtualClock, WallClock
from cyclerctl.errors import InstrumentError
from cyclerctl.program import (
    ConstantCurrent,
    ConstantVoltage,
    End,
    Impedance,
    Record,
    Rest,
    SetTemperature,
    Sweep,
)
from cyclerctl.sim.channel import SimChannel

I_01C = 30e-3 * 3.4e-3  # 30 mA/g on 3.4 mg


def run(ch, step, start):
    async def go():
        return [b async for b in ch.run_step(step, start)]

    return asyncio.run(go())


def cat(blocks, col):
    return np.concatenate([b.columns[col] for b in blocks])


def discharge(**kw):
    return ConstantCurrent(step_id=0, name="discharge", current=-I_01C, direction=-1,
                           ends=(End("voltage", "<=", 0.0),), **kw)


def test_is_a_channel():
    ch = SimChannel(noise=False)
    assert isinstance(ch, Channel)
    assert ch.capabilities.model == "sim:hard_carbon"


def test_cutoff_met_exactly_and_record_rule():
    ch = SimChannel(noise=False, truth=True)
    blocks = run(ch, discharge(record=Record(every=10.0)), StepStart(test_time=0.0))
    last = blocks[-1]
    assert last.final and last.end == 0
    v = cat(blocks, "voltage_volt")
    t = cat(blocks, "test_time_second")
    assert abs(v[-1] - 0.0) < 1e-4  # cutoff met to < 0.1 mV
    assert t[0] == 0.0  # first sample of the step at its start
    assert np.all(np.diff(t)[:-1] == pytest.approx(10.0))  # every 10 s, then the exact crossing
    assert 0 < t[-1] - t[-2] <= 10.0
    # the truth travels with every sample
    assert set(last.truth) >= {"diffusion_coefficient", "surface_stoichiometry", "mean_stoichiometry",
                               "open_circuit_voltage", "charge_transfer_overpotential", "sei_charge"}
    assert np.all(np.diff(cat(blocks, "step_time_second")) > 0)


def test_voltage_change_record_rule_and_charge_end():
    ch = SimChannel(noise=False)
    step = discharge(record=Record(every=None, voltage_change=5e-3))
    step = ConstantCurrent(step_id=0, name="d", current=-I_01C, ends=(End("abs_step_charge", ">=", 1.0),),
                           record=Record(every=None, voltage_change=5e-3))
    blocks = run(ch, step, StepStart(test_time=0.0))
    v = cat(blocks, "voltage_volt")
    t = cat(blocks, "test_time_second")
    assert abs(I_01C * t[-1] - 1.0) < 1e-9  # the charge end located exactly
    dv = np.abs(np.diff(v))[1:-1]
    assert np.all(dv >= 5e-3 - 1e-12)
    assert np.all(dv < 8e-3)


def test_max_block_span_and_resume_mid_step():
    ch = SimChannel(noise=False)
    blocks = run(ch, discharge(record=Record(every=60.0)), StepStart(test_time=0.0, max_block_span=3600.0))
    assert len(blocks) > 5
    spans = [b.time[-1] - b.time[0] for b in blocks if len(b)]
    assert max(spans) <= 3600.0 + 1e-9
    assert sum(b.final for b in blocks) == 1 and blocks[-1].final
    # resume: a fresh channel from the state saved after the third block continues the step
    ref = SimChannel(noise=False)
    state = None
    t_cut = None

    async def first_part():
        nonlocal state, t_cut
        gen = ref.run_step(discharge(record=Record(every=60.0)), StepStart(test_time=0.0, max_block_span=3600.0))
        k = 0
        async for b in gen:
            k += 1
            if k == 3:
                state, t_cut = ref.save_state(), float(b.time[-1])
                break
        await gen.aclose()

    asyncio.run(first_part())
    resumed = SimChannel(noise=False)
    resumed.load_state(state)
    rest = run(resumed, discharge(record=Record(every=60.0)),
               StepStart(test_time=t_cut, step_time=t_cut, step_charge=-I_01C * t_cut))
    assert rest[-1].end == 0
    t_full = cat(blocks, "test_time_second")
    v_full = cat(blocks, "voltage_volt")
    t_res = cat(rest, "test_time_second")
    v_res = cat(rest, "voltage_volt")
    # bit-for-bit continuation (noise off): same end time, same samples on the shared grid
    assert t_res[-1] == t_full[-1]
    common = np.intersect1d(t_full, t_res[1:])
    np.testing.assert_array_equal(v_full[np.isin(t_full, common)], v_res[1:][np.isin(t_res[1:], common)])
    assert cat(rest, "step_time_second")[0] == pytest.approx(t_cut)


def test_same_seed_same_samples_and_noise_on():
    def samples(seed):
        ch = SimChannel(noise=True, seed=seed)
        b = run(ch, Rest(step_id=0, name="r", ends=(End("step_time", ">=", 600.0),), record=Record(every=1.0)),
                StepStart(test_time=0.0))
        return cat(b, "voltage_volt")

    a, b, c = samples(7), samples(7), samples(8)
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)
    assert 20e-6 < np.std(np.diff(a)) < 1e-3  # noise of the preset's order (100 uV)


def test_constant_voltage_hold_with_current_limit():
    ch = SimChannel(noise=False)
    step = ConstantVoltage(step_id=0, name="hold", voltage=0.2, current_limit=5e-4,
                           ends=(End("abs_current", "<=", 5e-6),), record=Record(every=30.0))
    blocks = run(ch, step, StepStart(test_time=0.0))
    i = cat(blocks, "current_ampere")
    v = cat(blocks, "voltage_volt")
    assert np.all(np.abs(i) <= 5e-4 + 1e-12)  # compliance honoured
    assert np.abs(i).max() == pytest.approx(5e-4)  # current-limited at first
    assert v[-1] == pytest.approx(0.2, abs=1e-9)
    assert abs(i[-1]) == pytest.approx(5e-6, rel=1e-4)
    assert blocks[-1].end == 0


def test_sweep_segments_and_completion():
    ch = SimChannel(noise=False)
    step = Sweep(step_id=0, name="cv", start=2.0, vertices=(0.01,), scan_rate=1e-3, cycles=2,
                 record=Record(every=None, voltage_change=2e-3))
    blocks = run(ch, step, StepStart(test_time=0.0))
    seg = cat(blocks, "sweep_segment")
    v = cat(blocks, "voltage_volt")
    t = cat(blocks, "test_time_second")
    assert set(np.unique(seg)) == {0.0, 1.0, 2.0, 3.0}
    assert blocks[-1].final and blocks[-1].end is None
    assert t[-1] == pytest.approx(step.duration)
    # the potentiostat follows the programmed ramp
    ramp = np.interp(t, [0, 1990, 3980, 5970, 7960], [2.0, 0.01, 2.0, 0.01, 2.0])
    assert np.max(np.abs(v - ramp)) < 1e-6
    # sodiation current (negative) on the way down, desodiation on the way up
    i = cat(blocks, "current_ampere")
    assert i[(seg == 0) & (v < 0.5)].min() < 0 < i[(seg == 1) & (v < 0.8)].max()


def test_impedance_rows_and_temperature_series():
    ch = SimChannel(noise=False)
    eis = Impedance(step_id=0, name="eis", freq_start=1e5, freq_stop=1e-1, points_per_decade=5)
    rct = []
    t = 0.0
    for kelvin in (278.15, 298.15, 318.15):
        b = run(ch, SetTemperature(step_id=1, name="T", temperature=kelvin, tolerance=0.2, stable_for=300.0),
                StepStart(test_time=t))
        assert b[-1].final and b[-1].end is None
        temp = cat(b, "temperature_t1_celsius")
        assert abs(temp[-1] + 273.15 - kelvin) <= 0.2
        t = float(b[-1].time[-1])
        e = run(ch, eis, StepStart(test_time=t))
        cols = e[-1].columns
        assert len(cols["frequency_hertz"]) == len(eis.frequencies())
        np.testing.assert_allclose(cols["frequency_hertz"], eis.frequencies())
        assert np.all(cols["imaginary_impedance_ohm"] < 0)
        t = float(e[-1].time[-1])
        rct.append(ch.model.parts()["materials"][0]["charge_transfer_resistance"])
    assert rct[0] > rct[1] > rct[2]  # charge transfer speeds up with temperature


def test_set_temperature_timeout_is_a_fault():
    ch = SimChannel(noise=False)
    step = SetTemperature(step_id=0, name="T", temperature=318.15, tolerance=0.1, stable_for=60.0, timeout=120.0)
    with pytest.raises(InstrumentError, match="did not settle"):
        run(ch, step, StepStart(test_time=0.0))


def test_wall_clock_paces_blocks():
    clock = WallClock(speed=400.0)
    ch = SimChannel(noise=False, clock=clock)
    step = Rest(step_id=0, name="r", ends=(End("step_time", ">=", 400.0),), record=Record(every=10.0))
    t0 = clock.now()
    blocks = run(ch, step, StepStart(test_time=t0))
    assert len(blocks) >= 2  # half a second of wall time per block at most
    assert clock.now() >= t0 + 400.0 - 1e-6  # the samples were not delivered before their time


def test_virtual_clock_advances_and_gap_rests():
    clock = VirtualClock()
    ch = SimChannel(noise=False, clock=clock, truth=True)
    d = run(ch, discharge(record=Record(every=600.0)), StepStart(test_time=0.0))
    t_end = clock.now()
    assert t_end == d[-1].time[-1] > 10_000
    # the engine paused for an hour: the next step starts later and the cell rested meanwhile
    clock.advance_to(t_end + 3600.0)
    b = run(ch, Rest(step_id=1, name="r", ends=(End("step_time", ">=", 10.0),)), StepStart(test_time=t_end + 3600.0))
    assert b[0].time[0] == t_end + 3600.0
    assert math.isclose(clock.now(), t_end + 3610.0)
    assert b[0].voltage[0] > d[-1].voltage[-1] + 0.01  # relaxed towards its open-circuit voltage
    assert b[0].truth["surface_stoichiometry"][0] < d[-1].truth["surface_stoichiometry"][-1]


def test_step_that_records_nothing_still_returns_blocks():
    ch = SimChannel(noise=False)
    step = Rest(step_id=0, name="r", record=Record(every=None, voltage_change=0.5),
                ends=(End("step_time", ">=", 3 * 86400.0),))
    blocks = run(ch, step, StepStart(test_time=0.0))
    assert len(blocks) >= 3 and blocks[-1].end == 0
    assert cat(blocks, "step_time_second")[-1] == pytest.approx(3 * 86400.0)


def test_saved_state_restores_the_model_bit_for_bit_and_reads_the_earlier_npz_form():
    import io
    import json

    from cyclerctl.errors import ConfigError

    ch = SimChannel(seed=3)
    step = ConstantCurrent(step_id=0, name="discharge", current=-I_01C, direction=-1,
                           ends=(End("step_time", ">=", 600.0),), record=Record(every=10.0))
    run(ch, step, StepStart(test_time=0.0))
    blob = ch.save_state()
    other = SimChannel(seed=9)
    other.load_state(blob)
    m, o = ch.model, other.model
    assert np.array_equal(m.a, o.a) and np.array_equal(m.st, o.st) and np.array_equal(m.mst, o.mst)
    assert other.rng.bit_generator.state == ch.rng.bit_generator.state
    # a journal written before the raw format holds the arrays in an .npz (state version 2)
    buf = io.BytesIO()
    meta = json.dumps({"version": 2, "preset": m.preset.name, "extra": {}}).encode()
    np.savez(buf, a=m.a, st=m.st, mst=m.mst, meta=np.frombuffer(meta, dtype=np.uint8))
    old = SimChannel()
    old.load_state(buf.getvalue())
    assert np.array_equal(old.model.st, m.st) and np.array_equal(old.model.a, m.a)
    with pytest.raises(ConfigError, match="cannot be read|does not fit"):
        SimChannel().load_state(blob[:-8])


def test_one_sample_noise_matches_the_array_formula():
    """Blocks of one sample (wall-clock pacing) take their noise on Python floats; the values are
    those of the array formula with the same generator draws (V, then I, then T)."""
    a, b = SimChannel(seed=5), SimChannel(seed=5)
    p = b.preset
    rng = np.random.default_rng(1)
    for _ in range(2000):
        c = {"test_time_second": np.array([1.0]), "voltage_volt": rng.uniform(-0.1, 2.6, 1),
             "current_ampere": rng.normal(0, 1e-3, 1), "temperature_t1_celsius": rng.uniform(20, 30, 1)}
        ref = {k: v.copy() for k, v in c.items()}
        a._noisy(c)
        v = ref["voltage_volt"] + b.rng.normal(0.0, p.noise_voltage, 1)
        i = ref["current_ampere"]
        i = i + b.rng.normal(0.0, 1.0, 1) * (p.noise_current + p.noise_current_relative * np.abs(i))
        v = np.round(v / p.voltage_resolution) * p.voltage_resolution
        i = np.round(i / p.current_resolution) * p.current_resolution
        t = ref["temperature_t1_celsius"] + b.rng.normal(0.0, p.noise_temperature, 1)
        assert (c["voltage_volt"][0], c["current_ampere"][0], c["temperature_t1_celsius"][0]) == (v[0], i[0], t[0])


def test_wall_clock_hands_the_first_sample_over_at_once():
    """Paced on a wall clock, the sample taken at the start of a step is its own block (it is due at
    once, not at the end of the first block); the samples are those of an unpaced run."""
    step = ConstantCurrent(step_id=0, name="discharge", current=-I_01C, direction=-1,
                           ends=(End("step_time", ">=", 40.0),), record=Record(every=10.0))
    clock = WallClock(speed=400.0)
    t0 = clock.now()
    paced = run(SimChannel(noise=False, clock=clock), step, StepStart(test_time=t0))
    assert len(paced[0]) == 1 and paced[0].columns["step_time_second"][0] == 0.0
    ref = run(SimChannel(noise=False), step, StepStart(test_time=t0))
    assert len(ref[0]) > 1
    for name in ("test_time_second", "voltage_volt", "current_ampere", "step_time_second"):
        np.testing.assert_array_equal(cat(paced, name), cat(ref, name))


def test_wall_clock_blocks_smaller_than_what_is_computed():
    """On a wall clock the model runs half a second of wall time at a time; with a smaller
    max_block_span (real-time acquisition) that is handed over a block per record, each due at its
    last sample: the same samples, noise included, as in half-second blocks."""

    class Clock(VirtualClock):  # a paced clock (finite speed) that does not wait
        speed = 1.0

    step = discharge(record=Record(every=0.1))

    def pulled(span):
        ch = SimChannel(noise=True, seed=5, clock=Clock(), truth=True)
        items = []
        for due, block in ch.pull_step(step, StepStart(test_time=0.0, max_block_span=span)):
            items.append((due, block))
            if len(items) >= 60:
                break
        return items

    fine, coarse = pulled(0.1), pulled(0.5)
    assert all(len(b) == 1 for _, b in fine)
    assert max(len(b) for _, b in coarse) == 5
    assert all(due == b.time[-1] for due, b in fine)  # each at the time of its sample
    n = sum(len(b) for _, b in fine)
    for col in ("test_time_second", "voltage_volt", "current_ampere", "step_time_second"):
        assert np.array_equal(np.concatenate([b.columns[col] for _, b in fine]),
                              np.concatenate([b.columns[col] for _, b in coarse])[:n])
    assert np.array_equal(np.concatenate([b.truth["surface_stoichiometry"] for _, b in fine]),
                          np.concatenate([b.truth["surface_stoichiometry"] for _, b in coarse])[:n])


def test_impedance_as_a_sampled_waveform_demodulates_to_the_spectrum():
    """acquisition "waveform": voltage and current samples (a sine on the DC level, one settling period
    and `periods` more per frequency, no impedance columns) that demodulate to the impedance the
    spectrum step reports for the same cell."""
    from cyclerctl.analysis.waveform import WaveformImpedance

    ch = SimChannel(noise=False)
    t = float(run(ch, Rest(step_id=0, name="rest", ends=(End("step_time", ">=", 6 * 3600.0),),
                           record=Record(every=600.0)), StepStart(test_time=0.0))[-1].time[-1])
    spec = Impedance(step_id=1, name="eis", freq_start=1e3, freq_stop=1e-2, points_per_decade=4)
    b = run(ch, spec, StepStart(test_time=t))
    z_spec = cat(b, "real_impedance_ohm") + 1j * cat(b, "imaginary_impedance_ohm")
    t = float(b[-1].time[-1])
    wave = dataclasses.replace(spec, acquisition="waveform", samples_per_period=32, periods=3)
    b = run(ch, wave, StepStart(test_time=t))
    cols = {k: cat(b, k) for k in ("test_time_second", "voltage_volt", "current_ampere", "frequency_hertz",
                                   "temperature_t1_celsius")}
    assert "real_impedance_ohm" not in b[-1].columns and b[-1].final
    f = spec.frequencies()
    assert cols["test_time_second"].size == len(f) * 4 * 32
    assert np.all(np.diff(cols["test_time_second"]) > 0)
    dur = cols["test_time_second"][-1] - t
    assert dur + 1 / (32 * f[-1]) == pytest.approx(sum(4 / fk for fk in f), rel=1e-9)  # the last sample ends one interval early
    w = WaveformImpedance()
    w.feed(cols)
    pts = w.close()
    np.testing.assert_allclose([p.frequency_hertz for p in pts], f)
    # the cell relaxed a little between the two steps: the same impedance to 0.1 %
    np.testing.assert_allclose([p.impedance_ohm for p in pts], z_spec, rtol=1e-3)
    # potentiostatic at OCV: the current is a sine about zero of amplitude √2·5 mV/|Z|
    k = np.flatnonzero(cols["frequency_hertz"] == f[-1])
    assert np.ptp(cols["current_ampere"][k]) == pytest.approx(2 * np.sqrt(2) * 5e-3 / abs(z_spec[-1]), rel=0.02)


def test_waveform_with_the_channel_noise_gives_points_to_a_fraction_of_a_percent():
    from cyclerctl.analysis.waveform import WaveformImpedance

    ch = SimChannel(noise=True, seed=4)
    wave = Impedance(step_id=1, name="eis", freq_start=1e3, freq_stop=1e-1, points_per_decade=3,
                     acquisition="waveform", samples_per_period=64, periods=4)
    b = run(ch, wave, StepStart(test_time=0.0))
    w = WaveformImpedance()
    w.feed({k: cat(b, k) for k in ("test_time_second", "voltage_volt", "current_ampere", "frequency_hertz")})
    pts = w.close()
    assert len(pts) == len(wave.frequencies())
    assert max(p.relative_error for p in pts) < 0.005 and max(p.harmonic for p in pts) < 0.01


def test_waveform_step_resumed_between_frequencies_goes_on_with_the_next_one():
    """Resumed after the block that ended with a frequency's last sample, the step goes on with the next
    frequency at its own start (no frequency measured twice, no sample time repeated) and gives the
    samples of the unbroken run."""
    wave = Impedance(step_id=1, name="eis", freq_start=1e2, freq_stop=1e-1, points_per_decade=2,
                     acquisition="waveform", samples_per_period=16, periods=2)
    full = run(SimChannel(noise=False), wave, StepStart(test_time=0.0, max_block_span=5.0))
    assert len(full) >= 2
    ref = SimChannel(noise=False)
    cut: dict = {}

    async def first_block():
        gen = ref.run_step(wave, StepStart(test_time=0.0, max_block_span=5.0))
        async for b in gen:
            cut.update(state=ref.save_state(), t=float(b.time[-1]), st=float(b.columns["step_time_second"][-1]),
                       n=len(b))
            break
        await gen.aclose()

    asyncio.run(first_block())
    resumed = SimChannel(noise=False)
    resumed.load_state(cut["state"])
    rest = run(resumed, wave, StepStart(test_time=cut["t"], step_time=cut["st"], max_block_span=5.0))
    t_full, t_rest = cat(full, "test_time_second"), cat(rest, "test_time_second")
    assert t_rest.size == t_full.size - cut["n"]
    np.testing.assert_allclose(t_rest, t_full[cut["n"]:], rtol=0, atol=1e-9)
    np.testing.assert_array_equal(cat(rest, "frequency_hertz"), cat(full, "frequency_hertz")[cut["n"]:])
    np.testing.assert_allclose(cat(rest, "current_ampere"), cat(full, "current_ampere")[cut["n"]:], rtol=1e-6)
