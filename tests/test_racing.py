"""Racing an iteration's proposals (successive halving): the rung schedule, who survives,
the loop's choices and resume, and a survivor's fine-tune continuing to the bit."""

from __future__ import annotations

import dataclasses
import hashlib

import torch

from netadapt.racing import STRIDE, Racing, Rung
from netadapt.search import Budget, Iteration, Proposal, Start, netadapt, resources_of

from .conftest import fake_accuracy, fake_ms

T = 20


def no_noise(a: Proposal, b: Proposal) -> tuple[float, float]:
    return a.accuracy - b.accuracy, 0.0


def test_twelve_proposals_race_zero_then_a_ninth_a_third_and_all_steps():
    racing = Racing(no_noise)
    assert racing.rung(0, 0, 12, T) == Rung(0, 0, 0, False, STRIDE)  # inherited weights, BN only
    assert racing.rung(1, 0, 4, T) == Rung(1, 0, 2, False, STRIDE)  # two more cuts: T / 9
    assert racing.rung(2, 2, 2, T) == Rung(2, 2, 7, False, STRIDE)  # one more: T / 3
    assert racing.rung(3, 7, 1, T) == Rung(3, 7, T, True)  # the last one gets all T
    assert racing.rung(2, 7, 2, T) == Rung(2, 7, T, True)  # kept on noise at T / 3
    assert racing.rung(0, 0, 1, T) == Rung(0, 0, T, True)  # nothing to race
    # eta or fewer: no zero-step cut, but one at T / 9, a rung before its one cut needs
    assert racing.rung(0, 0, 3, T) == Rung(0, 0, 2, False, STRIDE)
    assert racing.rung(0, 0, 2, T) == Rung(0, 0, 2, False, STRIDE)
    assert racing.rung(1, 2, 2, T) == Rung(1, 2, 7, False, STRIDE)  # both kept: T / 3


def test_a_rung_that_dropped_none_is_followed_by_the_next_longer_rung_not_by_all_t():
    racing = Racing(no_noise)
    assert racing.rung(1, 0, 5, T) == Rung(1, 0, 2, False, STRIDE)  # five kept at zero steps
    assert racing.rung(2, 2, 5, T) == Rung(2, 2, 7, False, STRIDE)  # and again at T / 9
    assert racing.rung(3, 7, 5, T) == Rung(3, 7, T, True)  # and at T / 3: all of them to T


def test_three_finalists_is_the_schedule_that_lets_eta_or_fewer_go_unraced():
    racing = Racing(no_noise, finalists=3)
    assert racing.rung(0, 0, 3, T) == Rung(0, 0, T, True)
    assert racing.rung(1, 0, 4, T) == Rung(1, 0, 7, False, STRIDE)
    assert racing.rung(2, 7, 2, T) == Rung(2, 7, T, True)


def test_two_finalists_both_get_all_steps_and_the_last_cut_keeps_two():
    racing = Racing(no_noise, finalists=2)
    assert racing.rung(0, 0, 2, T) == Rung(0, 0, T, True)
    assert racing.rung(0, 0, 3, T) == Rung(0, 0, 2, False, STRIDE)  # one cut, started at T / 9
    assert racing.rung(1, 0, 5, T) == Rung(1, 0, 7, False, STRIDE)
    assert [p.group for p in racing.survivors(proposals(0.8, 0.7, 0.6))] == ["g0", "g1"]
    assert racing.rung(2, 7, 2, T) == Rung(2, 7, T, True)


def proposals(*accuracies: float) -> list[Proposal]:
    return [Proposal(1, f"g{i}", 16, 8, None, {}, a) for i, a in enumerate(accuracies)]


def test_the_best_third_survive_and_so_does_anything_within_noise_of_the_leader():
    ranked = proposals(0.80, 0.79, 0.78, 0.70, 0.60, 0.50)
    assert [p.group for p in Racing(no_noise).survivors(ranked)] == ["g0", "g1"]

    def noisy(a, b):  # SE 0.021: margins up to 2.1 points are noise
        return a.accuracy - b.accuracy, 0.021
    assert [p.group for p in Racing(noisy).survivors(ranked)] == ["g0", "g1", "g2"]


def steps_of(group: str, until: int) -> float:
    """A fake short-term accuracy: rises with steps, at a rate that depends on the group,
    so that zero-step order and T-step order differ for some proposals."""
    digest = int(hashlib.sha256(group.encode()).hexdigest()[:6], 16) / 0xFFFFFF
    return 0.5 + 0.3 * digest * until / T + 0.05 * (1 - digest)


