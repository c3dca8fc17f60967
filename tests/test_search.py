"""The NetAdapt loop with fake latency and accuracy: milliseconds, every rule checked."""

from __future__ import annotations

import itertools

import pytest

from netadapt.cost import count_params
from netadapt.search import (
    Budget,
    BudgetError,
    Iteration,
    Proposal,
    Schedule,
    Start,
    check_reachable,
    netadapt,
    one_by_one,
    parse_budget,
    propose,
    resources_of,
)
from netadapt.spec import load_spec

from .conftest import CONFIGS, evaluate, fake_accuracy, fake_ms


def start_of(spec) -> Start:
    return Start(spec, fake_accuracy(spec), resources_of(spec, fake_ms))


def run(spec, budgets, **kwargs):
    return list(netadapt(start_of(spec), budgets, fake_ms, one_by_one(evaluate), **kwargs))


def test_the_loop_meets_the_budget_and_latency_falls_every_iteration(tiny_spec):
    start = start_of(tiny_spec)
    budget = Budget("latency_ms", start.resources["latency_ms"] * 0.6)
    events = run(tiny_spec, [budget])
    iterations = [e for e in events if isinstance(e, Iteration)]
    latencies = [start.resources["latency_ms"]] + [i.chosen.resources["latency_ms"]
                                                   for i in iterations]
    assert all(b < a for a, b in zip(latencies, latencies[1:]))
    assert latencies[-1] <= budget.limit < latencies[-2]  # stops as soon as it is met


def test_every_proposal_meets_its_iterations_target(tiny_spec):
    start = start_of(tiny_spec)
    events = run(tiny_spec, [Budget("latency_ms", start.resources["latency_ms"] * 0.7)])
    targets = {e.iteration: e.target["latency_ms"] for e in events if isinstance(e, Iteration)}
    proposals = [e for e in events if isinstance(e, Proposal)]
    assert proposals and all(p.resources["latency_ms"] <= targets[p.iteration] + 1e-9
                             for p in proposals)
    # one proposal per group that can meet the target, each group at most once per iteration
    for _, group in itertools.groupby(proposals, key=lambda p: p.iteration):
        names = [p.group for p in group]
        assert len(names) == len(set(names))


def test_the_accuracy_criterion_keeps_the_most_accurate_proposal(tiny_spec):
    events = run(tiny_spec, [Budget("latency_ms", fake_ms(tiny_spec) * 0.8)])
    for it in (e for e in events if isinstance(e, Iteration)):
        same = [e for e in events if isinstance(e, Proposal) and e.iteration == it.iteration]
        assert it.chosen.accuracy == max(p.accuracy for p in same)


def test_the_slope_criterion_maximises_accuracy_change_per_ms(tiny_spec):
    start = start_of(tiny_spec)
    events = run(tiny_spec, [Budget("latency_ms", start.resources["latency_ms"] * 0.9)],
                 criterion="slope")
    first = next(e for e in events if isinstance(e, Iteration))
    props = [e for e in events if isinstance(e, Proposal) and e.iteration == 1]
    slopes = [(p.accuracy - start.accuracy) /
              (start.resources["latency_ms"] - p.resources["latency_ms"]) for p in props]
    assert first.score == pytest.approx(max(slopes))


def test_params_and_macs_budgets_are_met_too(tiny_spec):
    params = count_params(tiny_spec)
    budgets = [Budget("latency_ms", fake_ms(tiny_spec) * 0.95), Budget("params", params * 0.5)]
    events = run(tiny_spec, budgets)
    final = [e for e in events if isinstance(e, Iteration)][-1].chosen
    assert final.resources["params"] <= params * 0.5
    assert final.resources["latency_ms"] <= budgets[0].limit


def test_an_unreachable_budget_is_refused_before_any_work(tiny_spec):
    with pytest.raises(BudgetError, match=r"unreachable: the smallest network .* has "
                       r"\d+\.\d+ ms; raise the budget to at least that"):
        check_reachable(tiny_spec, [Budget("latency_ms", 0.01)], fake_ms)
    check_reachable(tiny_spec, [Budget("latency_ms", fake_ms(tiny_spec) * 0.5)], fake_ms)


