"""A node: the process, its durable identity, its KV state and the leader role.

The pure decision cores (`leader_core`, `epochs`, `retry`) take events and
return actions; `node` and `leader` are the I/O loops around them.
"""