def race(spec, history=(), log=None):
    start = Start(spec, fake_accuracy(spec), resources_of(spec, fake_ms))
    budget = Budget("latency_ms", start.resources["latency_ms"] * 0.6)

    def evaluate_many(iteration, rung, children):
        for child in children:
            if log is not None:
                log.append((iteration, child.group, rung.index, rung.start, rung.until))
            yield child.group, steps_of(child.group, rung.until) + fake_accuracy(child.spec), None

    return list(netadapt(start, [budget], fake_ms, evaluate_many, history=history, steps=T,
                         racing=Racing(no_noise)))


def test_racing_chooses_among_proposals_that_had_all_steps_for_a_third_of_the_cost(tiny_spec):
    log: list = []
    events = race(tiny_spec, log=log)
    iterations = [e for e in events if isinstance(e, Iteration)]
    assert iterations
    for it in iterations:
        assert it.chosen.steps == T  # the winner had exactly T steps
        finals = [e for e in events if isinstance(e, Proposal)
                  and e.iteration == it.iteration and e.steps == T]
        assert it.chosen.accuracy == max(p.accuracy for p in finals)
    spent = sum(until - start for *_, start, until in log)
    full = T * sum(1 for *_, index, _, _ in log if index == 0)
    assert spent <= full / 3  # tiny: 4-5 proposals an iteration
    # every survivor continues where it stopped
    for iteration, group, index, start, _ in log:
        if index:
            previous = [u for i, g, k, _, u in log if (i, g, k) == (iteration, group, index - 1)]
            assert previous == [start]


def test_a_race_cut_mid_rung_resumes_without_evaluating_anything_twice(tiny_spec):
    full = race(tiny_spec)
    proposals_seen = [e for e in full if isinstance(e, Proposal)]
    cut = len(proposals_seen) // 2 + 1  # inside some rung of some iteration
    history = []
    for e in full:
        if isinstance(e, Proposal) and len([h for h in history if isinstance(h, Proposal)]) == cut:
            break
        history.append(e)
    log: list = []
    rest = race(tiny_spec, history=history, log=log)
    done = {(p.iteration, p.group, p.rung) for p in history if isinstance(p, Proposal)}
    assert not done & {(i, g, k) for i, g, k, _, _ in log}
    assert [e for e in history + rest if isinstance(e, Iteration)] == \
        [e for e in full if isinstance(e, Iteration)]


def test_a_journaled_rung_of_another_schedule_is_evaluated_again(tiny_spec):
    full = race(tiny_spec)
    first = [e for e in full if isinstance(e, Proposal) and e.iteration == 1]
    stale = [dataclasses.replace(p, steps=p.steps + 1) for p in first if p.rung == 0]
    log: list = []
    rest = race(tiny_spec, history=stale, log=log)
    assert {g for i, g, k, _, _ in log if (i, k) == (1, 0)} == {p.group for p in stale}
    assert [e for e in rest if isinstance(e, Iteration)] == \
        [e for e in full if isinstance(e, Iteration)]


def test_a_survivor_continues_its_fine_tune_to_the_same_bits(tiny_spec, tmp_path):
    """Trained to step 2 in one job and continued to T in another (as a rung does, maybe
    on another worker), a proposal ends with exactly the weights and score of one job
    trained to T: the race decides who gets T steps, never what T steps give."""
    from netadapt.jobs import DataSource, ProposalJob, Training, run_proposal
    from netadapt.model import build_model

    from .conftest import write_idx

    data = DataSource(str(write_idx(tmp_path / "data")), 16, 3, 40, 0)
    parent = tiny_spec
    group = parent.groups[1]
    child = parent.with_group_width(group.name, group.width - 8)
    state = build_model(parent).state_dict()
    job = ProposalJob(1, group.name, parent, child, 1234, Training(5, 0.02, 16), data)
    whole = run_proposal(job, state)
    first = run_proposal(ProposalJob(**{**job.__dict__, "until": 2}), state)
    assert first.progress is not None
    rest = run_proposal(ProposalJob(**{**job.__dict__, "until": 5,
                                       "progress": first.progress}), state)
    assert rest.accuracy == whole.accuracy and rest.progress is None
    assert all(torch.equal(rest.state[k], whole.state[k]) for k in whole.state)
    assert first.state == {}  # short of T: its weights travel in its progress only
    zero = run_proposal(ProposalJob(**{**job.__dict__, "until": 0}), state)
    assert zero.progress is None and zero.state == {}  # the next rung inherits again