def test_resume_skips_finished_proposals_and_ends_identically(tiny_spec):
    budgets = [Budget("latency_ms", fake_ms(tiny_spec) * 0.6)]
    full = run(tiny_spec, budgets)
    for cut in (1, 5, len(full) // 2, len(full) - 1):
        calls: list[tuple[int, str]] = []

        def counting(iteration, spec, group, calls=calls):
            calls.append((iteration, group))
            return evaluate(iteration, spec, group)

        rest = list(netadapt(start_of(tiny_spec), budgets, fake_ms, one_by_one(counting),
                             history=full[:cut]))
        assert full[:cut] + rest == full
        done = {(e.iteration, e.group) for e in full[:cut] if isinstance(e, Proposal)}
        assert not done & set(calls)


def test_the_widest_width_meeting_the_target_wins_even_if_latency_is_not_monotone(tiny_spec):
    # A sawtooth: widths of 8 mod 16 cost extra, as on AVX-512 CPUs.
    def sawtooth(spec) -> float:
        return fake_ms(spec) + sum(0.5 for b in spec.blocks if b.exp % 16 == 8)

    group = tiny_spec.group("blocks[2].exp")  # 72 -> candidates 64, 56, 48, ...
    target = sawtooth(tiny_spec.with_group_width(group.name, 64))
    chosen = {name: width for name, width, _, _ in propose(tiny_spec, "latency_ms", target,
                                                           sawtooth)}
    assert chosen[group.name] == 64  # 64 meets the target though 56 (8 mod 16) does not


def test_a_step_no_group_can_take_is_halved_not_forced(tiny_spec):
    # A 60% step: no single group of the tiny spec can cut that much, so the iteration
    # takes a smaller step instead of cutting a group to its narrowest width.
    budgets = [Budget("latency_ms", fake_ms(tiny_spec) * 0.5)]
    events = run(tiny_spec, budgets, schedule=Schedule(0.6, 1.0))
    iterations = [e for e in events if isinstance(e, Iteration)]
    first = iterations[0]
    assert first.scheduled == pytest.approx(0.6 * fake_ms(tiny_spec))
    assert first.reduction < first.scheduled  # halved, and recorded
    assert first.target["latency_ms"] == pytest.approx(fake_ms(tiny_spec) - first.reduction)
    proposals = [e for e in events if isinstance(e, Proposal) and e.iteration == 1]
    assert all(p.resources["latency_ms"] <= first.target["latency_ms"] for p in proposals)
    # the widest width meeting the smaller target, not the narrowest width of the group
    assert proposals and all(
        p.width_to + 8 == p.width_from
        or fake_ms(tiny_spec.with_group_width(p.group, p.width_to + 8)) > first.target[
            "latency_ms"] for p in proposals)
    assert iterations[-1].chosen.resources["latency_ms"] <= budgets[0].limit


def test_the_runner_up_is_named_for_the_margin(tiny_spec):
    events = run(tiny_spec, [Budget("latency_ms", fake_ms(tiny_spec) * 0.8)])
    for it in (e for e in events if isinstance(e, Iteration)):
        others = [e for e in events if isinstance(e, Proposal) and e.iteration == it.iteration
                  and e.group != it.chosen.group]
        assert it.runner_up == max(others, key=lambda p: p.accuracy).group


@pytest.mark.parametrize("text, resource, limit", [
    ("20ms", "latency_ms", 20.0), ("0.02s", "latency_ms", 20.0), ("60%", "latency_ms", 30.0),
    ("latency=15 ms", "latency_ms", 15.0), ("params=2M", "params", 2e6),
    ("macs=100M", "macs", 1e8), ("params=50%", "params", 2e6), ("macs=150k", "macs", 1.5e5),
])
def test_budgets_parse(text, resource, limit):
    seed = {"latency_ms": 50.0, "params": 4e6, "macs": 2e8}
    assert parse_budget(text, seed) == Budget(resource, pytest.approx(limit))


@pytest.mark.parametrize("text, fragment", [
    ("20", "latency needs a unit"), ("20 parsecs", "latency needs a unit"),
    ("flops=2M", "unknown resource"), ("params=two", "expected a count"),
    ("150%", "percentage must be in"), ("-5ms", "must be positive"),
])
def test_bad_budgets_say_what_is_expected(text, fragment):
    with pytest.raises(BudgetError, match=fragment):
        parse_budget(text, {"latency_ms": 50.0, "params": 4e6, "macs": 2e8})


def test_unknown_criterion_is_refused(tiny_spec):
    with pytest.raises(BudgetError, match="unknown criterion 'best'"):
        run(tiny_spec, [Budget("latency_ms", 1.0)], criterion="best")


def test_schedules_follow_both_papers():
    assert Schedule.named("decay").reduction(1, 100.0) == pytest.approx(2.5)
    assert Schedule.named("decay").reduction(3, 100.0) == pytest.approx(2.5 * 0.96 ** 2)
    assert Schedule.named("constant").reduction(7, 100.0) == pytest.approx(1.0)


def test_large_seed_runs_to_sixty_percent_with_a_constant_schedule():
    spec = load_spec(CONFIGS / "mobilenetv3_large.yaml")
    budget = Budget("latency_ms", fake_ms(spec) * 0.6)
    events = run(spec, [budget], schedule=Schedule.named("constant", 0.05))
    final = [e for e in events if isinstance(e, Iteration)][-1].chosen
    assert final.resources["latency_ms"] <= budget.limit


def test_proposals_finishing_in_any_order_lead_to_the_same_choices(tiny_spec):
    budgets = [Budget("latency_ms", fake_ms(tiny_spec) * 0.6)]
    in_order = run(tiny_spec, budgets)

    def last_first(iteration, rung, children):  # as parallel workers may finish them
        return reversed(list(one_by_one(evaluate)(iteration, rung, children)))

    shuffled = list(netadapt(start_of(tiny_spec), budgets, fake_ms, last_first))
    assert [e for e in shuffled if isinstance(e, Iteration)] == \
        [e for e in in_order if isinstance(e, Iteration)]
    assert sorted(map(repr, shuffled)) == sorted(map(repr, in_order))
    assert [e.group for e in shuffled if isinstance(e, Proposal)] != \
        [e.group for e in in_order if isinstance(e, Proposal)]  # the order did change
