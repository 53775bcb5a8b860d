"""Reporting shared by the Python check scripts: one line per scenario, and an
exit status that counts the failures."""
import sys

_failures = 0


def scenario(name):
    """Runs the decorated function now and reports it; a failure does not stop the others."""
    def wrap(fn):
        global _failures
        try:
            fn()
            print(f"ok   {name}")
        except Exception as error:  # report every failure, keep going
            _failures += 1
            print(f"FAIL {name}: {type(error).__name__}: {error}")
        return fn
    return wrap


def expect(condition, message):
    if not condition:
        raise AssertionError(message)


def finish():
    sys.exit(_failures)
