"""`demo.parallel.run_forked`: jobs at once in forked processes, their messages relayed, their failures named."""

from __future__ import annotations

import os
import time

import pytest

from traitwatch.demo.parallel import JobFailed, fork_available, run_forked

pytestmark = pytest.mark.skipif(not fork_available(), reason="run_forked forks (Linux)")


def _threads_and_pid(send):
    import torch

    send(("hello", os.getpid()))
    return torch.get_num_threads(), os.getpid()


def test_each_job_runs_in_its_own_process_with_its_threads_and_its_messages_reach_the_parent_named():
    heard = []
    results = run_forked([("a", _threads_and_pid), ("b", _threads_and_pid)], threads_each=1,
                         on_message=lambda name, message: heard.append((name, message)))
    pids = {pid for _, pid in results}
    assert [threads for threads, _ in results] == [1, 1]
    assert len(pids) == 2 and os.getpid() not in pids  # two children, not this process
    assert sorted(heard) == sorted([("a", ("hello", results[0][1])), ("b", ("hello", results[1][1]))])


def test_a_job_that_raises_is_named_with_its_error_after_the_other_job_finishes():
    heard = []

    def fails(send):
        raise ValueError("row 7 is not chat JSON")

    def works(send):
        time.sleep(0.5)  # ends after the failing job
        send("finished")
        return 1

    with pytest.raises(JobFailed, match=r"job 'bad' failed: ValueError: row 7 is not chat JSON") as caught:
        run_forked([("bad", fails), ("good", works)], threads_each=1,
                   on_message=lambda name, message: heard.append((name, message)))
    assert "Traceback" in str(caught.value) and "good" not in str(caught.value)
    assert heard == [("good", "finished")]  # the other job was not stopped by the failure


def test_a_process_that_dies_without_a_result_is_named():
    def dies(send):
        os._exit(3)

    with pytest.raises(JobFailed, match=r"job 'dies' failed: the process ended without a result"):
        run_forked([("dies", dies)], threads_each=1, on_message=lambda name, message: None)


def test_an_error_in_the_parent_stops_the_jobs_still_working():
    def slow(send):
        send("started")
        time.sleep(60)
        return 1

    def stop(name, message):
        raise KeyboardInterrupt

    t0 = time.perf_counter()
    with pytest.raises(KeyboardInterrupt):
        run_forked([("slow", slow)], threads_each=1, on_message=stop)
    assert time.perf_counter() - t0 < 30  # terminated, not waited for


def test_a_bad_input_in_a_job_is_raised_as_it_is_without_the_traceback():
    from traitwatch.errors import InputFileError

    def bad_input(send):
        raise InputFileError("data.jsonl, line 3: no assistant turn; add one or drop the row")

    with pytest.raises(InputFileError, match="line 3: no assistant turn") as caught:
        run_forked([("clean", bad_input)], threads_each=1, on_message=lambda name, message: None)
    assert "Traceback" not in str(caught.value)


def test_meanwhile_runs_here_with_the_jobs_threads_while_they_work():
    import torch

    seen = {}
    before = torch.get_num_threads()

    def here():
        seen["threads"], seen["pid"] = torch.get_num_threads(), os.getpid()

    [(threads, pid)] = run_forked([("a", _threads_and_pid)], threads_each=1, on_message=lambda name, message: None,
                                  meanwhile=here)
    assert seen == {"threads": 1, "pid": os.getpid()} and pid != os.getpid()
    assert torch.get_num_threads() == before  # restored
