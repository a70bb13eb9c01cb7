"""Strict types at every config edge (issue 11, findings 7 and 9): money, counts, seeds, durations, flags, text.

Each model's fields are sorted into kinds below, and a test checks the sorting covers every
field: a field added later must be given a kind (and so a strictness test) to pass.
"""

from __future__ import annotations

import datetime as dt
import math

import numpy as np
import pyarrow as pa
import pytest
from hypothesis import given
from hypothesis import strategies as st

from ledger.plot import plot_table, spend_by_bucket
from ledger.report import build_report, exact_sum
from mesh import MAX_AMOUNT_MICROS, ConfigError, ManualClock, MeshConfig, TollboothConfig, format_usd
from mesh.core.clock import END_TIME_S
from mesh.core.errors import InvalidArgumentError, InvalidTypeError
from mesh.scenario import AgentGroup, Latency, Onward, Scenario, Traffic, load_scenario

#: What each kind of field must refuse (None is refused only where the field is not Optional).
BAD_VALUES = {
    "money": [True, False, b"1", bytearray(b"1"), np.int64(1), 1 + 0j, [1]],
    "count": [True, False, 2.0, "7", b"7", np.int64(7), 7.5],
    "number": [True, False, "1.5", b"1", "nan", [1.0]],
    "flag": [1, 0, "true", "yes", b"1", 1.0],
    "text": [b"tollmesh", 7, ["x"]],
}

TOLLBOOTH_FIELDS = {
    "money": ["toll_per_message_usd", "max_daily_toll_per_agent"],
    "number": ["toll_per_message_tokens", "escrow_timeout_s", "x402_verify_timeout_s"],
    "count": ["max_settled_records", "ledger_max_segment_bytes", "ledger_format"],
    "flag": ["paper_mode", "require_payment_before_route", "track_balances", "ledger_enabled",
             "ledger_rotate_daily", "restore_from_ledger", "metrics_enabled"],
    "text": ["x402_endpoint", "x402_api_key"],
    "other": ["ledger_path", "mode", "ledger_fsync", "ledger_parquet_dir", "agent_daily_caps_usd"],
}
MESH_FIELDS = {
    "money": ["max_daily_toll_per_agent"],
    "number": ["fast_lane_idle_s", "handler_timeout_s", "escrow_timeout_s", "sweep_interval_s",
               "x402_verify_timeout_s", "start_s"],
    "count": ["shards", "hosts_per_group", "max_batch_messages", "max_inflight_batches", "max_payload_bytes",
              "max_settled_records", "ledger_max_segment_bytes", "ledger_format"],
    "flag": ["detached", "fast_lane", "track_balances", "ledger_parquet", "ledger_rotate_daily",
             "restore_from_ledger", "metrics_enabled", "partitioned_ledger"],
    "text": ["name", "namespace"],
    "other": ["out_dir", "clock", "ledger_fsync", "agent_daily_caps_usd"],
}
SCENARIO_FIELDS = {
    "count": ["seed", "messages", "ticks_per_day", "shards", "hosts", "batch_size"],
    "number": ["days", "handler_timeout_s", "escrow_timeout_s"],
    "flag": ["ledger_parquet", "partitioned_ledger"],
    "text": ["name"],
    "other": ["start_date", "ledger_fsync", "groups", "traffic"],
}
GROUP_FIELDS = {
    "money": ["price_usd", "daily_cap_usd", "balance_usd"],
    "count": ["count"],
    "number": ["failure_rate"],
    "text": ["name", "behaviour"],
    "other": ["latency_ms", "onward", "pays"],
}
LATENCY_FIELDS = {"number": ["ms", "low_ms", "high_ms", "p50_ms", "p99_ms"], "other": ["distribution"]}
ONWARD_FIELDS = {"text": ["to"], "number": ["alpha", "probability"], "other": ["pattern"]}
TRAFFIC_FIELDS = {"text": ["source", "target"], "number": ["share", "alpha"], "other": ["pattern"]}

GROUPS = [{"name": "a", "count": 2}, {"name": "b", "count": 1}]
TRAFFIC = [{"source": "a", "target": "b"}]


def _scenario_with(where: str, field: str, value):
    """A Scenario with ``field`` set to ``value`` at ``where`` (the scenario, a group, its latency...)."""
    group, traffic, top = dict(GROUPS[0]), dict(TRAFFIC[0]), {}
    if where == "scenario":
        top[field] = value
    elif where == "group":
        group[field] = value
    elif where == "latency":
        group["latency_ms"] = {field: value}
    elif where == "onward":
        group["onward"] = {"to": "b", field: value}
    else:
        traffic[field] = value
    return Scenario(groups=[group, GROUPS[1]], traffic=[traffic], **top)


