"""Fuzz a running HTTP service from its own OpenAPI schema: what a hostile or careless client can send.

    mlsd <system> bench --only fuzz     # a system's fuzz section (fuzz.requests, fuzz.server_errors)

``fuzz_api`` reads ``/openapi.json`` from a live server and, for every operation, lets schemathesis generate
requests in two modes: *positive* (valid by the schema: the service must answer 2xx or a documented 4xx) and
*negative* (invalid on purpose: wrong types, missing fields, out-of-range numbers, huge strings; the service
must refuse with a 4xx, never a 5xx). Every response is checked against the schema too (status documented,
content type, body shape), so the schema stays a true contract and not a wish. Generation is seeded
(``derandomize``) so a run is reproducible, and bounded (``max_examples`` per operation and mode) so it fits in
CI; nothing is shrunk or stopped at the first failure: the result counts every request and every failure.
"""

from __future__ import annotations

import contextlib
from dataclasses import asdict, dataclass, field
from typing import Any


@dataclass
class FuzzFailure:
    operation: str
    mode: str
    status: int | None
    check: str
    message: str
    request: str = ""
    """What was sent (method, path, query, body; truncated): enough to replay the finding."""
    response: str = ""
    """The start of the answer's body."""


@dataclass
class FuzzResult:
    requests: int = 0
    server_errors: int = 0
    """Responses with status >= 500 other than 503 (the fault suite's target: 0)."""
    unavailable: int = 0
    """Documented 503s: a dependency the operation needs is down or absent (not a failure of the service)."""
    operations: int = 0
    failures: list[FuzzFailure] = field(default_factory=list)
    """Every failed check (schema conformance, a 5xx, a rejected valid request, an accepted invalid one)."""

    def as_dict(self, keep: int = 20) -> dict[str, Any]:
        return {
            "requests": self.requests,
            "server_errors": self.server_errors,
            "unavailable": self.unavailable,
            "operations": self.operations,
            "failed_checks": len(self.failures),
            "failures": [asdict(f) for f in self.failures[:keep]],
        }


def fuzz_api(
    base_url: str,
    *,
    max_examples: int = 50,
    headers: dict[str, str] | None = None,
    exclude_paths: tuple[str, ...] = (),
    semantic_422: tuple[str, ...] = (),
) -> FuzzResult:
    """Fuzz every operation of the service at ``base_url`` (see the module docstring); never raises on findings.

    ``semantic_422``: operations (``"POST /admin/rollout"``) whose body has rules a JSON schema cannot state
    (canary steps that must rise and end at 100): a schema-valid request may get their documented 422, so the
    "valid data accepted" check is off for them; every other check still applies.
    """
    import schemathesis
    from schemathesis import GenerationMode
    from schemathesis.core.result import Err

    schema = schemathesis.openapi.from_url(f"{base_url}/openapi.json")
    result = FuzzResult()
    for found in schema.get_all_operations():
        if isinstance(found, Err):  # an operation the schema cannot describe is a finding, not a skip
            raise found.err()
        operation = found.ok()
        if any(operation.path.startswith(p) for p in exclude_paths):
            continue
        result.operations += 1
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
            _fuzz_operation(
                operation,
                mode,
                base_url=base_url,
                headers=headers,
                n=max_examples,
                allow_semantic_422=operation.label in semantic_422,
                into=result,
            )
    return result


def _fuzz_operation(
    operation: Any,
    mode: Any,
    *,
    base_url: str,
    headers: dict[str, str] | None,
    n: int,
    allow_semantic_422: bool,
    into: FuzzResult,
) -> None:
    import hypothesis
    from hypothesis import HealthCheck, given, settings
    from schemathesis.core.failures import ServerError
    from schemathesis.specs.openapi.checks import RejectedPositiveData

    @given(case=operation.as_strategy(generation_mode=mode))
    @settings(
        max_examples=n,
        derandomize=True,  # the same requests on every run
        database=None,
        deadline=None,
        phases=[hypothesis.Phase.explicit, hypothesis.Phase.generate],  # no shrinking: we count, not minimise
        suppress_health_check=list(HealthCheck),
    )
    def run(case: Any) -> None:
        response = case.call(base_url=base_url, headers=headers, timeout=30)
        into.requests += 1
        if response.status_code == 503:
            into.unavailable += 1
        elif response.status_code >= 500:
            into.server_errors += 1
        try:
            case.validate_response(response, headers=headers)
        except BaseException as exc:  # a failed check (a BaseExceptionGroup of them): record it, keep generating
            if isinstance(exc, KeyboardInterrupt | SystemExit):
                raise
            for failure in getattr(exc, "exceptions", None) or [exc]:
                if allow_semantic_422 and isinstance(failure, RejectedPositiveData) and response.status_code == 422:
                    continue
                if isinstance(failure, ServerError) and response.status_code == 503:
                    continue  # documented in every operation (ERROR_RESPONSES): counted as unavailable above
                text = str(failure).strip()
                into.failures.append(
                    FuzzFailure(
                        operation=operation.label,
                        mode=mode.value,
                        status=response.status_code,
                        check=getattr(failure, "title", type(failure).__name__),
                        message=text[:600],
                        request=_describe(case)[:600],
                        response=response.text[:300],
                    )
                )

    with contextlib.suppress(hypothesis.errors.Unsatisfiable):  # nothing to make invalid in this mode
        run()


def _describe(case: Any) -> str:
    """``METHOD /path?query body`` of a generated case."""
    import json

    parts = [f"{case.method.upper()} {case.formatted_path}"]
    if case.query:
        parts.append(f"query={json.dumps(case.query, default=repr)}")
    body = getattr(case, "body", None)
    if body is not None and type(body).__name__ != "NotSet":
        parts.append(f"body={json.dumps(body, default=repr)}")
    return " ".join(parts)
