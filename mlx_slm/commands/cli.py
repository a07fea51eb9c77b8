"""The `mlx-slm` command group: a thin shell that parses, calls the library and prints.

Subcommands live in mlx_slm/commands/ and are imported only when named, and they import
mlx inside their functions, so `mlx-slm --help` stays instant.
"""

import importlib
import importlib.util
import os
import sys

import click

from mlx_slm.errors import SlmError

COMMANDS = {
    "bench": "Benchmark throughput and memory per model size and precision.",
    "chat": "Chat with a model in the terminal.",
    "compare": "Ask several models the same prompt, answers side by side.",
    "convert": "Convert an OpenELM checkpoint (Hub repo or local dir) to an MLX directory.",
    "finetune": "Fine-tune a model with a LoRA adapter (QLoRA on a quantized model).",
    "fuse": "Merge an adapter into a new model directory, optionally re-quantized.",
    "generate": "Generate text from a prompt, with speed and memory stats.",
    "info": "Show a model directory's size, parameters, precision and layer shapes.",
    "models": "List, remove and pull the models converted into the cache.",
    "perplexity": "Perplexity of a model on a text file.",
    "quality": "Quality cost of a quantization: perplexity, KL divergence, top-1 agreement.",
    "quantize": "Quantize a converted model directory.",
    "quiz": "Ask models simple factual questions and score their answers.",
    "serve": "Serve models over an OpenAI-compatible HTTP API, many clients at once.",
}


class LazyGroup(click.Group):
    """Imports a subcommand's module only when that subcommand runs."""

    def list_commands(self, ctx):
        return [name for name in sorted(COMMANDS) if self._module_exists(name)]

    @staticmethod
    def _module_exists(name: str) -> bool:
        return importlib.util.find_spec(f"mlx_slm.commands.{name}") is not None

    def get_command(self, ctx, name):
        if name not in COMMANDS or not self._module_exists(name):
            return None
        module = importlib.import_module(f"mlx_slm.commands.{name}")
        return getattr(module, name)

    def format_commands(self, ctx, formatter):
        rows = [(name, COMMANDS[name]) for name in self.list_commands(ctx)]
        if rows:
            with formatter.section("Commands"):
                formatter.write_dl(rows)

    def main(self, args=None, prog_name=None, **extra):
        """Click's main, except that Ctrl-C anywhere exits 130 (Click's own handling says
        "Aborted!" and exits 1), and a SIGTERM turned into an interrupt exits 143."""
        extra.pop("standalone_mode", None)
        try:
            result = super().main(args, prog_name, standalone_mode=False, **extra)
        except click.exceptions.NoArgsIsHelpError as err:
            click.echo(err.ctx.get_help())  # `mlx-slm` alone asks for the help: not an error
            sys.exit(0)
        except click.UsageError as err:
            # One line, as every other error: Click's own shows the usage and a blank line too.
            command = err.ctx.command_path if err.ctx else "mlx-slm"
            click.echo(f"Error: {err.format_message()} (see '{command} --help')", err=True)
            sys.exit(err.exit_code)
        except click.ClickException as err:
            err.show()
            sys.exit(err.exit_code)
        except (click.Abort, KeyboardInterrupt) as stop:
            from mlx_slm.apps.signals import Terminated

            click.echo("\nInterrupted.", err=True)
            sys.exit(143 if isinstance(stop, Terminated) else 130)
        except EOFError:
            sys.exit(1)
        sys.exit(result if isinstance(result, int) else 0)

    def resolve_command(self, ctx, args):
        name, command, rest = super().resolve_command(ctx, args)
        if command is not None:
            refuse_repeated_options(command, name, rest, ctx)
        return name, command, rest

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except SlmError as err:
            click.echo(f"Error: {err}", err=True)
            ctx.exit(1)
        except BrokenPipeError:
            _silence_stdout()
            ctx.exit(0)


def refuse_repeated_options(command: click.Command, name: str, args: list[str],
                            parent: click.Context) -> None:
    """A usage error for an option given twice that takes one value (`-p a -p b`), where
    Click would keep the last one silently; repeatable options (--stop, -m) are fine."""
    ctx = click.Context(command, info_name=name, parent=parent)
    try:
        _, _, order = command.make_parser(ctx).parse_args(list(args))
    except click.UsageError:
        return  # the command's own parsing reports it
    seen = set()
    for param in order:
        if isinstance(param, click.Option) and not (param.multiple or param.count):
            if param.name in seen:
                names = "/".join(param.opts + param.secondary_opts)
                raise click.UsageError(f"{names} was given more than once; give it once.", ctx)
            seen.add(param.name)


def _silence_stdout() -> None:
    """After the reader of our stdout went away (`| head`), drop further output quietly."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="mlx-slm")
def main():
    """Run Apple's OpenELM small language models on MLX.

    Convert a checkpoint from the Hugging Face Hub (optionally quantized), then generate,
    chat, compare sizes or benchmark, with tokens/sec, time to first token and memory.
    """
