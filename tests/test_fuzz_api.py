"""Schemathesis against the feedback API, in process (ASGI): for every operation of the
published OpenAPI schema, generated valid and invalid requests must give no 5xx, only status
codes the schema documents, and bodies that match the documented schemas.

Cases per operation: env ``MIMIC_FUZZ_CASES`` (default 4, well under a minute on 2 cores;
``make fuzz`` runs thousands). The retraining itself is replaced by a stub that stops at once:
the API around it is fuzzed here, the training is tested in test_feedback_retrain.py.

Schemathesis' ``positive_data_acceptance`` check is left out on purpose: a request can match
the schema and still be refused with a documented 422 for a reason the schema cannot state (a
class index this dataset does not have, a rectangle outside the image, a region on a held-out
image, sorting by attention share without a rectangle). Every other default check runs.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest
from feedback_runs import untrained_run

schemathesis = pytest.importorskip("schemathesis", reason="schemathesis not installed (dev extra)")
from hypothesis import HealthCheck, settings  # noqa: E402
from hypothesis.errors import Unsatisfiable  # noqa: E402
from schemathesis.specs.openapi.checks import positive_data_acceptance  # noqa: E402

from mimic_runner.feedback.app import create_app  # noqa: E402
from mimic_runner.feedback.retrain import RetrainCancelled  # noqa: E402
from mimic_runner.feedback.session import FeedbackSession  # noqa: E402

CASES = int(os.environ.get("MIMIC_FUZZ_CASES", "4"))
OVERRIDES = ["model=attention_branch", "data.synth.params.n=240", "data.image_size=32"]
TALLY: dict[str, int] = {"cases": 0, "2xx": 0, "4xx": 0, "5xx": 0, "failed_operations": 0}


def _stub_retrain(session, params, progress=None, author=None, cancel=None,  # type: ignore[no-untyped-def]
                  replace_candidate=False):
    """A retraining that ends at once (cancelled when asked within 0.1 s)."""
    if cancel is not None and cancel.wait(0.1):
        raise RetrainCancelled
    return {"id": int(session.store.current()["id"])}


@pytest.fixture(scope="module")
def api_schema(tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    root = tmp_path_factory.mktemp("fuzz")
    session = FeedbackSession(untrained_run(root / "run", OVERRIDES), workspace=root / "ws")
    app = create_app(session)
    app.state.runner.retrain_fn = _stub_retrain
    yield schemathesis.openapi.from_asgi("/openapi.json", app)
    out = Path("test-artifacts")
    if out.is_dir() or os.environ.get("MIMIC_FUZZ_CASES"):
        out.mkdir(exist_ok=True)
        (out / "fuzz_api.json").write_text(json.dumps(
            {**TALLY, "cases_per_operation": CASES, "time": time.time()}, indent=2) + "\n")


def test_api_matches_its_schema(api_schema) -> None:  # type: ignore[no-untyped-def]
    """Every operation, positive and negative cases; failures collected, then reported."""
    from hypothesis import given

    failures: list[str] = []
    operations = [r.ok() for r in api_schema.get_all_operations()]
    assert len(operations) >= 20
    for operation in operations:
        for mode in (schemathesis.GenerationMode.POSITIVE, schemathesis.GenerationMode.NEGATIVE):

            @given(case=operation.as_strategy(generation_mode=mode))
            @settings(max_examples=CASES, deadline=None, database=None, derandomize=True,
                      suppress_health_check=list(HealthCheck))
            def run(case) -> None:  # type: ignore[no-untyped-def]
                response = case.call()
                TALLY["cases"] += 1
                key = f"{response.status_code // 100}xx"
                TALLY[key] = TALLY.get(key, 0) + 1
                case.validate_response(response, excluded_checks=[positive_data_acceptance])

            try:
                run()
            except Unsatisfiable:
                continue  # no invalid request exists (an operation without parameters)
            except BaseException as exc:  # a check's failure (group): collected, reported below
                if isinstance(exc, KeyboardInterrupt):
                    raise
                first = str(exc).strip().splitlines()
                curl = [ln.strip() for ln in first if ln.strip().startswith("curl")]
                failures.append(f"{operation.label} [{mode.value}]: "
                                f"{' | '.join(first[:6])} {' '.join(curl)}")
    TALLY["failed_operations"] = len(failures)
    print(f"\nfuzz_api: {TALLY['cases']} requests over {len(operations)} operations "
          f"({CASES} per operation and mode): {TALLY.get('2xx', 0)} accepted, "
          f"{TALLY.get('4xx', 0)} refused (4xx), {TALLY.get('5xx', 0)} server errors, "
          f"{len(failures)} operations failing")
    assert not failures, "\n".join(failures)
