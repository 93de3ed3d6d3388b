"""One exception hierarchy. Every message is one line that names the thing and says what to do."""

from __future__ import annotations


class DeployError(Exception):
    """Base of every error the tool reports to a user; the CLI prints it on one line and exits 2."""

    exit_code = 2


class UnknownNameError(DeployError):
    """A registry (family, variant, backend, runner, target) was asked for a name it does not hold."""


class DuplicateNameError(DeployError):
    """A registry was given a name it already holds."""


class PluginError(DeployError):
    """A user's plugin that cannot be used: a reference or entry point that does not import, a family
    missing a method of the protocol, a task whose evaluation returns something that is not a number."""


class WorkspaceError(DeployError):
    """A --workspace folder that is not one (no targets/, models/, latency_tables/ or checkpoints/)."""


class ExtractionError(DeployError):
    """An extracted subnet that does not compute what the supernet computes at its config."""


class UnknownTargetError(UnknownNameError):
    """No targets/<name>.yaml exists."""


class InvalidTargetNameError(DeployError):
    """A target name that is not [a-z0-9-]+ (it becomes a file and folder name)."""


class ConfigFileError(DeployError):
    """A YAML, JSON or CSV file that does not parse or does not match its schema (names file and field)."""


class TableNotFoundError(DeployError):
    """The target has no latency table yet."""


class TableIncompleteError(DeployError):
    """The latency table lacks entries for blocks the search space can produce."""


class NothingToValidateError(DeployError):
    """Every subnet of a small space was used for the calibration: no unseen one is left to validate on."""


class NoFeasibleSubnetError(DeployError):
    """No subnet meets the constraints; names the fastest option and its latency."""


class CheckpointError(DeployError):
    """A checkpoint that is missing, not safetensors, or does not fit the family."""


class ParityError(DeployError):
    """A compiled artifact whose outputs differ from the torch references beyond tolerance."""


class BackendUnavailableError(DeployError):
    """A backend whose toolchain is not installed here; names the install command."""


class ExportError(DeployError):
    """Export to the hub or loading by a runtime failed for a reason other than an unsupported op."""


class UnsupportedOpError(DeployError):
    """A converter met an operator it cannot handle."""


class UnsupportedPrecisionError(DeployError):
    """A target asks for a precision its backend cannot produce."""


class DataShapeError(DeployError):
    """Data handed to a converter (e.g. a representative or calibration dataset) has the wrong shape."""


class MeasurementError(DeployError):
    """A latency measurement that could not be made or stayed too noisy."""


class RunnerError(DeployError):
    """A runner could not reach or use the machine it measures on."""


class BenchGateError(DeployError):
    """A benchmark of a deployed artifact failed its gate (budget, prediction tolerance or baseline)."""


class OutputDirError(DeployError):
    """An output folder that is a file, cannot be written, or holds files this tool did not write."""


class InvalidArgumentError(DeployError):
    """A command-line value out of range (a budget that is not a positive finite number, …)."""


class TableUncalibratedError(DeployError):
    """A measured latency table without its calibration (an interrupted build): predictions would be raw sums."""


class DeviceBusyError(DeployError):
    """Another elastic-deploy process measures on the same device and did not finish in time."""


class LockFileError(DeployError):
    """A measurement lock folder or file that is not safe to use: a file, a symbolic link, another user's."""


class BuildInterruptedError(DeployError):
    """A table build stopped by Ctrl-C; what it measured is saved and the same command resumes."""

    exit_code = 130


class ExecutorError(DeployError):
    """An executor that cannot run here: Ray not installed, a cluster address that does not answer,
    options that belong to another executor, or every device of a farm lost."""


class TransferError(DeployError):
    """A latency transfer to a new device that cannot be fitted: too few destination measurements (the
    message says how many are needed), features and measurements that do not match, or a fitted model
    that cannot become a table."""


class TransferSourceError(TransferError):
    """A `--from` table a transfer cannot start from: not measured (estimated or itself transferred), missing
    blocks the new target needs, or the new target's own table."""


class TransferDeviceError(TransferError):
    """The new target of a transfer cannot measure here: its backend does not run here, or its device (ssh,
    adb) does not answer. Nothing is written."""


class MeasuredOverBudgetError(DeployError):
    """A deploy measured its artifact over the budget and re-selecting once with that measurement's
    correction did not help; the message gives the measured and predicted latencies and the budget."""


class CorpusError(DeployError):
    """A text corpus whose shipped files are missing or do not match their recorded sha256."""


class TokenizerError(DeployError):
    """A tokenizer file that does not match the checkpoint or artifact it is used with."""


class PromptError(DeployError):
    """A prompt a language model cannot take: empty, longer than its maximum context, or token ids outside
    its vocabulary."""


def first_line(exc: BaseException, *, with_type: bool = False) -> str:
    """The first line of `exc`'s message, to quote inside a one-line error (its type's name when it has none).

    `with_type` puts the type's name first ("KeyError: 'x'"): for errors from a user's code, where the type
    is half of what went wrong."""
    text = str(exc).strip()
    if not text:
        return type(exc).__name__
    line = text.splitlines()[0]
    return f"{type(exc).__name__}: {line}" if with_type else line
