"""The one exception hierarchy: every class carries an HTTP status and an exit code."""

from __future__ import annotations

import convergence.platform.errors as errors


def test_every_error_descends_from_the_root_and_has_distinct_codes() -> None:
    classes = [getattr(errors, n) for n in errors.__all__ if isinstance(getattr(errors, n), type)]
    assert all(issubclass(c, errors.ConvergenceError) for c in classes)
    assert errors.NotFound.http_status == 404 and errors.InvalidInput.http_status == 422
    assert errors.PolicyViolation.http_status == 403 and issubclass(errors.BudgetExceeded, errors.PolicyViolation)
    assert errors.IntegrityError.http_status == 409 and errors.Unavailable.http_status == 503
    assert issubclass(errors.SchemaOutdated, errors.Unavailable)
    top = [errors.NotFound, errors.InvalidInput, errors.PolicyViolation, errors.IntegrityError, errors.Unavailable,
           errors.StepFailed]
    assert len({c.exit_code for c in top}) == len(top) and all(c.exit_code > 1 for c in top)


def test_message_hint_and_dict() -> None:
    exc = errors.NotFound("no model 7", hint="list them")
    assert str(exc) == "no model 7 (hint: list them)"
    assert exc.to_dict() == {"error": "NotFound", "message": "no model 7", "hint": "list them"}
    step = errors.StepFailed("boom", step="train_teacher")
    assert step.step == "train_teacher" and "train_teacher" in str(step)


def test_docstring_draws_every_class() -> None:
    for name in errors.__all__:
        if isinstance(getattr(errors, name), type):
            assert name in (errors.__doc__ or "")


def test_an_api_error_answer_maps_back_to_the_same_class_and_exit_code() -> None:
    assert errors.error_class("Forbidden", 403) is errors.Forbidden
    assert errors.error_class("Unauthenticated", 401).exit_code == 8
    assert errors.error_class("SomethingNew", 404) is errors.NotFound  # unknown names: by status
    assert errors.error_class("SomethingNew", 418) is errors.ConvergenceError
    forbidden = errors.Forbidden("no", rule="approver-not-registrant")
    assert forbidden.to_dict()["rule"] == "approver-not-registrant" and forbidden.http_status == 403


def test_every_error_survives_the_round_trip_through_an_api_answer() -> None:
    samples = [errors.Forbidden("no", rule="approver-not-registrant", hint="ask alice"),
               errors.StepFailed("boom", step="train_teacher"), errors.BudgetExceeded("over"),
               errors.SchemaOutdated("old", hint="cvg db upgrade")]
    for exc in samples:
        answer = exc.to_dict()
        back = errors.error_class(str(answer["error"]), exc.http_status).from_dict(answer)
        assert type(back) is type(exc) and back.to_dict() == answer and back.exit_code == exc.exit_code
        assert str(back) == str(exc)  # the CLI prints the same line in both modes
