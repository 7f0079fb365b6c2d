"""Mutants of the asyncio client's driver (issue 22 item 6). Its rules are the core's
(daemon/client/core.py, guarded by the read and retry mutants); what is its own is what it does with
a call cut short. Killed by the real-cluster tests in tests/test_async_client.py."""

from tests.mutants.model import Mutant

AIO = "daemon/client/aio.py"
T = "tests/test_async_client.py::"

MUTANTS = [
    Mutant(id="aio-cancelled-watch-keeps-its-socket", file=AIO,
           find="        except BaseException as e:  # a watch cancelled while it long-polls: its reply is still on the way\n"
                "            # Not GeneratorExit: a watch left early (break) is closed by the loop later, perhaps while\n"
                "            # another call uses the socket; paused at an Emit, it has no request in flight.\n"
                "            if not isinstance(e, (ZwalError, GeneratorExit)):",
           replace="        except BaseException as e:  # a watch cancelled while it long-polls: its reply is still on the way\n"
                   "            # Not GeneratorExit: a watch left early (break) is closed by the loop later, perhaps while\n"
                   "            # another call uses the socket; paused at an Emit, it has no request in flight.\n"
                   "            if False:",
           why="a call cut short closes its socket: the next call never shares a socket with a reply still on its way",
           killers=[T + "test_a_cancelled_call_leaves_the_client_usable"]),
    Mutant(id="aio-recv-ignores-the-timeout", file=AIO,
           find="            if not await self.sock.poll(int(action.timeout * 1000)):\n                return None",
           replace="            if False:\n                return None",
           why="an attempt is bounded by `timeout` (Lazy Pirate): a node that never answers is given up, not waited on forever",
           killers=[T + "test_no_leader_and_no_node_raise_the_clients_errors"]),
]
