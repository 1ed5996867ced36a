"""pytest-benchmark glue: each test times one provider of a case of the "ops" benchmark
(cases.py) on its checked full-size inputs.

Not collected by a plain `pytest` (testpaths = tests); run `python -m pytest benchmarks`.
"""
import pytest

import cases
from harness import checked_inputs


@pytest.fixture
def bench(benchmark):
    """bench(group, provider): time that provider on its case's inputs, in the pytest-benchmark group."""

    def run(group: str, provider: str):
        case = cases.case_of(group, provider)
        inputs = checked_inputs(case)
        fn = case.providers[provider]
        benchmark.group = group
        if case.calls.get(provider) == 1:  # too slow to repeat
            benchmark.pedantic(fn, args=(inputs,), rounds=1, iterations=1)
        else:
            benchmark(fn, inputs)

    return run