MODELS = {
    # name: (model class, fields by kind, build(field, value), the path the error names)
    "TollboothConfig": (TollboothConfig, TOLLBOOTH_FIELDS, lambda f, v: TollboothConfig(**{f: v}), "{}"),
    "MeshConfig": (MeshConfig, MESH_FIELDS, lambda f, v: MeshConfig(**{f: v}), "{}"),
    "Scenario": (Scenario, SCENARIO_FIELDS, lambda f, v: _scenario_with("scenario", f, v), "{}"),
    "AgentGroup": (AgentGroup, GROUP_FIELDS, lambda f, v: _scenario_with("group", f, v), "groups.0.{}"),
    "Latency": (Latency, LATENCY_FIELDS, lambda f, v: _scenario_with("latency", f, v), "groups.0.latency_ms.{}"),
    "Onward": (Onward, ONWARD_FIELDS, lambda f, v: _scenario_with("onward", f, v), "groups.0.onward.{}"),
    "Traffic": (Traffic, TRAFFIC_FIELDS, lambda f, v: _scenario_with("traffic", f, v), "traffic.0.{}"),
}


@pytest.mark.parametrize("name", sorted(MODELS))
def test_every_field_of_every_config_has_a_kind(name):
    model, kinds, _, _ = MODELS[name]
    sorted_fields = [f for fields in kinds.values() for f in fields]
    assert sorted(sorted_fields) == sorted(model.model_fields), "give each new field a kind (and its strictness test)"


def _cases():
    for name, (_, kinds, _, _) in sorted(MODELS.items()):
        for kind, fields in kinds.items():
            for field in fields:
                for value in BAD_VALUES.get(kind, []):
                    yield pytest.param(name, field, value, id=f"{name}.{field}={value!r}")


@pytest.mark.parametrize("name, field, value", list(_cases()))
def test_a_field_refuses_a_value_of_the_wrong_type_naming_the_field(name, field, value):
    _, _, build, path = MODELS[name]
    with pytest.raises(ConfigError) as caught:
        build(field, value)
    assert f"{path.format(field)}=" in str(caught.value)


def test_the_values_seen_in_the_finding_are_refused():
    for value in (True, b"1"):
        with pytest.raises(ConfigError, match=r"toll_per_message_usd=.*got (bool|bytes)"):
            TollboothConfig(toll_per_message_usd=value)
    config = TollboothConfig()
    with pytest.raises(ConfigError, match="toll_per_message_usd=True"):
        config.toll_per_message_usd = True
    assert config.toll_per_message_micros == 1_000


def test_a_scenario_file_with_bools_floats_and_text_for_numbers_names_each_field(tmp_path):
    cases = {
        "price_usd = true": "groups.0.price_usd=True", "count = true": "groups.0.count=True",
        "count = 2.0": "groups.0.count=2.0", 'seed = "7"': "seed='7'", "messages = true": "messages=True",
        "days = true": "days=True", 'escrow_timeout_s = "5"': "escrow_timeout_s='5'",
    }
    for line, named in cases.items():
        top, group = (line, "") if line.split()[0] in ("seed", "messages", "days", "escrow_timeout_s") else ("", line)
        text = f'{top}\n[[groups]]\nname = "a"\n{"count = 2" if "count" not in group else ""}\n{group}\n' \
               '[[groups]]\nname = "b"\ncount = 1\n[[traffic]]\nsource = "a"\ntarget = "b"\n'
        path = tmp_path / "s.toml"
        path.write_text(text)
        with pytest.raises(ConfigError) as caught:
            load_scenario(path)
        assert named in str(caught.value), line


def test_good_values_still_pass_and_keep_their_form():
    config = TollboothConfig(toll_per_message_usd="0.002", escrow_timeout_s=1, max_settled_records=5, paper_mode=False,
                             ledger_path="x/l.jsonl", ledger_fsync="batch", agent_daily_caps_usd={"zoë-🦜": 2})
    assert config.toll_per_message_usd == "0.002" and config.escrow_timeout_s == 1
    assert config.agent_daily_caps_micros() == {"zoë-🦜": 2_000_000}
    mesh = MeshConfig(shards=3, fast_lane_idle_s=np.float64(2.5), out_dir="x", ledger_fsync="never", start_s=0)
    assert mesh.shards == 3 and mesh.fast_lane_idle_s == 2.5
    s = Scenario(groups=GROUPS, traffic=TRAFFIC, start_date="2026-03-01", seed=2**63 - 1, days=1)
    assert s.start_date == dt.date(2026, 3, 1)
    assert Scenario(**s.model_dump(mode="json")) == s  # a scenario saved as JSON reads back


