"""Invoke entry points: each task parses its options and hands off to the pipeline engine.

`invoke --list` shows them; `invoke all` runs every stale stage of pipeline.yaml in order.
"""

from __future__ import annotations

from invoke import Collection, Context, task
from invoke.exceptions import Exit

from commands.captioning import CaptionFlags, caption_images, classify_images
from commands.cli import run_stages, serve_command, setup_logging, show_status
from commands.serving import ServeRequest
from pipeline.runner import RunRequest

_HELP = {
    "config": "pipeline file (default: pipeline.yaml)",
    "force": "run the stages even when they are up to date",
    "dry-run": "say what would run and why, run nothing",
    "host": "host from the config to run this stage on (compile: the build host, fetch: the device)",
    "verbose": "log each step",
}


@task(help={**{k: v for k, v in _HELP.items() if k != "host"}, "only": "run just this stage, not its upstream"})
def all(  # noqa: A001 - `invoke all` is the documented command
    c: Context,
    config: str | None = None,
    force: bool = False,
    dry_run: bool = False,
    only: str | None = None,
    verbose: bool = False,
) -> None:
    """Run every stale stage in order (export, verify, ...) and print a summary."""
    setup_logging(verbose)
    targets = (only,) if only else None
    run_stages(config, RunRequest(targets=targets, force=force, dry_run=dry_run, only=bool(only)))


@task(help={"config": _HELP["config"]})
def status(c: Context, config: str | None = None) -> None:
    """Show each stage as up to date or stale, and why."""
    setup_logging(False)
    show_status(config)


@task(
    optional=["tagger"],
    help={
        "images": "folder of images (searched recursively)",
        "out": "write the caption files and captions.jsonl here instead of beside the images",
        "models": "models dir as fetch lays it out (default: the local device's, from the config)",
        "config": _HELP["config"],
        "ranks": "write (label:0.123) with each pick, as A1111's 'return ranks'",
        "overwrite": "caption again images that already have a caption file (--existing overwrite)",
        "existing": "a caption file already there: skip (default), overwrite, append or prepend (its text kept)",
        "prefix": "labels written first, comma-separated: a trigger word (kohya --always_first_tags)",
        "suffix": "labels written last, comma-separated",
        "exclude": "labels never written: a comma list, or @FILE (one a line); re:REGEX matches whole labels",
        "replace": "write one label as another: 'a,b;c,d' (kohya --tag_replacement)",
        "underscores": "spaces in labels written as _ (kaomoji as they are)",
        "escape": "escape ( ) \\ for SD's prompt syntax",
        "sort": "order (as picked, default), score (best first) or alpha",
        "extension": "caption file extension (default .txt; kohya --caption_extension)",
        "separator": "between labels (default ', ')",
        "threshold": "the bar of `many` categories (tags) instead of the vocabulary's: a cosine (SigLIP: probability)",
        "max-tags": "at most this many picks of each `many` category, best first",
        "dry-run": "caption this many images, print them, write nothing",
        "report": "write caption-report.html beside captions.jsonl: counts, tags per image, a sample",
        "npu-lock": "hold an exclusive flock on this file around every NPU call (default: device.npu_lock)",
        "mode": "write clip-interrogator's prompt in this mode instead: fast, classic, best or negative",
        "host": "caption on these devices with Dask: a device name, a comma list, or all (default: all, when the "
        "devices are other machines; else here)",
        "tagger": "write a WD tagger's booru tags instead: alone, the fetched set's tagger (`tagger:` in the config; "
        "here or on the devices, as CLIP's captions); with a folder, that tagger here (model.onnx or model.axmodel "
        "beside selected_tags.csv). --threshold is then the general tags' bar (default 0.35)",
        "character-threshold": "with --tagger: the character tags' bar (default 0.85; kohya --character_threshold)",
        "character-first": "with --tagger: character tags first (kohya --character_tags_first)",
        "rating": "with --tagger: the likeliest rating first (kohya --use_rating_tags)",
        "spaces": "_ in labels written as spaces (kohya --remove_underscore; kaomoji as they are)",
    },
)
def caption(
    c: Context,
    images: str | None = None,
    out: str | None = None,
    models: str | None = None,
    config: str | None = None,
    ranks: bool = False,
    overwrite: bool = False,
    existing: str | None = None,
    prefix: str | None = None,
    suffix: str | None = None,
    exclude: str | None = None,
    replace: str | None = None,
    underscores: bool = False,
    escape: bool = False,
    sort: str | None = None,
    extension: str | None = None,
    separator: str | None = None,
    threshold: float | None = None,
    max_tags: int | None = None,
    dry_run: int = 0,
    report: bool = False,
    npu_lock: str | None = None,
    mode: str | None = None,
    host: str | None = None,
    tagger: str | bool | None = None,
    character_threshold: float | None = None,
    character_first: bool = False,
    rating: bool = False,
    spaces: bool = False,
) -> None:
    """Caption a folder of images for a training set: a caption file per image, captions.jsonl and tags.csv;
    resumable. pipeline.yaml's `caption:` section holds the same options; these flags override it."""
    setup_logging(False)
    style = {
        "ranks": ranks,
        "existing": existing,
        "prefix": prefix,
        "suffix": suffix,
        "exclude": exclude,
        "replace": replace,
        "underscores": underscores,
        "escape": escape,
        "sort": sort,
        "extension": extension,
        "separator": separator,
        "threshold": threshold,
        "max_tags": max_tags,
        "character_threshold": character_threshold,
        "character_first": character_first,
        "rating": rating,
        "spaces": spaces,
    }
    flags = CaptionFlags(images, out, models, npu_lock, mode, host, overwrite, dry_run, report, style, tagger)
    caption_images(config, flags)


