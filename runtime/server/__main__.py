"""`python -m runtime.server --models DIR`: serve the fetched models as an A1111 interrogate API.

Flags follow A1111 where it has them (--listen, --port, --api-auth). Exit 2 with one line when the
models or settings cannot be used.
"""

from __future__ import annotations

import argparse
import logging
import os
import socket
import sys
from pathlib import Path

import uvicorn

from common.errors import UserError
from runtime.classify import ClassifyLimits
from runtime.clip import TEXT_UNLOAD_AFTER_S
from runtime.errors import SettingsError
from runtime.images import ImagePolicy
from runtime.label_cache import CacheSettings
from runtime.npu import NpuLock
from runtime.opening import OpenOptions, open_interrogator
from runtime.preprocess import Fidelity
from runtime.prompt_modes import PromptSettings
from runtime.server.app import ServerSettings, create_app
from runtime.server.connections import ConnectionLimits, uvicorn_config
from runtime.tagger import fetched_tagger

MB = 1024 * 1024
AUTH_ENV = "CLIP_API_AUTH"  # user:pass[,user:pass]: keeps the password off the command line


def parse_credentials(text: str) -> dict[str, str]:
    """A1111's --api-auth format, `user:password[,user:password]`; a password may contain ':'."""
    credentials = {}
    for entry in filter(None, (e.strip() for e in text.replace("\n", ",").split(","))):
        user, sep, password = entry.partition(":")
        if not sep or not user or not password:
            raise SettingsError("--api-auth takes user:password[,user:password] (an entry lacks one of them)")
        credentials[user] = password
    return credentials


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m runtime.server", description=__doc__.splitlines()[0])
    _add_model_arguments(parser)
    _add_prompt_arguments(parser)
    _add_classify_arguments(parser)
    _add_limit_arguments(parser)
    return parser


def _add_classify_arguments(parser: argparse.ArgumentParser) -> None:
    """/clip/v1/classify: the bounds of one question, and the cache of the labels it encodes."""
    limits, cache = ClassifyLimits(), CacheSettings()
    parser.add_argument(
        "--classify-max-categories", type=int, default=limits.max_categories, help="categories per classify request"
    )
    parser.add_argument(
        "--classify-max-labels", type=int, default=limits.max_labels, help="labels per classify request, all categories"
    )
    parser.add_argument(
        "--classify-max-label-chars", type=int, default=limits.max_label_chars, help="characters per label"
    )
    parser.add_argument(
        "--classify-max-encodes",
        type=int,
        default=limits.max_text_encodes,
        help="labels new to the server (not in its tables or cache) one classify request may encode",
    )
    parser.add_argument(
        "--label-cache-entries", type=int, default=cache.entries, help="encoded labels kept (least recent leave first)"
    )
    parser.add_argument(
        "--label-cache-mb", type=float, default=cache.bytes / MB, help="and at most this many MB of them"
    )
    parser.add_argument(
        "--label-cache-dir",
        type=Path,
        help="where the label cache is saved (default: beside the model set, in fetch's clip-axera folder)",
    )


def _add_prompt_arguments(parser: argparse.ArgumentParser) -> None:
    """clip-interrogator's modes (/interrogator/*): where a prompt starts, what `best` may cost."""
    defaults = PromptSettings()
    parser.add_argument(
        "--caption-category",
        default=defaults.caption_category,
        help="the vocabulary category whose best label starts a prompt (clip-interrogator starts from BLIP)",
    )
    parser.add_argument("--max-flavors", type=int, default=defaults.max_flavors, help="clip-interrogator's max_flavors")
    parser.add_argument(
        "--chain-candidates",
        type=int,
        default=defaults.chain_candidates,
        help="labels re-encoded at each step of a best/negative chain (those whose own cosine is best)",
    )
    parser.add_argument(
        "--max-text-encodes", type=int, default=defaults.max_text_encodes, help="text encodes per prompt request"
    )
    parser.add_argument(
        "--text-unload-after",
        type=float,
        default=TEXT_UNLOAD_AFTER_S,
        help="seconds without a best/negative prompt after which the text encoder leaves the NPU",
    )
    parser.add_argument(
        "--model-name",
        action="append",
        default=[],
        help="another name the served model answers to in /interrogator/models (e.g. ViT-L-14/openai); repeatable",
    )
    parser.add_argument(
        "--refuse-other-models",
        action="store_true",
        help="answer a clip_model_name the server does not serve with 404 (default: the served model answers)",
    )


