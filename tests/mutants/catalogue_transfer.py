"""Mutants of snapshot transfer (issue 20, build item 4): each breaks one rule of daemon/node/transfer.py."""

from tests.mutants.model import Mutant

U = "tests/test_snapshot_transfer_units.py::"
R = "tests/test_snapshot_transfer.py::"

MUTANTS = [
    Mutant(id="transfer-install-unverified", file="daemon/node/install.py",
           find="            loaded = snap.decode(buf, self.window_seconds)\n",
           replace="            loaded = snap.Loaded(snap.decode_header(buf)[0], None)  # type: ignore[arg-type]\n",
           why="a transferred snapshot is installed only after every chunk passes its checksum",
           killers=[U + "test_a_damaged_transfer_is_not_installed"]),
    Mutant(id="transfer-log-from-0-after-install", file="daemon/node/install.py",
           find="        seg = os.path.join(new, segment_name(offset))\n",
           replace="        seg = os.path.join(new, segment_name(0))\n",
           why="after an install the log begins at the snapshot's offset and the follower fetches from there",
           killers=[U + "test_a_crash_at_each_install_step_recovers_the_old_state_or_the_installed_one",
                    R + "test_a_wiped_follower_installs_the_snapshot_and_catches_up_byte_identically"]),
    Mutant(id="transfer-mid-transfer-counts-as-copy", file="follower/role.py",
           find="        if st.damaged_end is None or st.damaged_end < d.catch_up_to:\n",
           replace="        if False:\n",
           why="a rebuilt node counts as no copy for promotion until its log reaches the leader's end",
           killers=[R + "test_kill_9_during_a_transfer_then_restart_completes_it"]),
    Mutant(id="transfer-chunk-at-wrong-position", file="daemon/node/transfer.py",
           find="    if msg.pos != partial.pos:\n",
           replace="    if msg.pos > partial.pos:\n",
           why="a chunk is written only at the position the transfer has reached",
           killers=[U + "test_follower_core_resumes_the_same_file_and_restarts_another"]),
    Mutant(id="transfer-resume-another-file", file="daemon/node/transfer.py",
           find="    if partial is None or partial.offset != offer.offset or partial.crc != offer.crc or partial.pos > offer.size:\n",
           replace="    if partial is None or partial.offset != offer.offset or partial.pos > offer.size:\n",
           why="a transfer resumes only the same file (offset and header crc); another file starts again at 0",
           killers=[U + "test_follower_core_resumes_the_same_file_and_restarts_another"]),
    Mutant(id="transfer-offer-beyond-follower-log", file="daemon/node/transfer.py",
           find="    return offset < oldest or (offset == 0 and snap.offset > snap.size)\n",
           replace="    return True\n",
           why="a follower with a log the leader holds gets log bytes from its end, not a snapshot",
           killers=[U + "test_when_the_leader_sends_the_snapshot_instead_of_log",
                    U + "test_leader_core_offers_the_snapshot_and_serves_it_by_position"]),
]
