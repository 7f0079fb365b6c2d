"""The follower role: fetch the leader's frames, verify, append, fsync, acknowledge.

Imports run one way: this package uses the engine and node from `daemon`;
`daemon` finds this role only through the `zwal.roles` entry point.
"""
