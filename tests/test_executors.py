"""Proposals as jobs on executors: the same result wherever they run, dead workers
retried, failures reported, never a hang."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from netadapt.driver import start_search
from netadapt.errors import NetadaptError
from netadapt.executors import Executor, ProcessExecutor, WorkerError
from netadapt.jobs import ProposalJob, ProposalResult, run_proposal

from .conftest import tiny_search
from .test_search import fake_ms

MARKERS = "NETADAPT_TEST_MARKERS"  # a folder: a job dies once per marker it leaves there


def dies_once(job: ProposalJob, parent_state) -> ProposalResult:
    """The first job to run dies (as kill -9 would: no exception, no goodbye); every
    job runs normally after that."""
    try:  # O_EXCL: exactly one job, of all the workers, claims the death
        os.close(os.open(Path(os.environ[MARKERS]) / "died", os.O_CREAT | os.O_EXCL))
    except FileExistsError:
        return run_proposal(job, parent_state)
    os._exit(9)


def always_dies(job: ProposalJob, parent_state) -> ProposalResult:
    os._exit(9)


def always_raises(job: ProposalJob, parent_state) -> ProposalResult:
    raise RuntimeError(f"boom in {job.group}")


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """A tiny search's config and its serial (in-process) run to compare with."""
    tmp_path = tmp_path_factory.mktemp("executors")
    config = tiny_search(tmp_path, 0.8, long_term_steps=2, deploy_steps=0)
    start_search(config, tmp_path / "serial", predict_ms=fake_ms)
    return tmp_path, config


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def journal(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "history.jsonl").read_text().splitlines()]


def assert_same_result(run: Path, reference: Path) -> None:
    assert (run / "best.yaml").read_text() == (reference / "best.yaml").read_text()
    ours, theirs = torch.load(run / "best.pt"), torch.load(reference / "best.pt")
    assert ours.keys() == theirs.keys() and all(torch.equal(ours[k], theirs[k]) for k in ours)


def test_two_worker_processes_give_the_serial_result_bit_for_bit(setup):
    tmp_path, config = setup
    with ProcessExecutor(2) as executor:
        start_search(config, tmp_path / "two", predict_ms=fake_ms,
                     executor=executor)
    assert_same_result(tmp_path / "two", tmp_path / "serial")
    proposals = [r for r in journal(tmp_path / "two") if r["type"] == "proposal"]
    assert len({r["worker"] for r in proposals}) == 2  # both workers took jobs ...
    assert all(r["worker"].split(":")[1] != str(os.getpid()) for r in proposals)  # not us
    assert all(r["seconds"] > 0 and r["attempts"] == 1 for r in proposals)


def test_a_worker_that_dies_is_replaced_and_its_job_retried(setup, tmp_path, monkeypatch):
    base, config = setup
    monkeypatch.setenv(MARKERS, str(tmp_path))
    with ProcessExecutor(2, function=dies_once) as executor:
        start_search(config, tmp_path / "run", predict_ms=fake_ms,
                     executor=executor)
    assert_same_result(tmp_path / "run", base / "serial")
    attempts = [r["attempts"] for r in journal(tmp_path / "run") if r["type"] == "proposal"]
    assert sorted(attempts)[-2:] == [1, 2] and sum(attempts) == len(attempts) + 1


def test_a_job_that_always_fails_stops_the_search_with_its_traceback(setup, tmp_path):
    _, config = setup
    with ProcessExecutor(2, function=always_raises, retries=1) as executor, \
            pytest.raises(NetadaptError) as error:
        start_search(config, tmp_path / "run", predict_ms=fake_ms,
                     executor=executor)
    message = str(error.value)
    assert "\n" not in message and "failed 2 times" in message and "--resume" in message
    log = Path(message.split("tracebacks: ")[1].split(";")[0])
    assert log.parent.parent == tmp_path / "run"
    text = log.read_text()
    assert "--- attempt 2 ---" in text and "RuntimeError: boom in" in text
    assert 'raise RuntimeError(f"boom' in text  # the line in the worker that raised
    assert not any(r["type"] == "proposal" for r in journal(tmp_path / "run"))


def test_a_worker_that_always_dies_is_given_up_on_not_waited_for():
    job = ProposalJob(1, "g", None, None, 0, None, None)  # type: ignore[arg-type]
    signal.alarm(120)  # a hang fails this test instead of the suite
    try:
        with ProcessExecutor(1, function=always_dies, retries=1) as executor, \
                pytest.raises(WorkerError, match=r"failed 2 times") as error:
            list(executor.run([job], {}))
    finally:
        signal.alarm(0)
    assert error.value.details.count("worker process died") == 2


def test_retries_are_bounded_and_counted_in_process_too():
    calls = []

    def flaky(job, state):
        calls.append(job.group)
        if len(calls) < 3:
            raise ValueError("transient")
        return ProposalResult(job.iteration, job.group, 0.5, torch.ones(2, dtype=torch.bool),
                              {}, 0.1, "here")

    job = ProposalJob(1, "g", None, None, 0, None, None)  # type: ignore[arg-type]
    assert [r.attempts for r in Executor(flaky, retries=2).run([job], {})] == [3]
    calls.clear()
    with pytest.raises(WorkerError, match=r"proposal g of iteration 1 failed 2 times \(last: "
                                          r"ValueError: transient\)"):
        list(Executor(flaky, retries=1).run([job], {}))


