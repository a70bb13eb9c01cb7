"""Scenarios and simulated agents, without Ray: validation, loading, reproducible draws, target picks."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from mesh import ConfigError
from mesh.scenario import Latency, Scenario, builtin_scenarios, load_scenario
from mesh.sim_agents import OnwardTarget, SimAgent, SimBehaviour, SimulatedFailure, group_class, pick_many, power_law_pick

GROUPS = [{"name": "a", "count": 5, "balance_usd": "1"}, {"name": "b", "count": 3}]
TRAFFIC = [{"source": "a", "target": "b"}]


def scenario(**changes):
    return Scenario(**{"groups": GROUPS, "traffic": TRAFFIC, **changes})


@pytest.mark.parametrize("changes, named", [
    ({"shards": 0}, "shards=0: Input should be greater than or equal to 1"),
    ({"ledger_fsync": "sometimes"}, "ledger_fsync='sometimes': Input should be 'always', 'batch' or 'never'"),
    ({"traffic": [{"source": "a", "target": "b", "pattern": "zipf"}]}, "traffic.0.pattern='zipf': Input should be 'uniform' or 'power_law'"),
    ({"groups": [{"name": "a", "count": 1, "price_usd": "-1"}, GROUPS[1]]}, "groups.0.price_usd"),
    ({"groups": [{"name": "a", "count": 1, "price_usd": "0.0000001"}, GROUPS[1]]}, "finer than"),
    ({"groups": [{"name": "a", "count": 1, "failure_rate": 1.5}, GROUPS[1]]}, "groups.0.failure_rate=1.5"),
    ({"groups": [{"name": "a", "count": 1, "colour": "red"}, GROUPS[1]]}, "groups.0.colour='red': no such field; the fields here are: name, count,"),
    ({"groups": [{"name": "a", "count": 1, "prce_usd": "0.01"}, GROUPS[1]]}, "groups.0.prce_usd='0.01': no such field: did you mean 'price_usd'?"),
    ({"mesages": 10}, "mesages=10: no such field: did you mean 'messages'?"),
    ({"traffic": [{"sourc": "a", "target": "b"}]}, "traffic.0.source: a required field is missing; traffic.0.sourc='a': no such field: did you mean 'source'?"),
    ({"groups": [{"name": "a", "count": 1, "latency_ms": {"distribution": "gamma"}}, GROUPS[1]]},
     "Input should be 'none', 'constant', 'uniform' or 'lognormal'"),
    ({"groups": [GROUPS[0], {"name": "a", "count": 2}]}, "group names must be unique"),
    ({"traffic": [{"source": "a", "target": "nobody"}]}, "traffic[0].target='nobody': names no group; the groups are ['a', 'b']"),
    ({"groups": [{"name": "a", "count": 1, "onward": {"to": "b"}}, {"name": "b", "count": 1, "onward": {"to": "a"}}]},
     "onward calls must not form a cycle"),
    ({"messages": 0}, "messages=0"),
    ({"traffic": [{"source": "a", "target": "a"}], "groups": [{"name": "a", "count": 1}]},
     "traffic[0].target='a': a group calling itself needs 2 agents or more"),
    ({"groups": []}, "groups=[]: List should have at least 1 item"),
])
def test_a_bad_scenario_names_the_field_and_what_is_allowed(changes, named):
    with pytest.raises(ConfigError) as caught:
        scenario(**changes)
    assert named in str(caught.value)
    assert str(caught.value).startswith("invalid Scenario: ")


def test_every_builtin_scenario_loads_and_the_default_is_the_advertised_size():
    assert {"default", "hub", "pipeline", "caps", "scale"} <= set(builtin_scenarios())
    for name in builtin_scenarios():
        assert load_scenario(name).name == name
    default = load_scenario("default")
    assert default.agent_count == 1_000 and default.messages == 100_000 and default.pipeline_depth() == 2
    scale = load_scenario("scale")
    assert scale.agent_count == 100_000 and scale.messages == 1_000_000


def test_scenario_files_name_where_they_are_wrong(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text('name = "x"\n[[groups]]\nname = "a"\ncount = -3\n[[traffic]]\nsource = "a"\ntarget = "a"\n')
    with pytest.raises(ConfigError, match=r"bad\.toml: invalid Scenario: groups\.0\.count=-3"):
        load_scenario(bad)
    (tmp_path / "broken.toml").write_text("name = \n")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_scenario(tmp_path / "broken.toml")
    with pytest.raises(ConfigError, match="no such file, nor a built-in scenario"):
        load_scenario(tmp_path / "missing.toml")


def test_flags_scale_a_scenario_and_are_validated_the_same_way():
    s = load_scenario("default").scaled(agents=100, messages=500, seed=3, shards=None)
    assert s.agent_count == 100 and s.messages == 500 and s.seed == 3 and s.shards == 2
    assert [g.count for g in s.groups] == [30, 60, 10]
    with pytest.raises(ConfigError, match=r"days=-1\.0: Input should be greater than 0"):
        load_scenario("default").scaled(days=-1.0)
    with pytest.raises(ConfigError, match="at least one per group"):
        load_scenario("default").scaled(agents=2)


def test_ticks_cover_every_day_and_never_exceed_a_batch():
    assert scenario(messages=1_000, days=2, ticks_per_day=24, batch_size=5_000).ticks == 48
    assert scenario(messages=100_000, days=1, ticks_per_day=4, batch_size=5_000).ticks == 20


def test_latency_quantiles():
    lognormal = Latency(distribution="lognormal", p50_ms=2, p99_ms=20)
    assert lognormal.seconds(0.5) == pytest.approx(0.002)
    assert lognormal.seconds(0.99) == pytest.approx(0.020, rel=1e-3)
    assert Latency(distribution="uniform", low_ms=1, high_ms=3).seconds(0.5) == pytest.approx(0.002)
    assert Latency().seconds(0.7) == 0.0
    with pytest.raises(ValueError, match="p99_ms"):
        Latency(distribution="lognormal", p50_ms=5, p99_ms=1)


class _Ctx:
    def __init__(self, task_id):
        self.task_id = task_id


def test_draws_depend_only_on_seed_and_task_id():
    group = scenario().group("b")
    agent = group_class(group, SimBehaviour(seed=1, group="b", failure_rate=0.5))()
    again = group_class(group, SimBehaviour(seed=1, group="b", failure_rate=0.5))()
    other = group_class(group, SimBehaviour(seed=2, group="b", failure_rate=0.5))()
    assert agent.draws(_Ctx("m1")) == again.draws(_Ctx("m1")) != other.draws(_Ctx("m1"))
    assert all(0 <= u < 1 for u in agent.draws(_Ctx("m1")))


def test_failures_happen_at_the_group_rate():
    agent = group_class(scenario().group("b"), SimBehaviour(seed=9, group="b", failure_rate=0.25))()
    failed = 0
    for n in range(4_000):
        try:
            assert agent.handle(_Ctx(f"m{n}"), None) is None
        except SimulatedFailure:
            failed += 1
    assert 0.22 < failed / 4_000 < 0.28


def test_calls_that_wait_or_call_onward_go_async_and_the_rest_stay_inline():
    onward = OnwardTarget("b", 3, "uniform", 1.2, 0.5)
    agent = group_class(scenario().group("a"), SimBehaviour(seed=4, group="a", onward=onward))()
    kinds = Counter()
    for n in range(1_000):
        value = agent.handle(_Ctx(f"m{n}"), None)
        kinds["async" if hasattr(value, "__await__") else "inline"] += 1
        if hasattr(value, "close"):
            value.close()
    assert 400 < kinds["async"] < 600


def test_the_simulation_helpers_are_not_handlers_other_agents_may_call():
    from mesh.calls.agent import price_table

    cls = group_class(scenario().group("a"), SimBehaviour(seed=0, group="a"))
    assert price_table(cls).methods == {"handle"}


def test_group_classes_carry_their_price_and_refuse_other_bases():
    cls = group_class(scenario(groups=[{"name": "a", "count": 1, "price_usd": "0.25"}, GROUPS[1]]).group("a"),
                      SimBehaviour(seed=0, group="a"))
    assert issubclass(cls, SimAgent) and cls.price_usd == "0.25"
    with pytest.raises(TypeError, match="must subclass mesh.SimAgent"):
        group_class(scenario().group("a"), SimBehaviour(seed=0, group="a"), base=dict)


@given(count=st.integers(1, 5_000), alpha=st.floats(0.1, 4), u=st.floats(0, 1, exclude_max=True))
def test_picks_stay_in_range_and_agree_one_by_one_and_in_bulk(count, alpha, u):
    one = power_law_pick(count, alpha, u)
    assert 0 <= one < count
    assert pick_many(count, "power_law", alpha, np.array([u]))[0] == one
    assert 0 <= pick_many(count, "uniform", alpha, np.array([u]))[0] < count
    assert OnwardTarget("g", count, "power_law", alpha, 1.0).pick(u) == f"g-{one}"


def test_power_law_makes_hubs():
    picks = pick_many(1_000, "power_law", 1.2, np.random.default_rng(0).random(20_000))
    top = Counter(picks.tolist()).most_common(1)[0]
    assert top[0] == 0 and top[1] > 20_000 * 0.1
