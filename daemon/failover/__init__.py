"""Failover: the promotion rules and steps, and the failover drill."""
