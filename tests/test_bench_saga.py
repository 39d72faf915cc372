"""The saga bench's arithmetic, without servers: when orders are due and which rates count."""

import pytest

from runtime.tools.bench.saga import NATS_SERVER, POSTGRES, Result, Step, schedule, tables

pytestmark = pytest.mark.fast


def step(rate: float, latencies: list[float], orders: int | None = None) -> Step:
    return Step(rate, len(latencies) if orders is None else orders, latencies, 10.0,
                cpu={"orders": 1.0}, deliveries={}, refused=0, drained=True)


def test_schedule_spaces_orders_evenly_from_t0():
    offsets = schedule(4, 2)

    assert offsets == [0, 0.25, 0.5, 0.75, 1.0, 1.25, 1.5, 1.75]


def test_best_rate_is_the_last_good_one_before_the_first_failure():
    fast, slow = [0.05] * 100, [0.4] * 100
    result = Result("process per set", ["orders"], 0.0005, {},
                    steps=[step(25, fast), step(50, fast), step(100, slow), step(200, fast)])

    assert result.best_rate == 50


def test_a_rate_that_lost_orders_is_not_good_and_stops_the_sweep():
    lost = step(25, [0.05] * 99, orders=100)

    assert lost.missing == 1
    assert not lost.good
    assert lost.hopeless
    assert Result("one process", [], 0.0005, {}, steps=[lost]).best_rate is None


def test_the_servers_are_read_beside_the_atlantic_processes_not_in_their_total():
    served = Step(100, 10, [0.05] * 10, 1.0, deliveries={}, refused=0, drained=True,
                  cpu={"orders": 0.01, "catalog": 0.02, NATS_SERVER: 0.005, POSTGRES: 0.007},
                  loop_cpu={"orders": 0.005, "catalog": 0.01})
    result = Result("process per set", ["orders", "catalog"], 0.0002,
                    {"orders": 0.003, "catalog": 0.003, NATS_SERVER: 0.001, POSTGRES: 0.002},
                    (5e-5, 2e-4), steps=[served])

    lines = tables(result)[0].splitlines()

    assert served.total_cpu_per_order == pytest.approx(0.003)
    assert "| | orders | catalog | total | nats-server | PostgreSQL |" in lines
    assert "| idle, ms/s | 3.0 | 3.0 | 6.0 | 1.0 | 2.0 |" in lines
    assert "| 100/s, ms/order | 1.0 | 2.0 | 3.0 | 0.5 | 0.7 |" in lines
    assert "| 100/s, of which event loop | 0.5 | 1.0 | 1.5 | | |" in lines
