# Mirrors modules/errors.py report() / display() (Forge main @ dfdcbab6, reForge @ 3b56b268): the WebUI logs
# exceptions from script callbacks and carries on. Here each report is also kept in `reported` (message,
# exception) so tests can assert on what the WebUI would only have printed.
import sys
import traceback

reported = []


def report(message, *, exc_info=False):
    exception = sys.exc_info()[1] if exc_info else None
    reported.append((message, exception))
    print("***", message, file=sys.stderr)
    if exc_info:
        traceback.print_exc()


def display(e, task, *, full_traceback=False):
    reported.append((task, e))
    print(f"{task or 'error'}: {type(e).__name__}", file=sys.stderr)
    traceback.print_exception(e)


def clear():
    reported.clear()
