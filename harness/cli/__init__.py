"""The `kobench` command: a thin Typer shell over the library (harness.runner, harness.ranking, ...)."""
from __future__ import annotations

import logging
import os
import sys

import typer
from rich.console import Console

from harness.errors import KobenchError

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="kobench: benchmark Korean LLMs on lm-eval tasks, rank them, fine-tune the winner.")
err_console = Console(stderr=True)


def quiet_libraries() -> None:
    """lm-eval and transformers log warnings per task; kobench reports what matters itself."""
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    for name in ("lm_eval", "lm-eval", "transformers", "datasets", "accelerate", "peft", "httpx", "urllib3"):
        logging.getLogger(name).setLevel(logging.ERROR)
    try:
        import transformers

        transformers.logging.set_verbosity_error()
    except ImportError:
        pass


def _register() -> None:
    from harness.cli import catalog, comet, data, db, ensemble, finetune, hardware, leaderboard, results, run, translate  # noqa: F401  (each module adds its commands to `app`)


def main() -> None:
    """Entry point: user mistakes end as one `error:` line and exit code 2, never a traceback."""
    if "--online" in sys.argv[1:]:
        for var in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE"):
            os.environ[var] = "0"
        os.environ["KOBENCH_ONLINE"] = "1"
    _register()
    quiet_libraries()
    try:
        # standalone_mode=False returns typer.Exit's code instead of exiting: pass it on
        code = app(standalone_mode=False)
        if isinstance(code, int) and code:
            sys.exit(code)
    except KobenchError as exc:
        from rich.markup import escape

        from harness.redact import redact

        # the message may quote the user's input: credentials are masked, brackets are not rich markup
        err_console.print(f"[bold red]error:[/] {escape(redact(str(exc)))}", highlight=False, soft_wrap=True)
        sys.exit(exc.exit_code)
    except (typer.Exit, SystemExit) as exc:
        sys.exit(getattr(exc, "exit_code", getattr(exc, "code", 0)) or 0)
    except typer.Abort:
        err_console.print("aborted")
        sys.exit(130)
    except KeyboardInterrupt:
        err_console.print("interrupted")
        sys.exit(130)
    except Exception as exc:  # click usage errors
        import click

        if isinstance(exc, click.ClickException):
            exc.show()
            sys.exit(exc.exit_code)
        raise
