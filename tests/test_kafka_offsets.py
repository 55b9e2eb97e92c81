"""The Kafka consumer's commit bookkeeping (``brokers.kafka_offsets``), without a server: a
partition commits only past its contiguously acked head, out-of-order acks wait for the gap."""
from brokers.kafka_offsets import ConsumerState


def test_commit_only_past_the_contiguously_acked_head():
    st = ConsumerState(("t", "g", "c"), "g")
    for off in (5, 6, 7, 8):
        st.delivered("p0", off)
    st.delivered("p1", 40)
    st.acked([("p0", 6), ("p0", 8)])          # 5 not acked: nothing may be committed
    assert st.to_commit == {}
    st.acked([("p0", 5)])                     # 5, 6 done -> commit 7 (7 still in flight)
    assert st.to_commit == {"p0": 7}
    st.acked([("p0", 7), ("p1", 40)])         # 7 closes the gap; 8 was acked before
    assert st.to_commit == {"p0": 9, "p1": 41}
    assert all(not q for q in st.pending.values())


def test_acks_of_unknown_or_forgotten_partitions_are_ignored():
    st = ConsumerState(("t", "g", "c"), "g")
    st.delivered("p0", 1)
    st.delivered("p1", 1)
    st.forget(["p1"])                         # rebalanced away: the new owner re-delivers
    st.acked([("p1", 1), ("p2", 3), ("p0", 99)])
    assert st.to_commit == {} and "p1" not in st.pending
    st.acked([("p0", 1)])
    assert st.to_commit == {"p0": 2}
