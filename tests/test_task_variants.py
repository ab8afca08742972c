"""Pure checks of task variants (daemon/variants.py) and the task state function (daemon/task_lifecycle.py)."""

from __future__ import annotations

import pytest
from valohai_yaml.objs.task import Task

from runyard.daemon import variants as v
from runyard.daemon.task_lifecycle import TaskState, decide


def test_grid_is_the_cartesian_product_in_order() -> None:
    kids = v.expand("grid_search", [v.parse_grid("lr=0.1,0.01,0.001"), v.parse_linear("epochs=1:10:9")])
    assert kids == [{"lr": lr, "epochs": e} for lr in (0.1, 0.01, 0.001) for e in (1, 10)]


def test_styles_follow_their_rules() -> None:
    assert v.values(v.parse_linear("e=1:10:3")) == [1, 4, 7, 10]
    assert v.values(v.parse_linear("x=0:1:0.25")) == [0.0, 0.25, 0.5, 0.75, 1.0]
    assert v.values(v.parse_logspace("lr=-5:-1:5")) == [1e-05, 1e-04, 1e-03, 1e-02, 1e-01]
    assert v.values(v.parse_logspace("n=1:3:3:2")) == [2.0, 4.0, 8.0]
    assert v.values(v.Variant("n", "logspace", {"start": 0, "end": 2, "count": 3, "integerify": True})) == [1, 10, 100]
    assert v.values(v.Variant("a", "single", {"value": "x"})) == ["x"]
    with pytest.raises(v.VariantError, match="step"):
        v.values(v.parse_linear("e=10:1:3"))
    with pytest.raises(v.VariantError, match="non-empty list 'items'"):
        v.values(v.Variant("a", "multiple", {}))


def test_random_search_is_reproducible_with_a_seed_and_in_range() -> None:
    spec = [v.parse_random("lr=0.0001..0.1:loguniform"), v.parse_random("layers=1..8:int")]
    first = v.expand("random_search", spec, count=20, seed=7)
    assert first == v.expand("random_search", spec, count=20, seed=7)
    assert first != v.expand("random_search", spec, count=20, seed=8)
    assert len(first) == 20
    assert all(0.0001 <= k["lr"] <= 0.1 and isinstance(k["layers"], int) and 1 <= k["layers"] <= 8 for k in first)
    # Adding a parameter leaves the others' draws as they were.
    more = v.expand("random_search", [*spec, v.parse_grid("opt=adam,sgd")], count=20, seed=7)
    assert [k["lr"] for k in more] == [k["lr"] for k in first]


def test_manual_sets_and_limits() -> None:
    sets = [{"lr": 0.1}, {"lr": 0.2, "epochs": 3}]
    assert v.expand("manual_search", [v.Variant("epochs", "single", {"value": 1})], parameter_sets=sets) == [
        {"epochs": 1, "lr": 0.1}, {"epochs": 3, "lr": 0.2}]
    # A manual search given variants rather than sets runs each combination of them.
    assert v.expand("manual_search", [v.parse_linear("a=25:25:1")]) == [{"a": 25}]
    # A random search's size: execution-count, else the largest count a random rule gives.
    assert len(v.expand("random_search", [v.Variant("a", "random", {"min": 1, "max": 25, "count": 10})])) == 10
    with pytest.raises(v.VariantError, match="more than"):
        v.expand("grid_search", [v.parse_linear("a=1:200:1"), v.parse_linear("b=1:200:1")])
    with pytest.raises(v.VariantError, match="members are identical"):
        v.expand("Distributed", [v.parse_random("a=0..1")], count=2)
    assert v.expand("distributed", [v.parse_grid("a=3")], count=2) == [{"a": 3}, {"a": 3}]
    assert v.task_type("Grid-Search") == "grid_search"


def test_a_valohai_yaml_task_expands() -> None:
    task = Task.parse({"name": "t", "step": "train", "type": "random-search", "execution-count": 5,
                       "parameters": [{"name": "lr", "style": "random",
                                       "rules": {"min": 0.1, "max": 1, "distribution": "uniform", "seed": 3}},
                                      {"name": "e", "style": "linear", "rules": {"start": 1, "end": 3, "step": 1}}]})
    kids = v.expand(task.type.value, v.from_yaml(task.parameters), count=task.execution_count)
    assert len(kids) == 5 and {k["e"] for k in kids} <= {1, 2, 3}


def test_task_state_follows_its_children() -> None:
    created = TaskState("created")
    assert decide(created, {"created": 3, "queued": 2}) == TaskState("created")
    started = decide(created, {"queued": 2, "started": 1})
    assert started == TaskState("started")
    assert decide(started, {"complete": 2, "error": 1}) == TaskState("complete")
    assert decide(started, {"complete": 2, "error": 1}, on_child_error="continue-and-error") == \
        TaskState("error", "1 child failed")
    assert decide(started, {"started": 1, "error": 1}, on_child_error="stop-all-and-error") == \
        TaskState("stopping", "child-error")
    assert decide(TaskState("stopping", "child-error"), {"stopped": 1, "error": 1}) == TaskState("error", "child-error")
    assert decide(started, {"started": 2}, stop="stop-condition") == TaskState("stopping", "stop-condition")
    assert decide(TaskState("stopping", "stop-condition"), {"stopped": 1, "complete": 1}) == \
        TaskState("stopped", "stop-condition")
    assert decide(TaskState("complete"), {"started": 1}, stop="stopped") == TaskState("complete")
    assert decide(started, {"stopped": 2}) == TaskState("stopped", "children-stopped")


def test_stop_conditions_evaluate_as_valohai_lints_them() -> None:
    from runyard.daemon.stopcondition import StopConditionError, check, met

    assert met("loss < 0.1", {"loss": 0.05}) and not met("loss < 0.1", {"loss": 0.5})
    assert not met("loss < 0.1", {})  # not printed yet: not met
    assert met("acc > 0.9 and epoch >= 2", {"acc": 0.95, "epoch": 3})
    check("acc > 0.9 and epoch >= 2")
    with pytest.raises(StopConditionError, match="not a valid expression"):
        check("__import__('os').system('id')")


def test_a_stop_conditions_reason_is_kept_until_stopped() -> None:
    from runyard.daemon.lifecycle import Exited, Move, StopAsked
    from runyard.daemon.lifecycle import decide as move

    asked = move("started", None, 0, StopAsked("stop-condition"))
    assert (asked.status, asked.reason, asked.stop_container) == ("stopping", "stop-condition", True)
    assert move("stopping", "stop-condition", 0, Exited(143)) == Move("stopped", "stop-condition")
    assert move("queued", None, 0, StopAsked("stop-condition")) == Move("stopped", "stopped-before-start")
