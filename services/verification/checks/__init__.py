"""The individual checks. Each is a pure function of a CheckContext.

Trust rule: every check that reads quote fields (os, source_code,
tee_controlled_key, certificate_key) takes them from `ctx.attested`, the TD
report returned by dcap-qvl after it verified the quote's signature chain. When
no verified report exists (hardware verification failed, the quote was
rejected, or no collateral was at hand), those checks FAIL and say so: they
never pass on fields an attacker could have written. A quote that verifies but
whose TCB status the policy does not allow still has authentic fields, so the
dependent checks do run on it; the verdict fails through the hardware check.
"""

from .context import AttestedQuote, CheckContext, Outcome

__all__ = ["AttestedQuote", "CheckContext", "Outcome"]
