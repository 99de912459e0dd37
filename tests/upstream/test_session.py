"""The run check before an upload asks BranchKey only when the notification channel cannot tell."""

from __future__ import annotations

import anyio
import pytest

from gateway.errors import RunNotStartedError
from tests.support.fake_branchkey import FakeBranchKey, session_with

RUN = "/api/v1/run/"


def test_no_run_call_per_upload_while_the_channel_is_up() -> None:
    """With the channel connected (it read the run when it connected), three upload checks make no
    run call; a run_status notification is believed at once; while the channel is down every
    check asks BranchKey again."""
    fake = FakeBranchKey()

    async def main() -> list[int]:
        calls = []
        async with session_with(fake, run_check_interval_s=60) as session:
            await session.refresh_run()  # what the channel does when it connects
            session.channel_up(session.upstream)
            for _ in range(3):
                await session.wait_for_start(0)
            calls.append(fake.calls(RUN))

            session.notify_run_status("stop")
            with pytest.raises(RunNotStartedError) as refused:
                await session.wait_for_start(0)
            assert refused.value.extra["run_status"] == "stop"
            calls.append(fake.calls(RUN))

            session.notify_run_status("start")
            session.channel_up(None)
            for _ in range(2):
                await session.wait_for_start(0)
            calls.append(fake.calls(RUN))
        return calls

    assert anyio.run(main) == [1, 1, 3]


def test_the_run_is_read_again_every_interval_even_with_the_channel_up() -> None:
    """BK_RUN_CHECK_INTERVAL_S bounds how long a told status is trusted: after it, one run call."""
    fake = FakeBranchKey()

    async def main() -> list[int]:
        calls = []
        async with session_with(fake, run_check_interval_s=0.2) as session:
            await session.refresh_run()
            session.channel_up(session.upstream)
            await session.wait_for_start(0)
            calls.append(fake.calls(RUN))
            await anyio.sleep(0.3)
            await session.wait_for_start(0)
            await session.wait_for_start(0)
            calls.append(fake.calls(RUN))
        return calls

    assert anyio.run(main) == [1, 2]


def test_a_channel_for_an_older_session_does_not_count() -> None:
    """A login replaces the upstream: the channel must reconnect for the new leaf before its word
    is trusted again."""
    fake = FakeBranchKey()

    async def main() -> int:
        async with session_with(fake, run_check_interval_s=60) as session:
            await session.refresh_run()
            old = session.upstream
            session.channel_up(old)
            assert session.credentials is not None
            session.adopt(session.credentials)
            session.channel_up(old)  # a late word from the old connection
            await session.wait_for_start(0)
        return fake.calls(RUN)

    assert anyio.run(main) == 2
