"""One row of the fault table (issue 14.5): what a batch of tasks came to after
one fault, counted from the tasks service, the audit trail and the versioned
S3 bucket, and printed in the issue's line format."""

from __future__ import annotations

from dataclasses import dataclass, field

# Every row printed so far in this run; tests/conftest.py prints them again in
# the terminal summary, where `make test-faults` and `make test` show them.
TABLE: list[str] = []

LOST_BY_QUEUE = "(the queue had lost it)"


@dataclass
class Row:
    fault: str
    created: int = 0
    completed: int = 0  # final COMPLETED with the verdict PASSED
    failed: int = 0  # final, but not `completed passed`
    stuck: int = 0  # not final by the deadline
    duplicated: int = 0  # more than one final event or more than one report
    # What the duplicated tasks were (asserted apart, see test_fault_suite.py):
    double_final: int = 0  # two final events
    overwritten: int = 0  # one report key written twice (two versions)
    reverified: int = 0  # verified again under a later attempt (a second key)
    drain_s: float = 0.0  # from the fault healed to the last task final
    # Not in the printed line, asserted beside it.
    missing_reports: list[str] = field(default_factory=list)
    lost_lines: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)

    def line(self) -> str:
        return (
            f"fault={self.fault} created={self.created} completed={self.completed} "
            f"failed={self.failed} stuck={self.stuck} duplicated={self.duplicated} "
            f"drain_s={self.drain_s:.1f}"
        )