@task(
    help={
        "images": "folder of images (searched recursively)",
        "labels": 'labels to score, comma-separated: "a photo of text,a photo"',
        "template": "with --labels: each label is put in it at {}, e.g. 'a photo of {}'",
        "question": "a YAML file of categories: [{name, labels, mode: one|top|many, k, threshold, template}, ...]",
        "out": "write classify.jsonl and classify.csv here instead of beside the images",
        "models": "models dir as fetch lays it out (default: the local device's, from the config)",
        "config": _HELP["config"],
        "overwrite": "answer again every image (else images already in classify.jsonl are skipped)",
        "npu-lock": "hold an exclusive flock on this file around every NPU call (default: device.npu_lock)",
        "host": "classify on these devices with Dask: a device name, a comma list, or all (default: all, when "
        "the devices are other machines; else here)",
    }
)
def classify(
    c: Context,
    images: str | None = None,
    labels: str | None = None,
    template: str | None = None,
    question: str | None = None,
    out: str | None = None,
    models: str | None = None,
    config: str | None = None,
    overwrite: bool = False,
    npu_lock: str | None = None,
    host: str | None = None,
) -> None:
    """Answer a question about each image of a folder (labels, or categories): classify.jsonl and a CSV table."""
    setup_logging(False)
    flags = CaptionFlags(images, out, models, npu_lock, host=host, overwrite=overwrite)
    classify_images(config, flags, labels, question, template)


@task(
    help={
        "config": _HELP["config"],
        "host": "run it on these devices, in the background: a device name, a comma list, or all (default: the "
        "config's devices when they are other machines, else here in the foreground; --models: always here)",
        "models": "models dir as fetch lays it out (default: the local device's, from the config)",
        "listen": "listen on 0.0.0.0 (default: 127.0.0.1 only)",
        "port": "port (default: the device's `port`, else 7860 as A1111; with --print-nginx: nginx's)",
        "api-auth": "user:password[,user:password] for HTTP Basic auth",
        "stop": "stop the server running on --host",
        "print-nginx": "print an nginx config that balances A1111 clients over the --host devices' servers",
        "status": "show whether the server runs on --host, and its health",
        "allow-image-urls": "accept http(s) image URLs (public addresses only)",
        "npu-lock": "a file on the serving machine: every NPU call holds an exclusive flock on it "
        "(default: device.npu_lock)",
        "unload-after": "idle seconds after which the image encoder leaves the NPU (default: device.unload_after)",
    }
)
def serve(
    c: Context,
    config: str | None = None,
    host: str | None = None,
    models: str | None = None,
    listen: bool = False,
    port: str | None = None,
    api_auth: str | None = None,
    stop: bool = False,
    status: bool = False,
    allow_image_urls: bool = False,
    npu_lock: str | None = None,
    unload_after: str | None = None,
    print_nginx: bool = False,
    install: bool = False,
    uninstall: bool = False,
) -> None:
    """Serve A1111's /sdapi/v1/interrogate with the fetched models (--host: on that host, in the background;
    --install: as a systemd service there, started at boot)."""
    setup_logging(False)
    extra = ("--allow-image-urls",) if allow_image_urls else ()
    request = ServeRequest(_port(port), listen, api_auth, extra, npu_lock, _seconds("--unload-after", unload_after))
    flags = {"stop": stop, "status": status, "print_nginx": print_nginx, "install": install, "uninstall": uninstall}
    serve_command(config, host, models, request, flags)


def _port(value: str | None) -> int | None:
    """`--port` as given, or None for the device's own (invoke reads an option without a default as text)."""
    if value is None:
        return None
    if not value.isdigit() or not 1 <= int(value) <= 65535:
        raise Exit(f"error: --port takes a port number 1-65535 (got {value!r})", code=1)
    return int(value)


def _seconds(flag: str, value: str | None) -> float | None:
    if value is None:
        return None
    try:
        seconds = float(value)
    except ValueError:
        seconds = -1.0
    if seconds <= 0:
        raise Exit(f"error: {flag} takes a number of seconds above 0 (got {value!r})", code=1)
    return seconds


def _stage_task(name: str, doc: str) -> object:
    @task(name=name, help=_HELP)
    def stage_task(
        c: Context,
        config: str | None = None,
        force: bool = False,
        dry_run: bool = False,
        host: str | None = None,
        verbose: bool = False,
    ) -> None:
        setup_logging(verbose)
        run_stages(config, RunRequest(targets=(name,), force=force, dry_run=dry_run), host=host)

    stage_task.__doc__ = f"{doc} Runs stale upstream stages first."
    stage_task.body.__doc__ = stage_task.__doc__
    return stage_task


def _collection() -> Collection:
    from stages import WITH_TAGGER

    namespace = Collection(all, status, caption, classify, serve)
    for stage in WITH_TAGGER:
        namespace.add_task(_stage_task(stage.name, stage.help))
    return namespace


ns = _collection()
