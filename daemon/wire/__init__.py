"""Wire protocols: client requests and replies, and replication messages."""
