"""``dualplane models``: build the tiny models, or pull real weights into the object store.

    dualplane models make-tiny [--out DIR] [--only NAME ...] [--no-upload]
    dualplane models pull NAME (--from-dir DIR | --from-hub ID [--revision R]) [--kind K]

Errors a user can fix (no store configured, an unknown name, no hub) are one line on stderr and
exit code 2, as argparse's own are.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from pathlib import Path

from dualplane.common.settings import Settings

EXIT_USAGE = 2


def main_models(argv: list[str] | None = None, settings: Settings | None = None) -> int:
    from dualplane.ml.tiny import BUILDERS

    parser = argparse.ArgumentParser(prog="dualplane models", description="Manage model weights.")
    sub = parser.add_subparsers(dest="command", required=True)
    make = sub.add_parser("make-tiny", help="build tiny random-weight models (and upload them to S3)")
    make.add_argument("--out", type=Path, help="where to save them (default: a temporary directory)")
    make.add_argument("--only", nargs="+", choices=sorted(BUILDERS), help="build only these")
    make.add_argument("--no-upload", action="store_true", help="do not upload even when S3 is configured")
    make.set_defaults(handler=_make_tiny)
    pull = sub.add_parser("pull", help="upload real weights (a directory, or a model hub snapshot) under a "
                                       "registry name, with a manifest that says they are real")
    pull.add_argument("name", help="registry name (e.g. musicgen-small, sd15)")
    source = pull.add_mutually_exclusive_group(required=True)
    source.add_argument("--from-dir", type=Path, metavar="DIR", help="a checkpoint directory (save_pretrained layout)")
    source.add_argument("--from-hub", metavar="ID", help="a model hub id, where a hub is reachable")
    pull.add_argument("--revision", help="hub revision (branch, tag or commit) with --from-hub")
    pull.add_argument("--include", nargs="+", metavar="GLOB", help="hub files to fetch (default: all)")
    pull.add_argument("--exclude", nargs="+", metavar="GLOB",
                      help="more hub files to skip (other frameworks' files and .ckpt are always skipped)")
    pull.add_argument("--kind", help="what the weights are; needed for a name the registry does not know")
    pull.set_defaults(handler=_pull)
    args = parser.parse_args(argv)
    args.settings = settings or Settings()
    if args.command == "pull" and args.from_hub is None and (args.revision or args.include or args.exclude):
        parser.error("--revision, --include and --exclude go with --from-hub")
    return int(args.handler(parser, args))


def _make_tiny(parser: argparse.ArgumentParser, args: argparse.Namespace) -> int:
    import tempfile

    from dualplane.common.artifacts import store_from_settings
    from dualplane.ml.tiny import make_and_upload, make_tiny

    artifacts = None if args.no_upload else store_from_settings(args.settings.store)
    if args.out is None and artifacts is None:
        parser.error("nothing to do: give --out, or configure S3_ENDPOINT to upload")
    with tempfile.TemporaryDirectory(prefix="dualplane-tiny-") as tmp:
        out = args.out or Path(tmp)
        if artifacts is None:
            built = make_tiny(out, args.only)
        else:
            built = asyncio.run(make_and_upload(artifacts, out, args.only, model_prefix=args.settings.model_prefix))
        for name, path in built.items():
            where = f"s3://{artifacts.bucket}/{args.settings.model_prefix}/{name}/" if artifacts else str(path)
            print(f"{name}\t{where}")
    return 0


def _pull(parser: argparse.ArgumentParser, args: argparse.Namespace) -> int:
    from dualplane.common.errors import DualplaneError

    try:
        return _pull_or_raise(args)
    except DualplaneError as exc:  # ours, the store's (unavailable) and PullError: one line each
        print(f"dualplane models pull: error: {' '.join(str(exc).split())}", file=sys.stderr)
        return EXIT_USAGE


def _pull_or_raise(args: argparse.Namespace) -> int:
    import tempfile

    from dualplane.common.artifacts import store_from_settings
    from dualplane.ml.model_store import ModelRegistry
    from dualplane.ml.pull import PullError, download_hub, hub_origin, pull_dir, resolve_target

    settings = args.settings
    target = resolve_target(ModelRegistry.from_settings(settings.models), args.name, args.kind,
                            model_prefix=settings.model_prefix)
    artifacts = store_from_settings(settings.store)
    if artifacts is None:
        raise PullError("no object store configured: set S3_ENDPOINT, S3_ACCESS_KEY, S3_SECRET_KEY and "
                        "S3_BUCKET to the store the workers use")
    with tempfile.TemporaryDirectory(prefix="dualplane-pull-") as tmp:
        if args.from_hub is not None:
            print(f"downloading {args.from_hub} from the model hub ...", file=sys.stderr, flush=True)
            directory = download_hub(args.from_hub, Path(tmp) / "snapshot", revision=args.revision,
                                     include=args.include, exclude=args.exclude)
            origin = hub_origin(args.from_hub, args.revision)
        else:
            directory, origin = args.from_dir, f"dir:{args.from_dir.resolve()}"
        manifest = asyncio.run(pull_dir(artifacts, target, directory, origin=origin))
    size = sum(f["size"] for f in manifest["files"].values())
    print(f"{target.name}\ts3://{artifacts.bucket}/{target.prefix}/\t{len(manifest['files'])} files, "
          f"{size / 1e6:,.1f} MB\tweights real ({origin})")
    if not target.registered:
        print(f"\n{target.name} is in no registry yet: add this to a registry file and point "
              f"DUALPLANE_MODELS_CONFIG at it (start from dualplane/ml/model_store/models.toml):\n\n"
              f"{target.registry_snippet()}")
    return 0