def test_resume_with_workers_after_kill_dash_nine_trains_no_proposal_twice(setup):
    tmp_path, config = setup
    script = tmp_path / "go_workers.py"
    script.write_text(
        "import json, sys\n"
        "from pathlib import Path\n"
        "from netadapt.config import SearchConfig\n"
        "from netadapt.driver import resume_search, start_search\n"
        "from netadapt.executors import ProcessExecutor\n"
        "from tests.test_search import fake_ms\n"
        f"config = SearchConfig.from_json(json.loads({json.dumps(json.dumps(config.to_json()))}))\n"
        "run = Path(sys.argv[2])\n"
        "if __name__ == '__main__':\n"
        "    with ProcessExecutor(2) as executor:\n"
        "        if sys.argv[1] == 'start':\n"
        "            start_search(config, run, predict_ms=fake_ms,\n"
        "                         executor=executor)\n"
        "        else:\n"
        "            resume_search(run, predict_ms=fake_ms, executor=executor)\n")
    root = Path(__file__).resolve().parent.parent
    env = {**os.environ, "PYTHONPATH": str(root)}
    run = tmp_path / "killed"
    proc = subprocess.Popen([sys.executable, str(script), "start", str(run)], env=env)
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None:
        if (run / "history.jsonl").exists() and \
                (run / "history.jsonl").read_text().count('"proposal"') >= 3:
            break
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    assert proc.wait() == -signal.SIGKILL  # the kill landed ...
    assert not (run / "best.yaml").exists()  # ... before the run finished
    before = [(r["iteration"], r["group"], r["rung"]) for r in journal(run)
              if r["type"] == "proposal"]
    workers = {int(r["worker"].split(":")[1]) for r in journal(run) if r["type"] == "proposal"}
    assert workers and os.getpid() not in workers
    deadline = time.time() + 30
    while time.time() < deadline and any(alive(pid) for pid in workers):
        time.sleep(0.2)
    assert not any(alive(pid) for pid in workers)  # orphaned workers end themselves
    subprocess.run([sys.executable, str(script), "resume", str(run)], env=env, check=True,
                   timeout=300)
    assert_same_result(run, tmp_path / "serial")
    after = [(r["iteration"], r["group"], r["rung"]) for r in journal(run)
              if r["type"] == "proposal"]
    assert after[:len(before)] == before and len(set(after)) == len(after)


def test_ray_tasks_give_the_serial_result_and_a_crashed_task_is_retried(setup, tmp_path,
                                                                        monkeypatch):
    ray = pytest.importorskip("ray", reason="Ray is an optional extra: pip install "
                                            "'netadapt[ray]' (.ci/run installs it)")
    from netadapt.executors import RayExecutor

    base, config = setup
    root = Path(__file__).resolve().parent.parent
    monkeypatch.setenv(MARKERS, str(tmp_path))  # Ray's workers inherit the environment
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(root), os.environ.get(
        "PYTHONPATH", "")]))
    try:
        with RayExecutor("local", num_cpus=2, function=dies_once) as executor:
            assert executor.slots == 2
            start_search(config, tmp_path / "ray", predict_ms=fake_ms,
                         executor=executor)
    finally:
        ray.shutdown()
    assert_same_result(tmp_path / "ray", base / "serial")
    attempts = [r["attempts"] for r in journal(tmp_path / "ray") if r["type"] == "proposal"]
    assert sorted(attempts)[-2:] == [1, 2] and sum(attempts) == len(attempts) + 1


def test_bad_executor_options_are_one_line_errors(monkeypatch):
    from netadapt.cli import app

    result = CliRunner().invoke(app, ["search", "--budget", "50%", "--workers", "0"])
    assert result.exit_code == 1
    assert result.output.strip().splitlines() == [
        "error: --workers 0: must be >= 1 (1 = in this process)"]
    monkeypatch.setitem(sys.modules, "ray", None)  # as if Ray were not installed
    result = CliRunner().invoke(app, ["search", "--budget", "50%", "--ray", "auto"])
    assert result.exit_code == 1
    assert result.output.strip().splitlines() == [
        "error: --ray needs Ray, which is not installed: pip install 'netadapt[ray]'"]


def test_the_options_pick_the_executor_and_threads_default_to_the_cores_shared_out():
    from netadapt.executors import default_threads, make_executor

    assert type(make_executor(None, None, 1, "cpu")) is Executor
    assert type(make_executor(1, None, 1, "cpu")) is Executor  # one worker: this process
    with make_executor(2, None, 0, "cpu") as executor:
        assert isinstance(executor, ProcessExecutor) and executor.workers == 2
        assert executor.threads == default_threads(2) == max(1, (os.cpu_count() or 1) // 2)
    with make_executor(3, None, 2, "cpu") as executor:
        assert isinstance(executor, ProcessExecutor) and executor.threads == 2