def _add_model_arguments(parser: argparse.ArgumentParser) -> None:
    """Where the models are, how they run, and who may call."""
    parser.add_argument("--models", type=Path, required=True, help="models dir as fetch lays it out")
    parser.add_argument("--listen", action="store_true", help="listen on 0.0.0.0 (default 127.0.0.1 only)")
    parser.add_argument("--port", type=int, default=7860)
    parser.add_argument("--api-auth", help=f"user:password[,...] for HTTP Basic auth (or ${AUTH_ENV})")
    parser.add_argument("--api-auth-file", type=Path, help="a file holding user:password lines")
    parser.add_argument("--provider", help="axengine provider (default: the first available)")
    parser.add_argument("--device-id", type=int, default=0)
    parser.add_argument(
        "--fidelity",
        choices=[f.value for f in Fidelity],
        default=Fidelity.FAST.value,
        help="fast: decode and resize only the pixels the model needs; exact: transformers' own",
    )
    parser.add_argument(
        "--verify-models",
        action="store_true",
        help="check each model file's sha256 against manifest.json at start (sizes: always)",
    )
    parser.add_argument(
        "--npu-lock",
        type=Path,
        help="hold an exclusive flock on this file around every NPU call "
        "(the same file another program on the NPU locks, e.g. /run/lock/ax650.lock)",
    )
    parser.add_argument(
        "--tagger",
        type=Path,
        help="a WD tagger's folder (model.onnx or model.axmodel beside selected_tags.csv): serves "
        "/tagger/v1 and answers A1111's `deepdanbooru` with it (default: the fetched set's tagger, if it has one)",
    )
    parser.add_argument(
        "--unload-after",
        type=float,
        help="seconds without a request after which the image "
        "encoder leaves the NPU (loaded again by the next request); default: stay loaded",
    )


def _add_limit_arguments(parser: argparse.ArgumentParser) -> None:
    """The bounds on requests, bodies, connections and images, defaulting to the settings' own."""
    defaults, images, connections = ServerSettings(), ImagePolicy(), ConnectionLimits()
    parser.add_argument("--queue", type=int, default=defaults.queue_size, help="requests that may wait for the encoder")
    parser.add_argument("--queue-timeout", type=float, default=defaults.queue_timeout_s, help="seconds in the queue")
    parser.add_argument("--max-body-mb", type=float, default=defaults.max_body_bytes / MB, help="largest request body")
    parser.add_argument(
        "--max-bodies-mb",
        type=float,
        default=defaults.max_bodies_bytes / MB,
        help="all request bodies in flight together; past it, a 503",
    )
    parser.add_argument("--body-timeout", type=float, default=defaults.body_timeout_s, help="seconds a body may take")
    parser.add_argument(
        "--head-timeout",
        type=float,
        default=connections.head_timeout_s,
        help="seconds a request's head (request line and headers) may take",
    )
    parser.add_argument(
        "--max-connections",
        type=int,
        default=connections.max_connections,
        help="open connections; past it, the one idle longest is closed, or a 503",
    )
    parser.add_argument("--max-megapixels", type=float, default=images.max_pixels / 1e6, help="largest image")
    parser.add_argument("--allow-image-urls", action="store_true", help="accept http(s) image URLs")
    parser.add_argument("--allow-local-urls", action="store_true", help="... including local/private addresses")
    parser.add_argument("--options-file", type=Path, help="where POSTed options persist (default: beside --models)")
    parser.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])