@pytest.mark.parametrize("key, problem", [
    ("\ud800", "lone surrogate"), ("a\nb", "control character"), ("", "1 to 256"), (b"alice", "valid string"),
    ("x" * 257, "1 to 256"),
])
def test_cap_keys_are_agent_ids(key, problem):
    for model in (TollboothConfig, MeshConfig):
        with pytest.raises(ConfigError) as caught:
            model(agent_daily_caps_usd={key: 1})
        assert "agent_daily_caps_usd" in str(caught.value) and problem in str(caught.value)
        str(caught.value).encode("utf-8")  # the message itself can be printed


# -- durations and times (finding 9) ---------------------------------------------------------------


@pytest.mark.parametrize("model, field", [
    (TollboothConfig, "escrow_timeout_s"), (TollboothConfig, "x402_verify_timeout_s"),
    (MeshConfig, "escrow_timeout_s"), (MeshConfig, "handler_timeout_s"), (MeshConfig, "sweep_interval_s"),
    (MeshConfig, "fast_lane_idle_s"), (MeshConfig, "x402_verify_timeout_s"),
    (Scenario, "escrow_timeout_s"), (Scenario, "handler_timeout_s"),
])
def test_a_duration_below_one_microsecond_is_refused(model, field):
    build = (lambda **kw: Scenario(groups=GROUPS, traffic=TRAFFIC, **kw)) if model is Scenario else model
    for value in (1e-9, 4.9e-7, 0, -1, math.nan, math.inf):
        with pytest.raises(ConfigError, match=f"{field}="):
            build(**{field: value})
    assert getattr(build(**{field: 1e-6}), field) == 1e-6


@pytest.mark.parametrize("start", [math.nan, math.inf, -math.inf, -1.0, END_TIME_S, True, "0", None])
def test_a_manual_clock_refuses_times_that_are_not_times(start):
    with pytest.raises((InvalidArgumentError, InvalidTypeError), match="start_s="):
        ManualClock(start)


@pytest.mark.parametrize("seconds", [math.nan, math.inf, -1.0, -math.inf, True, "1", END_TIME_S])
def test_a_manual_clock_moves_on_only_by_finite_seconds_within_its_range(seconds):
    clock = ManualClock(1_000.0)
    with pytest.raises((InvalidArgumentError, InvalidTypeError), match="seconds="):
        clock.advance(seconds)
    with pytest.raises((InvalidArgumentError, InvalidTypeError), match="now_s="):
        clock.set(seconds if seconds is not END_TIME_S else END_TIME_S)
    assert clock.now_s() == 1_000.0


@given(st.floats(0, END_TIME_S, exclude_max=True), st.floats(0, END_TIME_S))
def test_a_clock_time_stays_in_range_or_the_move_is_refused(start, seconds):
    clock = ManualClock(start)
    try:
        clock.advance(seconds)
    except InvalidArgumentError:
        assert start + seconds >= END_TIME_S
        assert clock.now_s() == start
    else:
        assert 0 <= clock.now_s() < END_TIME_S


@pytest.mark.parametrize("start_date, days", [
    ("9999-12-31", 2), ("9999-12-31", 1), ("9999-12-30", 2.5), ("9990-01-03", 3_650),
])
def test_a_scenario_whose_days_run_past_the_clock_is_refused(start_date, days):
    with pytest.raises(ConfigError, match=r"days=.*must end before 10000-01-01"):
        Scenario(groups=GROUPS, traffic=TRAFFIC, start_date=start_date, days=days)


def test_a_scenario_before_the_epoch_or_with_a_timestamp_for_a_date_is_refused():
    with pytest.raises(ConfigError, match="start_date='1969-12-31': must be 1970-01-01 or later"):
        Scenario(groups=GROUPS, traffic=TRAFFIC, start_date="1969-12-31")
    for value in (20260101, True, dt.datetime(2026, 1, 1)):
        with pytest.raises(ConfigError, match="start_date=.*expected a date"):
            Scenario(groups=GROUPS, traffic=TRAFFIC, start_date=value)
    last = Scenario(groups=GROUPS, traffic=TRAFFIC, start_date="9999-12-30", days=1.999)
    assert last.start_s + last.days * 86_400 < END_TIME_S
    with pytest.raises(ConfigError, match="start_s="):
        MeshConfig(start_s=END_TIME_S)


