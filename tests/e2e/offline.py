"""pgoutbox runs that need no PostgreSQL and no Kafka: the command line, the -c
file and SIGHUP reloads, which fail (or start and keep retrying) before any
server is reached.

A test module imports both fixtures:

    from offline import no_session_stack, pgoutbox_offline  # noqa: F401

`no_session_stack` takes the place of conftest's autouse `_stack_for_session`
in that module, so that running only such tests starts no servers; a test of
the module that needs them still gets them through the `stack` fixture (as
`pgoutbox` and `outbox_db` ask for it).
"""

import types

import pytest

import util
from conftest import Runner

NO_STACK = types.SimpleNamespace(env={})

USAGE_HINT = 'Try "pgoutbox --help" for more information.\n'


@pytest.fixture(name="_stack_for_session")
def no_session_stack():
    """No stack up front: tests that need one ask for `stack`."""


@pytest.fixture
def pgoutbox_offline(request, pgoutbox_bin, tmp_path):
    """Like `pgoutbox`, without the stack's variables or servers."""
    runner = Runner(pgoutbox_bin, NO_STACK, tmp_path, request.node)
    yield runner
    runner.stop_all()
    bad = runner.sanitizer_reports()
    if bad:
        pytest.fail("sanitizer report in pgoutbox stderr:\n"
                    + "\n".join(p.describe() for p in bad), pytrace=False)


def nowhere_args():
    """-d and -b pointing at loopback ports where nothing listens (connections
    are refused at once; the daemon keeps retrying)."""
    return ["-d", "host=127.0.0.1 port=%d dbname=x connect_timeout=2" % util.free_port(),
            "-b", "127.0.0.1:%d" % util.free_port()]


def assert_usage_error(p, message):
    """p exited 1 with exactly `pgoutbox: <message>` and the --help hint on
    stderr, nothing on stdout.  message: a str, or a compiled regex that must
    match the whole message."""
    assert p.returncode == util.EXIT_USAGE, p.describe()
    assert p.stdout == "", "stdout is not empty:\n" + p.stdout
    err = p.stderr
    assert err.startswith("pgoutbox: ") and err.endswith("\n" + USAGE_HINT), (
        "not 'pgoutbox: MESSAGE' and the hint:\n" + err)
    got = err[len("pgoutbox: "):-len("\n" + USAGE_HINT)]
    if isinstance(message, str):
        assert got == message, "message differs:\n got: %s\nwant: %s" % (got, message)
    else:
        assert message.fullmatch(got), "message %r does not match %r" % (got, message.pattern)


def wait_started(p, timeout=30):
    """Wait until the daemon logged that it started (the configuration was
    accepted, signal handlers are set); fails if it exits first."""
    util.wait_for(lambda: p.poll() is not None or " starting (librdkafka " in p.stderr,
                  timeout, "pgoutbox to start")
    assert p.poll() is None, "pgoutbox exited:\n" + p.describe()