def _check_limits(args: argparse.Namespace) -> None:
    """Every limit flag within sense: a negative queue or body cap would start a server that refuses all."""
    positive = {
        "--queue-timeout": args.queue_timeout,
        "--max-body-mb": args.max_body_mb,
        "--body-timeout": args.body_timeout,
        "--max-megapixels": args.max_megapixels,
        "--max-connections": args.max_connections,
        "--max-bodies-mb": args.max_bodies_mb,
        "--head-timeout": args.head_timeout,
    }
    for flag, value in positive.items():
        if value <= 0:
            raise SettingsError(f"{flag} must be above 0 (got {value:g})")
    if args.max_bodies_mb < args.max_body_mb:
        raise SettingsError(
            f"--max-bodies-mb ({args.max_bodies_mb:g}) must be at least --max-body-mb ({args.max_body_mb:g})"
        )
    if args.queue < 0:
        raise SettingsError(f"--queue must be 0 or more (got {args.queue})")
    if args.unload_after is not None and args.unload_after <= 0:
        raise SettingsError(f"--unload-after takes a number of seconds above 0 (got {args.unload_after:g})")
    counts = {
        "--max-flavors": args.max_flavors,
        "--chain-candidates": args.chain_candidates,
        "--max-text-encodes": args.max_text_encodes,
        "--text-unload-after": args.text_unload_after,
        "--classify-max-categories": args.classify_max_categories,
        "--classify-max-labels": args.classify_max_labels,
        "--classify-max-label-chars": args.classify_max_label_chars,
        "--classify-max-encodes": args.classify_max_encodes,
        "--label-cache-entries": args.label_cache_entries,
        "--label-cache-mb": args.label_cache_mb,
    }
    for flag, value in counts.items():
        if value <= 0:
            raise SettingsError(f"{flag} must be above 0 (got {value:g})")


def settings_from(args: argparse.Namespace) -> ServerSettings:
    _check_limits(args)
    auth = args.api_auth or os.environ.get(AUTH_ENV, "")
    if args.api_auth_file:
        try:
            auth = args.api_auth_file.read_text(encoding="utf-8")
        except OSError as exc:
            raise SettingsError(f"--api-auth-file {args.api_auth_file}: {exc.strerror}") from exc
        if not auth.strip():
            raise SettingsError(
                f"--api-auth-file {args.api_auth_file} is empty: it must hold user:password lines "
                "(drop the flag to serve without auth)"
            )
    return ServerSettings(
        images=ImagePolicy(
            max_pixels=int(args.max_megapixels * 1e6),
            allow_urls=args.allow_image_urls,
            allow_local_urls=args.allow_local_urls,
        ),
        max_body_bytes=int(args.max_body_mb * MB),
        max_bodies_bytes=int(args.max_bodies_mb * MB),
        body_timeout_s=args.body_timeout,
        queue_size=args.queue,
        queue_timeout_s=args.queue_timeout,
        credentials=parse_credentials(auth),
        options_file=args.options_file or args.models.resolve().parent / "server-options.json",
        prompt=PromptSettings(
            caption_category=args.caption_category,
            max_flavors=args.max_flavors,
            chain_candidates=args.chain_candidates,
            max_text_encodes=args.max_text_encodes,
        ),
        model_names=tuple(args.model_name),
        refuse_other_models=args.refuse_other_models,
        classify=ClassifyLimits(
            max_categories=args.classify_max_categories,
            max_labels=args.classify_max_labels,
            max_label_chars=args.classify_max_label_chars,
            max_text_encodes=args.classify_max_encodes,
        ),
        label_cache=CacheSettings(
            entries=args.label_cache_entries, bytes=int(args.label_cache_mb * MB), folder=args.label_cache_dir
        ),
        tagger=args.tagger or fetched_tagger(args.models),
    )


def _check_port_free(host: str, port: int) -> None:
    """Fail before loading any model, in one line, when the port is taken (uvicorn would exit 3)."""
    with socket.socket() as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn binds
        try:
            probe.bind((host, port))
        except OSError as exc:
            raise SettingsError(
                f"cannot listen on {host}:{port}: {exc.strerror} (another server there? stop it, or pass --port)"
            ) from exc


def main(argv: list[str] | None = None) -> int:

    args = build_parser().parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    host = "0.0.0.0" if args.listen else "127.0.0.1"
    try:
        _check_port_free(host, args.port)
        settings = settings_from(args)
        options = OpenOptions(
            npu=NpuLock(args.npu_lock),
            provider=args.provider,
            device_id=args.device_id,
            unload_after=args.unload_after,
            verify_hashes=args.verify_models,
            fidelity=Fidelity(args.fidelity),
            text_unload_after=args.text_unload_after,
        )
        interrogator = open_interrogator(args.models, options)
        app = create_app(interrogator, settings)
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    limits = ConnectionLimits(max_connections=args.max_connections, head_timeout_s=args.head_timeout)
    uvicorn.Server(uvicorn_config(app, host, args.port, limits, args.log_level)).run()
    return 0


if __name__ == "__main__":
    sys.exit(main())
