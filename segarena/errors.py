"""The one exception type for bad user input: the CLI prints it and exits with code 2."""


class UserError(Exception):
    """Bad input from the user (config, data, folds, command line).

    The message must name the file or key, the value found and what was expected,
    so that the user can fix the problem without reading a traceback.
    """


class BadOption(UserError):
    """A bad value of a function argument that is also a command-line option.

    The library names the argument (`batch_size 0: expected 1 or more images`); the CLI
    names its flag (`--batch-size 0: ...`), so each layer speaks its caller's language."""

    def __init__(self, option: str, detail: str) -> None:
        super().__init__(f"{option} {detail}")
        self.option, self.detail = option, detail

    @property
    def as_flag(self) -> str:
        """The message as the command line says it: `--batch-size 0: ...`."""
        return f"--{self.option.replace('_', '-')} {self.detail}"


class TrainingError(Exception):
    """Training could not go on (a non-finite loss, a debug run whose loss did not fall).

    The CLI prints it and exits with code 1: the input was valid, the run was not.
    """


class Interrupted(KeyboardInterrupt):
    """Ctrl-C or SIGTERM stopped training. The run directory keeps every epoch saved before
    the signal (last.ckpt) and `segarena train --resume RUN_DIR` continues it."""

    def __init__(self, run_dir) -> None:
        super().__init__(str(run_dir))
        self.run_dir = run_dir


# A DataLoader worker's error is re-raised in the main process as the same type with a
# message of "Caught UserError in DataLoader worker process N. Original Traceback ...".
WORKER_MARK, OWN_MESSAGE = "in DataLoader worker process", "segarena.errors.UserError: "


def worker_free(message: str) -> str:
    """A UserError's own message, without the worker traceback torch wraps around it."""
    if WORKER_MARK in message and OWN_MESSAGE in message:
        return message.rsplit(OWN_MESSAGE, 1)[1].strip()
    return message
