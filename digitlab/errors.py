"""The errors a user can cause, under one base class; the CLI turns them into a message and an exit code.

    raise UnknownModelError("mlpp")          # "unknown model 'mlpp'; known models: bestcnn, ..."
    except DigitlabError as exc: print(exc); return exc.exit_code

Anything that is not a DigitlabError is a bug and keeps its traceback. Each class also derives from
the builtin a caller would naturally catch (ValueError for bad values, KeyError for unknown names),
so library code written against the builtins keeps working.
"""
from __future__ import annotations

USAGE = 2  # exit code: the command line or the settings were wrong
FAILURE = 1  # exit code: the settings were fine, but something the user supplied or needs is not


class DigitlabError(Exception):
    """Base class: the message names the problem and what to do about it."""

    exit_code = FAILURE


class ConfigError(DigitlabError, ValueError):
    """A setting, flag or search space that makes no sense: names the setting and what to change."""

    exit_code = USAGE


class UnknownModelError(ConfigError, KeyError):
    def __init__(self, name: str, known: list[str]):
        self.name = name
        super().__init__(f"unknown model {name!r}; known models: {', '.join(known)}")

    def __str__(self) -> str:  # KeyError would print the message in quotes
        return self.args[0]


class RunError(DigitlabError, ValueError):
    """A run directory that is missing, incomplete, from an unknown schema, or in use."""

    exit_code = USAGE


class ModelLoadError(RunError):
    """A model file that exists but cannot be loaded (truncated, overwritten, not a model)."""


class DataError(DigitlabError, RuntimeError):
    """The data could not be obtained or is not what it should be."""


class DataUnavailableError(DataError):
    """No source could provide the data; the message lists what was tried and how to fix it."""


class ChecksumError(DataError, ValueError):
    """Bytes whose SHA-256 is not the one expected."""


class InputImageError(DigitlabError, ValueError):
    """An input (image file, bytes, array) that can't be read as a digit; the message says why and what to do."""


class TrainingError(DigitlabError):
    """Training went wrong in a way the user can act on (a non-finite loss, say)."""
