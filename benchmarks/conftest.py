"""pytest-benchmark glue: each test times one provider of a case in cases.py.

Not collected by a plain `pytest` (testpaths = tests); run `python -m pytest benchmarks`.
"""
import pytest

import cases


@pytest.fixture
def bench(benchmark):
    """bench(op, provider): time that provider on its case's (checked) full-size inputs, grouped by op."""

    def run(op: str, provider: str):
        case = cases.case_of(op, provider)
        inputs = cases.prepared_inputs(case.name)
        fn = case.providers[provider]
        benchmark.group = op
        if provider in case.single_run:
            benchmark.pedantic(fn, args=(inputs,), rounds=1, iterations=1)
        else:
            benchmark(fn, inputs)

    return run