def test_a_raced_search_interrupted_in_a_later_rung_resumes_from_saved_progress(tmp_path):
    """Scores that tie four of five proposals keep them past the zero-step rung, so a
    rung of T/3 steps leaves each survivor's progress on disk; interrupted in the next
    rung and resumed in a new session, the search continues from those files (nothing in
    memory) and ends with the uninterrupted run's bits."""

    from netadapt.driver import resume_search, start_search
    from netadapt.executors import Executor
    from netadapt.jobs import run_proposal

    from .conftest import fake_ms, same_weights, tiny_search

    config = tiny_search(tmp_path, 0.96, step=0.03, short_term_steps=3, long_term_steps=2,
                         deploy_steps=0)
    calls = {"left": None}

    def tied(job, parent_state):  # every group but one ties, at every rung
        if calls["left"] is not None:
            if calls["left"] == 0:
                raise KeyboardInterrupt
            calls["left"] -= 1
        result = run_proposal(job, parent_state)
        worse = job.group == "blocks[2].exp"
        return dataclasses.replace(result, accuracy=0.4 if worse else 0.5,
                                   correct=torch.full_like(result.correct, not worse))

    full = start_search(config, tmp_path / "full", predict_ms=fake_ms, executor=Executor(tied))
    records = [r for r in (tmp_path / "full" / "history.jsonl").read_text().splitlines()
               if '"proposal"' in r]
    assert any('"steps": 1' in r for r in records)  # a rung stopped short of T ran
    calls["left"] = sum('"iteration": 1' in r for r in records) - 2  # inside the last rung
    try:
        start_search(config, tmp_path / "cut", predict_ms=fake_ms, executor=Executor(tied))
    except KeyboardInterrupt:
        pass
    assert list((tmp_path / "cut" / "proposals" / "iter_001").glob("*.rung1.progress.pt"))
    calls["left"] = None
    resumed = resume_search(tmp_path / "cut", predict_ms=fake_ms, executor=Executor(tied))
    assert (tmp_path / "cut" / "best.yaml").read_text() == \
        (tmp_path / "full" / "best.yaml").read_text()
    assert same_weights(tmp_path / "cut" / "best.pt", tmp_path / "full" / "best.pt")
    assert full.iterations == resumed.iterations


def test_a_search_with_two_finalists_trains_two_proposals_to_t_in_every_race(tmp_path):
    """--finalists reaches the loop: every iteration with two or more proposals ends with
    at least two of them trained all T steps (with one finalist, one would be)."""
    import collections

    from netadapt.driver import start_search
    from netadapt.executors import Executor
    from netadapt.jobs import run_proposal
    from netadapt.rundir import RunDir

    from .conftest import fake_ms, tiny_search

    def distinct(job, parent_state):  # gaps of a tenth of the images: none kept on noise
        result = run_proposal(job, parent_state)
        groups = sorted((g.name for g in job.parent.groups),
                        key=lambda name: hashlib.sha256(name.encode()).hexdigest())
        n = len(result.correct)
        right = n - (groups.index(job.group) + 1) * (n // 10)
        correct = torch.arange(n) < right
        return dataclasses.replace(result, accuracy=right / n, correct=correct)

    def finals_per_race(finalists: int) -> list[tuple[int, int]]:
        config = tiny_search(tmp_path, 0.8, finalists=finalists, long_term_steps=0,
                             deploy_steps=0, holdout=120)
        run = tmp_path / f"finalists{finalists}"
        start_search(config, run, predict_ms=fake_ms, executor=Executor(distinct))
        groups, finals = collections.defaultdict(set), collections.Counter()
        for r in RunDir.open(run).records():
            if r["type"] == "proposal":
                groups[r["iteration"]].add(r["group"])
                finals[r["iteration"]] += r["steps"] == config.short_term_steps
        return [(len(groups[i]), finals[i]) for i in groups]

    two = finals_per_race(2)
    assert any(field >= 3 for field, _ in two)  # real races ran
    assert all(finals == min(2, field) for field, finals in two)
    assert all(finals == 1 for _, finals in finals_per_race(1))


def test_rungs_short_of_t_score_every_third_holdout_image_and_the_choice_all(tmp_path):
    """A rung that only decides who goes on scores a third of the holdout; the proposals
    the iteration chooses among are scored on all of it."""
    from netadapt.driver import start_search
    from netadapt.rundir import RunDir

    from .conftest import fake_ms, tiny_search

    config = tiny_search(tmp_path, 0.8, long_term_steps=0, deploy_steps=0)
    start_search(config, tmp_path / "run", predict_ms=fake_ms)
    scored = {(r["steps"] == config.short_term_steps, r["holdout_images"])
              for r in RunDir.open(tmp_path / "run").records() if r["type"] == "proposal"}
    assert scored == {(True, config.holdout), (False, len(range(0, config.holdout, STRIDE)))}
