"""``sclake models synthesize / list / info / check``: model files in Helical's cache layout."""

from __future__ import annotations

import json
from typing import Annotated

import typer


def register(app: typer.Typer) -> None:
    models_app = typer.Typer(
        help="Geneformer model files in Helical's cache layout (synthesize, list, info, check).", no_args_is_help=True
    )
    models_app.command("synthesize")(synthesize_cmd)
    models_app.command("list")(list_cmd)
    models_app.command("info")(info_cmd)
    models_app.command("check")(check_cmd)
    app.add_typer(models_app, name="models")


def synthesize_cmd(
    name: Annotated[str, typer.Argument(help="Model name, e.g. gf-6L-10M-i2048 (see `sclake models list`).")],
    tiny: bool = typer.Option(False, "--tiny", help="2 layers of width 32 (same vocabulary and input size)."),
    seed: int = typer.Option(0, "--seed", help="Seed of the random weights."),
    force: bool = typer.Option(False, "--force", help="Replace model files already present."),
) -> None:
    """Write model files of the real architecture with random weights (marked synthetic)."""
    from pipelines.models.manifest import read_manifest
    from pipelines.models.synthesize import synthesize
    from pipelines.settings import get_settings

    files = synthesize(get_settings(), name, tiny=tiny, seed=seed, force=force)
    manifest = read_manifest(files) or {}
    summary = {
        "model": files.name,
        "version": files.version,
        "model_dir": str(files.model_dir),
        "helical_prefix": str(files.prefix),
        "synthetic": manifest.get("synthetic"),
        "tiny": manifest.get("tiny"),
        "seed": manifest.get("seed"),
        "parameters": manifest.get("parameters"),
        "files": sorted(manifest.get("files", {})),
    }
    typer.echo(json.dumps(summary, indent=2))


def list_cmd(
    as_json: bool = typer.Option(False, "--json", help="Print JSON instead of a table."),
) -> None:
    """Show every known model: files present or not, synthetic or not."""
    from pipelines.models.loader import model_status
    from pipelines.models.registry import MODELS
    from pipelines.settings import get_settings

    settings = get_settings()
    rows = []
    for name, spec in MODELS.items():
        st = model_status(settings, name)
        kind = "-" if not st.has_manifest else ("synthetic" if st.synthetic else "trained")
        if st.has_manifest and st.tiny:
            kind += " (tiny)"
        elif not st.has_manifest and st.present:
            kind = "no manifest"
        rows.append(
            {
                "model": name,
                "version": spec.version,
                # the network on disk (a --tiny model is narrower than its spec), else the spec's
                "layers": st.layers or spec.num_layers,
                "width": st.width or spec.hidden_size,
                "weights_file": st.weights_file,
                "input_size": spec.input_size,
                "present": st.present,
                "kind": kind,
                "synthetic": st.synthetic,
                "tiny": st.tiny,
                "megabytes": round(st.bytes / 1e6, 1),
                "missing": st.missing,
            }
        )
    if as_json:
        typer.echo(json.dumps({"helical_prefix": str(settings.helical_prefix()), "models": rows}, indent=2))
        return
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"Geneformer models under {settings.helical_prefix()}")
    for col in ("model", "version", "layers", "width", "input", "files", "kind", "MB"):
        table.add_column(col)
    for r in rows:
        files = "present" if r["present"] else f"missing {len(r['missing'])}"
        table.add_row(
            r["model"],
            r["version"],
            str(r["layers"]),
            str(r["width"]),
            str(r["input_size"]),
            files,
            r["kind"],
            f"{r['megabytes']:.1f}",
        )
    Console(width=140).print(table)


def info_cmd(
    name: Annotated[str, typer.Argument(help="Model name (see `sclake models list`).")],
) -> None:
    """Print one model's metadata as JSON: architecture, files, manifest, resource profile."""
    from dataclasses import asdict

    from pipelines.models.loader import model_status
    from pipelines.models.manifest import read_manifest
    from pipelines.models.registry import MODELS, model_files
    from pipelines.profiles import get_profile
    from pipelines.settings import get_settings

    if name not in MODELS:
        raise typer.BadParameter(f"{name!r} is not one of {', '.join(MODELS)}", param_hint="NAME")
    settings = get_settings()
    spec = MODELS[name]
    status = model_status(settings, name)
    files = model_files(settings, name)
    manifest = read_manifest(files) if files.manifest.is_file() else None
    profile = get_profile(name)
    info = {
        "model": name,
        "version": spec.version,
        "architecture": {
            "layers": spec.num_layers,
            "width": spec.hidden_size,
            "heads": spec.num_heads,
            "intermediate_size": spec.intermediate_size,
            "input_size": spec.max_positions,
            "vocab_size": spec.vocab_size,
        },
        "on_disk": {
            **{k: v for k, v in asdict(status).items() if k not in ("name", "version")},
            "model_dir": str(status.model_dir),
        },
        "manifest": manifest,
        "profile": {
            "cpu_precision": profile.precision.cpu,
            "device_class": profile.device_class,
            "container": {"cpus": profile.container.cpus, "memory": int(profile.container.memory)},
        },
    }
    typer.echo(json.dumps(info, indent=2, default=str))


def check_cmd(
    name: Annotated[str, typer.Argument(help="Model name.")],
) -> None:
    """Check that a model's files are present and match their manifest checksums."""
    from pipelines.models.loader import check_model_files
    from pipelines.settings import get_settings

    files = check_model_files(get_settings(), name)
    typer.echo(f"{name}: ok ({files.model_dir})")