# -- sums of micros are exact at any size (finding 9) ----------------------------------------------

INT64_MAX = 2**63 - 1


def _ledger_table(amounts: list[int], kinds: list[str] | None = None, sources: list[str] | None = None):
    """A ledger table as ``read_table`` gives it, one event per amount (released, by default)."""
    n = len(amounts)
    kinds = kinds or ["paper_release"] * n
    return pa.table({
        "ts": pa.array([1_767_225_600_000_000 + i for i in range(n)], pa.timestamp("us", tz="UTC")),
        "kind": pa.array(kinds).dictionary_encode(), "task_id": pa.array([f"t{i}" for i in range(n)]),
        "source_agent": pa.array(sources or ["alice"] * n).dictionary_encode(),
        "target_agent": pa.array(["bob"] * n).dictionary_encode(),
        "amount_micros": pa.array(amounts, pa.int64()),
        "status": pa.array(["released" if k in ("paper_release", "release") else "refunded" for k in kinds]),
        "reason": pa.array([None] * n, pa.string()),
    })


@pytest.mark.parametrize("amounts", [
    [MAX_AMOUNT_MICROS] * 10_000,                       # the finding: 10,000 calls of $1e9
    [INT64_MAX // 7] * 7,                               # exactly at the int64 boundary, summed as int64
    [INT64_MAX // 7] * 8,                               # one past it
    [INT64_MAX, 1], [INT64_MAX, INT64_MAX, INT64_MAX], [2**62] * 4, [1, 2, 3], [],
])
def test_report_sums_are_exact_at_and_past_the_int64_boundary(amounts):
    report = build_report(_ledger_table(amounts), top=3)
    assert report["spend_micros"] == sum(amounts)
    assert report["spend_usd"] == format_usd(sum(amounts))
    if amounts:
        assert report["by_status"]["released"]["amount_micros"] == sum(amounts)
        assert report["top_payers"][0]["paid_micros"] == sum(amounts)
        assert report["top_edges"][0]["released_micros"] == sum(amounts)
    assert exact_sum(pa.array(amounts, pa.int64())) == sum(amounts)


@given(st.lists(st.integers(-INT64_MAX, INT64_MAX), max_size=40), st.integers(1, 3))
def test_exact_sum_is_the_python_sum_of_any_int64_values_in_any_chunks(values, chunks):
    size = -(-len(values) // chunks) if values else 1
    chunked = pa.chunked_array([pa.array(values[i:i + size], pa.int64()) for i in range(0, len(values), size)] or
                               [pa.array([], pa.int64())])
    assert exact_sum(chunked) == sum(values)


def test_refunds_and_grouped_sums_past_the_boundary_are_exact():
    amounts = [MAX_AMOUNT_MICROS] * 12_000
    kinds = ["paper_release"] * 10_000 + ["refund"] * 2_000
    sources = [f"agent-{i % 3}" for i in range(12_000)]
    report = build_report(_ledger_table(amounts, kinds, sources), top=5)
    assert report["spend_micros"] == 10_000 * MAX_AMOUNT_MICROS
    assert report["refunded_micros"] == 2_000 * MAX_AMOUNT_MICROS
    assert {r["agent"]: r["paid_micros"] for r in report["top_payers"]} == {
        f"agent-{a}": sum(1 for i in range(10_000) if i % 3 == a) * MAX_AMOUNT_MICROS for a in range(3)}
    assert sum(v["amount_micros"] for v in report["by_status"].values()) == 12_000 * MAX_AMOUNT_MICROS


def test_the_spend_plot_sums_exactly(tmp_path):
    amounts = pa.chunked_array([pa.array([MAX_AMOUNT_MICROS] * 10_000 + [INT64_MAX, 5], pa.int64())])
    seconds = np.array([0] * 10_000 + [3_600, 3_601])
    assert spend_by_bucket(seconds, amounts, 3_600) == ([0, 3_600], [10_000 * MAX_AMOUNT_MICROS, INT64_MAX + 5])
    table = _ledger_table([MAX_AMOUNT_MICROS] * 10_000)
    assert len(plot_table(table, build_report(table), tmp_path / "plots")) == 3
