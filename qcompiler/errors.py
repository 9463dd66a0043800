"""The one exception type users see.

Every failure that a user can cause (bad file, unsupported op, wrong input shape, missing CPU
feature) is raised as ``QCompilerError`` with a one-line message that names the file, node or op
and says what to do. The CLI turns it into ``error: <message>`` and exit code 2; raw TVM, ONNX or
torch tracebacks never reach the user (anything else is printed as one ``internal error`` line,
exit code 3).
"""


class QCompilerError(Exception):
    """A user-facing error: one line naming the file/node/op and what to do about it."""

    def __init__(self, message: str):
        super().__init__(" ".join(str(message).split()))


def describe_exception(err: BaseException, limit: int) -> str:
    """``Type: message`` of an unexpected exception, on one line: the message's last line (TVM's
    errors carry their C++ traceback first and the message last), at most ``limit`` characters."""
    text = str(err).strip()
    return f"{type(err).__name__}: {text.splitlines()[-1][:limit] if text else ''}"
