"""The descriptor table is sized at start-up (llmsim/cli/fdtable.py): no growth, so no RCU stall, while
streams are open. Each case runs in a fresh interpreter, whose table starts small."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest

resource = pytest.importorskip("resource")
_HARD = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
pytestmark = [pytest.mark.skipif(not os.path.exists("/proc/self/status"), reason="Linux /proc needed"),
              pytest.mark.skipif(_HARD != resource.RLIM_INFINITY and _HARD < 8192,
                                 reason="a hard descriptor limit of 8,192 or more needed")]

PRELUDE = textwrap.dedent("""
    import os, resource
    from llmsim.cli.fdtable import FD_TABLE_RESERVE, MAX_FD_LIMIT, raise_fd_limit, reserve_fd_table
    def fdsize():
        for line in open("/proc/self/status"):
            if line.startswith("FDSize:"):
                return int(line.split()[1])
    def open_fds():
        return sorted(int(n) for n in os.listdir("/proc/self/fd"))
""")


def run(code: str) -> list[str]:
    out = subprocess.run([sys.executable, "-c", PRELUDE + textwrap.dedent(code)], capture_output=True, text=True,
                         check=True, timeout=60)
    return out.stdout.split()


def test_reserves_the_slots_and_leaves_no_descriptor_open() -> None:
    before, size0, got, after, size1 = run("""
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, 4096), hard))
        before, size0 = open_fds(), fdsize()
        got = reserve_fd_table(4096)
        after = open_fds()
        print(before == after and "same" or after, size0, got, len(after), fdsize())
    """)
    assert before == "same"
    assert int(size0) < 4096 <= int(size1)
    assert int(got) == 4096


def test_capped_by_the_soft_descriptor_limit() -> None:
    got, size = run("""
        resource.setrlimit(resource.RLIMIT_NOFILE, (300, resource.getrlimit(resource.RLIMIT_NOFILE)[1]))
        print(reserve_fd_table(4096), fdsize())
    """)
    assert int(got) == 300
    assert 300 <= int(size) < 4096


def test_never_replaces_an_open_descriptor() -> None:
    same, got = run("""
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, 4096), hard))
        fd = os.open("/proc/self/status", os.O_RDONLY)
        os.dup2(fd, 4095)  # the descriptor reserve_fd_table(4096) would ask for
        st = os.fstat(4095)
        got = reserve_fd_table(4096)
        st2 = os.fstat(4095)
        print((st.st_ino, st.st_dev) == (st2.st_ino, st2.st_dev), got)
    """)
    assert same == "True"
    assert int(got) == 4096


def test_the_soft_limit_is_raised_to_the_hard_one() -> None:
    got, soft, want = run("""
        hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
        resource.setrlimit(resource.RLIMIT_NOFILE, (256, hard))
        got = raise_fd_limit()
        want = MAX_FD_LIMIT if hard == resource.RLIM_INFINITY else min(hard, MAX_FD_LIMIT)
        print(got, resource.getrlimit(resource.RLIMIT_NOFILE)[0], want)
    """)
    assert int(got) == int(soft) == int(want)


def test_a_server_listener_raises_the_limit_and_reserves_the_table() -> None:
    size, soft, want, limit = run("""
        hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
        resource.setrlimit(resource.RLIMIT_NOFILE, (256, hard))
        from llmsim.cli.server import make_listener
        make_listener("127.0.0.1", 0).close()
        soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
        want = MAX_FD_LIMIT if hard == resource.RLIM_INFINITY else min(hard, MAX_FD_LIMIT)
        print(fdsize(), soft, want, min(FD_TABLE_RESERVE, soft))
    """)
    assert int(soft) == int(want)
    assert int(size) >= int(limit) > 64
