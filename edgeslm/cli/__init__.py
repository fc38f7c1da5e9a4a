"""The ``edgeslm`` command line: a thin click layer over the library.

Subcommands are imported lazily (``LazyGroup``) so that ``edgeslm chat`` on a Raspberry Pi never
imports build code. Every command body calls one library function; errors are mapped once, here,
to a one-line message and an exit code (tracebacks only with ``--debug``).
"""

from __future__ import annotations

import importlib
import os
import sys

import click

from .. import __version__

COMMANDS = {
    "build": ("edgeslm.cli.build_cmd:build", "Quantize and export a checkpoint into a bundle for targets."),
    "targets": ("edgeslm.cli.targets_cmd:targets", "List the device targets."),
    "inspect": ("edgeslm.cli.bundle_cmds:inspect", "Summarize a bundle (or .tar)."),
    "verify": ("edgeslm.cli.bundle_cmds:verify", "Recompute every checksum of a bundle."),
    "pack": ("edgeslm.cli.bundle_cmds:pack", "Pack a bundle folder into one .tar file."),
    "keygen": ("edgeslm.cli.signing_cmds:keygen", "Create an Ed25519 signing key and its public key."),
    "sign": ("edgeslm.cli.signing_cmds:sign", "Sign a bundle's manifest with a private key."),
    "run": ("edgeslm.cli.run_cmds:run", "Answer one prompt with the artifact that matches this host."),
    "chat": ("edgeslm.cli.run_cmds:chat", "Chat interactively (/reset, /exit, Ctrl-D)."),
    "bench": ("edgeslm.cli.bench_cmd:bench", "Measure time to first token and decode speed on this device."),
    "push": ("edgeslm.cli.oci_cmds:push", "Push a bundle to an OCI registry (only blobs it lacks)."),
    "pull": ("edgeslm.cli.oci_cmds:pull", "Pull a bundle from an OCI registry (or install it: --install DEST)."),
    "update": ("edgeslm.cli.oci_cmds:update", "Install the followed registry tag when it moved."),
    "flash": ("edgeslm.cli.flash_cmd:flash", "Copy a bundle to devices (ssh, folder, adb), verify, switch atomically."),
    "serve": ("edgeslm.cli.serve_cmd:serve", "Serve a bundle with an OpenAI-compatible HTTP API."),
    "doctor": ("edgeslm.cli.doctor_cmd:doctor", "Show the host profile and which artifact runs here and why."),
}


class LazyGroup(click.Group):
    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(COMMANDS)

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        if name not in COMMANDS:
            return None
        module_name, _, attr = COMMANDS[name][0].partition(":")
        return getattr(importlib.import_module(module_name), attr)

    def invoke(self, ctx: click.Context):
        """Run the command; an EdgeslmError becomes one 'edgeslm: error:' line and its exit code (the only
        place errors are mapped), a bug one 'internal error' line; tracebacks only with --debug."""
        from ..errors import EdgeslmError
        from .option_flags import flag

        debug = bool(ctx.params.get("debug")) or bool(os.environ.get("EDGESLM_DEBUG"))
        try:
            return super().invoke(ctx)
        except EdgeslmError as exc:
            if debug:
                raise
            click.echo(f"edgeslm: error: {exc.one_line(flag)}", err=True)
            ctx.exit(exc.exit_code)
        except KeyboardInterrupt:
            click.echo("edgeslm: interrupted", err=True)
            ctx.exit(130)
        except (click.exceptions.Exit, click.ClickException, click.exceptions.Abort):
            raise
        except Exception as exc:  # an unexpected bug: one line unless --debug
            if debug:
                raise
            click.echo(f"edgeslm: internal error: {type(exc).__name__}: {exc} (run with --debug for the traceback)",
                       err=True)
            ctx.exit(70)

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        rows = [(name, COMMANDS[name][1]) for name in self.list_commands(ctx)]
        with formatter.section("Commands"):
            formatter.write_dl(rows)


@click.group(cls=LazyGroup)
@click.version_option(__version__, prog_name="edgeslm")
@click.option("--debug", is_flag=True, envvar="EDGESLM_DEBUG", help="Show tracebacks on errors.")
@click.pass_context
def cli(ctx: click.Context, debug: bool) -> None:
    """edgeslm: build Phi-3.5 models for edge devices, flash them, and run them there."""
    ctx.ensure_object(dict)
    ctx.obj["debug"] = debug


def main(argv: list[str] | None = None) -> int:
    """The console script; EdgeslmErrors are mapped in ``LazyGroup.invoke`` (so CliRunner sees the same)."""
    try:
        code = cli.main(args=argv, prog_name="edgeslm", standalone_mode=False)
    except click.exceptions.Abort:
        click.echo("edgeslm: aborted", err=True)
        return 130
    except KeyboardInterrupt:
        click.echo("edgeslm: interrupted", err=True)
        return 130
    except click.ClickException as exc:
        exc.show()
        return exc.exit_code
    except click.exceptions.Exit as exc:
        return exc.exit_code
    return code if isinstance(code, int) else 0


def run() -> None:
    sys.exit(main())
