"""`moor build|push|pull|tag|images|rmi|save`: the argument parser; each command's work is in its
own module (buildcmd, distcmd, imagecmd, savecmd), loaded only when that command runs."""

from __future__ import annotations

import argparse
import importlib
import os
import sys

from builder.errors import BuildError

_HANDLERS = {"build": "builder.buildcmd:run", "push": "builder.distcmd:push",
             "pull": "builder.distcmd:pull", "login": "builder.distcmd:login",
             "tag": "builder.imagecmd:tag", "images": "builder.imagecmd:images",
             "rmi": "builder.imagecmd:rmi", "save": "builder.savecmd:run"}
COMMANDS = tuple(_HANDLERS)


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # one line, as the rest of `moor`
        sys.stderr.write(f'error: {message} (see "{self.prog} --help")\n')
        raise SystemExit(1)


def _key_value(text: str) -> tuple[str, str | None]:
    key, sep, value = text.partition("=")
    if not key:
        raise argparse.ArgumentTypeError(f"{text!r}: want KEY=VALUE")
    return key, (value if sep else None)


def _registry_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--insecure-registry", action="append", default=[], metavar="HOST[:PORT]",
                   help="speak plain HTTP to this registry (repeatable)")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="moor", add_help=False)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser,
                                required=True)

    def command(name: str, help_text: str) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help_text, description=help_text)
        p.add_argument("--root", metavar="DIR",
                       help="the build machine's image store and cache "
                            "(default: $MOOR_BUILD_ROOT or /var/lib/moorage/build)")
        return p

    p = command("build", "build an image from a Dockerfile, with the node runtime (as root)")
    p.add_argument("context", metavar="CONTEXT", help="the build context, a directory")
    p.add_argument("-t", "--tag", action="append", default=[], metavar="NAME[:TAG]",
                   help="name the image (repeatable)")
    p.add_argument("-f", "--file", metavar="DOCKERFILE",
                   help="the Dockerfile (default: CONTEXT/Dockerfile)")
    p.add_argument("--build-arg", action="append", default=[], type=_key_value,
                   metavar="KEY[=VALUE]", help="set a build-time ARG (repeatable)")
    p.add_argument("--target", metavar="STAGE", help="build up to this stage")
    p.add_argument("--no-cache", action="store_true", help="do not reuse cached steps")
    p.add_argument("--label", action="append", default=[], type=_key_value,
                   metavar="KEY=VALUE", help="add a label to the image (repeatable)")
    p.add_argument("--push", action="store_true", help="push every tag once built")
    p.add_argument("--format", choices=("docker", "oci"), default="docker",
                   help="manifest and config media types (default: docker)")
    p.add_argument("-q", "--quiet", action="store_true", help="print only the image ID")
    _registry_flags(p)

    p = command("push", "push an image to its registry")
    p.add_argument("name", metavar="NAME[:TAG]")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress")
    _registry_flags(p)

    p = command("pull", "pull an image into the build machine's store")
    p.add_argument("name", metavar="NAME[:TAG|@DIGEST]")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress")
    _registry_flags(p)

    p = command("login", "store credentials for a registry")
    p.add_argument("server", metavar="SERVER")
    p.add_argument("-u", "--username", required=True)
    p.add_argument("-p", "--password", help="(default: read from stdin)")
    p.add_argument("--password-stdin", action="store_true", help="read the password from stdin")
    _registry_flags(p)

    p = command("tag", "give an image another name")
    p.add_argument("source", metavar="SOURCE[:TAG]")
    p.add_argument("target", metavar="TARGET[:TAG]")

    p = command("images", "list the build machine's images")
    p.add_argument("-q", "--quiet", action="store_true", help="only image IDs")
    p.add_argument("--digests", action="store_true", help="show manifest digests")
    p.add_argument("-a", "--all", action="store_true",
                   help="also the untagged images others were built on")
    p.add_argument("-f", "--filter", action="append", default=[], metavar="KEY=VALUE",
                   help="dangling=true|false, reference=PATTERN, label=KEY[=VALUE] "
                        "(repeatable)")
    p.add_argument("repository", nargs="?", metavar="REPOSITORY[:TAG]")

    p = command("save", "write images to a tar archive (docker save's layout: OCI + manifest.json)")
    p.add_argument("names", nargs="+", metavar="IMAGE")
    p.add_argument("-o", "--output", metavar="FILE", help="the archive (default: stdout)")

    p = command("rmi", "remove image names (and the image when no name is left)")
    p.add_argument("names", nargs="+", metavar="IMAGE")
    p.add_argument("-f", "--force", action="store_true")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(sys.argv[1:] if argv is None else argv)
    module, _, name = _HANDLERS[args.command].partition(":")
    try:
        return getattr(importlib.import_module(module), name)(args) or 0
    except BuildError as exc:
        sys.stderr.write(f"error: {exc}\n")
        return exc.code
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1
