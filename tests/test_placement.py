"""Where a mesh's shards and hosts go on a cluster (:mod:`actors.placement`): dealt evenly, the driver's node last.

The dealing itself is plain Python, checked here; that Ray puts each actor where it is dealt (and
elsewhere once its node is lost) is checked by ``test_cluster_hosts.py`` on three real hosts.
"""

from __future__ import annotations

from collections import Counter

import pytest
from hypothesis import given
from hypothesis import strategies as st

from actors.placement import PLACED_ACTOR_MEMORY_BYTES, Rotation, deal_order

node_ids = st.lists(st.text("0123456789abcdef", min_size=4, max_size=8), min_size=1, max_size=6, unique=True)


@given(node_ids, st.integers(0, 40), st.data())
def test_actors_are_dealt_evenly_and_the_drivers_node_gets_its_share_last(nodes, count, data):
    driver = data.draw(st.sampled_from(nodes))
    order = deal_order(nodes, driver)
    assert sorted(order) == sorted(nodes) and order[-1] == driver
    dealt = Counter(Rotation(order).take(count))
    assert max(dealt.values(), default=0) - min((dealt[n] for n in nodes), default=0) <= 1
    if count < len(nodes):
        assert dealt[driver] == 0  # fewer actors than nodes: all on the other nodes


@given(node_ids, st.lists(st.integers(0, 10), max_size=5))
def test_successive_takes_go_on_where_the_last_stopped(nodes, counts):
    one, parts = Rotation(nodes), []
    for n in counts:
        parts += one.take(n)
    assert parts == Rotation(nodes).take(sum(counts))
    assert Rotation(nodes, start=sum(counts)).take(3) == Rotation(nodes).take(sum(counts) + 3)[-3:]


def test_on_a_single_node_nothing_is_asked_of_ray():
    assert Rotation(["solo"]).actor_options(3) == [{}, {}, {}]


def test_on_a_cluster_each_actor_asks_a_kilobyte_of_memory_and_names_its_node():
    w1, w2, head = ("%056x" % n for n in (1, 2, 3))  # Ray's node ids: 28 bytes, in hex
    options = Rotation([w1, w2, head]).actor_options(4)
    assert [o["scheduling_strategy"].node_id for o in options] == [w1, w2, head, w1]
    assert all(o["scheduling_strategy"].soft and o["memory"] == PLACED_ACTOR_MEMORY_BYTES > 0 for o in options)


def test_no_node_is_an_error():
    with pytest.raises(ValueError, match="no node"):
        deal_order([], None)
