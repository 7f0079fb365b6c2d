"""The smallest end-to-end story: start a cluster, write, read, converge."""

from __future__ import annotations


def test_three_nodes_replicate_byte_identical(make_cluster):
    c = make_cluster(3, ack_replicas=1)
    c.start_all()
    cl = c.client()
    results = [cl.set(f"k{i}", f"v{i}") for i in range(50)]
    assert [r.offset for r in results] == sorted(r.offset for r in results)
    cl.delete("k0")
    assert cl.get("k0") is None
    assert cl.get("k7") == b"v7"
    c.wait_converged()
    st = c.status("node1")
    assert st["role"] == "leader" and st["records"] == 51
