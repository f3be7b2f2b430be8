"""The error a bad input raises: it names the input, what is wrong and what to do."""

from __future__ import annotations


class InputProblem(ValueError):
    """A problem with something the user pointed the job at (not a transient failure).

    The message names the input (``subject``), what is wrong (``problem``) and what to do
    (``hint``); the parts are kept as attributes so a caller can record them in structured form.
    """

    what = "input"  # how the message introduces the subject

    def __init__(self, subject: str, problem: str, hint: str = "") -> None:
        self.subject = subject
        self.problem = problem
        self.hint = hint
        message = f"{self.what} {subject!r}: {problem}"
        if hint:
            message += f". {hint[0].upper()}{hint[1:]}"
        super().__init__(message)

    def __reduce__(self):  # type: ignore[override]
        # Exceptions pickle as ``cls(*self.args)``, and ``args`` holds only the formatted message;
        # Ray pickles exceptions raised in tasks, so rebuild from the parts.
        return (type(self), (self.subject, self.problem, self.hint))
